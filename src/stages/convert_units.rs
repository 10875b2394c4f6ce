//! Stage kind `convert_units`: measured values to one canonical unit per parameter.
//! Owns the unit table from the YAML, unit-spelling normalisation and censored-value parsing.

use std::fmt;
use std::marker::PhantomData;

use anyhow::bail;
use polars::prelude::*;
use serde::Deserialize;
use serde::de::{Deserializer, MapAccess, Visitor};

use crate::spec::PipelineSpec;
use crate::stages::{
    Inputs, Stage, StageCtx, StageOutput, distinct_rows, spelling_key, spelling_key_expr,
};

/// Converts values to the canonical unit of their parameter (DOMAIN.md 4.1); the parameters,
/// their unit spellings, factors and plausibility limits are all configuration.
///
/// Two table shapes share one `parameters` table:
///
/// * **long** (labs, questionnaires), one measurement per row: `parameter`, `value` and `unit`
///   name the columns holding the parameter name, the value and the unit as written. The name
///   maps to a code of `parameters` through the code itself or its `synonyms`, ignoring case and
///   surrounding spaces. The output keeps every input column except `value` and `unit` and adds
///   `PARAMCD`, `PARAM` (label), `AVAL` (Float64, canonical unit), `AVALU` (canonical unit),
///   `ORIGVAL` (value as written, as text), `ORIGU` (unit as written) and `CENSOR` (`<`, `>`,
///   null).
/// * **wide** (visits), several measurements per row: each entry of `columns` is
///   `{value, unit, parameter, output}` and adds the Float64 column `output` holding `value` in
///   the canonical unit of `parameter` (a code of `parameters`); input columns are all kept.
///
/// ```yaml
/// - name: labs_std
///   kind: convert_units
///   inputs: [labs]
///   parameter: analyte
///   value: value
///   unit: unit
///   decimal: site                 # site (default), "." or ","
///   parameters:
///     CRP:
///       label: C-reactive protein
///       unit: mg/L                # canonical; accepted with factor 1 even when not listed
///       synonyms: [c-reactive protein, c reactive protein]
///       units: {mg/L: 1, mg/dL: 10}   # spelling -> factor to the canonical unit
///       min: 0                    # plausibility limits in the canonical unit, inclusive
///     CREAT:
///       label: Creatinine
///       unit: mg/dL
///       units: {mg/dL: 1, umol/L: 1/88.42}   # a factor may be a fraction, kept unrounded
/// ```
///
/// Rules:
/// * Unit spellings match ignoring case and all spaces, reading `µ` and `μ` as `u`
///   (`mg/dl` = `MG/DL` = `mg / dL`); any other variant (`in`, `inch`, `lbs`) must be listed.
/// * A text value is a number, in the long shape optionally preceded by `<` or `>`: a censored
///   value keeps its limit as AVAL and the sign in CENSOR. The decimal mark is the one of the
///   row's site dialect (`decimal: site`, by the `SITE` column; `.` for a site the pipeline does
///   not declare) or the one given. The other mark, thousands separators and exponents make a
///   value not a number: `1,250` is never guessed to be 1.25 or 1250. Numeric columns are used
///   as they are.
/// * A dropped row gives one reject, for the first check it fails, in this order: `required`
///   (no parameter name), `parameter` (unknown name), `parse` (not a number; in the wide shape
///   also a censored value), `unit` (unit unknown for the parameter, or missing while a value
///   is present), `range` (converted value outside `min`..`max`). The wide shape runs the checks
///   column by column in the order of `columns`, and one failing column rejects the whole row.
/// * A row without a value (null or blank) is kept with a null AVAL (or `output`); its unit,
///   when written, must still be known. A row with neither value nor unit is kept as a
///   missing measurement.
/// * `unit_optional: true` on a parameter reads a missing unit as its canonical unit (for
///   unitless scores); otherwise a missing unit never defaults.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConvertUnits {
    /// Long shape: column with the parameter name as written (e.g. `analyte`).
    #[serde(default)]
    pub parameter: Option<String>,
    /// Long shape: column with the value (text as written, or a number).
    #[serde(default)]
    pub value: Option<String>,
    /// Long shape: column with the unit as written.
    #[serde(default)]
    pub unit: Option<String>,
    /// Wide shape: the measurements of a row.
    #[serde(default)]
    pub columns: Vec<UnitColumn>,
    /// The unit table: parameter code -> its definition, in the order written.
    pub parameters: Ordered<ParameterSpec>,
    /// Decimal mark of text values: `site` (the row's site dialect), `.` or `,`.
    #[serde(default)]
    pub decimal: DecimalMark,
}

/// One measurement of a wide table.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UnitColumn {
    /// Column with the value.
    pub value: String,
    /// Column with its unit.
    pub unit: String,
    /// Code of the parameter under `parameters`.
    pub parameter: String,
    /// New Float64 column with the value in the canonical unit (e.g. `height_cm`).
    pub output: String,
}

/// One parameter of the unit table.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ParameterSpec {
    /// Label written to PARAM.
    pub label: String,
    /// Canonical unit, written to AVALU.
    pub unit: String,
    /// Other names of the parameter in the sites' exports (the code is always a name).
    #[serde(default)]
    pub synonyms: Vec<String>,
    /// Accepted unit spellings and their factor to the canonical unit (number or `a/b`).
    #[serde(default)]
    pub units: Ordered<Factor>,
    /// Smallest plausible value in the canonical unit.
    #[serde(default)]
    pub min: Option<f64>,
    /// Largest plausible value in the canonical unit.
    #[serde(default)]
    pub max: Option<f64>,
    /// A missing unit means the canonical unit (unitless scores only).
    #[serde(default)]
    pub unit_optional: bool,
}

/// A conversion factor: a number, or a fraction `a/b` kept unrounded (`1/88.42`).
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum Factor {
    Number(f64),
    Fraction(String),
}

impl Factor {
    /// The factor as a number; it must be finite and positive.
    fn value(&self) -> Result<f64, String> {
        let v = match self {
            Factor::Number(v) => *v,
            Factor::Fraction(text) => {
                let number = |s: &str| s.trim().parse::<f64>().ok();
                match text.split_once('/') {
                    Some((a, b)) => match (number(a), number(b)) {
                        (Some(a), Some(b)) => a / b,
                        _ => return Err(format!("`{text}` is not a number or a fraction a/b")),
                    },
                    None => number(text)
                        .ok_or_else(|| format!("`{text}` is not a number or a fraction a/b"))?,
                }
            }
        };
        if v.is_finite() && v > 0.0 {
            Ok(v)
        } else {
            Err(format!("factor {v} must be a positive number"))
        }
    }
}

/// Where the decimal mark of text values comes from.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
pub enum DecimalMark {
    /// The `decimal` of the dialect of the row's site.
    #[default]
    #[serde(rename = "site")]
    Site,
    #[serde(rename = ".")]
    Dot,
    #[serde(rename = ",")]
    Comma,
}

/// A YAML mapping kept in the order it was written (messages list units as configured).
#[derive(Debug, Clone)]
pub struct Ordered<V>(pub Vec<(String, V)>);

impl<V> Default for Ordered<V> {
    fn default() -> Self {
        Ordered(Vec::new())
    }
}

impl<'de, V: Deserialize<'de>> Deserialize<'de> for Ordered<V> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct OrderedVisitor<V>(PhantomData<V>);
        impl<'de, V: Deserialize<'de>> Visitor<'de> for OrderedVisitor<V> {
            type Value = Ordered<V>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a mapping")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Ordered<V>, A::Error> {
                let mut entries = Vec::new();
                while let Some(entry) = map.next_entry::<String, V>()? {
                    entries.push(entry);
                }
                Ok(Ordered(entries))
            }
        }
        d.deserialize_map(OrderedVisitor(PhantomData))
    }
}

