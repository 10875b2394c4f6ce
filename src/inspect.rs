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

/// The text `inspect` prints. Values of the columns the footer names as identifying are shown
/// as `<withheld>` unless `show_identifying`.
pub fn describe(path: &Path, rows: usize, show_identifying: bool) -> anyhow::Result<String> {
    let df = read_table(path)?;
    let meta = footer_metadata(path)?;
    let mut s = format!("{}\nrows: {}\ncolumns:\n", path.display(), df.height());
    for (name, dtype) in df.schema().iter() {
        s.push_str(&format!("  {name}: {dtype}\n"));
    }
    s.push_str("provenance:\n");
    for (k, v) in &meta {
        s.push_str(&format!("  {k}: {v}\n"));
    }
    let identifying: Vec<&str> = meta
        .iter()
        .filter(|(k, _)| k == crate::publish::IDENTIFYING_KEY)
        .flat_map(|(_, v)| v.split(','))
        .filter(|c| !c.is_empty())
        .collect();
    let mut head = df.head(Some(rows));
    if !identifying.is_empty() && !show_identifying {
        s.push_str(&format!(
            "identifying columns, values withheld (--show-identifying shows them): {}\n",
            identifying.join(", ")
        ));
        head = withhold(head, &identifying)?;
    }
    s.push_str(&format!("{head}\n"));
    Ok(s)
}

/// Replaces every present value of `columns` by `<withheld>` (missing values stay missing).
fn withhold(df: DataFrame, columns: &[&str]) -> anyhow::Result<DataFrame> {
    let present: Vec<&str> = columns
        .iter()
        .copied()
        .filter(|c| df.schema().contains(c))
        .collect();
    let masks: Vec<Expr> = present
        .iter()
        .map(|c| {
            when(col(*c).is_null())
                .then(lit(NULL).cast(DataType::String))
                .otherwise(lit("<withheld>"))
                .alias(*c)
        })
        .collect();
    Ok(df.lazy().with_columns(masks).collect()?)
}
