//! `phase_windows`: each subject's treatment phases (ADPH) from its anchor dates, with windows
//! written in YAML as anchor arithmetic and a precedence order for overlaps.

use std::collections::BTreeMap;

use polars::prelude::*;
use serde::Deserialize;

use crate::spec::PipelineSpec;
use crate::stages::{Inputs, Stage, StageCtx, StageOutput};

/// Parameters of a `phase_windows` stage. Its one input is a `phase_anchors` table.
///
/// A bound is anchor arithmetic: `TRTSDT`, `OPTSDT - 1`, `LSTVSTDT - W + 1`,
/// `max(LSTVSTDT - W + 1, TRTSDT)`, with `|` for "else" (`OPTSDT - 1 | LSTVSTDT`: the day before
/// the optimal start, or the final visit when there is none). Constants (`W`) come from
/// `constants:`. Bounds are inclusive days. A bound that is null (a missing anchor) makes the
/// phase empty for that subject; a missing `start` or `end` key means unbounded.
/// Phases are listed in precedence order: where windows overlap, the earlier-listed phase wins
/// and the later one is clipped (a clip that would split a phase in two is an error).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PhaseWindows {
    /// Named numbers of days, e.g. `{W: 90}`.
    #[serde(default)]
    pub constants: BTreeMap<String, i64>,
    /// Phases in precedence order.
    pub phases: Vec<PhaseSpec>,
}

/// One phase window.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PhaseSpec {
    /// APHASEN.
    pub number: i64,
    /// APHASE.
    pub label: String,
    /// First day (inclusive); unbounded when absent.
    #[serde(default)]
    pub start: Option<String>,
    /// Last day (inclusive); unbounded when absent.
    #[serde(default)]
    pub end: Option<String>,
}

/// A parsed bound: alternatives, each a `max`/`min` of sums, or a sum.
#[derive(Debug, Clone, PartialEq)]
pub enum Bound {
    Alternatives(Vec<Term>),
}

#[derive(Debug, Clone, PartialEq)]
pub enum Term {
    Sum(Sum),
    Max(Vec<Sum>),
    Min(Vec<Sum>),
}

/// An anchor plus or minus day counts.
#[derive(Debug, Clone, PartialEq)]
pub struct Sum {
    pub anchor: String,
    pub offset: i64,
}

fn parse_sum(text: &str, constants: &BTreeMap<String, i64>) -> Result<Sum, String> {
    let mut tokens = Vec::new();
    let mut cur = String::new();
    for ch in text.chars() {
        match ch {
            '+' | '-' => {
                if !cur.trim().is_empty() {
                    tokens.push(cur.trim().to_string());
                }
                tokens.push(ch.to_string());
                cur.clear();
            }
            _ => cur.push(ch),
        }
    }
    if !cur.trim().is_empty() {
        tokens.push(cur.trim().to_string());
    }
    let mut it = tokens.into_iter();
    let anchor = it
        .next()
        .ok_or_else(|| format!("empty bound in `{text}`"))?;
    if !anchor
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || c == '_')
        || anchor.chars().all(|c| c.is_ascii_digit())
    {
        return Err(format!("`{anchor}` in `{text}` must be an anchor name"));
    }
    let mut offset = 0i64;
    while let Some(op) = it.next() {
        let sign = match op.as_str() {
            "+" => 1,
            "-" => -1,
            other => return Err(format!("expected + or - before `{other}` in `{text}`")),
        };
        let v = it
            .next()
            .ok_or_else(|| format!("`{text}` ends with `{op}`"))?;
        let n = match v.parse::<i64>() {
            Ok(n) => n,
            Err(_) => *constants
                .get(&v)
                .ok_or_else(|| format!("`{v}` in `{text}` is neither a number nor a constant"))?,
        };
        offset += sign * n;
    }
    Ok(Sum { anchor, offset })
}