/// The unit table checked and flattened for lookups.
struct UnitTable {
    parameters: Vec<Parameter>,
    /// Normalised name -> code.
    names: Vec<(String, String)>,
    /// `code SEP normalised unit` -> factor.
    factors: Vec<(String, f64)>,
}

struct Parameter {
    code: String,
    label: String,
    unit: String,
    min: Option<f64>,
    max: Option<f64>,
    /// Normalised canonical unit when a missing unit means it.
    default_unit: Option<String>,
    /// The accepted spellings, for messages.
    accepted: String,
    /// The plausible range, for messages.
    limits: String,
}

const SEP: &str = "\u{1f}";
/// A number with `.` as decimal mark, optionally censored by `<` or `>`.
const NUMBER: &str = r"^(?:([<>])\s*)?([+-]?(?:\d+(?:\.\d*)?|\.\d+))$";

/// The name key of a parameter name: trimmed, lower case.
fn name_key(s: &str) -> String {
    s.trim().to_lowercase()
}

fn name_key_expr(e: Expr) -> Expr {
    e.str().strip_chars(lit(NULL)).str().to_lowercase()
}

/// Looks `key` up in a small table; keys not in it give null.
fn lookup(key: Expr, keys: Vec<String>, values: Series) -> Expr {
    let dtype = values.dtype().clone();
    let keys = Series::new("keys".into(), keys);
    key.replace_strict(lit(keys), lit(values), Some(lit(NULL)), Some(dtype))
}

/// `text` as a literal part of a `format_str` template.
fn literal_braces(text: &str) -> String {
    text.replace('{', "{{").replace('}', "}}")
}

impl ConvertUnits {
    /// Checks the parameters and flattens the unit table, collecting every problem.
    fn compile(&self) -> Result<UnitTable, Vec<String>> {
        let mut problems = Vec::new();
        let long_keys = [&self.parameter, &self.value, &self.unit];
        let long_set = long_keys.iter().filter(|k| k.is_some()).count();
        match (long_set, self.columns.is_empty()) {
            (3, true) | (0, false) => {}
            (0, true) => problems.push(
                "set `parameter`, `value` and `unit` (long table) or `columns` (wide table)".into(),
            ),
            (_, false) => problems.push(
                "`columns` (wide table) cannot be combined with `parameter`, `value` or `unit` (long table)"
                    .into(),
            ),
            (_, true) => {
                problems.push("a long table needs all of `parameter`, `value` and `unit`".into())
            }
        }
        if self.parameters.0.is_empty() {
            problems.push("`parameters` is empty".into());
        }
        let mut table = UnitTable {
            parameters: Vec::new(),
            names: Vec::new(),
            factors: Vec::new(),
        };
        for (code, p) in &self.parameters.0 {
            let at = format!("parameters.{code}");
            if table.parameters.iter().any(|q| &q.code == code) {
                problems.push(format!("{at}: the parameter is defined twice"));
                continue;
            }
            let canonical = spelling_key(&p.unit);
            if canonical.is_empty() {
                problems.push(format!("{at}.unit: the canonical unit is empty"));
            }
            let mut seen: Vec<(String, String)> = Vec::new();
            if !p.units.0.iter().any(|(s, _)| spelling_key(s) == canonical) {
                seen.push((canonical.clone(), p.unit.clone()));
                table.factors.push((format!("{code}{SEP}{canonical}"), 1.0));
            }
            for (spelling, factor) in &p.units.0 {
                let key = spelling_key(spelling);
                if key.is_empty() {
                    problems.push(format!("{at}.units: an empty unit spelling"));
                    continue;
                }
                if let Some((_, first)) = seen.iter().find(|(k, _)| *k == key) {
                    problems.push(format!(
                        "{at}.units: `{spelling}` and `{first}` are one spelling once case, spaces and µ are ignored; list it once"
                    ));
                    continue;
                }
                match factor.value() {
                    Ok(f) if key == canonical && f != 1.0 => problems.push(format!(
                        "{at}.units: the canonical unit `{spelling}` must have factor 1, not {f}"
                    )),
                    Ok(f) => table.factors.push((format!("{code}{SEP}{key}"), f)),
                    Err(e) => problems.push(format!("{at}.units.{spelling}: {e}")),
                }
                seen.push((key, spelling.clone()));
            }
            if let (Some(lo), Some(hi)) = (p.min, p.max)
                && lo > hi
            {
                problems.push(format!("{at}: min {lo} is above max {hi}"));
            }
            for name in std::iter::once(code).chain(&p.synonyms) {
                let key = name_key(name);
                if key.is_empty() {
                    problems.push(format!("{at}.synonyms: an empty name"));
                    continue;
                }
                match table.names.iter().find(|(k, _)| *k == key) {
                    Some((_, other)) if other != code => problems.push(format!(
                        "{at}.synonyms: `{name}` is already a name of {other}"
                    )),
                    Some(_) => {}
                    None => table.names.push((key, code.clone())),
                }
            }
            let unit = &p.unit;
            let limits = match (p.min, p.max) {
                (Some(lo), Some(hi)) => {
                    format!("{lo} to {hi} {unit}")
                }
                (Some(lo), None) => format!("at least {lo} {unit}"),
                (None, Some(hi)) => format!("at most {hi} {unit}"),
                (None, None) => String::new(),
            };
            table.parameters.push(Parameter {
                code: code.clone(),
                label: p.label.clone(),
                unit: p.unit.clone(),
                min: p.min,
                max: p.max,
                default_unit: p.unit_optional.then(|| canonical.clone()),
                accepted: seen
                    .iter()
                    .map(|(_, s)| s.as_str())
                    .collect::<Vec<_>>()
                    .join(", "),
                limits,
            });
        }
        let codes: Vec<&str> = table.parameters.iter().map(|p| p.code.as_str()).collect();
        let mut outputs: Vec<&str> = Vec::new();
        for c in &self.columns {
            if !codes.contains(&c.parameter.as_str()) {
                problems.push(format!(
                    "columns: parameter `{}` is not defined under `parameters` (defined: {})",
                    c.parameter,
                    codes.join(", ")
                ));
            }
            let is_input = self
                .columns
                .iter()
                .any(|d| d.value == c.output || d.unit == c.output);
            if outputs.contains(&c.output.as_str()) || is_input {
                problems.push(format!(
                    "columns: output `{}` is written twice or overwrites an input column",
                    c.output
                ));
            }
            outputs.push(&c.output);
        }
        if problems.is_empty() {
            Ok(table)
        } else {
            Err(problems)
        }
    }

    /// The decimal mark of each row, `.` or `,`.
    fn mark_expr(&self, ctx: &StageCtx, schema: &Schema) -> Expr {
        match self.decimal {
            DecimalMark::Dot => lit("."),
            DecimalMark::Comma => lit(","),
            DecimalMark::Site => {
                let mut names = Vec::new();
                let mut marks = Vec::new();
                for site in &ctx.spec.sites {
                    if !names.contains(&site.value.name) {
                        names.push(site.value.name.clone());
                        marks.push(site.value.dialect.decimal.clone());
                    }
                }
                if schema.contains("SITE") && marks.iter().any(|m| m == ",") {
                    let marks = Series::new("marks".into(), marks);
                    lookup(col("SITE").cast(DataType::String), names, marks).fill_null(lit("."))
                } else {
                    lit(".")
                }
            }
        }
    }
}

/// Names of the working columns of measurement `i`.
struct Work {
    raw: String,
    num: String,
    censor: String,
    unit: String,
    ukey: String,
    factor: String,
    aval: String,
}

impl Work {
    fn new(i: usize) -> Work {
        let n = |s: &str| format!("__cu_{s}_{i}");
        Work {
            raw: n("raw"),
            num: n("num"),
            censor: n("censor"),
            unit: n("unit"),
            ukey: n("ukey"),
            factor: n("factor"),
            aval: n("aval"),
        }
    }
}

