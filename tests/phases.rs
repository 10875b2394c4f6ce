//! Treatment phases on generated cohorts: anchors equal the generator's truth, the phase
//! windows follow DOMAIN.md section 5, and a protocol amendment (W = 90 -> 60) changes
//! exactly the phase of the days it should and nothing upstream.

use std::collections::BTreeMap;
use std::path::Path;

use chrono::NaiveDate;
use polars::prelude::*;

use crate::workdir::*;

/// A small generated cohort and the reference pipeline, copied into a work folder.
fn cohort(subjects: usize) -> Workdir {
    cohort_of(subjects, 7)
}

fn cohort_of(subjects: usize, seed: u64) -> Workdir {
    let w = Workdir::empty();
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    studyflow::generate::generate(&studyflow::generate::GenerateOptions {
        out: w.path("data"),
        subjects,
        years: 2,
        sites: 3,
        seed,
        ..Default::default()
    })
    .unwrap();
    let yaml = std::fs::read_to_string(root.join("pipelines/reference.yaml"))
        .unwrap()
        .replace("data_dir: ../data/sample", "data_dir: data")
        .replace("out_dir: ../out", "out_dir: out")
        .replace(
            "../data/reference/",
            &format!("{}/data/reference/", root.display()),
        );
    w.write("pipeline.yaml", yaml.as_bytes());
    w
}

fn date_col(df: &DataFrame, c: &str) -> Vec<Option<NaiveDate>> {
    strs(df, c)
        .iter()
        .map(|s| NaiveDate::parse_from_str(s, "%Y-%m-%d").ok())
        .collect()
}

/// DOMAIN.md section 5, written out directly as the oracle for one day of one subject.
fn expected_phase(
    d: NaiveDate,
    t: Option<NaiveDate>,
    o: Option<NaiveDate>,
    l: NaiveDate,
    w: i64,
) -> Option<i64> {
    if d > l {
        return None;
    }
    let Some(t) = t else { return Some(1) };
    if d < t {
        return Some(1);
    }
    if d > l - chrono::Duration::days(w) {
        return Some(4);
    }
    match o {
        Some(o) if d >= o => Some(3),
        _ => Some(2),
    }
}

#[test]
fn anchors_and_phases_match_the_generators_truth() {
    anchors_and_phases_match_the_truth_of(cohort(18));
}

/// Seed 48 makes subject C8, whose optimal dose starts after the final visit: escalation
/// runs up to the final window, no day is optimal, none falls after the final visit.
#[test]
fn an_optimal_start_after_the_final_visit_matches_the_truth() {
    let w = cohort_of(18, 48);
    let truth = std::fs::read_to_string(w.path("data/truth/anchors.csv")).unwrap();
    assert!(
        truth.lines().any(|l| l.starts_with("C8,") && {
            let f: Vec<&str> = l.split(',').collect();
            !f[2].is_empty() && f[2] > f[3]
        }),
        "the cohort no longer has the case:\n{truth}"
    );
    anchors_and_phases_match_the_truth_of(w);
}

fn anchors_and_phases_match_the_truth_of(w: Workdir) {
    assert_exit(&w.run_pipeline(), 0);
    let truth = std::fs::read_to_string(w.path("data/truth/anchors.csv")).unwrap();
    let mut want: BTreeMap<String, [String; 3]> = BTreeMap::new();
    for line in truth.lines().skip(1) {
        let f: Vec<&str> = line.split(',').collect();
        let or_null = |s: &str| {
            if s.is_empty() {
                "null".to_string()
            } else {
                s.to_string()
            }
        };
        want.insert(
            f[0].to_string(),
            [or_null(f[1]), or_null(f[2]), or_null(f[3])],
        );
    }
    let anchors = w.table("anchors");
    let ids = strs(&anchors, "USUBJID");
    let (t, o, l) = (
        strs(&anchors, "TRTSDT"),
        strs(&anchors, "OPTSDT"),
        strs(&anchors, "LSTVSTDT"),
    );
    let mut got = BTreeMap::new();
    for i in 0..ids.len() {
        got.insert(ids[i].clone(), [t[i].clone(), o[i].clone(), l[i].clone()]);
    }
    assert_eq!(got, want);

    // Every diary day carries the phase DOMAIN.md gives it.
    let diary = w.table("addiary");
    let anchors_by: BTreeMap<String, (Option<NaiveDate>, Option<NaiveDate>, NaiveDate)> = ids
        .iter()
        .zip(date_col(&anchors, "TRTSDT"))
        .zip(date_col(&anchors, "OPTSDT"))
        .zip(date_col(&anchors, "LSTVSTDT"))
        .filter_map(|(((id, t), o), l)| Some((id.clone(), (t, o, l?))))
        .collect();
    let days = date_col(&diary, "ADT");
    let phases = strs(&diary, "APHASEN");
    let mut checked = 0;
    for ((id, d), p) in strs(&diary, "USUBJID").iter().zip(days).zip(phases) {
        let (t, o, l) = anchors_by[id];
        let want = expected_phase(d.unwrap(), t, o, l, 90)
            .map(|p| p.to_string())
            .unwrap_or("null".into());
        assert_eq!(p, want, "{id} on {d:?}");
        checked += 1;
    }
    assert!(checked > 1000, "only {checked} diary days checked");
}

