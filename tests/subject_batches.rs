//! `run --batch-subjects N`: the stages after the ingests run a few subjects at a time and
//! publish exactly the tables of a whole run; a later whole run reuses what a batched run
//! cached, and a batched run with nothing to run reuses it too; a plan with a stage that needs several subjects at once runs whole and says why.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use polars::prelude::*;
use serde_json::Value;
use studyflow::generate::{DirtRates, GenerateOptions, generate};

use crate::workdir::{Workdir, assert_exit, reference_command, run_reference, stderr};

/// Every published table of `out/current`, by file name.
fn tables(out: &Path) -> BTreeMap<String, DataFrame> {
    std::fs::read_dir(out.join("current"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "parquet"))
        .map(|p| {
            let df = ParquetReader::new(std::fs::File::open(&p).unwrap())
                .finish()
                .unwrap();
            (p.file_name().unwrap().to_string_lossy().into_owned(), df)
        })
        .collect()
}

fn assert_same_tables(
    got: &BTreeMap<String, DataFrame>,
    want: &BTreeMap<String, DataFrame>,
    what: &str,
) {
    assert_eq!(
        got.keys().collect::<Vec<_>>(),
        want.keys().collect::<Vec<_>>(),
        "{what}: the tables published"
    );
    for (name, w) in want {
        let g = &got[name];
        assert_eq!(g.schema(), w.schema(), "{what}: columns of {name}");
        assert!(
            g.equals_missing(w),
            "{what}: rows of {name} differ\ngot {g}\nwant {w}"
        );
    }
}

fn manifest(out: &Path) -> Value {
    serde_json::from_slice(&std::fs::read(out.join("current/manifest.json")).unwrap()).unwrap()
}

/// Stage name -> (status, reasons).
fn stages(m: &Value) -> BTreeMap<String, (String, String)> {
    m["stages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            let reasons: Vec<&str> = s["reasons"]
                .as_array()
                .unwrap()
                .iter()
                .map(|r| r.as_str().unwrap())
                .collect();
            (
                s["name"].as_str().unwrap().to_string(),
                (
                    s["status"].as_str().unwrap().to_string(),
                    reasons.join("; "),
                ),
            )
        })
        .collect()
}

/// The stages that ran in the current run of `out`.
fn ran(out: &Path) -> Vec<String> {
    stages(&manifest(out))
        .into_iter()
        .filter(|(_, (s, _))| s == "ran")
        .map(|(n, _)| n)
        .collect()
}

/// A generated cohort (9 subjects, seed 8) in `dir`, and a whole run of it published to
/// `dir/out`: its data folder and output folder.
fn cohort_run(dir: &Path) -> (PathBuf, PathBuf) {
    let data = cohort(dir, 9, 8);
    let out = dir.join("out");
    run_reference(&data, &out, &[]);
    (data, out)
}

fn cohort(dir: &Path, subjects: usize, seed: u64) -> PathBuf {
    let data = dir.join("data");
    generate(&GenerateOptions {
        out: data.clone(),
        subjects,
        years: 1,
        sites: 3,
        seed,
        dirt: DirtRates::dense(),
    })
    .unwrap();
    data
}

#[test]
fn batches_of_any_size_publish_the_tables_of_a_whole_run() {
    let dir = tempfile::tempdir().unwrap();
    let data = cohort(dir.path(), 12, 11);
    let whole = dir.path().join("whole");
    run_reference(&data, &whole, &[]);
    let want = tables(&whole);
    assert!(want.contains_key("addiary.parquet") && want.contains_key("row_fate.parquet"));
    // One subject per batch, batches that do not divide the cohort, one batch for all.
    for size in ["1", "5", "1000"] {
        let out = dir.path().join(format!("batches-{size}"));
        run_reference(&data, &out, &["--batch-subjects", size]);
        assert_same_tables(&tables(&out), &want, &format!("batches of {size}"));
        let m = manifest(&out);
        let n: usize = size.parse().unwrap();
        let subjects = tables(&whole)["subjects.parquet"].height();
        let (status, reasons) = &stages(&m)["addiary"];
        assert_eq!(status, "ran");
        // The subject ids of every source: at least the subjects table's.
        let batches: usize = reasons
            .strip_prefix("ran in ")
            .and_then(|r| r.split_whitespace().next())
            .and_then(|b| b.parse().ok())
            .unwrap_or_else(|| panic!("{reasons}"));
        assert!(batches >= subjects.div_ceil(n), "{reasons}");
        assert!(batches <= 1000, "{reasons}");
    }
}

