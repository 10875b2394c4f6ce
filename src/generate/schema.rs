//! The seven raw streams and their canonical columns (CONTRACT.md), with natural keys and the
//! checks the reference pipeline applies at ingest, as the generator and its truth see them.

/// A raw data stream; one file per stream per export at each site.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Stream {
    Subjects,
    Dosing,
    Steroids,
    Diary,
    Visits,
    Labs,
    Questionnaires,
}

impl Stream {
    /// Every stream, in the order files and truth tables are written.
    pub const ALL: [Stream; 7] = [
        Stream::Subjects,
        Stream::Dosing,
        Stream::Steroids,
        Stream::Diary,
        Stream::Visits,
        Stream::Labs,
        Stream::Questionnaires,
    ];

    /// File name stem and source name, e.g. `diary`.
    pub fn name(self) -> &'static str {
        match self {
            Stream::Subjects => "subjects",
            Stream::Dosing => "dosing",
            Stream::Steroids => "steroids",
            Stream::Diary => "diary",
            Stream::Visits => "visits",
            Stream::Labs => "labs",
            Stream::Questionnaires => "questionnaires",
        }
    }

    pub(crate) fn index(self) -> usize {
        self as usize
    }

    /// Canonical columns of the stream, in CONTRACT.md order.
    pub(crate) fn columns(self) -> &'static [Column] {
        match self {
            Stream::Subjects => SUBJECTS,
            Stream::Dosing => DOSING,
            Stream::Steroids => STEROIDS,
            Stream::Diary => DIARY,
            Stream::Visits => VISITS,
            Stream::Labs => LABS,
            Stream::Questionnaires => QUESTIONNAIRES,
        }
    }

    /// Columns of the natural key (DOMAIN.md section 3); steroids use the drug as written.
    /// The tests that check the truth use it; the rows themselves never need it.
    #[cfg(test)]
    pub(crate) fn key(self) -> &'static [&'static str] {
        match self {
            Stream::Subjects => &["subject"],
            Stream::Dosing => &["subject", "start"],
            Stream::Steroids => &["subject", "drug", "start"],
            Stream::Diary | Stream::Visits => &["subject", "date"],
            Stream::Labs => &["subject", "date", "analyte"],
            Stream::Questionnaires => &["subject", "date", "instrument"],
        }
    }

    /// Index of canonical column `name`.
    pub(crate) fn col(self, name: &str) -> usize {
        self.columns()
            .iter()
            .position(|c| c.name == name)
            .unwrap_or_else(|| unreachable!("stream {} has no column {name}", self.name()))
    }
}

/// Type of a canonical column, as in the pipeline YAML.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum ColType {
    Subject,
    Str,
    /// A string with a closed list of values (matched ignoring case, written as listed).
    Choice(&'static [&'static str]),
    Int,
    Float,
    Date,
}

impl ColType {
    pub(crate) fn yaml(self) -> &'static str {
        match self {
            ColType::Subject => "subject",
            ColType::Str | ColType::Choice(_) => "string",
            ColType::Int => "int",
            ColType::Float => "float",
            ColType::Date => "date",
        }
    }
}

/// One canonical column and its ingest checks.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Column {
    pub name: &'static str,
    pub ty: ColType,
    pub required: bool,
    pub min: Option<f64>,
    pub max: Option<f64>,
}

const fn col(name: &'static str, ty: ColType, required: bool) -> Column {
    Column {
        name,
        ty,
        required,
        min: None,
        max: None,
    }
}

const fn ranged(name: &'static str, ty: ColType, required: bool, min: f64, max: f64) -> Column {
    Column {
        name,
        ty,
        required,
        min: Some(min),
        max: Some(max),
    }
}

pub(crate) const GROUPS: &[&str] = &["CANDLE", "SAVI", "OTHER"];
pub(crate) const SEXES: &[&str] = &["M", "F"];
pub(crate) const REGIMENS: &[&str] = &["escalation", "optimal"];

const SUBJECTS: &[Column] = &[
    col("subject", ColType::Subject, true),
    col("group", ColType::Choice(GROUPS), true),
    col("sex", ColType::Choice(SEXES), true),
    col("birth_date", ColType::Date, true),
    col("enrol_date", ColType::Date, true),
    col("discontinuation_date", ColType::Date, false),
    col("discontinuation_reason", ColType::Str, false),
];

// Ingest ranges are wide because values arrive in the site's unit (m, cm or in; g, kg or lb);
// the clinical plausibility limits of DOMAIN.md 4.1 apply after unit conversion.
const DOSING: &[Column] = &[
    col("subject", ColType::Subject, true),
    col("start", ColType::Date, true),
    col("end", ColType::Date, false),
    ranged("dose_mg", ColType::Float, true, 0.1, 50.0),
    ranged("per_day", ColType::Float, true, 1.0, 6.0),
    col("regimen", ColType::Choice(REGIMENS), true),
];

const STEROIDS: &[Column] = &[
    col("subject", ColType::Subject, true),
    col("drug", ColType::Str, true),
    ranged("dose", ColType::Float, true, 0.0, 2000.0),
    col("dose_unit", ColType::Str, true),
    col("frequency", ColType::Str, true),
    col("route", ColType::Str, false),
    col("start", ColType::Date, true),
    col("end", ColType::Date, false),
];

const DIARY: &[Column] = &[
    col("subject", ColType::Subject, true),
    col("date", ColType::Date, true),
    ranged("fever", ColType::Int, false, 0.0, 4.0),
    ranged("rash", ColType::Int, false, 0.0, 4.0),
    ranged("msk_pain", ColType::Int, false, 0.0, 4.0),
    ranged("headache", ColType::Int, false, 0.0, 4.0),
    ranged("fatigue", ColType::Int, false, 0.0, 4.0),
    ranged("organ", ColType::Int, false, 0.0, 4.0),
];

const VISITS: &[Column] = &[
    col("subject", ColType::Subject, true),
    col("date", ColType::Date, true),
    ranged("height", ColType::Float, false, 0.3, 250.0),
    col("height_unit", ColType::Str, true),
    ranged("weight", ColType::Float, false, 0.5, 250_000.0),
    col("weight_unit", ColType::Str, true),
    ranged("bmd_z", ColType::Float, false, -10.0, 10.0),
];

const LABS: &[Column] = &[
    col("subject", ColType::Subject, true),
    col("date", ColType::Date, true),
    col("analyte", ColType::Str, true),
    col("value", ColType::Str, true),
    col("unit", ColType::Str, true),
];

const QUESTIONNAIRES: &[Column] = &[
    col("subject", ColType::Subject, true),
    col("date", ColType::Date, true),
    col("instrument", ColType::Str, true),
    ranged("score", ColType::Float, true, 0.0, 100.0),
    col("unit", ColType::Str, true),
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_name_existing_columns() {
        for s in Stream::ALL {
            for k in s.key() {
                assert_eq!(s.columns()[s.col(k)].name, *k);
                assert!(s.columns()[s.col(k)].required, "{} {k}", s.name());
            }
        }
    }
}
