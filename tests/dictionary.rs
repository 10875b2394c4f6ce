//! The data dictionary: every column of every published table is described, with its type
//! and the stage that derives it.

use crate::workdir::*;

#[test]
fn every_published_column_is_in_the_dictionary() {
    let w = Workdir::from_fixture("two_sites");
    assert_exit(&w.run_pipeline(), 0);
    let dict: serde_json::Value =
        serde_json::from_slice(&std::fs::read(w.path("out/current/dictionary.json")).unwrap())
            .unwrap();
    let entries = dict.as_array().unwrap();
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(w.path("out/current/manifest.json")).unwrap())
            .unwrap();
    let mut described = 0;
    for t in manifest["tables"].as_array().unwrap() {
        let name = t["name"].as_str().unwrap();
        let table = w.table(name);
        for (column, dtype) in table.schema().iter() {
            let e = entries
                .iter()
                .find(|e| e["table"] == name && e["column"] == column.as_str())
                .unwrap_or_else(|| panic!("{name}.{column} is not in the dictionary"));
            assert_eq!(e["type"], dtype.to_string(), "{name}.{column}");
            assert!(!e["label"].as_str().unwrap().is_empty(), "{name}.{column}");
            described += 1;
        }
    }
    assert_eq!(
        described,
        entries.len(),
        "the dictionary lists only published columns"
    );
    let visits = entries
        .iter()
        .find(|e| e["table"] == "visits" && e["column"] == "SRCLINE")
        .unwrap();
    assert!(
        visits["derivation"]
            .as_str()
            .unwrap()
            .contains("stage `visits` (dedupe) from `visits_raw`")
    );
    assert!(
        std::fs::read_to_string(w.path("out/current/dictionary.md"))
            .unwrap()
            .contains("## visit_counts")
    );
}
