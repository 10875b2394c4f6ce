//! Fuzz targets of the CSV dialect reader (issue 8): excerpts of the sample exports, mutated
//! byte by byte and read in their site's dialect (or a tweaked one), must never panic, and
//! every record read must be accepted or rejected once, on a line of its own.

use std::path::{Path, PathBuf};

use chrono::NaiveDate;
use proptest::prelude::*;
use studyflow::dialect::Dialect;
use studyflow::spec::{ColumnSpec, DialectSpec};
use studyflow::stages::ingest;

use crate::fuzz_budget::{at, fuzz};

/// Rule names a reject may carry (CONTRACT.md).
const RULES: &[&str] = &[
    "columns",
    "encoding",
    "parse",
    "date_range",
    "required",
    "subject_id",
    "range",
    "allowed",
    "pattern",
];

fn corpus_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/fuzz")
}

/// One corpus file with the dialect of its site and the columns of its source.
#[derive(Debug, Clone)]
struct Seed {
    name: String,
    bytes: Vec<u8>,
    dialect: DialectSpec,
    columns: Vec<ColumnSpec>,
}

/// `tests/fixtures/fuzz/csv/<site>__<source>[__<anything>].csv`, configured by
/// `tests/fixtures/fuzz/spec/dialects.yaml`.
fn seeds() -> Vec<Seed> {
    let spec_path = corpus_dir().join("spec/dialects.yaml");
    let spec = studyflow::spec::PipelineSpec::load(&spec_path).unwrap();
    let mut out = Vec::new();
    let mut paths: Vec<PathBuf> = std::fs::read_dir(corpus_dir().join("csv"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    paths.sort();
    for p in paths {
        let name = p.file_name().unwrap().to_string_lossy().into_owned();
        let stem = name.trim_end_matches(".csv");
        let mut parts = stem.split("__");
        let (site, source) = (parts.next().unwrap(), parts.next().unwrap_or(""));
        let site = spec.sites.iter().find(|s| s.value.name == site);
        let source = spec.sources.iter().find(|s| s.value.name == source);
        let (Some(site), Some(source)) = (site, source) else {
            panic!("{name}: name it <site>__<source>.csv after dialects.yaml");
        };
        out.push(Seed {
            name,
            bytes: std::fs::read(&p).unwrap(),
            dialect: site.value.dialect.clone(),
            columns: source
                .value
                .columns
                .iter()
                .map(|c| c.value.clone())
                .collect(),
        });
    }
    assert!(
        out.len() >= 21,
        "the corpus is incomplete: {} files",
        out.len()
    );
    out
}

/// Bytes that make CSV readers stumble: quotes, line ends, delimiters, NUL, BOMs, Latin-1
/// and UTF-8 letters, censored values, decimal commas, odd dates and units.
fn token() -> impl Strategy<Value = Vec<u8>> {
    let fixed: Vec<&'static [u8]> = vec![
        b"\"",
        b"\"\"",
        b"\r",
        b"\n",
        b"\r\n",
        b",",
        b";",
        b"\t",
        b"|",
        b"\0",
        b"\xef\xbb\xbf",
        b"\xff\xfe",
        b"\xfc",
        "ü".as_bytes(),
        "µg/L".as_bytes(),
        b"<0.5",
        b"> 1000",
        b"<",
        b"1,5",
        b"1.5e308",
        b"-0",
        b"NaN",
        b"inf",
        b"NA",
        b"ND",
        b"31.02.2014",
        b"2014-13-01",
        b"07-Mar-2014",
        b"3/7/2014",
        b"99999-01-01",
        b"1889-01-01",
        b"mg/dL",
        b"x10^9/L",
        b"mg/kg",
        b"C-001",
        b"   ",
    ];
    prop_oneof![
        4 => prop::sample::select(fixed).prop_map(|b| b.to_vec()),
        1 => prop::collection::vec(any::<u8>(), 0..12),
    ]
}

#[derive(Debug, Clone)]
enum Mutation {
    Insert(f64, Vec<u8>),
    Delete(f64, usize),
    Overwrite(f64, u8),
    DuplicateLine(f64),
    Truncate(f64),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    let f = || 0.0..=1.0f64;
    prop_oneof![
        5 => (f(), token()).prop_map(|(a, t)| Mutation::Insert(a, t)),
        2 => (f(), 1..24usize).prop_map(|(a, n)| Mutation::Delete(a, n)),
        2 => (f(), any::<u8>()).prop_map(|(a, b)| Mutation::Overwrite(a, b)),
        1 => f().prop_map(Mutation::DuplicateLine),
        1 => f().prop_map(Mutation::Truncate),
    ]
}

fn mutate(mut bytes: Vec<u8>, mutations: &[Mutation]) -> Vec<u8> {
    for m in mutations {
        let len = bytes.len();
        match m {
            Mutation::Insert(a, t) => {
                let i = at(*a, len);
                bytes.splice(i..i, t.iter().copied());
            }
            Mutation::Delete(a, n) => {
                let i = at(*a, len);
                bytes.drain(i..(i + n).min(len));
            }
            Mutation::Overwrite(a, b) => {
                if len > 0 {
                    let i = at(*a, len - 1);
                    bytes[i] = *b;
                }
            }
            Mutation::DuplicateLine(a) => {
                let i = at(*a, len);
                let start = bytes[..i]
                    .iter()
                    .rposition(|&b| b == b'\n')
                    .map_or(0, |p| p + 1);
                let end = bytes[i..]
                    .iter()
                    .position(|&b| b == b'\n')
                    .map_or(len, |p| i + p + 1);
                let line = bytes[start..end].to_vec();
                bytes.splice(end..end, line);
            }
            Mutation::Truncate(a) => bytes.truncate(at(*a, len)),
        }
    }
    bytes
}

/// A site's dialect, sometimes with another delimiter, encoding or decimal mark.
#[derive(Debug, Clone)]
struct Tweak {
    delimiter: Option<&'static str>,
    latin1: Option<bool>,
    decimal_comma: Option<bool>,
}

fn tweak() -> impl Strategy<Value = Tweak> {
    (
        prop::option::weighted(0.2, prop::sample::select(vec![",", ";", "tab", "|"])),
        prop::option::weighted(0.2, any::<bool>()),
        prop::option::weighted(0.2, any::<bool>()),
    )
        .prop_map(|(delimiter, latin1, decimal_comma)| Tweak {
            delimiter,
            latin1,
            decimal_comma,
        })
}

fn dialect(spec: &DialectSpec, t: &Tweak) -> Dialect {
    let mut s = spec.clone();
    if let Some(d) = t.delimiter {
        s.delimiter = d.into();
    }
    if let Some(l) = t.latin1 {
        s.encoding = if l { "latin-1" } else { "utf-8" }.into();
    }
    if let Some(c) = t.decimal_comma {
        s.decimal = if c { "," } else { "." }.into();
    }
    // A tweak the dialect rules refuse (a decimal comma with a comma delimiter) is dropped.
    Dialect::compile(&s)
        .or_else(|_| Dialect::compile(spec))
        .unwrap()
}

fn dates() -> (NaiveDate, NaiveDate) {
    (
        NaiveDate::from_ymd_opt(1990, 1, 1).unwrap(),
        NaiveDate::from_ymd_opt(2026, 11, 25).unwrap(),
    )
}

/// Never a panic; every record accepted or rejected once, each on a line of its own after
/// the header; rejects carry a known rule and a short reason; errors are short and printable.
fn reads_every_record_once(
    bytes: &[u8],
    d: &Dialect,
    columns: &[ColumnSpec],
    identifying: &[String],
) -> Result<(), TestCaseError> {
    let parsed = match ingest::parse_export(bytes, d, columns, identifying, dates()) {
        Ok(p) => p,
        Err(e) => {
            let msg = e.to_string();
            prop_assert!(msg.len() < 4000, "a message of {} bytes", msg.len());
            prop_assert!(!msg.contains('\0'), "NUL in {msg:?}");
            return Ok(());
        }
    };
    let accepted = parsed.table.height() as u64;
    let rejected = parsed.rejects.height() as u64;
    prop_assert_eq!(parsed.rows, accepted + rejected, "records lost or doubled");
    let mut lines: Vec<i64> = Vec::new();
    for df in [&parsed.table, &parsed.rejects] {
        lines.extend(
            df.column("SRCLINE")
                .unwrap()
                .i64()
                .unwrap()
                .iter()
                .flatten(),
        );
    }
    prop_assert_eq!(lines.len() as u64, parsed.rows, "a record without a line");
    lines.sort_unstable();
    prop_assert!(
        lines.first().is_none_or(|&l| l >= 2),
        "a record on the header line"
    );
    prop_assert!(
        lines.windows(2).all(|w| w[0] < w[1]),
        "two records on one line: {lines:?}"
    );
    let text = |c: &str| -> Vec<String> {
        parsed
            .rejects
            .column(c)
            .unwrap()
            .str()
            .unwrap()
            .iter()
            .map(|v| v.unwrap_or_default().to_string())
            .collect()
    };
    for ((rule, reason), column) in text("RULE").iter().zip(text("REASON")).zip(text("COLUMN")) {
        prop_assert!(RULES.contains(&rule.as_str()), "unknown rule {rule}");
        prop_assert!(
            !reason.is_empty() && reason.len() < 600,
            "reason {reason:?}"
        );
        if identifying.contains(&column) && rule != "required" && rule != "encoding" {
            prop_assert!(
                reason.contains("withheld"),
                "identifying value in {reason:?}"
            );
        }
    }
    Ok(())
}

/// One fuzz case: a corpus file after its mutations, and how it is read.
#[derive(Clone)]
struct Case {
    seed: String,
    bytes: Vec<u8>,
    tweak: Tweak,
    dialect: Dialect,
    columns: Vec<ColumnSpec>,
    identifying: Vec<String>,
}

impl std::fmt::Debug for Case {
    // The bytes as an escaped string: ready to save as a regression file.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(f, "seed file: {}", self.seed)?;
        writeln!(f, "bytes: b\"{}\"", self.bytes.escape_ascii())?;
        writeln!(f, "dialect tweak: {:?}", self.tweak)?;
        write!(
            f,
            "identifying: {:?}\n(save the bytes as tests/fixtures/fuzz/csv/{}__regression_<bug>.csv)",
            self.identifying,
            self.seed.trim_end_matches(".csv")
        )
    }
}

