//! Stage kind `steroid_equivalent`: the daily prednisone-equivalent corticosteroid dose (mg/day
//! and mg/kg/day) per subject and day, from steroid orders and weights (DOMAIN.md 4.2).

use std::collections::{BTreeMap, BTreeSet};
use std::mem::MaybeUninit;

use polars::prelude::*;
use serde::Deserialize;

use crate::error::DataError;
use crate::spec::PipelineSpec;
use crate::stages::{Arity, Inputs, Stage, StageCtx, StageOutput};

/// Daily prednisone-equivalent dose, one row per subject and day (DOMAIN.md 4.2).
///
/// Output columns, sorted by `USUBJID`, `ADT`:
/// `USUBJID` (str), `ADT` (date), `PREDMG` (prednisone-equivalent mg that day, f64),
/// `PREDMGKG` (mg/kg/day, f64), `WEIGHT_KG` (weight used, f64), `WEIGHT_DT` (date of that
/// weight), `NORDERS` (orders active that day, i64), `WTREASON` (why `PREDMGKG` is null, else
/// null).
///
/// Rows: every day from the subject's first observed date (earliest date in `span_tables` and
/// in `final_visit_from`) to the final visit (latest date in `final_visit_from`), inclusive.
/// A subject without a final visit has no rows; each of its orders goes to the rejects with
/// rule `span`, so it is visible that they were not counted.
///
/// Rules:
/// - an order is active from `start` to `end` inclusive; an order without `end` runs until
///   the day before the next (strictly later) start of an order of the same canonical drug
///   for that subject (synonyms are one drug), else until the final visit; days outside the
///   span are not output;
/// - daily mg = sum over active orders of dose x administrations per day x (5 / equivalent
///   mg), unrounded; a day without an active order is 0 mg;
/// - a `mg/kg` dose is multiplied by the weight of that day (below); without a weight that
///   day's `PREDMG` is null too, and `WTREASON` says why;
/// - the weight of a day is the latest weight on or before it within `weight_before_days`,
///   else the earliest later weight within `weight_after_days` (both inclusive), else null;
///   `PREDMGKG` = `PREDMG` / weight, null without a weight (also on 0 mg days);
/// - weights that are null or not positive are ignored; two weights of a subject on one
///   date (which dedupe should prevent) are averaged.
///
/// Rejects (one per order, first failing check in this order; a rejected order contributes
/// nothing, and does not close an earlier ongoing order either): `required` (subject, dose or
/// start missing), `drug` (unknown or missing drug), `frequency`, `dose_unit`, `range`
/// (negative or non-finite dose), `date_range` (end before start), `span` (subject has no
/// final visit).
///
/// The spellings of drugs, frequencies and dose units can be listed here (`synonyms`, several
/// frequency spellings) or mapped to codes by an upstream row-level `recode` stage, whose code
/// columns `order_columns` then names; the reference pipeline does the latter, so that an
/// unknown spelling is a reject of the steroid stream itself and the dedupe key holds the
/// canonical drug.
///
/// ```yaml
/// - name: steroid_daily
///   kind: steroid_equivalent
///   inputs: [steroids, visits_std, dosing, diary, labs, questionnaires]
///   orders: steroids
///   order_columns: {drug: drug_std, frequency: frequency_std, dose_unit: dose_unit_std}
///   weights: visits_std
///   final_visit_from: visits_std
///   span_tables: {steroids: [start, end], dosing: [start, end], diary: [date], labs: [date],
///                 questionnaires: [date]}
///   drugs:
///     prednisone: {equivalent_mg: 5}
///     methylprednisolone: {equivalent_mg: 4, synonyms: [Solu-Medrol, Medrol, methylpred]}
///   frequencies: {QD: 1, daily: 1, BID: 2, TID: 3, QID: 4, QOD: 0.5, weekly: 1/7}
/// ```
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SteroidEquivalent {
    /// Input with the steroid orders: `subject`, `drug`, `dose`, `dose_unit`, `frequency`,
    /// `start`, `end` (empty = ongoing) and the lineage columns `SITE`, `SRCFILE`, `SRCLINE`.
    pub orders: String,
    /// Input with the weights: `subject`, `date` and `weight_column` (kg).
    pub weights: String,
    /// Weight column of `weights`, in kg.
    #[serde(default = "default_weight_column")]
    pub weight_column: String,
    /// Input whose latest `date` per subject is the final visit, the last day of the series.
    /// Its dates count as observed events too.
    pub final_visit_from: String,
    /// Inputs and their date columns whose earliest date per subject (with the dates of
    /// `final_visit_from`) is the subject's first observed date, the first day of the series.
    /// List every event stream; the birth date is not an event. A table's subject column is
    /// `subject`, or `USUBJID` in a derived table without one (a `phase_anchors` table of each
    /// subject's first date: the series then reruns only when that date changes).
    #[serde(default)]
    pub span_tables: BTreeMap<String, Vec<String>>,
    /// A weight up to this many days before a day (inclusive) is that day's weight.
    #[serde(default = "default_weight_before_days")]
    pub weight_before_days: u16,
    /// Without an earlier weight, a weight up to this many days after a day (inclusive) is used.
    #[serde(default = "default_weight_after_days")]
    pub weight_after_days: u16,
    /// Canonical drug name -> its equivalence; names and synonyms match ignoring case and
    /// surrounding or repeated spaces.
    pub drugs: BTreeMap<String, DrugSpec>,
    /// Frequency as written -> administrations per day (a number or a fraction such as
    /// `1/7`); matched ignoring case and surrounding or repeated spaces.
    pub frequencies: BTreeMap<String, PerDay>,
    /// Dose unit as written -> `mg` (per administration) or `mg/kg` (per kg per
    /// administration); matched ignoring case and all spaces. Default: `mg` and `mg/kg`.
    #[serde(default = "default_dose_units")]
    pub dose_units: BTreeMap<String, DoseUnit>,
    /// Columns of `orders` read as the drug, frequency and dose unit. Point them at the codes
    /// of an upstream `recode` stage to keep the spellings in one place.
    // Boxed to keep `Kind` variants of similar size.
    #[serde(default)]
    pub order_columns: Box<OrderColumns>,
}

/// Columns of the orders table holding the drug, frequency and dose unit.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OrderColumns {
    /// Drug name (default `drug`).
    pub drug: String,
    /// Frequency (default `frequency`).
    pub frequency: String,
    /// Dose unit (default `dose_unit`).
    pub dose_unit: String,
}

impl Default for OrderColumns {
    fn default() -> Self {
        OrderColumns {
            drug: "drug".into(),
            frequency: "frequency".into(),
            dose_unit: "dose_unit".into(),
        }
    }
}

/// One corticosteroid: the dose equal to 5 mg prednisone, and other names it is written as.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DrugSpec {
    /// mg of this drug equal to 5 mg prednisone; the factor is 5 / equivalent_mg, unrounded.
    pub equivalent_mg: f64,
    /// Other spellings and brand names (e.g. `Solu-Medrol` for methylprednisolone).
    #[serde(default)]
    pub synonyms: Vec<String>,
}

/// Administrations per day: a number (`2`, `0.5`) or a fraction (`1/7`).
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum PerDay {
    Number(f64),
    Fraction(String),
}

/// What a dose unit means.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub enum DoseUnit {
    /// The dose is mg per administration.
    #[serde(rename = "mg")]
    Mg,
    /// The dose is mg per kg body weight per administration.
    #[serde(rename = "mg/kg")]
    MgPerKg,
}

fn default_weight_column() -> String {
    "weight_kg".into()
}
fn default_weight_before_days() -> u16 {
    365
}
fn default_weight_after_days() -> u16 {
    90
}
fn default_dose_units() -> BTreeMap<String, DoseUnit> {
    BTreeMap::from([
        ("mg".to_string(), DoseUnit::Mg),
        ("mg/kg".to_string(), DoseUnit::MgPerKg),
    ])
}

impl PerDay {
    fn value(&self) -> Result<f64, String> {
        let v = match self {
            PerDay::Number(v) => *v,
            PerDay::Fraction(text) => {
                let parsed = match text.split_once('/') {
                    Some((n, d)) => n
                        .trim()
                        .parse::<f64>()
                        .ok()
                        .zip(d.trim().parse::<f64>().ok())
                        .map(|(n, d)| n / d),
                    None => text.trim().parse::<f64>().ok(),
                };
                parsed.ok_or_else(|| {
                    format!("`{text}` is not a number or a fraction such as `1/7`")
                })?
            }
        };
        if v.is_finite() && v > 0.0 {
            Ok(v)
        } else {
            Err(format!(
                "{v} administrations per day is not a positive number"
            ))
        }
    }
}

/// The configured tables, keyed by normalised spelling.
struct Lookups {
    /// (spelling key, canonical drug, factor to prednisone mg)
    drugs: Vec<(String, String, f64)>,
    /// Every drug name and synonym as written, for "did you mean".
    drug_spellings: Vec<String>,
    /// (spelling key, administrations per day)
    frequencies: Vec<(String, f64)>,
    /// (unit key, dose is per kg)
    dose_units: Vec<(String, bool)>,
}

/// Drug and frequency spellings match ignoring case and surrounding or repeated whitespace.
fn spelling_key(text: &str) -> String {
    text.split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
        .to_lowercase()
}

/// Dose units match ignoring case and all whitespace (`mg / kg` = `MG/KG`).
fn unit_key(text: &str) -> String {
    text.chars()
        .filter(|c| !c.is_whitespace())
        .collect::<String>()
        .to_lowercase()
}

fn spelling_key_expr(e: Expr) -> Expr {
    e.str()
        .replace_all(lit(r"\s+"), lit(" "), false)
        .str()
        .strip_chars(lit(NULL))
        .str()
        .to_lowercase()
}

fn unit_key_expr(e: Expr) -> Expr {
    e.str()
        .replace_all(lit(r"\s+"), lit(""), false)
        .str()
        .to_lowercase()
}

impl SteroidEquivalent {
    /// Every input the parameters name, without repeats.
    fn named_inputs(&self) -> BTreeSet<&str> {
        let mut names = BTreeSet::from([
            self.orders.as_str(),
            self.weights.as_str(),
            self.final_visit_from.as_str(),
        ]);
        names.extend(self.span_tables.keys().map(String::as_str));
        names
    }

