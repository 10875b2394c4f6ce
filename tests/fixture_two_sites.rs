//! The two-site fixture end to end: every kind of dirt lands in its table or in rejects with
//! the right rule, and every file's rows reconcile.

use crate::workdir::*;

#[test]
fn every_row_lands_where_domain_rules_say() {
    let w = Workdir::from_fixture("two_sites");
    let o = w.run_pipeline();
    assert_exit(&o, 0);

    let subjects = w.table("subjects");
    assert_eq!(strs(&subjects, "subject"), ["C1", "C2", "O1", "S3"]);
    // Allowed values take their canonical spelling; Latin-1 text decodes; missing token -> null.
    assert_eq!(
        strs(&subjects, "group"),
        ["CANDLE", "CANDLE", "OTHER", "SAVI"]
    );
    assert_eq!(strs(&subjects, "comment")[0], "null");
    assert_eq!(strs(&subjects, "comment")[2], "Überweisung aus Köln");
    // Embedded newline and quotes survive; C1 comes from the newer HH export.
    assert_eq!(strs(&subjects, "comment")[1], "note over\ntwo lines");
    assert_eq!(strs(&subjects, "SRCFILE")[0], "hh/subjects_2017-02-28.csv");
    assert_eq!(
        strs(&subjects, "birth_date"),
        ["2005-04-12", "2008-11-30", "2006-02-03", "2009-03-14"]
    );

    let visits = w.table("visits");
    assert_eq!(
        strs(&visits, "height"),
        ["120.5", "121.4", "124.0", "1.31", "132.0"],
        "decimal comma parsed, the corrected row supersedes"
    );

    let rejects = w.table("rejects");
    let got = reject_rules(&rejects);
    let want: Vec<(String, i64, String)> = [
        ("hh/diary_2017-02-28.csv", 4, "parse"),
        ("hh/visits_2017-02-28.csv", 4, "parse"),
        ("nih/diary_2017-06-30.csv", 4, "range"),
        ("nih/diary_2017-06-30.csv", 5, "check"),
        ("nih/diary_2017-06-30.csv", 6, "columns"),
        ("nih/subjects_2017-01-31.csv", 5, "date_range"),
        ("nih/subjects_2017-01-31.csv", 6, "parse"),
        ("nih/subjects_2017-01-31.csv", 7, "allowed"),
        ("nih/subjects_2017-01-31.csv", 8, "subject_id"),
        ("nih/visits_2017-01-31.csv", 5, "conflict"),
        ("nih/visits_2017-01-31.csv", 6, "conflict"),
        ("nih/visits_2017-01-31.csv", 7, "parse"),
        ("nih/visits_2017-01-31.csv", 8, "date_range"),
    ]
    .iter()
    .map(|(f, l, r)| (f.to_string(), *l, r.to_string()))
    .collect();
    assert_eq!(got, want);
    // Every reject names its column and says why in words.
    for reason in strs(&rejects, "REASON") {
        assert!(reason.len() > 15, "reason too short: {reason}");
    }
    assert!(
        strs(&rejects, "REASON")
            .iter()
            .any(|r| r.contains("2091-01-01 is after 2026-11-25"))
    );

    let dups = w.table("duplicates");
    assert_eq!(
        reject_rules_like(&dups),
        [
            (
                "nih/subjects_2017-01-31.csv".to_string(),
                2,
                "superseded".to_string()
            ),
            (
                "nih/visits_2017-01-31.csv".to_string(),
                3,
                "superseded".to_string()
            ),
            (
                "nih/visits_2017-01-31.csv".to_string(),
                4,
                "collapsed".to_string()
            ),
        ]
    );

    let fate = w.table("row_fate");
    let read: Vec<String> = strs(&fate, "READ");
    let acc = strs(&fate, "ACCEPTED");
    let files = strs(&fate, "SRCFILE");
    let nih_visits = files
        .iter()
        .position(|f| f == "nih/visits_2017-01-31.csv")
        .unwrap();
    assert_eq!(
        (read[nih_visits].as_str(), acc[nih_visits].as_str()),
        ("7", "1")
    );

    let counts = w.table("visit_counts");
    assert_eq!(strs(&counts, "n_visits"), ["3", "0", "2", "0"]);
}