/// What a measurement needs to know about its parameter, as expressions looked up by code.
struct ParamExprs {
    code: Expr,
    label: Expr,
    unit: Expr,
    min: Expr,
    max: Expr,
    accepted: Expr,
    limits: Expr,
    default_unit: Expr,
}

impl ParamExprs {
    /// Looks the parameter up by `code`: a column of codes (long) or a literal (wide).
    fn by_code(table: &UnitTable, code: Expr) -> ParamExprs {
        let keys: Vec<String> = table.parameters.iter().map(|p| p.code.clone()).collect();
        let text = |f: &dyn Fn(&Parameter) -> Option<String>| {
            let values: Vec<Option<String>> = table.parameters.iter().map(f).collect();
            lookup(code.clone(), keys.clone(), Series::new("v".into(), values))
        };
        let number = |f: &dyn Fn(&Parameter) -> Option<f64>| {
            let values: Vec<Option<f64>> = table.parameters.iter().map(f).collect();
            lookup(code.clone(), keys.clone(), Series::new("v".into(), values))
        };
        ParamExprs {
            label: text(&|p| Some(p.label.clone())),
            unit: text(&|p| Some(p.unit.clone())),
            min: number(&|p| p.min),
            max: number(&|p| p.max),
            accepted: text(&|p| Some(p.accepted.clone())),
            limits: text(&|p| Some(p.limits.clone())),
            default_unit: text(&|p| p.default_unit.clone()),
            code,
        }
    }
}

/// A reason to drop a row; the first that holds wins.
struct Check {
    cond: Expr,
    rule: &'static str,
    column: String,
    raw: Expr,
    reason: Expr,
}

/// One measurement: a value column and a unit column of one parameter.
struct Measurement<'a> {
    work: Work,
    value: &'a str,
    unit: &'a str,
    value_is_text: bool,
    param: ParamExprs,
    /// Wide shape: a censored value cannot be kept.
    censor_allowed: bool,
}

impl Measurement<'_> {
    /// Working columns, in the order they can be computed.
    fn columns(&self, mark: &Expr, factor_keys: &[(String, f64)]) -> [Vec<Expr>; 3] {
        let w = &self.work;
        let mut raw = col(self.value).cast(DataType::String);
        let (num, censor) = if self.value_is_text {
            let comma = mark.clone().eq(lit(","));
            let text = col(self.value).str().strip_chars(lit(NULL));
            // Blank text is a missing value, as a blank unit is a missing unit.
            raw = when(text.clone().eq(lit("")))
                .then(lit(NULL).cast(DataType::String))
                .otherwise(raw);
            // The other mark is never read: `1,250` at a `.` site may be a thousands separator.
            let foreign = when(comma.clone())
                .then(text.clone().str().contains_literal(lit(".")))
                .otherwise(text.clone().str().contains_literal(lit(",")));
            let dotted = when(comma)
                .then(text.clone().str().replace_all(lit(","), lit("."), true))
                .otherwise(text);
            let usable = when(foreign)
                .then(lit(NULL).cast(DataType::String))
                .otherwise(dotted);
            (
                usable
                    .clone()
                    .str()
                    .extract(lit(NUMBER), 2)
                    .cast(DataType::Float64),
                usable.str().extract(lit(NUMBER), 1),
            )
        } else {
            (
                col(self.value).cast(DataType::Float64),
                lit(NULL).cast(DataType::String),
            )
        };
        let ukey = spelling_key_expr(col(self.unit).cast(DataType::String))
            .fill_null(self.param.default_unit.clone());
        let first = vec![
            raw.alias(&w.raw),
            num.alias(&w.num),
            censor.alias(&w.censor),
            col(self.unit).cast(DataType::String).alias(&w.unit),
            ukey.alias(&w.ukey),
        ];
        let keys: Vec<String> = factor_keys.iter().map(|(k, _)| k.clone()).collect();
        let factors = Series::new(
            "factors".into(),
            factor_keys.iter().map(|(_, f)| *f).collect::<Vec<f64>>(),
        );
        let factor_key = concat_str([self.param.code.clone(), col(&w.ukey)], SEP, false);
        let second = vec![lookup(factor_key, keys, factors).alias(&w.factor)];
        let third = vec![(col(&w.num) * col(&w.factor)).alias(&w.aval)];
        [first, second, third]
    }

    fn checks(&self) -> PolarsResult<Vec<Check>> {
        let w = &self.work;
        let p = &self.param;
        let mut checks = vec![Check {
            cond: col(&w.raw).is_not_null().and(col(&w.num).is_null()),
            rule: "parse",
            column: self.value.to_string(),
            raw: col(&w.raw),
            reason: format_str(
                "`{}` is not a number for {} (decimal mark `{}`, no thousands separator)",
                &[col(&w.raw), p.code.clone(), col(MARK)],
            )?,
        }];
        if !self.censor_allowed {
            checks.push(Check {
                cond: col(&w.censor).is_not_null(),
                rule: "parse",
                column: self.value.to_string(),
                raw: col(&w.raw),
                reason: format_str(
                    "censored value `{}` for {} cannot be kept in this wide table",
                    &[col(&w.raw), p.code.clone()],
                )?,
            });
        }
        checks.push(Check {
            cond: col(&w.ukey).is_not_null().and(col(&w.factor).is_null()),
            rule: "unit",
            column: self.unit.to_string(),
            raw: col(&w.unit),
            reason: format_str(
                "unknown unit `{}` for {}; accepted: {}",
                &[col(&w.unit), p.code.clone(), p.accepted.clone()],
            )?,
        });
        checks.push(Check {
            cond: col(&w.ukey).is_null().and(col(&w.num).is_not_null()),
            rule: "unit",
            column: self.unit.to_string(),
            raw: col(&w.unit),
            reason: format_str(
                "missing unit for {} value `{}`; accepted: {}",
                &[p.code.clone(), col(&w.raw), p.accepted.clone()],
            )?,
        });
        let aval = col(&w.aval);
        let below = aval.clone().lt(p.min.clone()).fill_null(lit(false));
        let above = aval.clone().gt(p.max.clone()).fill_null(lit(false));
        checks.push(Check {
            cond: below.or(above),
            rule: "range",
            column: self.value.to_string(),
            raw: col(&w.raw),
            reason: format_str(
                "{} {} {} (written `{} {}`) is outside the plausible range {}",
                &[
                    p.code.clone(),
                    aval.round(6, RoundMode::HalfToEven).cast(DataType::String),
                    p.unit.clone(),
                    col(&w.raw),
                    col(&w.unit).fill_null(lit("")),
                    p.limits.clone(),
                ],
            )?,
        });
        Ok(checks)
    }
}

/// The first failing check of each row: its rule, column and raw value (null when every
/// check passes), and the expression of its reason. The reason is a formatted text, so it is
/// evaluated on the rejected rows alone ([`rejects_of`]), not on every row.
fn first_failure(checks: Vec<Check>) -> (Vec<Expr>, Expr) {
    let null = || lit(NULL).cast(DataType::String);
    let (mut rule, mut column, mut raw, mut reason) = (null(), null(), null(), null());
    for c in checks.into_iter().rev() {
        let cond = c.cond.fill_null(lit(false));
        rule = when(cond.clone()).then(lit(c.rule)).otherwise(rule);
        column = when(cond.clone()).then(lit(c.column)).otherwise(column);
        raw = when(cond.clone())
            .then(c.raw.cast(DataType::String))
            .otherwise(raw);
        reason = when(cond).then(c.reason).otherwise(reason);
    }
    (
        vec![
            rule.alias("RULE"),
            column.alias("COLUMN"),
            raw.alias("RAWVALUE"),
        ],
        reason.alias("REASON"),
    )
}

