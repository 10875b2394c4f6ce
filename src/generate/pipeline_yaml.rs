//! The pipeline YAML that reads a generated cohort: one site per site folder with its dialect,
//! one source per stream with every site's header spellings, and the shipped reference stages.

use std::fmt::Write as _;

use super::dialect::{DIALECTS, Slot, site_folder};
use super::schema::{ColType, Stream};

/// Header spellings of canonical column `name` of `stream` over all built-in dialects,
/// trimmed and without case-insensitive repeats, in site order.
pub(crate) fn header_aliases(stream: Stream, name: &str) -> Vec<&'static str> {
    let mut out: Vec<&'static str> = Vec::new();
    for d in &DIALECTS {
        for (header, slot) in d.layout(stream) {
            let h = header.trim();
            if matches!(slot, Slot::Col(n) if *n == name)
                && !out.iter().any(|o| o.eq_ignore_ascii_case(h))
            {
                out.push(h);
            }
        }
    }
    out
}

fn quoted(s: &str) -> String {
    format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\""))
}

fn number(v: f64) -> String {
    if v.fract() == 0.0 && v.abs() < 1e15 {
        format!("{}", v as i64)
    } else {
        format!("{v}")
    }
}

/// Reject limit of a source: the small files (a handful of subjects or regimens per site)
/// would fail the default 25 % on one bad row.
fn reject_limit(stream: Stream) -> Option<f64> {
    match stream {
        Stream::Subjects | Stream::Dosing => Some(0.5),
        _ => None,
    }
}

/// The shipped reference pipeline; its `stages:` section serves any number of sites.
const SHIPPED: &str = include_str!("../../pipelines/reference.yaml");

/// The `stages:` section of the shipped reference pipeline, to the end of the file.
fn shipped_stages() -> &'static str {
    SHIPPED
        .find("\nstages:\n")
        .map(|i| &SHIPPED[i + 1..])
        .unwrap_or("stages: []\n")
}