fn reject_rules_like(df: &polars::prelude::DataFrame) -> Vec<(String, i64, String)> {
    let f = strs(df, "SRCFILE");
    let l = strs(df, "SRCLINE");
    let r = strs(df, "FATE");
    f.into_iter()
        .zip(l)
        .zip(r)
        .map(|((f, l), r)| (f, l.parse().unwrap(), r))
        .collect()
}

#[test]
fn published_tables_carry_provenance_and_a_manifest() {
    let w = Workdir::from_fixture("two_sites");
    assert_exit(&w.run_pipeline(), 0);
    let meta = studyflow::inspect::footer_metadata(&w.path("out/current/visits.parquet")).unwrap();
    let keys: Vec<&str> = meta.iter().map(|(k, _)| k.as_str()).collect();
    for k in [
        "studyflow.pipeline_hash",
        "studyflow.stage_fingerprint",
        "studyflow.engine_version",
    ] {
        assert!(keys.contains(&k), "{keys:?}");
    }
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(w.path("out/current/manifest.json")).unwrap())
            .unwrap();
    assert_eq!(manifest["inputs"].as_array().unwrap().len(), 7);
    assert!(
        manifest["stages"]
            .as_array()
            .unwrap()
            .iter()
            .all(|s| s["status"] == "ran")
    );
    let o = w.run(&["inspect", "visits", "--pipeline", "pipeline.yaml"]);
    assert_exit(&o, 0);
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(
        text.contains("rows: 5") && text.contains("studyflow.stage_fingerprint"),
        "{text}"
    );
}

#[test]
fn same_inputs_give_byte_identical_tables_whatever_the_threads() {
    let w = Workdir::from_fixture("two_sites");
    assert_exit(
        &w.run(&[
            "--threads",
            "1",
            "run",
            "pipeline.yaml",
            "--run-date",
            "2026-11-25",
        ]),
        0,
    );
    let hash = |t: &str| {
        blake3::hash(&std::fs::read(w.path(&format!("out/current/{t}.parquet"))).unwrap())
    };
    let tables = [
        "subjects",
        "visits",
        "diary",
        "visit_counts",
        "rejects",
        "duplicates",
        "row_fate",
    ];
    let first: Vec<_> = tables.iter().map(|t| hash(t)).collect();
    // --force: a cached run would reuse the first run's tables instead of recomputing them.
    assert_exit(
        &w.run(&[
            "--threads",
            "4",
            "run",
            "pipeline.yaml",
            "--run-date",
            "2026-11-25",
            "--force",
        ]),
        0,
    );
    let second: Vec<_> = tables.iter().map(|t| hash(t)).collect();
    assert_eq!(first, second);
}

/// A dedupe consumes its raw table only when no other stage still needs it: here a stage that
/// runs after the dedupe (it reads the dedupe's table too) still reads every raw row, and the
/// dedupe's table is the one it makes when it is the raw table's only reader.
#[test]
fn a_raw_table_read_after_its_dedupe_is_still_whole() {
    let alone = Workdir::from_fixture("two_sites");
    assert_exit(&alone.run_pipeline(), 0);
    let visits = alone.table("visits");
    for threads in ["1", "2"] {
        let w = Workdir::from_fixture("two_sites");
        let yaml = std::fs::read_to_string(w.path("pipeline.yaml")).unwrap();
        let after = "  - name: raw_and_kept\n    kind: sql\n    inputs: [visits_raw, visits]\n    query: >\n      SELECT r.subject, r.date, r.SRCLINE, v.height\n      FROM visits_raw r LEFT JOIN visits v ON r.subject = v.subject AND r.date = v.date\n    publish: true\n    sort_by: [subject, date, SRCLINE]\n";
        w.write("pipeline.yaml", format!("{yaml}{after}").as_bytes());
        let o = w.run(&[
            "--threads",
            threads,
            "run",
            "pipeline.yaml",
            "--run-date",
            "2026-11-25",
        ]);
        assert_exit(&o, 0);
        assert!(
            w.table("visits").equals_missing(&visits),
            "threads {threads}"
        );
        let manifest: serde_json::Value =
            serde_json::from_slice(&std::fs::read(w.path("out/current/manifest.json")).unwrap())
                .unwrap();
        let raw_rows = manifest["stages"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["name"] == "visits_raw")
            .unwrap()["rows_out"]
            .as_u64()
            .unwrap();
        assert!(
            raw_rows > visits.height() as u64,
            "the fixture has duplicate visits"
        );
        assert_eq!(
            w.table("raw_and_kept").height() as u64,
            raw_rows,
            "threads {threads}"
        );
    }
}
