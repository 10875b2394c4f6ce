//! Stage kind `growth_zscore`: height, weight and BMI of each visit as a long BDS-ready table
//! with age, LMS Z-score and percentile against a growth reference (DOMAIN 4.3).

use std::borrow::Borrow;
use std::collections::{BTreeMap, HashSet};
use std::fmt;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use polars::prelude::*;
use serde::Deserialize;

use crate::growth::{DAYS_PER_MONTH, GrowthReference, LmsTable, percentile};
use crate::spec::PipelineSpec;
use crate::stages::{Arity, Inputs, Stage, StageCtx, StageOutput};

/// Growth Z-scores and percentiles. Inputs: `[visits, subjects]`; visits has one row per
/// subject and date with height (cm) and weight (kg), subjects one row per subject with
/// sex and birth date. Output: one row per visit and parameter (HEIGHT, WEIGHT, BMI) with
/// USUBJID, ADT, PARAMCD, PARAM, AVAL, AVALU, AGEMO, ZSCORE, PCTL, ZREASON, SRCFILE,
/// SRCLINE. Every measurement is kept; where there is no Z-score, ZREASON says why.
///
/// ```yaml
/// - name: growth
///   kind: growth_zscore
///   inputs: [visits_std, subjects_std]
///   reference: reference/cdc2000_lms.csv
///   sex_codes: {1: M, 2: F}
/// ```
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GrowthZscore {
    /// LMS table, CSV with columns `chart,sex,agemos,L,M,S` (ages in months), path relative
    /// to the pipeline YAML. The CDC 2000 2-20 y tables ship as data/reference/cdc2000_lms.csv.
    pub reference: String,
    /// Ages in years, both ends included, the reference is used for (default 2.0 to 20.0,
    /// DOMAIN 4.3). Outside it, or outside the table's own ages, Z and PCTL are null.
    #[serde(default = "default_age_range_years")]
    pub age_range_years: [f64; 2],
    /// Subject sex as written in the subjects table -> sex code of the reference, e.g.
    /// `{M: M, F: F}` or `{1: M, 2: F}`. Unset: the sex is used as written. A sex not
    /// mapped here gets no Z-score.
    #[serde(default)]
    pub sex_codes: Option<BTreeMap<SexCode, String>>,
    /// Chart names of the reference for each parameter.
    // Boxed, like `columns`, to keep `Kind` variants of similar size.
    #[serde(default)]
    pub charts: Box<GrowthCharts>,
    /// Column names of the two inputs.
    #[serde(default)]
    pub columns: Box<GrowthColumns>,
}

/// Chart of the reference table used for each parameter.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GrowthCharts {
    /// Chart for HEIGHT (default `stature`).
    pub height: String,
    /// Chart for WEIGHT (default `weight`).
    pub weight: String,
    /// Chart for BMI (default `bmi`).
    pub bmi: String,
}

impl Default for GrowthCharts {
    fn default() -> Self {
        GrowthCharts {
            height: "stature".into(),
            weight: "weight".into(),
            bmi: "bmi".into(),
        }
    }
}

/// Column names of the inputs.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GrowthColumns {
    /// Subject id, in both inputs (default `subject`).
    pub subject: String,
    /// Visit date, a date (default `date`).
    pub date: String,
    /// Height in cm (default `height_cm`).
    pub height: String,
    /// Weight in kg (default `weight_kg`).
    pub weight: String,
    /// Sex, in the subjects table (default `sex`).
    pub sex: String,
    /// Birth date, a date, in the subjects table (default `birth_date`).
    pub birth_date: String,
}

impl Default for GrowthColumns {
    fn default() -> Self {
        GrowthColumns {
            subject: "subject".into(),
            date: "date".into(),
            height: "height_cm".into(),
            weight: "weight_kg".into(),
            sex: "sex".into(),
            birth_date: "birth_date".into(),
        }
    }
}

fn default_age_range_years() -> [f64; 2] {
    [2.0, 20.0]
}

/// A sex code as written in YAML: `M`, or `1` (numbers are codes, not quantities).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct SexCode(pub String);

impl Borrow<str> for SexCode {
    fn borrow(&self) -> &str {
        &self.0
    }
}