/// The rejects of the annotated rows, in the shape of [`crate::rejects`], with their reason.
fn rejects_of(annotated: &DataFrame, reason: Expr) -> PolarsResult<DataFrame> {
    let schema = annotated.schema();
    let text = |name: &str| {
        if schema.contains(name) {
            col(name).cast(DataType::String)
        } else {
            lit(NULL).cast(DataType::String).alias(name)
        }
    };
    let line = if schema.contains("SRCLINE") {
        col("SRCLINE").cast(DataType::Int64)
    } else {
        lit(NULL).cast(DataType::Int64).alias("SRCLINE")
    };
    annotated
        .clone()
        .lazy()
        .filter(col("RULE").is_not_null())
        .select([
            text("SRCFILE"),
            line,
            text("SITE"),
            col("COLUMN"),
            col("RAWVALUE"),
            col("RULE"),
            reason,
        ])
        .collect()
}

fn require_column(schema: &Schema, name: &str, what: &str) -> anyhow::Result<()> {
    if schema.contains(name) {
        return Ok(());
    }
    let names: Vec<&str> = schema.iter_names().map(|n| n.as_str()).collect();
    bail!(
        "{what} column `{name}` is not in the input (columns: {})",
        names.join(", ")
    )
}

fn is_text(schema: &Schema, name: &str) -> anyhow::Result<bool> {
    match schema.get(name) {
        Some(DataType::String) => Ok(true),
        Some(dt) if dt.is_primitive_numeric() || dt.is_null() => Ok(false),
        Some(dt) => bail!("value column `{name}` is {dt}, not text or a number"),
        None => Ok(false),
    }
}

/// What a table shape adds around its measurements.
struct Shape<'a> {
    /// Columns computed before the measurements.
    before: Vec<Expr>,
    /// Checks that come before the measurements' own.
    checks: Vec<Check>,
    measurements: Vec<Measurement<'a>>,
    /// The output columns, selected from the annotated rows.
    output: Vec<Expr>,
    /// The input columns the annotation reads (besides `SITE`, for the decimal mark).
    reads: Vec<String>,
}

const MARK: &str = "__cu_mark";
const NAME: &str = "__cu_name";
const CODE: &str = "__cu_code";
const LONG_OUTPUTS: [&str; 7] = [
    "PARAMCD", "PARAM", "AVAL", "AVALU", "ORIGVAL", "ORIGU", "CENSOR",
];

impl ConvertUnits {
    fn long_shape<'a>(
        &self,
        table: &UnitTable,
        schema: &Schema,
        (p, v, u): (&'a str, &'a str, &'a str),
    ) -> anyhow::Result<Shape<'a>> {
        require_column(schema, p, "parameter")?;
        require_column(schema, v, "value")?;
        require_column(schema, u, "unit")?;
        let kept: Vec<&str> = schema
            .iter_names()
            .map(|n| n.as_str())
            .filter(|n| *n != v && *n != u)
            .collect();
        if let Some(name) = LONG_OUTPUTS.iter().find(|n| kept.contains(n)) {
            bail!("the input already has a column `{name}`");
        }
        let name = col(p).cast(DataType::String);
        let codes = Series::new(
            "codes".into(),
            table
                .names
                .iter()
                .map(|(_, c)| c.clone())
                .collect::<Vec<_>>(),
        );
        let names = table.names.iter().map(|(k, _)| k.clone()).collect();
        let code = lookup(name_key_expr(name.clone()), names, codes);
        let known: Vec<&str> = table.parameters.iter().map(|q| q.code.as_str()).collect();
        let checks = vec![
            Check {
                cond: col(NAME).is_null(),
                rule: "required",
                column: p.to_string(),
                raw: col(NAME),
                reason: lit(format!("missing {p}: the row names no parameter")),
            },
            Check {
                cond: col(CODE).is_null(),
                rule: "parameter",
                column: p.to_string(),
                raw: col(NAME),
                reason: format_str(
                    &format!(
                        "unknown {} `{{}}`; known parameters: {} (or their synonyms)",
                        literal_braces(p),
                        literal_braces(&known.join(", "))
                    ),
                    &[col(NAME)],
                )?,
            },
        ];
        let param = ParamExprs::by_code(table, col(CODE));
        let work = Work::new(0);
        let output = kept
            .into_iter()
            .map(col)
            .chain([
                col(CODE).alias("PARAMCD"),
                param.label.clone().alias("PARAM"),
                col(&work.aval).alias("AVAL"),
                param.unit.clone().alias("AVALU"),
                col(&work.raw).alias("ORIGVAL"),
                col(&work.unit).alias("ORIGU"),
                col(&work.censor).alias("CENSOR"),
            ])
            .collect();
        let measurement = Measurement {
            work,
            value: v,
            unit: u,
            value_is_text: is_text(schema, v)?,
            param,
            censor_allowed: true,
        };
        Ok(Shape {
            before: vec![name.alias(NAME), code.alias(CODE)],
            checks,
            measurements: vec![measurement],
            output,
            reads: vec![p.to_string(), v.to_string(), u.to_string()],
        })
    }

    fn wide_shape(&self, table: &UnitTable, schema: &Schema) -> anyhow::Result<Shape<'_>> {
        let mut measurements = Vec::new();
        let mut before = Vec::new();
        let mut output: Vec<Expr> = schema.iter_names().map(|n| col(n.as_str())).collect();
        for (i, c) in self.columns.iter().enumerate() {
            require_column(schema, &c.value, "value")?;
            require_column(schema, &c.unit, "unit")?;
            if schema.contains(&c.output) {
                bail!("the input already has a column `{}`", c.output);
            }
            // A column of the code, not a literal: lookups on a literal give one row.
            let code = format!("{CODE}_{i}");
            before.push(lit(c.parameter.clone()).alias(&code));
            let work = Work::new(i);
            output.push(col(&work.aval).alias(&c.output));
            measurements.push(Measurement {
                work,
                value: &c.value,
                unit: &c.unit,
                value_is_text: is_text(schema, &c.value)?,
                param: ParamExprs::by_code(table, col(&code)),
                censor_allowed: false,
            });
        }
        let reads = self
            .columns
            .iter()
            .flat_map(|c| [c.value.clone(), c.unit.clone()])
            .collect();
        Ok(Shape {
            before,
            checks: Vec::new(),
            measurements,
            output,
            reads,
        })
    }

    /// Converts `input`; `by_distinct` works once per distinct combination of the columns the
    /// conversion reads (else row by row; the same rows, the tests check).
    fn convert(
        &self,
        ctx: &StageCtx,
        input: &DataFrame,
        by_distinct: bool,
    ) -> anyhow::Result<StageOutput> {
        let table = self.compile().map_err(|p| anyhow::anyhow!(p.join("; ")))?;
        let schema = input.schema().clone();
        let shape = match (&self.parameter, &self.value, &self.unit) {
            (Some(p), Some(v), Some(u)) => self.long_shape(&table, &schema, (p, v, u))?,
            _ => self.wide_shape(&table, &schema)?,
        };
        // Every working column is a function of the columns the shape reads and the site's
        // decimal mark: it is made once per distinct combination of them (lab results repeat:
        // 13,000 combinations in 900,000 bench rows) and gathered back to the rows.
        let mut reads = shape.reads.clone();
        if schema.contains("SITE") && !reads.iter().any(|r| r == "SITE") {
            reads.push("SITE".into());
        }
        let distinct = match by_distinct {
            true => distinct_rows(input, &reads)?,
            false => None,
        };
        let of = match &distinct {
            Some((_, firsts)) => input
                .select(reads.iter().map(|r| r.as_str()))?
                .take(firsts)?,
            None => input.clone(),
        };
        let mut frame = of
            .lazy()
            .with_column(self.mark_expr(ctx, &schema).alias(MARK));
        if !shape.before.is_empty() {
            frame = frame.with_columns(shape.before);
        }
        let steps: Vec<[Vec<Expr>; 3]> = shape
            .measurements
            .iter()
            .map(|m| m.columns(&col(MARK), &table.factors))
            .collect();
        for step in 0..3 {
            frame = frame.with_columns(
                steps
                    .iter()
                    .flat_map(|s| s[step].clone())
                    .collect::<Vec<_>>(),
            );
        }
        let mut checks = shape.checks;
        for m in &shape.measurements {
            checks.extend(m.checks()?);
        }
        let (annotation, reason) = first_failure(checks);
        let annotated = frame.with_columns(annotation).collect()?;
        let annotated = match &distinct {
            Some((ids, _)) => {
                let mut rows = input.clone();
                for c in annotated.columns() {
                    if !reads.iter().any(|r| r.as_str() == c.name().as_str()) {
                        rows.with_column(c.take(ids)?)?;
                    }
                }
                rows
            }
            None => annotated,
        };
        Ok(StageOutput {
            rejects: Some(rejects_of(&annotated, reason)?),
            table: annotated
                .lazy()
                .filter(col("RULE").is_null())
                .select(shape.output),
            dropped: None,
            files: Vec::new(),
            rows_of_input: None,
        })
    }
}

