//! The run manifest (`manifest.json`): what a run read, what each stage did, what it wrote,
//! and how every input file's rows ended up.

use serde::{Deserialize, Serialize};

use crate::stages::FileRead;

/// Everything a run records about itself.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Manifest {
    pub run_id: String,
    pub pipeline: String,
    pub pipeline_file: String,
    pub pipeline_hash: String,
    pub engine_version: String,
    pub run_date: String,
    pub started_utc: String,
    pub seconds: f64,
    pub threads: usize,
    pub inputs: Vec<FileRead>,
    pub stages: Vec<StageRecord>,
    pub tables: Vec<TableRecord>,
    pub row_fate: Vec<FileFate>,
}

/// What one stage did in a run.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StageRecord {
    pub name: String,
    pub kind: String,
    pub inputs: Vec<String>,
    pub fingerprint: String,
    /// `ran` or `reused`.
    pub status: String,
    pub rows_in: u64,
    pub rows_out: u64,
    pub rejected: u64,
    pub set_aside: u64,
    pub seconds: f64,
}

/// One published file.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TableRecord {
    pub name: String,
    pub file: String,
    pub rows: u64,
    pub bytes: u64,
    pub blake3: String,
}

/// Row fate of one input file: read = accepted + rejected + collapsed + superseded.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct FileFate {
    pub source: String,
    pub file: String,
    /// The table its accepted rows end in.
    pub table: String,
    pub read: u64,
    pub accepted: u64,
    pub rejected: u64,
    pub collapsed: u64,
    pub superseded: u64,
}

impl FileFate {
    pub fn reconciles(&self) -> bool {
        self.read == self.accepted + self.rejected + self.collapsed + self.superseded
    }
}
