//! The reference pipeline against the ground truth of `studyflow generate`: for every site
//! dialect, each raw row lands where the truth says, and harmonised values are the truth's.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::Path;

/// Clean rows of one stream by (SRCFILE, SRCLINE), each as column -> value.
type CleanRows = HashMap<(String, i64), HashMap<String, String>>;

use polars::prelude::*;
use studyflow::generate::{DirtRates, GenerateOptions, generate};

use crate::workdir::{repo, run_reference, strs};

/// The published table holding the accepted rows of each stream (the end of its row-level
/// chain: ingest, recode/validate, dedupe, convert_units; the diary's goes on through its
/// score, its ADaM renaming and its phase to `addiary`).
const ACCEPTED: [(&str, &str); 7] = [
    ("subjects", "subjects"),
    ("dosing", "dosing"),
    ("steroids", "steroids"),
    ("diary", "addiary"),
    ("visits", "visits_std"),
    ("labs", "labs_std"),
    ("questionnaires", "questionnaires_std"),
];

/// Every reject rule and set-aside fate the generator can produce.
const FATES: [&str; 15] = [
    "columns",
    "subject_id",
    "required",
    "parse",
    "date_range",
    "range",
    "allowed",
    "conflict",
    "unit",
    "dose_unit",
    "drug",
    "frequency",
    "collapsed",
    "superseded",
    "accepted",
];