impl<'de> Deserialize<'de> for SexCode {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct CodeVisitor;
        impl serde::de::Visitor<'_> for CodeVisitor {
            type Value = SexCode;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a sex code such as M, F, 1 or 2")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<SexCode, E> {
                Ok(SexCode(v.trim().to_string()))
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<SexCode, E> {
                Ok(SexCode(v.to_string()))
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<SexCode, E> {
                Ok(SexCode(v.to_string()))
            }
            fn visit_bool<E: serde::de::Error>(self, v: bool) -> Result<SexCode, E> {
                Ok(SexCode(v.to_string()))
            }
        }
        d.deserialize_any(CodeVisitor)
    }
}

/// One output parameter: its codes, label, unit and chart.
struct Parameter<'a> {
    code: &'static str,
    label: &'static str,
    unit: &'static str,
    chart: &'a str,
    /// Column of the wide frame holding AVAL.
    value: &'static str,
}

// Internal column names of the wide frame (one row per visit) before it is made long.
const SEX_RAW: &str = "__sex";
const KNOWN: &str = "__known";
const HEIGHT: &str = "__height";
const WEIGHT: &str = "__weight";
const BMI: &str = "__bmi";

impl GrowthZscore {
    fn parameters(&self) -> [Parameter<'_>; 3] {
        [
            Parameter {
                code: "HEIGHT",
                label: "Height (cm)",
                unit: "cm",
                chart: &self.charts.height,
                value: HEIGHT,
            },
            Parameter {
                code: "WEIGHT",
                label: "Weight (kg)",
                unit: "kg",
                chart: &self.charts.weight,
                value: WEIGHT,
            },
            Parameter {
                code: "BMI",
                label: "Body Mass Index (kg/m2)",
                unit: "kg/m2",
                chart: &self.charts.bmi,
                value: BMI,
            },
        ]
    }

    /// The age window in months.
    fn age_window(&self) -> (f64, f64) {
        let [low, high] = self.age_range_years;
        (low * 12.0, high * 12.0)
    }

    /// The reference's sex code for a sex as written, if there is one.
    fn table_sex<'a>(&'a self, raw: &'a str) -> Option<&'a str> {
        let raw = raw.trim();
        match &self.sex_codes {
            Some(codes) => codes.get(raw).map(String::as_str),
            None => Some(raw),
        }
    }

