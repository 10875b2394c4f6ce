//! `summarize`: per subject, phase and parameter, the n, mean, sd, median, quartiles, min and
//! max of an analysis value: the input of a repeated-measures model with phase as a factor.

use polars::prelude::*;
use serde::Deserialize;

use crate::spec::PipelineSpec;
use crate::stages::{Inputs, Stage, StageCtx, StageOutput};

/// Parameters of a `summarize` stage.
///
/// Long tables give `value:` and `parameter:` (`AVAL`, `PARAMCD`); wide tables (one column
/// per measure, like the daily diary and steroid tables) give `values:` and each column becomes
/// a PARAMCD. Missing values are left out (N counts the non-missing); rows without a phase are
/// left out. SD is the sample SD (n - 1); quartiles interpolate linearly (R type 7).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Summarize {
    /// Grouping columns (default USUBJID, APHASEN, APHASE).
    #[serde(default = "default_by")]
    pub by: Vec<String>,
    /// Long shape: the value column.
    #[serde(default)]
    pub value: Option<String>,
    /// Long shape: the parameter column.
    #[serde(default)]
    pub parameter: Option<String>,
    /// Wide shape: value columns, each summarised as its own parameter.
    #[serde(default)]
    pub values: Vec<String>,
}

fn default_by() -> Vec<String> {
    vec!["USUBJID".into(), "APHASEN".into(), "APHASE".into()]
}

impl Summarize {
    /// The statistics of `__v` per group of `keys`.
    fn stats(rows: LazyFrame, keys: Vec<Expr>, by: &[String]) -> PolarsResult<LazyFrame> {
        let v = || col("__v");
        Ok(rows
            .filter(v().is_not_null().and(v().is_not_nan()))
            .filter(all_horizontal(
                by.iter()
                    .map(|b| col(b.as_str()).is_not_null())
                    .collect::<Vec<_>>(),
            )?)
            .group_by(keys)
            .agg([
                v().count().cast(DataType::Int64).alias("N"),
                v().mean().alias("MEAN"),
                v().std(1).alias("SD"),
                v().median().alias("MEDIAN"),
                v().quantile(lit(0.25), QuantileMethod::Linear).alias("Q1"),
                v().quantile(lit(0.75), QuantileMethod::Linear).alias("Q3"),
                v().min().alias("MIN"),
                v().max().alias("MAX"),
            ]))
    }

    /// One summary per parameter: the long shape groups by its parameter column; each column
    /// of the wide shape is grouped on its own (no long copy of the table is built).
    fn summaries(&self, table: &DataFrame) -> PolarsResult<Vec<LazyFrame>> {
        let mut parts = Vec::new();
        let by: Vec<Expr> = self.by.iter().map(|b| col(b.as_str())).collect();
        if let (Some(v), Some(p)) = (&self.value, &self.parameter) {
            let mut sel = by.clone();
            sel.push(col(p.as_str()).cast(DataType::String).alias("PARAMCD"));
            sel.push(col(v.as_str()).cast(DataType::Float64).alias("__v"));
            let mut keys = by.clone();
            keys.push(col("PARAMCD"));
            parts.push(Self::stats(
                table.clone().lazy().select(sel),
                keys,
                &self.by,
            )?);
        }
        for v in &self.values {
            let mut sel = by.clone();
            sel.push(col(v.as_str()).cast(DataType::Float64).alias("__v"));
            let mut out = by.clone();
            out.push(lit(v.clone()).alias("PARAMCD"));
            out.push(all().exclude_cols(self.by.clone()).as_expr());
            parts.push(
                Self::stats(table.clone().lazy().select(sel), by.clone(), &self.by)?.select(out),
            );
        }
        Ok(parts)
    }
}

impl Stage for Summarize {
    fn check(&self, _spec: &PipelineSpec) -> Vec<String> {
        let long = self.value.is_some() || self.parameter.is_some();
        if long && (self.value.is_none() || self.parameter.is_none()) {
            return vec!["the long shape needs both `value` and `parameter`".into()];
        }
        if !long && self.values.is_empty() {
            return vec![
                "give `value` and `parameter` (long table) or `values` (wide table)".into(),
            ];
        }
        Vec::new()
    }

