//! Known dirt and the two exports: which rows of a subject go into the first and the second
//! export file, which are made dirty, duplicated or corrected, and the fate each row must meet.

use chrono::{Datelike, NaiveDate};
use rand::Rng;
use rand_chacha::ChaCha8Rng;

use super::course::plus;
use super::dialect::Dialect;
use super::render::{Cell, write_date, write_ymd};
use super::schema::{ColType, Stream};

/// Probabilities of each kind of dirt, per row of a stream where the kind applies.
///
/// Every row gets at most one kind. Rates of the kinds that apply to one stream must sum to
/// at most 1. `reexport` and `correction` apply to rows of the first export only.
#[derive(Debug, Clone, PartialEq)]
pub struct DirtRates {
    /// A date that no format of the site parses (`30.02.2015`, `2O14-03-07`): rule `parse`.
    pub unparseable_date: f64,
    /// A date in 1889 or 2091: rule `date_range`.
    pub implausible_date: f64,
    /// A missing-value token in a required column: rule `required`.
    pub missing_required: f64,
    /// Text in a number column (`5 mg`, `2-3`): rule `parse`.
    pub unparseable_number: f64,
    /// A number outside the column's range (diary item 7, height 400): rule `range`.
    pub out_of_range: f64,
    /// A value outside a closed list (group `CANDEL`, regimen `maintenance`): rule `allowed`.
    pub not_allowed: f64,
    /// A subject id the site's rule cannot normalise (`#C12`): rule `subject_id`.
    pub bad_subject_id: f64,
    /// One stray field at the end of a record: rule `columns`.
    pub wrong_field_count: f64,
    /// A unit no conversion knows (`mg/dL2`, `ft`): rule `unit` (`dose_unit` for steroids).
    pub unknown_unit: f64,
    /// A steroid no equivalence table knows (`aspirin-x`): rule `drug`.
    pub unknown_drug: f64,
    /// A steroid frequency no table knows (`prn`): rule `frequency`.
    pub unknown_frequency: f64,
    /// An identical copy of the row later in the same file: fate `collapsed`.
    pub duplicate: f64,
    /// A second row with the same natural key and another value in the same file: both
    /// rejected, rule `conflict`.
    pub conflict: f64,
    /// The row is exported again, unchanged, in the second export: the old one is `superseded`.
    pub reexport: f64,
    /// The row is exported again, corrected, in the second export: the old one is `superseded`.
    pub correction: f64,
    /// An optional value (diary item, height, BMD, route) is missing; not a defect.
    pub missing_optional: f64,
}

impl Default for DirtRates {
    fn default() -> Self {
        DirtRates {
            unparseable_date: 0.002,
            implausible_date: 0.001,
            missing_required: 0.001,
            unparseable_number: 0.001,
            out_of_range: 0.002,
            not_allowed: 0.01,
            bad_subject_id: 0.0005,
            wrong_field_count: 0.0005,
            unknown_unit: 0.004,
            unknown_drug: 0.03,
            unknown_frequency: 0.01,
            duplicate: 0.003,
            conflict: 0.001,
            reexport: 0.2,
            correction: 0.02,
            missing_optional: 0.03,
        }
    }
}

impl DirtRates {
    /// The defaults ten times over (row-level spelling and vocabulary kinds a little more),
    /// so that a cohort of a dozen subjects shows every kind of dirt at every site: what the
    /// tests run on.
    pub fn dense() -> DirtRates {
        let d = DirtRates::default();
        DirtRates {
            unparseable_date: d.unparseable_date * 10.0,
            implausible_date: d.implausible_date * 10.0,
            missing_required: d.missing_required * 10.0,
            unparseable_number: d.unparseable_number * 10.0,
            out_of_range: d.out_of_range * 10.0,
            not_allowed: 0.05,
            bad_subject_id: d.bad_subject_id * 10.0,
            wrong_field_count: d.wrong_field_count * 10.0,
            unknown_unit: d.unknown_unit * 10.0,
            unknown_drug: 0.05,
            unknown_frequency: 0.05,
            duplicate: d.duplicate * 10.0,
            conflict: d.conflict * 10.0,
            ..d
        }
    }