    /// Problems of the reference table as configured: unreadable, charts or sexes missing.
    fn reference_problems(&self, path: &Path) -> Vec<String> {
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) => return vec![format!("cannot read reference `{}`: {e}", path.display())],
        };
        let table = match LmsTable::from_csv(&text) {
            Ok(t) => t,
            Err(e) => return vec![format!("reference `{}`: {e}", path.display())],
        };
        let mut problems = Vec::new();
        let charts = table.charts();
        for p in self.parameters() {
            if !charts.contains(&p.chart) {
                problems.push(format!(
                    "chart `{}` for {} is not in reference `{}` (charts: {})",
                    p.chart,
                    p.code,
                    path.display(),
                    charts.join(", ")
                ));
            }
        }
        if let Some(codes) = &self.sex_codes {
            let sexes = table.sexes();
            for (raw, code) in codes {
                if !sexes.contains(&code.as_str()) {
                    problems.push(format!(
                        "sex_codes maps `{}` to `{code}`, which reference `{}` does not have \
                         (sexes: {})",
                        raw.0,
                        path.display(),
                        sexes.join(", ")
                    ));
                }
            }
        }
        problems
    }

    /// One row per visit: USUBJID, ADT, raw sex, AGEMO, height, weight, BMI, lineage.
    fn visits_with_subjects(
        &self,
        visits: &DataFrame,
        visits_name: &str,
        subjects: &DataFrame,
        subjects_name: &str,
    ) -> anyhow::Result<DataFrame> {
        let c = &self.columns;
        require_columns(
            visits,
            visits_name,
            &[&c.subject, &c.date, &c.height, &c.weight],
        )?;
        require_columns(
            subjects,
            subjects_name,
            &[&c.subject, &c.sex, &c.birth_date],
        )?;
        require_date(visits, visits_name, &c.date)?;
        require_date(subjects, subjects_name, &c.birth_date)?;
        require_numeric(visits, visits_name, &c.height)?;
        require_numeric(visits, visits_name, &c.weight)?;
        let subject_ids = subjects.column(&c.subject)?.cast(&DataType::String)?;
        let mut seen = HashSet::new();
        if let Some(twice) = subject_ids
            .str()?
            .iter()
            .flatten()
            .find(|id| !seen.insert(*id))
        {
            bail!(
                "`{subjects_name}` must have one row per subject; `{twice}` appears more than once"
            );
        }

        let lineage = |name: &str, dtype: DataType| {
            if visits.schema().contains(name) {
                col(name).cast(dtype)
            } else {
                lit(NULL).cast(dtype).alias(name)
            }
        };
        let visits_lf = visits.clone().lazy().select([
            col(&c.subject).cast(DataType::String).alias("USUBJID"),
            col(&c.date).alias("ADT"),
            col(&c.height).cast(DataType::Float64).alias(HEIGHT),
            col(&c.weight).cast(DataType::Float64).alias(WEIGHT),
            lineage("SRCFILE", DataType::String),
            lineage("SRCLINE", DataType::Int64),
        ]);
        let subjects_lf = subjects.clone().lazy().select([
            col(&c.subject).cast(DataType::String).alias("USUBJID"),
            col(&c.sex).cast(DataType::String).alias(SEX_RAW),
            col(&c.birth_date).alias("__birth"),
            lit(true).alias(KNOWN),
        ]);
        let days = col("ADT").cast(DataType::Int32) - col("__birth").cast(DataType::Int32);
        let metres = col(HEIGHT) / lit(100.0);
        let wide = visits_lf
            .left_join(subjects_lf, col("USUBJID"), col("USUBJID"))
            .with_columns([
                (days.cast(DataType::Float64) / lit(DAYS_PER_MONTH)).alias("AGEMO"),
                // BMI only from a positive height and weight; otherwise null with a reason.
                when(col(HEIGHT).gt(lit(0.0)).and(col(WEIGHT).gt(lit(0.0))))
                    .then(col(WEIGHT) / (metres.clone() * metres))
                    .otherwise(lit(NULL).cast(DataType::Float64))
                    .alias(BMI),
                col(KNOWN).fill_null(lit(false)),
            ])
            .collect()?;
        Ok(wide)
    }

    /// ZSCORE, PCTL and ZREASON of one parameter, one value per row of `wide`.
    fn zscores(
        &self,
        wide: &DataFrame,
        reference: &GrowthReference,
        p: &Parameter,
        subjects_name: &str,
    ) -> anyhow::Result<[Column; 3]> {
        let n = wide.height();
        let usubjid = wide.column("USUBJID")?.str()?;
        let sex = wide.column(SEX_RAW)?.str()?;
        let known = wide.column(KNOWN)?.bool()?;
        let age = wide.column("AGEMO")?.f64()?;
        let height = wide.column(HEIGHT)?.f64()?;
        let weight = wide.column(WEIGHT)?.f64()?;
        let value = wide.column(p.value)?.f64()?;
        let (mut z, mut pctl, mut reason) = (
            Vec::with_capacity(n),
            Vec::with_capacity(n),
            Vec::with_capacity(n),
        );
        let rows = usubjid
            .iter()
            .zip(sex.iter())
            .zip(known.iter())
            .zip(age.iter())
            .zip(height.iter().zip(weight.iter()))
            .zip(value.iter());
        for (((((id, raw_sex), known), age), (h, w)), x) in rows {
            let what = match p.value {
                BMI => match (h, w) {
                    (None, None) => "height and weight",
                    (None, _) => "height",
                    (_, None) => "weight",
                    _ => "BMI",
                },
                HEIGHT => "height",
                _ => "weight",
            };
            let outcome = if x.is_some() && known != Some(true) {
                Err(format!(
                    "subject `{}` not in `{subjects_name}`",
                    id.unwrap_or("")
                ))
            } else if x.is_none() && what == "BMI" {
                Err("BMI needs a positive height and weight".to_string())
            } else {
                let table_sex = raw_sex.and_then(|s| self.table_sex(s));
                reference
                    .zscore(p.chart, table_sex, raw_sex, age, x, what)
                    .map_err(|e| e.to_string())
            };
            match outcome {
                Ok(v) => {
                    z.push(Some(v));
                    pctl.push(Some(percentile(v)));
                    reason.push(None);
                }
                Err(why) => {
                    z.push(None);
                    pctl.push(None);
                    reason.push(Some(why));
                }
            }
        }
        Ok([
            Column::new("ZSCORE".into(), z),
            Column::new("PCTL".into(), pctl),
            Column::new("ZREASON".into(), reason),
        ])
    }
}