    fn run(&self, _ctx: &StageCtx, inputs: &Inputs) -> anyhow::Result<StageOutput> {
        let table = inputs.first();
        for c in self
            .by
            .iter()
            .chain(self.values.iter())
            .chain(self.value.iter())
            .chain(self.parameter.iter())
        {
            if table.column(c).is_err() {
                anyhow::bail!("the input has no column `{c}`");
            }
        }
        let mut sort: Vec<String> = self.by.clone();
        sort.push("PARAMCD".into());
        let out =
            concat(self.summaries(table)?, UnionArgs::default())?.sort(sort, Default::default());
        Ok(StageOutput::table(out))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stages::tests_support::{ctx_for, strings};

    /// The summary of `table` by a stage of parameters `yaml` (checked first).
    fn summarize(yaml: &str, table: DataFrame) -> DataFrame {
        let stage: Summarize = serde_saphyr::from_str(yaml).unwrap();
        assert!(stage.check(&ctx_for(|c| c.spec.clone())).is_empty());
        let inputs = Inputs {
            tables: vec![("daily".into(), table)],
        };
        ctx_for(|c| stage.run(c, &inputs))
            .unwrap()
            .table
            .collect()
            .unwrap()
    }

    #[test]
    fn statistics_per_subject_phase_and_parameter() {
        // Phase 1 diary scores 1, 2, 3, 4 (and a missing day): n 4, mean 2.5,
        // sd sqrt(((1.5^2)*2 + (0.5^2)*2) / 3) = sqrt(5/3) = 1.290994, median 2.5,
        // q1 = 1 + 0.75*(2-1) = 1.75, q3 = 3.25. Rows without a phase are left out.
        let t = df!(
            "USUBJID" => ["C1"; 6],
            "APHASEN" => [Some(1i64), Some(1), Some(1), Some(1), Some(1), None],
            "APHASE" => [Some("pre"), Some("pre"), Some("pre"), Some("pre"), Some("pre"), None],
            "DIARYSCORE" => [Some(1.0), Some(2.0), Some(3.0), Some(4.0), None, Some(9.0)],
        )
        .unwrap();
        let out = summarize("values: [DIARYSCORE]", t);
        assert_eq!(out.height(), 1);
        assert_eq!(strings(&out, "N"), ["4"]);
        assert_eq!(strings(&out, "MEAN"), ["2.5"]);
        let sd: f64 = strings(&out, "SD")[0].parse().unwrap();
        assert!((sd - (5.0f64 / 3.0).sqrt()).abs() < 1e-12);
        assert_eq!(strings(&out, "Q1"), ["1.75"]);
        assert_eq!(strings(&out, "Q3"), ["3.25"]);
        assert_eq!(
            (strings(&out, "MIN"), strings(&out, "MAX")),
            (vec!["1.0".to_string()], vec!["4.0".to_string()])
        );
    }

    #[test]
    fn wide_columns_are_summarised_apart_and_a_column_without_values_gives_no_row() {
        // Phase 1: A = 1, NaN, 3 (NaN is missing: n 2, mean 2); B all missing: no B row.
        // Phase 2: A missing, B = 5: only a B row.
        let t = df!(
            "USUBJID" => ["C1"; 4],
            "APHASEN" => [1i64, 1, 1, 2],
            "APHASE" => ["pre", "pre", "pre", "esc"],
            "A" => [Some(1.0), Some(f64::NAN), Some(3.0), None],
            "B" => [None, None, None, Some(5.0)],
        )
        .unwrap();
        let out = summarize("values: [A, B]", t);
        assert_eq!(strings(&out, "APHASEN"), ["1", "2"]);
        assert_eq!(strings(&out, "PARAMCD"), ["A", "B"]);
        assert_eq!(strings(&out, "N"), ["2", "1"]);
        assert_eq!(strings(&out, "MEAN"), ["2.0", "5.0"]);
        assert_eq!(strings(&out, "MEDIAN"), ["2.0", "5.0"]);
        assert_eq!(strings(&out, "Q1"), ["1.5", "5.0"]);
    }
}
