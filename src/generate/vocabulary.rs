//! The spellings the generated exports use and what they stand for (canonical analyte,
//! instrument, drug and frequency codes; units with their factor to the canonical unit).

use super::dialect::{ANALYTES, DIALECTS, INSTRUMENTS};
use super::rows::{
    BID, DEXAMETHASONE, HYDROCORTISONE, METHYLPRED, MG, MG_PER_KG, PREDNISOLONE, PREDNISONE, QD,
    QOD, TID, WEEKLY,
};

/// Canonical unit of each analyte, in the order of [`ANALYTES`] (DOMAIN.md 4.1, plus the IFN
/// score, which has no unit, and BK virus copies).
const ANALYTE_UNITS: [&str; 8] = [
    "mg/L",
    "pg/mL",
    "score",
    "10^9/L",
    "10^9/L",
    "g/dL",
    "mg/dL",
    "copies/mL",
];

/// One line of `truth/vocabulary.csv`.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Term {
    /// `analyte`, `instrument`, `unit`, `drug`, `frequency` or `dose_unit`.
    pub kind: &'static str,
    /// For units: the parameter they measure (analyte or instrument code, height, weight).
    pub parameter: &'static str,
    pub written: &'static str,
    pub canonical: &'static str,
    /// For units: canonical value = written value x factor.
    pub factor: String,
}

/// The factor to the canonical unit; `1/x` (as DOMAIN.md writes it) when it has no short
/// decimal form.
fn factor_text(to_site: f64) -> String {
    let to_canonical = 1.0 / to_site;
    let short = (to_canonical * 1e8).round() / 1e8;
    if (short - to_canonical).abs() <= 1e-12 * to_canonical {
        trimmed(to_canonical)
    } else {
        format!("1/{}", trimmed(to_site))
    }
}

fn trimmed(v: f64) -> String {
    let s = format!("{v:.8}");
    s.trim_end_matches('0').trim_end_matches('.').to_string()
}

/// Every spelling used by the built-in dialects, without repeats, in a fixed order.
pub(crate) fn vocabulary() -> Vec<Term> {
    let mut out: Vec<Term> = Vec::new();
    let mut add = |t: Term| {
        if !out
            .iter()
            .any(|o| o.kind == t.kind && o.parameter == t.parameter && o.written == t.written)
        {
            out.push(t);
        }
    };
    let term = |kind, parameter, written, canonical, factor: String| Term {
        kind,
        parameter,
        written,
        canonical,
        factor,
    };
    for d in &DIALECTS {
        for (i, a) in d.analytes.iter().enumerate() {
            add(term("analyte", "", a.name, ANALYTES[i], String::new()));
            for u in a.units {
                add(term(
                    "unit",
                    ANALYTES[i],
                    u,
                    ANALYTE_UNITS[i],
                    factor_text(a.factor),
                ));
            }
        }
        for (i, q) in d.instruments.iter().enumerate() {
            add(term(
                "instrument",
                "",
                q.name,
                INSTRUMENTS[i],
                String::new(),
            ));
            let canonical = if i == 0 { "%" } else { "mm" };
            add(term(
                "unit",
                INSTRUMENTS[i],
                q.unit,
                canonical,
                factor_text(q.factor),
            ));
        }
        for u in d.height_units {
            add(term(
                "unit",
                "height",
                u,
                "cm",
                factor_text(d.height_factor),
            ));
        }
        for u in d.weight_units {
            add(term(
                "unit",
                "weight",
                u,
                "kg",
                factor_text(d.weight_factor),
            ));
        }
        if d.infant_grams {
            add(term("unit", "weight", "g", "kg", "0.001".into()));
        }
    }
    let drugs: [(&[&'static str], &'static str); 5] = [
        (PREDNISONE, "prednisone"),
        (PREDNISOLONE, "prednisolone"),
        (METHYLPRED, "methylprednisolone"),
        (DEXAMETHASONE, "dexamethasone"),
        (HYDROCORTISONE, "hydrocortisone"),
    ];
    for (names, canonical) in drugs {
        for n in names {
            add(term("drug", "", n, canonical, String::new()));
        }
    }
    let frequencies: [(&[&'static str], &'static str); 5] = [
        (QD, "QD"),
        (BID, "BID"),
        (TID, "TID"),
        (QOD, "QOD"),
        (WEEKLY, "weekly"),
    ];
    for (names, canonical) in frequencies {
        for n in names {
            add(term("frequency", "", n, canonical, String::new()));
        }
    }
    for (names, canonical) in [(MG, "mg"), (MG_PER_KG, "mg/kg")] {
        for n in names {
            add(term("dose_unit", "", n, canonical, String::new()));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn find(kind: &str, parameter: &str, written: &str) -> Term {
        vocabulary()
            .into_iter()
            .find(|t| t.kind == kind && t.parameter == parameter && t.written == written)
            .unwrap_or_else(|| panic!("{kind} {parameter} {written} missing"))
    }

    #[test]
    fn unit_factors_match_domain_table() {
        assert_eq!(find("unit", "CRP", "MG/DL").factor, "10");
        assert_eq!(find("unit", "HGB", "mmol/l").factor, "1.611");
        assert_eq!(find("unit", "CREAT", "µmol/l").factor, "1/88.42");
        assert_eq!(find("unit", "ALC", "cells/uL").factor, "0.001");
        assert_eq!(find("unit", "IP10", "ng/ml").factor, "1000");
        assert_eq!(find("unit", "height", "in").factor, "2.54");
        assert_eq!(find("unit", "weight", "lb").factor, "0.45359237");
        assert_eq!(find("unit", "PTGLOBAL", "cm").factor, "10");
        assert_eq!(
            find("drug", "", "Solu-Medrol").canonical,
            "methylprednisolone"
        );
        assert_eq!(find("frequency", "", "every other day").canonical, "QOD");
    }
}
