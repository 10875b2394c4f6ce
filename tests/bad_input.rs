//! Bad input files (PIPELINE.md section 4): a clear message or rejects, never a panic.

use crate::workdir::*;

fn run_with(file: &str, bytes: &[u8]) -> (std::process::Output, Workdir) {
    let w = Workdir::from_fixture("two_sites");
    w.write(file, bytes);
    let o = w.run_pipeline();
    (o, w)
}

#[test]
fn an_empty_drop_is_a_clear_error() {
    let (o, w) = run_with("data/nih/diary_2017-07-31.csv", b"");
    assert_exit(&o, 1);
    let err = stderr(&o);
    assert!(
        err.contains("diary_2017-07-31.csv") && err.contains("empty"),
        "{err}"
    );
    assert!(!w.path("out/current").exists(), "nothing is published");
}

#[test]
fn a_header_only_file_reads_zero_rows() {
    let (o, w) = run_with(
        "data/nih/diary_2017-07-31.csv",
        b"Patient ID,diary_date,fever,rash\n",
    );
    assert_exit(&o, 0);
    let fate = w.table("row_fate");
    let files = strs(&fate, "SRCFILE");
    let i = files
        .iter()
        .position(|f| f == "nih/diary_2017-07-31.csv")
        .unwrap();
    assert_eq!(strs(&fate, "READ")[i], "0");
}

#[test]
fn binary_junk_names_the_missing_columns() {
    let junk: Vec<u8> = (0..4096u32).map(|i| (i * 7919 % 251) as u8).collect();
    let (o, _) = run_with("data/nih/diary_2017-07-31.csv", &junk);
    assert_exit(&o, 1);
    let err = stderr(&o);
    assert!(
        err.contains("diary_2017-07-31.csv") && err.contains("not found"),
        "{err}"
    );
}

#[test]
fn a_truncated_last_line_is_rejected_not_lost() {
    let (o, w) = run_with(
        "data/nih/diary_2017-07-31.csv",
        b"Patient ID,diary_date,fever,rash\nC01,2014-04-01,1,1\nC01,2014-04-0",
    );
    assert_exit(&o, 0);
    let rejects = reject_rules(&w.table("rejects"));
    assert!(
        rejects.contains(&("nih/diary_2017-07-31.csv".into(), 3, "columns".into())),
        "{rejects:?}"
    );
}

#[test]
fn an_unterminated_quote_is_rejected_not_lost() {
    let (o, w) = run_with(
        "data/nih/diary_2017-07-31.csv",
        b"Patient ID,diary_date,fever,rash\nC01,2014-04-01,1,1\nC01,\"2014-04-02,1,1\nC01,2014-04-03,1,1\n",
    );
    assert_exit(&o, 0);
    let rejects = reject_rules(&w.table("rejects"));
    assert!(
        rejects.contains(&("nih/diary_2017-07-31.csv".into(), 3, "columns".into())),
        "{rejects:?}"
    );
}

#[test]
fn a_missing_mapped_column_names_file_column_found_columns_and_closest_match() {
    let (o, _) = run_with(
        "data/nih/diary_2017-07-31.csv",
        b"Patient ID,diary_dat,fever,rash\nC01,2014-04-01,1,1\n",
    );
    assert_exit(&o, 1);
    let err = stderr(&o);
    assert!(err.contains("nih/diary_2017-07-31.csv"), "{err}");
    assert!(err.contains("column `date` not found"), "{err}");
    assert!(
        err.contains("columns found: Patient ID, diary_dat, fever, rash"),
        "{err}"
    );
    assert!(err.contains("closest match: `diary_dat`"), "{err}");
}

#[test]
fn too_many_rejects_fail_the_run_naming_file_reasons_and_lines() {
    let mut csv = b"Patient ID,diary_date,fever,rash\n".to_vec();
    for d in 1..=9 {
        csv.extend_from_slice(format!("C01,2099-01-0{d},1,1\n").as_bytes());
    }
    csv.extend_from_slice(b"C01,2014-05-01,1,1\n");
    let (o, w) = run_with("data/nih/diary_2017-07-31.csv", &csv);
    assert_exit(&o, 1);
    let err = stderr(&o);
    assert!(
        err.contains("nih/diary_2017-07-31.csv: 9 of 10 rows rejected (90.0%)"),
        "{err}"
    );
    assert!(err.contains("top reasons: date_range (9)"), "{err}");
    assert!(err.contains("line 2:"), "{err}");
    assert!(!w.path("out/current").exists(), "nothing is published");
}

#[test]
fn a_row_level_query_that_drops_rows_fails_the_run_naming_the_files() {
    // `row_level: true` says each output row is one input row; a query that filters rows
    // breaks that, and row fate does not reconcile: the run fails and publishes nothing.
    let w = Workdir::from_fixture("two_sites");
    let yaml = std::fs::read_to_string(w.path("pipeline.yaml")).unwrap();
    let stage = "  - name: feverish\n    kind: sql\n    inputs: [diary]\n    row_level: true\n    query: SELECT * FROM diary WHERE fever > 0\n    publish: true\n    sort_by: [subject, date]\n";
    w.write("pipeline.yaml", format!("{yaml}{stage}").as_bytes());
    let o = w.run_pipeline();
    assert_exit(&o, 1);
    assert!(
        stderr(&o).contains("row fate does not reconcile")
            && stderr(&o).contains("diary_2017-06-30.csv -> feverish"),
        "{}",
        stderr(&o)
    );
    assert!(!w.path("out/current").exists());
}