fn require_columns(df: &DataFrame, table: &str, names: &[&String]) -> anyhow::Result<()> {
    let missing: Vec<&str> = names
        .iter()
        .filter(|n| !df.schema().contains(n.as_str()))
        .map(|n| n.as_str())
        .collect();
    if !missing.is_empty() {
        let have: Vec<&str> = df.get_column_names().iter().map(|s| s.as_str()).collect();
        bail!(
            "`{table}` has no column {} (columns: {})",
            missing
                .iter()
                .map(|m| format!("`{m}`"))
                .collect::<Vec<_>>()
                .join(", "),
            have.join(", ")
        );
    }
    Ok(())
}

fn require_date(df: &DataFrame, table: &str, name: &str) -> anyhow::Result<()> {
    let dtype = df.column(name)?.dtype();
    if dtype != &DataType::Date {
        bail!("column `{name}` of `{table}` must be a date, found {dtype}");
    }
    Ok(())
}

fn require_numeric(df: &DataFrame, table: &str, name: &str) -> anyhow::Result<()> {
    let dtype = df.column(name)?.dtype();
    if !dtype.is_primitive_numeric() {
        bail!("column `{name}` of `{table}` must be a number, found {dtype}");
    }
    Ok(())
}

impl Stage for GrowthZscore {
    /// Row by row, with the subject's own sex and birth date.
    fn across_subjects(&self, _subject_columns: &[String]) -> Option<String> {
        None
    }

    fn arity(&self) -> Arity {
        Arity::Exactly(2)
    }

    fn check(&self, spec: &PipelineSpec) -> Vec<String> {
        let mut problems = Vec::new();
        let [low, high] = self.age_range_years;
        if !(low.is_finite() && high.is_finite() && 0.0 <= low && low < high) {
            problems.push(format!(
                "age_range_years must be two ages, the first smaller, e.g. [2.0, 20.0] \
                 (got [{low}, {high}])"
            ));
        }
        if self.reference.trim().is_empty() {
            problems.push("reference must name the LMS table (CSV)".into());
        } else {
            problems.extend(self.reference_problems(&spec.base_dir().join(&self.reference)));
        }
        problems
    }

    fn reference_files(&self, base_dir: &Path) -> Vec<PathBuf> {
        vec![base_dir.join(&self.reference)]
    }

    fn run(&self, ctx: &StageCtx, inputs: &Inputs) -> anyhow::Result<StageOutput> {
        let [(visits_name, visits), (subjects_name, subjects)] = inputs.tables.as_slice() else {
            bail!(
                "growth_zscore takes two inputs, [visits, subjects]; got {}",
                inputs.tables.len()
            );
        };
        let path = ctx.resolve(&self.reference);
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("cannot read growth reference `{}`", path.display()))?;
        let table = LmsTable::from_csv(&text)
            .with_context(|| format!("growth reference `{}`", path.display()))?;
        for p in self.parameters() {
            if !table.charts().contains(&p.chart) {
                bail!(
                    "growth reference `{}` has no chart `{}` for {} (charts: {})",
                    path.display(),
                    p.chart,
                    p.code,
                    table.charts().join(", ")
                );
            }
        }
        let reference = GrowthReference {
            table,
            age_window: self.age_window(),
        };
        let mut wide = self.visits_with_subjects(visits, visits_name, subjects, subjects_name)?;