/// Parses a bound expression.
pub fn parse_bound(text: &str, constants: &BTreeMap<String, i64>) -> Result<Bound, String> {
    let mut terms = Vec::new();
    for alt in text.split('|') {
        let alt = alt.trim();
        let func = ["max(", "min("]
            .iter()
            .find(|f| alt.to_lowercase().starts_with(**f));
        let term = match func {
            Some(f) => {
                let inner = alt[f.len()..]
                    .strip_suffix(')')
                    .ok_or_else(|| format!("missing `)` in `{alt}`"))?;
                let sums = inner
                    .split(',')
                    .map(|s| parse_sum(s, constants))
                    .collect::<Result<Vec<_>, _>>()?;
                if *f == "max(" {
                    Term::Max(sums)
                } else {
                    Term::Min(sums)
                }
            }
            None => Term::Sum(parse_sum(alt, constants)?),
        };
        terms.push(term);
    }
    Ok(Bound::Alternatives(terms))
}

impl Bound {
    fn anchors(&self) -> Vec<&str> {
        let Bound::Alternatives(terms) = self;
        terms
            .iter()
            .flat_map(|t| match t {
                Term::Sum(s) => vec![s.anchor.as_str()],
                Term::Max(v) | Term::Min(v) => v.iter().map(|s| s.anchor.as_str()).collect(),
            })
            .collect()
    }

    /// Evaluates on one subject's anchors (days since 1970-01-01).
    fn eval(&self, anchors: &BTreeMap<&str, Option<i32>>) -> Option<i32> {
        let sum = |s: &Sum| {
            anchors
                .get(s.anchor.as_str())
                .copied()
                .flatten()
                .map(|d| d + s.offset as i32)
        };
        let Bound::Alternatives(terms) = self;
        terms.iter().find_map(|t| match t {
            Term::Sum(s) => sum(s),
            Term::Max(v) => v
                .iter()
                .map(sum)
                .collect::<Option<Vec<_>>>()?
                .into_iter()
                .max(),
            Term::Min(v) => v
                .iter()
                .map(sum)
                .collect::<Option<Vec<_>>>()?
                .into_iter()
                .min(),
        })
    }
}

/// A phase's resolved window: (phase index, first day, last day); None is unbounded.
pub type Window = (usize, Option<i32>, Option<i32>);

/// A phase's parsed bounds: (start, end); None is unbounded.
pub type Bounds = (Option<Bound>, Option<Bound>);

/// Resolved windows of one subject: (phase index, start, end), non-overlapping.
/// `None` start or end means unbounded.
pub fn resolve(
    phases: &[Bounds],
    anchors: &BTreeMap<&str, Option<i32>>,
) -> Result<Vec<Window>, String> {
    let mut taken: Vec<(i64, i64)> = Vec::new();
    let mut out = Vec::new();
    for (i, (start, end)) in phases.iter().enumerate() {
        let lo = match start {
            Some(b) => match b.eval(anchors) {
                Some(v) => Some(v),
                None => continue,
            },
            None => None,
        };
        let hi = match end {
            Some(b) => match b.eval(anchors) {
                Some(v) => Some(v),
                None => continue,
            },
            None => None,
        };
        let mut a = lo.map(i64::from).unwrap_or(i64::MIN);
        let mut b = hi.map(i64::from).unwrap_or(i64::MAX);
        if a > b {
            continue; // empty for this subject (an optimal start after the final visit)
        }
        for &(ta, tb) in &taken {
            if tb < a || ta > b {
                continue;
            }
            if ta <= a && tb >= b {
                a = 1;
                b = 0;
                break;
            }
            if ta <= a {
                a = tb + 1;
            } else if tb >= b {
                b = ta - 1;
            } else {
                return Err(format!(
                    "phase #{} would be split in two by an earlier-listed phase",
                    i + 1
                ));
            }
        }
        if a > b {
            continue;
        }
        taken.push((a, b));
        let back = |v: i64| (v != i64::MIN && v != i64::MAX).then_some(v as i32);
        out.push((i, back(a), back(b)));
    }
    Ok(out)
}

