//! `inspect`: a published table's schema, row count, provenance metadata and first rows,
//! read back from its Parquet file.

use std::fs::File;
use std::path::Path;

use anyhow::Context;
use polars::prelude::*;

/// Provenance key-value pairs from a Parquet footer.
pub fn footer_metadata(path: &Path) -> anyhow::Result<Vec<(String, String)>> {
    let file = File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let mut reader = ParquetReader::new(file);
    let meta = reader.get_metadata()?;
    Ok(meta
        .key_value_metadata()
        .as_ref()
        .map(|kv| {
            kv.iter()
                .filter(|k| k.key.starts_with("studyflow."))
                .map(|k| (k.key.clone(), k.value.clone().unwrap_or_default()))
                .collect()
        })
        .unwrap_or_default())
}

/// Reads a Parquet file into a frame.
pub fn read_table(path: &Path) -> anyhow::Result<DataFrame> {
    let file = File::open(path).with_context(|| format!("opening {}", path.display()))?;
    Ok(ParquetReader::new(file).finish()?)
}

/// The text `inspect` prints.
pub fn describe(path: &Path, rows: usize) -> anyhow::Result<String> {
    let df = read_table(path)?;
    let mut s = format!("{}\nrows: {}\ncolumns:\n", path.display(), df.height());
    for (name, dtype) in df.schema().iter() {
        s.push_str(&format!("  {name}: {dtype}\n"));
    }
    s.push_str("provenance:\n");
    for (k, v) in footer_metadata(path)? {
        s.push_str(&format!("  {k}: {v}\n"));
    }
    s.push_str(&format!("{}\n", df.head(Some(rows))));
    Ok(s)
}
