//! The built-in site dialects: how each synthetic site writes its files (delimiter, encoding,
//! dates, decimals, ids, header names and order) and the words and units it uses.

use super::schema::Stream;

/// How a site writes dates.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum DateStyle {
    /// `2014-03-07`
    Iso,
    /// `07.03.2014`
    Dotted,
    /// `3/7/2014`
    Us,
    /// `07-Mar-2014`
    DayMon,
}

impl DateStyle {
    /// The chrono format that parses this style.
    pub(crate) fn strftime(self) -> &'static str {
        match self {
            DateStyle::Iso => "%Y-%m-%d",
            DateStyle::Dotted => "%d.%m.%Y",
            DateStyle::Us => "%m/%d/%Y",
            DateStyle::DayMon => "%d-%b-%Y",
        }
    }
}

/// How a site writes subject ids.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum IdStyle {
    /// `C1`
    Plain,
    /// `C01`
    ZeroPadded,
    /// ` c-1 `, `C-1`, `c1`: varies by row.
    Loose,
}

/// What a column of a site file holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Slot {
    /// A canonical column of the stream.
    Col(&'static str),
    /// A free-text comment the pipeline does not map.
    Comment,
}

/// One lab analyte as a site reports it.
#[derive(Debug, Clone, Copy)]
pub(crate) struct AnalyteStyle {
    pub name: &'static str,
    /// Unit spellings, one drawn per row.
    pub units: &'static [&'static str],
    /// Site value = canonical value x factor.
    pub factor: f64,
    pub decimals: u8,
}

/// One questionnaire as a site reports it.
#[derive(Debug, Clone, Copy)]
pub(crate) struct InstrumentStyle {
    pub name: &'static str,
    pub unit: &'static str,
    pub factor: f64,
    pub decimals: u8,
}

/// Everything about how one site writes its exports.
#[derive(Debug)]
pub(crate) struct Dialect {
    /// Folder name of the first site with this dialect.
    pub folder: &'static str,
    pub delimiter: u8,
    pub latin1: bool,
    pub bom: bool,
    pub crlf: bool,
    pub decimal_comma: bool,
    /// Missing-value tokens this site writes (a subset of DOMAIN.md's list).
    pub missing: &'static [&'static str],
    pub ids: IdStyle,
    /// Regex and replacement that turn this site's ids into canonical ids.
    pub id_pattern: &'static str,
    pub dates: DateStyle,
    /// Streams written with the second date style (subjects, visits, questionnaires at one site).
    pub alt_dates: Option<DateStyle>,
    pub layouts: [&'static [(&'static str, Slot)]; 7],
    pub groups: [&'static str; 3],
    pub sexes: [&'static str; 2],
    pub regimens: [&'static str; 2],
    pub height_units: &'static [&'static str],
    /// Height in the site's unit = cm x factor.
    pub height_factor: f64,
    pub height_decimals: u8,
    pub weight_units: &'static [&'static str],
    pub weight_factor: f64,
    pub weight_decimals: u8,
    /// Weight of children under two written in grams (unit `g`).
    pub infant_grams: bool,
    /// In the order of [`ANALYTES`].
    pub analytes: [AnalyteStyle; 8],
    /// PEDSQL, PTGLOBAL, MDGLOBAL.
    pub instruments: [InstrumentStyle; 3],
    pub oral_routes: &'static [&'static str],
    pub iv_routes: &'static [&'static str],
    /// Discontinuation reasons for: lack of efficacy, adverse event, relocation, consent withdrawn.
    pub reasons: [&'static str; 4],
    pub comments: &'static [&'static str],
}

impl Dialect {
    /// Date style of `stream` at this site.
    pub(crate) fn date_style(&self, stream: Stream) -> DateStyle {
        match (self.alt_dates, stream) {
            (Some(alt), Stream::Subjects | Stream::Visits | Stream::Questionnaires) => alt,
            _ => self.dates,
        }
    }

    /// chrono formats that parse every date this site writes.
    pub(crate) fn date_formats(&self) -> Vec<&'static str> {
        let mut v = vec![self.dates.strftime()];
        if let Some(alt) = self.alt_dates {
            v.push(alt.strftime());
        }
        v
    }

    pub(crate) fn layout(&self, stream: Stream) -> &'static [(&'static str, Slot)] {
        self.layouts[stream.index()]
    }

    pub(crate) fn line_end(&self) -> &'static str {
        if self.crlf { "\r\n" } else { "\n" }
    }
}