#[test]
fn amending_w_from_90_to_60_moves_exactly_the_days_it_should() {
    let w = cohort(12);
    assert_exit(&w.run_pipeline(), 0);
    let before_dir = std::fs::read_link(w.path("out/current")).unwrap();
    let yaml = std::fs::read_to_string(w.path("pipeline.yaml")).unwrap();
    assert!(yaml.contains("constants: {W: 90}"));
    w.write(
        "pipeline.yaml",
        yaml.replace("constants: {W: 90}", "constants: {W: 60}")
            .as_bytes(),
    );
    assert_exit(&w.run_pipeline(), 0);
    let read = |run: &Path, t: &str| {
        let p = w.path("out").join(run).join(format!("{t}.parquet"));
        let f = std::fs::File::open(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
        ParquetReader::new(f).finish().unwrap()
    };
    let after_dir = std::fs::read_link(w.path("out/current")).unwrap();
    assert_ne!(before_dir, after_dir);
    // The daily diary's ADaM selection (an unpublished `sql` stage), the diary score and the
    // steroid series (`cache: false`) are reused but not cached: addiary and adster, which
    // run again, get them computed again from their inputs.
    let m: serde_json::Value = serde_json::from_slice(
        &std::fs::read(w.path("out").join(&after_dir).join("manifest.json")).unwrap(),
    )
    .unwrap();
    let stage = |name: &str| {
        m["stages"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["name"] == name)
            .unwrap()
            .clone()
    };
    assert_eq!(stage("addiary")["status"], "ran");
    assert_eq!(stage("diary_bds")["status"], "reused");
    for name in ["diary_bds", "diary_scored", "steroid_daily"] {
        assert_eq!(stage(name)["status"], "reused");
        assert!(
            stage(name)["reasons"]
                .to_string()
                .contains("its table is not cached: computed again from its inputs"),
            "{}",
            stage(name)
        );
    }
    assert_eq!(stage("adster")["status"], "ran");
    // Upstream of the phases nothing changes.
    for t in [
        "subjects",
        "dosing",
        "steroids",
        "visits_std",
        "labs_std",
        "growth",
        "anchors",
        "rejects",
    ] {
        assert!(
            read(&before_dir, t).equals_missing(&read(&after_dir, t)),
            "{t} changed"
        );
    }
    // Downstream, a diary day changes phase exactly when DOMAIN.md's rule with W = 60 differs
    // from the rule with W = 90.
    let (a, b) = (read(&before_dir, "addiary"), read(&after_dir, "addiary"));
    assert_eq!(a.height(), b.height());
    let anchors = read(&after_dir, "anchors");
    let by: BTreeMap<String, (Option<NaiveDate>, Option<NaiveDate>, NaiveDate)> =
        strs(&anchors, "USUBJID")
            .into_iter()
            .zip(date_col(&anchors, "TRTSDT"))
            .zip(date_col(&anchors, "OPTSDT"))
            .zip(date_col(&anchors, "LSTVSTDT"))
            .filter_map(|(((id, t), o), l)| Some((id, (t, o, l?))))
            .collect();
    let (pa, pb) = (strs(&a, "APHASEN"), strs(&b, "APHASEN"));
    let mut changed = 0;
    for (i, (id, d)) in strs(&a, "USUBJID")
        .iter()
        .zip(date_col(&a, "ADT"))
        .enumerate()
    {
        let (t, o, l) = by[id];
        let d = d.unwrap();
        let moves = expected_phase(d, t, o, l, 90) != expected_phase(d, t, o, l, 60);
        assert_eq!(pa[i] != pb[i], moves, "{id} on {d}: {} -> {}", pa[i], pb[i]);
        changed += moves as usize;
    }
    assert!(changed > 0, "the amendment moved no day");
}
