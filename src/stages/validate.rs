//! `validate`: table-level rules over a typed table (required, range, allowed values, pattern,
//! SQL conditions); a row failing a rule goes to rejects with the first rule it failed.

use polars::prelude::*;
use serde::Deserialize;

use crate::rejects;
use crate::spec::{Bound, PipelineSpec};
use crate::stages::{Inputs, Stage, StageCtx, StageOutput};

/// Parameters of a `validate` stage.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Validate {
    /// Rules, checked in order; a row is rejected by the first rule it fails.
    pub rules: Vec<Rule>,
}

/// One rule on one column (or, with `check`, a condition over the row).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rule {
    /// Column the rule is about (named in the reject).
    pub column: String,
    /// The value must be present.
    #[serde(default)]
    pub required: bool,
    /// Smallest allowed value (a number, or a date `YYYY-MM-DD`).
    #[serde(default)]
    pub min: Option<Bound>,
    /// Largest allowed value.
    #[serde(default)]
    pub max: Option<Bound>,
    /// Allowed values (exact).
    #[serde(default)]
    pub allowed: Option<Vec<String>>,
    /// Regex the value must match.
    #[serde(default)]
    pub pattern: Option<String>,
    /// A SQL condition that must hold, e.g. `"end" IS NULL OR "end" >= start` (quote column
    /// names that are SQL words).
    #[serde(default)]
    pub check: Option<String>,
    /// Reason shown in the rejects; a default is written from the rule.
    #[serde(default)]
    pub reason: Option<String>,
}

fn bound_expr(b: &Bound) -> Expr {
    match b {
        Bound::Number(n) => lit(*n),
        Bound::Text(t) => lit(t.clone()).cast(DataType::Date),
    }
}

fn bound_text(b: &Bound) -> String {
    match b {
        Bound::Number(n) => n.to_string(),
        Bound::Text(t) => t.clone(),
    }
}

impl Rule {
    /// Each check of this rule as (rule name, failed expression, default reason).
    fn checks(&self) -> anyhow::Result<Vec<(&'static str, Expr, String)>> {
        let c = || col(self.column.as_str());
        let mut out = Vec::new();
        if self.required {
            out.push((
                "required",
                c().is_null(),
                format!("`{}` is missing", self.column),
            ));
        }
        if self.min.is_some() || self.max.is_some() {
            let mut failed = lit(false);
            if let Some(m) = &self.min {
                failed = failed.or(c().lt(bound_expr(m)));
            }
            if let Some(m) = &self.max {
                failed = failed.or(c().gt(bound_expr(m)));
            }
            let lo = self
                .min
                .as_ref()
                .map(bound_text)
                .unwrap_or_else(|| "-inf".into());
            let hi = self
                .max
                .as_ref()
                .map(bound_text)
                .unwrap_or_else(|| "inf".into());
            out.push((
                "range",
                failed.fill_null(lit(false)),
                format!("`{}` is outside {lo} to {hi}", self.column),
            ));
        }
        if let Some(allowed) = &self.allowed {
            let set = Series::new("allowed".into(), allowed.clone());
            out.push((
                "allowed",
                c().cast(DataType::String)
                    .is_in(lit(set).implode(false), false)
                    .not()
                    .and(c().is_not_null()),
                format!("`{}` is not one of {}", self.column, allowed.join(", ")),
            ));
        }
        if let Some(p) = &self.pattern {
            regex::Regex::new(p)
                .map_err(|e| anyhow::anyhow!("pattern `{p}` is not a valid regex: {e}"))?;
            out.push((
                "pattern",
                c().cast(DataType::String)
                    .str()
                    .contains(lit(format!("^(?:{p})$")), true)
                    .not()
                    .fill_null(lit(false)),
                format!("`{}` does not match `{p}`", self.column),
            ));
        }
        if let Some(sql) = &self.check {
            let cond = polars::sql::sql_expr(sql)
                .map_err(|e| anyhow::anyhow!("check `{sql}` is not a valid SQL condition: {e}"))?;
            out.push((
                "check",
                cond.not().fill_null(lit(true)),
                format!("fails `{sql}`"),
            ));
        }
        Ok(out)
    }
}

impl Stage for Validate {
    /// Row by row.
    fn across_subjects(&self, _subject_columns: &[String]) -> Option<String> {
        None
    }

    fn row_level(&self) -> bool {
        true
    }

    fn check(&self, _spec: &PipelineSpec) -> Vec<String> {
        let mut out = Vec::new();
        for r in &self.rules {
            match r.checks() {
                Ok(c) if c.is_empty() => out.push(format!(
                    "the rule on `{}` checks nothing: give required, min, max, allowed, pattern or check",
                    r.column
                )),
                Ok(_) => {}
                Err(e) => out.push(e.to_string()),
            }
        }
        out
    }

    fn run(&self, _ctx: &StageCtx, inputs: &Inputs) -> anyhow::Result<StageOutput> {
        let input = inputs.first().clone().lazy();
        let mut failed_before = lit(false);
        let mut reject_parts = Vec::new();
        for r in &self.rules {
            for (rule, failed, reason) in r.checks()? {
                let reason = r.reason.clone().unwrap_or(reason);
                reject_parts.push(rejects::from_filter(
                    input.clone(),
                    failed_before.clone().not().and(failed.clone()),
                    &r.column,
                    col(r.column.as_str())
                        .cast(DataType::String)
                        .fill_null(lit("")),
                    rule,
                    lit(reason),
                ));
                failed_before = failed_before.or(failed);
            }
        }
        let rejects = if reject_parts.is_empty() {
            rejects::empty()?
        } else {
            concat(reject_parts, UnionArgs::default())?.collect()?
        };
        Ok(StageOutput {
            table: input.filter(failed_before.not()),
            rejects: Some(rejects),
            dropped: None,
            files: Vec::new(),
            rows_of_input: None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stages::tests_support::{ctx_for, ints, strings};

    #[test]
    fn first_failed_rule_rejects_the_row() {
        let t = df!(
            "SRCFILE" => ["f"; 5],
            "SRCLINE" => [2i64, 3, 4, 5, 6],
            "SITE" => ["A"; 5],
            "dose" => [Some(2.0), None, Some(-1.0), Some(3.0), Some(1.0)],
            "regimen" => ["optimal", "optimal", "optimal", "sometimes", "escalation"],
            "start" => [1i64, 1, 1, 1, 5],
            "end" => [Some(2i64), Some(2), Some(2), Some(2), Some(4)],
        )
        .unwrap();
        let yaml = "rules:\n  - {column: dose, required: true, min: 0}\n  - {column: regimen, allowed: [escalation, optimal]}\n  - {column: end, check: '\"end\" IS NULL OR \"end\" >= start', reason: end before start}\n";
        let stage: Validate = serde_saphyr::from_str(yaml).unwrap();
        assert!(stage.check(&ctx_for(|c| c.spec.clone())).is_empty());
        let inputs = Inputs {
            tables: vec![("t".into(), t)],
        };
        let out = ctx_for(|ctx| stage.run(ctx, &inputs)).unwrap();
        let kept = out.table.collect().unwrap();
        assert_eq!(ints(&kept, "SRCLINE"), [Some(2)]);
        let rej = out
            .rejects
            .unwrap()
            .sort(["SRCLINE"], Default::default())
            .unwrap();
        let rules = strings(&rej, "RULE");
        assert_eq!(rules, vec!["required", "range", "allowed", "check"]);
        assert_eq!(
            rej.column("REASON").unwrap().str().unwrap().get(3),
            Some("end before start")
        );
    }
}