    /// No dirt, no re-exports, no missing values: every row is accepted.
    pub fn none() -> DirtRates {
        DirtRates {
            unparseable_date: 0.0,
            implausible_date: 0.0,
            missing_required: 0.0,
            unparseable_number: 0.0,
            out_of_range: 0.0,
            not_allowed: 0.0,
            bad_subject_id: 0.0,
            wrong_field_count: 0.0,
            unknown_unit: 0.0,
            unknown_drug: 0.0,
            unknown_frequency: 0.0,
            duplicate: 0.0,
            conflict: 0.0,
            reexport: 0.0,
            correction: 0.0,
            missing_optional: 0.0,
        }
    }

    fn rate(&self, kind: Kind) -> f64 {
        match kind {
            Kind::UnparseableDate => self.unparseable_date,
            Kind::ImplausibleDate => self.implausible_date,
            Kind::MissingRequired => self.missing_required,
            Kind::UnparseableNumber => self.unparseable_number,
            Kind::OutOfRange => self.out_of_range,
            Kind::NotAllowed => self.not_allowed,
            Kind::BadSubjectId => self.bad_subject_id,
            Kind::WrongFieldCount => self.wrong_field_count,
            Kind::UnknownUnit => self.unknown_unit,
            Kind::UnknownDrug => self.unknown_drug,
            Kind::UnknownFrequency => self.unknown_frequency,
            Kind::Duplicate => self.duplicate,
            Kind::Conflict => self.conflict,
        }
    }

    /// Checks that every rate is a probability and that each stream's rates sum to at most 1.
    pub(crate) fn check(&self) -> Result<(), String> {
        let all = [self.reexport, self.correction, self.missing_optional];
        let kinds = Kind::ALL.iter().map(|k| self.rate(*k));
        if all
            .into_iter()
            .chain(kinds)
            .any(|r| !(0.0..=1.0).contains(&r))
        {
            return Err("every dirt rate must be between 0 and 1".into());
        }
        for s in Stream::ALL {
            let sum: f64 = self.reexport
                + self.correction
                + Kind::ALL
                    .iter()
                    .filter(|k| k.target(s).is_some())
                    .map(|k| self.rate(*k))
                    .sum::<f64>();
            if sum > 1.0 {
                return Err(format!(
                    "dirt rates for the {} stream sum to {sum:.3}, more than 1",
                    s.name()
                ));
            }
        }
        Ok(())
    }
}

/// A kind of dirt a row can get.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    UnparseableDate,
    ImplausibleDate,
    MissingRequired,
    UnparseableNumber,
    OutOfRange,
    NotAllowed,
    BadSubjectId,
    WrongFieldCount,
    UnknownUnit,
    UnknownDrug,
    UnknownFrequency,
    Duplicate,
    Conflict,
}

/// Where a kind of dirt lands in a row.
#[derive(Debug, Clone, Copy)]
enum Target {
    Column(&'static str),
    /// One of the diary items, drawn per row.
    DiaryItem,
    /// Height or weight (or their units), drawn per row.
    Measure,
    /// The whole record (a stray field) or the whole row (duplicates).
    Row,
}

const DIARY_ITEMS: [&str; 6] = ["fever", "rash", "msk_pain", "headache", "fatigue", "organ"];

impl Kind {
    const ALL: [Kind; 13] = [
        Kind::UnparseableDate,
        Kind::ImplausibleDate,
        Kind::MissingRequired,
        Kind::UnparseableNumber,
        Kind::OutOfRange,
        Kind::NotAllowed,
        Kind::BadSubjectId,
        Kind::WrongFieldCount,
        Kind::UnknownUnit,
        Kind::UnknownDrug,
        Kind::UnknownFrequency,
        Kind::Duplicate,
        Kind::Conflict,
    ];

