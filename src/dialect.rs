//! A site's CSV dialect, compiled from its YAML, and the parsing of raw cell text into typed
//! values (dates, numbers, subject ids) under that dialect.

use chrono::NaiveDate;
use regex::Regex;

use crate::spec::{DialectSpec, SubjectIdSpec};

/// Text encodings a site may declare.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encoding {
    Utf8,
    Latin1,
}

/// A checked dialect, ready to read files with.
#[derive(Debug, Clone)]
pub struct Dialect {
    pub delimiter: u8,
    pub encoding: Encoding,
    pub decimal_comma: bool,
    pub date_formats: Vec<String>,
    /// Each format's fixed layout, when it has one ([`DateLayout`]).
    date_layouts: Vec<Option<DateLayout>>,
    /// A handful of tokens: a scan beats hashing every cell.
    missing: Vec<String>,
    /// Bit `n` is set when some token is `n` bytes long (bit 63: 63 or more), and
    /// `missing_starts[b]` when some token starts with byte `b`. Most cells fail one of the
    /// two tests, which settles them without comparing any text.
    missing_lengths: u64,
    missing_starts: [bool; 256],
    subject_id: Option<SubjectIdRule>,
}

/// A compiled subject-id normalisation rule.
#[derive(Debug, Clone)]
pub struct SubjectIdRule {
    pattern: Regex,
    replace: String,
    uppercase: bool,
}

impl SubjectIdRule {
    pub fn compile(spec: &SubjectIdSpec) -> Result<Self, String> {
        let anchored = format!("^(?:{})$", spec.pattern);
        let pattern = Regex::new(&anchored).map_err(|e| {
            format!(
                "subject_id pattern `{}` is not a valid regex: {e}",
                spec.pattern
            )
        })?;
        Ok(SubjectIdRule {
            pattern,
            replace: spec.replace.clone(),
            uppercase: spec.uppercase,
        })
    }

    /// The canonical id, or None when the id does not match the rule.
    pub fn apply(&self, raw: &str) -> Option<String> {
        let caps = self.pattern.captures(raw.trim())?;
        let mut out = String::new();
        caps.expand(&self.replace, &mut out);
        if self.uppercase {
            out = out.to_uppercase();
        }
        (!out.is_empty()).then_some(out)
    }
}

impl Dialect {
    /// Compiles a dialect; returns every problem found.
    pub fn compile(spec: &DialectSpec) -> Result<Dialect, Vec<String>> {
        let mut problems = Vec::new();
        let delimiter = match spec.delimiter.as_str() {
            "tab" | "\\t" | "\t" => b'\t',
            d if d.len() == 1 && d.is_ascii() => d.as_bytes()[0],
            d => {
                problems.push(format!(
                    "delimiter `{d}` is not one ASCII character (use `,`, `;`, `|` or `tab`)"
                ));
                b','
            }
        };
        let encoding = match spec
            .encoding
            .to_ascii_lowercase()
            .replace('_', "-")
            .as_str()
        {
            "utf-8" | "utf8" => Encoding::Utf8,
            "latin-1" | "latin1" | "iso-8859-1" | "windows-1252" | "cp1252" => Encoding::Latin1,
            e => {
                problems.push(format!(
                    "encoding `{e}` is not supported (use utf-8 or latin-1)"
                ));
                Encoding::Utf8
            }
        };
        let decimal_comma = match spec.decimal.as_str() {
            "." => false,
            "," => true,
            d => {
                problems.push(format!("decimal mark `{d}` must be `.` or `,`"));
                false
            }
        };
        if decimal_comma && delimiter == b',' {
            problems.push("a decimal comma needs a delimiter other than `,`".into());
        }
        for f in &spec.date_formats {
            if let Err(e) = check_date_format(f) {
                problems.push(e);
            }
        }
        if spec.date_formats.is_empty() {
            problems.push("date_formats is empty: give at least one format".into());
        }
        let subject_id = match spec.subject_id.as_ref().map(SubjectIdRule::compile) {
            Some(Ok(r)) => Some(r),
            Some(Err(e)) => {
                problems.push(e);
                None
            }
            None => None,
        };
        if !problems.is_empty() {
            return Err(problems);
        }
        let mut missing: Vec<String> = spec.missing.iter().map(|m| m.trim().to_string()).collect();
        missing.sort();
        missing.dedup();
        Ok(Dialect {
            delimiter,
            encoding,
            decimal_comma,
            date_formats: spec.date_formats.clone(),
            date_layouts: spec
                .date_formats
                .iter()
                .map(|f| DateLayout::of(f))
                .collect(),
            missing_lengths: missing.iter().fold(0, |bits, m| bits | length_bit(m)),
            missing_starts: {
                let mut starts = [false; 256];
                for m in &missing {
                    if let Some(&b) = m.as_bytes().first() {
                        starts[b as usize] = true;
                    }
                }
                starts
            },
            missing,
            subject_id,
        })
    }

