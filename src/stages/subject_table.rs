//! `subject_table`: the subject-level table (ADSL): one row per subject with its demographics,
//! anchor dates, phase dates, per-phase summaries, last values and derived flags.

use polars::prelude::*;
use serde::Deserialize;

use crate::spec::PipelineSpec;
use crate::stages::{Arity, Inputs, Stage, StageCtx, StageOutput};

/// Parameters of a `subject_table` stage. Every table it names must be in `inputs:`.
///
/// ```yaml
/// subjects: subjects
/// columns: {SITEID: SITE, DIAGGRP: group, SEX: sex, BRTHDT: birth_date}
/// anchors: anchors                # every anchor column is copied
/// phases: adph                    # PH<n>SDT, PH<n>EDT, PH<n>DUR per phase
/// age: {name: AGE, birth: BRTHDT, at: TRTSDT}          # completed years
/// duration: {name: TRTDURD, from: TRTSDT, to: LSTVSTDT} # to - from + 1 days
/// summaries:
///   - {name: PH1DIARY, table: phase_summary, phase: 1, parameter: DIARYSCORE, stat: MEAN}
/// lasts:
///   - {name: LASTCRP, table: labs_bds, parameter: CRP, on_or_before: LSTVSTDT}
/// flags:
///   - {name: REMFL, when: "PH4DIARY < 0.15 AND PH4PREDKG < 0.15 AND LASTCRP <= 5", null_when: "TRTSDT IS NULL"}
/// ```
/// A flag is `Y` when its condition holds, `N` when it fails, and null when the condition
/// cannot be decided (a value it needs is missing) or `null_when` holds.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SubjectTable {
    /// Input with one row per subject.
    pub subjects: String,
    /// Subject id column of `subjects`.
    #[serde(default = "default_subject")]
    pub subject: String,
    /// Output column -> column of `subjects`, in output order.
    #[serde(default, deserialize_with = "ordered_pairs")]
    pub columns: Vec<(String, String)>,
    /// Input with the anchor dates (USUBJID + one column per anchor).
    #[serde(default)]
    pub anchors: Option<String>,
    /// Input with the phase windows (USUBJID, APHASEN, ASTDT, AENDT, ADURN).
    #[serde(default)]
    pub phases: Option<String>,
    #[serde(default)]
    pub age: Option<AgeSpec>,
    #[serde(default)]
    pub duration: Option<DurationSpec>,
    #[serde(default)]
    pub summaries: Vec<SummarySpec>,
    #[serde(default)]
    pub lasts: Vec<LastSpec>,
    #[serde(default)]
    pub flags: Vec<FlagSpec>,
}

fn default_subject() -> String {
    "subject".into()
}

/// A YAML mapping as its (key, value) pairs in the order written.
fn ordered_pairs<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> Result<Vec<(String, String)>, D::Error> {
    struct Pairs;
    impl<'de> serde::de::Visitor<'de> for Pairs {
        type Value = Vec<(String, String)>;
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("a mapping of output column to input column")
        }
        fn visit_map<A: serde::de::MapAccess<'de>>(
            self,
            mut map: A,
        ) -> Result<Self::Value, A::Error> {
            let mut out = Vec::new();
            while let Some((k, v)) = map.next_entry::<String, String>()? {
                out.push((k, v));
            }
            Ok(out)
        }
    }
    d.deserialize_map(Pairs)
}

/// Completed years between two date columns of the output.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgeSpec {
    pub name: String,
    pub birth: String,
    pub at: String,
}

/// Days from one date column to another, both counted.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DurationSpec {
    pub name: String,
    pub from: String,
    pub to: String,
}

/// One statistic of a `summarize` table for one phase and parameter.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SummarySpec {
    pub name: String,
    pub table: String,
    pub phase: i64,
    pub parameter: String,
    /// N, MEAN, SD, MEDIAN, Q1, Q3, MIN or MAX.
    pub stat: String,
}

/// The last non-null AVAL of a parameter on or before an anchor date.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LastSpec {
    pub name: String,
    pub table: String,
    pub parameter: String,
    pub on_or_before: String,
}