fn table(out: &Path, name: &str) -> DataFrame {
    let p = out.join(format!("current/{name}.parquet"));
    let f = std::fs::File::open(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
    ParquetReader::new(f).finish().unwrap()
}

fn read_csv(path: &Path) -> Vec<HashMap<String, String>> {
    studyflow::generate::read_truth(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn site_of(file: &str) -> &str {
    file.split('/').next().unwrap_or(file)
}

/// (file, line, label) rows grouped by the site of their file.
type BySite = BTreeMap<String, BTreeSet<(String, i64, String)>>;

fn by_site(rows: impl IntoIterator<Item = (String, i64, String)>) -> BySite {
    let mut out = BySite::new();
    for (file, line, label) in rows {
        out.entry(site_of(&file).to_string())
            .or_default()
            .insert((file, line, label));
    }
    out
}

/// (SRCFILE, SRCLINE, `label` column or the fixed label) of every row of a published table.
fn lineage(df: &DataFrame, label: Result<&str, &str>) -> Vec<(String, i64, String)> {
    let files = strs(df, "SRCFILE");
    let lines = df.column("SRCLINE").unwrap().i64().unwrap().clone();
    let labels = match label {
        Ok(column) => strs(df, column),
        Err(fixed) => vec![fixed.to_string(); df.height()],
    };
    files
        .into_iter()
        .zip(lines.iter())
        .zip(labels)
        .map(|((f, l), r)| (f, l.unwrap(), r))
        .collect()
}

/// Asserts two sets are equal for every site, listing what differs.
fn assert_same_by_site(what: &str, sites: &BTreeSet<String>, got: &BySite, want: &BySite) {
    let empty = BTreeSet::new();
    let mut problems = Vec::new();
    for site in sites {
        let g = got.get(site).unwrap_or(&empty);
        let w = want.get(site).unwrap_or(&empty);
        let extra: Vec<_> = g.difference(w).take(8).collect();
        let missing: Vec<_> = w.difference(g).take(8).collect();
        if !extra.is_empty() || !missing.is_empty() {
            problems.push(format!(
                "{what} at site {site}: only in the pipeline {extra:?}; only in the truth {missing:?}"
            ));
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

/// The truth of a generated folder: fates by site, clean rows and the vocabulary.
struct Truth {
    sites: BTreeSet<String>,
    rejected: BySite,
    set_aside: BySite,
    /// stream -> accepted (file, line, "accepted") by site.
    accepted: BTreeMap<String, BySite>,
    /// stream -> (file, line) -> canonical values.
    clean: BTreeMap<String, CleanRows>,
    /// (kind, parameter, written) -> (canonical, factor).
    vocabulary: HashMap<(String, String, String), (String, String)>,
    /// file -> (rows, accepted, rejected, collapsed, superseded).
    files: BTreeMap<String, [u64; 5]>,
}

impl Truth {
    fn read(data: &Path) -> Truth {
        let dir = data.join("truth");
        let defects = read_csv(&dir.join("defects.csv"));
        let line = |r: &HashMap<String, String>, c: &str| r[c].parse::<i64>().unwrap();
        let rejected = by_site(
            defects
                .iter()
                .filter(|d| d["fate"] == "rejected")
                .map(|d| (d["file"].clone(), line(d, "line"), d["rule"].clone())),
        );
        let set_aside = by_site(
            defects
                .iter()
                .filter(|d| d["fate"] != "rejected")
                .map(|d| (d["file"].clone(), line(d, "line"), d["fate"].clone())),
        );
        let mut accepted = BTreeMap::new();
        let mut clean = BTreeMap::new();
        for (stream, _) in ACCEPTED {
            let rows = read_csv(&dir.join(format!("clean_{stream}.csv")));
            accepted.insert(
                stream.to_string(),
                by_site(rows.iter().map(|r| {
                    (
                        r["SRCFILE"].clone(),
                        line(r, "SRCLINE"),
                        "accepted".to_string(),
                    )
                })),
            );
            clean.insert(
                stream.to_string(),
                rows.into_iter()
                    .map(|r| ((r["SRCFILE"].clone(), line(&r, "SRCLINE")), r))
                    .collect(),
            );
        }
        let vocabulary = read_csv(&dir.join("vocabulary.csv"))
            .into_iter()
            .map(|v| {
                (
                    (
                        v["kind"].clone(),
                        v["parameter"].clone(),
                        v["written"].clone(),
                    ),
                    (v["canonical"].clone(), v["factor"].clone()),
                )
            })
            .collect();
        let files: BTreeMap<String, [u64; 5]> = read_csv(&dir.join("files.csv"))
            .into_iter()
            .map(|f| {
                let n = |c: &str| f[c].parse::<u64>().unwrap();
                (
                    f["file"].clone(),
                    [
                        n("rows"),
                        n("accepted"),
                        n("rejected"),
                        n("collapsed"),
                        n("superseded"),
                    ],
                )
            })
            .collect();
        let sites = files.keys().map(|f| site_of(f).to_string()).collect();
        Truth {
            sites,
            rejected,
            set_aside,
            accepted,
            clean,
            vocabulary,
            files,
        }
    }

    /// Fates (reject rules, `collapsed`, `superseded`, `accepted`) that occur at `site`.
    fn fates_at(&self, site: &str) -> BTreeSet<String> {
        let mut out: BTreeSet<String> = BTreeSet::new();
        for by in [&self.rejected, &self.set_aside] {
            if let Some(rows) = by.get(site) {
                out.extend(rows.iter().map(|(_, _, label)| label.clone()));
            }
        }
        if self.accepted.values().any(|by| by.contains_key(site)) {
            out.insert("accepted".into());
        }
        out
    }

    /// The canonical code and factor of a written spelling.
    fn term(&self, kind: &str, parameter: &str, written: &str) -> (String, f64) {
        let (code, factor) = self
            .vocabulary
            .get(&(kind.into(), parameter.into(), written.into()))
            .unwrap_or_else(|| panic!("{kind} {parameter} `{written}` not in vocabulary.csv"));
        let factor = match factor.split_once('/') {
            Some((a, b)) => a.parse::<f64>().unwrap() / b.parse::<f64>().unwrap(),
            None if factor.is_empty() => f64::NAN,
            None => factor.parse().unwrap(),
        };
        (code.clone(), factor)
    }
}

/// Row fate, rejects, duplicates and accepted tables all agree with the truth, site by site.
fn assert_fates_match(out: &Path, truth: &Truth) {
    let rejects = table(out, "rejects");
    let got = by_site(lineage(&rejects, Ok("RULE")));
    assert_same_by_site("rejects", &truth.sites, &got, &truth.rejected);

    let duplicates = table(out, "duplicates");
    let got = by_site(lineage(&duplicates, Ok("FATE")));
    assert_same_by_site("duplicates", &truth.sites, &got, &truth.set_aside);

    for (stream, name) in ACCEPTED {
        let got = by_site(lineage(&table(out, name), Err("accepted")));
        let what = format!("accepted {stream} (table {name})");
        assert_same_by_site(&what, &truth.sites, &got, &truth.accepted[stream]);
    }

    // The run's own reconciliation, per file, is the truth's.
    let fate = table(out, "row_fate");
    let count = |c: &str| -> Vec<u64> {
        fate.column(c)
            .unwrap()
            .cast(&DataType::UInt64)
            .unwrap()
            .u64()
            .unwrap()
            .iter()
            .map(|v| v.unwrap())
            .collect()
    };
    let columns = ["READ", "ACCEPTED", "REJECTED", "COLLAPSED", "SUPERSEDED"].map(count);
    let got: BTreeMap<String, [u64; 5]> = strs(&fate, "SRCFILE")
        .into_iter()
        .enumerate()
        .map(|(i, f)| (f, [0, 1, 2, 3, 4].map(|c| columns[c][i])))
        .collect();
    assert_eq!(got, truth.files, "row_fate against truth/files.csv");
    let tables: BTreeMap<String, String> = strs(&fate, "SOURCE")
        .into_iter()
        .zip(strs(&fate, "TABLE"))
        .collect();
    let want: BTreeMap<String, String> = ACCEPTED
        .iter()
        .map(|(s, t)| (s.to_string(), t.to_string()))
        .collect();
    assert_eq!(tables, want, "accepted table of each source");
}

/// The values of a published table by (SRCFILE, SRCLINE), as text (`null` when missing).
fn rows_of(df: &DataFrame, columns: &[&str]) -> HashMap<(String, i64), Vec<String>> {
    let values: Vec<Vec<String>> = columns.iter().map(|c| strs(df, c)).collect();
    lineage(df, Err(""))
        .into_iter()
        .enumerate()
        .map(|(i, (f, l, _))| ((f, l), values.iter().map(|v| v[i].clone()).collect()))
        .collect()
}

fn number(text: &str) -> f64 {
    text.parse()
        .unwrap_or_else(|_| panic!("`{text}` is not a number"))
}

fn assert_close(got: f64, want: f64, what: &str) {
    assert!(
        (got - want).abs() <= 1e-9 * want.abs().max(1.0),
        "{what}: got {got}, want {want}"
    );
}

/// Canonical ids and dates, and values converted with the truth's own factors.
fn assert_values_match(out: &Path, truth: &Truth) {
    let id = regex::Regex::new(r"^[CSO][1-9][0-9]*$").unwrap();
    for (stream, name) in ACCEPTED {
        let df = table(out, name);
        // The ADaM tables name the subject USUBJID.
        let subject = if df.column("subject").is_ok() {
            "subject"
        } else {
            "USUBJID"
        };
        let rows = rows_of(&df, &[subject]);
        let clean = &truth.clean[stream];
        for (key, values) in &rows {
            assert!(id.is_match(&values[0]), "{key:?}: subject `{}`", values[0]);
            assert_eq!(values[0], clean[key]["subject"], "{stream} {key:?}");
        }
    }

    let subjects = rows_of(
        &table(out, "subjects"),
        &["group", "sex", "birth_date", "enrol_date"],
    );
    for (key, v) in &subjects {
        let want = &truth.clean["subjects"][key];
        let want = ["group", "sex", "birth_date", "enrol_date"].map(|c| want[c].as_str());
        assert_eq!(v, &want, "subjects {key:?}");
    }

    let visits = rows_of(
        &table(out, "visits_std"),
        &["date", "height_cm", "weight_kg"],
    );
    for (key, v) in &visits {
        let want = &truth.clean["visits"][key];
        assert_eq!(v[0], want["date"], "visit date {key:?}");
        for (i, param) in [(1, "height"), (2, "weight")] {
            let written = &want[param];
            if written.is_empty() {
                assert_eq!(v[i], "null", "{param} {key:?}");
                continue;
            }
            let (_, factor) = truth.term("unit", param, &want[&format!("{param}_unit")]);
            assert_close(
                number(&v[i]),
                number(written) * factor,
                &format!("{param} {key:?}"),
            );
        }
    }

    let labs = rows_of(
        &table(out, "labs_std"),
        &["date", "PARAMCD", "AVAL", "CENSOR"],
    );
    for (key, v) in &labs {
        let want = &truth.clean["labs"][key];
        assert_eq!(v[0], want["date"], "lab date {key:?}");
        let (code, _) = truth.term("analyte", "", &want["analyte"]);
        assert_eq!(v[1], code, "analyte {key:?}");
        let (_, factor) = truth.term("unit", &code, &want["unit"]);
        let written = want["value"].replace(',', ".");
        let censor = written
            .strip_prefix(['<', '>'])
            .map(|_| written[..1].to_string());
        let value = number(written.trim_start_matches(['<', '>']));
        assert_close(number(&v[2]), value * factor, &format!("lab {key:?}"));
        assert_eq!(v[3], censor.unwrap_or("null".into()), "censor {key:?}");
    }

    let questionnaires = rows_of(
        &table(out, "questionnaires_std"),
        &["PARAMCD", "AVAL", "AVALU"],
    );
    for (key, v) in &questionnaires {
        let want = &truth.clean["questionnaires"][key];
        let (code, _) = truth.term("instrument", "", &want["instrument"]);
        let (_, factor) = truth.term("unit", &code, &want["unit"]);
        assert_eq!(v[0], code, "instrument {key:?}");
        assert_close(number(&v[1]), number(&want["score"]) * factor, "score");
        assert_eq!(v[2], if code == "PEDSQL" { "%" } else { "mm" });
    }

    let steroids = rows_of(
        &table(out, "steroids"),
        &["drug_std", "frequency_std", "dose_unit_std", "start"],
    );
    for (key, v) in &steroids {
        let want = &truth.clean["steroids"][key];
        assert_eq!(v[0], truth.term("drug", "", &want["drug"]).0, "{key:?}");
        assert_eq!(v[1], truth.term("frequency", "", &want["frequency"]).0);
        assert_eq!(v[2], truth.term("dose_unit", "", &want["dose_unit"]).0);
        assert_eq!(v[3], want["start"], "steroid start {key:?}");
    }

    let items = ["fever", "rash", "msk_pain", "headache", "fatigue", "organ"];
    let diary = rows_of(&table(out, "addiary"), &["DIARYSCORE"]);
    for (key, v) in &diary {
        let want = &truth.clean["diary"][key];
        let present: Vec<f64> = items
            .iter()
            .filter(|i| !want[**i].is_empty())
            .map(|i| number(&want[*i]))
            .collect();
        if present.len() >= 4 {
            let mean = present.iter().sum::<f64>() / present.len() as f64;
            assert_close(number(&v[0]), mean, &format!("diary score {key:?}"));
        } else {
            assert_eq!(v[0], "null", "diary score {key:?}");
        }
    }
}

/// Derived tables hold plausible values: mg/kg/day of a child on steroids, Z-scores.
fn assert_derived_tables_plausible(out: &Path) {
    let daily = table(out, "adster");
    assert!(daily.height() > 0);
    // Oral doses stay below 2 mg/kg/day; a methylprednisolone pulse of 30 mg/kg is 37.5.
    let mgkg = daily.column("PREDMGKG").unwrap().f64().unwrap();
    assert!(mgkg.iter().flatten().all(|v| (0.0..=60.0).contains(&v)));
    let mut values: Vec<f64> = mgkg.iter().flatten().filter(|v| *v > 0.0).collect();
    values.sort_by(f64::total_cmp);
    let median = values[values.len() / 2];
    assert!(
        (0.02..2.0).contains(&median),
        "median mg/kg/day on steroids {median}"
    );
    let mg = daily.column("PREDMG").unwrap().f64().unwrap();
    assert!(mg.iter().flatten().all(|v| v >= 0.0));

    let growth = table(out, "growth");
    let z = growth.column("ZSCORE").unwrap().f64().unwrap();
    assert!(z.iter().flatten().count() > growth.height() / 2);
    assert!(
        z.iter().flatten().all(|v| v.abs() < 8.0),
        "a Z-score beyond 8"
    );
}

#[test]
fn dirty_generated_cohort_lands_where_its_truth_says_at_every_site() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("cohort");
    generate(&GenerateOptions {
        out: data.clone(),
        subjects: 12,
        years: 1,
        sites: 3,
        seed: 11,
        dirt: DirtRates::dense(),
    })
    .unwrap();
    let truth = Truth::read(&data);
    assert_eq!(
        truth.sites,
        ["hamburg", "nih", "sao_paulo"].map(String::from).into()
    );
    // The cohort is only a test if every kind of fate occurs; each dialect sees most of them.
    let all: BTreeSet<String> = truth.sites.iter().flat_map(|s| truth.fates_at(s)).collect();
    let want: BTreeSet<String> = FATES.iter().map(|f| f.to_string()).collect();
    assert_eq!(all, want, "fates in the generated cohort");
    for site in &truth.sites {
        assert!(
            truth.fates_at(site).len() >= 10,
            "{site}: {:?}",
            truth.fates_at(site)
        );
    }

    let out = dir.path().join("out");
    run_reference(&data, &out, &["--quiet"]);
    assert_fates_match(&out, &truth);
    assert_values_match(&out, &truth);
    assert_derived_tables_plausible(&out);
}

#[test]
fn shipped_sample_lands_where_its_truth_says() {
    let dir = tempfile::tempdir().unwrap();
    let data = repo("data/sample");
    let truth = Truth::read(&data);
    let out = dir.path().join("out");
    run_reference(&data, &out, &["--quiet"]);
    assert_fates_match(&out, &truth);
    assert_values_match(&out, &truth);
    assert_derived_tables_plausible(&out);
}