    /// True when the trimmed cell is one of the site's missing-value tokens.
    #[inline]
    pub fn is_missing(&self, cell: &str) -> bool {
        self.missing_lengths & length_bit(cell) != 0
            && cell
                .as_bytes()
                .first()
                .is_none_or(|&b| self.missing_starts[b as usize])
            && self.missing.iter().any(|m| m == cell)
    }

    /// Parses a date with the site's formats, in order.
    pub fn parse_date(&self, cell: &str) -> Option<NaiveDate> {
        self.date_formats
            .iter()
            .zip(&self.date_layouts)
            .find_map(|(f, layout)| parse_date_with(cell, f, layout.as_ref()))
    }

    /// The date of a cell written exactly in the layout of the site's first format (a date
    /// of every diary row, say), read digit by digit; `None` for any other cell, which
    /// [`Dialect::parse_date`] then reads. Where this gives a date, `parse_date` gives the
    /// same (its first format succeeds).
    #[inline]
    pub fn layout_date(&self, cell: &str) -> Option<NaiveDate> {
        self.date_layouts.first()?.as_ref()?.read(cell.as_bytes())
    }

    /// [`Dialect::layout_date`] as days since 1970-01-01 (Arrow's `Date32`), without making
    /// the date: the same cells give a day, and the same day.
    #[inline]
    pub fn layout_days(&self, cell: impl AsRef<[u8]>) -> Option<i32> {
        let (y, m, d) = self.date_layouts.first()?.as_ref()?.parts(cell.as_ref())?;
        days_from_civil(y, m, d)
    }

    /// Whether one of the site's missing values is a date in the layout of its first format.
    pub fn misses_a_layout_date(&self) -> bool {
        self.missing.iter().any(|m| self.layout_days(m).is_some())
    }

    /// Parses a number, honouring the site's decimal mark.
    pub fn parse_float(&self, cell: &str) -> Option<f64> {
        let v: f64 = if self.decimal_comma {
            if cell.contains('.') {
                return None;
            }
            cell.replacen(',', ".", 1).parse().ok()?
        } else {
            cell.parse().ok()?
        };
        v.is_finite().then_some(v)
    }

    /// Parses a whole number; `3.0` is accepted as 3, `3.5` is not.
    #[inline]
    pub fn parse_int(&self, cell: &str) -> Option<i64> {
        // One digit (a diary score, a count) needs no general parse.
        if let [b @ b'0'..=b'9'] = cell.as_bytes() {
            return Some(i64::from(b - b'0'));
        }
        if let Ok(v) = cell.parse::<i64>() {
            return Some(v);
        }
        let f = self.parse_float(cell)?;
        (f.fract() == 0.0 && f.abs() < 9.0e15).then_some(f as i64)
    }

    /// Normalises a subject id; without a rule the trimmed id is kept.
    pub fn subject_id(&self, cell: &str) -> Option<String> {
        match &self.subject_id {
            Some(rule) => rule.apply(cell),
            None => Some(cell.trim().to_string()),
        }
    }
}

/// The bit of [`Dialect::missing_lengths`] for a text of this length.
fn length_bit(text: &str) -> u64 {
    1 << text.len().min(63)
}

