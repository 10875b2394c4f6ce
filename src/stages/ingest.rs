//! `ingest`: reads every file of one source in its site's dialect into one typed table.
//! Each row keeps its site, file and physical line; rows that cannot be read become rejects.

use std::collections::HashMap;

use chrono::{Datelike, NaiveDate};
use polars::prelude::*;
use rayon::prelude::*;
use regex::Regex;
use serde::Deserialize;
use serde_saphyr::Spanned;

use crate::dialect::{self, Dialect};
use crate::error::DataError;
use crate::rejects::RejectsBuilder;
use crate::source::{ResolvedSource, SourceFile};
use crate::spec::{Bound, ColumnSpec, PipelineSpec};
use crate::stages::{Arity, FileRead, Inputs, Stage, StageCtx, StageOutput};

/// Parameters of an `ingest` stage.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Ingest {
    /// Name of the source (under `sources:`) to read.
    pub source: String,
}

/// The types a source column can have.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ColumnType {
    Subject,
    String,
    Int,
    Float,
    Date,
}

impl ColumnType {
    pub fn parse(s: &str) -> Option<ColumnType> {
        Some(match s {
            "subject" => ColumnType::Subject,
            "string" => ColumnType::String,
            "int" => ColumnType::Int,
            "float" => ColumnType::Float,
            "date" => ColumnType::Date,
            _ => return None,
        })
    }
}

/// Checks the columns of a source; returns every problem as a message.
pub fn check_columns(columns: &[Spanned<ColumnSpec>]) -> Vec<(u64, u64, String)> {
    let mut out = Vec::new();
    let mut seen = std::collections::HashSet::new();
    for c in columns {
        let at = (c.referenced.line(), c.referenced.column());
        let c = &c.value;
        if !seen.insert(c.name.clone()) {
            out.push((at.0, at.1, format!("column `{}` is listed twice", c.name)));
        }
        if let Err(e) = CompiledColumn::compile(c, NaiveDate::MIN, NaiveDate::MAX) {
            out.push((at.0, at.1, e));
        }
    }
    out
}

/// A source column ready to parse cells.
#[derive(Debug)]
struct CompiledColumn {
    name: String,
    ty: ColumnType,
    /// Normalised header spellings.
    headers: Vec<String>,
    required: bool,
    optional: bool,
    min: Option<f64>,
    max: Option<f64>,
    min_date: NaiveDate,
    max_date: NaiveDate,
    /// lower-case value -> canonical spelling
    allowed: Option<HashMap<String, String>>,
    allowed_list: String,
    pattern: Option<Regex>,
    /// Listed under `identifying:`: its values never appear in reasons or messages.
    identifying: bool,
}

impl CompiledColumn {
    /// An `int` column whose plausible range fits 32 bits holds 32-bit integers (half the
    /// memory of a raw diary's item scores, and R reads them as `integer`, not `integer64`);
    /// without both bounds it holds 64-bit integers.
    fn is_int32(&self) -> bool {
        let fits =
            |b: Option<f64>| b.is_some_and(|v| (i32::MIN as f64..=i32::MAX as f64).contains(&v));
        self.ty == ColumnType::Int && fits(self.min) && fits(self.max)
    }
}

fn normalise_header(h: &str) -> String {
    h.trim_start_matches('\u{feff}')
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
        .to_lowercase()
}

fn date_bound(b: &Option<Bound>, what: &str) -> Result<Option<NaiveDate>, String> {
    match b {
        None => Ok(None),
        Some(Bound::Text(t)) => NaiveDate::parse_from_str(t, "%Y-%m-%d")
            .map(Some)
            .map_err(|_| format!("{what} `{t}` is not a date (YYYY-MM-DD)")),
        Some(Bound::Number(n)) => Err(format!(
            "{what} {n} of a date column must be a date (YYYY-MM-DD)"
        )),
    }
}

fn num_bound(b: &Option<Bound>, what: &str) -> Result<Option<f64>, String> {
    match b {
        None => Ok(None),
        Some(Bound::Number(n)) => Ok(Some(*n)),
        Some(Bound::Text(t)) => Err(format!("{what} `{t}` must be a number")),
    }
}

impl CompiledColumn {
    fn compile(c: &ColumnSpec, min_date: NaiveDate, max_date: NaiveDate) -> Result<Self, String> {
        let ty = ColumnType::parse(&c.ty).ok_or_else(|| {
            format!(
                "column `{}` has unknown type `{}` (use subject, string, int, float or date)",
                c.name, c.ty
            )
        })?;
        let (min, max, min_date, max_date) = if ty == ColumnType::Date {
            let lo = date_bound(&c.min, "min")?.unwrap_or(min_date);
            let hi = date_bound(&c.max, "max")?.unwrap_or(max_date);
            (None, None, lo, hi)
        } else {
            (
                num_bound(&c.min, "min")?,
                num_bound(&c.max, "max")?,
                min_date,
                max_date,
            )
        };
        let pattern =
            match &c.pattern {
                Some(p) => Some(Regex::new(&format!("^(?:{p})$")).map_err(|e| {
                    format!("column `{}`: pattern is not a valid regex: {e}", c.name)
                })?),
                None => None,
            };
        let allowed = c.allowed.as_ref().map(|vals| {
            vals.iter()
                .map(|v| (v.trim().to_lowercase(), v.clone()))
                .collect::<HashMap<_, _>>()
        });
        let mut headers: Vec<String> = c.headers.iter().map(|h| normalise_header(h)).collect();
        headers.push(normalise_header(&c.name));
        Ok(CompiledColumn {
            name: c.name.clone(),
            ty,
            headers,
            required: c.required,
            optional: c.optional,
            min,
            max,
            min_date,
            max_date,
            allowed_list: c.allowed.clone().unwrap_or_default().join(", "),
            allowed,
            pattern,
            identifying: false,
        })
    }

    /// How a cell of this column is quoted in a reason: withheld when the column identifies a
    /// person, otherwise the value, made printable and cut when very long.
    fn shown(&self, value: &str) -> String {
        if self.identifying {
            format!("the value of `{}` (withheld: identifying)", self.name)
        } else {
            format!("`{}`", printable(value, SHOWN_CHARS))
        }
    }
}

/// Longest cell value quoted in a reason, in characters.
const SHOWN_CHARS: usize = 60;

/// `text` fit for a message: control characters and byte-order marks escaped, cut after
/// `max` characters (saying how long it was).
pub fn printable(text: &str, max: usize) -> String {
    let mut out = String::new();
    let mut n = 0;
    for ch in text.chars() {
        n += 1;
        if n > max {
            continue;
        }
        if ch.is_control() || ch == '\u{feff}' {
            out.extend(ch.escape_debug());
        } else {
            out.push(ch);
        }
    }
    if n > max {
        out.push_str(&format!("… ({n} characters)"));
    }
    out
}

/// One parsed cell. Text borrows from the record or from the column's canonical spellings;
/// a subject id is an index into the file's [`CellMemo`].
#[derive(Debug, Clone, Copy, PartialEq)]
enum Cell<'a> {
    Null,
    Str(&'a str),
    Id(u32),
    Int(i64),
    Float(f64),
    Date(i32),
}

/// A failed cell: rule and reason.
#[derive(Clone)]
struct Failure {
    rule: &'static str,
    reason: String,
    /// A date after the upper bound (which is usually the run date): the cache must know.
    late: bool,
}

fn fail(rule: &'static str, reason: String) -> Failure {
    Failure {
        rule,
        reason,
        late: false,
    }
}

const EPOCH: NaiveDate = NaiveDate::from_ymd_opt(1970, 1, 1).expect("valid date");

/// Distinct cells remembered per column and file; past this, cells are parsed each time.
const MEMO_CELLS: usize = 1 << 16;

/// What one column of one file has parsed so far. Subject ids and dates repeat on almost every
/// row (one subject, one day per diary row), and their parses (a regex, a strftime format) cost
/// far more than a look-up; the outcome of a cell depends only on its text and its column.
#[derive(Default)]
struct CellMemo {
    subjects: PlHashMap<String, Result<u32, Failure>>,
    /// Canonical subject ids, indexed by [`Cell::Id`].
    ids: Vec<String>,
    dates: PlHashMap<String, Result<i32, Failure>>,
    /// The last subject cell that gave an id, and the id: a file's rows come a subject at
    /// a time, so most cells are the one before and need no look-up.
    last_subject: Option<(String, u32)>,
}

/// Whether a cell starts and ends with a visible ASCII character, so that [`trimmed`] leaves
/// it as it is.
#[inline]
fn visible_ends(raw: &[u8]) -> bool {
    let visible = |b: Option<&u8>| b.is_some_and(|b| b.is_ascii_graphic());
    visible(raw.first()) && visible(raw.last())
}

/// A cell without the white space and byte-order marks around it. A cell that starts and ends
/// with a visible ASCII character (almost every cell) has none.
#[inline]
fn trimmed(raw: &str) -> &str {
    if visible_ends(raw.as_bytes()) {
        return raw;
    }
    raw.trim_matches(|ch: char| ch.is_whitespace() || ch == '\u{feff}')
}

/// How a column's most common cells are read without [`parse_cell`] ([`BlockParse`]): each
/// such cell gives what `parse_cell` gives for it and is pushed to the column's buffer; any
/// other cell is left to `parse_cell`. On a diary row (a subject, a day, six scores of one digit) this is every
/// cell.
#[derive(Clone, Copy)]
enum Quick {
    /// One digit in an `Int32` column: which of 0 to 9 are within the column's range and not
    /// one of the site's missing values.
    Digit([bool; 10]),
    /// A date in the layout of the site's first format (never a missing value: no missing
    /// value of the site is in that layout), within the column's days.
    Date {
        first: i32,
        last: i32,
    },
    /// The subject cell of the row before, as it was written.
    SameSubject,
    Never,
}

impl Quick {
    fn of(c: &CompiledColumn, d: &Dialect) -> Quick {
        match c.ty {
            ColumnType::Int if c.is_int32() => {
                let mut ok = [false; 10];
                for (v, ok) in ok.iter_mut().enumerate() {
                    let cell = v.to_string();
                    *ok = !d.is_missing(&cell) && in_range(c, &cell, v as f64).is_ok();
                }
                Quick::Digit(ok)
            }
            ColumnType::Date if !d.misses_a_layout_date() => Quick::Date {
                first: days_since_epoch(c.min_date),
                last: days_since_epoch(c.max_date),
            },
            ColumnType::Subject => Quick::SameSubject,
            _ => Quick::Never,
        }
    }
}

fn parse_cell<'a>(
    c: &'a CompiledColumn,
    d: &Dialect,
    raw: &'a str,
    memo: &mut CellMemo,
) -> Result<Cell<'a>, Failure> {
    // A byte-order mark inside a file (two exports concatenated) is invisible: treat it as
    // the surrounding spaces are treated.
    let cell = trimmed(raw);
    if d.is_missing(cell) {
        if c.required {
            return Err(fail("required", format!("`{}` is missing", c.name)));
        }
        return Ok(Cell::Null);
    }
    match c.ty {
        ColumnType::Subject => {
            if let Some((last, id)) = &memo.last_subject
                && last == cell
            {
                return Ok(Cell::Id(*id));
            }
            let r = match memo.subjects.get(cell) {
                Some(r) => r.clone(),
                None => {
                    let r = subject_cell(c, d, cell).map(|id| {
                        memo.ids.push(id);
                        (memo.ids.len() - 1) as u32
                    });
                    if memo.subjects.len() < MEMO_CELLS {
                        memo.subjects.insert(cell.to_string(), r.clone());
                    }
                    r
                }
            };
            if let Ok(id) = r {
                let (last, last_id) = memo.last_subject.get_or_insert_default();
                last.clear();
                last.push_str(cell);
                *last_id = id;
            }
            r.map(Cell::Id)
        }
        ColumnType::String => checked_text(c, cell).map(Cell::Str),
        ColumnType::Date => {
            // A date in the layout of the site's first format, read without a look-up: what
            // `date_cell` gives for it, when it is within the column's range.
            if let Some(date) = d.layout_date(cell)
                && (c.min_date..=c.max_date).contains(&date)
            {
                return Ok(Cell::Date(days_since_epoch(date)));
            }
            if let Some(r) = memo.dates.get(cell) {
                return r.clone().map(Cell::Date);
            }
            let r = date_cell(c, d, cell);
            if memo.dates.len() < MEMO_CELLS {
                memo.dates.insert(cell.to_string(), r.clone());
            }
            r.map(Cell::Date)
        }
        ColumnType::Int => match d.parse_int(cell) {
            Some(v) => in_range(c, cell, v as f64).map(|_| Cell::Int(v)),
            None => Err(fail(
                "parse",
                format!("{} is not a whole number", c.shown(cell)),
            )),
        },
        ColumnType::Float => match d.parse_float(cell) {
            Some(v) => in_range(c, cell, v).map(|_| Cell::Float(v)),
            None => {
                let mark = if d.decimal_comma { "comma" } else { "point" };
                Err(fail(
                    "parse",
                    format!(
                        "{} is not a number (this site writes a decimal {mark})",
                        c.shown(cell)
                    ),
                ))
            }
        },
    }
}

/// A subject id cell: the canonical id, checked like any text.
fn subject_cell(c: &CompiledColumn, d: &Dialect, cell: &str) -> Result<String, Failure> {
    match d.subject_id(cell) {
        Some(id) => checked_text(c, &id).map(|s| s.to_string()),
        None => Err(fail(
            "subject_id",
            format!(
                "{} is not a subject id that the site's id rule recognises",
                c.shown(cell)
            ),
        )),
    }
}

