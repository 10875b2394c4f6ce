//! `assign_phase`: gives every dated row its treatment phase (APHASEN, APHASE) from the
//! subject's phase windows, as an as-of interval join; rows outside every window get none.

use polars::prelude::*;
use serde::Deserialize;

use crate::stages::{Arity, Inputs, Stage, StageCtx, StageOutput};

/// Parameters of an `assign_phase` stage. Inputs: the dated table, then the phase windows
/// (a `phase_windows` table: USUBJID, APHASEN, APHASE, ASTDT, AENDT).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AssignPhase {
    /// Input holding the phase windows.
    pub phases: String,
    /// Subject id column of the dated table.
    #[serde(default = "default_subject")]
    pub subject: String,
    /// Date column of the dated table.
    #[serde(default = "default_date")]
    pub date: String,
}

fn default_subject() -> String {
    "USUBJID".into()
}
fn default_date() -> String {
    "ADT".into()
}

/// Day number used for an unbounded window start (far before any plausible date).
const OPEN_START: i32 = -1_000_000;

/// The phase (APHASEN, APHASE) of each row: the subject's window with the latest start on or
/// before the day, if the day is not after that window's end.
///
/// Subjects are numbered by their place among the windows' sorted subject ids, and each
/// window and row gets one integer key, subject number * 2^32 + day (a row's subject is looked
/// up once per run of rows of one subject). A binary search of every row's key among the sorted
/// window keys then finds its window: the rows are neither hashed by subject nor sorted, so the
/// cost is a few passes over them.
fn phase_of_rows(
    subject: &Column,
    date: &Column,
    phases: &DataFrame,
) -> PolarsResult<(Column, Column)> {
    let n = subject.len();
    let none = || {
        (
            Column::full_null("APHASEN".into(), n, &DataType::Int64),
            Column::full_null("APHASE".into(), n, &DataType::String),
        )
    };
    let windows = phases
        .clone()
        .lazy()
        .select([
            col("USUBJID").cast(DataType::String).alias("__sid"),
            col("ASTDT")
                .cast(DataType::Int32)
                .fill_null(lit(OPEN_START))
                .alias("__start"),
            col("AENDT").cast(DataType::Int32).alias("__end"),
            col("APHASEN").cast(DataType::Int64),
            col("APHASE").cast(DataType::String),
        ])
        .filter(col("__sid").is_not_null())
        .collect()?;
    if windows.height() == 0 || n == 0 {
        return Ok(none());
    }
    let ids = windows
        .column("__sid")?
        .as_materialized_series()
        .unique()?
        .sort(Default::default())?;
    // subject number * 2^32 + day + 2^31: ordered by subject, then day.
    let key = |number: Expr, day: Expr| {
        number.cast(DataType::Int64) * lit(1i64 << 32) + day.cast(DataType::Int64) + lit(1i64 << 31)
    };
    let numbers = search_sorted(
        &ids,
        windows.column("__sid")?.as_materialized_series(),
        SearchSortedSide::Left,
        false,
    )?;
    let mut windows = windows;
    windows.with_column(numbers.with_name("__number".into()).into_column())?;
    let windows = windows
        .lazy()
        .with_column(key(col("__number"), col("__start")).alias("__key"))
        .sort(["__key"], Default::default())
        .collect()?;

    // Each run of rows of one subject is looked up once: a table sorted by subject has one
    // run per subject.
    let sid = subject.cast(&DataType::String)?;
    let (place, found) =
        crate::stages::places_by_run(sid.as_materialized_series(), |_| Ok(ids.clone()))?;
    let rows = DataFrame::new(
        n,
        vec![
            place.with_name("__number".into()).into_column(),
            found.with_name("__found".into()).into_column(),
            date.cast(&DataType::Date)?
                .cast(&DataType::Int32)?
                .with_name("__day".into()),
        ],
    )?;
    let mut keyed = rows
        .lazy()
        .with_column(
            when(col("__found").and(col("__day").is_not_null()))
                .then(key(col("__number"), col("__day")))
                .otherwise(lit(NULL).cast(DataType::Int64))
                .alias("__key"),
        )
        .collect()?;
    // Windows whose key is at most the row's: the last of them is the candidate.
    let after = count_at_most(
        windows.column("__key")?.as_materialized_series(),
        keyed.column("__key")?.as_materialized_series(),
    )?;
    keyed.with_column(after.with_name("__after".into()).into_column())?;
    let candidate = keyed
        .clone()
        .lazy()
        .select([
            when(col("__key").is_not_null().and(col("__after").gt(lit(0))))
                .then(col("__after") - lit(1))
                .otherwise(lit(NULL))
                .cast(IDX_DTYPE)
                .alias("__candidate"),
        ])
        .collect()?;
    let window = windows
        .select(["__number", "__start", "__end", "APHASEN", "APHASE"])?
        .take(candidate.column("__candidate")?.idx()?)?;
    let mut both = keyed.select(["__number", "__found", "__day"])?;
    both.hstack_mut(&[
        window
            .column("__number")?
            .clone()
            .with_name("__wnumber".into()),
        window.column("__start")?.clone(),
        window.column("__end")?.clone(),
        window.column("APHASEN")?.clone(),
        window.column("APHASE")?.clone(),
    ])?;
    let inside = col("__found")
        .and(col("__start").is_not_null())
        .and(col("__wnumber").eq(col("__number")))
        .and(col("__end").is_null().or(col("__day").lt_eq(col("__end"))));
    let out = both
        .lazy()
        .select([
            when(inside.clone())
                .then(col("APHASEN"))
                .otherwise(lit(NULL).cast(DataType::Int64))
                .alias("APHASEN"),
            when(inside)
                .then(col("APHASE"))
                .otherwise(lit(NULL).cast(DataType::String))
                .alias("APHASE"),
        ])
        .collect()?;
    Ok((
        out.column("APHASEN")?.clone(),
        out.column("APHASE")?.clone(),
    ))
}