/// Canonical analyte codes, in the order of [`Dialect::analytes`].
pub(crate) const ANALYTES: [&str; 8] = [
    "CRP", "IP10", "IFNSCORE", "PLT", "ALC", "HGB", "CREAT", "BKPCR",
];

/// Canonical instrument codes, in the order of [`Dialect::instruments`].
pub(crate) const INSTRUMENTS: [&str; 3] = ["PEDSQL", "PTGLOBAL", "MDGLOBAL"];

/// The built-in dialects; site `i` uses `DIALECTS[i % 3]`.
pub(crate) static DIALECTS: [Dialect; 3] = [NIH, HAMBURG, SAO_PAULO];

/// Folder name of site `i`: `nih`, `hamburg`, `sao_paulo`, then `nih_2`, `hamburg_2`, ...
pub(crate) fn site_folder(i: usize) -> String {
    let d = &DIALECTS[i % DIALECTS.len()];
    if i < DIALECTS.len() {
        d.folder.to_string()
    } else {
        format!("{}_{}", d.folder, i / DIALECTS.len() + 1)
    }
}

use Slot::{Col, Comment};

// Site A: a US research hospital exporting from a clinical data warehouse.
const NIH: Dialect = Dialect {
    folder: "nih",
    delimiter: b',',
    latin1: false,
    bom: false,
    crlf: false,
    decimal_comma: false,
    missing: &["", "NA"],
    ids: IdStyle::Plain,
    id_pattern: "^([A-Za-z])0*([1-9][0-9]*)$",
    dates: DateStyle::Iso,
    alt_dates: None,
    layouts: [
        &[
            ("subject_id", Col("subject")),
            ("diagnosis", Col("group")),
            ("sex", Col("sex")),
            ("date_of_birth", Col("birth_date")),
            ("enrollment_date", Col("enrol_date")),
            ("discontinuation_date", Col("discontinuation_date")),
            ("discontinuation_reason", Col("discontinuation_reason")),
        ],
        &[
            ("subject_id", Col("subject")),
            ("regimen", Col("regimen")),
            ("start_date", Col("start")),
            ("end_date", Col("end")),
            ("dose_mg", Col("dose_mg")),
            ("doses_per_day", Col("per_day")),
        ],
        &[
            ("subject_id", Col("subject")),
            ("medication", Col("drug")),
            ("dose", Col("dose")),
            ("dose_unit", Col("dose_unit")),
            ("frequency", Col("frequency")),
            ("route", Col("route")),
            ("start_date", Col("start")),
            ("stop_date", Col("end")),
        ],
        &[
            ("subject_id", Col("subject")),
            ("date", Col("date")),
            ("fever", Col("fever")),
            ("rash", Col("rash")),
            ("musculoskeletal_pain", Col("msk_pain")),
            ("headache", Col("headache")),
            ("fatigue", Col("fatigue")),
            ("organ_specific", Col("organ")),
        ],
        &[
            ("subject_id", Col("subject")),
            ("visit_date", Col("date")),
            ("height", Col("height")),
            ("height_unit", Col("height_unit")),
            ("weight", Col("weight")),
            ("weight_unit", Col("weight_unit")),
            ("bmd_z", Col("bmd_z")),
            ("comment", Comment),
        ],
        &[
            ("subject_id", Col("subject")),
            ("collection_date", Col("date")),
            ("test", Col("analyte")),
            ("result", Col("value")),
            ("units", Col("unit")),
        ],
        &[
            ("subject_id", Col("subject")),
            ("date", Col("date")),
            ("instrument", Col("instrument")),
            ("score", Col("score")),
            ("unit", Col("unit")),
        ],
    ],
    groups: ["CANDLE", "SAVI", "OTHER"],
    sexes: ["M", "F"],
    regimens: ["escalation", "optimal"],
    height_units: &["cm"],
    height_factor: 1.0,
    height_decimals: 1,
    weight_units: &["kg"],
    weight_factor: 1.0,
    weight_decimals: 1,
    infant_grams: false,
    analytes: [
        AnalyteStyle {
            name: "CRP",
            units: &["mg/L", "mg/l"],
            factor: 1.0,
            decimals: 1,
        },
        AnalyteStyle {
            name: "IP-10",
            units: &["pg/mL"],
            factor: 1.0,
            decimals: 0,
        },
        AnalyteStyle {
            name: "IFN score",
            units: &["score"],
            factor: 1.0,
            decimals: 1,
        },
        AnalyteStyle {
            name: "Platelets",
            units: &["10^9/L"],
            factor: 1.0,
            decimals: 0,
        },
        AnalyteStyle {
            name: "Lymphocytes, absolute",
            units: &["cells/uL"],
            factor: 1000.0,
            decimals: 0,
        },
        AnalyteStyle {
            name: "Hemoglobin",
            units: &["g/dL"],
            factor: 1.0,
            decimals: 1,
        },
        AnalyteStyle {
            name: "Creatinine",
            units: &["mg/dL"],
            factor: 1.0,
            decimals: 2,
        },
        AnalyteStyle {
            name: "BK virus PCR (blood)",
            units: &["copies/mL"],
            factor: 1.0,
            decimals: 0,
        },
    ],
    instruments: [
        InstrumentStyle {
            name: "PEDSQL",
            unit: "%",
            factor: 1.0,
            decimals: 1,
        },
        InstrumentStyle {
            name: "PTGLOBAL",
            unit: "mm",
            factor: 1.0,
            decimals: 0,
        },
        InstrumentStyle {
            name: "MDGLOBAL",
            unit: "mm",
            factor: 1.0,
            decimals: 0,
        },
    ],
    oral_routes: &["oral", "PO", "oral, with breakfast"],
    iv_routes: &["IV", "IV\nover 1 hour"],
    reasons: [
        "lack of efficacy",
        "adverse event: BK viremia",
        "moved away, follow-up at \"home\" institution",
        "withdrew consent",
    ],
    comments: &[
        "fasting",
        "sample hemolyzed, repeat",
        "parent reports rash\nsince last visit",
    ],
};

