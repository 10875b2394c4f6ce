//! Nightly runs: unchanged stages are reused from the cache, a changed file is parsed again
//! alone, a protocol amendment re-runs only what follows it, and a broken cache is rebuilt.

use std::collections::BTreeMap;

use serde_json::Value;

use crate::workdir::*;

fn manifest(w: &Workdir) -> Value {
    serde_json::from_slice(&std::fs::read(w.path("out/current/manifest.json")).unwrap()).unwrap()
}

fn stage<'a>(m: &'a Value, name: &str) -> &'a Value {
    m["stages"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == name)
        .unwrap_or_else(|| panic!("no stage {name}"))
}

/// Stage name -> `ran` or `reused`.
fn statuses(m: &Value) -> BTreeMap<String, String> {
    m["stages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            (
                s["name"].as_str().unwrap().to_string(),
                s["status"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

fn ran(m: &Value) -> Vec<String> {
    statuses(m)
        .into_iter()
        .filter(|(_, s)| s == "ran")
        .map(|(n, _)| n)
        .collect()
}

fn reasons(m: &Value, name: &str) -> String {
    stage(m, name)["reasons"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r.as_str().unwrap())
        .collect::<Vec<_>>()
        .join("; ")
}

/// Every published Parquet file of `out/current` (or another run folder) with its bytes.
fn published_in(w: &Workdir, dir: &str) -> BTreeMap<String, Vec<u8>> {
    std::fs::read_dir(w.path(dir))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "parquet"))
        .map(|p| {
            (
                p.file_name().unwrap().to_string_lossy().into_owned(),
                std::fs::read(&p).unwrap(),
            )
        })
        .collect()
}

fn published(w: &Workdir) -> BTreeMap<String, Vec<u8>> {
    published_in(w, "out/current")
}

fn run(w: &Workdir, extra: &[&str]) -> std::process::Output {
    let mut args = vec!["run", "pipeline.yaml", "--run-date", "2026-11-25"];
    args.extend_from_slice(extra);
    let o = w.run(&args);
    assert_exit(&o, 0);
    o
}

fn plan(w: &Workdir, extra: &[&str]) -> String {
    let mut args = vec!["plan", "pipeline.yaml", "--run-date", "2026-11-25"];
    args.extend_from_slice(extra);
    let o = w.run(&args);
    assert_exit(&o, 0);
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// The `plan` line of a stage.
fn plan_line<'a>(text: &'a str, name: &str) -> &'a str {
    text.lines()
        .find(|l| l.split_whitespace().nth(2) == Some(name))
        .unwrap_or_else(|| panic!("no plan line for {name} in\n{text}"))
}

fn truncate(path: &std::path::Path) {
    let len = std::fs::metadata(path).unwrap().len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(path)
        .unwrap()
        .set_len(len / 2)
        .unwrap();
}

#[test]
fn a_second_run_with_nothing_changed_reuses_every_stage_and_publishes_identical_tables() {
    let w = Workdir::from_fixture("two_sites");
    run(&w, &[]);
    let first = published(&w);
    let m = manifest(&w);
    assert!(ran(&m).len() == 8 && m["reuse"]["files_parsed"] == 7, "{m}");

    let text = plan(&w, &[]);
    assert!(text.contains("0 to run, 8 to reuse"), "{text}");
    assert!(
        plan_line(&text, "diary_raw").contains("reuse  up to date"),
        "{text}"
    );

    run(&w, &[]);
    let m = manifest(&w);
    assert_eq!(ran(&m), Vec::<String>::new());
    let reuse = &m["reuse"];
    assert_eq!(
        (
            &reuse["stages_reused"],
            &reuse["files_parsed"],
            &reuse["files_reused"],
            &reuse["tables_written"],
        ),
        (
            &Value::from(8),
            &Value::from(0),
            &Value::from(7),
            &Value::from(0)
        ),
        "{m}"
    );
    assert_eq!(reasons(&m, "visit_counts"), "up to date");
    assert_eq!(published(&w), first, "reused tables are byte-identical");

    // Rewritten from the cache (nothing to link from): still byte-identical.
    std::fs::create_dir_all(w.path("out2")).unwrap();
    let status = std::process::Command::new("cp")
        .args(["-r", "out/cache", "out2/cache"])
        .current_dir(w.dir.path())
        .status()
        .unwrap();
    assert!(status.success());
    run(&w, &["--out", "out2"]);
    let m2: Value =
        serde_json::from_slice(&std::fs::read(w.path("out2/current/manifest.json")).unwrap())
            .unwrap();
    assert_eq!(ran(&m2), Vec::<String>::new());
    assert_eq!(m2["reuse"]["tables_linked"], 0);
    assert_eq!(published_in(&w, "out2/current"), first);

    // The cache is safe to delete: everything runs again, same bytes.
    std::fs::remove_dir_all(w.path("out/cache")).unwrap();
    run(&w, &[]);
    let m = manifest(&w);
    assert_eq!(ran(&m).len(), 8);
    assert_eq!(published(&w), first);
}

