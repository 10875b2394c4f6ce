//! The `studyflow` binary: parse the command line, run, map errors to documented exit codes.
//! 0 ok, 1 data failure, 2 configuration error, 3 I/O or internal error.

use std::process::ExitCode;

// polars allocates and frees large buffers from many threads. jemalloc, keeping the pages it
// has (no decay: a run is one batch), reuses them instead of returning them to the system and
// faulting them in again: about 6 % less wall time on 1,000 subjects and half the system time
// on 5,000. One arena rather than one per thread lets a buffer one thread frees serve another
// thread: a peak about 5 % lower on 5,000 subjects, same time (README "Performance").
#[global_allocator]
static ALLOC: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

#[allow(non_upper_case_globals)]
#[unsafe(export_name = "_rjem_malloc_conf")]
pub static malloc_conf: &[u8] = b"dirty_decay_ms:-1,muzzy_decay_ms:-1,narenas:1\0";

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