/// A Y/N flag from a SQL condition over the output columns.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FlagSpec {
    pub name: String,
    pub when: String,
    #[serde(default)]
    pub null_when: Option<String>,
}

const STATS: &[&str] = &["N", "MEAN", "SD", "MEDIAN", "Q1", "Q3", "MIN", "MAX"];

impl SubjectTable {
    fn named_inputs(&self) -> Vec<&str> {
        let mut v = vec![self.subjects.as_str()];
        v.extend(self.anchors.as_deref());
        v.extend(self.phases.as_deref());
        v.extend(self.summaries.iter().map(|s| s.table.as_str()));
        v.extend(self.lasts.iter().map(|s| s.table.as_str()));
        v.sort();
        v.dedup();
        v
    }
}

fn input<'a>(inputs: &'a Inputs, name: &str) -> anyhow::Result<&'a DataFrame> {
    inputs.get(name).ok_or_else(|| {
        anyhow::anyhow!("`{name}` is not one of this stage's inputs; add it to `inputs:`")
    })
}

/// The phase numbers that the `phase_windows` stage named `table` defines; `None` when
/// `table` is made by a stage of another kind (its phases are then those in its rows).
fn defined_phases(spec: &PipelineSpec, table: &str) -> Option<Vec<i64>> {
    let entry = spec
        .stages
        .iter()
        .find(|e| e.common.name.value == table && e.common.kind.value == "phase_windows")?;
    let windows: crate::stages::phase_windows::PhaseWindows =
        spec.stage_params(entry.index).ok()?;
    Some(windows.phases.iter().map(|p| p.number).collect())
}

impl Stage for SubjectTable {
    /// One row per subject, from that subject's rows.
    fn across_subjects(&self, _subject_columns: &[String]) -> Option<String> {
        None
    }

    fn arity(&self) -> Arity {
        Arity::Exactly(self.named_inputs().len())
    }

    fn check(&self, _spec: &PipelineSpec) -> Vec<String> {
        let mut out = Vec::new();
        for s in &self.summaries {
            if !STATS.contains(&s.stat.as_str()) {
                out.push(format!(
                    "summary `{}`: stat must be one of {}",
                    s.name,
                    STATS.join(", ")
                ));
            }
        }
        for f in &self.flags {
            for sql in std::iter::once(&f.when).chain(f.null_when.iter()) {
                if let Err(e) = polars::sql::sql_expr(sql) {
                    out.push(format!(
                        "flag `{}`: `{sql}` is not a valid SQL condition: {e}",
                        f.name
                    ));
                }
            }
        }
        out
    }