// Site B: a German university hospital, exporting from a spreadsheet on Windows.
const HAMBURG: Dialect = Dialect {
    folder: "hamburg",
    delimiter: b';',
    latin1: true,
    bom: false,
    crlf: true,
    decimal_comma: true,
    missing: &["", "-", "ND"],
    ids: IdStyle::ZeroPadded,
    id_pattern: "^([A-Za-z])0*([1-9][0-9]*)$",
    dates: DateStyle::Dotted,
    alt_dates: None,
    layouts: [
        &[
            ("Patient ID", Col("subject")),
            ("Geschlecht", Col("sex")),
            ("Diagnose", Col("group")),
            ("Geburtsdatum", Col("birth_date")),
            ("Einschlussdatum", Col("enrol_date")),
            ("Abbruchdatum", Col("discontinuation_date")),
            ("Abbruchgrund", Col("discontinuation_reason")),
        ],
        &[
            ("Patient ID", Col("subject")),
            ("Beginn", Col("start")),
            ("Ende", Col("end")),
            ("Dosis (mg)", Col("dose_mg")),
            ("Gaben pro Tag", Col("per_day")),
            ("Phase", Col("regimen")),
        ],
        &[
            ("Patient ID", Col("subject")),
            ("Präparat", Col("drug")),
            ("Beginn", Col("start")),
            ("Ende", Col("end")),
            ("Dosis", Col("dose")),
            ("Einheit", Col("dose_unit")),
            ("Häufigkeit", Col("frequency")),
            ("Applikation", Col("route")),
        ],
        &[
            ("Patient ID", Col("subject")),
            ("Datum", Col("date")),
            ("Fieber", Col("fever")),
            ("Ausschlag", Col("rash")),
            ("Muskel-/Gelenkschmerz", Col("msk_pain")),
            ("Kopfschmerz", Col("headache")),
            ("Müdigkeit", Col("fatigue")),
            ("Organbeteiligung", Col("organ")),
        ],
        &[
            ("Patient ID", Col("subject")),
            ("Besuchsdatum", Col("date")),
            ("Gewicht", Col("weight")),
            ("Einheit Gewicht", Col("weight_unit")),
            ("Größe", Col("height")),
            ("Einheit Größe", Col("height_unit")),
            ("BMD Z-Score", Col("bmd_z")),
            ("Bemerkung", Comment),
        ],
        &[
            ("Patient ID", Col("subject")),
            ("Datum", Col("date")),
            ("Parameter", Col("analyte")),
            ("Wert", Col("value")),
            ("Einheit", Col("unit")),
        ],
        &[
            ("Patient ID", Col("subject")),
            ("Datum", Col("date")),
            ("Fragebogen", Col("instrument")),
            ("Wert", Col("score")),
            ("Einheit", Col("unit")),
        ],
    ],
    groups: ["Candle", "Savi", "Other"],
    sexes: ["m", "f"],
    regimens: ["Escalation", "Optimal"],
    height_units: &["m"],
    height_factor: 0.01,
    height_decimals: 3,
    weight_units: &["kg"],
    weight_factor: 1.0,
    weight_decimals: 1,
    infant_grams: true,
    analytes: [
        AnalyteStyle {
            name: "CRP",
            units: &["MG/DL", "mg/dl"],
            factor: 0.1,
            decimals: 2,
        },
        AnalyteStyle {
            name: "CXCL10 (IP-10)",
            units: &["ng/ml"],
            factor: 0.001,
            decimals: 3,
        },
        AnalyteStyle {
            name: "IFN-Score",
            units: &["Score"],
            factor: 1.0,
            decimals: 1,
        },
        AnalyteStyle {
            name: "Thrombozyten",
            units: &["10^9/l"],
            factor: 1.0,
            decimals: 0,
        },
        AnalyteStyle {
            name: "Lymphozyten abs.",
            units: &["10^9/l"],
            factor: 1.0,
            decimals: 2,
        },
        AnalyteStyle {
            name: "Hämoglobin",
            units: &["mmol/l"],
            factor: 1.0 / 1.611,
            decimals: 1,
        },
        AnalyteStyle {
            name: "Kreatinin",
            units: &["µmol/l", "µmol/L"],
            factor: 88.42,
            decimals: 0,
        },
        AnalyteStyle {
            name: "BKV-PCR",
            units: &["Kopien/ml"],
            factor: 1.0,
            decimals: 0,
        },
    ],
    instruments: [
        InstrumentStyle {
            name: "PedsQL",
            unit: "%",
            factor: 1.0,
            decimals: 1,
        },
        InstrumentStyle {
            name: "PT-Global",
            unit: "mm",
            factor: 1.0,
            decimals: 0,
        },
        InstrumentStyle {
            name: "MD-Global",
            unit: "mm",
            factor: 1.0,
            decimals: 0,
        },
    ],
    oral_routes: &["p.o.", "p.o. (über Magensonde)"],
    iv_routes: &["i.v.", "i.v.; Kurzinfusion"],
    reasons: [
        "Therapieversagen",
        "Nebenwirkung (BK-Virämie)",
        "Umzug; Weiterbetreuung durch Dr. Müller",
        "Einwilligung zurückgezogen\nlaut Mutter",
    ],
    comments: &[
        "nüchtern",
        "Hämolyse; Wiederholung",
        "Mutter berichtet über Ausschlag\nseit letzter Visite",
    ],
};