/// A date cell as days since 1970, within the column's plausible dates.
fn date_cell(c: &CompiledColumn, d: &Dialect, cell: &str) -> Result<i32, Failure> {
    let Some(date) = d.parse_date(cell) else {
        return Err(fail(
            "parse",
            format!(
                "{} is not a date in the site's formats ({})",
                c.shown(cell),
                d.date_formats.join(", ")
            ),
        ));
    };
    let what = || {
        if c.identifying {
            c.shown(cell)
        } else {
            format!("date {date}")
        }
    };
    if date < c.min_date {
        return Err(fail(
            "date_range",
            format!("{} is before {}, not plausible", what(), c.min_date),
        ));
    }
    if date > c.max_date {
        return Err(Failure {
            late: true,
            ..fail(
                "date_range",
                format!("{} is after {}, not plausible", what(), c.max_date),
            )
        });
    }
    Ok(days_since_epoch(date))
}

/// Days from 1970-01-01 to `date` (Arrow's Date32).
#[inline]
fn days_since_epoch(date: NaiveDate) -> i32 {
    date.num_days_from_ce() - EPOCH.num_days_from_ce()
}

/// Checks a number against the column's plausible range.
#[inline]
fn in_range(c: &CompiledColumn, cell: &str, v: f64) -> Result<(), Failure> {
    let below = c.min.is_some_and(|m| v < m);
    let above = c.max.is_some_and(|m| v > m);
    if !(below || above) {
        return Ok(());
    }
    Err(out_of_range(c, cell, v))
}

/// Why `v` (the cell `cell`) is outside the column's plausible range.
#[cold]
fn out_of_range(c: &CompiledColumn, cell: &str, v: f64) -> Failure {
    let lo = c
        .min
        .map(|m| m.to_string())
        .unwrap_or_else(|| "-inf".into());
    let hi = c.max.map(|m| m.to_string()).unwrap_or_else(|| "inf".into());
    let what = if c.identifying {
        c.shown(cell)
    } else {
        v.to_string()
    };
    fail(
        "range",
        format!(
            "{what} is outside the plausible range {lo} to {hi} for `{}`",
            c.name
        ),
    )
}

/// Checks text against the column's pattern and allowed values; an allowed value takes its
/// canonical spelling.
fn checked_text<'a>(c: &'a CompiledColumn, s: &'a str) -> Result<&'a str, Failure> {
    if let Some(p) = &c.pattern
        && !p.is_match(s)
    {
        return Err(fail(
            "pattern",
            format!("{} does not match the pattern of `{}`", c.shown(s), c.name),
        ));
    }
    let Some(allowed) = &c.allowed else {
        return Ok(s);
    };
    let canon = if s.bytes().any(|b| !b.is_ascii() || b.is_ascii_uppercase()) {
        allowed.get(&s.to_lowercase())
    } else {
        allowed.get(s)
    };
    match canon {
        Some(canon) => Ok(canon.as_str()),
        None => Err(fail(
            "allowed",
            format!(
                "{} is not one of {} for `{}`",
                c.shown(s),
                c.allowed_list,
                c.name
            ),
        )),
    }
}

/// Column buffers of one file. Numbers and dates go to a values buffer and a validity bitmap
/// (not a `Vec<Option<_>>`, which takes twice the bytes of an `i64` and is converted again
/// at the end); a subject column holds the index of its canonical id in the file's
/// [`CellMemo`], made text when the buffer becomes a column.
///
/// A row's cells are pushed as they are parsed, and taken out again ([`Buffer::drop_failed`])
/// when a later cell of the row fails: rows are rejected far less often than kept. Text cells
/// wait for the end of their block instead (a text builder cannot take a value back).
enum Buffer {
    Str(StringChunkedBuilder),
    Id(PlSmallStr, Values<IdxSize>),
    Int(PlSmallStr, Values<i64>),
    Int32(PlSmallStr, Values<i32>),
    Float(PlSmallStr, Values<f64>),
    Date(PlSmallStr, Values<i32>),
}

/// The values of a numeric column as parsed, and which are missing (their places, made a
/// validity bitmap at the end: a push of a value is one store, with no bitmap to keep up).
struct Values<T> {
    values: Vec<T>,
    missing: Vec<usize>,
}

impl<T: Default> Values<T> {
    fn new(rows: usize) -> Self {
        Values {
            values: Vec::with_capacity(rows),
            missing: Vec::new(),
        }
    }

    #[inline]
    fn push(&mut self, v: T) {
        self.values.push(v);
    }

    #[inline]
    fn push_null(&mut self) {
        self.missing.push(self.values.len());
        self.values.push(T::default());
    }

    /// Takes out the values at `drops` (ascending places).
    fn drop_at(&mut self, drops: &[usize])
    where
        T: Copy,
    {
        let Some(&first) = drops.first() else {
            return;
        };
        let len = self.values.len();
        let mut to = first;
        for (k, &at) in drops.iter().enumerate() {
            let next = drops.get(k + 1).copied().unwrap_or(len).min(len);
            if at < next {
                self.values.copy_within(at + 1..next, to);
                to += next - at - 1;
            }
        }
        self.values.truncate(to);
        // A missing value dropped goes; the others move down by the drops before them.
        let after = self.missing.partition_point(|&m| m < first);
        let mut before = 0;
        for m in self.missing.split_off(after) {
            while drops.get(before).is_some_and(|&at| at < m) {
                before += 1;
            }
            if drops.get(before) != Some(&m) {
                self.missing.push(m - before);
            }
        }
    }

    /// Which values are present (`None` when all are).
    fn validity(&self) -> Option<polars_arrow::bitmap::Bitmap> {
        if self.missing.is_empty() {
            return None;
        }
        let mut valid = polars_arrow::bitmap::MutableBitmap::from_len_set(self.values.len());
        for &at in &self.missing {
            valid.set(at, false);
        }
        Some(valid.into())
    }

    fn finish<P: PolarsNumericType<Native = T>>(self, name: PlSmallStr) -> ChunkedArray<P> {
        let validity = self.validity();
        ChunkedArray::from_vec_validity(name, self.values, validity)
    }
}

impl Values<IdxSize> {
    /// A subject column's cell: its id, or missing.
    #[inline(always)]
    fn push_id(&mut self, cell: Cell) {
        match cell {
            Cell::Id(i) => self.push(i as IdxSize),
            _ => self.push_null(),
        }
    }
}

impl Values<i32> {
    /// An `Int32` column's cell: within the column's range, checked before the row was kept,
    /// so it fits; otherwise missing.
    #[inline(always)]
    fn push_int32(&mut self, cell: Cell) {
        match cell {
            Cell::Int(x) => match i32::try_from(x) {
                Ok(x) => self.push(x),
                Err(_) => self.push_null(),
            },
            _ => self.push_null(),
        }
    }
}

impl Buffer {
    /// A buffer for about `rows` rows.
    fn new(c: &CompiledColumn, rows: usize) -> Buffer {
        let name: PlSmallStr = c.name.as_str().into();
        match c.ty {
            ColumnType::Subject => Buffer::Id(name, Values::new(rows)),
            ColumnType::String => Buffer::Str(StringChunkedBuilder::new(name, rows)),
            ColumnType::Int if c.is_int32() => Buffer::Int32(name, Values::new(rows)),
            ColumnType::Int => Buffer::Int(name, Values::new(rows)),
            ColumnType::Float => Buffer::Float(name, Values::new(rows)),
            ColumnType::Date => Buffer::Date(name, Values::new(rows)),
        }
    }

    #[inline(always)]
    fn push(&mut self, cell: Cell) {
        match (self, cell) {
            (Buffer::Str(b), Cell::Str(s)) => b.append_value(s),
            (Buffer::Id(_, b), cell) => b.push_id(cell),
            (Buffer::Int(_, b), Cell::Int(x)) => b.push(x),
            (Buffer::Int32(_, b), cell) => b.push_int32(cell),
            (Buffer::Float(_, b), Cell::Float(x)) => b.push(x),
            (Buffer::Date(_, b), Cell::Date(x)) => b.push(x),
            (Buffer::Str(b), _) => b.append_null(),
            (Buffer::Int(_, b), _) => b.push_null(),
            (Buffer::Float(_, b), _) => b.push_null(),
            (Buffer::Date(_, b), _) => b.push_null(),
        }
    }

    /// The values pushed so far (0 for text, which [`Buffer::drop_failed`] leaves alone).
    fn len(&self) -> usize {
        match self {
            Buffer::Str(_) => 0,
            Buffer::Id(_, b) => b.values.len(),
            Buffer::Int(_, b) => b.values.len(),
            Buffer::Int32(_, b) => b.values.len(),
            Buffer::Float(_, b) => b.values.len(),
            Buffer::Date(_, b) => b.values.len(),
        }
    }

    /// Takes out this buffer's cells of the block's rows that failed at a later column than
    /// its own (`column`): the block's cells start at `from`, one for each row that had not
    /// failed at this column or before it; `failures` are the block's, in row order. Text is
    /// pushed only for rows kept, and is left as it is.
    fn drop_failed(&mut self, from: usize, column: usize, failures: &[CellFailure]) {
        let mut gone = 0;
        let mut drops = Vec::new();
        for f in failures {
            if f.column <= column {
                gone += 1;
            } else {
                drops.push(from + f.row - gone);
            }
        }
        match self {
            Buffer::Str(_) => {}
            Buffer::Id(_, b) => b.drop_at(&drops),
            Buffer::Int(_, b) => b.drop_at(&drops),
            Buffer::Int32(_, b) => b.drop_at(&drops),
            Buffer::Float(_, b) => b.drop_at(&drops),
            Buffer::Date(_, b) => b.drop_at(&drops),
        }
    }

    /// The column; a subject column's indices become the canonical ids `ids`.
    fn into_column(self, ids: &[String]) -> PolarsResult<Column> {
        Ok(match self {
            Buffer::Str(b) => b.finish().into_column(),
            Buffer::Id(name, b) => {
                // The file's few ids once, then gathered: a short id's view is copied, a
                // longer one's points into the ids' one buffer.
                let ids: StringChunked = ids.iter().map(|id| Some(id.as_str())).collect();
                let validity = b.validity();
                let at = IdxCa::from_vec_validity(name.clone(), b.values, validity);
                ids.take(&at)?.with_name(name).into_column()
            }
            Buffer::Int(name, b) => b.finish::<Int64Type>(name).into_column(),
            Buffer::Int32(name, b) => b.finish::<Int32Type>(name).into_column(),
            Buffer::Float(name, b) => b.finish::<Float64Type>(name).into_column(),
            Buffer::Date(name, b) => b
                .finish::<Int32Type>(name)
                .into_column()
                .cast(&DataType::Date)?,
        })
    }
}

/// Physical line numbers from byte offsets, counting line ends as we go (records come in
/// order). A line ends at `\n`, `\r\n` or a lone `\r`, as for the csv reader itself; the
/// reader's own line counter is not used: it miscounts after CRLF line ends. The line ends are
/// found once, in order, by a vectorised search over the whole text.
struct LineCounter<'a> {
    text: &'a [u8],
    /// Places of `\n` and `\r` not yet counted, from `offset` on.
    ends: std::iter::Peekable<memchr::Memchr2<'a>>,
    offset: usize,
    line: i64,
}

impl<'a> LineCounter<'a> {
    fn new(text: &'a [u8]) -> Self {
        LineCounter {
            text,
            ends: memchr::memchr2_iter(b'\n', b'\r', text).peekable(),
            offset: 0,
            line: 0,
        }
    }

    fn line(&mut self, byte: u64) -> i64 {
        let text = self.text;
        let mut byte = (byte as usize).min(text.len());
        // After a CRLF the reader reports the record at the `\n`; a record never starts there.
        while byte < text.len() && (text[byte] == b'\n' || text[byte] == b'\r') {
            byte += 1;
        }
        if byte < self.offset {
            // Never so for records in order; counted again from the start.
            *self = LineCounter::new(text);
        }
        // A `\r\n` pair counts once, at its `\n`.
        while let Some(&at) = self.ends.peek()
            && at < byte
        {
            self.ends.next();
            if text[at] == b'\n' || text.get(at + 1) != Some(&b'\n') {
                self.line += 1;
            }
        }
        self.offset = byte;
        self.line + 1
    }
}

/// What reading one file gave.
struct FileResult {
    table: DataFrame,
    /// Rows accepted (all in `table` unless they were handed over in pieces).
    accepted: u64,
    rejects: RejectsBuilder,
    read: FileRead,
    latest_date: Option<i32>,
    late: bool,
}

/// One raw file parsed by an ingest stage: its rows, its rejects, and what the engine's
/// per-file cache needs to know to reuse it on another run date.
pub struct ParsedFile {
    pub table: DataFrame,
    /// Rows of `table` as parsed: still the count after a run in subject batches has let go
    /// of the table (it is read back from the file cache, batch by batch).
    pub accepted: u64,
    /// Rejected rows, in the schema of [`crate::rejects`].
    pub rejects: DataFrame,
    pub read: FileRead,
    /// Latest date that passed its checks (a later run date gives the same result).
    pub latest_date: Option<NaiveDate>,
    /// Some date was rejected as after the upper bound, so the result names the run date.
    pub late: bool,
}

/// The columns of one source compiled for one run: parses its files one by one.
pub struct FileParser {
    source: String,
    columns: Vec<CompiledColumn>,
}

impl FileParser {
    /// Reads and checks one file of the source.
    pub fn parse(&self, file: &SourceFile) -> Result<ParsedFile, DataError> {
        self.parse_with(file, None, None)
    }

    /// [`FileParser::parse`] of `bytes`, the file's content as read to hash it (blake3
    /// `hash`): the file is not read again.
    pub fn parse_read(
        &self,
        file: &SourceFile,
        bytes: Vec<u8>,
        hash: String,
    ) -> Result<ParsedFile, DataError> {
        self.parse_with(file, None, Some((bytes, hash)))
    }

    /// [`FileParser::parse`], handing the file's rows to `pieces` as they are parsed, in
    /// tables of at most [`crate::cache::PARSE_PIECE_ROWS`] rows (at least one, maybe without
    /// rows), instead of keeping them: the parsed file's table is then empty.
    pub fn parse_in_pieces(
        &self,
        file: &SourceFile,
        pieces: &mut dyn FnMut(DataFrame),
    ) -> Result<ParsedFile, DataError> {
        self.parse_with(file, Some(pieces), None)
    }