    /// The column this kind of dirt hits in `stream`, or None when it does not apply.
    fn target(self, stream: Stream) -> Option<Target> {
        use Stream::*;
        use Target::*;
        let key_date = match stream {
            Subjects => "birth_date",
            Dosing | Steroids => "start",
            _ => "date",
        };
        match self {
            Kind::UnparseableDate | Kind::ImplausibleDate => Some(Column(key_date)),
            Kind::MissingRequired => Some(Column(match stream {
                Subjects => "birth_date",
                Dosing => "dose_mg",
                Steroids => "dose",
                Labs => "value",
                Questionnaires => "score",
                Diary | Visits => "date",
            })),
            Kind::UnparseableNumber | Kind::OutOfRange => match stream {
                Dosing if self == Kind::OutOfRange => Some(Column("per_day")),
                Dosing => Some(Column("dose_mg")),
                Steroids => Some(Column("dose")),
                Diary => Some(DiaryItem),
                Visits => Some(Measure),
                Questionnaires => Some(Column("score")),
                Subjects | Labs => None,
            },
            Kind::NotAllowed => match stream {
                Subjects => Some(Column("group")),
                Dosing => Some(Column("regimen")),
                _ => None,
            },
            Kind::BadSubjectId => Some(Column("subject")),
            Kind::WrongFieldCount | Kind::Duplicate | Kind::Conflict => Some(Row),
            Kind::UnknownUnit => match stream {
                Steroids => Some(Column("dose_unit")),
                Visits => Some(Measure),
                Labs | Questionnaires => Some(Column("unit")),
                _ => None,
            },
            Kind::UnknownDrug => (stream == Steroids).then_some(Column("drug")),
            Kind::UnknownFrequency => (stream == Steroids).then_some(Column("frequency")),
        }
    }
}

/// What happens to a row, as the truth records it.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Fate {
    Accepted,
    Rejected {
        rule: &'static str,
        /// `ingest`, `dedupe` or `harmonise`: the step of the pipeline that rejects it.
        step: &'static str,
        /// Canonical column index, None for a record with the wrong field count.
        column: Option<usize>,
    },
    Collapsed,
    Superseded,
}

/// A row as written to an export file.
#[derive(Debug, Clone)]
pub(crate) struct OutRow {
    pub cells: Vec<Cell>,
    pub extra_field: bool,
    pub fate: Fate,
}

/// A generated row in canonical form, before exports and dirt.
#[derive(Debug, Clone)]
pub(crate) struct GenRow {
    pub cells: Vec<Cell>,
    /// First day the row can be in an export (its date, or its start).
    pub avail: NaiveDate,
    /// The row as the first export shows it, when it changed later (an order that ended).
    pub early: Option<Vec<Cell>>,
}

/// Splits a subject's rows of one stream into the two export files, with dirt and fates.
pub(crate) fn assemble(
    stream: Stream,
    dialect: &Dialect,
    rows: Vec<GenRow>,
    first_export: NaiveDate,
    rates: &DirtRates,
    rng: &mut ChaCha8Rng,
) -> [Vec<OutRow>; 2] {
    let kinds: Vec<(Kind, f64)> = Kind::ALL
        .iter()
        .filter(|k| k.target(stream).is_some())
        .map(|k| (*k, rates.rate(*k)))
        .collect();
    let mut files: [Vec<OutRow>; 2] = [Vec::new(), Vec::new()];
    // Copies (duplicates, conflicts) land 1-3 rows after their original: (file, after, row).
    let mut copies: Vec<(usize, usize, OutRow)> = Vec::new();
    for row in rows {
        let in_first = row.avail <= first_export;
        let file = if in_first { 0 } else { 1 };
        if in_first {
            if let Some(early) = row.early {
                files[0].push(plain(early, Fate::Superseded));
                files[1].push(plain(row.cells, Fate::Accepted));
                continue;
            }
            let u = rng.random::<f64>();
            if u < rates.correction {
                let (old, _) = perturb(stream, &row.cells, rng);
                files[0].push(plain(old, Fate::Superseded));
                files[1].push(plain(row.cells, Fate::Accepted));
                continue;
            }
            if u < rates.correction + rates.reexport {
                files[0].push(plain(row.cells.clone(), Fate::Superseded));
                files[1].push(plain(row.cells, Fate::Accepted));
                continue;
            }
        }
        let mut u = rng.random::<f64>();
        let mut chosen = None;
        for (kind, rate) in &kinds {
            if u < *rate {
                chosen = Some(*kind);
                break;
            }
            u -= rate;
        }
        let after = files[file].len() + rng.random_range(0..3);
        match chosen {
            None => files[file].push(plain(row.cells, Fate::Accepted)),
            Some(Kind::Duplicate) => {
                copies.push((file, after, plain(row.cells.clone(), Fate::Collapsed)));
                files[file].push(plain(row.cells, Fate::Accepted));
            }
            Some(Kind::Conflict) => {
                let (other, col) = perturb(stream, &row.cells, rng);
                let fate = Fate::Rejected {
                    rule: "conflict",
                    step: "dedupe",
                    column: Some(col),
                };
                copies.push((file, after, plain(other, fate.clone())));
                files[file].push(plain(row.cells, fate));
            }
            Some(kind) => files[file].push(make_dirty(kind, stream, dialect, row.cells, rng)),
        }
    }
    if copies.is_empty() {
        return files;
    }
    let mut out: [Vec<OutRow>; 2] = [Vec::new(), Vec::new()];
    for (f, rows) in files.into_iter().enumerate() {
        let last = rows.len().saturating_sub(1);
        let mut pending: Vec<(usize, OutRow)> = copies
            .iter()
            .filter(|(file, _, _)| *file == f)
            .map(|(_, after, row)| ((*after).min(last), row.clone()))
            .collect();
        pending.sort_by_key(|(after, _)| *after);
        let mut pending = pending.into_iter().peekable();
        for (i, row) in rows.into_iter().enumerate() {
            out[f].push(row);
            while let Some((_, copy)) = pending.next_if(|(after, _)| *after == i) {
                out[f].push(copy);
            }
        }
    }
    out
}

