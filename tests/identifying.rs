//! Columns listed under `identifying:` never reach a log line or an error message: a failing
//! row's birth date is withheld everywhere but in the rejects table's RAWVALUE (README).

use crate::workdir::*;

const SUBJECTS: &str = "data/nih/subjects_2017-07-31.csv";

fn with_subjects(name: &str) -> Workdir {
    let w = Workdir::from_fixture("two_sites");
    w.write(
        SUBJECTS,
        &std::fs::read(fixture("hostile").join(name)).unwrap(),
    );
    w
}

fn assert_withheld(text: &str, values: &[&str]) {
    for v in values {
        assert!(!text.contains(v), "`{v}` printed in:\n{text}");
    }
}

const BIRTH_DATES: [&str; 3] = ["1889-07-14", "14.07.2003", "2030-02-28"];

#[test]
fn failing_birth_dates_stay_out_of_the_log_and_the_reject_limit_message() {
    let w = with_subjects("implausible_birth_dates.csv");
    for format in ["text", "json"] {
        let o = w.run(&[
            "--log-format",
            format,
            "run",
            "pipeline.yaml",
            "--run-date",
            "2026-11-25",
        ]);
        assert_exit(&o, 1);
        let err = stderr(&o);
        assert!(
            err.contains("nih/subjects_2017-07-31.csv: 3 of 3 rows rejected"),
            "{err}"
        );
        assert!(err.contains("withheld"), "{err}");
        assert_withheld(&err, &BIRTH_DATES);
        assert_withheld(&String::from_utf8_lossy(&o.stdout), &BIRTH_DATES);
    }
    // The rejects of the failed run are a data product: RAWVALUE keeps the value for the data
    // manager, REASON (which messages quote) does not.
    let failed = std::fs::read_dir(w.path("out/runs"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.to_string_lossy().ends_with(".failed"))
        .unwrap();
    let rejects = studyflow::inspect::read_table(&failed.join("rejects.parquet")).unwrap();
    let mine: Vec<usize> = strs(&rejects, "SRCFILE")
        .iter()
        .enumerate()
        .filter(|(_, f)| *f == "nih/subjects_2017-07-31.csv")
        .map(|(i, _)| i)
        .collect();
    let raw = strs(&rejects, "RAWVALUE");
    let reasons = strs(&rejects, "REASON");
    let rules = strs(&rejects, "RULE");
    let got: Vec<(&str, &str)> = mine
        .iter()
        .map(|&i| (raw[i].as_str(), rules[i].as_str()))
        .collect();
    assert_eq!(
        got,
        [
            ("1889-07-14", "date_range"),
            ("14.07.2003", "parse"),
            ("2030-02-28", "date_range")
        ]
    );
    for &i in &mine {
        assert_withheld(&reasons[i], &BIRTH_DATES);
        assert!(reasons[i].contains("`birth_date` (withheld: identifying)"));
    }
}

#[test]
fn a_file_without_its_header_line_does_not_print_the_birth_date() {
    let w = with_subjects("headerless_subjects.csv");
    let o = w.run_pipeline();
    assert_exit(&o, 1);
    let err = stderr(&o);
    assert!(
        err.contains("nih/subjects_2017-07-31.csv") && err.contains("header line missing"),
        "{err}"
    );
    assert_withheld(&err, &["2006-09-17"]);
}

#[test]
fn a_key_holding_an_identifying_column_is_withheld_from_reject_limit_examples() {
    // dedupe quotes the key in its conflict reason; the run masks it in the message.
    let w = Workdir::from_fixture("two_sites");
    let yaml = std::fs::read_to_string(w.path("pipeline.yaml"))
        .unwrap()
        .replace("    key: [subject]\n", "    key: [subject, birth_date]\n");
    w.write("pipeline.yaml", yaml.as_bytes());
    w.write(
        SUBJECTS,
        b"Patient ID,diagnosis,DOB,sex\nC09,CANDLE,2004-03-03,F\nC09,CANDLE,2004-03-03,M\n",
    );
    let o = w.run_pipeline();
    assert_exit(&o, 1);
    let err = stderr(&o);
    assert!(err.contains("top reasons: conflict (2)"), "{err}");
    assert!(err.contains("<withheld>"), "{err}");
    assert_withheld(&err, &["2004-03-03"]);
}

#[test]
fn inspect_withholds_identifying_columns_unless_asked() {
    let w = Workdir::from_fixture("two_sites");
    assert_exit(&w.run_pipeline(), 0);
    let path = w.path("out/current/subjects.parquet");
    let meta = studyflow::inspect::footer_metadata(&path).unwrap();
    assert!(
        meta.contains(&("studyflow.identifying".into(), "birth_date".into())),
        "{meta:?}"
    );
    // Birth dates of the fixture's accepted subjects.
    let dates = ["2005-04-12", "2008-11-30"];
    for args in [
        vec!["inspect", "subjects", "--pipeline", "pipeline.yaml"],
        vec!["inspect", path.to_str().unwrap()],
    ] {
        let o = w.run(&args);
        assert_exit(&o, 0);
        let out = String::from_utf8_lossy(&o.stdout);
        assert!(out.contains("<withheld>"), "{out}");
        assert_withheld(&out, &dates);
    }
    let o = w.run(&[
        "inspect",
        "subjects",
        "--pipeline",
        "pipeline.yaml",
        "--show-identifying",
    ]);
    assert_exit(&o, 0);
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(dates.iter().all(|d| out.contains(d)), "{out}");
    // A table without identifying columns says nothing about them.
    let o = w.run(&["inspect", "visits", "--pipeline", "pipeline.yaml"]);
    assert!(!String::from_utf8_lossy(&o.stdout).contains("withheld"));
}