    fn run(&self, ctx: &StageCtx, inputs: &Inputs) -> anyhow::Result<StageOutput> {
        let key = || [col("USUBJID")];
        let left = || JoinArgs::new(JoinType::Left);
        let mut sel = vec![col(self.subject.as_str()).alias("USUBJID")];
        sel.extend(
            self.columns
                .iter()
                .map(|(out, from)| col(from.as_str()).alias(out.as_str())),
        );
        let mut t = input(inputs, &self.subjects)?.clone().lazy().select(sel);
        if let Some(a) = &self.anchors {
            t = t.join(input(inputs, a)?.clone().lazy(), key(), key(), left());
        }
        if let Some(p) = &self.phases {
            let phases = input(inputs, p)?;
            // Every phase the pipeline defines, reached or not: the table's columns do not
            // change with the data (nor from one batch of subjects to the next).
            let mut numbers: Vec<i64> = match defined_phases(ctx.spec, p) {
                Some(defined) => defined,
                None => phases
                    .column("APHASEN")?
                    .cast(&DataType::Int64)?
                    .i64()?
                    .iter()
                    .flatten()
                    .collect(),
            };
            numbers.sort();
            numbers.dedup();
            for n in numbers {
                let one = phases
                    .clone()
                    .lazy()
                    .filter(col("APHASEN").cast(DataType::Int64).eq(lit(n)))
                    .select([
                        col("USUBJID"),
                        col("ASTDT").alias(format!("PH{n}SDT")),
                        col("AENDT").alias(format!("PH{n}EDT")),
                        col("ADURN").alias(format!("PH{n}DUR")),
                    ]);
                t = t.join(one, key(), key(), left());
            }
        }
        if let Some(a) = &self.age {
            // Completed years: whole years between the dates, less one if the birthday
            // has not come yet in the last year.
            let (b, at) = (col(a.birth.as_str()), col(a.at.as_str()));
            let years = at.clone().dt().year() - b.clone().dt().year();
            let before_birthday = at.clone().dt().month().lt(b.clone().dt().month()).or(at
                .clone()
                .dt()
                .month()
                .eq(b.clone().dt().month())
                .and(at.dt().day().lt(b.dt().day())));
            t = t.with_column(
                (years.cast(DataType::Int64)
                    - when(before_birthday).then(lit(1i64)).otherwise(lit(0i64)))
                .alias(a.name.as_str()),
            );
        }
        if let Some(d) = &self.duration {
            let days = col(d.to.as_str()).cast(DataType::Int32)
                - col(d.from.as_str()).cast(DataType::Int32);
            t = t.with_column((days.cast(DataType::Int64) + lit(1i64)).alias(d.name.as_str()));
        }
        for s in &self.summaries {
            let one = input(inputs, &s.table)?
                .clone()
                .lazy()
                .filter(
                    col("APHASEN")
                        .cast(DataType::Int64)
                        .eq(lit(s.phase))
                        .and(col("PARAMCD").eq(lit(s.parameter.clone()))),
                )
                .select([col("USUBJID"), col(s.stat.as_str()).alias(s.name.as_str())]);
            t = t.join(one, key(), key(), left());
        }
        for l in &self.lasts {
            let cutoff = t
                .clone()
                .select([col("USUBJID"), col(l.on_or_before.as_str()).alias("__cut")]);
            let one = input(inputs, &l.table)?
                .clone()
                .lazy()
                .filter(
                    col("PARAMCD")
                        .eq(lit(l.parameter.clone()))
                        .and(col("AVAL").is_not_null()),
                )
                .join(cutoff, key(), key(), JoinArgs::new(JoinType::Inner))
                .filter(col("ADT").lt_eq(col("__cut")))
                .sort_by_exprs([col("ADT"), col("AVAL")], SortMultipleOptions::default())
                .group_by([col("USUBJID")])
                .agg([col("AVAL").last().alias(l.name.as_str())]);
            t = t.join(one, key(), key(), left());
        }
        for f in &self.flags {
            let cond = polars::sql::sql_expr(&f.when)?;
            let mut flag = when(cond.clone().is_null())
                .then(lit(NULL).cast(DataType::String))
                .when(cond)
                .then(lit("Y"))
                .otherwise(lit("N"));
            if let Some(n) = &f.null_when {
                flag = when(polars::sql::sql_expr(n)?.fill_null(lit(false)))
                    .then(lit(NULL).cast(DataType::String))
                    .otherwise(flag);
            }
            t = t.with_column(flag.alias(f.name.as_str()));
        }
        Ok(StageOutput::table(t.sort(["USUBJID"], Default::default())))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stages::tests_support::{ctx_for, dates, strings};

    #[test]
    fn one_row_per_subject_with_age_duration_summaries_and_flags() {
        let subjects = DataFrame::new_infer_height(vec![
            Column::new("subject".into(), ["C1", "C2", "S1"]),
            dates(&["2005-06-15", "2005-06-15", "2001-01-01"])
                .with_name("birth_date".into())
                .into(),
        ])
        .unwrap();
        let anchors = DataFrame::new_infer_height(vec![
            Column::new("USUBJID".into(), ["C1", "C2", "S1"]),
            dates(&["2012-06-14", "2012-06-15", ""])
                .with_name("TRTSDT".into())
                .into(),
            dates(&["2015-06-14", "2015-06-15", "2013-01-01"])
                .with_name("LSTVSTDT".into())
                .into(),
        ])
        .unwrap();
        let summary = df!(
            "USUBJID" => ["C1", "C1", "C2", "C2"],
            "APHASEN" => [4i64, 4, 4, 4],
            "PARAMCD" => ["DIARYSCORE", "PREDMGKG", "DIARYSCORE", "PREDMGKG"],
            "MEAN" => [0.1, 0.05, 0.3, 0.0],
        )
        .unwrap();
        let yaml = "subjects: subjects\ncolumns: {BRTHDT: birth_date}\nanchors: anchors\nage: {name: AGE, birth: BRTHDT, at: TRTSDT}\nduration: {name: TRTDURD, from: TRTSDT, to: LSTVSTDT}\nsummaries:\n  - {name: PH4DIARY, table: summary, phase: 4, parameter: DIARYSCORE, stat: MEAN}\n  - {name: PH4PREDKG, table: summary, phase: 4, parameter: PREDMGKG, stat: MEAN}\nflags:\n  - {name: REMFL, when: 'PH4DIARY < 0.15 AND PH4PREDKG < 0.15', null_when: 'TRTSDT IS NULL'}\n";
        let stage: SubjectTable = serde_saphyr::from_str(yaml).unwrap();
        assert!(stage.check(&ctx_for(|c| c.spec.clone())).is_empty());
        let inputs = Inputs {
            tables: vec![
                ("subjects".into(), subjects),
                ("anchors".into(), anchors),
                ("summary".into(), summary),
            ],
        };
        let out = ctx_for(|c| stage.run(c, &inputs))
            .unwrap()
            .table
            .collect()
            .unwrap();
        // C1 is dosed the day before the 7th birthday: 6 completed years; C2 on it: 7.
        assert_eq!(strings(&out, "AGE"), ["6", "7", "null"]);
        // 2012-06-14 .. 2015-06-14 inclusive: 1095 + 1 (2012 leap day is before) = 1096 days.
        assert_eq!(strings(&out, "TRTDURD"), ["1096", "1096", "null"]);
        assert_eq!(strings(&out, "REMFL"), ["Y", "N", "null"]);
    }

    #[test]
    fn phase_columns_are_every_defined_phase_reached_or_not() {
        let subjects = df!("subject" => ["C1", "C2"]).unwrap();
        // Only phase 1 in the data; the pipeline defines phases 1 and 3.
        let adph = DataFrame::new_infer_height(vec![
            Column::new("USUBJID".into(), ["C1"]),
            Column::new("APHASEN".into(), [1i64]),
            dates(&["2012-01-01"]).with_name("ASTDT".into()).into(),
            dates(&["2012-03-01"]).with_name("AENDT".into()).into(),
            Column::new("ADURN".into(), [61i64]),
        ])
        .unwrap();
        let stage: SubjectTable =
            serde_saphyr::from_str("subjects: subjects\nphases: adph\n").unwrap();
        let inputs = Inputs {
            tables: vec![("subjects".into(), subjects), ("adph".into(), adph)],
        };
        let pipeline = "pipeline: test\nstages:\n  - name: adph\n    kind: phase_windows\n    inputs: [anchors]\n    phases:\n      - {number: 3, label: c, start: FRSTDT, end: LSTVSTDT}\n      - {number: 1, label: a, start: FRSTDT, end: LSTVSTDT}\n";
        let spec = PipelineSpec::parse(std::path::Path::new("test.yaml"), pipeline.into()).unwrap();
        let ctx = StageCtx {
            name: "adsl",
            spec: &spec,
            run_date: chrono::NaiveDate::from_ymd_opt(2026, 11, 25).unwrap(),
            data_dir: std::path::Path::new("."),
            base_dir: std::path::Path::new("."),
            sources: &[],
        };
        let out = stage.run(&ctx, &inputs).unwrap().table.collect().unwrap();
        let names: Vec<&str> = out.get_column_names().iter().map(|c| c.as_str()).collect();
        assert_eq!(
            names,
            [
                "USUBJID", "PH1SDT", "PH1EDT", "PH1DUR", "PH3SDT", "PH3EDT", "PH3DUR"
            ]
        );
        assert_eq!(strings(&out, "PH1SDT"), ["2012-01-01", "null"]);
        assert_eq!(strings(&out, "PH3SDT"), ["null", "null"]);
        // Phases made by another kind of stage: those in its rows.
        let out = ctx_for(|c| stage.run(c, &inputs))
            .unwrap()
            .table
            .collect()
            .unwrap();
        assert_eq!(out.width(), 4);
    }
}
