//! Fuzz target of the YAML spec parser and the planner (issue 8): pipeline files, mutated line
//! by line and byte by byte, must never panic; a broken file gives located problems.

use std::path::{Path, PathBuf};

use proptest::prelude::*;
use studyflow::spec::PipelineSpec;

use crate::fuzz_budget::{at, fuzz};

/// The committed seeds and every shipped pipeline, with the path each is parsed as.
fn seeds() -> Vec<(PathBuf, String)> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut out = Vec::new();
    for dir in ["tests/fixtures/fuzz/spec", "pipelines"] {
        let mut paths: Vec<PathBuf> = std::fs::read_dir(root.join(dir))
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|x| x == "yaml"))
            .collect();
        paths.sort();
        for p in paths {
            let text = std::fs::read_to_string(&p).unwrap();
            out.push((p, text));
        }
    }
    out
}

/// YAML that parsers trip over: flow collections, nulls, anchors and aliases, tags, block
/// scalars, unterminated quotes, odd numbers, directives, tabs, long and non-ASCII text.
fn token() -> impl Strategy<Value = String> {
    let fixed: Vec<&'static str> = vec![
        "[]",
        "{}",
        "~",
        "null",
        "-1",
        "1e999",
        ".nan",
        "0x1F",
        "true",
        "2017-06-30",
        "\"x\"",
        "&a x",
        "*a",
        "*undefined",
        "<<: *a",
        "!!binary aGVsbG8=",
        "!tag x",
        "[a, [b, {c: d}]]",
        "|",
        ">-",
        "'unterminated",
        "\"unterminated",
        "- item",
        "key: value",
        "? complex",
        "\t",
        "%YAML 1.2",
        "---",
        "...",
        "@",
        "`",
        "\u{feff}",
        "é",
        "\0",
        "name: x",
        "kind: ingest",
        "kind: sql",
        "inputs: [subjects_raw, subjects_raw]",
        "source: nowhere",
        "publish: yes",
        "sort_by: [[]]",
    ];
    prop_oneof![
        6 => prop::sample::select(fixed).prop_map(str::to_string),
        1 => any::<String>(),
        1 => (1..6000usize).prop_map(|n| "x".repeat(n)),
    ]
}

/// Well-formed YAML values of the wrong type or meaning: they get past the YAML parser and
/// into the checks of the spec and the plan.
fn scalar() -> impl Strategy<Value = String> {
    let fixed: Vec<&'static str> = vec![
        "3",
        "-1",
        "0",
        "0.5",
        "1e999",
        "yes",
        "x",
        "\"\"",
        "[]",
        "{}",
        "null",
        "[a, b]",
        "{a: 1}",
        "2017-06-30",
        "ingest",
        "sql",
        "dedupe",
        "validate",
        "[subjects_raw]",
        "[subjects]",
        "subjects",
        "diary",
        "'%d.%m'",
        "'%Q'",
        "'(['",
        "utf-16",
        "';;'",
        "tab",
        "[subject, subject]",
        "SELECT * FROM nowhere",
    ];
    prop::sample::select(fixed).prop_map(str::to_string)
}

#[derive(Debug, Clone)]
enum Mutation {
    DeleteLine(f64),
    DuplicateLine(f64),
    SwapLines(f64, f64),
    Indent(f64, i8),
    ReplaceValue(f64, String),
    InsertLine(f64, String),
    InsertText(f64, String),
    Truncate(f64),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    let f = || 0.0..=1.0f64;
    prop_oneof![
        2 => f().prop_map(Mutation::DeleteLine),
        1 => f().prop_map(Mutation::DuplicateLine),
        1 => (f(), f()).prop_map(|(a, b)| Mutation::SwapLines(a, b)),
        2 => (f(), -4i8..=4).prop_map(|(a, n)| Mutation::Indent(a, n)),
        6 => (f(), scalar()).prop_map(|(a, t)| Mutation::ReplaceValue(a, t)),
        2 => (f(), token()).prop_map(|(a, t)| Mutation::ReplaceValue(a, t)),
        2 => (f(), token()).prop_map(|(a, t)| Mutation::InsertLine(a, t)),
        2 => (f(), token()).prop_map(|(a, t)| Mutation::InsertText(a, t)),
        1 => f().prop_map(Mutation::Truncate),
    ]
}