    /// Normalises the drug, frequency and dose-unit tables; returns every problem.
    fn lookups(&self) -> Result<Lookups, Vec<String>> {
        let mut problems = Vec::new();
        if self.drugs.is_empty() {
            problems.push("`drugs` is empty: list at least one drug".to_string());
        }
        let mut drug_of_key: BTreeMap<String, (&str, &str)> = BTreeMap::new();
        let mut drugs = Vec::new();
        let mut drug_spellings = Vec::new();
        for (name, drug) in &self.drugs {
            let eq = drug.equivalent_mg;
            if !(eq.is_finite() && eq > 0.0) {
                problems.push(format!(
                    "drug `{name}`: equivalent_mg {eq} is not a positive number"
                ));
                continue;
            }
            let factor = 5.0 / eq;
            for spelling in std::iter::once(name).chain(&drug.synonyms) {
                let key = spelling_key(spelling);
                if key.is_empty() {
                    problems.push(format!("drug `{name}`: an empty name or synonym"));
                    continue;
                }
                match drug_of_key.get(&key) {
                    Some((other, _)) if *other == name.as_str() => continue,
                    Some((other, as_written)) => {
                        problems.push(format!(
                            "`{spelling}` names two drugs: `{other}` (as `{as_written}`) and `{name}`"
                        ));
                        continue;
                    }
                    None => {}
                }
                drug_of_key.insert(key.clone(), (name, spelling));
                drugs.push((key, name.clone(), factor));
                drug_spellings.push(spelling.clone());
            }
        }
        if self.frequencies.is_empty() {
            problems.push("`frequencies` is empty: list at least one frequency".to_string());
        }
        let mut frequencies: Vec<(String, f64)> = Vec::new();
        let mut freq_of_key: BTreeMap<String, &str> = BTreeMap::new();
        for (spelling, per_day) in &self.frequencies {
            let key = spelling_key(spelling);
            match per_day.value() {
                Err(e) => problems.push(format!("frequency `{spelling}`: {e}")),
                Ok(v) => {
                    if let Some(other) = freq_of_key.insert(key.clone(), spelling) {
                        problems.push(format!(
                            "frequencies `{other}` and `{spelling}` are the same spelling"
                        ));
                    } else {
                        frequencies.push((key, v));
                    }
                }
            }
        }
        let mut dose_units: Vec<(String, bool)> = Vec::new();
        let mut unit_of_key: BTreeMap<String, &str> = BTreeMap::new();
        for (spelling, unit) in &self.dose_units {
            let key = unit_key(spelling);
            if let Some(other) = unit_of_key.insert(key.clone(), spelling) {
                problems.push(format!(
                    "dose units `{other}` and `{spelling}` are the same spelling"
                ));
            } else {
                dose_units.push((key, *unit == DoseUnit::MgPerKg));
            }
        }
        if dose_units.is_empty() {
            problems.push("`dose_units` is empty".to_string());
        }
        for (table, columns) in &self.span_tables {
            if columns.is_empty() {
                problems.push(format!(
                    "span_tables: `{table}` lists no date column (e.g. `{table}: [date]`)"
                ));
            }
        }
        if problems.is_empty() {
            Ok(Lookups {
                drugs,
                drug_spellings,
                frequencies,
                dose_units,
            })
        } else {
            Err(problems)
        }
    }

    /// Why an order was rejected, in words a data manager understands.
    fn reason(&self, lookups: &Lookups, row: &RejectRow) -> String {
        let raw = row.raw.as_deref().unwrap_or("");
        match row.rule.as_str() {
            "drug" if row.raw.is_none() => format!(
                "the drug is missing; known drugs: {}",
                self.drugs.keys().cloned().collect::<Vec<_>>().join(", ")
            ),
            "drug" => {
                let known = self.drugs.keys().cloned().collect::<Vec<_>>().join(", ");
                match crate::closest(raw, lookups.drug_spellings.iter().map(String::as_str)) {
                    Some(c) => {
                        format!("unknown drug `{raw}`; did you mean `{c}`? known drugs: {known}")
                    }
                    None => format!("unknown drug `{raw}`; known drugs: {known}"),
                }
            }
            "frequency" => {
                let known = self.frequencies.keys().cloned().collect::<Vec<_>>();
                if row.raw.is_none() {
                    format!("the frequency is missing; accepted: {}", known.join(", "))
                } else {
                    format!("unknown frequency `{raw}`; accepted: {}", known.join(", "))
                }
            }
            "dose_unit" => {
                let known = self.dose_units.keys().cloned().collect::<Vec<_>>();
                if row.raw.is_none() {
                    format!("the dose unit is missing; accepted: {}", known.join(", "))
                } else {
                    format!("unknown dose unit `{raw}`; accepted: {}", known.join(", "))
                }
            }
            "required" => format!("the {} of the order is missing", row.column),
            "range" => format!("dose `{raw}` is not a non-negative number"),
            "date_range" => format!(
                "end {raw} is before start {}",
                row.start.as_deref().unwrap_or("?")
            ),
            "span" => format!(
                "subject {raw} has no date in `{}`, so there is no final visit to end the daily \
                 steroid series; the order is not counted",
                self.final_visit_from
            ),
            other => format!("rejected by rule `{other}`"),
        }
    }
}

/// The fields of one rejected order that its REASON is written from.
struct RejectRow {
    rule: String,
    column: String,
    raw: Option<String>,
    start: Option<String>,
}

/// What a column must hold.
#[derive(Clone, Copy)]
enum Want {
    Text,
    Number,
    Integer,
    Date,
}

impl Want {
    fn accepts(self, dtype: &DataType) -> bool {
        // An all-missing column may arrive untyped; it is cast like the others.
        *dtype == DataType::Null
            || match self {
                Want::Text => *dtype == DataType::String,
                Want::Number => dtype.is_primitive_numeric(),
                Want::Integer => dtype.is_integer(),
                Want::Date => *dtype == DataType::Date,
            }
    }
    fn dtype(self) -> DataType {
        match self {
            Want::Text => DataType::String,
            Want::Number => DataType::Float64,
            Want::Integer => DataType::Int64,
            Want::Date => DataType::Date,
        }
    }
    fn describe(self) -> &'static str {
        match self {
            Want::Text => "text",
            Want::Number => "a number",
            Want::Integer => "an integer",
            Want::Date => "a date",
        }
    }
}

fn stage_error(ctx: &StageCtx, message: String) -> anyhow::Error {
    DataError::Stage {
        stage: ctx.name.to_string(),
        message,
    }
    .into()
}

/// The input named `name`, with `columns` checked and cast to their canonical types
/// (only those columns, in that order).
fn input_columns(
    ctx: &StageCtx,
    inputs: &Inputs,
    name: &str,
    columns: &[(&str, Want)],
) -> anyhow::Result<LazyFrame> {
    let Some(df) = inputs.get(name) else {
        let listed: Vec<&str> = inputs.tables.iter().map(|(n, _)| n.as_str()).collect();
        return Err(stage_error(
            ctx,
            format!(
                "a parameter names the table `{name}`, which is not among this stage's inputs \
                 ({}); add it to `inputs:`",
                listed.join(", ")
            ),
        ));
    };
    let schema = df.schema();
    let mut select = Vec::new();
    for (column, want) in columns {
        match schema.get(column) {
            None => {
                let found: Vec<&str> = schema.iter_names().map(|n| n.as_str()).collect();
                let hint = crate::closest(column, found.iter().copied())
                    .map(|c| format!("; closest: `{c}`"))
                    .unwrap_or_default();
                return Err(stage_error(
                    ctx,
                    format!(
                        "table `{name}` has no column `{column}` (columns: {}){hint}",
                        found.join(", ")
                    ),
                ));
            }
            Some(dtype) if !want.accepts(dtype) => {
                return Err(stage_error(
                    ctx,
                    format!(
                        "column `{column}` of table `{name}` is {dtype}, expected {}",
                        want.describe()
                    ),
                ));
            }
            Some(_) => select.push(col(*column).cast(want.dtype())),
        }
    }
    Ok(df.clone().lazy().select(select))
}

/// Chains `(condition, value)` pairs into one when/then expression, null when none holds.
fn first_match(cases: Vec<(Expr, Expr)>, dtype: DataType) -> Expr {
    cases
        .into_iter()
        .rev()
        .fold(lit(NULL).cast(dtype), |otherwise, (cond, value)| {
            when(cond).then(value).otherwise(otherwise)
        })
}

fn date_days(e: Expr) -> Expr {
    e.cast(DataType::Int32)
}

impl Stage for SteroidEquivalent {
    /// A subject's days come from that subject's orders and weights.
    fn across_subjects(&self, _subject_columns: &[String]) -> Option<String> {
        None
    }

    /// One row per subject and day: millions of days from thousands of orders.
    fn may_outgrow_inputs(&self) -> bool {
        true
    }

    fn arity(&self) -> Arity {
        Arity::Exactly(self.named_inputs().len())
    }

    fn check(&self, spec: &PipelineSpec) -> Vec<String> {
        let mut problems = self.lookups().err().unwrap_or_default();
        let tables: BTreeSet<&str> = spec
            .stages
            .iter()
            .map(|s| s.common.name.value.as_str())
            .collect();
        for name in self.named_inputs() {
            if !tables.contains(name) {
                let hint = crate::closest(name, tables.iter().copied())
                    .map(|c| format!(" (did you mean `{c}`?)"))
                    .unwrap_or_default();
                problems.push(format!("no stage produces the table `{name}`{hint}"));
            }
        }
        problems
    }

    fn run(&self, ctx: &StageCtx, inputs: &Inputs) -> anyhow::Result<StageOutput> {
        let lookups = self
            .lookups()
            .map_err(|problems| stage_error(ctx, problems.join("; ")))?;

        let orders = input_columns(
            ctx,
            inputs,
            &self.orders,
            &[
                ("subject", Want::Text),
                (self.order_columns.drug.as_str(), Want::Text),
                ("dose", Want::Number),
                (self.order_columns.dose_unit.as_str(), Want::Text),
                (self.order_columns.frequency.as_str(), Want::Text),
                ("start", Want::Date),
                ("end", Want::Date),
                ("SITE", Want::Text),
                ("SRCFILE", Want::Text),
                ("SRCLINE", Want::Integer),
            ],
        )?
        .rename(
            [
                &self.order_columns.drug,
                &self.order_columns.dose_unit,
                &self.order_columns.frequency,
            ],
            ["drug", "dose_unit", "frequency"],
            true,
        );
        let weights = input_columns(
            ctx,
            inputs,
            &self.weights,
            &[
                ("subject", Want::Text),
                ("date", Want::Date),
                (self.weight_column.as_str(), Want::Number),
            ],
        )?;
        let visits = input_columns(
            ctx,
            inputs,
            &self.final_visit_from,
            &[("subject", Want::Text), ("date", Want::Date)],
        )?;
        let mut events = vec![
            visits
                .clone()
                .select([col("subject"), col("date").alias("_event")]),
        ];
        for (table, columns) in &self.span_tables {
            let subject = match inputs.get(table) {
                Some(df) if df.column("subject").is_err() && df.column("USUBJID").is_ok() => {
                    "USUBJID"
                }
                _ => "subject",
            };
            for column in columns {
                let lf = input_columns(
                    ctx,
                    inputs,
                    table,
                    &[(subject, Want::Text), (column.as_str(), Want::Date)],
                )?;
                events.push(lf.select([
                    col(subject).alias("subject"),
                    col(column.as_str()).alias("_event"),
                ]));
            }
        }

        // Each subject's observed span: first event to final visit.
        let first_event = concat(events, UnionArgs::default())?
            .filter(
                col("subject")
                    .is_not_null()
                    .and(col("_event").is_not_null()),
            )
            .group_by([col("subject")])
            .agg([col("_event").min().alias("_first")]);
        // `_sid` numbers the subjects in name order: a cheap key for joins and sorting.
        let span = visits
            .filter(col("subject").is_not_null().and(col("date").is_not_null()))
            .group_by([col("subject")])
            .agg([col("date").max().alias("_last")])
            .join(
                first_event,
                [col("subject")],
                [col("subject")],
                JoinArgs::new(JoinType::Inner),
            )
            .sort(["subject"], SortMultipleOptions::default())
            .with_row_index("_sid", None)
            .with_column(col("_sid").cast(DataType::Int64))
            .collect()?;

        let checked = self.checked_orders(orders, &lookups)?;
        let accepted = checked.clone().lazy().filter(col("_rule").is_null()).join(
            span.clone().lazy(),
            [col("subject")],
            [col("subject")],
            JoinArgs::new(JoinType::Left),
        );
        let without_span = accepted
            .clone()
            .filter(col("_last").is_null())
            .with_columns([
                lit("span").alias("_rule"),
                lit("subject").alias("_column"),
                col("subject").alias("_raw"),
            ]);
        let reject_fields = || {
            [
                col("SRCFILE"),
                col("SRCLINE"),
                col("SITE"),
                col("_column"),
                col("_raw"),
                col("_rule"),
                col("start").cast(DataType::String).alias("_start"),
            ]
        };
        let rejected = concat(
            [
                checked
                    .clone()
                    .lazy()
                    .filter(col("_rule").is_not_null())
                    .select(reject_fields()),
                without_span.select(reject_fields()),
            ],
            UnionArgs::default(),
        )?
        .sort(
            ["SRCFILE", "SRCLINE", "_rule", "_column", "_raw"],
            SortMultipleOptions::default().with_nulls_last(true),
        )
        .collect()?;
        let rejects = self.rejects_frame(&lookups, &rejected)?;

        // Small (one row per order): computed once, as it feeds several parts of the plan.
        let orders = self
            .order_spans(accepted.filter(col("_last").is_not_null()))
            .collect()?;
        let pieces = self.daily(&span, orders.lazy())?;
        let weights = self.weights_by_day(weights, &span).collect()?;
        // The days come out in subject and date order (pieces in `_sid` order, which is
        // USUBJID order, each made into its days in turn): the table is sorted only if that
        // ever fails to hold, rather than gathering every column of millions of days again to
        // find it already in order.
        let table = self.days_with_weights(&pieces, &weights)?;
        let table = crate::run::sorted(&table, &["USUBJID".to_string(), "ADT".to_string()])?;
        Ok(StageOutput {
            table: table.lazy(),
            rejects: Some(rejects),
            dropped: None,
            files: Vec::new(),
            rows_of_input: None,
        })
    }
}

