//! Typed errors of the library, grouped by kind so the CLI can map them to exit codes.
//! Configuration errors carry file, line and column; data errors name the file and rows.

use std::fmt;
use std::path::PathBuf;

/// One problem in a pipeline YAML, located at file, line and column.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigProblem {
    pub file: PathBuf,
    pub line: u64,
    pub column: u64,
    pub message: String,
    pub hint: Option<String>,
}

impl fmt::Display for ConfigProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.line == 0 {
            // Not a place in the file (a command-line option, an unreadable file).
            write!(f, "{}: {}", self.file.display(), self.message)?;
        } else {
            write!(
                f,
                "{}:{}:{}: {}",
                self.file.display(),
                self.line,
                self.column,
                self.message
            )?;
        }
        if let Some(hint) = &self.hint {
            write!(f, "\n  hint: {hint}")?;
        }
        Ok(())
    }
}

/// Every problem found in a pipeline YAML, reported together.
#[derive(Debug, Clone, Default)]
pub struct ConfigErrors(pub Vec<ConfigProblem>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.0.len();
        writeln!(
            f,
            "{n} problem{} in the pipeline configuration:",
            if n == 1 { "" } else { "s" }
        )?;
        for p in &self.0 {
            writeln!(f, "{p}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

/// A failure of the data: reject limits, reconciliation, unreadable sources.
#[derive(Debug, thiserror::Error)]
pub enum DataError {
    /// A source file broke its reject limit.
    #[error("{0}")]
    RejectLimit(String),
    /// Row fate did not reconcile: a row was lost or counted twice.
    #[error("row fate does not reconcile: {0}")]
    Reconciliation(String),
    /// A source file could not be used as it is (missing column, unreadable, empty).
    #[error("{0}")]
    BadSource(String),
    /// A stage failed on the data it was given.
    #[error("stage `{stage}`: {message}")]
    Stage { stage: String, message: String },
}

/// The run could not proceed for a reason outside the data and the YAML.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("output folder {dir} is locked by another studyflow run ({holder})")]
    Locked { dir: PathBuf, holder: String },
    // The cause is part of the message, not a source as well: messages are printed with
    // their chain (`{:#}`), which would name it twice.
    #[error("I/O error on {path}: {cause}")]
    Io {
        path: PathBuf,
        cause: std::io::Error,
    },
    #[error("{0}")]
    Internal(String),
    #[error("run aborted at failpoint `{0}`")]
    Failpoint(String),
}

impl RunError {
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        RunError::Io {
            path: path.into(),
            cause: source,
        }
    }
}

/// Exit codes of the command-line tool, as documented in the README.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExitKind {
    Ok = 0,
    Data = 1,
    Config = 2,
    Internal = 3,
}

/// Classifies an error chain into the documented exit codes.
pub fn exit_kind(err: &anyhow::Error) -> ExitKind {
    for cause in err.chain() {
        if cause.is::<ConfigErrors>() {
            return ExitKind::Config;
        }
        if cause.is::<DataError>() {
            return ExitKind::Data;
        }
        if cause.is::<RunError>() {
            return ExitKind::Internal;
        }
    }
    ExitKind::Internal
}

impl From<polars::error::PolarsError> for RunError {
    fn from(e: polars::error::PolarsError) -> Self {
        RunError::Internal(format!("polars: {e}"))
    }
}

#[cfg(test)]
mod io_message_tests {
    use super::*;

    #[test]
    fn an_io_error_names_its_cause_once() {
        let e = anyhow::Error::from(RunError::io(
            "/out/runs/x",
            std::io::Error::from_raw_os_error(28),
        ));
        let text = format!("{e:#}");
        assert_eq!(text.matches("No space left on device").count(), 1, "{text}");
        assert!(text.starts_with("I/O error on /out/runs/x: "), "{text}");
        assert_eq!(exit_kind(&e), ExitKind::Internal);
    }
}