// Site C: a research registry (REDCap-like) export, tab-separated with a BOM and US dates.
const SAO_PAULO: Dialect = Dialect {
    folder: "sao_paulo",
    delimiter: b'\t',
    latin1: false,
    bom: true,
    crlf: false,
    decimal_comma: false,
    missing: &["N/A", ".", ""],
    ids: IdStyle::Loose,
    id_pattern: "^([A-Za-z])\\s*-?\\s*0*([1-9][0-9]*)$",
    dates: DateStyle::Us,
    alt_dates: Some(DateStyle::DayMon),
    layouts: [
        &[
            ("record_id ", Col("subject")),
            ("DOB", Col("birth_date")),
            ("Sex", Col("sex")),
            ("Dx Group", Col("group")),
            ("Enrollment Date", Col("enrol_date")),
            ("D/C Date", Col("discontinuation_date")),
            ("D/C Reason", Col("discontinuation_reason")),
        ],
        &[
            (" Record_ID", Col("subject")),
            ("Dose (mg)", Col("dose_mg")),
            ("Doses/Day", Col("per_day")),
            ("Regimen", Col("regimen")),
            ("Start", Col("start")),
            ("Stop", Col("end")),
        ],
        &[
            ("record_id", Col("subject")),
            ("Start", Col("start")),
            ("Stop", Col("end")),
            ("Drug", Col("drug")),
            ("Route", Col("route")),
            ("Dose", Col("dose")),
            ("Dose Units", Col("dose_unit")),
            ("Freq", Col("frequency")),
        ],
        &[
            ("RECORD_ID", Col("subject")),
            ("Diary Date", Col("date")),
            ("Fever", Col("fever")),
            ("Rash", Col("rash")),
            ("MSK Pain", Col("msk_pain")),
            ("Headache", Col("headache")),
            ("Fatigue", Col("fatigue")),
            ("Organ", Col("organ")),
        ],
        &[
            ("record_id", Col("subject")),
            ("Visit Date ", Col("date")),
            ("Notes", Comment),
            ("Height", Col("height")),
            ("Ht Units", Col("height_unit")),
            ("Weight", Col("weight")),
            ("Wt Units", Col("weight_unit")),
            ("BMD Z", Col("bmd_z")),
        ],
        &[
            ("record_id", Col("subject")),
            ("Lab Test", Col("analyte")),
            ("Lab Date", Col("date")),
            ("Result", Col("value")),
            ("Units", Col("unit")),
        ],
        &[
            ("Record_Id", Col("subject")),
            ("Instrument", Col("instrument")),
            ("Date", Col("date")),
            ("Score", Col("score")),
            ("Units", Col("unit")),
        ],
    ],
    groups: ["candle", "savi", "other"],
    sexes: ["M", "F"],
    regimens: ["ESCALATION", "OPTIMAL"],
    height_units: &["in", "inch"],
    height_factor: 1.0 / 2.54,
    height_decimals: 1,
    weight_units: &["lb", "lbs"],
    weight_factor: 1.0 / 0.453_592_37,
    weight_decimals: 1,
    infant_grams: false,
    analytes: [
        AnalyteStyle {
            name: "C-Reactive Protein",
            units: &["mg/dl", "mg/dL"],
            factor: 0.1,
            decimals: 2,
        },
        AnalyteStyle {
            name: "IP10",
            units: &["pg/ml"],
            factor: 1.0,
            decimals: 0,
        },
        AnalyteStyle {
            name: "Interferon score",
            units: &["score"],
            factor: 1.0,
            decimals: 1,
        },
        AnalyteStyle {
            name: "PLT",
            units: &["K/uL"],
            factor: 1.0,
            decimals: 0,
        },
        AnalyteStyle {
            name: "ALC",
            units: &["K/uL"],
            factor: 1.0,
            decimals: 2,
        },
        AnalyteStyle {
            name: "HGB",
            units: &["g/L"],
            factor: 10.0,
            decimals: 0,
        },
        AnalyteStyle {
            name: "Creat",
            units: &["umol/L"],
            factor: 88.42,
            decimals: 0,
        },
        AnalyteStyle {
            name: "BK PCR",
            units: &["copies/ml"],
            factor: 1.0,
            decimals: 0,
        },
    ],
    instruments: [
        InstrumentStyle {
            name: "pedsql",
            unit: "%",
            factor: 1.0,
            decimals: 0,
        },
        InstrumentStyle {
            name: "PT Global",
            unit: "cm",
            factor: 0.1,
            decimals: 1,
        },
        InstrumentStyle {
            name: "MD Global",
            unit: "cm",
            factor: 0.1,
            decimals: 1,
        },
    ],
    oral_routes: &["PO", "oral", "PO\twith food"],
    iv_routes: &["IV"],
    reasons: [
        "lack of efficacy",
        "adverse event",
        "family relocated\tfollow-up elsewhere",
        "withdrew consent",
    ],
    comments: &[
        "fasting",
        "hemolyzed\trepeat",
        "mom reports rash,\nsince last visit",
    ],
};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_layout_maps_each_canonical_column_once() {
        for d in &DIALECTS {
            for s in Stream::ALL {
                let layout = d.layout(s);
                for c in s.columns() {
                    let n = layout
                        .iter()
                        .filter(|(_, slot)| *slot == Col(c.name))
                        .count();
                    assert_eq!(n, 1, "{} {} {}", d.folder, s.name(), c.name);
                }
                let canon = layout
                    .iter()
                    .filter(|(_, slot)| matches!(slot, Col(_)))
                    .count();
                assert_eq!(canon, s.columns().len());
            }
        }
    }

    #[test]
    fn site_folders_cycle_the_dialects() {
        assert_eq!(site_folder(0), "nih");
        assert_eq!(site_folder(2), "sao_paulo");
        assert_eq!(site_folder(3), "nih_2");
        assert_eq!(site_folder(7), "hamburg_3");
    }
}