    /// The integer columns whose declared bounds fit in 8 or 16 bits, with that type: a parse
    /// keeps no value outside its column's bounds, so the file cache may store them so
    /// ([`crate::cache::FileTableWriter::narrowing`]). (`Int8` and `Int16`: the unsigned
    /// types are not built into polars here.)
    pub fn cache_narrowing(&self) -> Vec<(PlSmallStr, DataType)> {
        let within = |lo: f64, hi: f64, min: f64, max: f64| min <= lo && hi <= max;
        self.columns
            .iter()
            .filter(|c| c.is_int32())
            .filter_map(|c| {
                let (lo, hi) = (c.min?, c.max?);
                let ty = if within(lo, hi, i8::MIN.into(), i8::MAX.into()) {
                    DataType::Int8
                } else if within(lo, hi, i16::MIN.into(), i16::MAX.into()) {
                    DataType::Int16
                } else {
                    return None;
                };
                Some((c.name.as_str().into(), ty))
            })
            .collect()
    }

    fn parse_with(
        &self,
        file: &SourceFile,
        pieces: Option<&mut dyn FnMut(DataFrame)>,
        read: Option<(Vec<u8>, String)>,
    ) -> Result<ParsedFile, DataError> {
        let r = read_file_with(file, &self.columns, pieces, read)?;
        let mut read = r.read;
        read.source = self.source.clone();
        Ok(ParsedFile {
            accepted: r.accepted,
            table: r.table,
            rejects: r
                .rejects
                .finish()
                .map_err(|e| bad(file, format!("rejects: {e}")))?,
            read,
            latest_date: r
                .latest_date
                .and_then(|d| EPOCH.checked_add_signed(chrono::Duration::days(d.into()))),
            late: r.late,
        })
    }
}

/// The stage output of parsed files, in the source's file order.
pub fn assemble(parts: Vec<ParsedFile>) -> anyhow::Result<StageOutput> {
    let mut tables = Vec::with_capacity(parts.len());
    let mut rejects = Vec::with_capacity(parts.len());
    let mut files = Vec::with_capacity(parts.len());
    for p in parts {
        tables.push(p.table.lazy());
        if p.rejects.height() > 0 {
            rejects.push(p.rejects.lazy());
        }
        files.push(p.read);
    }
    let rejects = if rejects.is_empty() {
        crate::rejects::empty()?
    } else {
        concat(rejects, UnionArgs::default())?.collect()?
    };
    Ok(StageOutput {
        table: concat(tables, UnionArgs::default())?,
        rejects: Some(rejects),
        dropped: None,
        files,
        rows_of_input: None,
    })
}

fn bad(file: &SourceFile, msg: String) -> DataError {
    DataError::BadSource(format!("{}: {msg}", file.path.display()))
}

/// Longest header quoted in a message, in characters; most headers listed.
const HEADER_CHARS: usize = 40;
const HEADERS_LISTED: usize = 30;

/// Maps each canonical column to its field index in the header (None: optional and absent).
fn map_header(
    file: &SourceFile,
    header: &[String],
    columns: &[CompiledColumn],
    d: &Dialect,
) -> Result<Vec<Option<usize>>, DataError> {
    let normalised: Vec<String> = header.iter().map(|h| normalise_header(h)).collect();
    let mut out = Vec::with_capacity(columns.len());
    for c in columns {
        let hits: Vec<usize> = normalised
            .iter()
            .enumerate()
            .filter(|(_, h)| c.headers.contains(h))
            .map(|(i, _)| i)
            .collect();
        match hits.as_slice() {
            [i] => out.push(Some(*i)),
            [] if c.optional => out.push(None),
            [] => return Err(bad(file, missing_column(c, header, d))),
            many => {
                let names: Vec<String> = many
                    .iter()
                    .map(|i| printable(header[*i].trim(), HEADER_CHARS))
                    .collect();
                return Err(bad(
                    file,
                    format!(
                        "column `{}` matches several headers ({}); keep one or rename the others",
                        c.name,
                        names.join(", ")
                    ),
                ));
            }
        }
    }
    Ok(out)
}

/// The message for a mapped column missing from the header: what was looked for, what was
/// found, the closest match, and a hint when the first line is no header at all. A found
/// "header" that reads as a date or a number is data (the header line is missing) and is
/// withheld: it may identify a person.
fn missing_column(c: &CompiledColumn, header: &[String], d: &Dialect) -> String {
    let is_data = |h: &str| {
        let h = h.trim();
        !h.is_empty() && (d.parse_date(h).is_some() || d.parse_float(h).is_some())
    };
    let mut found: Vec<String> = header
        .iter()
        .take(HEADERS_LISTED)
        .map(|h| {
            if is_data(h) {
                "<a value, withheld>".to_string()
            } else {
                printable(h.trim(), HEADER_CHARS)
            }
        })
        .collect();
    if header.len() > HEADERS_LISTED {
        found.push(format!("and {} more", header.len() - HEADERS_LISTED));
    }
    // Edit distance is quadratic: very long "headers" are junk, not near misses.
    let closest = header
        .iter()
        .filter(|h| h.len() <= 4 * HEADER_CHARS && !is_data(h))
        .map(|f| {
            let score = c
                .headers
                .iter()
                .map(|h| strsim::normalized_levenshtein(h, &normalise_header(f)))
                .fold(0.0, f64::max);
            (score, f.trim())
        })
        .filter(|(score, _)| *score >= 0.4)
        .max_by(|a, b| a.0.total_cmp(&b.0))
        .map(|(_, f)| f);
    let mut msg = format!(
        "column `{}` not found (looked for headers: {}); columns found: {}",
        c.name,
        c.headers.join(", "),
        found.join(", ")
    );
    if let Some(f) = closest {
        msg.push_str(&format!(
            "; closest match: `{}`",
            printable(f, HEADER_CHARS)
        ));
    }
    if header.iter().any(|h| h.contains('\0')) {
        msg.push_str(
            "; the first line holds NUL bytes: the file is binary or damaged, not CSV text",
        );
    } else if header.iter().any(|h| is_data(h)) {
        msg.push_str("; the first line looks like data: is the header line missing?");
    }
    msg
}

/// A record as text for RAWVALUE (fields joined by the delimiter), cut after 120 characters.
fn raw_record(rec: &Row, d: &Dialect) -> String {
    let delimiter = (d.delimiter as char).to_string();
    rec.iter()
        .map(|f| String::from_utf8_lossy(f))
        .collect::<Vec<_>>()
        .join(&delimiter)
        .chars()
        .take(120)
        .collect()
}

/// True when every field of `rec` is the header's field (a second header line).
fn repeats_header(rec: &Row, normalised: &[String]) -> bool {
    rec.len() == normalised.len() && rec.iter().zip(normalised).all(|(f, h)| normalises_to(f, h))
}

/// `normalise_header(field) == h`, without allocating for an ASCII field (every data row is
/// checked against the header).
fn normalises_to(field: &[u8], h: &str) -> bool {
    if !field.is_ascii() {
        return normalise_header(&String::from_utf8_lossy(field)) == h;
    }
    // The ASCII white space of `char::is_whitespace`, which `split_whitespace` splits on.
    let space = |b: &u8| matches!(b, b'\t' | b'\n' | 0x0b | 0x0c | b'\r' | b' ');
    let mut rest = h.as_bytes();
    for (i, word) in field.split(space).filter(|w| !w.is_empty()).enumerate() {
        if i > 0 {
            match rest.strip_prefix(b" ") {
                Some(r) => rest = r,
                None => return false,
            }
        }
        match rest.get(..word.len()) {
            Some(head)
                if head
                    .iter()
                    .zip(word)
                    .all(|(e, b)| *e == b.to_ascii_lowercase()) =>
            {
                rest = &rest[word.len()..]
            }
            _ => return false,
        }
    }
    rest.is_empty()
}

#[cfg(test)]
fn read_file(file: &SourceFile, columns: &[CompiledColumn]) -> Result<FileResult, DataError> {
    read_file_with(file, columns, None, None)
}

fn read_file_with(
    file: &SourceFile,
    columns: &[CompiledColumn],
    pieces: Option<&mut dyn FnMut(DataFrame)>,
    read: Option<(Vec<u8>, String)>,
) -> Result<FileResult, DataError> {
    // A file parsed in pieces is read as a stream: neither its rows nor its text is held. A
    // file already read (to hash it, `read`: its bytes and their blake3) is not read again.
    let encoding = file.dialect.encoding;
    let input = match (&pieces, read) {
        (Some(_), _) => Stream::open(&file.path, encoding).map(Input::Stream),
        (None, Some((bytes, hash))) => Ok(Input::Text(Text::of_bytes(bytes, encoding, Some(hash)))),
        (None, None) => Text::read(&file.path, encoding).map(Input::Text),
    };
    let input = input.map_err(|e| {
        if e.kind() == std::io::ErrorKind::NotFound {
            bad(
                file,
                format!(
                    "the file was listed when the run started but is gone now \
                     (moved or deleted during the run?): {e}"
                ),
            )
        } else {
            bad(file, format!("cannot read: {e}"))
        }
    })?;
    parse_text(file, input, columns, pieces)
}

/// A file's text to parse, and what the cache records of its bytes.
struct Text {
    /// The text from `from` on: the bytes themselves (past a UTF-8 byte-order mark), or their
    /// decoded copy.
    owned: Vec<u8>,
    from: usize,
    /// blake3 of the file's bytes, and their count.
    hash: String,
    bytes: u64,
}

/// Bytes of a Latin-1 file read and decoded at a time.
const DECODE_CHUNK: usize = 1 << 20;

impl Text {
    /// The text of `bytes` in `encoding`: a Latin-1 file with a byte beyond ASCII is decoded
    /// to a copy, and the bytes let go of. `hash`, their blake3 when it is known.
    fn of_bytes(bytes: Vec<u8>, encoding: dialect::Encoding, hash: Option<String>) -> Text {
        let hash = hash.unwrap_or_else(|| blake3::hash(&bytes).to_hex().to_string());
        let count = bytes.len() as u64;
        let decoded = match dialect::decode(&bytes, encoding) {
            std::borrow::Cow::Borrowed(t) => Err(bytes.len() - t.len()),
            std::borrow::Cow::Owned(t) => Ok(t),
        };
        let (owned, from) = match decoded {
            Ok(copy) => {
                drop(bytes);
                (copy, 0)
            }
            Err(from) => (bytes, from),
        };
        Text {
            owned,
            from,
            hash,
            bytes: count,
        }
    }

    /// The text of the file at `path`. A Latin-1 file is read and decoded a megabyte at a
    /// time, hashed as it is read ([`decoded`]): its bytes and its text are never held side by
    /// side (for a 76 MB diary export, 76 MB less at the moment of decoding).
    fn read(path: &std::path::Path, encoding: dialect::Encoding) -> std::io::Result<Text> {
        use std::io::Read;
        if encoding != dialect::Encoding::Latin1 {
            return Ok(Text::of_bytes(std::fs::read(path)?, encoding, None));
        }
        let (mut reader, hashes, size) = decoded(path, encoding)?;
        let room = encoding_rs::WINDOWS_1252
            .new_decoder_without_bom_handling()
            .max_utf8_buffer_length(size as usize)
            .ok_or_else(|| std::io::Error::other("the file is too large to decode"))?;
        let mut owned = Vec::with_capacity(room);
        reader.read_to_end(&mut owned)?;
        drop(reader);
        let (hash, bytes) = digest(&hashes);
        Ok(Text {
            owned,
            from: 0,
            hash,
            bytes,
        })
    }
}

/// Parses the bytes of one file: every record read becomes a row or a reject. The bytes (and
/// their decoded text) are let go of once read, before the rows become columns. With
/// `pieces`, the rows are handed to it every [`crate::cache::PARSE_PIECE_ROWS`] rows and at the end
/// (at least once), and the result's table is empty.
fn parse_file(
    file: &SourceFile,
    bytes: Vec<u8>,
    columns: &[CompiledColumn],
    pieces: Option<&mut dyn FnMut(DataFrame)>,
) -> Result<FileResult, DataError> {
    let text = Text::of_bytes(bytes, file.dialect.encoding, None);
    parse_text(file, Input::Text(text), columns, pieces)
}

/// What a file is parsed from: its whole text, or its bytes read as a stream
/// ([`Stream`]).
enum Input {
    Text(Text),
    Stream(Stream),
}

/// A file read as it is parsed, never held whole (a run in subject batches): its bytes
/// hashed as they are read, decoded a megabyte at a time when Latin-1, and the offsets of
/// their line ends kept until the records after them are numbered ([`StreamLines`]).
struct Stream {
    reader: Box<dyn std::io::Read>,
    ends: LineEnds,
    hashes: Hashes,
    /// The file's size, for the message about an empty file and as a size hint.
    size: u64,
}

/// Offsets and bytes (`\n` or `\r`) of the line ends read and not yet counted.
type LineEnds = std::rc::Rc<std::cell::RefCell<std::collections::VecDeque<(u64, u8)>>>;

/// blake3 of the bytes read so far, and their count.
type Hashes = std::rc::Rc<std::cell::RefCell<(blake3::Hasher, u64)>>;

/// The hash and the byte count of `hashes`.
fn digest(hashes: &Hashes) -> (String, u64) {
    let (hasher, bytes) = &*hashes.borrow();
    (hasher.finalize().to_hex().to_string(), *bytes)
}