/// The reference pipeline for a cohort of `sites` sites, with `data_dir` and `out_dir`
/// relative to the YAML file: the header, one site per folder, one source per stream, and the
/// stages of `pipelines/reference.yaml` (ingest, dedupe and harmonisation; they name no site).
/// The growth reference stays `../data/reference/cdc2000_lms.csv`, relative to the YAML.
pub fn reference_pipeline(sites: usize, data_dir: &str, out_dir: &str) -> String {
    let mut y = String::new();
    let w = &mut y;
    let _ = writeln!(
        w,
        "# Reference pipeline of studyflow: the baricitinib expanded-access study (DOMAIN.md)."
    );
    let _ = writeln!(
        w,
        "# Sites and sources match the exports of `studyflow generate`: `reference_pipeline()` in"
    );
    let _ = writeln!(
        w,
        "# src/generate/pipeline_yaml.rs writes them and copies the stages from this file."
    );
    let _ = writeln!(w, "pipeline: reference");
    let _ = writeln!(w, "description: >-");
    let _ = writeln!(
        w,
        "  Baricitinib in interferonopathies (NCT01724580, NCT02974595): raw site exports of"
    );
    let _ = writeln!(
        w,
        "  seven streams, ingested per site dialect and deduplicated across exports."
    );
    let _ = writeln!(w, "data_dir: {data_dir}");
    let _ = writeln!(w, "out_dir: {out_dir}");
    let _ = writeln!(w, "dates:");
    let _ = writeln!(w, "  min: \"1990-01-01\"");
    let _ = writeln!(w, "identifying: [birth_date]");
    let _ = writeln!(w);
    let _ = writeln!(w, "sites:");
    for i in 0..sites {
        let d = &DIALECTS[i % DIALECTS.len()];
        let delimiter = match d.delimiter {
            b'\t' => "tab".to_string(),
            other => quoted(&(other as char).to_string()),
        };
        let formats: Vec<String> = d.date_formats().iter().map(|f| quoted(f)).collect();
        let _ = writeln!(w, "  - name: {}", site_folder(i));
        let _ = writeln!(w, "    dialect:");
        let _ = writeln!(w, "      delimiter: {delimiter}");
        let _ = writeln!(
            w,
            "      encoding: {}",
            if d.latin1 { "latin-1" } else { "utf-8" }
        );
        let _ = writeln!(
            w,
            "      decimal: {}",
            quoted(if d.decimal_comma { "," } else { "." })
        );
        let _ = writeln!(w, "      date_formats: [{}]", formats.join(", "));
        let _ = writeln!(
            w,
            "      missing: [\"\", \"NA\", \"N/A\", \"ND\", \".\", \"-\"]"
        );
        let _ = writeln!(w, "      subject_id:");
        let _ = writeln!(w, "        pattern: '{}'", d.id_pattern);
        let _ = writeln!(w, "        replace: '${{1}}${{2}}'");
        let _ = writeln!(w, "        uppercase: true");
    }
    let _ = writeln!(w);
    let _ = writeln!(w, "sources:");
    for s in Stream::ALL {
        let _ = writeln!(w, "  - name: {}", s.name());
        let _ = writeln!(w, "    files: {}_*.csv", s.name());
        let _ = writeln!(w, "    export_date:");
        let _ = writeln!(w, "      pattern: '_(\\d{{4}}-\\d{{2}}-\\d{{2}})\\.csv$'");
        let _ = writeln!(w, "      format: \"%Y-%m-%d\"");
        if let Some(limit) = reject_limit(s) {
            let _ = writeln!(w, "    reject_limit: {limit}");
        }
        let _ = writeln!(w, "    columns:");
        for c in s.columns() {
            let headers: Vec<String> = header_aliases(s, c.name)
                .iter()
                .map(|h| quoted(h))
                .collect();
            let _ = writeln!(w, "      - name: {}", c.name);
            let _ = writeln!(w, "        type: {}", c.ty.yaml());
            let _ = writeln!(w, "        headers: [{}]", headers.join(", "));
            if c.required {
                let _ = writeln!(w, "        required: true");
            }
            if let Some(min) = c.min {
                let _ = writeln!(w, "        min: {}", number(min));
            }
            if let Some(max) = c.max {
                let _ = writeln!(w, "        max: {}", number(max));
            }
            if let ColType::Choice(allowed) = c.ty {
                let _ = writeln!(w, "        allowed: [{}]", allowed.join(", "));
            }
        }
    }
    let _ = writeln!(w);
    y.push_str(shipped_stages());
    y
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aliases_are_trimmed_and_unique() {
        assert_eq!(
            header_aliases(Stream::Diary, "subject"),
            vec!["subject_id", "Patient ID", "RECORD_ID"]
        );
        assert_eq!(
            header_aliases(Stream::Labs, "date"),
            vec!["collection_date", "Datum", "Lab Date"]
        );
    }

    #[test]
    fn no_header_maps_to_two_columns_of_one_source() {
        for s in Stream::ALL {
            let mut seen: Vec<(String, &str)> = Vec::new();
            for c in s.columns() {
                for h in header_aliases(s, c.name) {
                    let h = h.to_lowercase();
                    if let Some((_, other)) = seen.iter().find(|(x, _)| *x == h) {
                        panic!("{}: header `{h}` maps to {other} and {}", s.name(), c.name);
                    }
                    seen.push((h, c.name));
                }
            }
        }
    }

    #[test]
    fn yaml_names_every_site_and_stage() {
        let y = reference_pipeline(4, "../data/sample", "../out");
        for name in ["nih", "hamburg", "sao_paulo", "nih_2"] {
            assert!(
                y.contains(&format!("  - name: {name}\n    dialect:")),
                "{name}"
            );
        }
        assert!(y.contains("  - name: diary_raw\n    kind: ingest\n    source: diary\n"));
        assert!(y.contains("    key: [subject, date, analyte]\n"));
        assert!(y.contains("  - name: steroid_daily\n"));
    }

    #[test]
    fn shipped_reference_pipeline_is_what_the_generator_writes_for_three_sites() {
        let y = reference_pipeline(3, "../data/sample", "../out");
        assert!(
            y == SHIPPED,
            "regenerate pipelines/reference.yaml: sites or sources differ"
        );
    }
}
