//! Published tables read back by independent readers (pyarrow and DuckDB, installed by
//! `make test`): same columns, same row counts, the same values in both, footer null counts
//! that are the columns' own, and the provenance in the Parquet footer.

use crate::workdir::*;

fn python() -> String {
    std::env::var("STUDYFLOW_PYTHON").unwrap_or_else(|_| "python3".into())
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
    let script = fixture("../interop/read_parquet.py");
    let o = std::process::Command::new(python())
        .arg(&script)
        .args(&files)
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "the interop reader failed (run `make test`, which installs pyarrow and duckdb):\n{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let seen: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
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