/// The text of the file at `path` in `encoding`, as a reader: past a UTF-8 byte-order mark,
/// Latin-1 decoded a megabyte at a time; the file's bytes hashed as they are read; its size.
fn decoded(
    path: &std::path::Path,
    encoding: dialect::Encoding,
) -> std::io::Result<(Box<dyn std::io::Read>, Hashes, u64)> {
    use std::io::BufRead;
    let f = std::fs::File::open(path)?;
    let size = f.metadata()?.len();
    let hashes = Hashes::default();
    let raw = Hashed {
        inner: f,
        hashes: hashes.clone(),
    };
    let mut raw = std::io::BufReader::with_capacity(DECODE_CHUNK, raw);
    let text: Box<dyn std::io::Read> = match encoding {
        dialect::Encoding::Utf8 => {
            // Past a byte-order mark, as [`dialect::decode`].
            if raw.fill_buf()?.starts_with(UTF8_BOM) {
                raw.consume(UTF8_BOM.len());
            }
            Box::new(raw)
        }
        dialect::Encoding::Latin1 => Box::new(Latin1 {
            inner: raw,
            decoder: encoding_rs::WINDOWS_1252.new_decoder_without_bom_handling(),
            out: Vec::new(),
            at: 0,
            done: false,
        }),
    };
    Ok((text, hashes, size))
}

const UTF8_BOM: &[u8] = b"\xEF\xBB\xBF";

impl Stream {
    /// The file at `path` in `encoding`, or why it cannot be read.
    fn open(path: &std::path::Path, encoding: dialect::Encoding) -> std::io::Result<Stream> {
        let (text, hashes, size) = decoded(path, encoding)?;
        let ends = LineEnds::default();
        Ok(Stream {
            reader: Box::new(Tracked {
                inner: text,
                at: 0,
                ends: ends.clone(),
            }),
            ends,
            hashes,
            size,
        })
    }

    /// Whether the file's text holds nothing but white space (read up to its first other
    /// byte): the test of a file read whole, on a stream of its text.
    fn blank(path: &std::path::Path, encoding: dialect::Encoding) -> std::io::Result<bool> {
        use std::io::Read;
        let (mut text, _, _) = decoded(path, encoding)?;
        let mut chunk = vec![0u8; 1 << 16];
        loop {
            let n = text.read(&mut chunk)?;
            if n == 0 {
                return Ok(true);
            }
            if !chunk[..n].iter().all(|b| b.is_ascii_whitespace()) {
                return Ok(false);
            }
        }
    }
}

/// A reader that hashes and counts the bytes it passes on.
struct Hashed<R> {
    inner: R,
    hashes: Hashes,
}

impl<R: std::io::Read> std::io::Read for Hashed<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        let mut h = self.hashes.borrow_mut();
        h.0.update(&buf[..n]);
        h.1 += n as u64;
        Ok(n)
    }
}

/// A reader that decodes Latin-1 (windows-1252) to UTF-8 a chunk at a time.
struct Latin1<R> {
    inner: R,
    decoder: encoding_rs::Decoder,
    out: Vec<u8>,
    at: usize,
    done: bool,
}

impl<R: std::io::BufRead> std::io::Read for Latin1<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        while self.at == self.out.len() && !self.done {
            let chunk = self.inner.fill_buf()?;
            let last = chunk.is_empty();
            let mut text = String::with_capacity(
                self.decoder
                    .max_utf8_buffer_length(chunk.len())
                    .unwrap_or(3 * chunk.len() + 16),
            );
            let (_, read, _) = self.decoder.decode_to_string(chunk, &mut text, last);
            self.inner.consume(read);
            self.out = text.into_bytes();
            self.at = 0;
            self.done = last;
        }
        let n = buf.len().min(self.out.len() - self.at);
        buf[..n].copy_from_slice(&self.out[self.at..self.at + n]);
        self.at += n;
        Ok(n)
    }
}

/// A reader that notes the offset of every line end (`\n`, `\r`) it passes on.
struct Tracked<R> {
    inner: R,
    at: u64,
    ends: LineEnds,
}

impl<R: std::io::Read> std::io::Read for Tracked<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        let mut ends = self.ends.borrow_mut();
        for (i, &b) in buf[..n].iter().enumerate() {
            if b == b'\n' || b == b'\r' {
                ends.push_back((self.at + i as u64, b));
            }
        }
        self.at += n as u64;
        Ok(n)
    }
}

/// [`LineCounter`] for a file read as a stream: the line ends before a record are counted as
/// the record is numbered, and let go of.
#[derive(Default)]
struct StreamLines {
    offset: u64,
    line: i64,
}

impl StreamLines {
    fn line(&mut self, ends: &LineEnds, byte: u64) -> i64 {
        let mut ends = ends.borrow_mut();
        let mut byte = byte.max(self.offset);
        // The line ends before the record, and (after a CRLF the reader reports the record at
        // the `\n`) those it starts at; a `\r\n` pair counts once.
        while let Some(&(at, b)) = ends.front() {
            if at > byte {
                break;
            }
            ends.pop_front();
            if at == byte {
                byte += 1;
            }
            let pair = b == b'\r' && ends.front() == Some(&(at + 1, b'\n'));
            if !pair {
                self.line += 1;
            }
        }
        self.offset = byte;
        self.line + 1
    }
}

/// What the cache records of a file's bytes: known when they were read whole, else hashed as
/// the stream reads them.
enum Digest {
    Known(String, u64),
    Hashing(Hashes),
}

/// Numbers records by their physical line, from the whole text or from a stream.
enum Lines<'a> {
    Text(LineCounter<'a>),
    Stream(LineEnds, StreamLines),
}

impl Lines<'_> {
    fn line(&mut self, byte: u64) -> i64 {
        match self {
            Lines::Text(c) => c.line(byte),
            Lines::Stream(ends, c) => c.line(ends, byte),
        }
    }
}

/// The csv reader of a file's records: any delimiter, no header, records of any length.
fn csv_reader<'a>(
    source: Box<dyn std::io::Read + 'a>,
    delimiter: u8,
) -> csv::Reader<Box<dyn std::io::Read + 'a>> {
    csv::ReaderBuilder::new()
        .delimiter(delimiter)
        .has_headers(false)
        .flexible(true)
        .from_reader(source)
}

/// Where a file's records come from: the csv reader, or, for a whole text without a quote
/// character (a diary export, say), lines split at the delimiter ([`PlainRecords`]).
enum Records<'a> {
    Csv(csv::Reader<Box<dyn std::io::Read + 'a>>),
    Plain(PlainRecords<'a>),
}

impl<'a> Records<'a> {
    fn of_text(text: &'a [u8], delimiter: u8) -> Self {
        if memchr::memchr(b'"', text).is_none() {
            Records::Plain(PlainRecords {
                text,
                valid: std::str::from_utf8(text).ok(),
                at: 0,
                line_ends: 0,
                delimiter,
            })
        } else {
            Records::Csv(csv_reader(Box::new(text), delimiter))
        }
    }

    /// The next record, as `csv::Reader::read_byte_record` reads it: a quote-free text's
    /// record where it lies in the text, the csv reader's in `rec`; where its fields lie is
    /// pushed to `fields`. `None` after the last.
    #[inline(always)]
    fn next<'r>(
        &'r mut self,
        rec: &'r mut csv::ByteRecord,
        fields: &'r mut Vec<(usize, usize)>,
    ) -> csv::Result<Option<Row<'r>>> {
        let first = fields.len();
        match self {
            Records::Csv(r) => {
                if !r.read_byte_record(rec)? {
                    return Ok(None);
                }
                let spans = (0..rec.len()).filter_map(|i| rec.range(i));
                fields.extend(spans.map(|r| (r.start, r.end)));
                Ok(Some(Row {
                    bytes: rec.as_slice(),
                    fields: &fields[first..],
                    byte: rec.position().map(|p| p.byte()),
                    line: None,
                }))
            }
            Records::Plain(p) => Ok(p.next(fields).map(|(bytes, byte, line)| Row {
                bytes,
                fields: &fields[first..],
                byte: Some(byte),
                line: Some(line),
            })),
        }
    }
}

/// One record: its bytes, where each field lies in them (start and end), and the byte of the
/// text where the record starts, as the csv reader reports it.
struct Row<'r> {
    bytes: &'r [u8],
    fields: &'r [(usize, usize)],
    byte: Option<u64>,
    /// The record's line (from 1), when the records were read in place, which counts the line
    /// ends it passes; otherwise [`LineCounter`] finds it from `byte`.
    line: Option<i64>,
}

impl<'r> Row<'r> {
    fn len(&self) -> usize {
        self.fields.len()
    }

    /// Where field `i` lies in the record's bytes.
    fn range(&self, i: usize) -> Option<std::ops::Range<usize>> {
        self.fields.get(i).map(|&(start, end)| start..end)
    }

    fn get(&self, i: usize) -> Option<&'r [u8]> {
        self.bytes.get(self.range(i)?)
    }

    fn iter(&self) -> impl Iterator<Item = &'r [u8]> + '_ {
        (0..self.len()).filter_map(|i| self.get(i))
    }
}

/// The records of a text without a quote character, read as the csv reader reads them: a
/// record is a stretch of bytes between line ends (`\n`, `\r`; empty lines skipped), its fields
/// split at every delimiter. Without quotes nothing else of CSV can occur, and the csv
/// reader's state machine (about 30 instructions a byte) is not needed; a property test
/// checks that both give the same records at the same places, on the same lines.
struct PlainRecords<'a> {
    text: &'a [u8],
    /// The text, when it is UTF-8 as a whole (checked once): then so is every record, which
    /// ends at ASCII line ends, and every field of it ([`RawCell::text`]).
    valid: Option<&'a str>,
    at: usize,
    /// Line ends before `at`: a `\n`, or a `\r` not followed by `\n` (as [`LineCounter`]
    /// counts them).
    line_ends: i64,
    delimiter: u8,
}

/// Bytes of 8 at a time.
const WORD: usize = 8;
const ONES: u64 = u64::from_le_bytes([0x01; WORD]);
const LOW7: u64 = u64::from_le_bytes([0x7f; WORD]);

/// The high bit of every byte of `w` equal to `b` (and no other bit): the bytes are compared
/// eight at a time in a machine word, with no carry from one byte into the next.
#[inline(always)]
fn bytes_equal(w: u64, b: u8) -> u64 {
    let x = w ^ ONES.wrapping_mul(u64::from(b));
    !(((x & LOW7).wrapping_add(LOW7)) | x | LOW7)
}

impl<'a> PlainRecords<'a> {
    /// The next record's bytes, read in place, where it starts and its line; where its fields
    /// lie is pushed to `fields` (nothing is copied).
    #[inline(always)]
    fn next(&mut self, fields: &mut Vec<(usize, usize)>) -> Option<(&'a [u8], u64, i64)> {
        let text = self.text;
        while let Some(&b) = text.get(self.at)
            && matches!(b, b'\n' | b'\r')
        {
            if b == b'\n' || text.get(self.at + 1) != Some(&b'\n') {
                self.line_ends += 1;
            }
            self.at += 1;
        }
        if self.at == text.len() {
            return None;
        }
        let start = self.at;
        // The record ends at the first line end; every delimiter before it ends a field. A
        // word at a time: most records are a few words, with a delimiter in each.
        let mut from = start;
        let mut at = start;
        let end = loop {
            let Some(word) = text.get(at..at + WORD) else {
                // The last bytes of the text, one at a time.
                let rest = &text[at..];
                let stop = rest.iter().position(|&b| matches!(b, b'\n' | b'\r'));
                let stop = stop.map_or(text.len(), |i| at + i);
                for i in memchr::memchr_iter(self.delimiter, &text[at..stop]) {
                    fields.push((from - start, at + i - start));
                    from = at + i + 1;
                }
                break stop;
            };
            let w = u64::from_le_bytes(word.try_into().expect("a word of bytes"));
            let ends = bytes_equal(w, b'\n') | bytes_equal(w, b'\r');
            let mut delimiters = bytes_equal(w, self.delimiter);
            if ends != 0 {
                // Only the delimiters before the line end (their high bits are below its).
                delimiters &= (1u64 << ends.trailing_zeros()) - 1;
            }
            while delimiters != 0 {
                let i = at + (delimiters.trailing_zeros() / 8) as usize;
                fields.push((from - start, i - start));
                from = i + 1;
                delimiters &= delimiters - 1;
            }
            if ends != 0 {
                break at + (ends.trailing_zeros() / 8) as usize;
            }
            at += WORD;
        };
        fields.push((from - start, end - start));
        self.at = end;
        let line = &text[start..end];
        Some((line, start as u64, self.line_ends + 1))
    }
}

