//! Property: whatever dirt a file holds, every raw row is accepted, rejected, collapsed or
//! superseded, exactly once, and the run's own reconciliation agrees.

use proptest::prelude::*;

use crate::workdir::*;

fn cell() -> impl Strategy<Value = String> {
    prop_oneof![
        (0u8..6).prop_map(|v| v.to_string()),
        Just("NA".to_string()),
        Just("".to_string()),
        Just("x".to_string()),
        Just("1,5".to_string()),
    ]
}

fn date() -> impl Strategy<Value = String> {
    prop_oneof![
        (1u8..6).prop_map(|d| format!("2014-03-0{d}")),
        Just("2099-01-01".to_string()),
        Just("1899-01-01".to_string()),
        Just("03/07/2014".to_string()),
        Just("NA".to_string()),
    ]
}

fn row() -> impl Strategy<Value = String> {
    (
        prop_oneof![Just("C01"), Just("c-2"), Just("??"), Just("")],
        date(),
        cell(),
        cell(),
        0u8..10,
    )
        .prop_map(|(s, d, a, b, shape)| match shape {
            0 => format!("{s},{d},{a}"),
            1 => format!("{s},\"{d}\",{a},{b},extra"),
            _ => format!("{s},{d},{a},{b}"),
        })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 12, .. ProptestConfig::default() })]
    #[test]
    fn row_fate_always_reconciles(rows_a in prop::collection::vec(row(), 0..25), rows_b in prop::collection::vec(row(), 0..25)) {
        let w = Workdir::from_fixture("two_sites");
        let header = "Patient ID,diary_date,fever,rash\n";
        w.write("data/nih/diary_2017-07-31.csv", format!("{header}{}\n", rows_a.join("\n")).as_bytes());
        w.write("data/nih/diary_2017-08-31.csv", format!("{header}{}\n", rows_b.join("\n")).as_bytes());
        // Reject limits are not under test here.
        let yaml = std::fs::read_to_string(w.path("pipeline.yaml")).unwrap().replace("reject_limit: 0.8", "reject_limit: 1.0");
        w.write("pipeline.yaml", yaml.as_bytes());
        let o = w.run_pipeline();
        assert_exit(&o, 0);
        let fate = w.table("row_fate");
        let diary = w.table("diary");
        let rejects = w.table("rejects");
        let dups = w.table("duplicates");
        for (file, n) in [("nih/diary_2017-07-31.csv", rows_a.len()), ("nih/diary_2017-08-31.csv", rows_b.len())] {
            let count = |df: &polars::prelude::DataFrame| strs(df, "SRCFILE").iter().filter(|f| *f == file).count();
            // Independent count from the published tables, not from the run's own figures.
            prop_assert_eq!(count(&diary) + count(&rejects) + count(&dups), n, "file {}", file);
            let i = strs(&fate, "SRCFILE").iter().position(|f| f == file).unwrap();
            prop_assert_eq!(strs(&fate, "READ")[i].parse::<usize>().unwrap(), n);
        }
    }
}
