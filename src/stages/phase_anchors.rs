//! `phase_anchors`: one row per subject with its anchor dates (first dose, optimal start,
//! final visit...), each an aggregate (min or max) of date columns over named tables.

use polars::prelude::*;
use serde::Deserialize;

use crate::spec::PipelineSpec;
use crate::stages::{Arity, Inputs, Stage, StageCtx, StageOutput};

/// Parameters of a `phase_anchors` stage.
///
/// ```yaml
/// - name: anchors
///   kind: phase_anchors
///   inputs: [subjects, dosing, visits]
///   subjects: subjects            # every subject gets a row, even with no events (and so
///                                 # does a subject with events but no subjects row)
///   subject: subject              # subject id column, in every input
///   anchors:
///     - {name: TRTSDT, agg: min, from: [{table: dosing, column: start}]}
///     - {name: OPTSDT, agg: min, from: [{table: dosing, column: start, filter: "regimen = 'optimal'"}]}
///     - {name: LSTVSTDT, agg: max, from: [{table: visits, column: date}]}
/// ```
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PhaseAnchors {
    /// Input listing every subject.
    pub subjects: String,
    /// Subject id column in every input (the output names it USUBJID).
    #[serde(default = "default_subject")]
    pub subject: String,
    /// Anchor dates, in output column order.
    pub anchors: Vec<Anchor>,
}

fn default_subject() -> String {
    "subject".into()
}

/// One anchor date: an aggregate of date columns over one or more tables.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Anchor {
    /// Output column name (e.g. TRTSDT).
    pub name: String,
    /// `min` (earliest) or `max` (latest).
    pub agg: String,
    /// The date columns it is taken over.
    pub from: Vec<AnchorSource>,
}

/// A date column of an input table, optionally filtered.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AnchorSource {
    pub table: String,
    pub column: String,
    /// SQL condition on the table's rows, e.g. `regimen = 'optimal'`.
    #[serde(default)]
    pub filter: Option<String>,
}

impl Stage for PhaseAnchors {
    /// Each subject's dates, from that subject's rows.
    fn across_subjects(&self, _subject_columns: &[String]) -> Option<String> {
        None
    }

    /// The subject column and the anchors' date columns of `input`; all of it when an anchor
    /// filters its rows (the filter may name any column).
    fn reads_columns(&self, input: &str) -> Option<Vec<String>> {
        let mut columns = vec![self.subject.clone()];
        for f in self.anchors.iter().flat_map(|a| &a.from) {
            if f.table == input {
                if f.filter.is_some() {
                    return None;
                }
                if !columns.contains(&f.column) {
                    columns.push(f.column.clone());
                }
            }
        }
        Some(columns)
    }

    fn arity(&self) -> Arity {
        Arity::AtLeastOne
    }

    fn check(&self, _spec: &PipelineSpec) -> Vec<String> {
        let mut out = Vec::new();
        for a in &self.anchors {
            if a.agg != "min" && a.agg != "max" {
                out.push(format!(
                    "anchor `{}`: agg must be `min` or `max`, not `{}`",
                    a.name, a.agg
                ));
            }
            if a.from.is_empty() {
                out.push(format!("anchor `{}` has no `from` columns", a.name));
            }
            for f in &a.from {
                if let Some(sql) = &f.filter
                    && let Err(e) = polars::sql::sql_expr(sql)
                {
                    out.push(format!(
                        "anchor `{}`: filter `{sql}` is not valid SQL: {e}",
                        a.name
                    ));
                }
            }
        }
        out
    }

    fn run(&self, _ctx: &StageCtx, inputs: &Inputs) -> anyhow::Result<StageOutput> {
        let table = |name: &str| {
            inputs.get(name).ok_or_else(|| {
                anyhow::anyhow!("`{name}` is not one of this stage's inputs; add it to `inputs:`")
            })
        };
        let subj = self.subject.as_str();
        // Every subject of the subjects table, and every subject with a row in an anchor's
        // table: a subject whose demographics row was rejected still has its records phased.
        let mut ids = vec![table(&self.subjects)?.clone().lazy().select([col(subj)])];
        for a in &self.anchors {
            for f in &a.from {
                ids.push(table(&f.table)?.clone().lazy().select([col(subj)]));
            }
        }
        let mut out = concat(ids, UnionArgs::default())?
            .filter(col(subj).is_not_null())
            .select([col(subj).alias("USUBJID")])
            .unique_stable(None, UniqueKeepStrategy::First);
        for a in &self.anchors {
            let mut parts = Vec::new();
            for f in &a.from {
                let mut lf = table(&f.table)?.clone().lazy();
                if let Some(sql) = &f.filter {
                    lf = lf.filter(polars::sql::sql_expr(sql)?);
                }
                parts.push(lf.select([
                    col(subj).alias("USUBJID"),
                    col(f.column.as_str()).cast(DataType::Date).alias("__d"),
                ]));
            }
            let all = concat(parts, UnionArgs::default())?;
            let agg = if a.agg == "min" {
                col("__d").min()
            } else {
                col("__d").max()
            };
            let per_subject = all
                .group_by([col("USUBJID")])
                .agg([agg.alias(a.name.as_str())]);
            out = out.join(
                per_subject,
                [col("USUBJID")],
                [col("USUBJID")],
                JoinArgs::new(JoinType::Left),
            );
        }
        Ok(StageOutput::table(
            out.sort(["USUBJID"], Default::default()),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stages::tests_support::{ctx_for, dates, strings};

    #[test]
    fn anchors_are_aggregates_with_filters_and_every_subject_gets_a_row() {
        let subjects = df!("subject" => ["C1", "C2", "S1"]).unwrap();
        let dosing = df!(
            "subject" => ["C1", "C1", "C1", "C2"],
            "start" => dates(&["2012-01-10", "2012-03-01", "2012-06-01", "2013-01-01"]),
            "regimen" => ["escalation", "optimal", "optimal", "escalation"],
        )
        .unwrap();
        // O9 has visits but no subjects row (its demographics row was rejected).
        let visits = df!(
            "subject" => ["C1", "C1", "C2", "S1", "O9"],
            "date" => dates(&["2011-12-01", "2015-05-05", "2014-01-01", "2013-02-02", "2014-04-04"]),
        )
        .unwrap();
        let yaml = "subjects: subjects\nanchors:\n  - {name: TRTSDT, agg: min, from: [{table: dosing, column: start}]}\n  - {name: OPTSDT, agg: min, from: [{table: dosing, column: start, filter: \"regimen = 'optimal'\"}]}\n  - {name: LSTVSTDT, agg: max, from: [{table: visits, column: date}]}\n";
        let stage: PhaseAnchors = serde_saphyr::from_str(yaml).unwrap();
        let inputs = Inputs {
            tables: vec![
                ("subjects".into(), subjects),
                ("dosing".into(), dosing),
                ("visits".into(), visits),
            ],
        };
        let out = ctx_for(|c| stage.run(c, &inputs))
            .unwrap()
            .table
            .collect()
            .unwrap();
        let s = |c: &str| strings(&out, c);
        assert_eq!(s("USUBJID"), ["C1", "C2", "O9", "S1"]);
        assert_eq!(s("TRTSDT"), ["2012-01-10", "2013-01-01", "null", "null"]);
        assert_eq!(s("OPTSDT"), ["2012-03-01", "null", "null", "null"]);
        assert_eq!(
            s("LSTVSTDT"),
            ["2015-05-05", "2014-01-01", "2014-04-04", "2013-02-02"]
        );
    }
}