impl SteroidEquivalent {
    /// The orders with their canonical drug, factor, administrations per day and dose unit
    /// looked up, and `_rule`, `_column`, `_raw` set on the rejected ones.
    fn checked_orders(&self, orders: LazyFrame, lookups: &Lookups) -> PolarsResult<DataFrame> {
        let (keys, (names, factors)): (Vec<&str>, (Vec<&str>, Vec<f64>)) = lookups
            .drugs
            .iter()
            .map(|(k, n, f)| (k.as_str(), (n.as_str(), *f)))
            .unzip();
        let drugs = df!("_drug_key" => keys, "_drug" => names, "_factor" => factors)?;
        let (keys, per_day): (Vec<&str>, Vec<f64>) = lookups
            .frequencies
            .iter()
            .map(|(k, v)| (k.as_str(), *v))
            .unzip();
        let frequencies = df!("_freq_key" => keys, "_per_day" => per_day)?;
        let (keys, per_kg): (Vec<&str>, Vec<bool>) = lookups
            .dose_units
            .iter()
            .map(|(k, v)| (k.as_str(), *v))
            .unzip();
        let dose_units = df!("_unit_key" => keys, "_per_kg" => per_kg)?;

        let left = || JoinArgs::new(JoinType::Left);
        let looked_up = orders
            .with_columns([
                spelling_key_expr(col("drug")).alias("_drug_key"),
                spelling_key_expr(col("frequency")).alias("_freq_key"),
                unit_key_expr(col("dose_unit")).alias("_unit_key"),
            ])
            .join(drugs.lazy(), [col("_drug_key")], [col("_drug_key")], left())
            .join(
                frequencies.lazy(),
                [col("_freq_key")],
                [col("_freq_key")],
                left(),
            )
            .join(
                dose_units.lazy(),
                [col("_unit_key")],
                [col("_unit_key")],
                left(),
            );

        let text = |c: &str| col(c).cast(DataType::String);
        // (condition, rule, column, raw value); the first that holds rejects the order.
        let checks: Vec<(Expr, &str, &str, Expr)> = vec![
            (
                col("subject").is_null(),
                "required",
                "subject",
                text("subject"),
            ),
            (
                col("_drug").is_null(),
                "drug",
                &self.order_columns.drug,
                text("drug"),
            ),
            (
                col("_per_day").is_null(),
                "frequency",
                &self.order_columns.frequency,
                text("frequency"),
            ),
            (
                col("_per_kg").is_null(),
                "dose_unit",
                &self.order_columns.dose_unit,
                text("dose_unit"),
            ),
            (col("dose").is_null(), "required", "dose", text("dose")),
            (
                col("dose").lt(lit(0.0)).or(col("dose").is_finite().not()),
                "range",
                "dose",
                text("dose"),
            ),
            (col("start").is_null(), "required", "start", text("start")),
            (
                col("end").lt(col("start")),
                "date_range",
                "end",
                text("end"),
            ),
        ];
        let rule = first_match(
            checks
                .iter()
                .map(|(c, r, _, _)| (c.clone(), lit(*r)))
                .collect(),
            DataType::String,
        );
        let column = first_match(
            checks
                .iter()
                .map(|(c, _, n, _)| (c.clone(), lit(*n)))
                .collect(),
            DataType::String,
        );
        let raw = first_match(
            checks.into_iter().map(|(c, _, _, v)| (c, v)).collect(),
            DataType::String,
        );
        looked_up
            .with_columns([
                rule.alias("_rule"),
                column.alias("_column"),
                raw.alias("_raw"),
            ])
            .collect()
    }

    /// The rejects table (schema of `crate::rejects`) from the rejected orders.
    fn rejects_frame(&self, lookups: &Lookups, rejected: &DataFrame) -> PolarsResult<DataFrame> {
        let text = |name: &str| -> PolarsResult<Vec<Option<String>>> {
            Ok(rejected
                .column(name)?
                .str()?
                .iter()
                .map(|v| v.map(str::to_string))
                .collect())
        };
        let rules = text("_rule")?;
        let columns = text("_column")?;
        let raws = text("_raw")?;
        let starts = text("_start")?;
        // A loop over rejected orders only (few), to word each reason.
        let reasons: Vec<String> = rules
            .iter()
            .zip(&columns)
            .zip(raws.iter().zip(&starts))
            .map(|((rule, column), (raw, start))| {
                self.reason(
                    lookups,
                    &RejectRow {
                        rule: rule.clone().unwrap_or_default(),
                        column: column.clone().unwrap_or_default(),
                        raw: raw.clone(),
                        start: start.clone(),
                    },
                )
            })
            .collect();
        let height = rejected.height();
        DataFrame::new(
            height,
            vec![
                rejected.column("SRCFILE")?.clone(),
                rejected.column("SRCLINE")?.clone(),
                rejected.column("SITE")?.clone(),
                Column::new("COLUMN".into(), columns),
                Column::new("RAWVALUE".into(), raws),
                Column::new("RULE".into(), rules),
                Column::new("REASON".into(), reasons),
            ],
        )
    }

    /// Accepted orders clipped to the span: `_sid`, first and last active day (`_from`, `_to`,
    /// days since 1970 as i32), the order's fixed mg a day (`_mg`), its mg a day per kg of
    /// weight (`_mg_per_kg`) and `_per_kg` (0 or 1). Orders without a day in the span drop out.
    fn order_spans(&self, accepted: LazyFrame) -> LazyFrame {
        // Next strictly later start of the same canonical drug, which closes an ongoing order.
        let same_as_next = col("subject")
            .eq(col("subject").shift(lit(-1)))
            .and(col("_drug").eq(col("_drug").shift(lit(-1))));
        let next_start = accepted
            .clone()
            .select([col("subject"), col("_drug"), col("start")])
            .unique(None, UniqueKeepStrategy::Any)
            .sort(
                ["subject", "_drug", "start"],
                SortMultipleOptions::default(),
            )
            .with_column(
                when(same_as_next)
                    .then(col("start").shift(lit(-1)))
                    .otherwise(lit(NULL).cast(DataType::Date))
                    .alias("_next"),
            );
        let end = when(col("end").is_not_null())
            .then(date_days(col("end")))
            .when(col("_next").is_not_null())
            .then(date_days(col("_next")) - lit(1))
            .otherwise(date_days(col("_last")));
        let from = when(col("start").lt(col("_first")))
            .then(date_days(col("_first")))
            .otherwise(date_days(col("start")));
        let to = when(col("_end").lt(date_days(col("_last"))))
            .then(col("_end"))
            .otherwise(date_days(col("_last")));
        let mg_per_day = col("dose") * col("_per_day") * col("_factor");
        accepted
            .join(
                next_start,
                [col("subject"), col("_drug"), col("start")],
                [col("subject"), col("_drug"), col("start")],
                JoinArgs::new(JoinType::Left),
            )
            .with_column(end.alias("_end"))
            .select([
                col("_sid"),
                from.alias("_from"),
                to.alias("_to"),
                when(col("_per_kg"))
                    .then(lit(0.0))
                    .otherwise(mg_per_day.clone())
                    .alias("_mg"),
                when(col("_per_kg"))
                    .then(mg_per_day)
                    .otherwise(lit(0.0))
                    .alias("_mg_per_kg"),
                col("_per_kg").cast(DataType::Int64),
            ])
            .filter(col("_from").lt_eq(col("_to")))
    }

    /// The span of each subject cut into pieces (`subject`, `_sid`, first and last day
    /// `_piece_from`, `_piece_to` as days since 1970, in subject and day order) with the summed
    /// order doses of each of its days (0 without orders): `_mg`, `_mg_per_kg`, `_n_per_kg`,
    /// `NORDERS`.
    ///
    /// The span of each subject is cut at every order's first day and the day after its last,
    /// so the same orders are active on every day of a piece; each piece is summed once and
    /// then made into its days ([`Self::days_with_weights`]; the same result as making every
    /// order into days and summing per day, without grouping millions of rows).
    fn daily(&self, span: &DataFrame, orders: LazyFrame) -> PolarsResult<DataFrame> {
        let span_days = span.clone().lazy().select([
            col("_sid"),
            date_days(col("_first")).alias("_first"),
            date_days(col("_last")).alias("_last"),
        ]);
        let cuts = concat(
            [
                orders
                    .clone()
                    .select([col("_sid"), col("_from").alias("_cut")]),
                orders
                    .clone()
                    .select([col("_sid"), (col("_to") + lit(1)).alias("_cut")]),
                span_days
                    .clone()
                    .select([col("_sid"), col("_first").alias("_cut")]),
                span_days.select([col("_sid"), (col("_last") + lit(1)).alias("_cut")]),
            ],
            UnionArgs::default(),
        )?
        .unique(None, UniqueKeepStrategy::Any)
        .sort(["_sid", "_cut"], SortMultipleOptions::default());
        // A piece runs from one cut to the day before the next cut of the same subject.
        let pieces = cuts
            .select([
                col("_sid"),
                col("_cut").alias("_piece_from"),
                when(col("_sid").eq(col("_sid").shift(lit(-1))))
                    .then(col("_cut").shift(lit(-1)) - lit(1))
                    .otherwise(lit(NULL).cast(DataType::Int32))
                    .alias("_piece_to"),
            ])
            .filter(col("_piece_to").is_not_null())
            .with_row_index("_piece", None)
            .collect()?
            .lazy();
        // Sums run over values sorted within the piece, so the float result does not depend on
        // the row order polars happens to group in (byte-identical reruns).
        let sorted_sum = |c: &str| col(c).sort(SortOptions::default()).sum();
        let per_piece = pieces
            .clone()
            .select([col("_piece"), col("_sid"), col("_piece_from")])
            .join(
                orders,
                [col("_sid")],
                [col("_sid")],
                JoinArgs::new(JoinType::Inner),
            )
            .filter(
                col("_from")
                    .lt_eq(col("_piece_from"))
                    .and(col("_piece_from").lt_eq(col("_to"))),
            )
            .group_by([col("_piece")])
            .agg([
                sorted_sum("_mg").alias("_mg"),
                sorted_sum("_mg_per_kg").alias("_mg_per_kg"),
                col("_per_kg").sum().alias("_n_per_kg"),
                len().cast(DataType::Int64).alias("NORDERS"),
            ]);
        let days = pieces
            .join_builder()
            .with(per_piece)
            .on([col("_piece")])
            .how(JoinType::Left)
            .maintain_order(MaintainOrderJoin::Left)
            .finish()
            .join_builder()
            .with(span.clone().lazy().select([col("subject"), col("_sid")]))
            .on([col("_sid")])
            .how(JoinType::Left)
            .maintain_order(MaintainOrderJoin::Left)
            .finish()
            .select([
                col("subject"),
                col("_sid"),
                col("_piece_from"),
                col("_piece_to"),
                col("_mg").fill_null(lit(0.0)),
                col("_mg_per_kg").fill_null(lit(0.0)),
                col("_n_per_kg").fill_null(lit(0)),
                col("NORDERS").fill_null(lit(0)),
            ]);
        days.collect()
    }