/// For each of `keys`, how many of `sorted` (ascending, no missing value) are at most it:
/// polars' `search_sorted` on the right side. Keys in order (rows sorted by subject and date,
/// as the daily tables come) are merged with `sorted` in one pass instead of each searched; a
/// missing key gets 0 there (the caller ignores it).
fn count_at_most(sorted: &Series, keys: &Series) -> PolarsResult<IdxCa> {
    let (s, k) = (sorted.i64()?, keys.i64()?);
    if s.null_count() > 0 || !crate::stages::non_decreasing(k.iter().flatten()) {
        return search_sorted(sorted, keys, SearchSortedSide::Right, false);
    }
    let s: Vec<i64> = s.into_no_null_iter().collect();
    let mut at_most = 0;
    let counts: Vec<IdxSize> = k
        .iter()
        .map(|key| match key {
            Some(key) => {
                while at_most < s.len() && s[at_most] <= key {
                    at_most += 1;
                }
                at_most as IdxSize
            }
            None => 0,
        })
        .collect();
    Ok(IdxCa::from_vec(keys.name().clone(), counts))
}

impl Stage for AssignPhase {
    /// Each row, from its subject's windows.
    fn across_subjects(&self, _subject_columns: &[String]) -> Option<String> {
        None
    }

    fn arity(&self) -> Arity {
        Arity::Exactly(2)
    }

    fn row_level(&self) -> bool {
        true
    }

