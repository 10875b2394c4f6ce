//! `diff`: after a protocol amendment it reports exactly the rows whose values changed, by
//! key and column; exit 0 when equal, 1 when different, 2 on a usage error.

use serde_json::Value;

use crate::workdir::*;

fn run(w: &Workdir) {
    assert_exit(
        &w.run(&["run", "pipeline.yaml", "--run-date", "2026-11-25"]),
        0,
    );
}

/// `studyflow diff ARGS` in the folder: exit code and stdout.
fn diff(w: &Workdir, args: &[&str]) -> (i32, String) {
    let mut all = vec!["diff"];
    all.extend_from_slice(args);
    all.extend_from_slice(&["--pipeline", "pipeline.yaml"]);
    let o = w.run(&all);
    assert!(!stderr(&o).contains("panicked"), "{}", stderr(&o));
    (
        o.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&o.stdout).into_owned(),
    )
}

/// The phases fixture run with W = 90, then with W = 60.
fn amended() -> Workdir {
    let w = Workdir::from_fixture("phases");
    run(&w);
    let yaml = std::fs::read_to_string(w.path("pipeline.yaml")).unwrap();
    w.write("pipeline.yaml", yaml.replace("W: 90", "W: 60").as_bytes());
    run(&w);
    w
}

fn keys(examples: &Value) -> Vec<String> {
    examples
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            format!(
                "{}/{}",
                e["key"]["USUBJID"].as_str().unwrap(),
                e["key"]["APHASEN"].as_str().unwrap()
            )
        })
        .collect()
}

#[test]
fn diff_after_an_amendment_reports_exactly_the_rows_whose_value_changed() {
    let w = amended();
    let (code, out) = diff(
        &w,
        &[
            "previous",
            "current",
            "phases",
            "--format",
            "json",
            "--examples",
            "20",
        ],
    );
    assert_eq!(code, 1, "{out}");
    let report: Value = serde_json::from_str(&out).unwrap();
    let t = &report["tables"][0];
    assert_eq!(t["key"], serde_json::json!(["USUBJID", "APHASEN"]));
    // W = 90 -> 60 (hand-computed from the fixture): the final phase starts 30 days later
    // where it started at LSTVSTDT - W + 1, the phase before it ends 30 days later; C04's first
    // dose falls inside the last 90 days but not the last 60, so its final phase loses a day
    // and a one-day escalation phase appears. Pretreatment windows and S03 do not move.
    assert_eq!(
        keys(&t["examples"]["changed"]),
        ["C01/3", "C01/4", "C02/2", "C02/4", "C04/4"]
    );
    assert_eq!(keys(&t["examples"]["added"]), ["C04/2"]);
    assert_eq!(keys(&t["examples"]["removed"]), Vec::<String>::new());
    assert_eq!(
        (&t["changed"], &t["added"], &t["removed"]),
        (&Value::from(5), &Value::from(1), &Value::from(0))
    );
    assert_eq!(
        t["changed_per_column"],
        serde_json::json!({"ASTDT": 3, "AENDT": 2, "ADURN": 5})
    );
    let c01_3 = &t["examples"]["changed"][0]["changes"];
    assert_eq!(
        c01_3,
        &serde_json::json!([
            {"column": "AENDT", "a": "2015-10-03", "b": "2015-11-02"},
            {"column": "ADURN", "a": "398", "b": "428"}
        ])
    );
    assert_eq!(
        t["examples"]["added"][0]["values"],
        serde_json::json!({"APHASE": "escalation", "ASTDT": "2015-05-01", "AENDT": "2015-05-01", "ADURN": "1"})
    );

    // The whole run: the phase tables differ, the rest is equal.
    let (code, text) = diff(&w, &["previous", "current"]);
    assert_eq!(code, 1);
    assert!(text.contains("table visits: equal (9 rows)"), "{text}");
    assert!(
        text.contains("table phases: 10 rows in A, 11 in B; 1 added, 0 removed, 5 changed (key: USUBJID, APHASEN)"),
        "{text}"
    );
    assert!(
        text.contains(
            "changed USUBJID=C01 APHASEN=4: ASTDT 2015-10-04 -> 2015-11-03, ADURN 90 -> 60"
        ),
        "{text}"
    );
    assert!(
        text.contains("table phase_days: 4 rows in A, 4 in B; 0 added, 0 removed, 1 changed"),
        "{text}"
    );
}

#[test]
fn diff_exit_codes_tolerance_and_parquet_paths() {
    let w = amended();
    // phase_days: only C04's count of phases changes, 2 -> 3.
    assert_eq!(diff(&w, &["previous", "current", "phase_days"]).0, 1);
    assert_eq!(
        diff(
            &w,
            &["previous", "current", "phase_days", "--tolerance", "1"]
        )
        .0,
        0
    );
    // Two Parquet files: the key comes from the manifest beside them.
    let runs: Vec<String> = {
        let mut r: Vec<String> = std::fs::read_dir(w.path("out/runs"))
            .unwrap()
            .map(|e| e.unwrap().path().display().to_string())
            .collect();
        r.sort();
        r
    };
    let (a, b) = (
        format!("{}/phases.parquet", runs[0]),
        format!("{}/phases.parquet", runs[1]),
    );
    let (code, text) = diff(&w, &[&a, &b]);
    assert_eq!(code, 1);
    assert!(text.contains("5 changed (key: USUBJID, APHASEN)"), "{text}");
    assert_eq!(diff(&w, &[&a, &a]).0, 0);
    // Keyed on the subject only, the repeats are paired in order and said so.
    let (code, text) = diff(&w, &[&a, &b, "--key", "USUBJID"]);
    assert_eq!(code, 1);
    assert!(text.contains("the key does not identify rows"), "{text}");

    // Nothing changed since: equal.
    run(&w);
    assert_eq!(diff(&w, &["previous", "current"]).0, 0);

    // Usage errors.
    assert_eq!(diff(&w, &["current", "nope"]).0, 2);
    assert_eq!(diff(&w, &["current", &a]).0, 2);
    assert_eq!(diff(&w, &["previous", "current", "no_such_table"]).0, 2);
    assert_eq!(diff(&w, &[&a, &b, "--key", "NOPE"]).0, 2);
}
