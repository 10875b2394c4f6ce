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

impl Stage for AssignPhase {
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
        // Only the row number, subject and day take part in the join and the two sorts; the
        // phase columns are then put next to the rows, which are never reordered.
        let left = rows
            .clone()
            .lazy()
            .select([
                col(self.subject.as_str())
                    .cast(DataType::String)
                    .alias("__sid"),
                col(self.date.as_str())
                    .cast(DataType::Date)
                    .cast(DataType::Int32)
                    .alias("__day"),
            ])
            .with_row_index("__row", None)
            .sort(["__day"], Default::default());
        let right = phases
            .clone()
            .lazy()
            .select([
                col("USUBJID").cast(DataType::String).alias("__sid"),
                col("ASTDT")
                    .cast(DataType::Int32)
                    .fill_null(lit(OPEN_START))
                    .alias("__start"),
                col("AENDT").cast(DataType::Int32).alias("__end"),
                col("APHASEN"),
                col("APHASE"),
            ])
            .sort(["__start"], Default::default());
        let joined = left
            .join_builder()
            .with(right)
            .left_on([col("__day")])
            .right_on([col("__start")])
            .how(JoinType::AsOf(Box::new(AsOfOptions {
                strategy: AsofStrategy::Backward,
                tolerance: None,
                tolerance_str: None,
                left_by: Some(vec!["__sid".into()]),
                right_by: Some(vec!["__sid".into()]),
                allow_eq: true,
                check_sortedness: false,
            })))
            .finish();
        let inside = col("__end").is_null().or(col("__day").lt_eq(col("__end")));
        let assigned = joined
            .sort(["__row"], Default::default())
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
        let mut table = rows.clone();
        table.hstack_mut(assigned.columns())?;
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