#[test]
fn changing_one_sites_file_reparses_that_file_only_and_reruns_its_downstream() {
    let w = Workdir::from_fixture("two_sites");
    run(&w, &[]);
    // A corrected export of the NIH diary: one more day.
    let mut diary = std::fs::read(w.path("data/nih/diary_2017-06-30.csv")).unwrap();
    diary.extend_from_slice(b"\nC01,2014-03-06,0,0\n");
    w.write("data/nih/diary_2017-06-30.csv", &diary);

    let text = plan(&w, &[]);
    let line = plan_line(&text, "diary_raw");
    assert!(
        line.contains("run    file nih/diary_2017-06-30.csv changed [1 of 2 files to parse]"),
        "{text}"
    );
    assert!(
        plan_line(&text, "diary_dedup").contains("input `diary_raw` changed"),
        "{text}"
    );
    assert!(plan_line(&text, "visits_raw").contains("reuse"), "{text}");
    assert!(text.contains("3 to run, 5 to reuse"), "{text}");

    run(&w, &[]);
    let m = manifest(&w);
    assert_eq!(ran(&m), ["diary", "diary_dedup", "diary_raw"]);
    let raw = stage(&m, "diary_raw");
    assert_eq!(
        (&raw["files_parsed"], &raw["files_reused"]),
        (&Value::from(1), &Value::from(1))
    );
    assert_eq!(
        reasons(&m, "diary_raw"),
        "file nih/diary_2017-06-30.csv changed"
    );
    assert_eq!(reasons(&m, "diary"), "input `diary_dedup` changed");

    // A newer export supersedes rows of the older ones: still only that file is parsed.
    w.write(
        "data/nih/diary_2017-07-31.csv",
        b"Patient ID,diary_date,fever,rash\nC01,2014-03-01,3,1\nC01,2014-03-10,0,0\n",
    );
    let text = plan(&w, &[]);
    assert!(
        plan_line(&text, "diary_raw").contains("new file nih/diary_2017-07-31.csv"),
        "{text}"
    );
    run(&w, &[]);
    let m = manifest(&w);
    assert_eq!(stage(&m, "diary_raw")["files_parsed"], 1);
    assert_eq!(m["reuse"]["files_parsed"], 1);
    let dups = w.table("duplicates");
    let superseded: Vec<String> = strs(&dups, "SRCFILE")
        .into_iter()
        .zip(strs(&dups, "FATE"))
        .filter(|(_, f)| f == "superseded")
        .map(|(s, _)| s)
        .collect();
    assert!(
        superseded.contains(&"nih/diary_2017-06-30.csv".to_string()),
        "{superseded:?}"
    );
    // And the result is what a cold run on the same files publishes, byte for byte.
    let cached = published(&w);
    run(&w, &["--out", "cold"]);
    assert_eq!(published_in(&w, "cold/current"), cached);
}