fn plain(cells: Vec<Cell>, fate: Fate) -> OutRow {
    OutRow {
        cells,
        extra_field: false,
        fate,
    }
}

fn pick<T: Copy>(rng: &mut ChaCha8Rng, items: &[T]) -> T {
    items[rng.random_range(0..items.len())]
}

/// Applies dirt of `kind` to a row and returns it with the fate the truth expects.
fn make_dirty(
    kind: Kind,
    stream: Stream,
    dialect: &Dialect,
    mut cells: Vec<Cell>,
    rng: &mut ChaCha8Rng,
) -> OutRow {
    let col = match kind.target(stream) {
        Some(Target::Column(name)) => Some(stream.col(name)),
        Some(Target::DiaryItem) => Some(stream.col(pick(rng, &DIARY_ITEMS))),
        Some(Target::Measure) => {
            let height = rng.random_bool(0.5);
            let name = match (kind, height) {
                (Kind::UnknownUnit, true) => "height_unit",
                (Kind::UnknownUnit, false) => "weight_unit",
                (_, true) => "height",
                (_, false) => "weight",
            };
            Some(stream.col(name))
        }
        Some(Target::Row) | None => None,
    };
    let Some(c) = col else {
        return OutRow {
            cells,
            extra_field: true,
            fate: Fate::Rejected {
                rule: "columns",
                step: "ingest",
                column: None,
            },
        };
    };
    let name = stream.columns()[c].name;
    let ty = stream.columns()[c].ty;
    let (rule, step) = match kind {
        Kind::UnparseableDate | Kind::UnparseableNumber => ("parse", "ingest"),
        Kind::ImplausibleDate => ("date_range", "ingest"),
        Kind::MissingRequired => ("required", "ingest"),
        Kind::OutOfRange => ("range", "ingest"),
        Kind::NotAllowed => ("allowed", "ingest"),
        Kind::BadSubjectId => ("subject_id", "ingest"),
        Kind::UnknownUnit if stream == Stream::Steroids => ("dose_unit", "harmonise"),
        Kind::UnknownUnit => ("unit", "harmonise"),
        Kind::UnknownDrug => ("drug", "harmonise"),
        Kind::UnknownFrequency => ("frequency", "harmonise"),
        Kind::WrongFieldCount | Kind::Duplicate | Kind::Conflict => ("columns", "ingest"),
    };
    let style = dialect.date_style(stream);
    let dirty = match kind {
        Kind::UnparseableDate => {
            let d = match &cells[c] {
                Cell::Date(d) => *d,
                _ => NaiveDate::from_ymd_opt(2015, 3, 7).unwrap_or_default(),
            };
            let mut s = String::new();
            match rng.random_range(0..3) {
                0 => write_ymd(&mut s, style, d.year(), 2, 30),
                1 if style != super::dialect::DateStyle::DayMon => {
                    write_ymd(&mut s, style, d.year(), 13, d.day())
                }
                _ => {
                    write_date(&mut s, style, d);
                    match s.find('0') {
                        Some(p) => s.replace_range(p..p + 1, "O"),
                        None => {
                            s.clear();
                            write_ymd(&mut s, style, d.year(), 2, 31);
                        }
                    }
                }
            }
            Cell::Raw(s)
        }
        Kind::ImplausibleDate => {
            let d = match &cells[c] {
                Cell::Date(d) => *d,
                _ => NaiveDate::from_ymd_opt(2015, 3, 7).unwrap_or_default(),
            };
            let year = if rng.random_bool(0.5) { 1889 } else { 2091 };
            let mut s = String::new();
            write_ymd(&mut s, style, year, d.month(), d.day().min(28));
            Cell::Raw(s)
        }
        Kind::MissingRequired => Cell::Missing(rng.random_range(0..8)),
        Kind::UnparseableNumber => {
            let options: &[&str] = if ty == ColType::Int {
                &["x", "2-3", "n.a.", "??"]
            } else {
                &["1..5", "5 mg", "n.a.", "??"]
            };
            Cell::Raw(pick(rng, options).to_string())
        }
        Kind::OutOfRange => Cell::Raw(
            match name {
                "per_day" => "12",
                "dose" => "-5",
                "height" => "400",
                "weight" => "0",
                "score" => "140",
                _ => "7",
            }
            .to_string(),
        ),
        Kind::NotAllowed => Cell::Raw(
            pick(
                rng,
                if name == "group" {
                    &["CANDEL", "SAVY", "unknown"]
                } else {
                    &["maintenance", "washout"]
                },
            )
            .to_string(),
        ),
        Kind::BadSubjectId => {
            let (letter, n) = match &cells[c] {
                Cell::Subject(id, _) => (id.group.letter(), id.number),
                _ => ('C', 1),
            };
            Cell::Raw(match rng.random_range(0..4) {
                0 => format!("{n}"),
                1 => format!("{letter}{n}a"),
                2 => format!("#{letter}{n}"),
                _ => format!("{letter}{letter}{n}"),
            })
        }
        Kind::UnknownUnit => Cell::Raw(
            pick(
                rng,
                match name {
                    "height_unit" => &["ft", "yd"],
                    "weight_unit" => &["st", "oz"],
                    "dose_unit" => &["mg/m2", "tab", "ml"],
                    _ if stream == Stream::Questionnaires => &["pts", "points"],
                    _ => &["mg/dL2", "x10E3", "??"],
                },
            )
            .to_string(),
        ),
        Kind::UnknownDrug => Cell::Raw(
            pick(
                rng,
                &["aspirin-x", "Predisone", "budesonide", "methotrexate"],
            )
            .to_string(),
        ),
        Kind::UnknownFrequency => {
            Cell::Raw(pick(rng, &["prn", "as needed", "q6h", "3x/week"]).to_string())
        }
        Kind::WrongFieldCount | Kind::Duplicate | Kind::Conflict => cells[c].clone(),
    };
    cells[c] = dirty;
    OutRow {
        cells,
        extra_field: false,
        fate: Fate::Rejected {
            rule,
            step,
            column: Some(c),
        },
    }
}

