//! Stage kind `recode`: text values as people write them (`Solu-Medrol`, `bid`, `MG/KG`) to
//! configured canonical codes, row by row; a spelling no code lists rejects the row.

use std::collections::HashMap;

use anyhow::bail;
use polars::prelude::*;
use serde::Deserialize;

use crate::rejects::RejectsBuilder;
use crate::spec::PipelineSpec;
use crate::stages::convert_units::Ordered;
use crate::stages::{Inputs, Stage, StageCtx, StageOutput, spelling_key, spelling_key_expr};

/// Maps the values of text columns to canonical codes. Each entry of `columns` reads one
/// column and writes its code to `output` (a new column, or the column itself to replace the
/// spelling); every input column is kept, so the value as written stays next to its code.
///
/// ```yaml
/// - name: steroids_coded
///   kind: recode
///   inputs: [steroids_raw]
///   columns:
///     - column: drug
///       output: drug_std
///       rule: drug                  # RULE of the reject for a spelling no code lists
///       codes:                      # code -> other spellings (the code itself always matches)
///         prednisone: []
///         methylprednisolone: [Solu-Medrol, Medrol, methylpred]
///     - {column: frequency, output: frequency_std, rule: frequency,
///        codes: {QD: [daily], BID: [], QOD: [every other day]}}
/// ```
///
/// Rules:
/// * Spellings match ignoring case and all spaces, reading `µ` and `μ` as `u`
///   (`MG/KG` = `mg / kg`, `every other day` = `Every Other Day`); any other variant must be
///   listed. A spelling listed under two codes is a configuration error.
/// * A value no code lists rejects the row with the entry's `rule`, naming the column and the
///   value as written; the reason suggests the closest configured spelling. A missing value
///   (null or blank) rejects the row with the same rule, unless the entry says
///   `optional: true` (then its code is null).
/// * Entries are checked in order; a row gets one reject, for the first entry it fails.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Recode {
    /// The columns to recode, in the order they are checked.
    pub columns: Vec<RecodeColumn>,
}

/// One column to recode.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RecodeColumn {
    /// Text column with the value as written.
    pub column: String,
    /// Column written with the code; `column` itself replaces the spelling by its code.
    pub output: String,
    /// RULE of the rejects of this column (e.g. `drug`, `frequency`, `dose_unit`).
    pub rule: String,
    /// A missing value is kept (null code) instead of rejected.
    #[serde(default)]
    pub optional: bool,
    /// Code -> the other spellings that mean it, in the order written.
    pub codes: Ordered<Vec<String>>,
}

/// One entry checked: spelling keys and the code each stands for.
struct CodeTable {
    keys: Vec<String>,
    codes: Vec<String>,
    /// Every spelling as configured (codes first), for "did you mean".
    spellings: Vec<String>,
}

impl RecodeColumn {
    /// Flattens the codes to spelling keys, collecting every problem.
    fn table(&self, at: &str) -> Result<CodeTable, Vec<String>> {
        let mut problems = Vec::new();
        let mut table = CodeTable {
            keys: Vec::new(),
            codes: Vec::new(),
            spellings: Vec::new(),
        };
        if self.codes.0.is_empty() {
            problems.push(format!("{at}.codes is empty: list at least one code"));
        }
        for (code, synonyms) in &self.codes.0 {
            for spelling in std::iter::once(code).chain(synonyms) {
                let key = spelling_key(spelling);
                if key.is_empty() {
                    problems.push(format!("{at}.codes.{code}: an empty spelling"));
                    continue;
                }
                match table.keys.iter().position(|k| *k == key) {
                    Some(i) if table.codes[i] == *code => {}
                    Some(i) => problems.push(format!(
                        "{at}.codes: `{spelling}` means both `{}` (as `{}`) and `{code}`",
                        table.codes[i], table.spellings[i]
                    )),
                    None => {
                        table.keys.push(key);
                        table.codes.push(code.clone());
                        table.spellings.push(spelling.clone());
                    }
                }
            }
        }
        if self.rule.trim().is_empty() {
            problems.push(format!("{at}.rule is empty"));
        }
        if problems.is_empty() {
            Ok(table)
        } else {
            Err(problems)
        }
    }

