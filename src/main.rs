//! The `studyflow` binary: parse the command line, run, map errors to documented exit codes.
//! 0 ok, 1 data failure, 2 configuration error, 3 I/O or internal error.

use std::process::ExitCode;

fn main() -> ExitCode {
    match studyflow::cli::main() {
        Ok(code) => code,
        Err(e) => {
            let kind = studyflow::error::exit_kind(&e);
            eprintln!("error: {e:#}");
            ExitCode::from(kind as u8)
        }
    }
}