/// Another version of a row: same natural key, one value changed. Returns it and the column.
pub(crate) fn perturb(stream: Stream, cells: &[Cell], rng: &mut ChaCha8Rng) -> (Vec<Cell>, usize) {
    let mut out = cells.to_vec();
    let name = match stream {
        Stream::Subjects => "birth_date",
        Stream::Dosing => "dose_mg",
        Stream::Steroids => "dose",
        Stream::Diary => pick(rng, &DIARY_ITEMS),
        Stream::Visits => ["weight", "height", "bmd_z"]
            .into_iter()
            .find(|n| matches!(cells[stream.col(n)], Cell::Num(..)))
            .unwrap_or("bmd_z"),
        Stream::Labs => "value",
        Stream::Questionnaires => "score",
    };
    let c = stream.col(name);
    out[c] = match &cells[c] {
        Cell::Date(d) => {
            let shift = rng.random_range(1..=40);
            let floor = NaiveDate::from_ymd_opt(1990, 1, 1).unwrap_or_default();
            let back = plus(*d, -shift);
            Cell::Date(if back >= floor { back } else { plus(*d, shift) })
        }
        Cell::Int(v) => Cell::Int((v + 1) % 5),
        Cell::Missing(_) if name == "bmd_z" => Cell::Num(-1.0, 2),
        Cell::Missing(_) => Cell::Int(1),
        Cell::Num(v, dec) => {
            let step = 10f64.powi(-(*dec as i32));
            let v2 = match stream {
                Stream::Dosing if *v >= 2.0 => v - 1.0,
                Stream::Dosing => v + 1.0,
                Stream::Steroids => v * 2.0,
                // Scores stay inside 0..100 whatever the unit.
                Stream::Questionnaires if *v >= 5.0 => v - (v * 0.2).round().max(1.0),
                Stream::Questionnaires => v + 1.0,
                _ => v + (v.abs() * 0.2).max(step * 3.0),
            };
            Cell::Num(v2, *dec)
        }
        Cell::Censored(_, limit, dec) => Cell::Num(limit * 2.0, *dec),
        other => other.clone(),
    };
    (out, c)
}