/// [`parse_file`] of the file's text, or of its bytes read as a stream.
fn parse_text(
    file: &SourceFile,
    input: Input,
    columns: &[CompiledColumn],
    mut pieces: Option<&mut dyn FnMut(DataFrame)>,
) -> Result<FileResult, DataError> {
    let d: &Dialect = &file.dialect;
    // The text (read whole) or the stream of it, its line numbers, what hashes its bytes, the
    // file's size, and whether it is blank.
    let owned: Vec<u8>;
    let (mut reader, mut lines_at, digested, size, blank) = match input {
        Input::Text(t) => {
            owned = t.owned;
            let text = &owned[t.from..];
            let blank = text.iter().all(|b| b.is_ascii_whitespace());
            let lines = Lines::Text(LineCounter::new(text));
            (
                Records::of_text(text, d.delimiter),
                lines,
                Digest::Known(t.hash, t.bytes),
                t.bytes,
                blank,
            )
        }
        Input::Stream(s) => {
            owned = Vec::new();
            let blank = Stream::blank(&file.path, d.encoding)
                .map_err(|e| bad(file, format!("cannot read: {e}")))?;
            let lines = Lines::Stream(s.ends, StreamLines::default());
            (
                Records::Csv(csv_reader(s.reader, d.delimiter)),
                lines,
                Digest::Hashing(s.hashes),
                s.size,
                blank,
            )
        }
    };
    if blank {
        return Err(bad(
            file,
            format!("the file is empty ({size} bytes): not even a header line"),
        ));
    }
    // One record buffer (for the csv reader) and one list of fields for the whole file: no
    // allocation per row.
    let mut record = csv::ByteRecord::new();
    let mut fields: Vec<(usize, usize)> = Vec::new();
    let header: Vec<String> = match reader.next(&mut record, &mut fields) {
        Ok(Some(row)) => row
            .iter()
            .map(|f| String::from_utf8_lossy(f).into_owned())
            .collect(),
        Err(e) => return Err(bad(file, format!("cannot read the header: {e}"))),
        Ok(None) => return Err(bad(file, "no header line".into())),
    };
    let mapping = map_header(file, &header, columns, d)?;
    let normalised: Vec<String> = header.iter().map(|h| normalise_header(h)).collect();
    // A size hint: records are at most the lines ending in `\n` (plus a last one without), so
    // buffers of that size are not grown by copying. A file whose lines end in a bare `\r`
    // grows its buffers as it goes.
    let lines_in_file = match &lines_at {
        Lines::Text(c) => memchr::memchr_iter(b'\n', c.text).count() + 1,
        // A hint only: buffers grow as they need to.
        Lines::Stream(..) => (size / 16) as usize + 16,
    };
    let piece_rows = match pieces {
        Some(_) => crate::cache::PARSE_PIECE_ROWS,
        None => usize::MAX,
    };
    let buffers_for =
        |rows: usize| -> Vec<Buffer> { columns.iter().map(|c| Buffer::new(c, rows)).collect() };
    let mut buffers = buffers_for(lines_in_file.min(piece_rows));
    let mut memos: Vec<CellMemo> = columns.iter().map(|_| CellMemo::default()).collect();
    let quick: Vec<Quick> = columns.iter().map(|c| Quick::of(c, d)).collect();
    let mut lines: Vec<i64> = Vec::with_capacity(lines_in_file.min(piece_rows));
    let export_days = days_since_epoch(file.export_date);
    // The rows in `buffers` and `lines` as a table.
    let table_of = |buffers: Vec<Buffer>,
                    lines: Vec<i64>,
                    memos: &[CellMemo]|
     -> Result<DataFrame, DataError> {
        let n = lines.len();
        let constant = |name: &str| {
            file_constant(name, &file.site, &file.rel, export_days, n)
                .ok_or_else(|| bad(file, format!("`{name}` is not a column of the whole file")))
        };
        let mut cols = vec![
            constant("SITE")?,
            constant("SRCFILE")?,
            Column::new("SRCLINE".into(), lines),
            constant("EXPORTDT")?,
        ];
        for ((b, c), memo) in buffers.into_iter().zip(columns).zip(memos) {
            cols.push(
                b.into_column(&memo.ids)
                    .map_err(|e| bad(file, format!("`{}`: {e}", c.name)))?,
            );
        }
        DataFrame::new(n, cols).map_err(|e| bad(file, e.to_string()))
    };
    let (mut accepted, mut handed) = (0u64, false);
    let mut rejects = RejectsBuilder::default();
    let mut rows = 0u64;
    let (mut latest_date, mut late) = (None::<i32>, false);
    // A quote-free text's records are parsed where they lie in it; the csv reader's are copied
    // into the block.
    let in_place = match &reader {
        Records::Plain(p) => Some((p.text, p.valid)),
        Records::Csv(_) => None,
    };
    let width = header.len();
    let mut block = Block::default();
    let mut ended = false;
    while !ended {
        // The block's records: never more than the rows the piece has room for, so that a piece
        // fills exactly.
        block.clear();
        let room = BLOCK_ROWS.min(piece_rows.saturating_sub(lines.len()).max(1));
        while block.records() < room {
            // The record's fields are pushed to the block's, and taken back if it is rejected.
            let first = block.fields.len();
            let rec = match reader.next(&mut record, &mut block.fields) {
                Ok(Some(row)) => row,
                Ok(None) => {
                    ended = true;
                    break;
                }
                // Only a stream can fail to read.
                Err(e) if e.is_io_error() => {
                    return Err(bad(file, format!("cannot read: {e}")));
                }
                Err(e) => {
                    // The csv reader only fails on I/O; a bad record still has a position.
                    let line = e.position().map(|p| lines_at.line(p.byte())).unwrap_or(0);
                    rows += 1;
                    block.fields.truncate(first);
                    block.reject(line, String::new(), format!("unreadable record: {e}"));
                    continue;
                }
            };
            rows += 1;
            let line = match rec.line {
                Some(line) => line,
                None => rec.byte.map(|b| lines_at.line(b)).unwrap_or(0),
            };
            let rejected = if repeats_header(&rec, &normalised) {
                Some((
                    raw_record(&rec, d),
                    "the line repeats the header line: were two exports joined into one file?"
                        .to_string(),
                ))
            } else if rec.len() != width {
                Some((
                    raw_record(&rec, d),
                    format!(
                        "the record has {} fields but the header has {width}",
                        rec.len()
                    ),
                ))
            } else {
                // Where the record lies: in the text (a quote-free text's records always know
                // their byte), or copied.
                let at = match in_place {
                    Some(_) => rec.byte.unwrap_or_default() as usize,
                    None => {
                        let at = block.copies.len();
                        block.copies.extend_from_slice(rec.bytes);
                        at
                    }
                };
                block.lines.push(line);
                block.starts.push(at);
                None
            };
            if let Some((raw, reason)) = rejected {
                block.fields.truncate(first);
                block.reject(line, raw, reason);
            }
        }
        // The copies are checked as UTF-8 at once: when they are, so is every cell.
        let (base, whole) = match in_place {
            Some((text, valid)) => (text, valid),
            None => (&block.copies[..], std::str::from_utf8(&block.copies).ok()),
        };
        let parse = BlockParse {
            columns,
            mapping: &mapping,
            quick: &quick,
            d,
            width,
        };
        let failures = parse.run(
            &block,
            (base, whole),
            &mut memos,
            &mut buffers,
            &mut latest_date,
            &mut late,
        );
        // The block's records in order: each rejected one goes to the rejects, each other
        // one's line to the rows kept. The records rejected as a whole after the last record
        // parsed come at `r` = the number parsed.
        let mut failures = failures.into_iter().peekable();
        let mut early = std::mem::take(&mut block.rejected).into_iter().peekable();
        for r in 0..=block.lines.len() {
            while let Some((_, e)) = early.next_if(|(before, _)| *before == r) {
                rejects.push(
                    &file.rel, e.line, &file.site, "", &e.raw, "columns", e.reason,
                );
            }
            let Some(&line) = block.lines.get(r) else {
                break;
            };
            match failures.next_if(|f| f.row == r) {
                Some(f) => rejects.push(
                    &file.rel,
                    line,
                    &file.site,
                    &columns[f.column].name,
                    &f.raw,
                    f.failure.rule,
                    f.failure.reason,
                ),
                None => {
                    lines.push(line);
                    accepted += 1;
                }
            }
        }
        if lines.len() == piece_rows
            && let Some(hand) = pieces.as_mut()
        {
            let left = lines_in_file.saturating_sub(rows as usize).min(piece_rows);
            let full = std::mem::replace(&mut buffers, buffers_for(left));
            let full_lines = std::mem::replace(&mut lines, Vec::with_capacity(left));
            hand(table_of(full, full_lines, &memos)?);
            handed = true;
        }
    }
    drop(reader);
    drop(lines_at);
    drop(owned);
    let (hash, byte_count) = match digested {
        Digest::Known(hash, bytes) => (hash, bytes),
        Digest::Hashing(hashes) => digest(&hashes),
    };
    let mut table = table_of(buffers, lines, &memos)?;
    if let Some(hand) = pieces {
        if table.height() > 0 || !handed {
            hand(table);
        }
        table = DataFrame::empty();
    }
    Ok(FileResult {
        table,
        accepted,
        rejects,
        read: FileRead {
            source: String::new(),
            site: file.site.clone(),
            file: file.rel.clone(),
            bytes: byte_count,
            hash,
            export_date: file.export_date.to_string(),
            rows,
        },
        latest_date,
        late,
    })
}

/// Records read before their cells are parsed, a column at a time ([`BlockParse`]): a block's
/// text and the places of its fields stay in the processor's caches while its columns are
/// read. The unit tests read files in blocks of a few rows, so that their files span blocks.
#[cfg(not(test))]
const BLOCK_ROWS: usize = 256;
#[cfg(test)]
const BLOCK_ROWS: usize = 7;

/// Up to [`BLOCK_ROWS`] records of a file, in order: the ones whose cells are to be parsed
/// (their line, where their bytes start and where their fields lie in them), and the ones
/// rejected as records (a second header line, a wrong number of fields, an unreadable record),
/// each with the number of records to parse before it.
#[derive(Default)]
struct Block {
    lines: Vec<i64>,
    starts: Vec<usize>,
    /// The fields of each record to parse, as many as the header has: where each lies in the
    /// record's bytes (start, end).
    fields: Vec<(usize, usize)>,
    /// Copies of the records the csv reader read; a quote-free text's are read in place.
    copies: Vec<u8>,
    rejected: Vec<(usize, RejectedRecord)>,
}

/// A record rejected as a whole, before its cells were read.
struct RejectedRecord {
    line: i64,
    raw: String,
    reason: String,
}

impl Block {
    fn clear(&mut self) {
        self.lines.clear();
        self.starts.clear();
        self.fields.clear();
        self.copies.clear();
        self.rejected.clear();
    }

    /// The records of the block, rejected ones included.
    fn records(&self) -> usize {
        self.lines.len() + self.rejected.len()
    }

    fn reject(&mut self, line: i64, raw: String, reason: String) {
        let record = RejectedRecord { line, raw, reason };
        self.rejected.push((self.lines.len(), record));
    }
}

/// A cell of a block: its bytes, and where they lie in the text they were read from when that
/// text is UTF-8 as a whole. The common cells are read as bytes (a digit, a date in the layout,
/// the subject of the row before are ASCII or text already checked); only the others are
/// made text ([`RawCell::text`]).
#[derive(Clone, Copy)]
struct RawCell<'t> {
    bytes: &'t [u8],
    whole: Option<&'t str>,
    span: (usize, usize),
}

impl<'t> RawCell<'t> {
    /// The cell as text, or the failure of a cell of column `c` that is not UTF-8. A piece of
    /// valid text between ASCII delimiters, quotes and line ends is valid.
    #[inline]
    fn text(self, c: &CompiledColumn) -> Result<&'t str, Failure> {
        if let Some(text) = self.whole.and_then(|t| t.get(self.span.0..self.span.1)) {
            return Ok(text);
        }
        std::str::from_utf8(self.bytes).map_err(|_| {
            fail(
                "encoding",
                format!(
                    "`{}` holds bytes that are not valid UTF-8 (is the file Latin-1?)",
                    c.name
                ),
            )
        })
    }
}

/// A record of a block that failed at a cell: the first column (in the order of the source's
/// columns) whose cell failed, the cell as written, and why.
struct CellFailure {
    row: usize,
    column: usize,
    raw: String,
    failure: Failure,
}

/// Parses the cells of a block's records into the columns' buffers, a column at a time, with
/// the outcome a row at a time would give: each record is kept with every cell, or rejected at
/// its first cell that fails, none of its cells kept. A column reads the cells of the records
/// that have not failed at a column before it, in order, so each column's memo and the
/// latest date see the cells that reading row by row would show them. Rows are rejected far
/// less often than kept: a column's cells of a row that fails at a later column are pushed and
/// then taken out again ([`Buffer::drop_failed`]); text cells wait for the block's end instead.
struct BlockParse<'p> {
    columns: &'p [CompiledColumn],
    mapping: &'p [Option<usize>],
    quick: &'p [Quick],
    d: &'p Dialect,
    /// Fields per record.
    width: usize,
}

