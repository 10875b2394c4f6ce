//! Broken pipeline YAML: exit 2, and every mistake listed with its line and column.

use crate::workdir::*;

#[test]
fn every_mistake_is_listed_with_line_and_column() {
    let w = Workdir::from_fixture("two_sites");
    let yaml = std::fs::read_to_string(w.path("pipeline.yaml")).unwrap();
    let broken = yaml
        .replace(
            "    kind: dedupe\n    inputs: [visits_raw]",
            "    kind: dedupe\n    inputs: [visit_raw]",
        )
        .replace(
            "  - name: diary_dedup\n    kind: dedupe",
            "  - name: diary_dedup\n    kind: dedup",
        )
        .replace(
            "    source: diary\n",
            "    source: diary\n    colour: blue\n",
        )
        .replace(
            "      decimal: \",\"\n",
            "      decimal: \",\"\n      delimitter: \";\"\n",
        );
    w.write("broken.yaml", broken.as_bytes());
    let o = w.run(&["validate", "broken.yaml"]);
    assert_exit(&o, 2);
    let err = stderr(&o);
    let line_of = |needle: &str| {
        broken
            .lines()
            .position(|l| l.trim() == needle || l.trim().starts_with(&format!("{needle} ")))
            .unwrap()
            + 1
    };
    for (needle, what) in [
        ("delimitter: \";\"", "unknown field"),
        ("colour: blue", "unknown field"),
        ("kind: dedup", "unknown stage kind `dedup`"),
        ("inputs: [visit_raw]", "unknown input `visit_raw`"),
    ] {
        let line = line_of(needle);
        let located = format!("broken.yaml:{line}:");
        assert!(
            err.lines()
                .any(|l| l.contains(&located) && l.contains(what)),
            "expected `{what}` at {located} in:\n{err}"
        );
    }
    assert!(err.contains("did you mean `visits_raw`?"), "{err}");
    assert!(err.contains("did you mean `dedupe`?"), "{err}");
}

#[test]
fn cycles_and_duplicate_names_exit_2() {
    let w = Workdir::from_fixture("two_sites");
    w.write(
        "cycle.yaml",
        b"pipeline: c\nstages:\n  - {name: a, kind: sql, inputs: [b], query: SELECT 1}\n  - {name: b, kind: sql, inputs: [a], query: SELECT 1}\n  - {name: b, kind: sql, query: SELECT 1}\n",
    );
    let o = w.run(&["validate", "cycle.yaml"]);
    assert_exit(&o, 2);
    let err = stderr(&o);
    assert!(
        err.contains("cycle.yaml:5:") && err.contains("defined twice"),
        "{err}"
    );
}

#[test]
fn syntax_errors_and_wrong_types_are_located() {
    let w = Workdir::from_fixture("two_sites");
    w.write(
        "bad.yaml",
        b"pipeline: x\nstages:\n  - name: a\n    kind: sql\n    query: [1, 2\n",
    );
    let o = w.run(&["validate", "bad.yaml"]);
    assert_exit(&o, 2);
    assert!(stderr(&o).contains("bad.yaml:"), "{}", stderr(&o));
    w.write("types.yaml", b"pipeline: x\nstages:\n  - name: a\n    kind: dedupe\n    inputs: [b]\n    key: 3\n  - name: b\n    kind: sql\n    query: SELECT 1\n");
    let o = w.run(&["validate", "types.yaml"]);
    assert_exit(&o, 2);
    assert!(stderr(&o).contains("types.yaml:6:"), "{}", stderr(&o));
}

#[test]
fn shipped_pipelines_validate() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    for e in std::fs::read_dir(root.join("pipelines")).unwrap() {
        let p = e.unwrap().path();
        if p.extension().is_some_and(|x| x == "yaml") {
            let plan = studyflow::cli::load_plan(&p);
            assert!(plan.is_ok(), "{}: {:#}", p.display(), plan.err().unwrap());
        }
    }
    let plan = studyflow::cli::load_plan(&fixture("two_sites").join("pipeline.yaml"));
    assert!(plan.is_ok(), "{:#}", plan.err().unwrap());
}
