//! Cells and records: how one value is written in a site's dialect (raw export) and in the
//! canonical form of the truth tables, with CSV quoting and Latin-1 encoding.

use std::borrow::Cow;
use std::fmt::Write as _;

use chrono::{Datelike, NaiveDate};

use super::course::SubjectId;
use super::dialect::{DateStyle, Dialect, IdStyle, Slot};
use super::schema::{ColType, Stream};

/// One value of a generated row.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Cell {
    /// A missing value, written as the site's missing token number `n` (modulo its list).
    Missing(u8),
    /// A subject id and the per-row spelling variant.
    Subject(SubjectId, u8),
    Date(NaiveDate),
    Int(i64),
    /// A number and its decimals; written with the site's decimal mark.
    Num(f64, u8),
    /// A censored lab value: `<` or `>` and the limit.
    Censored(char, f64, u8),
    Text(Cow<'static, str>),
    /// A dirty value, written verbatim.
    Raw(String),
}

const MONTHS: [&str; 12] = [
    "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
];

/// Appends `n` in decimal, zero-padded to `width` digits.
pub(crate) fn push_uint(out: &mut String, n: u64, width: usize) {
    if n < 10 && width <= 1 {
        out.push(char::from(b'0' + n as u8));
        return;
    }
    let mut buf = [b'0'; 20];
    let mut i = buf.len();
    let mut v = n;
    loop {
        i -= 1;
        buf[i] = b'0' + (v % 10) as u8;
        v /= 10;
        if v == 0 {
            break;
        }
    }
    let start = i.min(buf.len().saturating_sub(width));
    // Only ASCII digits were written, so this never fails.
    out.push_str(std::str::from_utf8(&buf[start..]).unwrap_or_default());
}

/// Writes day `d` of month `m` of year `y` in `style`; the triple need not be a real date
/// (used for unparseable dates). A month outside 1..=12 in the month-name style reads `Feb`.
pub(crate) fn write_ymd(out: &mut String, style: DateStyle, y: i32, m: u32, d: u32) {
    let (y, m, d) = (u64::from(y.unsigned_abs()), u64::from(m), u64::from(d));
    match style {
        DateStyle::Iso => {
            push_uint(out, y, 4);
            out.push('-');
            push_uint(out, m, 2);
            out.push('-');
            push_uint(out, d, 2);
        }
        DateStyle::Dotted => {
            push_uint(out, d, 2);
            out.push('.');
            push_uint(out, m, 2);
            out.push('.');
            push_uint(out, y, 4);
        }
        DateStyle::Us => {
            push_uint(out, m, 1);
            out.push('/');
            push_uint(out, d, 1);
            out.push('/');
            push_uint(out, y, 4);
        }
        DateStyle::DayMon => {
            let mon = MONTHS
                .get((m as usize).wrapping_sub(1))
                .copied()
                .unwrap_or("Feb");
            push_uint(out, d, 2);
            out.push('-');
            out.push_str(mon);
            out.push('-');
            push_uint(out, y, 4);
        }
    }
}

pub(crate) fn write_date(out: &mut String, style: DateStyle, d: NaiveDate) {
    write_ymd(out, style, d.year(), d.month(), d.day());
}

/// `v` rounded to `decimals`, with `.` as decimal mark and no negative zero.
pub(crate) fn write_number(out: &mut String, v: f64, decimals: u8) {
    let start = out.len();
    let _ = write!(out, "{:.*}", decimals as usize, v);
    if out[start..].starts_with('-') && out[start + 1..].bytes().all(|b| b == b'0' || b == b'.') {
        out.remove(start);
    }
}

/// Canonical form of a number as the truth tables write floats (shortest round-trip, `2.0`).
pub(crate) fn canonical_float(v: f64) -> String {
    format!("{v:?}")
}

fn push_int(out: &mut String, i: i64) {
    if i < 0 {
        out.push('-');
    }
    push_uint(out, i.unsigned_abs(), 1);
}

/// Writes `cell` as site `dialect` writes it in a file of `stream`.
pub(crate) fn write_raw(out: &mut String, dialect: &Dialect, stream: Stream, cell: &Cell) {
    match cell {
        Cell::Missing(n) => out.push_str(dialect.missing[*n as usize % dialect.missing.len()]),
        Cell::Subject(id, variant) => write_site_id(out, dialect.ids, *id, *variant),
        Cell::Date(d) => write_date(out, dialect.date_style(stream), *d),
        Cell::Int(i) => push_int(out, *i),
        Cell::Num(v, dec) => write_site_number(out, dialect, *v, *dec),
        Cell::Censored(c, v, dec) => {
            out.push(*c);
            write_site_number(out, dialect, *v, *dec);
        }
        Cell::Text(t) => out.push_str(t),
        Cell::Raw(t) => out.push_str(t),
    }
}