#[test]
fn editing_a_phase_window_reruns_only_the_phase_stages_and_what_follows() {
    let w = Workdir::from_fixture("phases");
    run(&w, &[]);
    let first = published(&w);
    let yaml = std::fs::read_to_string(w.path("pipeline.yaml")).unwrap();
    w.write("pipeline.yaml", yaml.replace("W: 90", "W: 60").as_bytes());

    let text = plan(&w, &[]);
    assert!(
        plan_line(&text, "phases").contains("run    parameter `constants` changed"),
        "{text}"
    );
    assert!(
        plan_line(&text, "phase_days").contains("run    input `phases` changed"),
        "{text}"
    );
    assert!(text.contains("2 to run, 8 to reuse"), "{text}");

    run(&w, &[]);
    let m = manifest(&w);
    assert_eq!(ran(&m), ["phase_days", "phases"]);
    assert_eq!(stage(&m, "anchors")["status"], "reused");
    assert_eq!(stage(&m, "visit_weights")["status"], "reused");

    // Undoing the amendment reuses the earlier outputs, kept in the cache.
    w.write("pipeline.yaml", yaml.as_bytes());
    let text = plan(&w, &[]);
    assert!(
        plan_line(&text, "phases").contains("reuse  same recipe as a cached earlier run"),
        "{text}"
    );
    run(&w, &[]);
    let m = manifest(&w);
    assert_eq!(ran(&m), Vec::<String>::new());
    assert_eq!(published(&w), first);
}

#[test]
fn a_truncated_cache_file_is_rebuilt() {
    let w = Workdir::from_fixture("two_sites");
    run(&w, &[]);
    let first = published(&w);
    let m = manifest(&w);
    let fp = stage(&m, "subjects")["fingerprint"]
        .as_str()
        .unwrap()
        .to_string();
    // `subjects` is published: its cache entry links to the published Parquet file.
    truncate(&w.path(&format!("out/cache/stages/{fp}.table.parquet")));
    // The cached parse of one visits file, found from the recipe in the manifest.
    let recipe: studyflow::fingerprint::Recipe =
        serde_json::from_value(stage(&m, "visits_raw")["recipe"].clone()).unwrap();
    let src = recipe.source.unwrap();
    let f = src
        .files
        .iter()
        .find(|f| f.file == "nih/visits_2017-06-30.csv")
        .unwrap();
    let key = src.file_key(&f.site, &f.file, &f.hash, f.run_date.as_deref());
    truncate(&w.path(&format!("out/cache/files/{key}.table.arrow")));
    // Another visits file changes, so the truncated parse would be needed.
    let mut hh = std::fs::read(w.path("data/hh/visits_2017-02-28.csv")).unwrap();
    hh.extend_from_slice(b"05.02.2015; o-1 ;32;135;cm\n");
    w.write("data/hh/visits_2017-02-28.csv", &hh);

    let o = run(&w, &[]);
    let m = manifest(&w);
    assert_eq!(stage(&m, "subjects")["status"], "ran");
    assert!(
        reasons(&m, "subjects").contains("cached output unusable"),
        "{}",
        reasons(&m, "subjects")
    );
    assert_eq!(stage(&m, "subjects_raw")["status"], "reused");
    assert_eq!(
        stage(&m, "visits_raw")["files_parsed"],
        2,
        "the changed file and the truncated one: {}",
        stderr(&o)
    );
    assert_eq!(published(&w)["subjects.parquet"], first["subjects.parquet"]);

    // Same size, one byte flipped: found by its hash when read, and rebuilt.
    let fp = stage(&m, "diary_dedup")["fingerprint"]
        .as_str()
        .unwrap()
        .to_string();
    // (A deduplicated stream's entry keeps the numbers of its rows among its files' rows.)
    let path = w.path(&format!("out/cache/stages/{fp}.rows.arrow"));
    let mut bytes = std::fs::read(&path).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0xff;
    std::fs::write(&path, &bytes).unwrap();
    // An amended reason in the `diary` stage makes it read diary_dedup.
    let yaml = std::fs::read_to_string(w.path("pipeline.yaml")).unwrap();
    w.write(
        "pipeline.yaml",
        yaml.replace("is not a plausible diary day", "is not plausible")
            .as_bytes(),
    );
    let o = run(&w, &[]);
    assert!(
        stderr(&o).contains("does not match its hash"),
        "{}",
        stderr(&o)
    );
    let m = manifest(&w);
    assert_eq!(stage(&m, "diary_dedup")["status"], "ran");
    assert_eq!(stage(&m, "diary")["status"], "ran");
    let cached = published(&w);
    run(&w, &["--out", "cold"]);
    assert_eq!(published_in(&w, "cold/current"), cached);

    // The rebuilt entries are trusted again.
    run(&w, &[]);
    assert_eq!(ran(&manifest(&w)), Vec::<String>::new());
}

