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

/// Rows handed to one worker at a time when rows are given their window.
const ROW_BLOCK: usize = 1 << 16;

/// No window: the row's phase is missing.
const NO_WINDOW: IdxSize = IdxSize::MAX;

/// The phase (APHASEN, APHASE) of each row: the subject's window with the latest start on or
/// before the day, if the day is not after that window's end.
///
/// Subjects are numbered by their place among the windows' sorted subject ids, and each
/// window and row gets one integer key, subject number * 2^32 + day (a row's subject is looked
/// up once per run of rows of one subject). Each row's window is then the last window whose key
/// is at most the row's, found from the row before's (rows in subject and day order, as the
/// daily tables come, move it forward a step at a time; rows in any other order are searched):
/// one pass over the rows, in blocks on every core, where the rows are neither hashed by
/// subject nor sorted.
fn phase_of_rows(
    subject: &Column,
    date: &Column,
    phases: &DataFrame,
) -> PolarsResult<(Column, Column)> {
    phase_of_rows_in_blocks(subject, date, phases, ROW_BLOCK)
}

/// [`phase_of_rows`], its rows given to the workers `block` at a time.
fn phase_of_rows_in_blocks(
    subject: &Column,
    date: &Column,
    phases: &DataFrame,
    block: usize,
) -> PolarsResult<(Column, Column)> {
    use rayon::prelude::*;
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
        .with_column(
            (col("__number").cast(DataType::Int64) * lit(1i64 << 32)
                + col("__start").cast(DataType::Int64)
                + lit(1i64 << 31))
            .alias("__key"),
        )
        .sort(["__key"], Default::default())
        .collect()?;
    let w_key: Vec<i64> = windows
        .column("__key")?
        .i64()?
        .into_no_null_iter()
        .collect();
    let w_number: Vec<IdxSize> = windows
        .column("__number")?
        .idx()?
        .into_no_null_iter()
        .collect();
    let w_end: Vec<Option<i32>> = windows.column("__end")?.i32()?.iter().collect();

    // Each run of rows of one subject is looked up once: a table sorted by subject has one
    // run per subject.
    let sid = subject.cast(&DataType::String)?;
    let runs = crate::stages::places_of_runs(sid.as_materialized_series(), |_| Ok(ids.clone()))?;
    let run_of_row = runs.run_of_row.rechunk();
    let run_of_row = run_of_row.cont_slice()?;
    let number_of_run: Vec<Option<IdxSize>> = runs
        .place
        .into_no_null_iter()
        .zip(runs.found.iter())
        .map(|(place, found)| (found == Some(true)).then_some(place))
        .collect();
    let day = date
        .cast(&DataType::Date)?
        .cast(&DataType::Int32)?
        .as_materialized_series()
        .rechunk();
    let day = day.i32()?;
    let day = day
        .downcast_iter()
        .next()
        .ok_or_else(|| polars_err!(ComputeError: "a date column without values"))?;
    let (days, day_validity) = (day.values().as_slice(), day.validity());

    // Each row's window (its place in `windows`), or none.
    let window_of_row: Vec<IdxSize> = (0..n)
        .into_par_iter()
        .with_min_len(block)
        .with_max_len(block)
        .map_init(
            || 0usize,
            |cursor, i| {
                let Some(number) = number_of_run[run_of_row[i] as usize] else {
                    return NO_WINDOW;
                };
                if day_validity.is_some_and(|v| !v.get_bit(i)) {
                    return NO_WINDOW;
                }
                let d = days[i];
                let key = i64::from(number) * (1i64 << 32) + i64::from(d) + (1i64 << 31);
                let after = at_most(&w_key, key, cursor);
                let Some(w) = after.checked_sub(1) else {
                    return NO_WINDOW;
                };
                let inside = w_number[w] == number && w_end[w].is_none_or(|end| d <= end);
                if inside { w as IdxSize } else { NO_WINDOW }
            },
        )
        .collect();
    let has_window = polars_arrow::bitmap::Bitmap::from_trusted_len_iter(
        window_of_row.iter().map(|&w| w != NO_WINDOW),
    );
    let take = IdxCa::from_vec_validity("__window".into(), window_of_row, Some(has_window));
    let out = windows.select(["APHASEN", "APHASE"])?.take(&take)?;
    Ok((
        out.column("APHASEN")?.clone(),
        out.column("APHASE")?.clone(),
    ))
}

/// How many of `sorted` (ascending) are at most `key`: polars' `search_sorted` on the right
/// side. `cursor` holds the answer for the key before and is moved to this one's: a key at or
/// after the one before (keys in order, as rows sorted by subject and date give them) is
/// found a few steps on from it, any other key by a binary search.
fn at_most(sorted: &[i64], key: i64, cursor: &mut usize) -> usize {
    let from = (*cursor).min(sorted.len());
    let found = if from == 0 || sorted[from - 1] <= key {
        let mut i = from;
        loop {
            if i == sorted.len() || sorted[i] > key {
                break i;
            }
            i += 1;
            if i - from == 8 {
                break i + sorted[i..].partition_point(|&s| s <= key);
            }
        }
    } else {
        sorted[..from].partition_point(|&s| s <= key)
    };
    *cursor = found;
    found
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
        /// Keys in order, found a few steps on from the key before, and keys in any order,
        /// searched, count what polars' search counts, whatever the cursor held before.
        #[test]
        fn at_most_is_polars_search(
            sorted in proptest::collection::vec(-20i64..20, 0..40),
            keys in proptest::collection::vec(-25i64..25, 0..80),
            in_order in proptest::bool::ANY,
            cursor in 0usize..50,
        ) {
            let mut sorted = sorted;
            sorted.sort();
            let mut keys = keys;
            if in_order {
                keys.sort();
            }
            let s = Series::new("s".into(), &sorted);
            let k = Series::new("k".into(), &keys);
            let polars: Vec<IdxSize> = search_sorted(&s, &k, SearchSortedSide::Right, false)
                .unwrap()
                .into_no_null_iter()
                .collect();
            let mut cursor = cursor;
            for (key, want) in keys.iter().zip(polars) {
                proptest::prop_assert_eq!(at_most(&sorted, *key, &mut cursor), want as usize, "key {}", key);
            }
        }

        #[test]
        fn every_row_gets_the_window_the_rule_gives(
            spans in proptest::collection::vec((0usize..4, 0i32..40, 0i32..8, proptest::bool::ANY), 0..12),
            rows in proptest::collection::vec((0usize..6, proptest::option::of(-5i32..60)), 0..60),
            in_order in proptest::bool::ANY,
            block in 1usize..20,
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
            // The rows given to the workers a few at a time: blocks start in the middle of a
            // subject's rows and of its windows.
            let (aphasen, aphase) = phase_of_rows_in_blocks(
                table.column("USUBJID").unwrap(),
                table.column("ADT").unwrap(),
                &phases,
                block,
            ).unwrap();
            let out = DataFrame::new_infer_height(vec![aphasen, aphase]).unwrap();
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