#[test]
fn a_whole_run_after_a_batched_run_reuses_it_and_recomputes_what_it_did_not_keep() {
    let dir = tempfile::tempdir().unwrap();
    let data = cohort(dir.path(), 9, 8);
    let out = dir.path().join("out");
    run_reference(&data, &out, &["--batch-subjects", "4"]);
    let batched = tables(&out);

    // Nothing changed: every stage is reused, batches asked for or not; the tables are the same.
    for extra in [&["--batch-subjects", "4"][..], &[]] {
        let o = run_reference(&data, &out, extra);
        assert_eq!(ran(&out), Vec::<String>::new(), "{}", stderr(&o));
        assert_same_tables(&tables(&out), &batched, "reused after a batched run");
    }

    // A stage selected to run again, every file's parse taken from the cache: the batches
    // read the files back from it.
    let o = run_reference(&data, &out, &["--select", "labs", "--batch-subjects", "4"]);
    let m = manifest(&out);
    let st = stages(&m);
    assert_eq!(st["diary_raw"].0, "reused", "{}", stderr(&o));
    assert!(
        st["addiary"].1.starts_with("ran in 3 subject batches"),
        "{:?}",
        st["addiary"]
    );
    assert_same_tables(&tables(&out), &batched, "batched on cached parses");

    // One lab file changes: the stages after it run whole, and the tables they read that the
    // batched run did not keep (the diary's dedupe, say) are computed again. The result is a
    // cold whole run's on the same files.
    copy_a_lab_line(&data, "nih");
    let o = run_reference(&data, &out, &[]);
    let m = manifest(&out);
    let st = stages(&m);
    assert_eq!(st["labs"].0, "ran", "{}", stderr(&o));
    assert_eq!(st["diary_raw"].0, "reused");
    let cold = dir.path().join("cold");
    run_reference(&data, &cold, &[]);
    assert_same_tables(
        &tables(&out),
        &tables(&cold),
        "incremental after a batched run",
    );
}

/// Appends a copy of the last line of the first lab file of `site` (the dedupe collapses it).
fn copy_a_lab_line(data: &Path, site: &str) {
    let labs = std::fs::read_dir(data.join(site))
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| {
            p.file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with("labs_")
        })
        .unwrap();
    let mut text = std::fs::read(&labs).unwrap();
    let last_line = text
        .split(|&b| b == b'\n')
        .rfind(|l| !l.is_empty())
        .unwrap()
        .to_vec();
    text.extend_from_slice(b"\n");
    text.extend_from_slice(&last_line);
    text.extend_from_slice(b"\n");
    std::fs::write(&labs, text).unwrap();
}

#[test]
fn a_batched_run_with_nothing_to_run_after_an_early_cutoff_reuses_everything() {
    let dir = tempfile::tempdir().unwrap();
    let (data, out) = cohort_run(dir.path());
    // The lab dedupe makes the same table again: the stages after it keep the name of its
    // earlier content, and are reused.
    copy_a_lab_line(&data, "nih");
    run_reference(&data, &out, &[]);
    let st = stages(&manifest(&out));
    assert_eq!(
        (st["labs"].0.as_str(), st["labs_std"].0.as_str()),
        ("ran", "reused")
    );
    let before = tables(&out);
    // A batched run decides on those names too: nothing to run, no batches.
    let o = run_reference(&data, &out, &["--batch-subjects", "4"]);
    assert_eq!(ran(&out), Vec::<String>::new(), "{}", stderr(&o));
    assert_same_tables(&tables(&out), &before, "reused");
}

#[test]
fn a_plan_with_a_stage_across_subjects_runs_whole_and_says_why() {
    // The fixture's `sql` stage is not marked `subject_local: true`.
    let w = Workdir::from_fixture("two_sites");
    let with_batches = |command: &str| {
        let o = w.run(&[
            command,
            "pipeline.yaml",
            "--run-date",
            "2026-11-25",
            "--batch-subjects",
            "1",
        ]);
        assert_exit(&o, 0);
        o
    };
    let err = stderr(&with_batches("run"));
    assert!(
        err.contains("not running in subject batches: stage `")
            && err
                .contains("(sql): it is a query the pipeline does not mark `subject_local: true`"),
        "{err}"
    );
    // `plan` says so beforehand.
    let o = with_batches("plan");
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(
        text.contains("subject batches: not possible, stage `")
            && text.contains("; the run goes whole"),
        "{text}"
    );
    let whole = Workdir::from_fixture("two_sites");
    assert_exit(
        &whole.run(&["run", "pipeline.yaml", "--run-date", "2026-11-25"]),
        0,
    );
    assert_same_tables(
        &tables(&w.path("out")),
        &tables(&whole.path("out")),
        "whole run despite --batch-subjects",
    );
}

#[test]
fn a_batched_run_failing_or_killed_midway_leaves_the_published_run_and_no_spill() {
    let dir = tempfile::tempdir().unwrap();
    let (data, out) = cohort_run(dir.path());
    let before = tables(&out);
    let current = std::fs::read_link(out.join("current")).unwrap();
    // A failed write of a batched table (an error), then a kill while writing one.
    for (point, action) in [("write:addiary", "error"), ("write:adster", "abort")] {
        let o = reference_command(&data, &out, &["--force", "--batch-subjects", "2"])
            .env("STUDYFLOW_FAILPOINT", point)
            .env("STUDYFLOW_FAILPOINT_ACTION", action)
            .output()
            .unwrap();
        assert!(!o.status.success(), "{point}: {}", stderr(&o));
        assert_eq!(std::fs::read_link(out.join("current")).unwrap(), current);
        assert_same_tables(&tables(&out), &before, point);
    }
    // The next run sweeps the killed run's folder, spill included, and publishes.
    run_reference(&data, &out, &["--batch-subjects", "2"]);
    assert_same_tables(&tables(&out), &before, "after recovery");
    for e in std::fs::read_dir(out.join("runs")).unwrap() {
        let name = e.unwrap().file_name().to_string_lossy().into_owned();
        assert!(!name.ends_with(".partial"), "{name} left behind");
        let spill = out.join("runs").join(&name).join(".batches");
        assert!(!spill.exists(), "{} left behind", spill.display());
    }
}
