//! The benchmark floor of `make bench`: reads every raw export file a pipeline reads, as plain
//! text columns in its site's delimiter and encoding, and writes it unchanged to Parquet.
//!
//! Usage: `floor PIPELINE DATA_DIR OUT_DIR` (OUT_DIR is created; one `.parquet` per file).
//! No typing, no checks, no lineage: every column is a string, ragged lines are truncated.
//! The files are found, and their dialects taken, exactly as `studyflow run` does, so both read
//! the same bytes. Parquet settings match studyflow's writer (zstd, full statistics).

use std::io::Cursor;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::Context;
use polars::prelude::*;
use rayon::prelude::*;
use studyflow::source::{SourceFile, resolve_source};

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [pipeline, data_dir, out_dir] = args.as_slice() else {
        anyhow::bail!("usage: floor PIPELINE DATA_DIR OUT_DIR");
    };
    let started = Instant::now();
    let plan = studyflow::cli::load_plan(Path::new(pipeline))?;
    let data_dir = PathBuf::from(data_dir);
    let out_dir = PathBuf::from(out_dir);
    std::fs::create_dir_all(&out_dir).with_context(|| format!("creating {}", out_dir.display()))?;
    let mut files: Vec<SourceFile> = Vec::new();
    for source in &plan.spec.sources {
        files.extend(resolve_source(&source.value, &plan.sites, &data_dir)?.files);
    }
    // Files in parallel, and polars' own reader threads within each file.
    let written: Vec<(u64, usize)> = files
        .par_iter()
        .map(|f| copy_to_parquet(f, &out_dir))
        .collect::<anyhow::Result<_>>()?;
    let bytes: u64 = written.iter().map(|w| w.0).sum();
    let rows: usize = written.iter().map(|w| w.1).sum();
    println!(
        "floor: {} files, {:.1} MB of CSV, {rows} rows to Parquet in {:.2}s",
        files.len(),
        bytes as f64 / 1e6,
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// Reads one export file as strings and writes it to `out_dir`; returns (CSV bytes, rows).
fn copy_to_parquet(file: &SourceFile, out_dir: &Path) -> anyhow::Result<(u64, usize)> {
    let bytes =
        std::fs::read(&file.path).with_context(|| format!("reading {}", file.path.display()))?;
    // Latin-1 to UTF-8 and a UTF-8 BOM dropped: the same decoding studyflow does.
    let text = studyflow::dialect::decode(&bytes, file.dialect.encoding).into_owned();
    let parse = CsvParseOptions::default()
        .with_separator(file.dialect.delimiter)
        .with_truncate_ragged_lines(true);
    let mut df = CsvReadOptions::default()
        .with_has_header(true)
        .with_infer_schema_length(Some(0))
        .with_parse_options(parse)
        .into_reader_with_file_handle(Cursor::new(text))
        .finish()
        .map_err(|e| anyhow::anyhow!("parsing {}: {e}", file.path.display()))?;
    let target = out_dir.join(format!("{}.parquet", file.rel.replace('/', "__")));
    let mut out =
        std::fs::File::create(&target).with_context(|| format!("creating {}", target.display()))?;
    ParquetWriter::new(&mut out)
        .with_compression(ParquetCompression::Zstd(None))
        .with_statistics(StatisticsOptions::full())
        .finish(&mut df)
        .map_err(|e| anyhow::anyhow!("writing {}: {e}", target.display()))?;
    Ok((bytes.len() as u64, df.height()))
}
