//! `baseline`: CDISC baseline and change for a BDS table: ABLFL on the last non-null value on
//! or before first dose, BASE and CHG on later rows, and the study day ADY (no day 0).

use polars::prelude::*;
use serde::Deserialize;

use crate::stages::{Arity, Inputs, Stage, StageCtx, StageOutput};

/// Parameters of a `baseline` stage. Inputs: the BDS table, then the anchors table
/// (USUBJID and the reference date column).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Baseline {
    /// Input holding the anchors (one row per USUBJID).
    pub anchors: String,
    /// Anchor column of the reference date (first dose).
    #[serde(default = "default_reference")]
    pub reference: String,
    /// Columns that tell parameters apart (baseline is per subject and parameter).
    #[serde(default = "default_by")]
    pub by: Vec<String>,
    /// Analysis value column.
    #[serde(default = "default_value")]
    pub value: String,
}

fn default_reference() -> String {
    "TRTSDT".into()
}
fn default_by() -> Vec<String> {
    vec!["PARAMCD".into()]
}
fn default_value() -> String {
    "AVAL".into()
}

impl Stage for Baseline {
    /// Within each subject's rows of a parameter.
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
        let (name, rows) = inputs
            .tables
            .iter()
            .find(|(n, _)| n != &self.anchors)
            .ok_or_else(|| {
                anyhow::anyhow!("baseline needs a BDS table besides `{}`", self.anchors)
            })?;
        let anchors = inputs.get(&self.anchors).ok_or_else(|| {
            anyhow::anyhow!("`{}` is not one of this stage's inputs", self.anchors)
        })?;
        for c in ["USUBJID", "ADT", self.value.as_str()]
            .into_iter()
            .chain(self.by.iter().map(String::as_str))
        {
            if rows.column(c).is_err() {
                anyhow::bail!("`{name}` has no column `{c}`");
            }
        }
        let columns: Vec<Expr> = rows
            .get_column_names()
            .iter()
            .map(|c| col(c.as_str()))
            .collect();
        let mut keys: Vec<Expr> = vec![col("USUBJID")];
        keys.extend(self.by.iter().map(|b| col(b.as_str())));
        let refdt = anchors.clone().lazy().select([
            col("USUBJID"),
            col(self.reference.as_str())
                .cast(DataType::Date)
                .alias("__ref"),
        ]);
        let value = || col(self.value.as_str());
        let with_ref = rows.clone().lazy().with_row_index("__row", None).join(
            refdt,
            [col("USUBJID")],
            [col("USUBJID")],
            JoinArgs::new(JoinType::Left),
        );
        // The baseline row: the last non-null value on or before the reference date; ties on
        // one date are broken by the value itself, so the choice does not depend on row order.
        let base = with_ref
            .clone()
            .filter(col("ADT").lt_eq(col("__ref")).and(value().is_not_null()))
            .sort_by_exprs(
                [col("ADT"), value(), col("__row")],
                SortMultipleOptions::default(),
            )
            .group_by(keys.clone())
            .agg([
                col("__row").last().alias("__baserow"),
                value().last().alias("BASE"),
            ]);
        let days = (col("ADT").cast(DataType::Int32) - col("__ref").cast(DataType::Int32))
            .cast(DataType::Int64);
        let after = col("ADT").gt(col("__ref"));
        let mut out = columns;
        out.extend([
            when(col("ADT").gt_eq(col("__ref")))
                .then(days.clone() + lit(1i64))
                .otherwise(days)
                .alias("ADY"),
            when(col("__row").eq(col("__baserow")))
                .then(lit("Y"))
                .otherwise(lit(NULL).cast(DataType::String))
                .alias("ABLFL"),
            when(after.clone())
                .then(col("BASE"))
                .otherwise(lit(NULL).cast(DataType::Float64))
                .alias("BASE"),
            when(after)
                .then(value().cast(DataType::Float64) - col("BASE"))
                .otherwise(lit(NULL).cast(DataType::Float64))
                .alias("CHG"),
        ]);
        let table = with_ref
            .join(base, keys.clone(), keys, JoinArgs::new(JoinType::Left))
            .sort(["__row"], Default::default())
            .select(out);
        Ok(StageOutput::table(table))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stages::tests_support::{ctx_for, dates, strings};

    #[test]
    fn baseline_change_and_study_day() {
        // First dose 2014-03-10. CRP: 2014-03-01 = 8, 2014-03-10 = null (not baseline),
        // 2014-03-09 = 6 (baseline: last non-null on or before), 2014-03-11 = 2 (CHG -4).
        // HGB has no pre-dose value: no baseline, BASE null.
        let rows = DataFrame::new_infer_height(vec![
            Column::new("USUBJID".into(), ["C1", "C1", "C1", "C1", "C1"]),
            Column::new("PARAMCD".into(), ["CRP", "CRP", "CRP", "CRP", "HGB"]),
            dates(&[
                "2014-03-01",
                "2014-03-10",
                "2014-03-09",
                "2014-03-11",
                "2014-03-11",
            ])
            .with_name("ADT".into())
            .into(),
            Column::new(
                "AVAL".into(),
                [Some(8.0), None, Some(6.0), Some(2.0), Some(11.0)],
            ),
        ])
        .unwrap();
        let anchors = DataFrame::new_infer_height(vec![
            Column::new("USUBJID".into(), ["C1"]),
            dates(&["2014-03-10"]).with_name("TRTSDT".into()).into(),
        ])
        .unwrap();
        let stage: Baseline = serde_saphyr::from_str("anchors: anchors").unwrap();
        let inputs = Inputs {
            tables: vec![("crp".into(), rows), ("anchors".into(), anchors)],
        };
        let out = ctx_for(|c| stage.run(c, &inputs))
            .unwrap()
            .table
            .collect()
            .unwrap();
        // Day 2014-03-01 is 9 days before: ADY -9; 03-09: -1; 03-10: 1; 03-11: 2. No day 0.
        assert_eq!(strings(&out, "ADY"), ["-9", "1", "-1", "2", "2"]);
        assert_eq!(
            strings(&out, "ABLFL"),
            ["null", "null", "Y", "null", "null"]
        );
        assert_eq!(
            strings(&out, "BASE"),
            ["null", "null", "null", "6.0", "null"]
        );
        assert_eq!(
            strings(&out, "CHG"),
            ["null", "null", "null", "-4.0", "null"]
        );
    }
}