    fn run(&self, _ctx: &StageCtx, inputs: &Inputs) -> anyhow::Result<StageOutput> {
        let (rows_name, rows) = inputs
            .tables
            .iter()
            .find(|(n, _)| n != &self.phases)
            .ok_or_else(|| {
                anyhow::anyhow!("assign_phase needs a dated table besides `{}`", self.phases)
            })?;
        let phases = inputs.get(&self.phases).ok_or_else(|| {
            anyhow::anyhow!("`{}` is not one of this stage's inputs", self.phases)
        })?;
        for c in [&self.subject, &self.date] {
            if rows.column(c).is_err() {
                anyhow::bail!("`{rows_name}` has no column `{c}`");
            }
        }
        let (aphasen, aphase) = phase_of_rows(
            rows.column(&self.subject)?,
            rows.column(&self.date)?,
            phases,
        )?;
        let mut table = rows.clone();
        table.hstack_mut(&[aphasen, aphase])?;
        let table = table.lazy();
        Ok(StageOutput::table(table))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stages::phase_windows::PhaseWindows;
    use crate::stages::tests_support::{ctx_for, dates, strings};

    fn windows(w: i64) -> DataFrame {
        // Subject A: first event 2012-01-01, first dose 2012-04-10, optimal 2012-07-19,
        // final visit 2015-01-01. Subject B stopped early: optimal 2014-12-01, final visit
        // 2015-01-01. Subject C never reached optimal. Subject D was never dosed.
        let anchors = DataFrame::new_infer_height(vec![
            Column::new("USUBJID".into(), ["A", "B", "C", "D"]),
            dates(&["2012-01-01", "2012-01-01", "2012-01-01", "2012-01-01"])
                .with_name("FRSTDT".into())
                .into(),
            dates(&["2012-04-10", "2012-04-10", "2012-04-10", ""])
                .with_name("TRTSDT".into())
                .into(),
            dates(&["2012-07-19", "2014-12-01", "", ""])
                .with_name("OPTSDT".into())
                .into(),
            dates(&["2015-01-01", "2015-01-01", "2015-01-01", "2015-01-01"])
                .with_name("LSTVSTDT".into())
                .into(),
        ])
        .unwrap();
        let yaml = format!(
            "constants: {{W: {w}}}\nphases:\n  - {{number: 4, label: final, start: 'max(LSTVSTDT - W + 1, TRTSDT)', end: LSTVSTDT}}\n  - {{number: 1, label: pretreatment, start: FRSTDT, end: 'min(TRTSDT - 1, LSTVSTDT) | LSTVSTDT'}}\n  - {{number: 2, label: escalation, start: TRTSDT, end: 'min(OPTSDT - 1, LSTVSTDT) | LSTVSTDT'}}\n  - {{number: 3, label: optimal, start: OPTSDT, end: LSTVSTDT - W}}\n"
        );
        let stage: PhaseWindows = serde_saphyr::from_str(&yaml).unwrap();
        let inputs = Inputs {
            tables: vec![("anchors".into(), anchors)],
        };
        ctx_for(|c| stage.run(c, &inputs))
            .unwrap()
            .table
            .collect()
            .unwrap()
    }

    fn phase_of(subject: &str, days: &[&str], w: i64) -> Vec<String> {
        let rows = DataFrame::new_infer_height(vec![
            Column::new("USUBJID".into(), vec![subject; days.len()]),
            dates(days).with_name("ADT".into()).into(),
        ])
        .unwrap();
        let stage = AssignPhase {
            phases: "adph".into(),
            subject: "USUBJID".into(),
            date: "ADT".into(),
        };
        let inputs = Inputs {
            tables: vec![("rows".into(), rows), ("adph".into(), windows(w))],
        };
        let out = ctx_for(|c| stage.run(c, &inputs))
            .unwrap()
            .table
            .collect()
            .unwrap();
        strings(&out, "APHASEN")
    }

    #[test]
    fn every_boundary_day() {
        // TRTSDT-1, TRTSDT, OPTSDT-1, OPTSDT, LSTVSTDT-W (2014-10-03), LSTVSTDT-W+1,
        // LSTVSTDT, LSTVSTDT+1.
        let days = [
            "2012-04-09",
            "2012-04-10",
            "2012-07-18",
            "2012-07-19",
            "2014-10-03",
            "2014-10-04",
            "2015-01-01",
            "2015-01-02",
        ];
        assert_eq!(
            phase_of("A", &days, 90),
            ["1", "2", "2", "3", "3", "4", "4", "null"]
        );
    }

    #[test]
    fn stopped_early_never_optimal_never_dosed() {
        // B: optimal starts 2014-12-01, inside the final 90 days: no phase 3, phase 2 ends
        // at LSTVSTDT - W.
        assert_eq!(
            phase_of("B", &["2014-10-03", "2014-10-04", "2014-12-01"], 90),
            ["2", "4", "4"]
        );
        assert_eq!(
            phase_of("C", &["2012-04-10", "2014-10-03", "2014-10-04"], 90),
            ["2", "2", "4"]
        );
        assert_eq!(
            phase_of(
                "D",
                &["2011-12-31", "2012-01-01", "2015-01-01", "2015-01-02"],
                90
            ),
            ["null", "1", "1", "null"]
        );
    }

    #[test]
    fn a_shorter_window_moves_only_the_phase_3_4_boundary() {
        // W = 60: LSTVSTDT - W = 2014-11-02.
        assert_eq!(
            phase_of("A", &["2014-10-04", "2014-11-02", "2014-11-03"], 60),
            ["3", "3", "4"]
        );
    }

    /// One window: subject, start (None: open), end (None: open), phase number.
    type Window = (&'static str, Option<i32>, Option<i32>, i64);

    /// The rule, row by row: the subject's window with the latest start on or before the day,
    /// when the day is not after its end.
    fn oracle(windows: &[Window], subject: Option<&str>, day: Option<i32>) -> Option<i64> {
        let (subject, day) = (subject?, day?);
        let w = windows
            .iter()
            .filter(|w| w.0 == subject && w.1.is_none_or(|s| s <= day))
            .max_by_key(|w| w.1.unwrap_or(i32::MIN))?;
        w.2.is_none_or(|e| day <= e).then_some(w.3)
    }

    proptest::proptest! {
        /// The merge of keys in order, and the search of keys in any order, count what
        /// polars' search counts (missing keys aside).
        #[test]
        fn count_at_most_is_polars_search(
            sorted in proptest::collection::vec(-20i64..20, 0..40),
            keys in proptest::collection::vec(proptest::option::of(-25i64..25), 0..80),
            in_order in proptest::bool::ANY,
        ) {
            let mut sorted = sorted;
            sorted.sort();
            let mut keys = keys;
            if in_order {
                keys.sort();
            }
            let s = Series::new("s".into(), &sorted);
            let k = Series::new("k".into(), &keys);
            let ours: Vec<IdxSize> = count_at_most(&s, &k).unwrap().into_no_null_iter().collect();
            let polars: Vec<IdxSize> = search_sorted(&s, &k, SearchSortedSide::Right, false)
                .unwrap()
                .into_no_null_iter()
                .collect();
            for (i, key) in keys.iter().enumerate() {
                if key.is_some() {
                    proptest::prop_assert_eq!(ours[i], polars[i], "key {:?}", key);
                }
            }
        }

        #[test]
        fn every_row_gets_the_window_the_rule_gives(
            spans in proptest::collection::vec((0usize..4, 0i32..40, 0i32..8, proptest::bool::ANY), 0..12),
            rows in proptest::collection::vec((0usize..6, proptest::option::of(-5i32..60)), 0..60),
            in_order in proptest::bool::ANY,
        ) {
            // Rows in subject and day order (as the daily tables come: the windows are merged
            // with them) or in any order (each row's window is searched).
            let mut rows = rows;
            if in_order {
                rows.sort();
            }
            // Windows of subjects A..D, one per start (starts apart, as phase_windows makes them).
            let names = ["A", "B", "C", "D", "E", ""];
            let mut windows: Vec<Window> = Vec::new();
            for (i, (subj, start, len, open)) in spans.iter().enumerate() {
                if windows.iter().any(|w| w.0 == names[*subj] && w.1 == Some(*start)) {
                    continue;
                }
                let start = if *open && *start < 3 { None } else { Some(*start) };
                let end = if *open && *len == 7 { None } else { Some(start.unwrap_or(0) + len) };
                windows.push((names[*subj], start, end, i as i64 + 1));
            }
            let phases = DataFrame::new_infer_height(vec![
                Column::new("USUBJID".into(), windows.iter().map(|w| w.0).collect::<Vec<_>>()),
                Column::new("ASTDT".into(), windows.iter().map(|w| w.1).collect::<Vec<_>>())
                    .cast(&DataType::Date).unwrap(),
                Column::new("AENDT".into(), windows.iter().map(|w| w.2).collect::<Vec<_>>())
                    .cast(&DataType::Date).unwrap(),
                Column::new("APHASEN".into(), windows.iter().map(|w| w.3).collect::<Vec<_>>()),
                // Names longer than 12 bytes: text a view array keeps in its buffers.
                Column::new("APHASE".into(), windows.iter().map(|w| format!("treatment phase {}", w.3)).collect::<Vec<_>>()),
            ]).unwrap();
            // Subject index 5 stands for a missing subject id.
            let subjects: Vec<Option<&str>> =
                rows.iter().map(|r| (r.0 < 5).then_some(names[r.0])).collect();
            let days: Vec<Option<i32>> = rows.iter().map(|r| r.1).collect();
            let table = DataFrame::new_infer_height(vec![
                Column::new("USUBJID".into(), subjects.clone()),
                Column::new("ADT".into(), days.clone()).cast(&DataType::Date).unwrap(),
            ]).unwrap();
            let stage = AssignPhase {
                phases: "adph".into(),
                subject: "USUBJID".into(),
                date: "ADT".into(),
            };
            let inputs = Inputs {
                tables: vec![("rows".into(), table), ("adph".into(), phases)],
            };
            let out = ctx_for(|c| stage.run(c, &inputs)).unwrap().table.collect().unwrap();
            let got: Vec<Option<i64>> = out.column("APHASEN").unwrap().i64().unwrap().iter().collect();
            let labels: Vec<Option<String>> = out.column("APHASE").unwrap().str().unwrap()
                .iter().map(|s| s.map(str::to_string)).collect();
            let want: Vec<Option<i64>> = subjects.iter().zip(&days)
                .map(|(s, d)| oracle(&windows, *s, *d)).collect();
            proptest::prop_assert_eq!(&got, &want);
            let want_labels: Vec<Option<String>> =
                want.iter().map(|p| p.map(|p| format!("treatment phase {p}"))).collect();
            proptest::prop_assert_eq!(labels, want_labels);
            // Each phase name is stored once, however many rows it names.
            let stored: usize = out.column("APHASE").unwrap().str().unwrap()
                .downcast_iter().map(|a| a.total_buffer_len()).sum();
            let names: usize = windows.iter().map(|w| format!("treatment phase {}", w.3).len()).sum();
            proptest::prop_assert!(stored <= names, "{} bytes stored for {} bytes of names", stored, names);
        }
    }

    #[test]
    fn phase_windows_table() {
        let w = windows(90);
        assert_eq!(
            strings(&w, "USUBJID"),
            ["A", "A", "A", "A", "B", "B", "B", "C", "C", "C", "D"]
        );
        assert_eq!(
            strings(&w, "APHASEN"),
            ["1", "2", "3", "4", "1", "2", "4", "1", "2", "4", "1"]
        );
        assert_eq!(strings(&w, "ADURN")[3], "90");
    }
}
