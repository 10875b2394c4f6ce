//! What studyflow tells the person or the log collector: plain lines or JSON lines on stderr,
//! and a progress bar when stderr is a terminal.

use std::io::IsTerminal;

use indicatif::{ProgressBar, ProgressStyle};

/// Output format of log lines.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

/// Where messages go.
#[derive(Debug, Clone)]
pub struct Log {
    pub format: LogFormat,
    pub quiet: bool,
}

impl Log {
    pub fn new(format: LogFormat, quiet: bool) -> Log {
        Log { format, quiet }
    }

    /// An informational line (suppressed by `--quiet`).
    pub fn info(&self, msg: &str) {
        if !self.quiet {
            self.emit("info", msg);
        }
    }

    /// A warning (always shown).
    pub fn warn(&self, msg: &str) {
        self.emit("warn", msg);
    }

    /// An error (always shown).
    pub fn error(&self, msg: &str) {
        self.emit("error", msg);
    }

    fn emit(&self, level: &str, msg: &str) {
        match self.format {
            LogFormat::Text => {
                if level == "info" {
                    eprintln!("{msg}");
                } else {
                    eprintln!("{level}: {msg}");
                }
            }
            LogFormat::Json => {
                let line = serde_json::json!({
                    "time": chrono::Utc::now().format("%Y-%m-%dT%H:%M:%S%.3fZ").to_string(),
                    "level": level,
                    "message": msg,
                });
                eprintln!("{line}");
            }
        }
    }

    /// A progress bar over `len` steps on a terminal; hidden otherwise.
    pub fn progress(&self, len: u64) -> ProgressBar {
        if self.quiet || self.format == LogFormat::Json || !std::io::stderr().is_terminal() {
            return ProgressBar::hidden();
        }
        let bar = ProgressBar::new(len);
        if let Ok(style) =
            ProgressStyle::with_template("{spinner} [{bar:30}] {pos}/{len} stages {msg}")
        {
            bar.set_style(style.progress_chars("=> "));
        }
        bar
    }

    /// True when plain lines should be printed per step (no progress bar is shown).
    pub fn plain_steps(&self) -> bool {
        !self.quiet && (self.format == LogFormat::Json || !std::io::stderr().is_terminal())
    }
}