    /// The codes, for messages.
    fn code_list(&self) -> String {
        self.codes
            .0
            .iter()
            .map(|(c, _)| c.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// Why a row with this raw value (None: missing) is rejected.
    fn reason(&self, table: &CodeTable, raw: Option<&str>) -> String {
        let column = &self.column;
        let codes = self.code_list();
        match raw {
            None => format!("the {column} is missing; known: {codes}"),
            Some(raw) => match crate::closest(raw, table.spellings.iter().map(String::as_str)) {
                Some(c) => format!(
                    "unknown {column} `{raw}`; did you mean `{c}`? known: {codes} (or their listed spellings)"
                ),
                None => {
                    format!("unknown {column} `{raw}`; known: {codes} (or their listed spellings)")
                }
            },
        }
    }
}

impl Recode {
    /// Every entry's code table, or every problem of the configuration.
    fn tables(&self) -> Result<Vec<CodeTable>, Vec<String>> {
        let mut problems = Vec::new();
        let mut tables = Vec::new();
        if self.columns.is_empty() {
            problems.push("`columns` is empty: list at least one column to recode".into());
        }
        for (i, c) in self.columns.iter().enumerate() {
            let at = format!("columns[{i}] ({})", c.column);
            if self.columns[..i].iter().any(|d| d.output == c.output) {
                problems.push(format!("{at}: output `{}` is written twice", c.output));
            }
            // A later entry must read what was written, not an earlier entry's code.
            if self.columns[..i]
                .iter()
                .any(|d| d.output == c.column && d.output != d.column)
            {
                problems.push(format!(
                    "{at}: `{}` is the output of an earlier entry; recode the column as written",
                    c.column
                ));
            }
            match c.table(&at) {
                Ok(t) => tables.push(t),
                Err(mut p) => problems.append(&mut p),
            }
        }
        if problems.is_empty() {
            Ok(tables)
        } else {
            Err(problems)
        }
    }
}

const FAILED: &str = "__rc_failed";

fn work(i: usize) -> String {
    format!("__rc_code_{i}")
}

impl Stage for Recode {
    /// Row by row.
    fn across_subjects(&self, _subject_columns: &[String]) -> Option<String> {
        None
    }

    fn row_level(&self) -> bool {
        true
    }

    fn check(&self, _spec: &PipelineSpec) -> Vec<String> {
        self.tables().err().unwrap_or_default()
    }

    fn run(&self, ctx: &StageCtx, inputs: &Inputs) -> anyhow::Result<StageOutput> {
        let tables = match self.tables() {
            Ok(t) => t,
            Err(problems) => bail!("stage `{}`: {}", ctx.name, problems.join("; ")),
        };
        let input = inputs.first();
        let schema = input.schema();
        let names: Vec<&str> = schema.iter_names().map(|n| n.as_str()).collect();
        for c in &self.columns {
            match schema.get(&c.column) {
                Some(DataType::String) | Some(DataType::Null) => {}
                Some(dt) => bail!("column `{}` is {dt}, not text", c.column),
                None => bail!(
                    "column `{}` is not in the input (columns: {})",
                    c.column,
                    names.join(", ")
                ),
            }
            if c.output != c.column && schema.contains(&c.output) {
                bail!(
                    "output `{}` is already a column of the input; choose another name",
                    c.output
                );
            }
        }

        // Each entry's code (null when missing or unknown), and the first entry a row fails.
        let mut lf = input
            .clone()
            .lazy()
            .with_column(lit(NULL).cast(DataType::Int64).alias(FAILED));
        for (i, (c, t)) in self.columns.iter().zip(&tables).enumerate() {
            let key = spelling_key_expr(col(c.column.as_str()).cast(DataType::String));
            let codes = Series::new("codes".into(), t.codes.clone());
            let keys = Series::new("keys".into(), t.keys.clone());
            let code = key.clone().replace_strict(
                lit(keys),
                lit(codes),
                Some(lit(NULL)),
                Some(DataType::String),
            );
            let fails = if c.optional {
                key.is_not_null().and(col(work(i)).is_null())
            } else {
                col(work(i)).is_null()
            };
            lf = lf.with_column(code.alias(work(i))).with_column(
                when(col(FAILED).is_null().and(fails))
                    .then(lit(i as i64))
                    .otherwise(col(FAILED))
                    .alias(FAILED),
            );
        }
        let annotated = lf.collect()?;

        let rejects = self.rejects(&annotated, &tables)?;
        let mut outputs: Vec<Expr> = Vec::new();
        for (i, c) in self.columns.iter().enumerate() {
            outputs.push(col(work(i)).alias(c.output.as_str()));
        }
        let mut drop: Vec<String> = (0..self.columns.len()).map(work).collect();
        drop.push(FAILED.to_string());
        let table = annotated
            .lazy()
            .filter(col(FAILED).is_null())
            .with_columns(outputs)
            .drop(cols(drop));
        Ok(StageOutput {
            table,
            rejects: Some(rejects),
            dropped: None,
            files: Vec::new(),
            rows_of_input: None,
        })
    }
}

impl Recode {
    /// One reject per failing row, for the first entry it failed.
    fn rejects(&self, annotated: &DataFrame, tables: &[CodeTable]) -> anyhow::Result<DataFrame> {
        let failing = annotated
            .clone()
            .lazy()
            .filter(col(FAILED).is_not_null())
            .collect()?;
        let mut out = RejectsBuilder::default();
        if failing.height() == 0 {
            return Ok(out.finish()?);
        }
        let text = |name: &str| -> anyhow::Result<StringChunked> {
            Ok(match failing.column(name) {
                Ok(c) => c.cast(&DataType::String)?.str()?.clone(),
                Err(_) => StringChunked::full_null(name.into(), failing.height()),
            })
        };
        let files = text("SRCFILE")?;
        let sites = text("SITE")?;
        let lines = failing.column("SRCLINE")?.cast(&DataType::Int64)?;
        let lines = lines.i64()?;
        let which = failing.column(FAILED)?.i64()?;
        let raws: Vec<StringChunked> = self
            .columns
            .iter()
            .map(|c| text(&c.column))
            .collect::<anyhow::Result<_>>()?;
        // Reasons per distinct (entry, value): few, however many rows repeat them.
        let mut reasons: HashMap<(usize, Option<String>), String> = HashMap::new();
        for row in 0..failing.height() {
            let Some(i) = which.get(row).and_then(|i| usize::try_from(i).ok()) else {
                continue;
            };
            let (c, t) = (&self.columns[i], &tables[i]);
            let raw = raws[i]
                .get(row)
                .map(str::trim)
                .filter(|r| !r.is_empty())
                .map(str::to_string);
            let reason = reasons
                .entry((i, raw.clone()))
                .or_insert_with(|| c.reason(t, raw.as_deref()))
                .clone();
            out.push(
                files.get(row).unwrap_or(""),
                lines.get(row).unwrap_or(0),
                sites.get(row).unwrap_or(""),
                &c.column,
                raws[i].get(row).unwrap_or(""),
                &c.rule,
                reason,
            );
        }
        Ok(out.finish()?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stages::tests_support::{ctx_for, ints, strings};

    const YAML: &str = "columns:
  - column: drug
    output: drug_std
    rule: drug
    codes:
      prednisone: []
      methylprednisolone: [Solu-Medrol, methylpred]
  - column: frequency
    output: frequency
    rule: frequency
    codes: {QD: [daily], QOD: [every other day]}
";

    fn orders(drug: &[Option<&str>], frequency: &[Option<&str>]) -> DataFrame {
        let n = drug.len() as i64;
        df!(
            "SRCFILE" => vec!["nih/steroids.csv"; drug.len()],
            "SRCLINE" => (2..2 + n).collect::<Vec<i64>>(),
            "SITE" => vec!["nih"; drug.len()],
            "drug" => drug,
            "frequency" => frequency,
        )
        .unwrap()
    }

    fn run(stage: &Recode, df: DataFrame) -> (DataFrame, DataFrame) {
        let inputs = Inputs {
            tables: vec![("orders".into(), df)],
        };
        let out = ctx_for(|ctx| stage.run(ctx, &inputs)).unwrap();
        (out.table.collect().unwrap(), out.rejects.unwrap())
    }

    #[test]
    fn spellings_map_to_codes_ignoring_case_and_spaces() {
        let stage: Recode = serde_saphyr::from_str(YAML).unwrap();
        assert!(stage.check(&ctx_for(|c| c.spec.clone())).is_empty());
        let (kept, rejects) = run(
            &stage,
            orders(
                &[
                    Some("PREDNISONE"),
                    Some(" solu-medrol "),
                    Some("Methyl Pred"),
                ],
                &[Some("qd"), Some("Every Other Day"), Some("DAILY")],
            ),
        );
        assert_eq!(rejects.height(), 0);
        assert_eq!(
            strings(&kept, "drug_std"),
            ["prednisone", "methylprednisolone", "methylprednisolone"]
        );
        // The spelling stays next to its code; `output: frequency` replaces the spelling.
        assert_eq!(
            strings(&kept, "drug"),
            ["PREDNISONE", " solu-medrol ", "Methyl Pred"]
        );
        assert_eq!(strings(&kept, "frequency"), ["QD", "QOD", "QD"]);
        assert_eq!(
            kept.get_column_names()
                .iter()
                .map(|n| n.as_str())
                .collect::<Vec<_>>(),
            [
                "SRCFILE",
                "SRCLINE",
                "SITE",
                "drug",
                "frequency",
                "drug_std"
            ]
        );
    }

    #[test]
    fn unknown_or_missing_spelling_rejects_with_the_first_failing_entry() {
        let stage: Recode = serde_saphyr::from_str(YAML).unwrap();
        let (kept, rejects) = run(
            &stage,
            orders(
                &[
                    Some("Predisone"),
                    Some("prednisone"),
                    None,
                    Some("aspirin-x"),
                ],
                &[Some("prn"), Some("prn"), Some("qd"), Some("qd")],
            ),
        );
        assert_eq!(kept.height(), 0);
        let rejects = rejects.sort(["SRCLINE"], Default::default()).unwrap();
        assert_eq!(
            ints(&rejects, "SRCLINE"),
            [Some(2), Some(3), Some(4), Some(5)]
        );
        assert_eq!(
            strings(&rejects, "RULE"),
            ["drug", "frequency", "drug", "drug"]
        );
        assert_eq!(
            strings(&rejects, "COLUMN"),
            ["drug", "frequency", "drug", "drug"]
        );
        assert_eq!(
            strings(&rejects, "RAWVALUE"),
            ["Predisone", "prn", "", "aspirin-x"]
        );
        let reasons = strings(&rejects, "REASON");
        assert_eq!(
            reasons[0],
            "unknown drug `Predisone`; did you mean `prednisone`? known: prednisone, \
             methylprednisolone (or their listed spellings)"
        );
        assert_eq!(
            reasons[2],
            "the drug is missing; known: prednisone, methylprednisolone"
        );
    }

    #[test]
    fn optional_column_keeps_a_missing_value_with_a_null_code() {
        let yaml = "columns:\n  - {column: frequency, output: f, rule: frequency, optional: true, codes: {QD: []}}\n";
        let stage: Recode = serde_saphyr::from_str(yaml).unwrap();
        let (kept, rejects) = run(
            &stage,
            orders(&[None, None, None], &[None, Some("  "), Some("bid")]),
        );
        assert_eq!(strings(&kept, "f"), ["null", "null"]);
        assert_eq!(strings(&rejects, "RULE"), ["frequency"]);
    }

    #[test]
    fn a_spelling_of_two_codes_is_a_configuration_error() {
        let yaml = "columns:\n  - {column: drug, output: d, rule: drug, codes: {hydrocortisone: [cortisol], cortisone: [Cortisol]}}\n";
        let stage: Recode = serde_saphyr::from_str(yaml).unwrap();
        let problems = stage.check(&ctx_for(|c| c.spec.clone()));
        assert_eq!(
            problems,
            [
                "columns[0] (drug).codes: `Cortisol` means both `hydrocortisone` (as `cortisol`) and `cortisone`"
            ]
        );
    }

    #[test]
    fn unknown_keys_and_existing_outputs_are_refused() {
        let bad = serde_saphyr::from_str::<Recode>(
            "columns:\n  - {column: d, output: e, rule: r, codes: {}, colour: red}\n",
        );
        assert!(bad.is_err());
        let yaml = "columns:\n  - {column: drug, output: frequency, rule: drug, codes: {x: []}}\n";
        let stage: Recode = serde_saphyr::from_str(yaml).unwrap();
        let inputs = Inputs {
            tables: vec![("o".into(), orders(&[Some("x")], &[Some("y")]))],
        };
        let Err(err) = ctx_for(|ctx| stage.run(ctx, &inputs)) else {
            panic!("an output over an input column must fail")
        };
        assert!(err.to_string().contains("already a column"), "{err}");
    }
}