fn write_site_number(out: &mut String, dialect: &Dialect, v: f64, dec: u8) {
    let start = out.len();
    write_number(out, v, dec);
    if dialect.decimal_comma
        && let Some(p) = out[start..].find('.')
    {
        out.replace_range(start + p..start + p + 1, ",");
    }
}

/// Writes a subject id in a site's style; `variant` picks among the loose spellings.
pub(crate) fn write_site_id(out: &mut String, style: IdStyle, id: SubjectId, variant: u8) {
    let letter = id.group.letter();
    let n = u64::from(id.number);
    match style {
        IdStyle::Plain => {
            out.push(letter);
            push_uint(out, n, 1);
        }
        IdStyle::ZeroPadded => {
            out.push(letter);
            push_uint(out, n, 2);
        }
        IdStyle::Loose => match variant % 4 {
            0 => {
                out.push(' ');
                out.push(letter.to_ascii_lowercase());
                out.push('-');
                push_uint(out, n, 1);
                out.push(' ');
            }
            1 => {
                out.push(letter);
                out.push('-');
                push_uint(out, n, 1);
            }
            2 => {
                out.push(letter.to_ascii_lowercase());
                push_uint(out, n, 1);
            }
            _ => {
                out.push(letter);
                out.push('-');
                push_uint(out, n, 2);
            }
        },
    }
}

/// Writes `cell` in canonical form for a column of type `ty`; `raw` is its raw rendering
/// (strings are kept as written, numbers re-read from what the site wrote).
pub(crate) fn write_clean(out: &mut String, ty: ColType, cell: &Cell, raw: &str) {
    match (cell, ty) {
        (Cell::Missing(_), _) => {}
        (Cell::Subject(id, _), _) => {
            out.push(id.group.letter());
            push_uint(out, u64::from(id.number), 1);
        }
        (Cell::Date(d), _) => write_date(out, DateStyle::Iso, *d),
        (Cell::Int(i), _) => push_int(out, *i),
        (Cell::Num(..), ColType::Float) => {
            let v: f64 = raw.replace(',', ".").parse().unwrap_or(f64::NAN);
            out.push_str(&canonical_float(v));
        }
        (_, ColType::Choice(allowed)) => {
            let hit = allowed.iter().find(|a| a.eq_ignore_ascii_case(raw.trim()));
            out.push_str(hit.copied().unwrap_or(raw));
        }
        _ => out.push_str(raw),
    }
}

/// Appends `field` to a CSV record, quoting it when it holds the delimiter, a quote or a
/// line break.
pub(crate) fn push_field(out: &mut String, field: &str, delimiter: u8, first: bool) {
    if !first {
        out.push(delimiter as char);
    }
    let needs_quotes = field
        .bytes()
        .any(|b| b == delimiter || b == b'"' || b == b'\n' || b == b'\r');
    if needs_quotes {
        out.push('"');
        for ch in field.chars() {
            if ch == '"' {
                out.push('"');
            }
            out.push(ch);
        }
        out.push('"');
    } else {
        out.push_str(field);
    }
}

/// The header line of `stream` at a site, with its line end.
pub(crate) fn header_line(dialect: &Dialect, stream: Stream) -> String {
    let mut out = String::new();
    for (i, (name, _)) in dialect.layout(stream).iter().enumerate() {
        push_field(&mut out, name, dialect.delimiter, i == 0);
    }
    out.push_str(dialect.line_end());
    out
}

/// Reusable buffers for rendering records, so rows cost no allocations.
#[derive(Default)]
pub(crate) struct Scratch {
    /// The record as the site writes it, with its line end.
    pub line: String,
    /// Raw text per canonical column (in schema order), as the site wrote it.
    pub fields: Vec<String>,
    comment: String,
    value: String,
}

/// Renders `cells` (canonical columns then comments) as a record of a site file into
/// `scratch`. `extra_field` appends one stray field (the `columns` dirt).
pub(crate) fn raw_record(
    scratch: &mut Scratch,
    dialect: &Dialect,
    stream: Stream,
    slots: &[(usize, Slot)],
    cells: &[Cell],
    extra_field: bool,
) {
    let ncols = stream.columns().len();
    scratch.fields.resize_with(ncols, String::new);
    for f in &mut scratch.fields {
        f.clear();
    }
    scratch.line.clear();
    scratch.comment.clear();
    for (i, (idx, slot)) in slots.iter().enumerate() {
        let text = match slot {
            Slot::Col(_) => {
                write_raw(&mut scratch.fields[*idx], dialect, stream, &cells[*idx]);
                scratch.fields[*idx].as_str()
            }
            Slot::Comment => {
                if let Some(c) = cells.get(ncols) {
                    write_raw(&mut scratch.comment, dialect, stream, c);
                }
                scratch.comment.as_str()
            }
        };
        push_field(&mut scratch.line, text, dialect.delimiter, i == 0);
    }
    if extra_field {
        push_field(&mut scratch.line, "x", dialect.delimiter, false);
    }
    scratch.line.push_str(dialect.line_end());
}