        let mut long = Vec::with_capacity(3);
        for p in self.parameters() {
            let [z, pctl, reason] = self.zscores(&wide, &reference, &p, subjects_name)?;
            let (zn, pn, rn) = (
                format!("{}_ZSCORE", p.code),
                format!("{}_PCTL", p.code),
                format!("{}_ZREASON", p.code),
            );
            wide.with_column(z.with_name(zn.as_str().into()))?;
            wide.with_column(pctl.with_name(pn.as_str().into()))?;
            wide.with_column(reason.with_name(rn.as_str().into()))?;
            long.push(wide.clone().lazy().select([
                col("USUBJID"),
                col("ADT"),
                lit(p.code).alias("PARAMCD"),
                lit(p.label).alias("PARAM"),
                col(p.value).alias("AVAL"),
                lit(p.unit).alias("AVALU"),
                col("AGEMO"),
                col(zn.as_str()).alias("ZSCORE"),
                col(pn.as_str()).alias("PCTL"),
                col(rn.as_str()).alias("ZREASON"),
                col("SRCFILE"),
                col("SRCLINE"),
            ]));
        }
        // Stable sort: the rows of one visit stay in HEIGHT, WEIGHT, BMI order.
        let table = concat(long, UnionArgs::default())?.sort(
            ["USUBJID", "ADT"],
            SortMultipleOptions::default().with_maintain_order(true),
        );
        Ok(StageOutput::table(table))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::NaiveDate;

    fn d(s: &str) -> NaiveDate {
        NaiveDate::parse_from_str(s, "%Y-%m-%d").unwrap()
    }

    fn date_col(name: &str, dates: &[Option<&str>]) -> Column {
        let epoch = d("1970-01-01");
        let days: Vec<Option<i32>> = dates
            .iter()
            .map(|o| o.map(|s| (d(s) - epoch).num_days() as i32))
            .collect();
        Column::new(name.into(), days)
            .cast(&DataType::Date)
            .unwrap()
    }

