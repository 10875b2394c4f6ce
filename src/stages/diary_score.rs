//! Stage kind `diary_score`: the daily symptom diary score (DOMAIN.md 4.4).
//! Owns the minimum-items rule; every diary day is kept, scored or flagged.

use anyhow::bail;
use polars::prelude::*;
use serde::Deserialize;

use crate::spec::PipelineSpec;
use crate::stages::{Inputs, Stage, StageCtx, StageOutput};

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
        let flag = format!(
            "fewer than {} of {} items",
            self.min_items,
            self.items.len()
        );
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
