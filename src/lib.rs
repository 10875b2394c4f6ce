//! studyflow: a batch pipeline that turns clinical site exports into analysis-ready Parquet.
//! The YAML is parsed (`spec`), checked and ordered (`plan`), then executed (`run`).

pub mod cache;
pub mod cli;
pub mod dialect;
pub mod dictionary;
pub mod diff;
pub mod error;
pub mod execute;
pub mod file_hashes;
pub mod fingerprint;
pub mod generate;
pub mod growth;
pub mod inspect;
pub mod log;
pub mod manifest;
pub mod memory;
pub mod parquet_delta;
pub mod parquet_keys;
pub mod parquet_pages;
pub mod plan;
pub mod publish;
pub mod rejects;
pub mod reuse;
pub mod row_fate;
pub mod run;
pub mod source;
pub mod spec;
pub mod stages;

/// Version of the engine, part of every fingerprint and manifest.
pub const ENGINE_VERSION: &str = env!("CARGO_PKG_VERSION");

/// The candidate closest to `word` by edit distance, if any is reasonably close.
pub fn closest<'a>(word: &str, candidates: impl IntoIterator<Item = &'a str>) -> Option<&'a str> {
    let w = word.trim().to_lowercase();
    candidates
        .into_iter()
        .map(|c| {
            (
                strsim::normalized_levenshtein(&w, &c.trim().to_lowercase()),
                c,
            )
        })
        .filter(|(score, _)| *score >= 0.4)
        .max_by(|a, b| a.0.total_cmp(&b.0))
        .map(|(_, c)| c)
}