#[test]
fn select_and_force_run_stages_whatever_the_cache_holds() {
    let w = Workdir::from_fixture("two_sites");
    run(&w, &[]);
    let text = plan(&w, &["--select", "visits"]);
    assert!(
        plan_line(&text, "visits").contains("run    selected"),
        "{text}"
    );
    assert!(plan_line(&text, "visits_raw").contains("reuse"), "{text}");
    run(&w, &["--select", "visits"]);
    let m = manifest(&w);
    assert_eq!(ran(&m), ["visit_counts", "visits"]);
    assert_eq!(reasons(&m, "visit_counts"), "selected");

    run(&w, &["--select", "+visits"]);
    let m = manifest(&w);
    assert_eq!(ran(&m), ["visit_counts", "visits", "visits_raw"]);
    assert_eq!(stage(&m, "visits_raw")["files_parsed"], 3);

    run(&w, &["--force"]);
    let m = manifest(&w);
    assert_eq!(ran(&m).len(), 8);
    assert_eq!(m["reuse"]["files_parsed"], 7);
    assert_eq!(reasons(&m, "subjects"), "forced");

    let o = w.run(&["run", "pipeline.yaml", "--select", "visit"]);
    assert_exit(&o, 2);
    assert!(
        stderr(&o).contains("did you mean `visits`?"),
        "{}",
        stderr(&o)
    );
}

#[test]
fn a_later_run_date_parses_again_only_files_with_dates_after_it() {
    let w = Workdir::from_fixture("two_sites");
    run(&w, &[]);
    // nih/visits_2017-01-31.csv holds 2091-01-01, rejected as after the run date; every
    // other file's result holds for any later run date.
    let o = w.run(&["run", "pipeline.yaml", "--run-date", "2026-11-26"]);
    assert_exit(&o, 0);
    let m = manifest(&w);
    // The file's rows are as before (only its reject's reason names the new date), so
    // `visits` makes the same table and `visit_counts` is not run again (early cutoff).
    assert_eq!(ran(&m), ["visits", "visits_raw"]);
    assert!(reasons(&m, "visits").contains("output unchanged"), "{m}");
    assert_eq!(
        reasons(&m, "visit_counts"),
        "up to date: the tables of inputs `visits` are unchanged"
    );
    assert_eq!(stage(&m, "visits_raw")["files_parsed"], 1);
    assert_eq!(
        reasons(&m, "visits_raw"),
        "run date changed and file nih/visits_2017-01-31.csv has dates after 2026-11-26"
    );
    assert!(
        strs(&w.table("rejects"), "REASON")
            .iter()
            .any(|r| r.contains("2091-01-01 is after 2026-11-26"))
    );
}

/// Every published file of `out/current`, by name, with its bytes.
fn published_bytes(w: &Workdir, out: &str) -> Vec<(String, Vec<u8>)> {
    let mut files: Vec<(String, Vec<u8>)> = std::fs::read_dir(w.path(&format!("{out}/current")))
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().ends_with(".parquet"))
        .map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            (name, std::fs::read(e.path()).unwrap())
        })
        .collect();
    files.sort();
    files
}

/// Appends `line` to the file `rel` of the work folder.
fn append_line(w: &Workdir, rel: &str, line: &str) {
    let text = std::fs::read_to_string(w.path(rel)).unwrap();
    w.write(rel, format!("{}\n{line}\n", text.trim_end()).as_bytes());
}