impl BlockParse<'_> {
    /// The block's failed records, in order.
    fn run(
        &self,
        block: &Block,
        (base, whole): (&[u8], Option<&str>),
        memos: &mut [CellMemo],
        buffers: &mut [Buffer],
        latest_date: &mut Option<i32>,
        late: &mut bool,
    ) -> Vec<CellFailure> {
        let d = self.d;
        let mut rows = BlockRows {
            block,
            base,
            whole,
            width: self.width,
            failed_at: vec![usize::MAX; block.lines.len()],
            failures: Vec::new(),
            late: false,
        };
        // Each buffer's length before the block, and the text columns' cells of the block.
        let mut from = Vec::with_capacity(self.columns.len());
        let mut texts: Vec<(usize, Vec<(usize, Cell)>)> = Vec::new();
        for (i, ((((c, idx), quick), memo), buffer)) in self
            .columns
            .iter()
            .zip(self.mapping)
            .zip(self.quick)
            .zip(memos.iter_mut())
            .zip(buffers.iter_mut())
            .enumerate()
        {
            from.push(buffer.len());
            let Some(idx) = *idx else {
                // Not in the file: missing in every row.
                match buffer {
                    Buffer::Str(_) => {
                        texts.push((i, rows.alive(i).map(|r| (r, Cell::Null)).collect()))
                    }
                    _ => rows.alive(i).for_each(|_| buffer.push(Cell::Null)),
                }
                continue;
            };
            // A loop for each kind of column, the common cells read inline; any other cell is
            // left to `parse_cell`.
            match (quick, buffer) {
                (Quick::Digit(ok), Buffer::Int32(_, b)) => rows.each_cell(i, idx, |raw| {
                    match raw.bytes {
                        [x @ b'0'..=b'9'] if ok[usize::from(x - b'0')] => {
                            b.push(i32::from(x - b'0'))
                        }
                        _ => b.push_int32(parse_cell(c, d, raw.text(c)?, memo)?),
                    }
                    Ok(())
                }),
                (&Quick::Date { first, last }, Buffer::Date(_, b)) => {
                    rows.each_cell(i, idx, |raw| {
                        // A cell in the layout is ASCII digits and separators, so it has no
                        // white space around it for `parse_cell` to trim; the check says so
                        // where it is relied on.
                        let day = match d.layout_days(raw.bytes) {
                            Some(day)
                                if (first..=last).contains(&day) && visible_ends(raw.bytes) =>
                            {
                                day
                            }
                            _ => match parse_cell(c, d, raw.text(c)?, memo)? {
                                Cell::Date(day) => day,
                                _ => {
                                    b.push_null();
                                    return Ok(());
                                }
                            },
                        };
                        *latest_date = (*latest_date).max(Some(day));
                        b.push(day);
                        Ok(())
                    })
                }
                (Quick::SameSubject, Buffer::Id(_, b)) => rows.each_cell(i, idx, |raw| {
                    match &memo.last_subject {
                        // The cell before was trimmed and not missing, and gave this id.
                        Some((last, id)) if last.as_bytes() == raw.bytes => b.push(*id as IdxSize),
                        _ => b.push_id(parse_cell(c, d, raw.text(c)?, memo)?),
                    }
                    Ok(())
                }),
                (_, Buffer::Str(_)) => {
                    let mut cells = Vec::with_capacity(rows.block.lines.len());
                    rows.each_cell(i, idx, |raw| {
                        cells.push(parse_cell(c, d, raw.text(c)?, memo)?);
                        Ok(())
                    });
                    // The cells of the rows that read this column without failing, in order.
                    let mut these = Vec::with_capacity(cells.len());
                    these.extend(rows.alive(i).zip(cells));
                    texts.push((i, these));
                }
                (_, buffer) => rows.each_cell(i, idx, |raw| {
                    let cell = parse_cell(c, d, raw.text(c)?, memo)?;
                    if let Cell::Date(day) = cell {
                        *latest_date = (*latest_date).max(Some(day));
                    }
                    buffer.push(cell);
                    Ok(())
                }),
            }
        }
        *late |= rows.late;
        let BlockRows {
            failed_at,
            mut failures,
            ..
        } = rows;
        if !failures.is_empty() {
            failures.sort_unstable_by_key(|f| f.row);
            // Each column's cells of the records that failed at a later column go.
            for (j, (buffer, &from)) in buffers.iter_mut().zip(&from).enumerate() {
                buffer.drop_failed(from, j, &failures);
            }
        }
        for (i, cells) in texts {
            for (r, cell) in cells {
                if failed_at[r] == usize::MAX {
                    buffers[i].push(cell);
                }
            }
        }
        failures
    }
}

/// A block's records as its columns are parsed: which have failed, at which column, and why.
struct BlockRows<'b, 't> {
    block: &'b Block,
    base: &'t [u8],
    /// The base as text, when it is UTF-8 as a whole.
    whole: Option<&'t str>,
    width: usize,
    /// The first column at which each record failed (`usize::MAX`: none).
    failed_at: Vec<usize>,
    failures: Vec<CellFailure>,
    /// Whether a failed cell was a date after the upper bound.
    late: bool,
}

impl<'t> BlockRows<'_, 't> {
    /// Reads the cell of field `idx` of each record that has not failed before column `i`,
    /// in order; a record whose cell `read` fails fails at `i`.
    #[inline(always)]
    fn each_cell(
        &mut self,
        i: usize,
        idx: usize,
        mut read: impl FnMut(RawCell<'t>) -> Result<(), Failure>,
    ) {
        let rows = self.block.starts.iter().zip(&mut self.failed_at);
        for (r, (&at, failed)) in rows.enumerate() {
            if *failed < i {
                continue;
            }
            let (start, end) = match self.block.fields.get(r * self.width + idx) {
                Some(&(s, e)) => (at + s, at + e),
                None => (0, 0),
            };
            let cell = RawCell {
                bytes: self.base.get(start..end).unwrap_or(b""),
                whole: self.whole,
                span: (start, end),
            };
            if let Err(f) = read(cell) {
                self.late |= f.late;
                *failed = i;
                self.failures.push(CellFailure {
                    row: r,
                    column: i,
                    raw: String::from_utf8_lossy(cell.bytes).into_owned(),
                    failure: f,
                });
            }
        }
    }

    /// The records that have not failed at column `i` or before it, in order.
    fn alive(&self, i: usize) -> impl Iterator<Item = usize> + '_ {
        let alive = self
            .failed_at
            .iter()
            .enumerate()
            .filter(move |(_, f)| **f > i);
        alive.map(|(r, _)| r)
    }
}

/// Columns of a parsed file that hold one value for the whole file: its site, its path
/// (relative to the data folder) and its export date ([`file_constant`]).
pub(crate) const FILE_CONSTANTS: [&str; 3] = ["SITE", "SRCFILE", "EXPORTDT"];

/// The column `name` of [`FILE_CONSTANTS`] for `n` rows of the file at `path` of `site`,
/// exported on day `export_days` (days since 1970-01-01), as one value for all rows; `None`
/// for any other name. The ingest makes these columns so, and the cache, which stores a
/// file's parse without them, puts them back so.
pub(crate) fn file_constant(
    name: &str,
    site: &str,
    path: &str,
    export_days: i32,
    n: usize,
) -> Option<Column> {
    let value = match name {
        "SITE" => Scalar::from(PlSmallStr::from(site)),
        "SRCFILE" => Scalar::from(PlSmallStr::from(path)),
        "EXPORTDT" => Scalar::new(DataType::Date, AnyValue::Date(export_days)),
        _ => return None,
    };
    Some(Column::new_scalar(name.into(), value, n))
}

/// The date window of the pipeline: `dates.min` to `dates.max` or the run date.
pub fn date_window(spec: &PipelineSpec, run_date: NaiveDate) -> (NaiveDate, NaiveDate) {
    let min = NaiveDate::parse_from_str(&spec.header.dates.min, "%Y-%m-%d")
        .unwrap_or(NaiveDate::from_ymd_opt(1990, 1, 1).expect("valid date"));
    let max = spec
        .header
        .dates
        .max
        .as_deref()
        .and_then(|m| NaiveDate::parse_from_str(m, "%Y-%m-%d").ok())
        .unwrap_or(run_date);
    (min, max)
}

fn compile_columns(
    columns: &[ColumnSpec],
    identifying: &[String],
    (min_date, max_date): (NaiveDate, NaiveDate),
) -> Result<Vec<CompiledColumn>, DataError> {
    columns
        .iter()
        .map(|c| {
            let mut compiled = CompiledColumn::compile(c, min_date, max_date)?;
            compiled.identifying = identifying.contains(&c.name);
            Ok(compiled)
        })
        .collect::<Result<Vec<_>, String>>()
        .map_err(DataError::BadSource)
}

/// One export file parsed by [`parse_export`].
#[derive(Debug)]
pub struct ParsedExport {
    /// Accepted rows: SITE, SRCFILE, SRCLINE, EXPORTDT, then the columns.
    pub table: DataFrame,
    /// Rejected rows, in the schema of [`crate::rejects`].
    pub rejects: DataFrame,
    /// Records read (the header excluded): each is a row of `table` or of `rejects`.
    pub rows: u64,
}

/// Parses the bytes of one export file exactly as `ingest` reads a site's file: `columns` as
/// under a source in the YAML, values of `identifying` columns withheld from reasons, dates
/// outside `dates` (first, last) rejected. For fuzzing and tests; a run reads files itself.
pub fn parse_export(
    bytes: &[u8],
    dialect: &Dialect,
    columns: &[ColumnSpec],
    identifying: &[String],
    dates: (NaiveDate, NaiveDate),
) -> Result<ParsedExport, DataError> {
    let columns = compile_columns(columns, identifying, dates)?;
    let file = SourceFile {
        site: "SITE".into(),
        path: "export.csv".into(),
        rel: "export.csv".into(),
        export_date: dates.0,
        dialect: std::sync::Arc::new(dialect.clone()),
    };
    let r = parse_file(&file, bytes.to_vec(), &columns, None)?;
    Ok(ParsedExport {
        table: r.table,
        rejects: r.rejects.finish().map_err(|e| bad(&file, e.to_string()))?,
        rows: r.read.rows,
    })
}

impl Ingest {
    /// The resolved source this stage reads.
    pub fn source<'a>(&self, sources: &'a [ResolvedSource]) -> anyhow::Result<&'a ResolvedSource> {
        sources
            .iter()
            .find(|s| s.name == self.source)
            .ok_or_else(|| anyhow::anyhow!("source `{}` is not defined", self.source))
    }

    /// A parser for the files of this stage's source, for the run's date window.
    pub fn parser(&self, ctx: &StageCtx) -> anyhow::Result<FileParser> {
        let source = self.source(ctx.sources)?;
        let specs: Vec<ColumnSpec> = source
            .spec
            .columns
            .iter()
            .map(|c| c.value.clone())
            .collect();
        let columns = compile_columns(
            &specs,
            &ctx.spec.header.identifying,
            date_window(ctx.spec, ctx.run_date),
        )?;
        Ok(FileParser {
            source: source.name.clone(),
            columns,
        })
    }
}

impl Stage for Ingest {
    fn arity(&self) -> Arity {
        Arity::None
    }

    fn row_level(&self) -> bool {
        true
    }

    fn reads_source(&self) -> Option<&str> {
        Some(&self.source)
    }

    fn check(&self, spec: &PipelineSpec) -> Vec<String> {
        if spec.sources.iter().any(|s| s.value.name == self.source) {
            return Vec::new();
        }
        let names = spec.sources.iter().map(|s| s.value.name.as_str());
        let hint = crate::closest(&self.source, names)
            .map(|c| format!(" (did you mean `{c}`?)"))
            .unwrap_or_default();
        vec![format!(
            "source `{}` is not defined under `sources:`{hint}",
            self.source
        )]
    }

