//! Stage kind `diary_score`: the daily symptom diary score (DOMAIN.md 4.4).
//! Owns the minimum-items rule; every diary day is kept, scored or flagged.

use anyhow::bail;
use polars::lazy::dsl::sum_horizontal;
use polars::prelude::*;
use serde::Deserialize;

use crate::spec::PipelineSpec;
use crate::stages::{Inputs, Stage, StageCtx, StageOutput, written_zeros};

/// Scores each diary day: the mean of its non-missing item scores, when at least `min_items`
/// items are present; otherwise the score is null and the day is flagged, never dropped.
///
/// ```yaml
/// - name: diary_scored
///   kind: diary_score
///   inputs: [diary]
///   items: [fever, rash, msk_pain, headache, fatigue, organ]
///   min_items: 4
/// ```
///
/// Adds `DIARYSCORE` (Float64), `NITEMS` (Int64, items present) and `DSFLAG` (text such as
/// "fewer than 4 of 6 items", null when scored); every input column is kept. The item range
/// (0-4) is checked where the diary is ingested, not here.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DiaryScore {
    /// Item columns (integer or float scores).
    pub items: Vec<String>,
    /// Fewest present items for a day to be scored.
    #[serde(default = "default_min_items")]
    pub min_items: usize,
}

fn default_min_items() -> usize {
    4
}

const OUTPUTS: [&str; 3] = ["DIARYSCORE", "NITEMS", "DSFLAG"];

impl Stage for DiaryScore {
    /// Row by row.
    fn across_subjects(&self, _subject_columns: &[String]) -> Option<String> {
        None
    }

    fn row_level(&self) -> bool {
        true
    }

    fn check(&self, _spec: &PipelineSpec) -> Vec<String> {
        let mut problems = Vec::new();
        if self.items.is_empty() {
            problems.push("`items` is empty".to_string());
        }
        for (i, item) in self.items.iter().enumerate() {
            if self.items[..i].contains(item) {
                problems.push(format!("item `{item}` is listed twice"));
            }
        }
        if self.min_items == 0 || self.min_items > self.items.len() {
            problems.push(format!(
                "`min_items` is {}; it must be between 1 and the number of items ({})",
                self.min_items,
                self.items.len()
            ));
        }
        problems
    }

    fn run(&self, ctx: &StageCtx, inputs: &Inputs) -> anyhow::Result<StageOutput> {
        let problems = self.check(ctx.spec);
        if !problems.is_empty() {
            bail!("stage `{}`: {}", ctx.name, problems.join("; "));
        }
        let input = inputs.first();
        let schema = input.schema();
        for item in &self.items {
            match schema.get(item) {
                Some(dt) if dt.is_primitive_numeric() || dt.is_null() => {}
                Some(dt) => bail!(
                    "stage `{}`: item column `{item}` is {dt}, not a number",
                    ctx.name
                ),
                None => bail!(
                    "stage `{}`: item column `{item}` is not in the input",
                    ctx.name
                ),
            }
        }
        for name in OUTPUTS {
            if schema.contains(name) {
                bail!(
                    "stage `{}`: the input already has a column `{name}`",
                    ctx.name
                );
            }
        }
        let flag = format!(
            "fewer than {} of {} items",
            self.min_items,
            self.items.len()
        );
        if let Some(table) = self.integer_scores(input, &flag)? {
            return Ok(StageOutput::table(table.lazy()));
        }
        let items: Vec<Expr> = self
            .items
            .iter()
            .map(|i| col(i.as_str()).cast(DataType::Float64))
            .collect();
        let present: Vec<Expr> = items
            .iter()
            .map(|e| e.clone().is_not_null().cast(DataType::Int64))
            .collect();
        let count = sum_horizontal(present, true)?;
        let sum = sum_horizontal(items, true)?;
        let enough = col("NITEMS").gt_eq(lit(self.min_items as i64));
        let table = input
            .clone()
            .lazy()
            .with_column(count.alias("NITEMS"))
            .with_columns([
                when(enough.clone())
                    .then(sum / col("NITEMS").cast(DataType::Float64))
                    .otherwise(lit(NULL).cast(DataType::Float64))
                    .alias("DIARYSCORE"),
                when(enough)
                    .then(lit(NULL).cast(DataType::String))
                    .otherwise(lit(flag))
                    .alias("DSFLAG"),
            ])
            .select(
                schema
                    .iter_names()
                    .map(|n| col(n.as_str()))
                    .chain(OUTPUTS.map(col))
                    .collect::<Vec<_>>(),
            );
        Ok(StageOutput::table(table))
    }
}

