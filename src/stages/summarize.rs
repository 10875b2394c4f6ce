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

/// The statistics of a summary, in column order.
const STATISTICS: [&str; 8] = ["N", "MEAN", "SD", "MEDIAN", "Q1", "Q3", "MIN", "MAX"];

fn default_by() -> Vec<String> {
    vec!["USUBJID".into(), "APHASEN".into(), "APHASE".into()]
}

impl Summarize {
    /// The statistics of `v`, named `{prefix}N`, `{prefix}MEAN`, ... (see [`STATISTICS`]).
    fn statistics(v: Expr, prefix: &str) -> Vec<Expr> {
        let v = || v.clone();
        vec![
            v().count()
                .cast(DataType::Int64)
                .alias(format!("{prefix}N")),
            v().mean().alias(format!("{prefix}MEAN")),
            v().std(1).alias(format!("{prefix}SD")),
            v().median().alias(format!("{prefix}MEDIAN")),
            v().quantile(lit(0.25), QuantileMethod::Linear)
                .alias(format!("{prefix}Q1")),
            v().quantile(lit(0.75), QuantileMethod::Linear)
                .alias(format!("{prefix}Q3")),
            v().min().alias(format!("{prefix}MIN")),
            v().max().alias(format!("{prefix}MAX")),
        ]
    }

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
            .agg(Self::statistics(v(), "")))
    }

    /// One summary per parameter: the long shape groups by its parameter column; the wide
    /// shape groups once for all its columns (no long copy of the table is built).
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
        if !self.values.is_empty() {
            // Wide shape: one grouping for every value column. Each statistic skips missing
            // values (NaN counts as missing), and a group without any value of a column gives
            // no row for it, as if its rows had been left out before grouping.
            let mut sel = by.clone();
            for (i, v) in self.values.iter().enumerate() {
                let x = col(v.as_str()).cast(DataType::Float64);
                sel.push(
                    when(x.clone().is_nan())
                        .then(lit(NULL).cast(DataType::Float64))
                        .otherwise(x)
                        .alias(format!("__v{i}")),
                );
            }
            let mut aggs = Vec::new();
            for i in 0..self.values.len() {
                aggs.extend(Self::statistics(col(format!("__v{i}")), &format!("__{i}")));
            }
            let grouped = table
                .clone()
                .lazy()
                .select(sel)
                .filter(all_horizontal(
                    self.by
                        .iter()
                        .map(|b| col(b.as_str()).is_not_null())
                        .collect::<Vec<_>>(),
                )?)
                .group_by(by.clone())
                .agg(aggs)
                .collect()?;
            for (i, v) in self.values.iter().enumerate() {
                let mut out = by.clone();
                out.push(lit(v.clone()).alias("PARAMCD"));
                for stat in STATISTICS {
                    out.push(col(format!("__{i}{stat}")).alias(stat));
                }
                parts.push(
                    grouped
                        .clone()
                        .lazy()
                        .filter(col(format!("__{i}N")).gt(lit(0)))
                        .select(out),
                );
            }
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
        let stage: Summarize = serde_saphyr::from_str("values: [DIARYSCORE]").unwrap();
        assert!(stage.check(&ctx_for(|c| c.spec.clone())).is_empty());
        let inputs = Inputs {
            tables: vec![("diary".into(), t)],
        };
        let out = ctx_for(|c| stage.run(c, &inputs))
            .unwrap()
            .table
            .collect()
            .unwrap();
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
        let stage: Summarize = serde_saphyr::from_str("values: [A, B]").unwrap();
        let inputs = Inputs {
            tables: vec![("daily".into(), t)],
        };
        let out = ctx_for(|c| stage.run(c, &inputs))
            .unwrap()
            .table
            .collect()
            .unwrap();
        assert_eq!(strings(&out, "APHASEN"), ["1", "2"]);
        assert_eq!(strings(&out, "PARAMCD"), ["A", "B"]);
        assert_eq!(strings(&out, "N"), ["2", "1"]);
        assert_eq!(strings(&out, "MEAN"), ["2.0", "5.0"]);
        assert_eq!(strings(&out, "MEDIAN"), ["2.0", "5.0"]);
        assert_eq!(strings(&out, "Q1"), ["1.5", "5.0"]);
    }
}