/// A cold run of the same files into `cold/` publishes byte for byte what `out/` holds.
fn assert_a_cold_run_publishes_the_same(w: &Workdir) {
    let o = w.run(&[
        "run",
        "pipeline.yaml",
        "--run-date",
        "2026-11-25",
        "--out",
        "cold",
    ]);
    assert_exit(&o, 0);
    let (incremental, cold) = (published_bytes(w, "out"), published_bytes(w, "cold"));
    assert_eq!(incremental.len(), cold.len());
    for ((a, x), (b, y)) in incremental.iter().zip(&cold) {
        assert_eq!(a, b);
        assert!(x == y, "{a} differs from a cold run's");
    }
}

#[test]
fn a_stage_that_makes_the_same_table_again_cuts_off_the_stages_after_it() {
    let w = Workdir::from_fixture("two_sites");
    run(&w, &[]);
    let cached_part = |m: &Value, part: &str| {
        let s = stage(m, "diary_dedup");
        let key = s["cache_key"]
            .as_str()
            .or(s["fingerprint"].as_str())
            .unwrap();
        w.path(&format!("out/cache/stages/{key}.{part}.arrow"))
    };
    let before = cached_part(&manifest(&w), "rows");
    // A duplicate of a diary line already in the newest export: the ingest and the dedupe
    // run again; the dedupe keeps the same rows, so the validation after it is reused.
    let text = std::fs::read_to_string(w.path("data/nih/diary_2017-06-30.csv")).unwrap();
    let last = text.trim_end().lines().last().unwrap().to_string();
    append_line(&w, "data/nih/diary_2017-06-30.csv", &last);
    run(&w, &[]);
    let m = manifest(&w);
    assert_eq!(ran(&m), ["diary_dedup", "diary_raw"], "{m}");
    assert!(
        reasons(&m, "diary_dedup").contains("output unchanged"),
        "{m}"
    );
    assert_eq!(
        reasons(&m, "diary"),
        "up to date: the tables of inputs `diary_dedup` are unchanged"
    );
    // The dedupe's cache entries keep the numbers of the rows it keeps among its files' rows,
    // not the rows again.
    assert!(before.exists());
    assert!(cached_part(&m, "rows").exists());
    assert!(!cached_part(&m, "table").exists());
    // Its published table is the previous one with a new footer (its lineage changed).
    let status = m["tables"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["name"] == "diary")
        .map(|t| t["status"].clone());
    assert_eq!(status, Some(Value::from("restamped")), "{m}");
    // The published tables are those of a cold run on the same files, byte for byte
    // (fingerprints in the footers included: they do not depend on what was cached).
    assert_a_cold_run_publishes_the_same(&w);
    // A cached stage whose input changed in content runs again, as before.
    let changed = text.replacen("2014-03-01,2,1", "2014-03-01,3,1", 1);
    assert_ne!(changed, text);
    w.write("data/nih/diary_2017-06-30.csv", changed.as_bytes());
    run(&w, &[]);
    let m = manifest(&w);
    assert!(ran(&m).contains(&"diary".to_string()), "{m}");
}

#[test]
fn anchors_rerun_on_columns_read_from_the_cache_and_publish_what_a_cold_run_does() {
    let w = Workdir::from_fixture("phases");
    run(&w, &[]);
    // A later escalation dose of C01: the dosing chain runs again, and so do the anchors,
    // whose reused inputs (subjects, visits) are read from the cache for the columns they use.
    // No anchor moves, so the phases are reused.
    append_line(
        &w,
        "data/nih/dosing_2017-01-31.csv",
        "C01,2014-05-01,escalation",
    );
    run(&w, &[]);
    let m = manifest(&w);
    assert_eq!(stage(&m, "anchors")["status"], "ran", "{m}");
    assert!(reasons(&m, "anchors").contains("output unchanged"), "{m}");
    assert_eq!(stage(&m, "subjects")["status"], "reused", "{m}");
    assert_eq!(stage(&m, "phases")["status"], "reused", "{m}");
    assert_a_cold_run_publishes_the_same(&w);
}