impl DiaryScore {
    /// The input with the scores, when every item is a 32-bit integer column (as the ingest
    /// makes item scores): each item is read once, adding to each row's sum and count, instead
    /// of casting every item to a new column of floats and summing the columns. The same
    /// numbers: the sum of whole numbers this small is exact in any order, and the score is
    /// that sum over the count, as the expressions divide it. `None` for other items.
    fn integer_scores(&self, input: &DataFrame, flag: &str) -> PolarsResult<Option<DataFrame>> {
        let mut items = Vec::with_capacity(self.items.len());
        for item in &self.items {
            let column = input.column(item)?;
            if column.dtype() != &DataType::Int32 {
                return Ok(None);
            }
            items.push(column);
        }
        let n = input.height();
        // Added into item by item: read, then written.
        let (mut sum, mut count): (Vec<i64>, Vec<i64>) = (written_zeros(n), written_zeros(n));
        for column in items {
            let mut at = 0;
            for a in column.as_materialized_series().i32()?.downcast_iter() {
                let (sum, count) = (&mut sum[at..at + a.len()], &mut count[at..at + a.len()]);
                match polars_arrow::array::Array::validity(a) {
                    None => {
                        for ((s, c), &v) in
                            sum.iter_mut().zip(count.iter_mut()).zip(a.values().iter())
                        {
                            *s += i64::from(v);
                            *c += 1;
                        }
                    }
                    Some(valid) => {
                        let values = a.values().iter().zip(valid.iter());
                        for ((s, c), (&v, ok)) in sum.iter_mut().zip(count.iter_mut()).zip(values) {
                            *s += i64::from(v) * i64::from(ok);
                            *c += i64::from(ok);
                        }
                    }
                }
                at += a.len();
            }
        }
        let min = self.min_items as i64;
        let score: Float64Chunked = sum
            .iter()
            .zip(&count)
            .map(|(&s, &c)| (c >= min).then(|| s as f64 / c as f64))
            .collect();
        let flags: StringChunked = count.iter().map(|&c| (c < min).then_some(flag)).collect();
        let mut table = input.clone();
        for column in [
            score.with_name("DIARYSCORE".into()).into_column(),
            Int64Chunked::from_vec("NITEMS".into(), count).into_column(),
            flags.with_name("DSFLAG".into()).into_column(),
        ] {
            table.with_column(column)?;
        }
        Ok(Some(table))
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use chrono::NaiveDate;

    use super::*;

    fn score(input: DataFrame) -> DataFrame {
        let yaml = "pipeline: t\nstages:\n  - name: d\n    kind: diary_score\n    inputs: [diary]\n    items: [fever, rash, msk_pain, headache, fatigue, organ]\n";
        let spec = PipelineSpec::parse(Path::new("p.yaml"), yaml.into()).unwrap();
        let stage: DiaryScore = spec.stage_params(0).unwrap();
        assert_eq!(stage.min_items, 4);
        assert!(stage.check(&spec).is_empty());
        let ctx = StageCtx {
            name: "d",
            spec: &spec,
            run_date: NaiveDate::from_ymd_opt(2020, 1, 1).unwrap(),
            data_dir: Path::new("."),
            base_dir: Path::new("."),
            sources: &[],
        };
        let inputs = Inputs {
            tables: vec![("diary".into(), input)],
        };
        stage.run(&ctx, &inputs).unwrap().table.collect().unwrap()
    }

    #[test]
    fn days_with_fewer_than_four_items_are_kept_unscored_and_flagged() {
        let input = df!(
            "SRCLINE" => [2i64, 3, 4, 5],
            "fever" =>    [Some(1i64), Some(1), Some(1), None],
            "rash" =>     [Some(2i64), None,    Some(2), None],
            "msk_pain" => [Some(3i64), Some(2), None,    None],
            "headache" => [Some(4i64), None,    None,    None],
            "fatigue" =>  [Some(0i64), Some(3), Some(0), None],
            "organ" =>    [Some(2i64), Some(0), None,    None],
        )
        .unwrap();
        let out = score(input);
        assert_eq!(out.height(), 4);
        // 6/6: (1+2+3+4+0+2)/6 = 2; 4/6: (1+2+3+0)/4 = 1.5; 3/6 and 0/6: null.
        let scores: Vec<Option<f64>> = out
            .column("DIARYSCORE")
            .unwrap()
            .f64()
            .unwrap()
            .iter()
            .collect();
        assert_eq!(scores, [Some(2.0), Some(1.5), None, None]);
        let n: Vec<Option<i64>> = out
            .column("NITEMS")
            .unwrap()
            .i64()
            .unwrap()
            .iter()
            .collect();
        assert_eq!(n, [Some(6), Some(4), Some(3), Some(0)]);
        let flags: Vec<Option<&str>> = out
            .column("DSFLAG")
            .unwrap()
            .str()
            .unwrap()
            .iter()
            .collect();
        let few = Some("fewer than 4 of 6 items");
        assert_eq!(flags, [None, None, few, few]);
        let lines: Vec<Option<i64>> = out
            .column("SRCLINE")
            .unwrap()
            .i64()
            .unwrap()
            .iter()
            .collect();
        assert_eq!(lines, [Some(2), Some(3), Some(4), Some(5)]);
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(64))]
        /// Items of 32-bit integers (read in one pass) score as the same items of 64-bit
        /// integers (the expressions) do: the same scores to the bit, counts and flags, the
        /// table in several chunks, with missing items.
        #[test]
        fn integer_items_score_as_the_expressions_do(
            pieces in proptest::collection::vec(
                proptest::collection::vec(proptest::collection::vec(proptest::option::of(-3..9i32), 6), 0..12),
                1..4,
            ),
        ) {
            let names = ["fever", "rash", "msk_pain", "headache", "fatigue", "organ"];
            let mut narrow = DataFrame::empty();
            for rows in &pieces {
                let columns: Vec<Column> = names
                    .iter()
                    .enumerate()
                    .map(|(j, name)| Column::new((*name).into(), rows.iter().map(|r| r[j]).collect::<Vec<_>>()))
                    .collect();
                let piece = DataFrame::new(rows.len(), columns).unwrap();
                if narrow.width() == 0 {
                    narrow = piece;
                } else {
                    narrow.vstack_mut(&piece).unwrap();
                }
            }
            let wide = narrow
                .clone()
                .lazy()
                .with_columns(names.map(|n| col(n).cast(DataType::Int64)))
                .collect()
                .unwrap();
            let (fast, exprs) = (score(narrow), score(wide));
            for name in ["NITEMS", "DSFLAG"] {
                proptest::prop_assert!(fast.column(name).unwrap().equals_missing(exprs.column(name).unwrap()));
            }
            let bits = |df: &DataFrame| -> Vec<Option<u64>> {
                df.column("DIARYSCORE").unwrap().f64().unwrap().iter().map(|v| v.map(f64::to_bits)).collect()
            };
            proptest::prop_assert_eq!(bits(&fast), bits(&exprs));
            let names_of = |df: &DataFrame| df.get_column_names().iter().map(|n| n.to_string()).collect::<Vec<_>>();
            proptest::prop_assert_eq!(names_of(&fast), names_of(&exprs));
        }
    }

    #[test]
    fn check_rejects_impossible_minimum() {
        let yaml = "pipeline: t\nstages:\n  - name: d\n    kind: diary_score\n    items: [a, a]\n    min_items: 3\n";
        let spec = PipelineSpec::parse(Path::new("p.yaml"), yaml.into()).unwrap();
        let stage: DiaryScore = spec.stage_params(0).unwrap();
        assert_eq!(stage.check(&spec).len(), 2, "{:?}", stage.check(&spec));
    }
}