fn mutate(text: &str, mutations: &[Mutation]) -> String {
    let mut lines: Vec<String> = text.lines().map(str::to_string).collect();
    for m in mutations {
        let n = lines.len();
        let line = |a: &f64| at(*a, n.saturating_sub(1));
        match m {
            _ if n == 0 => lines.push(String::new()),
            Mutation::DeleteLine(a) => {
                lines.remove(line(a));
            }
            Mutation::DuplicateLine(a) => {
                let i = line(a);
                lines.insert(i, lines[i].clone());
            }
            Mutation::SwapLines(a, b) => lines.swap(line(a), line(b)),
            Mutation::Indent(a, by) => {
                let i = line(a);
                let l = &lines[i];
                lines[i] = if *by >= 0 {
                    format!("{}{l}", " ".repeat(*by as usize))
                } else {
                    l.chars().skip_while(|c| *c == ' ').collect()
                };
            }
            Mutation::ReplaceValue(a, t) => {
                let i = line(a);
                if let Some(p) = lines[i].find(": ") {
                    lines[i] = format!("{}: {t}", &lines[i][..p]);
                }
            }
            Mutation::InsertLine(a, t) => {
                let i = line(a);
                let indent: String = lines[i].chars().take_while(|c| *c == ' ').collect();
                lines.insert(i, format!("{indent}{t}"));
            }
            Mutation::InsertText(a, t) => {
                let i = line(a);
                let l = &lines[i];
                let mut cut = at(0.5, l.len());
                while !l.is_char_boundary(cut) {
                    cut -= 1;
                }
                lines[i] = format!("{}{t}{}", &l[..cut], &l[cut..]);
            }
            Mutation::Truncate(a) => lines.truncate(line(a)),
        }
    }
    let mut out = lines.join("\n");
    out.push('\n');
    out
}

/// Everything a parse and its plan give, as text: the spec's values and locations, every
/// stage's parameters, the plan or its problems.
fn rendered(path: &Path, text: &str, walking: bool) -> String {
    let parsed = if walking {
        PipelineSpec::parse_walking(path, text.to_string())
    } else {
        PipelineSpec::parse(path, text.to_string())
    };
    let spec = match parsed {
        Ok(s) => s,
        Err(e) => return format!("refused: {e:?}"),
    };
    let mut out = format!(
        "{:?}\n{:?}\n{:?}\n{:?}\n{:?}\n",
        spec.header, spec.sites, spec.sources, spec.stages, spec.problems
    );
    for e in &spec.stages {
        let kind = studyflow::stages::Kind::parse(&spec, e.index, &e.common.kind.value);
        out.push_str(&format!("{kind:?}\n"));
    }
    match studyflow::plan::build(spec) {
        // (The resolved sites hold hash sets, whose order varies; their spec is compared above.)
        Ok(p) => out.push_str(&format!("{:?}\n{:?}", p.stages, p.waves)),
        Err(e) => out.push_str(&format!("{e:?}")),
    }
    out
}

/// Never a panic; a refused file lists at least one problem, each with a message; an
/// accepted one plans every stage exactly once and can be explained. Parsing each list element
/// from its own lines gives exactly what walking the whole document to it gives.
fn parses_or_explains(path: &Path, text: String) -> Result<(), TestCaseError> {
    // The walk skips what it passes with serde's IgnoredAny, which reads plain scalars as
    // numbers and so stops at a text such as `1e999` (it then reports that, located); the
    // outline reads no values and parses such a file. Elsewhere the two agree exactly.
    if serde_saphyr::from_str::<serde::de::IgnoredAny>(&text).is_ok() {
        prop_assert_eq!(rendered(path, &text, true), rendered(path, &text, false));
    }
    let spec = match PipelineSpec::parse(path, text) {
        Ok(s) => s,
        Err(e) => {
            prop_assert!(!e.0.is_empty(), "refused without a problem");
            prop_assert!(e.0.iter().all(|p| !p.message.is_empty()));
            return Ok(());
        }
    };
    let stages = spec.stages.len();
    match studyflow::plan::build(spec) {
        Ok(plan) => {
            let mut waved: Vec<usize> = plan.waves.iter().flatten().copied().collect();
            waved.sort_unstable();
            prop_assert_eq!(waved, (0..plan.stages.len()).collect::<Vec<_>>());
            prop_assert!(plan.stages.len() <= stages);
        }
        Err(e) => {
            prop_assert!(!e.0.is_empty(), "refused without a problem");
            prop_assert!(e.0.iter().all(|p| !p.message.is_empty()));
        }
    }
    Ok(())
}

#[test]
fn fuzz_spec_parser() {
    let strategy = (
        prop::sample::select(seeds()),
        prop::collection::vec(mutation(), 1..5),
    );
    fuzz("spec_parser", 100, strategy, |((path, text), mutations)| {
        parses_or_explains(&path, mutate(&text, &mutations))
    });
}

#[test]
fn fuzz_spec_seeds_plan_cleanly() {
    for (path, text) in seeds() {
        assert_eq!(rendered(&path, &text, true), rendered(&path, &text, false));
        let spec = PipelineSpec::parse(&path, text).unwrap();
        let plan = studyflow::plan::build(spec);
        assert!(plan.is_ok(), "{}: {}", path.display(), plan.err().unwrap());
    }
}