/// Days from 1970-01-01 to year `y`, month `m`, day `d` of the proleptic Gregorian calendar
/// (as chrono counts them), or `None` when there is no such day. The count is H. Hinnant's
/// `days_from_civil`: years begin in March, so a leap day ends its year.
#[inline]
pub fn days_from_civil(y: i32, m: u32, d: u32) -> Option<i32> {
    let leap = y % 4 == 0 && (y % 100 != 0 || y % 400 == 0);
    let last = match m {
        2 if leap => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        1..=12 => 31,
        _ => return None,
    };
    if d == 0 || d > last {
        return None;
    }
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let year_of_era = y - era * 400;
    let day_of_year = ((153 * ((m + 9) % 12) + 2) / 5 + d - 1) as i32;
    let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
    Some(era * 146_097 + day_of_era - 719_468)
}

fn parse_date_with(cell: &str, format: &str, layout: Option<&DateLayout>) -> Option<NaiveDate> {
    // A cell in the format's fixed layout is read digit by digit; it is then a date exactly
    // when chrono would read it as one. Any other cell goes to chrono, which also reads
    // shorter forms (`2015-3-1` in `%Y-%m-%d`).
    if let Some(layout) = layout
        && let Some(parts) = layout.parts(cell.as_bytes())
    {
        let (y, m, d) = parts;
        return NaiveDate::from_ymd_opt(y, m, d);
    }
    NaiveDate::parse_from_str(cell, format).ok()
}

/// The fixed layout of a date format made only of `%Y`, `%m` and `%d` (each once) and
/// single-character separators that are neither digits nor space, such as `%Y-%m-%d` or
/// `%d.%m.%Y`: a 4-digit year, 2-digit month and day at fixed places.
#[derive(Debug, Clone)]
struct DateLayout {
    len: usize,
    year: usize,
    month: usize,
    day: usize,
    /// Separators and their places.
    literals: Vec<(usize, u8)>,
}

impl DateLayout {
    fn of(format: &str) -> Option<DateLayout> {
        let f = format.as_bytes();
        let (mut i, mut at) = (0, 0);
        let (mut year, mut month, mut day, mut literals) = (None, None, None, Vec::new());
        while i < f.len() {
            match f[i] {
                b'%' => {
                    let slot = match f.get(i + 1)? {
                        b'Y' => &mut year,
                        b'm' => &mut month,
                        b'd' => &mut day,
                        _ => return None,
                    };
                    if slot.replace(at).is_some() {
                        return None;
                    }
                    at += if f[i + 1] == b'Y' { 4 } else { 2 };
                    i += 2;
                }
                b if b.is_ascii_punctuation() || b.is_ascii_alphabetic() => {
                    literals.push((at, b));
                    at += 1;
                    i += 1;
                }
                _ => return None,
            }
        }
        Some(DateLayout {
            len: at,
            year: year?,
            month: month?,
            day: day?,
            literals,
        })
    }

    /// The year, month and day of a cell in the layout, all digits; `None` for any other
    /// cell (chrono decides those: a sign, a shorter field).
    #[inline]
    fn parts(&self, cell: &[u8]) -> Option<(i32, u32, u32)> {
        if cell.len() != self.len || self.literals.iter().any(|&(at, b)| cell[at] != b) {
            return None;
        }
        let digits = |at: usize, n: usize| -> Option<u32> {
            cell[at..at + n].iter().try_fold(0u32, |v, &b| {
                b.is_ascii_digit().then(|| v * 10 + u32::from(b - b'0'))
            })
        };
        Some((
            digits(self.year, 4)? as i32,
            digits(self.month, 2)?,
            digits(self.day, 2)?,
        ))
    }

    #[inline]
    fn read(&self, cell: &[u8]) -> Option<NaiveDate> {
        let (y, m, d) = self.parts(cell)?;
        NaiveDate::from_ymd_opt(y, m, d)
    }
}