fn case() -> impl Strategy<Value = Case> {
    (
        prop::sample::select(seeds()),
        prop::collection::vec(mutation(), 0..10),
        tweak(),
        any::<prop::sample::Index>(),
    )
        .prop_map(|(seed, mutations, tweak, who)| {
            // One column of the source is identifying, besides birth_date.
            let extra = seed.columns[who.index(seed.columns.len())].name.clone();
            Case {
                bytes: mutate(seed.bytes.clone(), &mutations),
                dialect: dialect(&seed.dialect, &tweak),
                seed: seed.name,
                tweak,
                columns: seed.columns,
                identifying: vec!["birth_date".to_string(), extra],
            }
        })
}

#[test]
fn fuzz_csv_reader() {
    fuzz("csv_reader", 1000, case(), |c| {
        reads_every_record_once(&c.bytes, &c.dialect, &c.columns, &c.identifying)
    });
}

#[test]
fn fuzz_corpus_and_regressions_read_cleanly() {
    // Every corpus file, unmutated, in its own dialect: regressions found by fuzzing are
    // committed next to the sample excerpts and replayed here.
    for seed in seeds() {
        let d = Dialect::compile(&seed.dialect).unwrap();
        let identifying = vec!["birth_date".to_string()];
        reads_every_record_once(&seed.bytes, &d, &seed.columns, &identifying)
            .unwrap_or_else(|e| panic!("{}: {e}", seed.name));
        if !seed.name.contains("__regression") {
            let p = ingest::parse_export(&seed.bytes, &d, &seed.columns, &identifying, dates())
                .unwrap_or_else(|e| panic!("{}: {e}", seed.name));
            assert!(p.table.height() > 0, "{}: nothing accepted", seed.name);
        }
    }
}