    /// The usable weights of the subjects with a span: `_sid`, `_wdt` (days since 1970) and
    /// `_w` (kg), sorted by `_sid` and `_wdt`; two weights of a subject on one day are
    /// averaged (over the values sorted, so the mean does not depend on row order).
    fn weights_by_day(&self, weights: LazyFrame, span: &DataFrame) -> LazyFrame {
        weights
            .select([
                col("subject"),
                date_days(col("date")).alias("_wdt"),
                col(self.weight_column.as_str())
                    .cast(DataType::Float64)
                    .alias("_w"),
            ])
            .filter(
                col("subject")
                    .is_not_null()
                    .and(col("_wdt").is_not_null())
                    .and(col("_w").gt(lit(0.0))),
            )
            .join(
                span.clone().lazy().select([col("subject"), col("_sid")]),
                [col("subject")],
                [col("subject")],
                JoinArgs::new(JoinType::Inner),
            )
            .group_by([col("_sid"), col("_wdt")])
            .agg([col("_w").sort(SortOptions::default()).mean()])
            .sort(["_sid", "_wdt"], SortMultipleOptions::default())
    }

    /// Every day of every piece ([`Self::daily`]), in order, with its weight as of that day,
    /// mg, mg/kg/day and the reason when there is no weight: the output table.
    ///
    /// A day's weight is its subject's latest weight on or before it within
    /// `weight_before_days`, else the earliest later one within `weight_after_days`. The days
    /// of a subject come in order, so one place in its weights, moved forward, finds both: a
    /// pass over the days and the weights together, where two as-of joins on the table of
    /// days gathered every column twice (about a third of the stage's time).
    fn days_with_weights(
        &self,
        pieces: &DataFrame,
        weights: &DataFrame,
    ) -> PolarsResult<DataFrame> {
        let window = (self.weight_before_days, self.weight_after_days);
        days_of_pieces(pieces, weights, window, DAY_BLOCK)
    }
}

/// Days made by one worker at a time, about (whole pieces at a time).
const DAY_BLOCK: usize = 1 << 16;

/// The output columns of [`days_of_pieces`] for a stretch of days, one slot per day, each
/// written once (the columns' spare capacity: allocated, not zeroed, so that the pages freed
/// by earlier stages are reused rather than fresh ones faulted in).
struct DaySlots<'a> {
    piece: &'a mut [MaybeUninit<IdxSize>],
    adt: &'a mut [MaybeUninit<i32>],
    orders: &'a mut [MaybeUninit<i64>],
    mg: &'a mut [MaybeUninit<f64>],
    mg_kg: &'a mut [MaybeUninit<f64>],
    kg: &'a mut [MaybeUninit<f64>],
    weight_day: &'a mut [MaybeUninit<i32>],
    has_mg: &'a mut [MaybeUninit<bool>],
    has_weight: &'a mut [MaybeUninit<bool>],
    reason: &'a mut [MaybeUninit<IdxSize>],
}

impl<'a> DaySlots<'a> {
    /// The first `n` days' slots, and the rest.
    fn split_at(self, n: usize) -> (DaySlots<'a>, DaySlots<'a>) {
        let (piece, piece_rest) = self.piece.split_at_mut(n);
        let (adt, adt_rest) = self.adt.split_at_mut(n);
        let (orders, orders_rest) = self.orders.split_at_mut(n);
        let (mg, mg_rest) = self.mg.split_at_mut(n);
        let (mg_kg, mg_kg_rest) = self.mg_kg.split_at_mut(n);
        let (kg, kg_rest) = self.kg.split_at_mut(n);
        let (weight_day, weight_day_rest) = self.weight_day.split_at_mut(n);
        let (has_mg, has_mg_rest) = self.has_mg.split_at_mut(n);
        let (has_weight, has_weight_rest) = self.has_weight.split_at_mut(n);
        let (reason, reason_rest) = self.reason.split_at_mut(n);
        (
            DaySlots {
                piece,
                adt,
                orders,
                mg,
                mg_kg,
                kg,
                weight_day,
                has_mg,
                has_weight,
                reason,
            },
            DaySlots {
                piece: piece_rest,
                adt: adt_rest,
                orders: orders_rest,
                mg: mg_rest,
                mg_kg: mg_kg_rest,
                kg: kg_rest,
                weight_day: weight_day_rest,
                has_mg: has_mg_rest,
                has_weight: has_weight_rest,
                reason: reason_rest,
            },
        )
    }
}

