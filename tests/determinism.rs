//! Same inputs and YAML give byte-identical published tables, whatever `--threads` and however
//! often the run is repeated: the reference pipeline on the shipped sample (PIPELINE.md 3).

use std::collections::BTreeMap;
use std::path::Path;

use crate::workdir::assert_exit;

/// Runs the reference pipeline into `out` and returns the blake3 of every published table,
/// with the stage fingerprints and table records of the manifest.
fn run_reference(
    bin: &Path,
    out: &Path,
    threads: &str,
) -> (BTreeMap<String, String>, serde_json::Value) {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let o = std::process::Command::new(bin)
        .args(["--threads", threads, "run"])
        .arg(root.join("pipelines/reference.yaml"))
        .arg("--out")
        .arg(out)
        .args(["--run-date", "2026-11-25"])
        .env_remove("STUDYFLOW_FAILPOINT")
        .output()
        .unwrap();
    assert_exit(&o, 0);
    let current = out.join("current");
    let mut tables = BTreeMap::new();
    for e in std::fs::read_dir(&current).unwrap() {
        let p = e.unwrap().path();
        if p.extension().is_some_and(|x| x == "parquet") {
            let name = p.file_name().unwrap().to_string_lossy().into_owned();
            tables.insert(name, blake3::hash(&std::fs::read(&p).unwrap()).to_string());
        }
    }
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(current.join("manifest.json")).unwrap()).unwrap();
    // What a table is and holds, not how this run obtained it (written, or linked from the
    // cache of an earlier run).
    let tables_described: Vec<serde_json::Value> = manifest["tables"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| {
            let mut t = t.clone();
            t.as_object_mut().unwrap().remove("status");
            t
        })
        .collect();
    let stable = serde_json::json!({
        "tables": tables_described,
        "fingerprints": manifest["stages"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| (s["name"].clone(), s["fingerprint"].clone(), s["rows_out"].clone()))
            .collect::<Vec<_>>(),
        "row_fate": manifest["row_fate"],
    });
    (tables, stable)
}

#[test]
fn the_reference_pipeline_is_byte_identical_with_1_2_and_8_threads_and_on_repeat() {
    let tmp = tempfile::tempdir().unwrap();
    let bin = crate::crash::pinned_binary(tmp.path());
    let out = tmp.path().join("out");
    let first = run_reference(&bin, &out, "1");
    assert!(first.0.len() >= 4, "published tables: {:?}", first.0.keys());
    for threads in ["2", "8", "8", "1"] {
        let again = run_reference(&bin, &out, threads);
        assert_eq!(again.0, first.0, "tables differ with --threads {threads}");
        assert_eq!(
            again.1, first.1,
            "manifest differs with --threads {threads}"
        );
    }
}