impl Stage for ConvertUnits {
    /// Row by row.
    fn across_subjects(&self, _subject_columns: &[String]) -> Option<String> {
        None
    }

    fn row_level(&self) -> bool {
        true
    }

    fn check(&self, _spec: &PipelineSpec) -> Vec<String> {
        self.compile().err().unwrap_or_default()
    }

    fn run(&self, ctx: &StageCtx, inputs: &Inputs) -> anyhow::Result<StageOutput> {
        self.convert(ctx, inputs.first(), true)
            .map_err(|e| anyhow::anyhow!("stage `{}`: {e:#}", ctx.name))
    }
}
#[cfg(test)]
mod tests {
    use std::path::Path;

    use chrono::NaiveDate;
    use proptest::prelude::*;

    use super::*;

    const LABS: &str = r#"
  - name: labs_std
    kind: convert_units
    inputs: [labs]
    parameter: analyte
    value: value
    unit: unit
    parameters:
      CRP:
        label: C-reactive protein
        unit: mg/L
        synonyms: [c-reactive protein]
        units: {mg/L: 1, mg/dL: 10}
        min: 0
        max: 1000
      CREAT:
        label: Creatinine
        unit: mg/dL
        units: {mg/dL: 1, umol/L: 1/88.42}
        min: 0
"#;

    const VISITS: &str = r#"
  - name: visits_std
    kind: convert_units
    inputs: [visits]
    columns:
      - {value: height, unit: height_unit, parameter: HEIGHT, output: height_cm}
      - {value: weight, unit: weight_unit, parameter: WEIGHT, output: weight_kg}
    parameters:
      HEIGHT:
        label: Height
        unit: cm
        units: {cm: 1, in: 2.54, inch: 2.54, inches: 2.54, m: 100}
        min: 40
        max: 220
      WEIGHT:
        label: Weight
        unit: kg
        units: {kg: 1, lb: 0.45359237, lbs: 0.45359237, g: 0.001}
        min: 2
        max: 200
"#;

    /// A pipeline with a `.` site (nih) and a `,` site (eu) around one stage.
    fn spec(stage: &str) -> PipelineSpec {
        let text = format!(
            "pipeline: t\nsites:\n  - name: nih\n    dialect: {{}}\n  - name: eu\n    dialect: {{decimal: \",\"}}\nstages:{stage}"
        );
        PipelineSpec::parse(Path::new("p.yaml"), text).unwrap()
    }

    fn convert(spec: &PipelineSpec, input: DataFrame) -> (DataFrame, DataFrame) {
        convert_with(spec, 0, input)
    }