/// [`SteroidEquivalent::days_with_weights`]: the days of `pieces` with their weights from
/// `weights` within `window` (days before, days after), made on every core in stretches of
/// whole pieces of about `block` days. Each piece finds its subject's weights itself, so a
/// stretch may begin anywhere; the table is the same for any `block`.
fn days_of_pieces(
    pieces: &DataFrame,
    weights: &DataFrame,
    window: (u16, u16),
    block: usize,
) -> PolarsResult<DataFrame> {
    use rayon::prelude::*;
    // The values of a column of one chunk without missing values (none is missing here).
    fn values<T: PolarsNumericType>(ca: &ChunkedArray<T>) -> PolarsResult<&[T::Native]> {
        if ca.is_empty() {
            Ok(&[])
        } else {
            ca.cont_slice()
        }
    }
    let column = |df: &DataFrame, name: &str, dtype: &DataType| -> PolarsResult<Series> {
        Ok(df
            .column(name)?
            .cast(dtype)?
            .as_materialized_series()
            .rechunk())
    };
    let (p_sid, p_from, p_to) = (
        column(pieces, "_sid", &DataType::Int64)?,
        column(pieces, "_piece_from", &DataType::Int32)?,
        column(pieces, "_piece_to", &DataType::Int32)?,
    );
    let (p_mg, p_mg_kg, p_n_kg, p_orders) = (
        column(pieces, "_mg", &DataType::Float64)?,
        column(pieces, "_mg_per_kg", &DataType::Float64)?,
        column(pieces, "_n_per_kg", &DataType::Int64)?,
        column(pieces, "NORDERS", &DataType::Int64)?,
    );
    let (w_sid, w_day, w_kg) = (
        column(weights, "_sid", &DataType::Int64)?,
        column(weights, "_wdt", &DataType::Int32)?,
        column(weights, "_w", &DataType::Float64)?,
    );
    let (p_sid, p_from, p_to) = (
        values(p_sid.i64()?)?,
        values(p_from.i32()?)?,
        values(p_to.i32()?)?,
    );
    let (p_mg, p_mg_kg) = (values(p_mg.f64()?)?, values(p_mg_kg.f64()?)?);
    let (p_n_kg, p_orders) = (values(p_n_kg.i64()?)?, values(p_orders.i64()?)?);
    let (w_sid, w_day, w_kg) = (
        values(w_sid.i64()?)?,
        values(w_day.i32()?)?,
        values(w_kg.f64()?)?,
    );
    let (before, after) = (i64::from(window.0), i64::from(window.1));
    let days_of =
        |piece: usize| (i64::from(p_to[piece]) - i64::from(p_from[piece]) + 1).max(0) as usize;
    let days: usize = (0..p_sid.len()).map(days_of).sum();

    let mut piece_of_day: Vec<IdxSize> = Vec::with_capacity(days);
    let mut adt: Vec<i32> = Vec::with_capacity(days);
    let mut orders: Vec<i64> = Vec::with_capacity(days);
    let [mut mg, mut mg_kg, mut kg] = [(); 3].map(|_| Vec::<f64>::with_capacity(days));
    let mut weight_day: Vec<i32> = Vec::with_capacity(days);
    let [mut has_mg, mut has_weight] = [(); 2].map(|_| Vec::<bool>::with_capacity(days));
    let mut reason: Vec<IdxSize> = Vec::with_capacity(days);
    // Stretches of whole pieces, each with the slots of its days.
    let mut stretches: Vec<(std::ops::Range<usize>, DaySlots)> = Vec::new();
    let mut rest = DaySlots {
        piece: &mut piece_of_day.spare_capacity_mut()[..days],
        adt: &mut adt.spare_capacity_mut()[..days],
        orders: &mut orders.spare_capacity_mut()[..days],
        mg: &mut mg.spare_capacity_mut()[..days],
        mg_kg: &mut mg_kg.spare_capacity_mut()[..days],
        kg: &mut kg.spare_capacity_mut()[..days],
        weight_day: &mut weight_day.spare_capacity_mut()[..days],
        has_mg: &mut has_mg.spare_capacity_mut()[..days],
        has_weight: &mut has_weight.spare_capacity_mut()[..days],
        reason: &mut reason.spare_capacity_mut()[..days],
    };
    let (mut first, mut in_stretch) = (0, 0);
    for piece in 0..p_sid.len() {
        in_stretch += days_of(piece);
        if in_stretch >= block || piece + 1 == p_sid.len() {
            let (slots, after_it) = rest.split_at(in_stretch);
            stretches.push((first..piece + 1, slots));
            rest = after_it;
            (first, in_stretch) = (piece + 1, 0);
        }
    }
    // Each stretch writes every one of its slots: each day of each of its pieces, in order.
    let every_slot = stretches.into_par_iter().all(|(range, out)| {
        let mut k = 0;
        for piece in range {
            let sid = p_sid[piece];
            // This subject's weights, and the first of them after the day (moved forward).
            let first = w_sid.partition_point(|&s| s < sid);
            let last = first + w_sid[first..].partition_point(|&s| s == sid);
            let (w_day, w_kg) = (&w_day[first..last], &w_kg[first..last]);
            let mut next = 0;
            let per_kg = p_n_kg[piece] > 0;
            let n = days_of(piece);
            out.piece[k..k + n].fill(MaybeUninit::new(piece as IdxSize));
            out.orders[k..k + n].fill(MaybeUninit::new(p_orders[piece]));
            out.reason[k..k + n].fill(MaybeUninit::new(IdxSize::from(!per_kg)));
            for day in p_from[piece]..=p_to[piece] {
                while next < w_day.len() && w_day[next] <= day {
                    next += 1;
                }
                let earlier = next
                    .checked_sub(1)
                    .filter(|&j| i64::from(day) - i64::from(w_day[j]) <= before);
                let later = (next < w_day.len()
                    && i64::from(w_day[next]) - i64::from(day) <= after)
                    .then_some(next);
                let weight = earlier.or(later).map(|j| (w_kg[j], w_day[j]));
                let day_mg = match weight {
                    Some((w, _)) if per_kg => Some(p_mg[piece] + p_mg_kg[piece] * w),
                    None if per_kg => None,
                    _ => Some(p_mg[piece]),
                };
                out.adt[k].write(day);
                out.mg[k].write(day_mg.unwrap_or(0.0));
                out.has_mg[k].write(day_mg.is_some());
                let (w, wd) = weight.unwrap_or((0.0, 0));
                out.kg[k].write(w);
                out.weight_day[k].write(wd);
                out.has_weight[k].write(weight.is_some());
                out.mg_kg[k].write(match (day_mg, weight) {
                    (Some(m), Some((w, _))) => m / w,
                    _ => 0.0,
                });
                k += 1;
            }
        }
        k == out.piece.len()
    });
    if !every_slot {
        polars_bail!(ComputeError: "the steroid series' days were miscounted");
    }
    // SAFETY: the stretches' slots are the first `days` of each column's capacity, one
    // stretch after another, and each stretch wrote every one of its slots of every column
    // (checked above: its days fill its slots exactly, and each day writes each column).
    unsafe {
        piece_of_day.set_len(days);
        adt.set_len(days);
        orders.set_len(days);
        mg.set_len(days);
        mg_kg.set_len(days);
        kg.set_len(days);
        weight_day.set_len(days);
        has_mg.set_len(days);
        has_weight.set_len(days);
        reason.set_len(days);
    }
    let no_weight = format!(
        "no weight within {} days before or {} days after",
        window.0, window.1
    );
    // The reason is picked from its two texts by number: every row points at the one copy
    // of its text, where a text made per row would copy about 60 bytes into each of
    // millions of days.
    let reasons = Series::new(
        "WTREASON".into(),
        [
            format!("{no_weight}; an active order is dosed in mg/kg, so PREDMG is null too"),
            no_weight,
        ],
    );
    let has_weight = crate::stages::bitmap_of(&has_weight)?;
    // Each day's reason, where it has no weight: 0 with an mg/kg order active, else 1.
    let reason = reasons.take(&IdxCa::from_vec_validity(
        "WTREASON".into(),
        reason,
        Some(!&has_weight),
    ))?;
    let has_mg = crate::stages::bitmap_of(&has_mg)?;
    // PREDMG / WEIGHT_KG: missing where either is.
    let has_mg_kg = &has_mg & &has_weight;
    let subject = pieces
        .column("subject")?
        .take(&IdxCa::from_vec("subject".into(), piece_of_day))?;
    let float = |name: &str, values: Vec<f64>, valid: &polars_arrow::bitmap::Bitmap| {
        Float64Chunked::from_vec_validity(name.into(), values, Some(valid.clone())).into_column()
    };
    let date = |name: &str, values: Vec<i32>, valid: Option<polars_arrow::bitmap::Bitmap>| {
        Int32Chunked::from_vec_validity(name.into(), values, valid)
            .into_date()
            .into_column()
    };
    DataFrame::new(
        days,
        vec![
            subject.with_name("USUBJID".into()),
            date("ADT", adt, None),
            float("PREDMG", mg, &has_mg),
            float("PREDMGKG", mg_kg, &has_mg_kg),
            float("WEIGHT_KG", kg, &has_weight),
            date("WEIGHT_DT", weight_day, Some(has_weight)),
            Int64Chunked::from_vec("NORDERS".into(), orders).into_column(),
            reason.with_name("WTREASON".into()).into_column(),
        ],
    )
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use chrono::NaiveDate;
    use proptest::prelude::*;

    use super::*;
    use crate::stages::{KIND_NAMES, Kind};

    /// The reference drug and frequency tables (DOMAIN.md 4.2), as the pipeline ships them.
    const STAGE_YAML: &str = "pipeline: t
stages:
  - name: steroid_daily
    kind: steroid_equivalent
    inputs: [steroids, weights, visits, diary]
    orders: steroids
    weights: weights
    final_visit_from: visits
    span_tables: {steroids: [start, end], diary: [date]}
    drugs:
      prednisone: {equivalent_mg: 5}
      prednisolone: {equivalent_mg: 5}
      methylprednisolone: {equivalent_mg: 4, synonyms: [Solu-Medrol, Medrol, methylpred]}
      triamcinolone: {equivalent_mg: 4}
      hydrocortisone: {equivalent_mg: 20, synonyms: [cortisol, Solu-Cortef]}
      cortisone: {equivalent_mg: 25}
      dexamethasone: {equivalent_mg: 0.75, synonyms: [Decadron]}
      betamethasone: {equivalent_mg: 0.6}
      deflazacort: {equivalent_mg: 6}
    frequencies:
      QD: 1
      daily: 1
      BID: 2
      TID: 3
      QID: 4
      QOD: 0.5
      every other day: 0.5
      weekly: 1/7
";

    fn spec_of(yaml: &str) -> PipelineSpec {
        PipelineSpec::parse(Path::new("p.yaml"), yaml.to_string()).unwrap()
    }

    fn stage() -> SteroidEquivalent {
        spec_of(STAGE_YAML).stage_params(0).unwrap()
    }

    fn day(text: &str) -> i32 {
        let epoch = NaiveDate::from_ymd_opt(1970, 1, 1).unwrap();
        let d = NaiveDate::parse_from_str(text, "%Y-%m-%d").unwrap();
        (d - epoch).num_days() as i32
    }

    fn dates(name: &str, values: &[Option<&str>]) -> Column {
        let days: Vec<Option<i32>> = values.iter().map(|v| v.map(day)).collect();
        Column::new(name.into(), days)
            .cast(&DataType::Date)
            .unwrap()
    }

    /// (subject, drug, dose, dose_unit, frequency, start, end)
    type Order<'a> = (
        &'a str,
        &'a str,
        f64,
        &'a str,
        &'a str,
        &'a str,
        Option<&'a str>,
    );

    fn orders(rows: &[Order]) -> DataFrame {
        let n = rows.len();
        DataFrame::new(
            n,
            vec![
                Column::new(
                    "subject".into(),
                    rows.iter().map(|r| r.0).collect::<Vec<_>>(),
                ),
                Column::new("drug".into(), rows.iter().map(|r| r.1).collect::<Vec<_>>()),
                Column::new("dose".into(), rows.iter().map(|r| r.2).collect::<Vec<_>>()),
                Column::new(
                    "dose_unit".into(),
                    rows.iter().map(|r| r.3).collect::<Vec<_>>(),
                ),
                Column::new(
                    "frequency".into(),
                    rows.iter().map(|r| r.4).collect::<Vec<_>>(),
                ),
                Column::new("route".into(), vec!["oral"; n]),
                dates("start", &rows.iter().map(|r| Some(r.5)).collect::<Vec<_>>()),
                dates("end", &rows.iter().map(|r| r.6).collect::<Vec<_>>()),
                Column::new("SITE".into(), vec!["nih"; n]),
                Column::new("SRCFILE".into(), vec!["nih/steroids_2017-06-30.csv"; n]),
                Column::new("SRCLINE".into(), (2..2 + n as i64).collect::<Vec<_>>()),
            ],
        )
        .unwrap()
    }

    fn dated(rows: &[(&str, &str)]) -> DataFrame {
        DataFrame::new(
            rows.len(),
            vec![
                Column::new(
                    "subject".into(),
                    rows.iter().map(|r| r.0).collect::<Vec<_>>(),
                ),
                dates("date", &rows.iter().map(|r| Some(r.1)).collect::<Vec<_>>()),
            ],
        )
        .unwrap()
    }

    fn weights(rows: &[(&str, &str, f64)]) -> DataFrame {
        let mut df = dated(&rows.iter().map(|r| (r.0, r.1)).collect::<Vec<_>>());
        df.with_column(Column::new(
            "weight_kg".into(),
            rows.iter().map(|r| r.2).collect::<Vec<_>>(),
        ))
        .unwrap();
        df
    }

    struct Run {
        daily: DataFrame,
        rejects: DataFrame,
    }

    fn run_with(
        stage: &SteroidEquivalent,
        orders: DataFrame,
        weights: DataFrame,
        visits: DataFrame,
        diary: DataFrame,
    ) -> Run {
        let spec = spec_of(STAGE_YAML);
        let ctx = StageCtx {
            name: "steroid_daily",
            spec: &spec,
            run_date: NaiveDate::from_ymd_opt(2024, 1, 1).unwrap(),
            data_dir: Path::new("."),
            base_dir: Path::new("."),
            sources: &[],
        };
        let inputs = Inputs {
            tables: vec![
                ("steroids".into(), orders),
                ("weights".into(), weights),
                ("visits".into(), visits),
                ("diary".into(), diary),
            ],
        };
        let out = stage.run(&ctx, &inputs).unwrap();
        Run {
            daily: out.table.collect().unwrap(),
            rejects: out.rejects.unwrap(),
        }
    }

    fn run(
        orders_rows: &[Order],
        weight_rows: &[(&str, &str, f64)],
        visit_rows: &[(&str, &str)],
    ) -> Run {
        run_with(
            &stage(),
            orders(orders_rows),
            weights(weight_rows),
            dated(visit_rows),
            dated(&[]),
        )
    }

    fn floats(df: &DataFrame, name: &str) -> Vec<Option<f64>> {
        df.column(name).unwrap().f64().unwrap().iter().collect()
    }

    fn ints(df: &DataFrame, name: &str) -> Vec<i64> {
        df.column(name)
            .unwrap()
            .i64()
            .unwrap()
            .iter()
            .map(|v| v.unwrap())
            .collect()
    }

    fn texts(df: &DataFrame, name: &str) -> Vec<Option<String>> {
        df.column(name)
            .unwrap()
            .str()
            .unwrap()
            .iter()
            .map(|v| v.map(str::to_string))
            .collect()
    }

    fn days_of(df: &DataFrame, name: &str) -> Vec<Option<i32>> {
        df.column(name)
            .unwrap()
            .cast(&DataType::Int32)
            .unwrap()
            .i32()
            .unwrap()
            .iter()
            .collect()
    }

    fn mg(df: &DataFrame) -> Vec<f64> {
        floats(df, "PREDMG")
            .into_iter()
            .map(|v| v.unwrap())
            .collect()
    }

    fn assert_close(got: &[f64], want: &[f64]) {
        assert_eq!(got.len(), want.len(), "{got:?} vs {want:?}");
        for (g, w) in got.iter().zip(want) {
            assert!(
                (g - w).abs() <= 1e-12 * w.abs().max(1.0),
                "{got:?} vs {want:?}"
            );
        }
    }

    #[test]
    fn output_has_one_row_per_subject_day_with_adam_columns() {
        let r = run(
            &[(
                "C1",
                "prednisone",
                10.0,
                "mg",
                "QD",
                "2020-01-02",
                Some("2020-01-03"),
            )],
            &[("C1", "2020-01-01", 20.0)],
            &[("C1", "2020-01-01"), ("C1", "2020-01-04")],
        );
        let names: Vec<&str> = r
            .daily
            .get_column_names()
            .iter()
            .map(|n| n.as_str())
            .collect();
        assert_eq!(
            names,
            [
                "USUBJID",
                "ADT",
                "PREDMG",
                "PREDMGKG",
                "WEIGHT_KG",
                "WEIGHT_DT",
                "NORDERS",
                "WTREASON"
            ]
        );
        assert_eq!(r.daily.column("ADT").unwrap().dtype(), &DataType::Date);
        assert_eq!(
            r.daily.column("WEIGHT_DT").unwrap().dtype(),
            &DataType::Date
        );
        // Span: first observed date 2020-01-01 (visit) to the final visit 2020-01-04.
        let adt = days_of(&r.daily, "ADT");
        let first = day("2020-01-01");
        assert_eq!(adt, (first..first + 4).map(Some).collect::<Vec<_>>());
        // 10 mg x 1/day x factor 1 on the two order days.
        assert_close(&mg(&r.daily), &[0.0, 10.0, 10.0, 0.0]);
        // 10 mg / 20 kg = 0.5; a 0 mg day with a weight is 0 mg/kg.
        assert_eq!(
            floats(&r.daily, "PREDMGKG"),
            [Some(0.0), Some(0.5), Some(0.5), Some(0.0)]
        );
        assert_eq!(ints(&r.daily, "NORDERS"), [0, 1, 1, 0]);
        assert_eq!(r.rejects.height(), 0);
        let reject_names: Vec<&str> = r
            .rejects
            .get_column_names()
            .iter()
            .map(|n| n.as_str())
            .collect();
        assert_eq!(
            reject_names,
            [
                "SRCFILE", "SRCLINE", "SITE", "COLUMN", "RAWVALUE", "RULE", "REASON"
            ]
        );
    }

    #[test]
    fn ongoing_order_runs_until_the_day_before_the_next_order_of_the_same_drug() {
        let r = run(
            &[
                ("C1", "prednisone", 10.0, "mg", "QD", "2020-01-01", None),
                ("C1", "prednisone", 5.0, "mg", "QD", "2020-01-04", None),
            ],
            &[],
            &[("C1", "2020-01-06")],
        );
        // 01-01..01-03: first order (10 mg); 01-04..01-06: second order (5 mg), which runs
        // up to the final visit.
        assert_close(&mg(&r.daily), &[10.0, 10.0, 10.0, 5.0, 5.0, 5.0]);
        assert_eq!(ints(&r.daily, "NORDERS"), [1, 1, 1, 1, 1, 1]);
    }

    #[test]
    fn ongoing_order_is_closed_by_a_synonym_of_its_drug_not_by_another_drug() {
        let r = run(
            &[
                ("C1", "Medrol", 4.0, "mg", "QD", "2020-01-01", None),
                (
                    "C1",
                    " solu-medrol ",
                    8.0,
                    "mg",
                    "BID",
                    "2020-01-03",
                    Some("2020-01-04"),
                ),
                ("C1", "prednisone", 2.0, "mg", "QD", "2020-01-02", None),
            ],
            &[],
            &[("C1", "2020-01-05")],
        );
        // Medrol (methylprednisolone, factor 5/4 = 1.25): 4 x 1 x 1.25 = 5 mg on 01-01..01-02,
        // closed the day before Solu-Medrol starts; Solu-Medrol 8 x 2 x 1.25 = 20 mg on
        // 01-03..01-04; prednisone 2 mg from 01-02 to the final visit (another drug).
        // 01-01: 5; 01-02: 5 + 2 = 7; 01-03, 01-04: 20 + 2 = 22; 01-05: 2.
        assert_close(&mg(&r.daily), &[5.0, 7.0, 22.0, 22.0, 2.0]);
        assert_eq!(ints(&r.daily, "NORDERS"), [1, 2, 2, 2, 1]);
    }

    #[test]
    fn overlapping_orders_of_different_drugs_are_summed() {
        let r = run(
            &[
                (
                    "C1",
                    "prednisone",
                    10.0,
                    "mg",
                    "QD",
                    "2020-01-01",
                    Some("2020-01-03"),
                ),
                (
                    "C1",
                    "hydrocortisone",
                    20.0,
                    "mg",
                    "BID",
                    "2020-01-02",
                    Some("2020-01-02"),
                ),
                (
                    "C1",
                    "Prednisolone",
                    1.0,
                    "mg",
                    "TID",
                    "2020-01-03",
                    Some("2020-01-03"),
                ),
            ],
            &[],
            &[("C1", "2020-01-03")],
        );
        // 01-01: 10; 01-02: 10 + 20 x 2 x 0.25 (= 10) = 20; 01-03: 10 + 1 x 3 x 1 = 13.
        assert_close(&mg(&r.daily), &[10.0, 20.0, 13.0]);
    }

    #[test]
    fn qod_and_weekly_doses_are_averaged_per_day() {
        let r = run(
            &[
                (
                    "C1",
                    "prednisone",
                    10.0,
                    "mg",
                    "QOD",
                    "2020-01-01",
                    Some("2020-01-01"),
                ),
                (
                    "C1",
                    "prednisone",
                    10.0,
                    "mg",
                    "every  other DAY",
                    "2020-01-02",
                    Some("2020-01-02"),
                ),
                (
                    "C1",
                    "prednisone",
                    70.0,
                    "mg",
                    "Weekly",
                    "2020-01-03",
                    Some("2020-01-03"),
                ),
                (
                    "C1",
                    "prednisone",
                    10.0,
                    "mg",
                    "weekly",
                    "2020-01-04",
                    Some("2020-01-04"),
                ),
            ],
            &[],
            &[("C1", "2020-01-04")],
        );
        // QOD: 10 x 0.5 = 5 a day; weekly: 70 / 7 = 10 and 10 / 7 = 1.428571... a day.
        assert_close(&mg(&r.daily), &[5.0, 5.0, 10.0, 10.0 * (1.0 / 7.0)]);
    }

    #[test]
    fn dexamethasone_factor_is_five_over_0_75_unrounded() {
        let r = run(
            &[(
                "C1",
                "Decadron",
                1.0,
                "mg",
                "QD",
                "2020-01-01",
                Some("2020-01-01"),
            )],
            &[],
            &[("C1", "2020-01-01")],
        );
        // 1 mg x 1 x 5 / 0.75 = 6.666666666666667 (not the rounded 6.6667).
        assert_eq!(mg(&r.daily), [5.0 / 0.75]);
        assert_ne!(mg(&r.daily)[0], 6.6667);
    }

    #[test]
    fn mg_per_kg_dose_uses_the_weight_of_that_day() {
        let r = run(
            &[(
                "C1",
                "prednisone",
                0.5,
                " MG / kg",
                "BID",
                "2020-01-01",
                Some("2020-01-02"),
            )],
            &[("C1", "2020-01-01", 20.0), ("C1", "2020-01-02", 30.0)],
            &[("C1", "2020-01-02")],
        );
        // 01-01: 0.5 mg/kg x 20 kg x 2 = 20 mg, 20 / 20 = 1 mg/kg/day;
        // 01-02: 0.5 x 30 x 2 = 30 mg, 30 / 30 = 1 mg/kg/day.
        assert_close(&mg(&r.daily), &[20.0, 30.0]);
        assert_eq!(floats(&r.daily, "PREDMGKG"), [Some(1.0), Some(1.0)]);
        assert_eq!(floats(&r.daily, "WEIGHT_KG"), [Some(20.0), Some(30.0)]);
    }

    #[test]
    fn mg_per_kg_dose_without_a_weight_makes_the_day_mg_null_with_the_reason() {
        let r = run(
            &[
                (
                    "C1",
                    "prednisone",
                    0.5,
                    "mg/kg",
                    "QD",
                    "2020-01-01",
                    Some("2020-01-01"),
                ),
                (
                    "C1",
                    "prednisone",
                    5.0,
                    "mg",
                    "QD",
                    "2020-01-02",
                    Some("2020-01-02"),
                ),
            ],
            &[],
            &[("C1", "2020-01-02")],
        );
        assert_eq!(floats(&r.daily, "PREDMG"), [None, Some(5.0)]);
        assert_eq!(floats(&r.daily, "PREDMGKG"), [None, None]);
        let reasons = texts(&r.daily, "WTREASON");
        assert_eq!(
            reasons[0].as_deref(),
            Some(
                "no weight within 365 days before or 90 days after; an active order is dosed \
                 in mg/kg, so PREDMG is null too"
            )
        );
        assert_eq!(
            reasons[1].as_deref(),
            Some("no weight within 365 days before or 90 days after")
        );
    }

    /// Each reason text is stored once, whatever the number of days it explains: a long
    /// course without a weight must not hold a copy of the text per day.
    #[test]
    fn a_reason_is_stored_once_for_all_its_days() {
        // A year of daily prednisone for each subject, neither with a weight.
        let year = |subject, dose, unit| {
            (
                subject,
                "prednisone",
                dose,
                unit,
                "QD",
                "2020-01-01",
                Some("2020-12-31"),
            )
        };
        let r = run(
            &[year("C1", 0.5, "mg/kg"), year("C2", 5.0, "mg")],
            &[],
            &[("C1", "2020-12-31"), ("C2", "2020-12-31")],
        );
        let reasons = texts(&r.daily, "WTREASON");
        assert_eq!(reasons.len(), 2 * 366);
        assert!(
            reasons[..366]
                .iter()
                .all(|t| t.as_deref().is_some_and(|t| t.contains("mg/kg")))
        );
        assert!(
            reasons[366..]
                .iter()
                .all(|t| t.as_deref() == Some("no weight within 365 days before or 90 days after"))
        );
        let stored: usize = r
            .daily
            .column("WTREASON")
            .unwrap()
            .str()
            .unwrap()
            .downcast_iter()
            .map(|a| a.total_buffer_len())
            .sum();
        // The two texts (about 60 and 125 bytes), not 732 copies.
        assert!(
            stored < 1_000,
            "{stored} bytes of reason text for two texts"
        );
    }

    #[test]
    fn earlier_weight_counts_up_to_365_days_before_inclusive() {
        let r = run(
            &[(
                "C1",
                "prednisone",
                10.0,
                "mg",
                "QD",
                "2020-01-01",
                Some("2020-01-02"),
            )],
            &[("C1", "2019-01-01", 20.0), ("C1", "2020-06-01", 40.0)],
            &[("C1", "2020-01-02")],
        );
        // 2019-01-01 + 365 days = 2020-01-01 (2019 has 365 days): used, 10 / 20 = 0.5.
        // 2020-01-02 is 366 days after: not used; the later weight (2020-06-01) is 151 days away.
        assert_eq!(floats(&r.daily, "PREDMGKG"), [Some(0.5), None]);
        assert_eq!(floats(&r.daily, "WEIGHT_KG"), [Some(20.0), None]);
        assert_eq!(
            days_of(&r.daily, "WEIGHT_DT"),
            [Some(day("2019-01-01")), None]
        );
        assert_eq!(floats(&r.daily, "PREDMG"), [Some(10.0), Some(10.0)]);
        assert_eq!(
            texts(&r.daily, "WTREASON"),
            [
                None,
                Some("no weight within 365 days before or 90 days after".to_string())
            ]
        );
    }

    #[test]
    fn later_weight_counts_up_to_90_days_after_inclusive() {
        let r = run(
            &[(
                "C1",
                "prednisone",
                10.0,
                "mg",
                "QD",
                "2020-01-01",
                Some("2020-01-02"),
            )],
            &[("C1", "2020-04-01", 25.0)],
            &[("C1", "2020-01-02")],
        );
        // 2020-01-01 + 91 days = 2020-04-01 (31 + 29 + 31): not used;
        // 2020-01-02 + 90 days = 2020-04-01: used, 10 / 25 = 0.4.
        assert_eq!(floats(&r.daily, "PREDMGKG"), [None, Some(0.4)]);
        assert_eq!(
            days_of(&r.daily, "WEIGHT_DT"),
            [None, Some(day("2020-04-01"))]
        );
    }

    #[test]
    fn earlier_weight_within_window_wins_over_a_closer_later_one() {
        let r = run(
            &[(
                "C1",
                "prednisone",
                12.0,
                "mg",
                "QD",
                "2020-01-01",
                Some("2020-01-01"),
            )],
            &[("C1", "2019-03-01", 24.0), ("C1", "2020-01-02", 30.0)],
            &[("C1", "2020-01-01")],
        );
        // The weight on or before wins (2019-03-01, 306 days before): 12 / 24 = 0.5.
        assert_eq!(floats(&r.daily, "PREDMGKG"), [Some(0.5)]);
    }

    #[test]
    fn zero_mg_day_without_weight_has_null_mg_per_kg() {
        let r = run(&[], &[], &[("C1", "2020-01-01")]);
        assert_eq!(floats(&r.daily, "PREDMG"), [Some(0.0)]);
        assert_eq!(floats(&r.daily, "PREDMGKG"), [None]);
        assert_eq!(ints(&r.daily, "NORDERS"), [0]);
        assert_eq!(
            texts(&r.daily, "WTREASON"),
            [Some(
                "no weight within 365 days before or 90 days after".to_string()
            )]
        );
    }

    #[test]
    fn unknown_drug_frequency_and_dose_unit_reject_the_order_with_the_reason() {
        let r = run(
            &[
                ("C1", "Predisone", 10.0, "mg", "QD", "2020-01-01", None),
                ("C1", "prednisone", 10.0, "mg", "q6h", "2020-01-01", None),
                ("C1", "prednisone", 10.0, "mcg", "QD", "2020-01-01", None),
                (
                    "C1",
                    "prednisone",
                    1.0,
                    "mg",
                    "QD",
                    "2020-01-02",
                    Some("2020-01-01"),
                ),
            ],
            &[],
            &[("C1", "2020-01-02")],
        );
        // Rejected orders never count as zero or anything else: nothing is active.
        assert_close(&mg(&r.daily), &[0.0, 0.0]);
        let rj = &r.rejects;
        assert_eq!(ints(rj, "SRCLINE"), [2, 3, 4, 5]);
        assert_eq!(
            texts(rj, "RULE"),
            ["drug", "frequency", "dose_unit", "date_range"].map(|s| Some(s.to_string()))
        );
        assert_eq!(
            texts(rj, "COLUMN"),
            ["drug", "frequency", "dose_unit", "end"].map(|s| Some(s.to_string()))
        );
        assert_eq!(
            texts(rj, "RAWVALUE"),
            ["Predisone", "q6h", "mcg", "2020-01-01"].map(|s| Some(s.to_string()))
        );
        assert_eq!(
            texts(rj, "SRCFILE")[0].as_deref(),
            Some("nih/steroids_2017-06-30.csv")
        );
        assert_eq!(texts(rj, "SITE")[0].as_deref(), Some("nih"));
        let reasons = texts(rj, "REASON");
        assert_eq!(
            reasons[0].as_deref(),
            Some(
                "unknown drug `Predisone`; did you mean `prednisone`? known drugs: \
                 betamethasone, cortisone, deflazacort, dexamethasone, hydrocortisone, \
                 methylprednisolone, prednisolone, prednisone, triamcinolone"
            )
        );
        assert_eq!(
            reasons[1].as_deref(),
            Some(
                "unknown frequency `q6h`; accepted: BID, QD, QID, QOD, TID, daily, \
                 every other day, weekly"
            )
        );
        assert_eq!(
            reasons[2].as_deref(),
            Some("unknown dose unit `mcg`; accepted: mg, mg/kg")
        );
        assert_eq!(
            reasons[3].as_deref(),
            Some("end 2020-01-01 is before start 2020-01-02")
        );
    }

    #[test]
    fn subject_without_a_visit_has_no_rows_and_its_orders_are_rejected() {
        let r = run(
            &[
                ("C1", "prednisone", 10.0, "mg", "QD", "2020-01-01", None),
                ("C2", "prednisone", 10.0, "mg", "QD", "2020-01-01", None),
            ],
            &[],
            &[("C1", "2020-01-01")],
        );
        assert_eq!(texts(&r.daily, "USUBJID"), [Some("C1".to_string())]);
        assert_eq!(texts(&r.rejects, "RULE"), [Some("span".to_string())]);
        assert_eq!(texts(&r.rejects, "RAWVALUE"), [Some("C2".to_string())]);
        assert_eq!(ints(&r.rejects, "SRCLINE"), [3]);
    }

    #[test]
    fn series_starts_at_the_earliest_event_in_any_span_table_and_ends_at_the_final_visit() {
        let r = run_with(
            &stage(),
            orders(&[("C1", "prednisone", 10.0, "mg", "QD", "2020-01-03", None)]),
            weights(&[]),
            dated(&[("C1", "2020-01-04"), ("C1", "2020-01-02")]),
            dated(&[("C1", "2020-01-01"), ("C1", "2020-01-09")]),
        );
        // First observed date: diary 2020-01-01; final visit 2020-01-04 (the diary entry after
        // it does not extend the series). The ongoing order runs to the final visit.
        let first = day("2020-01-01");
        assert_eq!(
            days_of(&r.daily, "ADT"),
            (first..first + 4).map(Some).collect::<Vec<_>>()
        );
        assert_close(&mg(&r.daily), &[0.0, 0.0, 10.0, 10.0]);
    }

    #[test]
    fn check_reports_every_problem_of_the_parameters() {
        let yaml = "pipeline: t
stages:
  - name: steroid_daily
    kind: steroid_equivalent
    orders: steroids
    weights: weights
    final_visit_from: visits
    span_tables: {diary: []}
    drugs:
      prednisone: {equivalent_mg: 5, synonyms: [Medrol]}
      methylprednisolone: {equivalent_mg: 0, synonyms: [Medrol]}
      dexamethasone: {equivalent_mg: 0.75, synonyms: [' MEDROL']}
    frequencies: {QD: 1, ' qd ': 1, weekly: 1/x}
";
        let spec = spec_of(yaml);
        let stage: SteroidEquivalent = spec.stage_params(0).unwrap();
        let problems = stage.check(&spec);
        let all = problems.join("\n");
        assert!(
            all.contains("drug `methylprednisolone`: equivalent_mg 0 is not a positive number"),
            "{all}"
        );
        // Drugs are read in name order: dexamethasone's ` MEDROL` comes first.
        assert!(
            all.contains(
                "`Medrol` names two drugs: `dexamethasone` (as ` MEDROL`) and `prednisone`"
            ),
            "{all}"
        );
        assert!(
            all.contains("frequencies `QD` and ` qd ` are the same spelling")
                || all.contains("frequencies ` qd ` and `QD` are the same spelling"),
            "{all}"
        );
        assert!(
            all.contains("frequency `weekly`: `1/x` is not a number"),
            "{all}"
        );
        assert!(
            all.contains("span_tables: `diary` lists no date column"),
            "{all}"
        );
        assert!(
            all.contains("no stage produces the table `steroids`"),
            "{all}"
        );
    }

    #[test]
    fn reference_parameters_check_clean_and_weekly_is_one_seventh() {
        let stage = stage();
        let lookups = stage.lookups().unwrap();
        let weekly = lookups
            .frequencies
            .iter()
            .find(|(k, _)| k == "weekly")
            .unwrap()
            .1;
        assert_eq!(weekly, 1.0 / 7.0);
        assert_eq!(stage.arity(), Arity::Exactly(4));
        let mut yaml = STAGE_YAML.to_string();
        for table in ["steroids", "weights", "visits", "diary"] {
            yaml.push_str(&format!("  - name: {table}\n    kind: sql\n"));
        }
        assert_eq!(stage.check(&spec_of(&yaml)), Vec::<String>::new());
    }

    #[test]
    fn missing_column_is_a_clear_error() {
        let spec = spec_of(STAGE_YAML);
        let ctx = StageCtx {
            name: "steroid_daily",
            spec: &spec,
            run_date: NaiveDate::from_ymd_opt(2024, 1, 1).unwrap(),
            data_dir: Path::new("."),
            base_dir: Path::new("."),
            sources: &[],
        };
        let mut bad = orders(&[]);
        bad.rename("dose_unit", "doseunit".into()).unwrap();
        let inputs = Inputs {
            tables: vec![
                ("steroids".into(), bad),
                ("weights".into(), weights(&[])),
                ("visits".into(), dated(&[])),
                ("diary".into(), dated(&[])),
            ],
        };
        let err = stage().run(&ctx, &inputs).err().unwrap().to_string();
        assert!(
            err.contains("table `steroids` has no column `dose_unit`"),
            "{err}"
        );
        assert!(err.contains("closest: `doseunit`"), "{err}");
    }

    #[test]
    fn empty_inputs_give_an_empty_table_with_the_output_schema() {
        let mut no_orders = orders(&[]);
        // An all-missing column may arrive untyped.
        no_orders
            .with_column(Column::full_null("end".into(), 0, &DataType::Null))
            .unwrap();
        let r = run_with(&stage(), no_orders, weights(&[]), dated(&[]), dated(&[]));
        assert_eq!(r.daily.height(), 0);
        assert_eq!(r.daily.width(), 8);
        assert_eq!(
            r.daily.column("PREDMG").unwrap().dtype(),
            &DataType::Float64
        );
        assert_eq!(r.rejects.height(), 0);
    }

    #[test]
    fn kind_is_registered_under_its_yaml_name() {
        let spec = spec_of(STAGE_YAML);
        let kind = Kind::parse(&spec, 0, "steroid_equivalent").unwrap();
        assert!(matches!(kind, Kind::SteroidEquivalent(_)));
        assert!(KIND_NAMES.contains(&"steroid_equivalent"));
    }

    const PROP_DRUGS: &[(&str, f64)] = &[
        ("prednisone", 1.0),
        ("Medrol", 1.25),
        ("methylprednisolone", 1.25),
        ("dexamethasone", 5.0 / 0.75),
        // Unknown: rejected, so it neither counts nor closes an ongoing order.
        ("Predisone", 0.0),
    ];
    const PROP_UNKNOWN_DRUG: usize = 4;
    const PROP_FREQUENCIES: &[(&str, f64)] = &[
        ("QD", 1.0),
        ("BID", 2.0),
        ("QOD", 0.5),
        ("weekly", 1.0 / 7.0),
    ];

    /// (subject, drug index, dose, frequency index, start offset, end length or ongoing)
    type PropOrder = (usize, usize, u8, usize, i32, Option<i32>);

    #[test]
    fn order_columns_read_codes_of_an_upstream_recode() {
        let yaml = STAGE_YAML.replace(
            "    orders: steroids\n",
            "    orders: steroids\n    order_columns: {drug: drug_std, frequency: frequency_std, dose_unit: dose_unit_std}\n",
        );
        let stage: SteroidEquivalent = spec_of(&yaml).stage_params(0).unwrap();
        let mut o = orders(&[
            (
                "C1",
                "Solu-Medrol",
                8.0,
                "MG",
                "bid",
                "2020-01-02",
                Some("2020-01-02"),
            ),
            (
                "C1",
                "prednisone",
                2.0,
                "mg",
                "wrong",
                "2020-01-03",
                Some("2020-01-03"),
            ),
        ]);
        // The columns as written hold spellings the tables do not list; the codes are read.
        o.with_column(Column::new(
            "drug_std".into(),
            ["methylprednisolone", "Predisone"],
        ))
        .unwrap();
        o.with_column(Column::new("frequency_std".into(), ["BID", "QD"]))
            .unwrap();
        o.with_column(Column::new("dose_unit_std".into(), ["mg", "mg"]))
            .unwrap();
        let r = run_with(
            &stage,
            o,
            weights(&[("C1", "2020-01-01", 20.0)]),
            dated(&[("C1", "2020-01-01"), ("C1", "2020-01-03")]),
            dated(&[]),
        );
        // 8 mg x 2/day x 5/4 = 20 mg on 2020-01-02; the second order is rejected.
        assert_close(&mg(&r.daily), &[0.0, 20.0, 0.0]);
        assert_eq!(texts(&r.rejects, "RULE"), [Some("drug".to_string())]);
        assert_eq!(texts(&r.rejects, "COLUMN"), [Some("drug_std".to_string())]);
        assert_eq!(
            texts(&r.rejects, "RAWVALUE"),
            [Some("Predisone".to_string())]
        );
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        #[test]
        fn daily_series_covers_the_span_once_and_sums_every_order(
            order_rows in prop::collection::vec(
                (0..2usize, 0..5usize, 0..40u8, 0..4usize, 0..40i32, prop::option::of(0..15i32)),
                0..8,
            ),
            visit_rows in prop::collection::vec((0..2usize, 0..50i32), 0..5),
        ) {
            let subjects = ["A", "B"];
            let date_text = |offset: i32| {
                (NaiveDate::from_ymd_opt(2020, 1, 1).unwrap() + chrono::Days::new(offset as u64))
                    .format("%Y-%m-%d")
                    .to_string()
            };
            let texts_of: Vec<(String, Option<String>)> = order_rows
                .iter()
                .map(|o: &PropOrder| (date_text(o.4), o.5.map(|len| date_text(o.4 + len))))
                .collect();
            let order_list: Vec<Order> = order_rows
                .iter()
                .zip(&texts_of)
                .map(|(o, (start, end))| {
                    (
                        subjects[o.0],
                        PROP_DRUGS[o.1].0,
                        f64::from(o.2),
                        "mg",
                        PROP_FREQUENCIES[o.3].0,
                        start.as_str(),
                        end.as_deref(),
                    )
                })
                .collect();
            let visit_texts: Vec<(usize, String)> =
                visit_rows.iter().map(|v| (v.0, date_text(v.1))).collect();
            let visit_list: Vec<(&str, &str)> =
                visit_texts.iter().map(|v| (subjects[v.0], v.1.as_str())).collect();
            let r = run(&order_list, &[], &visit_list);

            // Oracle, written independently as plain loops over days offsets.
            let canonical = |i: usize| if i == 1 { 2 } else { i };
            let mut want_total = 0.0;
            let mut want_active_days = 0i64;
            let mut want_rows = 0usize;
            let mut want_rejects = 0usize;
            for s in 0..2 {
                let visits: Vec<i32> =
                    visit_rows.iter().filter(|v| v.0 == s).map(|v| v.1).collect();
                let mine: Vec<&PropOrder> = order_rows.iter().filter(|o| o.0 == s).collect();
                let unknown = mine.iter().filter(|o| o.1 == PROP_UNKNOWN_DRUG).count();
                let Some(&last) = visits.iter().max() else {
                    // Unknown drugs are rejected as `drug`, the others as `span`.
                    want_rejects += mine.len();
                    continue;
                };
                want_rejects += unknown;
                let first = mine
                    .iter()
                    .flat_map(|o| [Some(o.4), o.5.map(|l| o.4 + l)])
                    .flatten()
                    .chain(visits.iter().copied())
                    .min()
                    .unwrap_or(last);
                want_rows += (last - first + 1) as usize;
                for o in mine.iter().filter(|o| o.1 != PROP_UNKNOWN_DRUG) {
                    let end = match o.5 {
                        Some(len) => o.4 + len,
                        None => mine
                            .iter()
                            .filter(|p| {
                                p.1 != PROP_UNKNOWN_DRUG
                                    && canonical(p.1) == canonical(o.1)
                                    && p.4 > o.4
                            })
                            .map(|p| p.4 - 1)
                            .min()
                            .unwrap_or(last),
                    };
                    let active = (end.min(last) - o.4.max(first) + 1).max(0);
                    want_active_days += i64::from(active);
                    want_total += f64::from(o.2) * PROP_FREQUENCIES[o.3].1 * PROP_DRUGS[o.1].1
                        * f64::from(active);
                }
            }

            let d = &r.daily;
            prop_assert_eq!(r.rejects.height(), want_rejects);
            prop_assert_eq!(d.height(), want_rows);
            let keys = d.select(["USUBJID", "ADT"]).unwrap();
            prop_assert_eq!(keys.is_duplicated().unwrap().sum(), Some(0));
            let mgs = mg(d);
            prop_assert!(mgs.iter().all(|v| *v >= 0.0));
            let total: f64 = mgs.iter().sum();
            prop_assert!(
                (total - want_total).abs() <= 1e-9 * want_total.max(1.0),
                "{} vs {}",
                total,
                want_total
            );
            prop_assert_eq!(ints(d, "NORDERS").iter().sum::<i64>(), want_active_days);
            // Consecutive days within each subject.
            let adt = days_of(d, "ADT");
            let ids = texts(d, "USUBJID");
            for i in 1..d.height() {
                if ids[i] == ids[i - 1] {
                    prop_assert_eq!(adt[i].unwrap(), adt[i - 1].unwrap() + 1);
                } else {
                    prop_assert!(ids[i] > ids[i - 1]);
                }
            }
        }

        /// Each day's weight against a plain search of that subject's weights: the latest on
        /// or before the day within 365 days, else the earliest after it within 90, the mean
        /// of a date's several weights; never another subject's, whatever lies next to it.
        #[test]
        fn each_day_takes_its_own_subjects_weight_within_the_windows(
            weight_rows in prop::collection::vec((0..3usize, -500..700i32, 1..80u8), 0..12),
            last_visit in prop::collection::vec(0..400i32, 3),
        ) {
            let subjects = ["A", "B", "C"];
            let date_text = |offset: i32| {
                (NaiveDate::from_ymd_opt(2020, 1, 1).unwrap() + chrono::Duration::days(offset.into()))
                    .format("%Y-%m-%d")
                    .to_string()
            };
            // One order per subject from day 0; the series runs to the subject's last visit.
            let order_list: Vec<Order> = subjects
                .iter()
                .map(|s| (*s, "prednisone", 10.0, "mg", "QD", "2020-01-01", None))
                .collect();
            let visit_texts: Vec<String> = last_visit.iter().map(|d| date_text(*d)).collect();
            let visit_list: Vec<(&str, &str)> =
                subjects.iter().zip(&visit_texts).map(|(s, v)| (*s, v.as_str())).collect();
            let weight_texts: Vec<String> = weight_rows.iter().map(|w| date_text(w.1)).collect();
            let weight_list: Vec<(&str, &str, f64)> = weight_rows
                .iter()
                .zip(&weight_texts)
                .map(|(w, t)| (subjects[w.0], t.as_str(), f64::from(w.2)))
                .collect();
            let r = run(&order_list, &weight_list, &visit_list);

            let base = day("2020-01-01");
            let mean_on = |s: usize, d: i32| {
                let kg: Vec<f64> = weight_rows
                    .iter()
                    .filter(|w| w.0 == s && w.1 == d)
                    .map(|w| f64::from(w.2))
                    .collect();
                kg.iter().sum::<f64>() / kg.len() as f64
            };
            let mut want = Vec::new();
            for (s, last) in last_visit.iter().enumerate() {
                for d in 0..=*last {
                    let dates = weight_rows.iter().filter(|w| w.0 == s).map(|w| w.1);
                    let before = dates.clone().filter(|w| *w <= d && d - w <= 365).max();
                    let after = dates.filter(|w| *w >= d && w - d <= 90).min();
                    want.push(before.or(after).map(|w| (mean_on(s, w), w + base)));
                }
            }
            let d = &r.daily;
            let got: Vec<Option<(f64, i32)>> = floats(d, "WEIGHT_KG")
                .into_iter()
                .zip(days_of(d, "WEIGHT_DT"))
                .map(|(kg, dt)| kg.zip(dt))
                .collect();
            prop_assert_eq!(got.len(), want.len());
            for (i, (g, w)) in got.iter().zip(&want).enumerate() {
                match (g, w) {
                    (Some((gk, gd)), Some((wk, wd))) => {
                        prop_assert!((gk - wk).abs() < 1e-9 && gd == wd, "row {}: {:?} vs {:?}", i, g, w);
                    }
                    _ => prop_assert_eq!(g, w, "row {}", i),
                }
            }
        }

        /// The days made in stretches of a few pieces on every core are the days made in one
        /// stretch: pieces of no day, subjects whose pieces and weights fall across stretches,
        /// subjects without weights.
        #[test]
        fn days_made_in_stretches_are_the_days_made_in_one(
            piece_rows in prop::collection::vec((0..4i64, -3..30i32, 0.0..3f64, 0.0..2f64, 0..2i64), 0..25),
            weight_rows in prop::collection::vec((0..4i64, -40..60i32, 1..90u8), 0..12),
            block in 1usize..40,
        ) {
            let mut piece_rows = piece_rows;
            piece_rows.sort_by_key(|p| p.0);
            // Pieces of a subject follow each other; one of zero days where the drawn length
            // is negative.
            let mut from_of = [0i32; 4];
            let mut piece_list = Vec::new();
            for (sid, len, mg, mg_kg, per_kg) in piece_rows {
                let from = from_of[sid as usize];
                let to = from + len.max(0) - i32::from(len < 0);
                from_of[sid as usize] = to + 1;
                piece_list.push((sid, from, to, mg, mg_kg, per_kg));
            }
            let mut weight_rows = weight_rows;
            weight_rows.sort_by_key(|w| (w.0, w.1));
            weight_rows.dedup_by_key(|w| (w.0, w.1));
            let pieces = &piece_list;
            let pieces = df!(
                "subject" => pieces.iter().map(|p| format!("S-{}", p.0)).collect::<Vec<_>>(),
                "_sid" => pieces.iter().map(|p| p.0).collect::<Vec<_>>(),
                "_piece_from" => pieces.iter().map(|p| p.1).collect::<Vec<_>>(),
                "_piece_to" => pieces.iter().map(|p| p.2).collect::<Vec<_>>(),
                "_mg" => pieces.iter().map(|p| p.3).collect::<Vec<_>>(),
                "_mg_per_kg" => pieces.iter().map(|p| p.4).collect::<Vec<_>>(),
                "_n_per_kg" => pieces.iter().map(|p| p.5).collect::<Vec<_>>(),
                "NORDERS" => pieces.iter().map(|p| 1 + p.5).collect::<Vec<_>>()
            ).unwrap();
            let weights = df!(
                "_sid" => weight_rows.iter().map(|w| w.0).collect::<Vec<_>>(),
                "_wdt" => weight_rows.iter().map(|w| w.1).collect::<Vec<_>>(),
                "_w" => weight_rows.iter().map(|w| f64::from(w.2)).collect::<Vec<_>>()
            ).unwrap();
            let whole = days_of_pieces(&pieces, &weights, (20, 5), usize::MAX).unwrap();
            let stretched = days_of_pieces(&pieces, &weights, (20, 5), block).unwrap();
            prop_assert!(whole.equals_missing(&stretched), "{:?}\n{:?}", whole, stretched);
            let days: i32 = piece_list.iter().map(|p| (p.2 - p.1 + 1).max(0)).sum();
            prop_assert_eq!(whole.height(), days as usize);
        }
    }
}
