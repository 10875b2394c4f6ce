//! The run manifest (`manifest.json`): what a run read, what each stage did, what it wrote,
//! and how every input file's rows ended up.

use serde::{Deserialize, Serialize};

use crate::fingerprint::Recipe;
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
    /// What was reused from the cache and what was done again.
    #[serde(default)]
    pub reuse: ReuseSummary,
    pub inputs: Vec<FileRead>,
    pub stages: Vec<StageRecord>,
    pub tables: Vec<TableRecord>,
    pub row_fate: Vec<FileFate>,
    /// Other published files (the data dictionary), with size and hash.
    #[serde(default)]
    pub documents: Vec<DocumentRecord>,
}

/// Counts of work done and work reused in a run (a nothing-changed run reuses every stage).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReuseSummary {
    pub stages_ran: u64,
    pub stages_reused: u64,
    /// Raw files parsed, and raw files whose cached parse was used.
    pub files_parsed: u64,
    pub files_reused: u64,
    /// Files read to hash them: raw and reference files, and the executable once per build
    /// (the others were known by their stamp).
    pub files_hashed: u64,
    pub bytes_hashed: u64,
    /// Published tables linked from the previous run (identical bytes) or written.
    pub tables_linked: u64,
    pub tables_written: u64,
}

/// What one stage did in a run.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StageRecord {
    pub name: String,
    pub kind: String,
    pub inputs: Vec<String>,
    pub fingerprint: String,
    /// Where its output is cached: the fingerprint with its inputs named by content (see
    /// `Decision::key`); absent when it equals `fingerprint`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache_key: Option<String>,
    /// `ran` or `reused` (its output came from the cache).
    pub status: String,
    /// Why it ran or was reused ("file nih/diary_2017-07-31.csv changed", "up to date").
    #[serde(default)]
    pub reasons: Vec<String>,
    /// Sort keys of its published table.
    #[serde(default)]
    pub sort_by: Vec<String>,
    pub rows_in: u64,
    pub rows_out: u64,
    pub rejected: u64,
    pub set_aside: u64,
    pub seconds: f64,
    /// Ingest only: files parsed in this run, and files taken from the cache.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub files_parsed: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub files_reused: Option<u64>,
    /// What the fingerprint was computed from; `plan` compares it with the next run's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recipe: Option<Recipe>,
}

/// A published file that is not a table.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct DocumentRecord {
    pub file: String,
    pub bytes: u64,
    pub blake3: String,
}

/// One published file.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TableRecord {
    pub name: String,
    pub file: String,
    pub rows: u64,
    pub bytes: u64,
    pub blake3: String,
    /// The columns that identify a row (the stage's `sort_by`; `diff` compares by them).
    #[serde(default)]
    pub key: Vec<String>,
    /// Hash of everything the file's bytes depend on; equal keys, equal bytes.
    #[serde(default)]
    pub content_key: String,
    /// `written`; `linked` from the previous run (same bytes); or `restamped`: the previous
    /// run's file of the same table with a new footer (its lineage changed, its rows did not).
    #[serde(default)]
    pub status: String,
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

impl Manifest {
    /// Reads a run's `manifest.json`.
    pub fn read(run_dir: &std::path::Path) -> anyhow::Result<Manifest> {
        let path = run_dir.join("manifest.json");
        let bytes = std::fs::read(&path)
            .map_err(|e| anyhow::anyhow!("cannot read {}: {e}", path.display()))?;
        serde_json::from_slice(&bytes)
            .map_err(|e| anyhow::anyhow!("{} is not a manifest: {e}", path.display()))
    }

    /// The record of stage `name`.
    pub fn stage(&self, name: &str) -> Option<&StageRecord> {
        self.stages.iter().find(|s| s.name == name)
    }
}

impl StageRecord {
    /// The cache entry of the stage's output.
    pub fn key(&self) -> &str {
        self.cache_key.as_deref().unwrap_or(&self.fingerprint)
    }
}

impl FileFate {
    pub fn reconciles(&self) -> bool {
        self.read == self.accepted + self.rejected + self.collapsed + self.superseded
    }
}
