//! Published tables read back by independent readers (pyarrow and DuckDB, installed by
//! `make test`): same columns, same row counts, the same values in both, footer null counts
//! that are the columns' own, and the provenance in the Parquet footer.

use crate::workdir::*;
use polars::prelude::*;

fn python() -> String {
    std::env::var("STUDYFLOW_PYTHON").unwrap_or_else(|_| "python3".into())
}

/// What `read_parquet.py` sees of `files`, by path.
fn independent_read(files: &[String]) -> serde_json::Value {
    let script = fixture("../interop/read_parquet.py");
    let o = std::process::Command::new(python())
        .arg(&script)
        .args(files)
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "the interop reader failed (run `make test`, which installs pyarrow and duckdb):\n{}",
        String::from_utf8_lossy(&o.stderr)
    );
    serde_json::from_slice(&o.stdout).unwrap()
}

/// A 64-bit integer column of many values (line numbers) and the days of a daily table are
/// written as differences (DELTA_BINARY_PACKED): pyarrow and DuckDB decode the values written,
/// the extremes of the type next to each other (differences that wrap around) and missing
/// values included.
#[test]
fn differences_of_64_bit_integers_and_days_read_the_same_in_pyarrow_and_duckdb() {
    let w = Workdir::empty();
    let n = 300_000i64;
    let line: Vec<Option<i64>> = (0..n)
        .map(|i| (i % 89 != 0).then_some(if i % 3 == 0 { i } else { 4 * i + 1 }))
        .collect();
    let extremes: Vec<Option<i64>> = (0..n)
        .map(|i| match i % 5 {
            0 => Some(i64::MIN),
            1 => Some(i64::MAX),
            2 => None,
            3 => Some(i.wrapping_mul(0x9E37_79B9_7F4A_7C15u64 as i64)),
            _ => Some(-i),
        })
        .collect();
    // Subjects' days, climbing by one, a day skipped now and then, some missing.
    let day: Vec<Option<i32>> = (0..n)
        .map(|i| {
            (i % 97 != 1).then_some(
                15_000 + (i / 1_500) as i32 * 11 + (i % 1_500) as i32 + (i % 1_500) as i32 / 40,
            )
        })
        .collect();
    let mut df = df!("line" => &line, "extremes" => &extremes, "day" => &day)
        .unwrap()
        .lazy()
        .with_column(col("day").cast(DataType::Date))
        .collect()
        .unwrap();
    let path = w.path("wide.parquet");
    let file = std::fs::File::create(&path).unwrap();
    studyflow::publish::ParquetSettings::published()
        .write_frame(&mut df, file, None)
        .unwrap();
    let path = path.display().to_string();
    let seen = independent_read(std::slice::from_ref(&path));
    let theirs = &seen[&path];
    assert_eq!(theirs["rows"], n);
    assert_eq!(theirs["duckdb_same_values"], true);
    assert_eq!(theirs["null_count_mismatches"], serde_json::json!([]));
    for (name, values) in [("line", &line), ("extremes", &extremes)] {
        let encodings = theirs["encodings"][name].to_string();
        assert!(
            encodings.contains("DELTA_BINARY_PACKED"),
            "{name}: {encodings}"
        );
        let sum: i128 = values.iter().flatten().map(|&v| i128::from(v)).sum();
        assert_eq!(theirs["int_sums"][name], sum.to_string(), "{name}");
    }
    let encodings = theirs["encodings"]["day"].to_string();
    assert!(
        encodings.contains("DELTA_BINARY_PACKED"),
        "day: {encodings}"
    );
    let sum: i64 = day.iter().flatten().map(|&v| i64::from(v)).sum();
    assert_eq!(theirs["int_sums"]["day"], sum.to_string());
}

#[test]
fn published_parquet_reads_the_same_in_pyarrow_and_duckdb() {
    let w = Workdir::from_fixture("two_sites");
    assert_exit(&w.run_pipeline(), 0);
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(w.path("out/current/manifest.json")).unwrap())
            .unwrap();
    let files: Vec<String> = manifest["tables"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| {
            w.path(&format!("out/current/{}", t["file"].as_str().unwrap()))
                .display()
                .to_string()
        })
        .collect();
    let seen = independent_read(&files);
    for (t, path) in manifest["tables"].as_array().unwrap().iter().zip(&files) {
        let ours = w.table(t["name"].as_str().unwrap());
        let theirs = &seen[path];
        let cols: Vec<String> = ours
            .get_column_names()
            .iter()
            .map(|c| c.to_string())
            .collect();
        assert_eq!(theirs["columns"], serde_json::json!(cols), "{path}");
        assert_eq!(theirs["duckdb_columns"], serde_json::json!(cols), "{path}");
        assert_eq!(theirs["rows"], t["rows"], "{path}");
        assert_eq!(theirs["duckdb_rows"], t["rows"], "{path}");
        assert_eq!(theirs["duckdb_same_values"], true, "{path}");
        assert_eq!(
            theirs["null_count_mismatches"],
            serde_json::json!([]),
            "{path}"
        );
        let meta = &theirs["metadata"];
        assert_eq!(meta["studyflow.table"], t["name"], "{path}");
        assert_eq!(
            meta["studyflow.pipeline_hash"], manifest["pipeline_hash"],
            "{path}"
        );
        assert_eq!(
            meta["studyflow.engine_version"], manifest["engine_version"],
            "{path}"
        );
        assert_eq!(
            meta["studyflow.stage_fingerprint"].as_str().unwrap().len(),
            64,
            "{path}"
        );
    }
}