fn cell() -> impl Strategy<Value = String> {
    prop_oneof![
        any::<String>(),
        "[0-9 .,+eE<>-]{0,12}",
        "[0-9]{1,4}[-./][0-9A-Za-z]{1,3}[-./][0-9]{1,5}",
        "[A-Za-z]{0,2}[-_ ]?[0-9]{0,6}",
    ]
}

#[test]
fn fuzz_dialect_cells() {
    let specs: Vec<DialectSpec> = seeds().into_iter().map(|s| s.dialect).collect();
    let strategy = (
        prop::sample::select(specs),
        cell(),
        any::<f64>(),
        any::<i64>(),
        (-20000i32..40000).prop_map(|d| NaiveDate::from_num_days_from_ce_opt(700_000 + d)),
    );
    fuzz(
        "dialect_cells",
        2000,
        strategy,
        |(spec, cell, x, n, date)| {
            let d = Dialect::compile(&spec).unwrap();
            // Arbitrary text: no panic, and a number read back is finite.
            let _ = d.parse_date(&cell);
            let _ = d.subject_id(&cell);
            let _ = d.parse_int(&cell);
            prop_assert!(d.parse_float(&cell).is_none_or(f64::is_finite));
            // What a site writes reads back as written.
            if x.is_finite() {
                let mut written = format!("{x}");
                if d.decimal_comma {
                    written = written.replace('.', ",");
                }
                prop_assert_eq!(d.parse_float(&written), Some(x), "{}", written);
            }
            prop_assert_eq!(d.parse_int(&n.to_string()), Some(n));
            if let Some(date) = date {
                for f in &d.date_formats {
                    let written = date.format(f).to_string();
                    prop_assert_eq!(d.parse_date(&written), Some(date), "{} as {}", written, f);
                }
            }
            Ok(())
        },
    );
}