    fn reference_dir() -> &'static Path {
        Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/data/reference"))
    }

    /// A one-stage pipeline in data/reference/ whose stage has `params` (YAML lines).
    fn pipeline(params: &[&str]) -> PipelineSpec {
        let mut yaml = String::from(
            "pipeline: t\nstages:\n  - name: growth\n    kind: growth_zscore\n    \
             inputs: [visits, subjects]\n    reference: cdc2000_lms.csv\n",
        );
        for line in params {
            yaml.push_str(&format!("    {line}\n"));
        }
        PipelineSpec::parse(&reference_dir().join("pipeline.yaml"), yaml).unwrap()
    }

    fn params(lines: &[&str]) -> GrowthZscore {
        pipeline(lines).stage_params(0).unwrap()
    }

    fn run(stage: &GrowthZscore, visits: DataFrame, subjects: DataFrame) -> DataFrame {
        let spec = pipeline(&[]);
        let ctx = StageCtx {
            name: "growth",
            spec: &spec,
            run_date: d("2024-01-01"),
            data_dir: reference_dir(),
            base_dir: reference_dir(),
            sources: &[],
        };
        let inputs = Inputs {
            tables: vec![("visits".into(), visits), ("subjects".into(), subjects)],
        };
        stage.run(&ctx, &inputs).unwrap().table.collect().unwrap()
    }

    /// Boy M1 born 2010-01-01, girl F1 born 2000-06-15 (sex written 1 / 2), U1 sex unknown.
    fn subjects() -> DataFrame {
        DataFrame::new_infer_height(vec![
            Column::new("subject".into(), ["M1", "F1", "U1"]),
            Column::new("sex".into(), [Some(1i64), Some(2), None]),
            date_col(
                "birth_date",
                &[Some("2010-01-01"), Some("2000-06-15"), Some("2012-01-01")],
            ),
        ])
        .unwrap()
    }

    fn f64s(df: &DataFrame, name: &str) -> Vec<Option<f64>> {
        df.column(name).unwrap().f64().unwrap().iter().collect()
    }

    fn strs(df: &DataFrame, name: &str) -> Vec<Option<String>> {
        df.column(name)
            .unwrap()
            .str()
            .unwrap()
            .iter()
            .map(|s| s.map(str::to_string))
            .collect()
    }

    #[test]
    fn one_row_per_visit_and_parameter_with_z_and_reasons() {
        // M1: 2012-01-02 is 731 days = 24.0164 months; 2011-06-01 is 516 days = 1.4 y.
        // F1: 2020-06-14 is 7304 days = 239.967 months (F1 turns 20 on 2020-06-15).
        let visits = DataFrame::new_infer_height(vec![
            Column::new("subject".into(), ["M1", "M1", "F1", "U1", "X9"]),
            date_col(
                "date",
                &[
                    Some("2012-01-02"),
                    Some("2011-06-01"),
                    Some("2020-06-14"),
                    Some("2018-01-01"),
                    Some("2018-01-01"),
                ],
            ),
            Column::new(
                "height_cm".into(),
                [
                    Some(86.5),
                    Some(80.0),
                    Some(163.3),
                    Some(120.0),
                    Some(110.0),
                ],
            ),
            Column::new(
                "weight_kg".into(),
                [Some(12.7), Some(10.0), None, Some(22.0), Some(18.0)],
            ),
            Column::new(
                "SRCFILE".into(),
                ["a.csv", "a.csv", "b.csv", "b.csv", "b.csv"],
            ),
            Column::new("SRCLINE".into(), [2i64, 3, 2, 3, 4]),
        ])
        .unwrap();
        let stage = params(&["sex_codes: {1: M, 2: F}"]);
        let out = run(&stage, visits, subjects());
        assert_eq!(out.height(), 15);
        assert_eq!(
            out.get_column_names()
                .iter()
                .map(|s| s.as_str())
                .collect::<Vec<_>>(),
            [
                "USUBJID", "ADT", "PARAMCD", "PARAM", "AVAL", "AVALU", "AGEMO", "ZSCORE", "PCTL",
                "ZREASON", "SRCFILE", "SRCLINE"
            ]
        );
        // Sorted by subject, date; HEIGHT, WEIGHT, BMI within a visit.
        let ids = strs(&out, "USUBJID");
        let codes = strs(&out, "PARAMCD");
        assert_eq!(ids[0].as_deref(), Some("F1"));
        assert_eq!(ids[3].as_deref(), Some("M1"));
        assert_eq!(
            codes[..3],
            [
                Some("HEIGHT".into()),
                Some("WEIGHT".into()),
                Some("BMI".into())
            ]
        );
        let aval = f64s(&out, "AVAL");
        let z = f64s(&out, "ZSCORE");
        let pctl = f64s(&out, "PCTL");
        let agemo = f64s(&out, "AGEMO");
        let reason = strs(&out, "ZREASON");

        // F1 at 7304 / 30.4375 = 239.9671458 months, girls' stature between the rows 239.5
        // and 240 at t = (239.9671458 - 239.5) / 0.5 = 0.9342916:
        // L = 1.107132561 + t * (1.108046193 - 1.107132561) = 1.1079862
        // M = 163.3354491 + t * (163.338251 - 163.3354491) = 163.3380669
        // S = 0.039637105 + t * (0.039636316 - 0.039637105) = 0.0396364
        // z = ((163.3 / 163.3380669)^1.1079862 - 1) / (1.1079862 * 0.0396364) = -0.0058798
        assert!((agemo[0].unwrap() - 239.967_145_8).abs() < 1e-6);
        assert!((z[0].unwrap() + 0.005_879_8).abs() < 1e-6, "{:?}", z[0]);
        assert!((pctl[0].unwrap() - 49.765_43).abs() < 1e-3, "{:?}", pctl[0]);
        assert_eq!(reason[1].as_deref(), Some("weight missing"));
        assert_eq!(aval[1], None);
        assert_eq!(reason[2].as_deref(), Some("weight missing"));

        // M1 at 516 days: outside 2.0-20.0 y; the measurement is kept.
        assert_eq!(aval[3], Some(80.0));
        assert_eq!(z[3], None);
        assert_eq!(pctl[3], None);
        assert_eq!(
            reason[3].as_deref(),
            Some("age 1.4 y outside the reference range 2.0-20.0 y")
        );
        // M1 at 731 days, 86.5 cm and 12.7 kg, close to the 24-month medians (86.45, 12.67).
        assert!(z[6].unwrap().abs() < 0.05 && z[7].unwrap().abs() < 0.05);
        assert!((pctl[6].unwrap() - 50.0).abs() < 2.0);
        // BMI = 12.7 / 0.865^2 = 12.7 / 0.748225 = 16.973504
        assert!((aval[8].unwrap() - 16.973_504).abs() < 1e-5);
        assert!(reason[6..9].iter().all(Option::is_none));

        // U1: sex null; X9: not in the subjects table.
        assert_eq!(reason[9].as_deref(), Some("sex unknown"));
        assert_eq!(
            reason[12].as_deref(),
            Some("subject `X9` not in `subjects`")
        );
        let lines: Vec<Option<i64>> = out
            .column("SRCLINE")
            .unwrap()
            .i64()
            .unwrap()
            .iter()
            .collect();
        assert_eq!(lines[12], Some(4));
    }

    #[test]
    fn unmapped_sex_and_missing_height_for_bmi() {
        let visits = DataFrame::new_infer_height(vec![
            Column::new("subject".into(), ["M1", "F1"]),
            date_col("date", &[Some("2015-01-01"), Some("2010-01-01")]),
            Column::new("height_cm".into(), [None, Some(140.0)]),
            Column::new("weight_kg".into(), [Some(20.0), Some(35.0)]),
        ])
        .unwrap();
        // Only code 1 mapped: F1 (2) has no reference sex.
        let out = run(&params(&["sex_codes: {1: M}"]), visits, subjects());
        let reason = strs(&out, "ZREASON");
        // F1 first (sorted), then M1.
        assert_eq!(
            reason[0].as_deref(),
            Some("sex `2` unknown to the growth reference")
        );
        assert_eq!(reason[3].as_deref(), Some("height missing"));
        assert_eq!(reason[4], None);
        assert_eq!(reason[5].as_deref(), Some("height missing"));
        // No lineage columns in the input: null in the output.
        assert_eq!(out.column("SRCFILE").unwrap().null_count(), 6);
    }

    #[test]
    fn duplicate_subjects_fail() {
        let subjects = DataFrame::new_infer_height(vec![
            Column::new("subject".into(), ["M1", "M1"]),
            Column::new("sex".into(), ["M", "M"]),
            date_col("birth_date", &[Some("2010-01-01"), Some("2010-01-01")]),
        ])
        .unwrap();
        let visits = DataFrame::new_infer_height(vec![
            Column::new("subject".into(), ["M1"]),
            date_col("date", &[Some("2015-01-01")]),
            Column::new("height_cm".into(), [110.0]),
            Column::new("weight_kg".into(), [20.0]),
        ])
        .unwrap();
        let stage = params(&[]);
        let dir = reference_dir();
        let wide = stage.visits_with_subjects(&visits, "visits", &subjects, "subjects");
        let e = wide.unwrap_err().to_string();
        assert_eq!(
            e,
            "`subjects` must have one row per subject; `M1` appears more than once"
        );
        let text_heights = visits
            .clone()
            .lazy()
            .with_column(col("height_cm").cast(DataType::String))
            .collect()
            .unwrap();
        let e = stage
            .visits_with_subjects(&text_heights, "visits", &subjects, "subjects")
            .unwrap_err();
        assert_eq!(
            e.to_string(),
            "column `height_cm` of `visits` must be a number, found str"
        );
        assert_eq!(
            stage.reference_files(dir),
            vec![dir.join("cdc2000_lms.csv")]
        );
    }

    #[test]
    fn parameters_parse_and_check() {
        let p = params(&[
            "age_range_years: [2.0, 20.0]",
            "sex_codes: {M: M, F: F}",
            "columns: {height: ht}",
        ]);
        assert_eq!(p.columns.height, "ht");
        assert_eq!(p.columns.weight, "weight_kg");
        assert_eq!(p.charts.bmi, "bmi");
        assert!(p.sex_codes.as_ref().unwrap().contains_key("F"));
        assert_eq!(p.table_sex(" F "), Some("F"));
        let p = params(&["sex_codes: {1: M, 2: F}"]);
        assert_eq!(p.table_sex("2"), Some("F"));
        assert_eq!(p.table_sex("3"), None);
        assert!(
            pipeline(&["sex_code: {}"])
                .stage_params::<GrowthZscore>(0)
                .is_err()
        );

        let spec = pipeline(&[]);
        assert_eq!(params(&[]).check(&spec), Vec::<String>::new());
        let bad = params(&[
            "sex_codes: {1: X}",
            "charts: {bmi: bmi_who}",
            "age_range_years: [5, 2]",
        ]);
        let problems = bad.check(&spec);
        assert_eq!(problems.len(), 3, "{problems:?}");
        assert!(problems[0].starts_with("age_range_years"));
        assert!(problems[1].starts_with("chart `bmi_who` for BMI is not in reference"));
        assert!(problems[2].starts_with("sex_codes maps `1` to `X`"));
        let mut missing = params(&[]);
        missing.reference = "nowhere.csv".into();
        assert!(missing.check(&spec)[0].starts_with("cannot read reference"));
    }
}