fn check_date_format(format: &str) -> Result<(), String> {
    use chrono::format::{Item, StrftimeItems};
    if StrftimeItems::new(format).any(|i| matches!(i, Item::Error)) {
        return Err(format!(
            "date format `{format}` is not a valid strftime format"
        ));
    }
    let has = |s: &str| format.contains(s);
    if !(has("%Y") || has("%y")) || !(has("%m") || has("%b") || has("%B")) || !has("%d") {
        return Err(format!(
            "date format `{format}` must contain a year (%Y), a month (%m or %b) and a day (%d)"
        ));
    }
    Ok(())
}

/// Decodes a raw file to UTF-8 text for the given encoding; a UTF-8 BOM is dropped.
/// Invalid UTF-8 is not an error here: rows containing it are rejected one by one.
pub fn decode(bytes: &[u8], encoding: Encoding) -> std::borrow::Cow<'_, [u8]> {
    match encoding {
        Encoding::Utf8 => {
            std::borrow::Cow::Borrowed(bytes.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(bytes))
        }
        Encoding::Latin1 => {
            let (text, _) = encoding_rs::WINDOWS_1252.decode_without_bom_handling(bytes);
            match text {
                std::borrow::Cow::Borrowed(s) => std::borrow::Cow::Borrowed(s.as_bytes()),
                std::borrow::Cow::Owned(s) => std::borrow::Cow::Owned(s.into_bytes()),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dialect(yaml: &str) -> Dialect {
        let spec: DialectSpec = serde_saphyr::from_str(yaml).unwrap();
        Dialect::compile(&spec).unwrap()
    }

    #[test]
    fn dates_in_every_site_format() {
        let d = dialect("date_formats: ['%Y-%m-%d', '%d.%m.%Y', '%m/%d/%Y', '%d-%b-%Y']");
        let want = NaiveDate::from_ymd_opt(2014, 3, 7);
        for s in ["2014-03-07", "07.03.2014", "3/7/2014", "07-Mar-2014"] {
            assert_eq!(d.parse_date(s), want, "{s}");
        }
        assert_eq!(d.parse_date("2014-02-30"), None);
        assert_eq!(d.parse_date("yesterday"), None);
    }

    #[test]
    fn decimal_comma_sites() {
        let d = dialect("delimiter: ';'\ndecimal: ','");
        assert_eq!(d.parse_float("1,25"), Some(1.25));
        assert_eq!(d.parse_float("1.25"), None);
        assert_eq!(d.parse_int("3,0"), Some(3));
        let d = dialect("{}");
        assert_eq!(d.parse_float("1,25"), None);
        assert_eq!(d.parse_float("NaN"), None);
        assert_eq!(d.parse_int("3.5"), None);
    }

    #[test]
    fn subject_ids_normalise_to_one_canonical_id() {
        let d = dialect(
            "subject_id: {pattern: '([A-Za-z])[-_ ]?0*([0-9]+)', replace: '${1}${2}', uppercase: true}",
        );
        for s in ["C01", "c1", " C-1 ", "C1"] {
            assert_eq!(d.subject_id(s).as_deref(), Some("C1"), "{s}");
        }
        assert_eq!(d.subject_id("patient one"), None);
    }

    #[test]
    fn missing_tokens_match_whole_trimmed_cells_of_any_length() {
        let long = "n".repeat(70);
        let d = dialect(&format!("missing: ['', 'NA', ' n/a ', '-', '{long}']"));
        for s in ["", "NA", "n/a", "-", long.as_str()] {
            assert!(d.is_missing(s), "{s:?}");
        }
        // Same lengths as a token, or 63 bytes and more, without being one.
        for s in [
            "N",
            "na",
            "NAN",
            "n/b",
            "+",
            "A",
            &"n".repeat(69),
            &"n".repeat(71),
            &"x".repeat(70),
        ] {
            assert!(!d.is_missing(s), "{s:?}");
        }
        assert!(!dialect("missing: []").is_missing(""));
    }

    #[test]
    fn bad_dialects_report_every_problem() {
        let spec: DialectSpec =
            serde_saphyr::from_str("delimiter: ';;'\nencoding: ebcdic\ndate_formats: ['%d']")
                .unwrap();
        let errs = Dialect::compile(&spec).unwrap_err();
        assert_eq!(errs.len(), 3, "{errs:?}");
    }

    #[test]
    fn latin1_decodes_and_bom_is_dropped() {
        assert_eq!(
            &*decode(b"M\xfcller", Encoding::Latin1),
            "Müller".as_bytes()
        );
        assert_eq!(&*decode(b"\xEF\xBB\xBFa,b", Encoding::Utf8), b"a,b");
    }

    /// The formats' fixed layouts read a date exactly as chrono does, format by format, for
    /// cells in and out of layout (signs, short fields, wrong separators, impossible days).
    #[test]
    fn fixed_layouts_read_dates_as_chrono_does() {
        use proptest::prelude::*;
        let formats = [
            "%Y-%m-%d", "%d.%m.%Y", "%m/%d/%Y", "%Y%m%d", "%d-%b-%Y", "%y-%m-%d",
        ];
        assert!(DateLayout::of("%Y-%m-%d").is_some() && DateLayout::of("%d.%m.%Y").is_some());
        assert!(DateLayout::of("%d-%b-%Y").is_none() && DateLayout::of("%Y %m %d").is_none());
        let cell = proptest::collection::vec(
            prop_oneof![
                8 => proptest::char::range('0', '9'),
                1 => Just('-'), 1 => Just('.'), 1 => Just('/'), 1 => Just('+'), 1 => Just(' '),
            ],
            6..12,
        )
        .prop_map(|c| c.into_iter().collect::<String>());
        proptest!(ProptestConfig::with_cases(4000), |(cell in cell, i in 0..6usize, j in 0..6usize)| {
            let (first, second) = (formats[i], formats[j]);
            let d = dialect(&format!("date_formats: ['{first}', '{second}']"));
            let chrono_only = [first, second]
                .iter()
                .find_map(|f| NaiveDate::parse_from_str(&cell, f).ok());
            prop_assert_eq!(d.parse_date(&cell), chrono_only, "{}", cell);
            if let Some(date) = d.layout_date(&cell) {
                prop_assert_eq!(Some(date), NaiveDate::parse_from_str(&cell, first).ok());
            }
            let epoch = NaiveDate::from_ymd_opt(1970, 1, 1).unwrap();
            let days = d.layout_date(&cell).map(|date| (date - epoch).num_days() as i32);
            prop_assert_eq!(d.layout_days(&cell), days, "{}", cell);
        });
        // Cells in the layout, valid or not.
        let d = dialect("date_formats: ['%d.%m.%Y']");
        assert_eq!(
            d.layout_date("07.03.2014"),
            NaiveDate::from_ymd_opt(2014, 3, 7)
        );
        assert_eq!(d.layout_date("30.02.2014"), None);
        assert_eq!(
            d.parse_date("7.3.2014"),
            NaiveDate::from_ymd_opt(2014, 3, 7)
        );
        assert_eq!(d.layout_date("7.3.2014"), None);
    }

    /// Every year, month and day from year -1 to 10,000 (months 0 to 13, days 0 to 32): a
    /// day exactly when chrono makes a date, and chrono's count of days since 1970.
    #[test]
    fn days_from_civil_counts_as_chrono_does() {
        let epoch = NaiveDate::from_ymd_opt(1970, 1, 1).unwrap();
        for y in -1..=10_000 {
            for m in 0..=13 {
                for d in 0..=32 {
                    let chrono = NaiveDate::from_ymd_opt(y, m, d)
                        .map(|date| (date - epoch).num_days() as i32);
                    assert_eq!(days_from_civil(y, m, d), chrono, "{y}-{m}-{d}");
                }
            }
        }
    }

    #[test]
    fn one_digit_and_longer_whole_numbers_parse_alike() {
        let d = dialect("{}");
        for s in ["0", "4", "9", "10", "-3", "+7", "3.0", "x", "", "٣"] {
            let general = s.parse::<i64>().ok().or_else(|| {
                d.parse_float(s)
                    .filter(|f| f.fract() == 0.0)
                    .map(|f| f as i64)
            });
            assert_eq!(d.parse_int(s), general, "{s:?}");
        }
    }
}