impl PhaseWindows {
    fn bounds(&self) -> Result<Vec<Bounds>, String> {
        self.phases
            .iter()
            .map(|p| {
                let s = p
                    .start
                    .as_deref()
                    .map(|t| parse_bound(t, &self.constants))
                    .transpose()?;
                let e = p
                    .end
                    .as_deref()
                    .map(|t| parse_bound(t, &self.constants))
                    .transpose()?;
                Ok((s, e))
            })
            .collect()
    }
}

impl Stage for PhaseWindows {
    /// Each subject's windows, from that subject's anchors.
    fn across_subjects(&self, _subject_columns: &[String]) -> Option<String> {
        None
    }

    fn check(&self, _spec: &PipelineSpec) -> Vec<String> {
        let mut out = Vec::new();
        if let Err(e) = self.bounds() {
            out.push(e);
        }
        let mut numbers = std::collections::HashSet::new();
        for p in &self.phases {
            if !numbers.insert(p.number) {
                out.push(format!("phase number {} is used twice", p.number));
            }
        }
        out
    }

    fn run(&self, _ctx: &StageCtx, inputs: &Inputs) -> anyhow::Result<StageOutput> {
        let bounds = self.bounds().map_err(|e| anyhow::anyhow!(e))?;
        let anchors = inputs.first();
        let mut names: Vec<&str> = bounds
            .iter()
            .flat_map(|(s, e)| s.iter().chain(e.iter()).flat_map(|b| b.anchors()))
            .collect();
        names.sort();
        names.dedup();
        let ids = anchors.column("USUBJID")?.str()?.clone();
        let mut cols = Vec::new();
        for n in &names {
            let c = anchors.column(n).map_err(|_| {
                anyhow::anyhow!("anchor `{n}` is not a column of the anchors table")
            })?;
            cols.push(c.cast(&DataType::Int32)?.i32()?.clone());
        }
        let (mut subj, mut num, mut label, mut start, mut end) =
            (vec![], vec![], vec![], vec![], vec![]);
        for row in 0..anchors.height() {
            let Some(id) = ids.get(row) else { continue };
            let values: BTreeMap<&str, Option<i32>> = names
                .iter()
                .zip(&cols)
                .map(|(n, c)| (*n, c.get(row)))
                .collect();
            let windows =
                resolve(&bounds, &values).map_err(|e| anyhow::anyhow!("subject {id}: {e}"))?;
            for (i, a, b) in windows {
                subj.push(id.to_string());
                num.push(self.phases[i].number);
                label.push(self.phases[i].label.clone());
                start.push(a);
                end.push(b);
            }
        }
        let days: Vec<Option<i32>> = start
            .iter()
            .zip(&end)
            .map(|(a, b)| Some(b.as_ref()? - a.as_ref()? + 1))
            .collect();
        let n = subj.len();
        let table = DataFrame::new(
            n,
            vec![
                Column::new("USUBJID".into(), subj),
                Column::new("APHASEN".into(), num),
                Column::new("APHASE".into(), label),
                Column::new("ASTDT".into(), start).cast(&DataType::Date)?,
                Column::new("AENDT".into(), end).cast(&DataType::Date)?,
                Column::new("ADURN".into(), days),
            ],
        )?;
        Ok(StageOutput::table(table.lazy().sort_by_exprs(
            [col("USUBJID"), col("ASTDT")],
            SortMultipleOptions::default().with_nulls_last(false),
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The four phases of the study protocol, W = 90.
    pub fn protocol(w: i64) -> PhaseWindows {
        let yaml = format!(
            "constants: {{W: {w}}}\nphases:\n  - {{number: 4, label: final, start: 'max(LSTVSTDT - W + 1, TRTSDT)', end: LSTVSTDT}}\n  - {{number: 1, label: pretreatment, start: FRSTDT, end: 'min(TRTSDT - 1, LSTVSTDT) | LSTVSTDT'}}\n  - {{number: 2, label: escalation, start: TRTSDT, end: 'min(OPTSDT - 1, LSTVSTDT) | LSTVSTDT'}}\n  - {{number: 3, label: optimal, start: OPTSDT, end: LSTVSTDT - W}}\n"
        );
        serde_saphyr::from_str(&yaml).unwrap()
    }

    fn windows(
        p: &PhaseWindows,
        f: i32,
        t: Option<i32>,
        o: Option<i32>,
        l: i32,
    ) -> Vec<(i64, i32, i32)> {
        let anchors: BTreeMap<&str, Option<i32>> = [
            ("FRSTDT", Some(f)),
            ("TRTSDT", t),
            ("OPTSDT", o),
            ("LSTVSTDT", Some(l)),
        ]
        .into_iter()
        .collect();
        let mut w: Vec<(i64, i32, i32)> = resolve(&p.bounds().unwrap(), &anchors)
            .unwrap()
            .into_iter()
            .map(|(i, a, b)| (p.phases[i].number, a.unwrap(), b.unwrap()))
            .collect();
        w.sort_by_key(|x| x.1);
        w
    }

    #[test]
    fn an_optimal_start_after_the_final_visit_leaves_escalation_up_to_the_final_window() {
        // First dose day 100, optimal start day 260, final visit day 200 (the subject's
        // optimal dose began after the last visit the study has): phase 4 is days 111-200,
        // escalation 100-110, no optimal days, nothing after the final visit.
        let p = protocol(90);
        assert_eq!(
            windows(&p, 10, Some(100), Some(260), 200),
            vec![(1, 10, 99), (2, 100, 110), (4, 111, 200)]
        );
        // First dose after the final visit: pretreatment ends at the final visit.
        assert_eq!(windows(&p, 10, Some(300), None, 200), vec![(1, 10, 200)]);
    }

    #[test]
    fn the_four_protocol_phases() {
        // First event day 0, first dose 100, optimal 200, final visit 1000, W = 90:
        // phase 1 = 0..99, 2 = 100..199, 3 = 200..910, 4 = 911..1000.
        assert_eq!(
            windows(&protocol(90), 0, Some(100), Some(200), 1000),
            vec![(1, 0, 99), (2, 100, 199), (3, 200, 910), (4, 911, 1000)]
        );
    }

    #[test]
    fn a_subject_who_stopped_early_has_no_optimal_phase() {
        // Optimal from day 950, final visit 1000: phase 4 (911..1000) takes the optimal days,
        // and phase 2 is cut short at 910.
        assert_eq!(
            windows(&protocol(90), 0, Some(100), Some(950), 1000),
            vec![(1, 0, 99), (2, 100, 910), (4, 911, 1000)]
        );
    }

    #[test]
    fn never_optimal_and_never_dosed() {
        assert_eq!(
            windows(&protocol(90), 0, Some(100), None, 1000),
            vec![(1, 0, 99), (2, 100, 910), (4, 911, 1000)]
        );
        assert_eq!(
            windows(&protocol(90), 0, None, None, 1000),
            vec![(1, 0, 1000)]
        );
    }

    #[test]
    fn dosed_within_the_last_w_days() {
        // First dose day 950 > final visit - W: phase 4 starts at the first dose.
        assert_eq!(
            windows(&protocol(90), 0, Some(950), None, 1000),
            vec![(1, 0, 949), (4, 950, 1000)]
        );
    }

    #[test]
    fn bounds_parse_and_reject_nonsense() {
        let c: BTreeMap<String, i64> = [("W".to_string(), 90)].into_iter().collect();
        assert_eq!(
            parse_bound("LSTVSTDT - W + 1", &c).unwrap(),
            Bound::Alternatives(vec![Term::Sum(Sum {
                anchor: "LSTVSTDT".into(),
                offset: -89
            })])
        );
        assert!(parse_bound("LSTVSTDT - V", &c).is_err());
        assert!(parse_bound("3 + 4", &c).is_err());
        assert!(parse_bound("max(A, B", &c).is_err());
    }
}