    /// The context of a stage `t` of `spec`.
    fn ctx(spec: &PipelineSpec) -> StageCtx<'_> {
        StageCtx {
            name: "t",
            spec,
            run_date: NaiveDate::from_ymd_opt(2020, 1, 1).unwrap(),
            data_dir: Path::new("."),
            base_dir: Path::new("."),
            sources: &[],
        }
    }

    fn convert_with(spec: &PipelineSpec, index: usize, input: DataFrame) -> (DataFrame, DataFrame) {
        let stage: ConvertUnits = spec.stage_params(index).unwrap();
        assert_eq!(stage.check(spec), Vec::<String>::new());
        let ctx = ctx(spec);
        let inputs = Inputs {
            tables: vec![("in".into(), input)],
        };
        let out = stage.run(&ctx, &inputs).unwrap();
        (out.table.collect().unwrap(), out.rejects.unwrap())
    }

    /// The table and rejects of the stage at `index`, working once per distinct combination
    /// of the columns it reads and working row by row.
    fn both_ways(
        spec: &PipelineSpec,
        index: usize,
        input: &DataFrame,
    ) -> [(DataFrame, DataFrame); 2] {
        let stage: ConvertUnits = spec.stage_params(index).unwrap();
        let ctx = ctx(spec);
        [true, false].map(|by_distinct| {
            let out = stage.convert(&ctx, input, by_distinct).unwrap();
            (out.table.collect().unwrap(), out.rejects.unwrap())
        })
    }

    /// A lab row: site, analyte, value and unit as written.
    type LabRow<'a> = (&'a str, Option<&'a str>, Option<&'a str>, Option<&'a str>);

    fn labs(rows: &[LabRow]) -> DataFrame {
        let n = rows.len();
        df!(
            "SRCFILE" => vec!["site/labs.csv"; n],
            "SRCLINE" => (2..2 + n as i64).collect::<Vec<_>>(),
            "SITE" => rows.iter().map(|r| r.0).collect::<Vec<_>>(),
            "subject" => vec!["C1"; n],
            "analyte" => rows.iter().map(|r| r.1).collect::<Vec<_>>(),
            "value" => rows.iter().map(|r| r.2).collect::<Vec<_>>(),
            "unit" => rows.iter().map(|r| r.3).collect::<Vec<_>>(),
        )
        .unwrap()
    }

    fn floats(df: &DataFrame, name: &str) -> Vec<Option<f64>> {
        df.column(name).unwrap().f64().unwrap().iter().collect()
    }

    fn texts(df: &DataFrame, name: &str) -> Vec<Option<String>> {
        df.column(name)
            .unwrap()
            .str()
            .unwrap()
            .iter()
            .map(|s| s.map(str::to_string))
            .collect()
    }

    fn lines(df: &DataFrame) -> Vec<i64> {
        df.column("SRCLINE")
            .unwrap()
            .i64()
            .unwrap()
            .iter()
            .flatten()
            .collect()
    }

    fn assert_close(got: &[Option<f64>], want: &[Option<f64>]) {
        assert_eq!(got.len(), want.len(), "{got:?} vs {want:?}");
        for (g, w) in got.iter().zip(want) {
            match (g, w) {
                (Some(g), Some(w)) => assert!((g - w).abs() < 1e-9, "{got:?} vs {want:?}"),
                (None, None) => {}
                _ => panic!("{got:?} vs {want:?}"),
            }
        }
    }

    #[test]
    fn unit_spellings_of_one_unit_convert_alike() {
        let input = labs(&[
            ("nih", Some("CRP"), Some("1.2"), Some("mg/dl")),
            ("nih", Some(" crp "), Some("0.5"), Some("MG/DL")),
            (
                "nih",
                Some("C-Reactive Protein"),
                Some("3"),
                Some("mg / dL"),
            ),
            ("nih", Some("CREAT"), Some("88.42"), Some("umol/L")),
            ("nih", Some("CREAT"), Some("176.84"), Some("µmol/L")),
            ("nih", Some("creat"), Some("1"), Some("μmol/l")),
            ("nih", Some("CREAT"), Some("0.9"), Some("mg/dL")),
        ]);
        let (out, rejects) = convert(&spec(LABS), input);
        assert_eq!(rejects.height(), 0, "{rejects}");
        assert_close(
            &floats(&out, "AVAL"),
            &[
                Some(12.0),
                Some(5.0),
                Some(30.0),
                Some(1.0),
                Some(2.0),
                Some(1.0 / 88.42),
                Some(0.9),
            ],
        );
        let codes = texts(&out, "PARAMCD");
        assert_eq!(codes[2].as_deref(), Some("CRP"));
        assert_eq!(codes[5].as_deref(), Some("CREAT"));
        assert_eq!(texts(&out, "AVALU")[0].as_deref(), Some("mg/L"));
        assert_eq!(texts(&out, "PARAM")[3].as_deref(), Some("Creatinine"));
        assert_eq!(texts(&out, "ORIGU")[1].as_deref(), Some("MG/DL"));
        assert_eq!(texts(&out, "ORIGVAL")[4].as_deref(), Some("176.84"));
        let names: Vec<&str> = out.get_column_names().iter().map(|n| n.as_str()).collect();
        assert_eq!(
            names,
            [
                "SRCFILE", "SRCLINE", "SITE", "subject", "analyte", "PARAMCD", "PARAM", "AVAL",
                "AVALU", "ORIGVAL", "ORIGU", "CENSOR"
            ]
        );
    }

    #[test]
    fn censored_values_keep_their_limit_and_sign() {
        let input = labs(&[
            ("nih", Some("CRP"), Some("<0.5"), Some("mg/L")),
            ("nih", Some("CRP"), Some("> 100"), Some("mg/dL")),
            ("nih", Some("CRP"), Some("4"), Some("mg/L")),
        ]);
        let (out, rejects) = convert(&spec(LABS), input);
        assert_eq!(rejects.height(), 0, "{rejects}");
        assert_close(&floats(&out, "AVAL"), &[Some(0.5), Some(1000.0), Some(4.0)]);
        assert_eq!(
            texts(&out, "CENSOR"),
            [Some("<".to_string()), Some(">".to_string()), None]
        );
        assert_eq!(texts(&out, "ORIGVAL")[1].as_deref(), Some("> 100"));
    }

    #[test]
    fn decimal_mark_is_the_sites() {
        let input = labs(&[
            ("eu", Some("CRP"), Some("1,25"), Some("mg/L")),
            ("nih", Some("CRP"), Some("1.25"), Some("mg/L")),
            ("nih", Some("CRP"), Some("1,25"), Some("mg/L")),
            ("eu", Some("CRP"), Some("1.250"), Some("mg/L")),
            ("eu", Some("CRP"), Some("<0,5"), Some("mg/dL")),
        ]);
        let (out, rejects) = convert(&spec(LABS), input);
        assert_close(&floats(&out, "AVAL"), &[Some(1.25), Some(1.25), Some(5.0)]);
        assert_eq!(lines(&rejects), [4, 5]);
        assert_eq!(
            texts(&rejects, "RULE"),
            [Some("parse".into()), Some("parse".into())]
        );
        assert_eq!(
            texts(&rejects, "REASON")[0].as_deref(),
            Some("`1,25` is not a number for CRP (decimal mark `.`, no thousands separator)")
        );
        assert_eq!(texts(&rejects, "RAWVALUE")[1].as_deref(), Some("1.250"));
    }

    #[test]
    fn a_fixed_decimal_mark_overrides_the_sites() {
        let yaml = LABS.replace("unit: unit\n", "unit: unit\n    decimal: \",\"\n");
        let input = labs(&[
            ("nih", Some("CRP"), Some("1,5"), Some("mg/L")),
            ("nih", Some("CRP"), Some("1.5"), Some("mg/L")),
        ]);
        let (out, rejects) = convert(&spec(&yaml), input);
        assert_close(&floats(&out, "AVAL"), &[Some(1.5)]);
        assert_eq!(
            texts(&rejects, "REASON")[0].as_deref(),
            Some("`1.5` is not a number for CRP (decimal mark `,`, no thousands separator)")
        );
        let yaml = LABS.replace("unit: unit\n", "unit: unit\n    decimal: \".\"\n");
        let input = labs(&[("eu", Some("CRP"), Some("1,5"), Some("mg/L"))]);
        let (_, rejects) = convert(&spec(&yaml), input);
        assert_eq!(texts(&rejects, "RULE"), [Some("parse".to_string())]);
    }

    #[test]
    fn unknown_unit_and_parameter_are_rejected_with_reasons() {
        let input = labs(&[
            ("nih", Some("CRP"), Some("2"), Some("mg/dL2")),
            ("nih", Some("ESR"), Some("10"), Some("mm/h")),
            ("nih", Some("CRP"), Some("3"), None),
            ("nih", None, Some("3"), Some("mg/L")),
            ("nih", Some("CRP"), Some("abc"), Some("mg/L")),
            ("nih", Some("CRP"), Some("1"), Some("mg/L")),
        ]);
        let (out, rejects) = convert(&spec(LABS), input);
        assert_eq!(lines(&out), [7]);
        assert_eq!(lines(&rejects), [2, 3, 4, 5, 6]);
        let rules: Vec<_> = texts(&rejects, "RULE").into_iter().flatten().collect();
        assert_eq!(rules, ["unit", "parameter", "unit", "required", "parse"]);
        let columns: Vec<_> = texts(&rejects, "COLUMN").into_iter().flatten().collect();
        assert_eq!(columns, ["unit", "analyte", "unit", "analyte", "value"]);
        let reasons: Vec<_> = texts(&rejects, "REASON").into_iter().flatten().collect();
        assert_eq!(
            reasons[0],
            "unknown unit `mg/dL2` for CRP; accepted: mg/L, mg/dL"
        );
        assert_eq!(
            reasons[1],
            "unknown analyte `ESR`; known parameters: CRP, CREAT (or their synonyms)"
        );
        assert_eq!(
            reasons[2],
            "missing unit for CRP value `3`; accepted: mg/L, mg/dL"
        );
        let raw = texts(&rejects, "RAWVALUE");
        assert_eq!(raw[0].as_deref(), Some("mg/dL2"));
        assert_eq!(raw[2], None);
        assert_eq!(
            texts(&rejects, "SRCFILE")[0].as_deref(),
            Some("site/labs.csv")
        );
        assert_eq!(texts(&rejects, "SITE")[0].as_deref(), Some("nih"));
        let names: Vec<&str> = rejects
            .get_column_names()
            .iter()
            .map(|n| n.as_str())
            .collect();
        assert_eq!(
            names,
            [
                "SRCFILE", "SRCLINE", "SITE", "COLUMN", "RAWVALUE", "RULE", "REASON"
            ]
        );
    }

    #[test]
    fn out_of_range_after_conversion_is_rejected() {
        let input = labs(&[
            ("nih", Some("CRP"), Some("200"), Some("mg/dL")),
            ("nih", Some("CRP"), Some("100"), Some("mg/dL")),
            ("nih", Some("CRP"), Some("-1"), Some("mg/L")),
        ]);
        let (out, rejects) = convert(&spec(LABS), input);
        assert_eq!(lines(&out), [3]);
        assert_eq!(lines(&rejects), [2, 4]);
        assert_eq!(
            texts(&rejects, "REASON")[0].as_deref(),
            Some(
                "CRP 2000.0 mg/L (written `200 mg/dL`) is outside the plausible range 0 to 1000 mg/L"
            )
        );
        assert_eq!(texts(&rejects, "COLUMN")[1].as_deref(), Some("value"));
    }

    #[test]
    fn a_missing_value_is_kept_with_null_aval() {
        let input = labs(&[
            ("nih", Some("CRP"), None, None),
            ("nih", Some("CRP"), None, Some("mg/dL")),
            ("nih", Some("CRP"), None, Some("furlongs")),
            ("nih", Some("CRP"), Some(" "), Some(" ")),
        ]);
        let (out, rejects) = convert(&spec(LABS), input);
        assert_eq!(lines(&out), [2, 3, 5]);
        assert_close(&floats(&out, "AVAL"), &[None, None, None]);
        assert_eq!(texts(&out, "AVALU")[0].as_deref(), Some("mg/L"));
        assert_eq!(texts(&rejects, "RULE"), [Some("unit".to_string())]);
    }

    #[test]
    fn numeric_value_columns_are_used_as_they_are() {
        let yaml = r#"
  - name: q
    kind: convert_units
    parameter: instrument
    value: score
    unit: unit
    parameters:
      MDGLOBAL:
        label: Physician global assessment (VAS)
        unit: mm
        units: {mm: 1, cm: 10}
        min: 0
        max: 100
"#;
        let input = df!(
            "SRCLINE" => [2i64, 3, 4],
            "instrument" => ["mdglobal", "MDGLOBAL", "MDGLOBAL"],
            "score" => [4.5, 45.0, 12.0],
            "unit" => ["cm", "mm", "cm"],
        )
        .unwrap();
        let (out, rejects) = convert(&spec(yaml), input);
        assert_close(&floats(&out, "AVAL"), &[Some(45.0), Some(45.0)]);
        assert_eq!(texts(&out, "ORIGVAL")[0].as_deref(), Some("4.5"));
        assert_eq!(lines(&rejects), [4]);
        assert_eq!(texts(&rejects, "SRCFILE"), [None]);
    }

    fn visits() -> DataFrame {
        df!(
            "SRCLINE" => (2..10i64).collect::<Vec<_>>(),
            "SITE" => ["nih"; 8],
            "height" => [Some(150.0), Some(60.0), Some(1.5), Some(60.0), Some(300.0), Some(150.0), None, Some(10.0)],
            "height_unit" => [Some("cm"), Some("in"), Some("M"), Some("Inches"), Some("cm"), Some("cm"), None, Some("inch")],
            "weight" => [40.0, 100.0, 40000.0, 88.0, 40.0, 40.0, 20.0, 20.0],
            "weight_unit" => ["kg", "lb", "g", "LBS", "kg", "stone", "kg", "kg"],
        )
        .unwrap()
    }

    #[test]
    fn wide_columns_convert_to_their_canonical_columns() {
        let (out, rejects) = convert(&spec(VISITS), visits());
        assert_eq!(lines(&out), [2, 3, 4, 5, 8]);
        assert_close(
            &floats(&out, "height_cm"),
            &[Some(150.0), Some(152.4), Some(150.0), Some(152.4), None],
        );
        assert_close(
            &floats(&out, "weight_kg"),
            &[
                Some(40.0),
                Some(45.359237),
                Some(40.0),
                Some(88.0 * 0.45359237),
                Some(20.0),
            ],
        );
        assert_close(&floats(&out, "height")[..2], &[Some(150.0), Some(60.0)]);
        assert_eq!(lines(&rejects), [6, 7, 9]);
        let columns: Vec<_> = texts(&rejects, "COLUMN").into_iter().flatten().collect();
        assert_eq!(columns, ["height", "weight_unit", "height"]);
        let reasons: Vec<_> = texts(&rejects, "REASON").into_iter().flatten().collect();
        assert_eq!(
            reasons[1],
            "unknown unit `stone` for WEIGHT; accepted: kg, lb, lbs, g"
        );
        assert_eq!(
            reasons[2],
            "HEIGHT 25.4 cm (written `10.0 inch`) is outside the plausible range 40 to 220 cm"
        );
    }

    #[test]
    fn wide_text_values_reject_censoring() {
        let input = df!(
            "SRCLINE" => [2i64, 3, 4],
            "height" => ["<50", "150", "1,5"],
            "height_unit" => ["cm", "cm", "m"],
            "weight" => [Some(40.0), None, Some(40.0)],
            "weight_unit" => [Some("kg"), None, Some("kg")],
        )
        .unwrap();
        let (out, rejects) = convert(&spec(VISITS), input);
        assert_eq!(lines(&out), [3]);
        assert_close(&floats(&out, "weight_kg"), &[None]);
        assert_eq!(
            texts(&rejects, "REASON"),
            [
                Some("censored value `<50` for HEIGHT cannot be kept in this wide table".into()),
                Some(
                    "`1,5` is not a number for HEIGHT (decimal mark `.`, no thousands separator)"
                        .into()
                )
            ]
        );
    }

    #[test]
    fn empty_and_all_missing_inputs_convert_without_error() {
        let (out, rejects) = convert(&spec(LABS), labs(&[]));
        assert_eq!((out.height(), rejects.height()), (0, 0));
        assert_eq!(out.width(), 12);
        let (out, rejects) = convert(&spec(VISITS), visits().head(Some(0)));
        assert_eq!((out.height(), rejects.height()), (0, 0));
        let input = df!(
            "SRCLINE" => [2i64],
            "height" => [None::<f64>],
            "height_unit" => [None::<&str>],
            "weight" => [None::<f64>],
            "weight_unit" => [None::<&str>],
        )
        .unwrap();
        let (out, rejects) = convert(&spec(VISITS), input);
        assert_eq!((out.height(), rejects.height()), (1, 0));
    }

    #[test]
    fn check_reports_every_table_mistake() {
        let yaml = r#"
  - name: bad
    kind: convert_units
    parameter: analyte
    columns:
      - {value: h, unit: hu, parameter: HEIGHT, output: h}
    parameters:
      CRP:
        label: CRP
        unit: mg/L
        units: {mg/dl: 10, MG/DL: 10, mg/L: 2, x: 1/0, y: ten}
        min: 5
        max: 1
      HGB:
        label: Hemoglobin
        unit: g/dL
        synonyms: [crp]
"#;
        let s = spec(yaml);
        let stage: ConvertUnits = s.stage_params(0).unwrap();
        let problems = stage.check(&s);
        let expected = [
            "cannot be combined",
            "`MG/DL` and `mg/dl` are one spelling",
            "canonical unit `mg/L` must have factor 1",
            "units.x: factor inf",
            "units.y: `ten` is not a number",
            "min 5 is above max 1",
            "`crp` is already a name of CRP",
            "parameter `HEIGHT` is not defined",
            "output `h` is written twice or overwrites",
        ];
        assert_eq!(problems.len(), expected.len(), "{problems:#?}");
        for (p, e) in problems.iter().zip(expected) {
            assert!(p.contains(e), "{p} does not contain {e}");
        }
    }

    #[test]
    fn fractions_are_kept_unrounded() {
        let f = Factor::Fraction("1/88.42".into()).value().unwrap();
        assert_eq!(f, 1.0 / 88.42);
        assert_eq!(Factor::Fraction("2.54".into()).value().unwrap(), 2.54);
    }

    /// The shipped reference pipeline, and the index of its stage `name`.
    fn reference(name: &str) -> (PipelineSpec, usize) {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("pipelines/reference.yaml");
        let spec = PipelineSpec::load(&path).unwrap();
        let index = spec
            .stages
            .iter()
            .position(|s| s.common.name.value == name)
            .unwrap_or_else(|| panic!("no stage {name}"));
        (spec, index)
    }

    #[test]
    fn reference_pipeline_stages_are_valid() {
        let (s, _) = reference("labs_std");
        for (i, entry) in s.stages.iter().enumerate() {
            let kind = crate::stages::Kind::parse(&s, i, &entry.common.kind.value).unwrap();
            assert_eq!(kind.stage().check(&s), Vec::<String>::new(), "{i}");
        }
    }

    #[test]
    fn reference_lab_table_converts_domain_factors() {
        let input = labs(&[
            ("nih", Some("HGB"), Some("8"), Some("mmol/L")),
            ("nih", Some("ALC"), Some("1500"), Some("cells/uL")),
            ("nih", Some("Platelets"), Some("250"), Some("10^3/uL")),
            ("nih", Some("PLT"), Some("250"), Some("K/µL")),
            ("nih", Some("IP-10"), Some("1.2"), Some("ng/mL")),
            ("nih", Some("IFN score"), Some("35.2"), Some("Score")),
            ("nih", Some("CRP"), Some("<5"), Some("mg/L")),
            ("hamburg", Some("Hämoglobin"), Some("12,5"), Some("g/dL")),
            ("sao_paulo", Some("HGB"), Some("125"), Some("g/L")),
            (
                "nih",
                Some("BK PCR"),
                Some("not detected"),
                Some("copies/mL"),
            ),
            ("nih", Some("Kreatinin"), Some("44.21"), Some("µmol/l")),
            ("nih", Some("IFN score"), Some("35.2"), None),
        ]);
        let (spec, index) = reference("labs_std");
        let (out, rejects) = convert_with(&spec, index, input);
        assert_close(
            &floats(&out, "AVAL"),
            &[
                Some(8.0 * 1.611),
                Some(1.5),
                Some(250.0),
                Some(250.0),
                Some(1200.0),
                Some(35.2),
                Some(5.0),
                Some(12.5),
                Some(12.5),
                Some(0.5),
            ],
        );
        let codes: Vec<_> = texts(&out, "PARAMCD").into_iter().flatten().collect();
        assert_eq!(
            codes,
            [
                "HGB", "ALC", "PLT", "PLT", "IP10", "IFNSCORE", "CRP", "HGB", "HGB", "CREAT"
            ]
        );
        assert_eq!(texts(&out, "AVALU")[1].as_deref(), Some("10^9/L"));
        assert_eq!(texts(&out, "ORIGU")[5].as_deref(), Some("Score"));
        // "not detected" is no number; a score without its unit is not guessed either.
        assert_eq!(lines(&rejects), [11, 13]);
        assert_eq!(
            texts(&rejects, "RULE"),
            [Some("parse".to_string()), Some("unit".to_string())]
        );
    }

    #[test]
    fn reference_questionnaires_convert_vas_cm_to_mm() {
        let input = df!(
            "SRCLINE" => [2i64, 3, 4],
            "instrument" => ["PEDSQL", "PT Global", "MD-Global"],
            "score" => [85.0, 3.2, 120.0],
            "unit" => ["%", "cm", "mm"],
        )
        .unwrap();
        let (spec, index) = reference("questionnaires_std");
        let (out, rejects) = convert_with(&spec, index, input);
        assert_close(&floats(&out, "AVAL"), &[Some(85.0), Some(32.0)]);
        assert_eq!(texts(&rejects, "RULE"), [Some("range".to_string())]);
    }

    fn analyte() -> impl Strategy<Value = Option<String>> {
        prop_oneof![
            Just(None),
            Just(Some("CRP".to_string())),
            Just(Some(" c-reactive protein".to_string())),
            Just(Some("creat".to_string())),
            "[a-zA-Z ]{0,6}".prop_map(Some),
        ]
    }

    fn value() -> impl Strategy<Value = Option<String>> {
        prop_oneof![
            Just(None),
            "[<> ]?-?[0-9]{0,4}[.,]?[0-9]{0,3}".prop_map(Some),
            "[ -~]{0,6}".prop_map(Some),
        ]
    }

    fn unit() -> impl Strategy<Value = Option<String>> {
        prop_oneof![
            Just(None),
            prop::sample::select(vec![
                "mg/L", "mg/dl", "MG / DL", "µmol/L", "umol/l", "mg/dL"
            ])
            .prop_map(|s| Some(s.to_string())),
            "[a-zA-Zµμ/ 0-9^]{0,6}".prop_map(Some),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(48))]

        /// Rows drawn from few spellings, so that combinations repeat: the distinct
        /// combinations' conversions gathered back are the row-by-row conversion, row for row,
        /// rejects and reasons included.
        #[test]
        fn converting_distinct_combinations_is_converting_each_row(
            rows in prop::collection::vec(
                (
                    prop::bool::ANY,
                    prop::sample::select(vec![None, Some("CRP"), Some(" crp"), Some("creat"), Some("x")]),
                    prop::sample::select(vec![
                        None, Some("1,5"), Some("1.5"), Some("<3"), Some(" 12 "), Some(""), Some("-0"), Some("abc"),
                    ]),
                    prop::sample::select(vec![None, Some("mg/L"), Some("MG / DL"), Some("umol/l"), Some("?")]),
                ),
                1..40,
            ),
            heights in prop::collection::vec(
                (
                    prop::sample::select(vec![None, Some(150.0), Some(-0.0), Some(0.0), Some(1.5)]),
                    prop::sample::select(vec![None, Some("cm"), Some("M"), Some("ft")]),
                ),
                1..40,
            ),
        ) {
            let rows: Vec<LabRow> = rows
                .iter()
                .map(|&(eu, a, v, u)| (if eu { "eu" } else { "nih" }, a, v, u))
                .collect();
            let labs = labs(&rows);
            let [(by_distinct, rejected_distinct), (by_row, rejected_by_row)] =
                both_ways(&spec(LABS), 0, &labs);
            prop_assert!(by_distinct.equals_missing(&by_row), "{by_distinct}\n{by_row}");
            prop_assert!(rejected_distinct.equals_missing(&rejected_by_row));
            let n = heights.len();
            let visits = df!(
                "SRCLINE" => (2..2 + n as i64).collect::<Vec<_>>(),
                "SITE" => vec!["eu"; n],
                "height" => heights.iter().map(|h| h.0).collect::<Vec<_>>(),
                "height_unit" => heights.iter().map(|h| h.1).collect::<Vec<_>>(),
                "weight" => vec![Some(20.0); n],
                "weight_unit" => vec![Some("kg"); n],
            )
            .unwrap();
            let [(by_distinct, rejected_distinct), (by_row, rejected_by_row)] =
                both_ways(&spec(VISITS), 0, &visits);
            prop_assert!(by_distinct.equals_missing(&by_row), "{by_distinct}\n{by_row}");
            prop_assert!(rejected_distinct.equals_missing(&rejected_by_row));
            prop_assert_eq!(by_distinct.height() + rejected_distinct.height(), n);
        }

        #[test]
        fn every_row_is_kept_or_rejected_once(
            rows in prop::collection::vec(
                (prop::bool::ANY, analyte(), value(), unit()),
                1..20,
            )
        ) {
            let rows: Vec<LabRow> = rows
                .iter()
                .map(|(eu, a, v, u)| {
                    (if *eu { "eu" } else { "nih" }, a.as_deref(), v.as_deref(), u.as_deref())
                })
                .collect();
            let n = rows.len();
            let (out, rejects) = convert(&spec(LABS), labs(&rows));
            prop_assert_eq!(out.height() + rejects.height(), n);
            let mut all: Vec<i64> = lines(&out).into_iter().chain(lines(&rejects)).collect();
            all.sort_unstable();
            prop_assert_eq!(all, (2..2 + n as i64).collect::<Vec<_>>());
            for name in ["RULE", "REASON", "COLUMN"] {
                prop_assert_eq!(rejects.column(name).unwrap().null_count(), 0);
            }
            let aval = floats(&out, "AVAL");
            let origval = texts(&out, "ORIGVAL");
            for (a, o) in aval.iter().zip(&origval) {
                prop_assert_eq!(a.is_some(), o.is_some());
                if let Some(a) = a {
                    prop_assert!(*a >= 0.0);
                }
            }
        }
    }
}