/// Appends the canonical columns of an accepted row, as the truth tables write them (without
/// SRCFILE and SRCLINE, without the line end), using the raw fields of the last `raw_record`.
pub(crate) fn clean_record(
    out: &mut String,
    scratch: &mut Scratch,
    stream: Stream,
    cells: &[Cell],
) {
    for (i, col) in stream.columns().iter().enumerate() {
        scratch.value.clear();
        write_clean(&mut scratch.value, col.ty, &cells[i], &scratch.fields[i]);
        push_field(out, &scratch.value, b',', i == 0);
    }
}

/// Encodes a record for the site: Latin-1 bytes or UTF-8.
pub(crate) fn encode(dialect: &Dialect, text: &str, out: &mut Vec<u8>) {
    if dialect.latin1 {
        out.extend(
            text.chars()
                .map(|c| u8::try_from(u32::from(c)).unwrap_or(b'?')),
        );
    } else {
        out.extend_from_slice(text.as_bytes());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::generate::course::Group;
    use crate::generate::dialect::DIALECTS;

    fn d(y: i32, m: u32, day: u32) -> NaiveDate {
        NaiveDate::from_ymd_opt(y, m, day).unwrap()
    }

    #[test]
    fn dates_in_every_style() {
        let mut s = String::new();
        write_ymd(&mut s, DateStyle::Us, 2015, 13, 7);
        s.push('|');
        for style in [
            DateStyle::Iso,
            DateStyle::Dotted,
            DateStyle::Us,
            DateStyle::DayMon,
        ] {
            write_date(&mut s, style, d(2014, 3, 7));
            s.push('|');
        }
        assert_eq!(s, "13/7/2015|2014-03-07|07.03.2014|3/7/2014|07-Mar-2014|");
        let mut n = String::new();
        push_uint(&mut n, 1234567, 1);
        push_uint(&mut n, 7, 3);
        assert_eq!(n, "1234567007");
    }

    #[test]
    fn numbers_round_and_drop_negative_zero() {
        let mut s = String::new();
        write_number(&mut s, -0.04, 1);
        s.push('|');
        write_number(&mut s, 1.25, 1);
        s.push('|');
        write_number(&mut s, -1.26, 1);
        assert_eq!(s, "0.0|1.2|-1.3");
        assert_eq!(canonical_float(2.0), "2.0");
        assert_eq!(canonical_float(1.234), "1.234");
    }

    #[test]
    fn site_ids_and_decimal_comma() {
        let id = SubjectId {
            group: Group::Candle,
            number: 1,
        };
        let mut s = String::new();
        write_raw(&mut s, &DIALECTS[1], Stream::Visits, &Cell::Subject(id, 0));
        s.push('|');
        write_raw(&mut s, &DIALECTS[2], Stream::Visits, &Cell::Subject(id, 0));
        s.push('|');
        write_raw(&mut s, &DIALECTS[1], Stream::Visits, &Cell::Num(1.234, 3));
        s.push('|');
        write_raw(
            &mut s,
            &DIALECTS[1],
            Stream::Labs,
            &Cell::Censored('<', 0.05, 2),
        );
        assert_eq!(s, "C01| c-1 |1,234|<0,05");
    }

    #[test]
    fn fields_with_delimiters_quotes_or_newlines_are_quoted() {
        let mut s = String::new();
        push_field(&mut s, "a", b',', true);
        push_field(&mut s, "b,c", b',', false);
        push_field(&mut s, "say \"hi\"", b',', false);
        push_field(&mut s, "x\ny", b';', false);
        push_field(&mut s, "b,c", b';', false);
        assert_eq!(s, "a,\"b,c\",\"say \"\"hi\"\"\";\"x\ny\";b,c");
    }

    #[test]
    fn latin1_encoding_keeps_umlauts_as_single_bytes() {
        let mut out = Vec::new();
        encode(&DIALECTS[1], "Größe µ", &mut out);
        assert_eq!(out, b"Gr\xf6\xdfe \xb5");
    }
}