    // The engine calls `parser` and `assemble` itself, file by file, to reuse cached files.
    fn run(&self, ctx: &StageCtx, _inputs: &Inputs) -> anyhow::Result<StageOutput> {
        let source = self.source(ctx.sources)?;
        let parser = self.parser(ctx)?;
        let parts: Vec<ParsedFile> = source
            .files
            .par_iter()
            .map(|f| parser.parse(f))
            .collect::<Result<_, _>>()?;
        assemble(parts)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::DialectSpec;
    use crate::stages::tests_support::{ints, strings};
    use std::sync::Arc;

    fn column(yaml: &str) -> CompiledColumn {
        let spec: ColumnSpec = serde_saphyr::from_str(yaml).unwrap();
        CompiledColumn::compile(
            &spec,
            NaiveDate::from_ymd_opt(1990, 1, 1).unwrap(),
            NaiveDate::from_ymd_opt(2026, 11, 25).unwrap(),
        )
        .unwrap()
    }

    fn dialect(yaml: &str) -> Dialect {
        let spec: DialectSpec = serde_saphyr::from_str(yaml).unwrap();
        Dialect::compile(&spec).unwrap()
    }

    fn write(dir: &std::path::Path, name: &str, bytes: &[u8], d: Dialect) -> SourceFile {
        let path = dir.join(name);
        std::fs::write(&path, bytes).unwrap();
        SourceFile {
            site: "A".into(),
            path,
            rel: format!("a/{name}"),
            export_date: NaiveDate::from_ymd_opt(2017, 6, 30).unwrap(),
            dialect: Arc::new(d),
        }
    }

    /// Reads `csv` as one export file of a site with the default dialect.
    fn read_csv(csv: &str, columns: &[CompiledColumn]) -> Result<FileResult, DataError> {
        let dir = tempfile::tempdir().unwrap();
        let f = write(
            dir.path(),
            "d_2017-06-30.csv",
            csv.as_bytes(),
            dialect("{}"),
        );
        read_file(&f, columns)
    }

    fn diary_columns() -> Vec<CompiledColumn> {
        vec![
            column("{name: subject, type: subject, headers: ['Patient ID'], required: true}"),
            column("{name: date, type: date, headers: [Datum], required: true}"),
            column("{name: fever, type: int, min: 0, max: 4}"),
            column("{name: note, type: string, optional: true}"),
        ]
    }

    #[test]
    fn the_file_cache_stores_integers_as_narrow_as_their_declared_bounds() {
        let parser = FileParser {
            source: "s".into(),
            columns: vec![
                column("{name: score, type: int, min: 0, max: 4}"),
                column("{name: signed, type: int, min: -128, max: 127}"),
                column("{name: days, type: int, min: -5, max: 128}"),
                column("{name: steps, type: int, min: -32768, max: 32767}"),
                column("{name: count, type: int, min: 0, max: 32768}"),
                column("{name: open, type: int, min: 0}"),
                column("{name: unbounded, type: int}"),
                column("{name: dose, type: float, min: 0, max: 4}"),
            ],
        };
        let got: Vec<(String, DataType)> = parser
            .cache_narrowing()
            .into_iter()
            .map(|(n, t)| (n.to_string(), t))
            .collect();
        let want = [
            ("score", DataType::Int8),
            ("signed", DataType::Int8),
            ("days", DataType::Int16),
            ("steps", DataType::Int16),
        ];
        assert_eq!(got, want.map(|(n, t)| (n.to_string(), t)));
    }

    #[test]
    fn line_numbers_are_physical_lines_with_embedded_newlines() {
        let dir = tempfile::tempdir().unwrap();
        let csv = b"Patient ID;Datum;Fever;note\r\nC01;07.03.2014;1;\"two\r\nlines; here\"\r\nc-2;08.03.2014;NA;x\r\n";
        let d = dialect(
            "{delimiter: ';', decimal: ',', date_formats: ['%d.%m.%Y'], subject_id: {pattern: '([A-Za-z])[-]?0*([0-9]+)', replace: '${1}${2}', uppercase: true}}",
        );
        let f = write(dir.path(), "diary_2017-06-30.csv", csv, d);
        let r = read_file(&f, &diary_columns()).unwrap();
        assert_eq!(r.read.rows, 2);
        assert_eq!(ints(&r.table, "SRCLINE"), [Some(2), Some(4)]);
        assert_eq!(strings(&r.table, "subject"), ["C1", "C2"]);
        assert_eq!(r.table.column("fever").unwrap().null_count(), 1);
    }

    #[test]
    fn a_file_parsed_in_pieces_hands_over_its_rows_in_order_and_keeps_none() {
        let dir = tempfile::tempdir().unwrap();
        let n = 2 * crate::cache::PARSE_PIECE_ROWS + 1000;
        let mut csv = String::from("Patient ID,Datum,fever,note\n");
        for i in 0..n {
            // Every 1,000th row is rejected (fever out of range).
            let fever = if i % 1000 == 999 { 9 } else { i % 5 };
            csv.push_str(&format!("C{},2014-03-07,{fever},n{i}\n", i % 37));
        }
        let f = write(
            dir.path(),
            "d_2017-06-30.csv",
            csv.as_bytes(),
            dialect("{}"),
        );
        let whole = read_file(&f, &diary_columns()).unwrap();
        let parser = FileParser {
            source: "diary".into(),
            columns: diary_columns(),
        };
        let mut pieces = Vec::new();
        let p = parser
            .parse_in_pieces(&f, &mut |piece| pieces.push(piece))
            .unwrap();
        assert_eq!(p.table.height(), 0);
        assert_eq!(p.accepted, whole.table.height() as u64);
        assert_eq!(p.rejects.height(), n / 1000);
        let heights: Vec<usize> = pieces.iter().map(DataFrame::height).collect();
        let rows = whole.table.height();
        let full = crate::cache::PARSE_PIECE_ROWS;
        assert!(rows > 2 * full);
        assert_eq!(heights, [full, full, rows - 2 * full]);
        let mut back = pieces[0].clone();
        for piece in &pieces[1..] {
            back.vstack_mut(piece).unwrap();
        }
        assert!(back.equals_missing(&whole.table));
        // A file without accepted rows still hands over one (empty) piece with its columns.
        let f = write(
            dir.path(),
            "e_2017-06-30.csv",
            b"Patient ID,Datum,fever\nC1,2014-03-07,9\n",
            dialect("{}"),
        );
        let mut pieces = Vec::new();
        parser
            .parse_in_pieces(&f, &mut |piece| pieces.push(piece))
            .unwrap();
        assert_eq!(pieces.len(), 1);
        assert_eq!(pieces[0].height(), 0);
        assert_eq!(
            pieces[0].get_column_names(),
            read_file(&f, &diary_columns())
                .unwrap()
                .table
                .get_column_names()
        );
    }

    #[test]
    fn a_file_read_as_a_stream_numbers_its_lines_and_hashes_its_bytes_as_read_whole() {
        let dir = tempfile::tempdir().unwrap();
        let latin1 = "{delimiter: ';', encoding: latin1, date_formats: ['%d.%m.%Y']}";
        // CRLF, a lone CR, blank lines, a quoted field over two lines, a byte-order mark, a
        // bad row, Latin-1 text, and a first chunk boundary inside a record.
        let mut long = String::from("Patient ID,Datum,fever,note\n");
        while long.len() < DECODE_CHUNK + 500 {
            long.push_str(
                "C1,2014-03-07,1,\"a\r\nb\"\r\nC2,2014-03-08,9,x\r\rC3,2014-03-09,2,y\n\n",
            );
        }
        let cases: Vec<(&str, Vec<u8>, &str)> = vec![
            (
                "crlf",
                b"Patient ID,Datum,fever,note\r\nC1,2014-03-07,1,\"two\r\nlines\"\r\n\r\nC2,2014-03-08,7,x\r\nC3,2014-03-09,2,\r\n".to_vec(),
                "{}",
            ),
            (
                "cr",
                b"\xEF\xBB\xBFPatient ID,Datum,fever,note\rC1,2014-03-07,1,a\r\rC2,2014-03-08,2,b\r".to_vec(),
                "{}",
            ),
            (
                "latin1",
                b"Patient ID;Datum;Fieber;note\nC1;07.03.2014;1;M\xfcller\r\nC2;08.03.2014;5;Stra\xdfe\n\nC3;09.03.2014;2;\"\xe9\r\n\xe8\"\n".to_vec(),
                latin1,
            ),
            ("long", long.into_bytes(), "{}"),
        ];
        let columns = vec![
            column("{name: subject, type: subject, headers: ['Patient ID'], required: true}"),
            column("{name: date, type: date, headers: [Datum], required: true}"),
            column("{name: fever, type: int, headers: [fever, Fieber], min: 0, max: 4}"),
            column("{name: note, type: string, optional: true}"),
        ];
        for (name, bytes, d) in cases {
            let f = write(
                dir.path(),
                &format!("{name}_2017-06-30.csv"),
                &bytes,
                dialect(d),
            );
            let whole = read_file(&f, &columns).unwrap();
            let mut pieces = Vec::new();
            let streamed =
                read_file_with(&f, &columns, Some(&mut |p| pieces.push(p)), None).unwrap();
            assert_eq!(pieces.len(), 1, "{name}");
            assert!(pieces[0].equals_missing(&whole.table), "{name}");
            assert!(whole.table.height() > 0, "{name}");
            let (a, b) = (streamed.rejects.finish(), whole.rejects.finish());
            assert!(a.unwrap().equals_missing(&b.unwrap()), "{name}");
            assert_eq!(streamed.read.hash, whole.read.hash, "{name}");
            assert_eq!(streamed.read.bytes, bytes.len() as u64, "{name}");
            assert_eq!(streamed.read.rows, whole.read.rows, "{name}");
        }
        // A file of white space only is refused as empty, as when read whole.
        let f = write(
            dir.path(),
            "blank_2017-06-30.csv",
            b" \r\n\n",
            dialect("{}"),
        );
        let err = read_file_with(&f, &columns, Some(&mut |_| {}), None)
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("the file is empty (4 bytes)"), "{err}");
        // Bytes of a UTF-8 byte-order mark in a Latin-1 file are text, not an empty file.
        let f = write(
            dir.path(),
            "bom_2017-06-30.csv",
            b"\xEF\xBB\xBF \n",
            dialect(latin1),
        );
        let whole = read_file(&f, &columns).err().unwrap().to_string();
        let streamed = read_file_with(&f, &columns, Some(&mut |_| {}), None)
            .err()
            .unwrap()
            .to_string();
        assert!(!whole.contains("empty"), "{whole}");
        assert_eq!(streamed, whole);
    }

    #[test]
    fn a_latin1_file_read_a_megabyte_at_a_time_is_the_file_decoded_whole() {
        let dir = tempfile::tempdir().unwrap();
        // Non-ASCII bytes on both sides of every chunk boundary, and a multi-byte (euro sign)
        // character at one.
        let mut bytes = Vec::new();
        while bytes.len() < 2 * DECODE_CHUNK + 100 {
            bytes.extend_from_slice(b"M\xfcller;Stra\xdfe;\x80;");
        }
        bytes[DECODE_CHUNK - 1] = 0x80;
        bytes[DECODE_CHUNK] = 0xe9;
        let path = dir.path().join("latin1.csv");
        std::fs::write(&path, &bytes).unwrap();
        let read = Text::read(&path, dialect::Encoding::Latin1).unwrap();
        let whole = Text::of_bytes(bytes.clone(), dialect::Encoding::Latin1, None);
        assert_eq!(read.owned[read.from..], whole.owned[whole.from..]);
        assert!(
            std::str::from_utf8(&read.owned)
                .unwrap()
                .contains("Müller;Straße;€;")
        );
        assert_eq!(read.hash, blake3::hash(&bytes).to_hex().to_string());
        assert_eq!(read.bytes, bytes.len() as u64);
    }

    #[test]
    fn whole_numbers_are_32_bit_when_their_range_fits() {
        let csv = "Patient ID,Datum,fever,steps,big\nC1,2014-03-07,4,123456789012,2\nC1,2014-03-08,,7,3\n";
        let columns = vec![
            column("{name: subject, type: subject, headers: ['Patient ID'], required: true}"),
            column("{name: date, type: date, headers: [Datum], required: true}"),
            column("{name: fever, type: int, min: 0, max: 4}"),
            column("{name: steps, type: int, min: 0}"),
            column("{name: big, type: int, min: 0, max: 9999999999}"),
        ];
        let t = read_csv(csv, &columns).unwrap().table;
        let fever = t.column("fever").unwrap();
        assert_eq!(fever.dtype(), &DataType::Int32);
        let fever: Vec<Option<i32>> = fever.i32().unwrap().iter().collect();
        assert_eq!(fever, [Some(4), None]);
        // One bound only, or a bound beyond 32 bits: 64-bit integers.
        let steps = t.column("steps").unwrap();
        assert_eq!(steps.dtype(), &DataType::Int64);
        assert_eq!(steps.i64().unwrap().get(0), Some(123456789012));
        assert_eq!(t.column("big").unwrap().dtype(), &DataType::Int64);
    }

    #[test]
    fn bad_cells_reject_the_row_naming_the_column() {
        let csv = "Patient ID,Datum,fever\nC1,2014-03-07,7\nC1,1889-03-07,1\nC1,2091-01-01,1\nC1,2014-02-30,1\nC1,NA,1\nC1,2014-03-08,1,extra\nC1,2014-03-09,2\n";
        let r = read_csv(csv, &diary_columns()).unwrap();
        assert_eq!(r.read.rows, 7);
        assert_eq!(r.table.height(), 1);
        let rej = r.rejects.finish().unwrap();
        let rules = strings(&rej, "RULE");
        assert_eq!(
            rules,
            vec![
                "range",
                "date_range",
                "date_range",
                "parse",
                "required",
                "columns"
            ]
        );
        let cols = strings(&rej, "COLUMN");
        assert_eq!(cols[..5], ["fever", "date", "date", "date", "date"]);
    }

    #[test]
    fn missing_column_names_the_file_the_columns_and_the_closest_match() {
        let dir = tempfile::tempdir().unwrap();
        let f = write(
            dir.path(),
            "d_2017-06-30.csv",
            b"Patient Id,Dat,fever\n",
            dialect("{}"),
        );
        let cols = vec![
            column("{name: subject, type: subject, headers: ['Patient ID']}"),
            column("{name: date, type: date, headers: [Datum]}"),
        ];
        let err = read_file(&f, &cols).err().unwrap().to_string();
        assert!(err.contains("d_2017-06-30.csv"), "{err}");
        assert!(err.contains("column `date` not found"), "{err}");
        assert!(
            err.contains("columns found: Patient Id, Dat, fever"),
            "{err}"
        );
        assert!(err.contains("closest match: `Dat`"), "{err}");
    }

    #[test]
    fn allowed_values_take_the_canonical_spelling() {
        let c = column("{name: group, type: string, allowed: [CANDLE, SAVI, OTHER]}");
        let d = dialect("{}");
        let mut memo = CellMemo::default();
        assert!(
            matches!(parse_cell(&c, &d, " candle ", &mut memo), Ok(Cell::Str(s)) if s == "CANDLE")
        );
        assert_eq!(
            parse_cell(&c, &d, "AGS", &mut CellMemo::default())
                .err()
                .unwrap()
                .rule,
            "allowed"
        );
    }

    #[test]
    fn empty_and_header_only_files() {
        let dir = tempfile::tempdir().unwrap();
        let f = write(dir.path(), "e_2017-06-30.csv", b"", dialect("{}"));
        assert!(
            read_file(&f, &diary_columns())
                .err()
                .unwrap()
                .to_string()
                .contains("empty")
        );
        let f = write(
            dir.path(),
            "h_2017-06-30.csv",
            b"Patient ID,Datum,fever",
            dialect("{}"),
        );
        let r = read_file(&f, &diary_columns()).unwrap();
        assert_eq!((r.read.rows, r.table.height()), (0, 0));
    }

    #[test]
    fn invalid_utf8_rejects_the_row_as_encoding() {
        let dir = tempfile::tempdir().unwrap();
        let f = write(
            dir.path(),
            "x_2017-06-30.csv",
            b"Patient ID,Datum,fever,note\nC1,2014-03-07,1,M\xfcller\n",
            dialect("{}"),
        );
        let r = read_file(&f, &diary_columns()).unwrap();
        let rej = r.rejects.finish().unwrap();
        assert_eq!(
            rej.column("RULE").unwrap().str().unwrap().get(0),
            Some("encoding")
        );
    }

    #[test]
    fn cells_are_trimmed_of_white_space_and_byte_order_marks_alike() {
        use proptest::prelude::*;
        let text = proptest::collection::vec(
            prop_oneof![
                Just('a'),
                Just('7'),
                Just(' '),
                Just('\t'),
                Just('\u{feff}'),
                Just('\u{a0}'),
                Just('ü'),
                Just('\u{85}'),
                Just('~'),
                Just('\r'),
            ],
            0..6,
        )
        .prop_map(|c| c.into_iter().collect::<String>());
        proptest!(ProptestConfig::with_cases(2000), |(raw in text)| {
            let general = raw.trim_matches(|ch: char| ch.is_whitespace() || ch == '\u{feff}');
            prop_assert_eq!(trimmed(&raw), general);
        });
    }

    #[test]
    fn line_numbers_follow_every_kind_of_line_end() {
        // Records at the places the csv reader reports them (after a CRLF, at its `\n`); the
        // counter numbers them as counting the line ends before each does, also out of order.
        // Lines: `h` CRLF, `a` CR, `b` LF, empty LF, `c` CRLF, empty CRLF, `d` LF.
        let text = b"h\r\na\rb\n\nc\r\n\r\nd\n";
        let starts = [3u64, 5, 8, 13];
        let by_hand = [2, 3, 5, 7];
        let mut lines = LineCounter::new(text);
        let got: Vec<i64> = starts.iter().map(|&s| lines.line(s)).collect();
        assert_eq!(got, by_hand);
        assert_eq!(lines.line(5), 3);
        assert_eq!(lines.line(13), 7);
        assert_eq!(lines.line(10), 7);
        // At the `\n` of a CRLF (as the reader reports it), the record is on the next line.
        assert_eq!(LineCounter::new(text).line(2), 2);
    }

