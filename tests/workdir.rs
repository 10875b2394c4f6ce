//! A temporary working folder holding a copy of a fixture, and a way to run the binary in it.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use polars::prelude::*;

pub struct Workdir {
    pub dir: tempfile::TempDir,
}

pub fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let target = to.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            if e.file_name() == "out" {
                continue;
            }
            copy_dir(&e.path(), &target);
        } else {
            std::fs::copy(e.path(), target).unwrap();
        }
    }
}

impl Workdir {
    /// A fresh copy of `tests/fixtures/<name>`.
    pub fn from_fixture(name: &str) -> Workdir {
        let dir = tempfile::tempdir().unwrap();
        copy_dir(&fixture(name), dir.path());
        Workdir { dir }
    }

    /// An empty folder.
    pub fn empty() -> Workdir {
        Workdir {
            dir: tempfile::tempdir().unwrap(),
        }
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    pub fn write(&self, rel: &str, bytes: &[u8]) {
        let p = self.path(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, bytes).unwrap();
    }

    /// Runs `studyflow ARGS` in the folder.
    pub fn cmd(&self) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_studyflow"));
        c.current_dir(self.dir.path());
        c.env_remove("STUDYFLOW_FAILPOINT");
        c
    }

    pub fn run(&self, args: &[&str]) -> Output {
        self.cmd().args(args).output().unwrap()
    }

    /// `studyflow run pipeline.yaml` with a fixed run date.
    pub fn run_pipeline(&self) -> Output {
        self.run(&["run", "pipeline.yaml", "--run-date", "2026-11-25"])
    }

    /// A published table of the current run.
    pub fn table(&self, name: &str) -> DataFrame {
        let p = self.path(&format!("out/current/{name}.parquet"));
        let f = std::fs::File::open(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
        ParquetReader::new(f).finish().unwrap()
    }
}

/// A path in the repository.
pub fn repo(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(rel)
}

/// `studyflow run` of the shipped reference pipeline (its relative paths resolve against
/// `pipelines/`) on `data`, publishing to `out`, with `extra` arguments.
pub fn reference_command(data: &Path, out: &Path, extra: &[&str]) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_studyflow"));
    c.arg("run")
        .arg(repo("pipelines/reference.yaml"))
        .arg("--data")
        .arg(data)
        .arg("--out")
        .arg(out)
        .args(["--run-date", "2026-11-25"])
        .args(extra)
        .env_remove("STUDYFLOW_FAILPOINT");
    c
}

/// Runs [`reference_command`] and asserts that it succeeds.
pub fn run_reference(data: &Path, out: &Path, extra: &[&str]) -> Output {
    let o = reference_command(data, out, extra).output().unwrap();
    assert_exit(&o, 0);
    o
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Asserts an exit code, printing stderr when it differs.
pub fn assert_exit(o: &Output, code: i32) {
    assert_eq!(o.status.code(), Some(code), "stderr:\n{}", stderr(o));
    assert!(!stderr(o).contains("panicked"), "a panic:\n{}", stderr(o));
}

/// (SRCFILE, SRCLINE, RULE) of every reject.
pub fn reject_rules(df: &DataFrame) -> Vec<(String, i64, String)> {
    let f = df.column("SRCFILE").unwrap().str().unwrap().clone();
    let l = df.column("SRCLINE").unwrap().i64().unwrap().clone();
    let r = df.column("RULE").unwrap().str().unwrap().clone();
    f.iter()
        .zip(l.iter())
        .zip(r.iter())
        .map(|((f, l), r)| (f.unwrap().to_string(), l.unwrap(), r.unwrap().to_string()))
        .collect()
}

pub fn strs(df: &DataFrame, column: &str) -> Vec<String> {
    df.column(column)
        .unwrap()
        .cast(&DataType::String)
        .unwrap()
        .str()
        .unwrap()
        .iter()
        .map(|v| v.unwrap_or("null").to_string())
        .collect()
}