    #[test]
    fn a_text_without_quotes_gives_the_csv_readers_records_on_the_same_lines() {
        use proptest::prelude::*;
        let text = proptest::collection::vec(
            prop_oneof![
                4 => Just(b'a'), 2 => Just(b'7'), 2 => Just(b','), 2 => Just(b';'),
                1 => Just(b'\t'), 2 => Just(b'\n'), 1 => Just(b'\r'), 1 => Just(b' '),
                1 => Just(0xc3u8), 1 => Just(0xbcu8), 1 => Just(0xefu8),
            ],
            0..120,
        );
        proptest!(ProptestConfig::with_cases(3000), |(text in text, semicolon in proptest::bool::ANY)| {
            let delimiter = if semicolon { b';' } else { b',' };
            let records = |mut source: Records| {
                let mut lines = LineCounter::new(&text);
                let (mut rec, mut fields) = (csv::ByteRecord::new(), Vec::new());
                let mut out = Vec::new();
                let in_place = matches!(source, Records::Plain(_));
                while let Some(row) = source.next(&mut rec, &mut fields).unwrap() {
                    // A record read in place lies in the text at its byte (a block reads its
                    // cells there).
                    if in_place {
                        let at = row.byte.unwrap() as usize;
                        assert_eq!(&text[at..at + row.bytes.len()], row.bytes);
                    }
                    let line = lines.line(row.byte.unwrap());
                    // Records read in place count their own lines.
                    assert_eq!(row.line.is_some(), in_place);
                    if let Some(own) = row.line {
                        assert_eq!(own, line);
                    }
                    let fields: Vec<Vec<u8>> = row.iter().map(<[u8]>::to_vec).collect();
                    out.push((line, fields));
                }
                out
            };
            let plain = Records::of_text(&text, delimiter);
            prop_assert!(matches!(plain, Records::Plain(_)));
            let csv = Records::Csv(csv_reader(Box::new(&text[..]), delimiter));
            prop_assert_eq!(records(plain), records(csv));
        });
        // A quote anywhere: the csv reader.
        assert!(matches!(
            Records::of_text(b"a,\"b\"\n", b','),
            Records::Csv(_)
        ));
    }

    #[test]
    fn bare_cr_line_endings_count_as_lines() {
        // Regression: a lone CR ended a record but not a line, so two records shared a line.
        let dir = tempfile::tempdir().unwrap();
        let csv = b"Patient ID,Datum,fever\nC1,2014-03-07,1\rC1,2014-03-08,1\r\nC1,2014-03-09,1\n";
        let f = write(dir.path(), "d_2017-06-30.csv", csv, dialect("{}"));
        let r = read_file(&f, &diary_columns()).unwrap();
        assert_eq!(ints(&r.table, "SRCLINE"), [Some(2), Some(3), Some(4)]);
    }

    #[test]
    fn wrong_field_count_keeps_the_delimiters_in_rawvalue() {
        // Regression: the raw record was the fields glued together without delimiters.
        let dir = tempfile::tempdir().unwrap();
        let f = write(
            dir.path(),
            "d_2017-06-30.csv",
            b"Patient ID;Datum;fever\nC1;07.03.2014\n",
            dialect("{delimiter: ';', date_formats: ['%d.%m.%Y']}"),
        );
        let rej = read_file(&f, &diary_columns())
            .unwrap()
            .rejects
            .finish()
            .unwrap();
        assert_eq!(strings(&rej, "RAWVALUE"), ["C1;07.03.2014"]);
    }

    #[test]
    fn a_second_header_and_a_stray_bom_from_joined_exports() {
        let csv = "Patient ID,Datum,fever\nC1,2014-03-07,1\n\u{feff}Patient ID,Datum,fever\n\u{feff}C1,2014-03-08,2\n";
        let r = read_csv(csv, &diary_columns()).unwrap();
        assert_eq!(ints(&r.table, "SRCLINE"), [Some(2), Some(4)]);
        assert_eq!(strings(&r.table, "subject"), ["C1", "C1"]);
        let rej = r.rejects.finish().unwrap();
        assert_eq!(strings(&rej, "RULE"), ["columns"]);
        assert!(strings(&rej, "REASON")[0].contains("repeats the header"));
    }

    #[test]
    fn identifying_values_are_withheld_from_reasons() {
        let mut c = column("{name: birth_date, type: date, required: true}");
        c.identifying = true;
        let d = dialect("{}");
        for raw in ["1889-01-01", "2091-01-01", "12.04.2005"] {
            let reason = parse_cell(&c, &d, raw, &mut CellMemo::default())
                .err()
                .unwrap()
                .reason;
            assert!(!reason.contains(raw), "{reason}");
            assert!(reason.contains("withheld"), "{reason}");
        }
        c.identifying = false;
        let reason = parse_cell(&c, &d, "1889-01-01", &mut CellMemo::default())
            .err()
            .unwrap()
            .reason;
        assert_eq!(
            reason,
            "date 1889-01-01 is before 1990-01-01, not plausible"
        );
    }

    #[test]
    fn long_and_binary_values_are_cut_and_escaped_in_messages() {
        assert_eq!(printable("a\0b\u{feff}", 10), "a\\0b\\u{feff}");
        assert_eq!(printable(&"x".repeat(50), 3), "xxx… (50 characters)");
        let c = column("{name: fever, type: int}");
        let reason = parse_cell(
            &c,
            &dialect("{}"),
            &"7".repeat(100_000),
            &mut CellMemo::default(),
        )
        .err()
        .unwrap()
        .reason;
        assert!(reason.len() < 200, "{reason}");
    }

    #[test]
    fn a_missing_header_line_withholds_the_values_it_shows() {
        let dir = tempfile::tempdir().unwrap();
        let f = write(
            dir.path(),
            "s_2017-06-30.csv",
            b"C01,2005-04-12,4\n",
            dialect("{}"),
        );
        let err = read_file(&f, &diary_columns()).err().unwrap().to_string();
        assert!(!err.contains("2005-04-12"), "{err}");
        assert!(
            err.contains("columns found: C01, <a value, withheld>"),
            "{err}"
        );
        assert!(err.contains("is the header line missing?"), "{err}");
        let f = write(dir.path(), "z_2017-06-30.csv", &[0u8; 3000], dialect("{}"));
        let err = read_file(&f, &diary_columns()).err().unwrap().to_string();
        assert!(err.len() < 600 && err.contains("NUL bytes"), "{err}");
    }

    /// Every row of a file is kept with the values `parse_cell` gives its cells, or rejected at
    /// its first cell that `parse_cell` fails: whichever way a cell is read (the common cells
    /// without `parse_cell`), and whatever cells of the row were pushed before a failed one.
    /// The cells include missing values (one of them a digit and one a date in the layout),
    /// digits out of range, white space, dates out of range and out of the layout; between
    /// the rows are records rejected as a whole (a field short, the header again), and the
    /// files span several blocks ([`BLOCK_ROWS`] is a few rows in the tests).
    #[test]
    fn rows_are_kept_or_rejected_as_their_cells_parse() {
        use proptest::prelude::*;
        // With a missing value in the dates' layout, dates are all read by `parse_cell`.
        let dialects = [
            dialect("{missing: ['', NA, '9']}"),
            dialect("{missing: ['', NA, '9', '2014-03-09']}"),
        ];
        let columns = [
            column("{name: subject, type: subject, headers: [s], required: true}"),
            column("{name: date, type: date, headers: [d], required: true}"),
            column("{name: a, type: int, headers: [a], min: 0, max: 4}"),
            column("{name: note, type: string, headers: [n], optional: true}"),
            column("{name: b, type: int, headers: [b], min: 1, max: 7, required: true}"),
            column("{name: x, type: float, headers: [x]}"),
        ];
        let pools: [&[&str]; 6] = [
            &["C1", "C1", "C2", " C2", "", "NA"],
            &[
                "2014-03-07",
                "2014-03-08",
                "2014-03-09",
                "2014-02-30",
                "1989-12-31",
                "2027-01-01",
                "2014-3-7",
                " 2014-03-08",
            ],
            &["0", "3", "4", "5", "9", "", "NA", " 2", "2.0", "x"],
            &["hi", "", "NA", "a b"],
            &["0", "1", "7", "8", "9", "", "3"],
            &["1.5", "", "-2", "e"],
        ];
        let row = proptest::collection::vec(0..16usize, 6);
        // Now and then a record is rejected as a whole: one field short, or the header again.
        let whole = prop_oneof![12 => Just(0u8), 1 => Just(1u8), 1 => Just(2u8)];
        let rows = proptest::collection::vec((row, whole), 0..60);
        proptest!(ProptestConfig::with_cases(300), |(rows in rows, which in 0..2usize)| {
            let d = &dialects[which];
            let mut csv = String::from("s,d,a,n,b,x\n");
            let cells: Vec<(Vec<&str>, u8)> = rows
                .iter()
                .map(|(r, whole)| {
                    let cells = r.iter().zip(&pools).map(|(&i, pool)| pool[i % pool.len()]);
                    match whole {
                        0 => (cells.collect(), 0),
                        1 => (cells.take(5).collect(), 1),
                        _ => (vec!["s", "d", "a", "n", "b", "x"], 2),
                    }
                })
                .collect();
            for (r, _) in &cells {
                csv.push_str(&r.join(","));
                csv.push('\n');
            }
            let dir = tempfile::tempdir().unwrap();
            let f = write(dir.path(), "d_2017-06-30.csv", csv.as_bytes(), d.clone());
            let got = read_file(&f, &columns).unwrap();
            // What parse_cell makes of each row, cell by cell.
            let mut kept: Vec<Vec<String>> = Vec::new();
            let mut rejected: Vec<(i64, String)> = Vec::new();
            for (i, (r, whole)) in cells.iter().enumerate() {
                if *whole != 0 {
                    rejected.push((i as i64 + 2, String::new()));
                    continue;
                }
                let mut memo = CellMemo::default();
                let mut values = Vec::new();
                let mut failed = None;
                for (c, raw) in columns.iter().zip(r) {
                    match parse_cell(c, d, raw, &mut memo) {
                        Ok(Cell::Null) => values.push("null".to_string()),
                        Ok(Cell::Str(s)) => values.push(s.to_string()),
                        Ok(Cell::Id(id)) => values.push(memo.ids[id as usize].clone()),
                        Ok(Cell::Int(v)) => values.push(v.to_string()),
                        Ok(Cell::Float(v)) => values.push(v.to_string()),
                        Ok(Cell::Date(v)) => values.push(v.to_string()),
                        Err(_) => {
                            failed = Some(c.name.clone());
                            break;
                        }
                    }
                }
                match failed {
                    Some(name) => rejected.push((i as i64 + 2, name)),
                    None => kept.push(values),
                }
            }
            let table = &got.table;
            prop_assert_eq!(table.height(), kept.len());
            for (j, c) in columns.iter().enumerate() {
                let column = table.column(&c.name).unwrap().to_physical_repr();
                let column = column.as_materialized_series();
                for (i, want) in kept.iter().enumerate() {
                    let v = match column.get(i).unwrap() {
                        AnyValue::Null => "null".to_string(),
                        AnyValue::String(s) => s.to_string(),
                        AnyValue::Int32(v) => v.to_string(),
                        AnyValue::Int64(v) => v.to_string(),
                        AnyValue::Float64(v) => v.to_string(),
                        other => format!("{other:?}"),
                    };
                    prop_assert_eq!(&v, &want[j], "row {} column {}", i, c.name);
                }
            }
            let rejects = got.rejects.finish().unwrap();
            let lines = ints(&rejects, "SRCLINE");
            let named = strings(&rejects, "COLUMN");
            let got_rejected: Vec<(i64, String)> = lines
                .iter()
                .zip(&named)
                .map(|(l, n)| (l.unwrap(), n.to_string()))
                .collect();
            prop_assert_eq!(got_rejected, rejected);
        });
    }

    /// Taking values out of a buffer keeps the others, missing or not, in their order.
    #[test]
    fn values_dropped_leave_the_others_in_order() {
        use proptest::prelude::*;
        let values = proptest::collection::vec(proptest::option::weighted(0.7, 0..100i64), 0..40);
        let drops = proptest::collection::vec(proptest::bool::weighted(0.3), 40);
        proptest!(ProptestConfig::with_cases(2000), |(values in values, drop in drops, from in 0..40usize)| {
            let mut v = Values::<i64>::new(values.len());
            for x in &values {
                match x {
                    Some(x) => v.push(*x),
                    None => v.push_null(),
                }
            }
            let from = from.min(values.len());
            let drops: Vec<usize> = (from..values.len()).filter(|&at| drop[at]).collect();
            v.drop_at(&drops);
            let want: Vec<Option<i64>> = values
                .iter()
                .enumerate()
                .filter(|(at, _)| !drops.contains(at))
                .map(|(_, x)| *x)
                .collect();
            let got: Vec<Option<i64>> = v.finish::<Int64Type>("v".into()).iter().collect();
            prop_assert_eq!(got, want);
        });
    }

    #[test]
    fn parse_export_conserves_records() {
        let specs: Vec<ColumnSpec> = [
            "{name: subject, type: subject, headers: ['Patient ID'], required: true}",
            "{name: date, type: date, headers: [Datum], required: true}",
        ]
        .iter()
        .map(|y| serde_saphyr::from_str(y).unwrap())
        .collect();
        let dates = (
            NaiveDate::from_ymd_opt(1990, 1, 1).unwrap(),
            NaiveDate::from_ymd_opt(2026, 11, 25).unwrap(),
        );
        let p = parse_export(
            b"Patient ID,Datum\nC1,2014-03-07\nC2,x\nC3\n",
            &dialect("{}"),
            &specs,
            &[],
            dates,
        )
        .unwrap();
        assert_eq!((p.rows, p.table.height(), p.rejects.height()), (3, 1, 2));
    }
}
