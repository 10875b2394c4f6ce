//! The rows of each stream for one subject, in canonical cells and the site's words and units:
//! subject record, baricitinib regimens, steroid orders, diary days, visits, labs, questionnaires.

use std::borrow::Cow;

use chrono::NaiveDate;
use rand::Rng;
use rand_chacha::ChaCha8Rng;

use super::course::{Course, Group, StopReason, days, days_between, normal, plus, uniform};
use super::dialect::Dialect;
use super::dirt::GenRow;
use super::render::Cell;
use super::schema::Stream;

/// What the row generators need to know about the site.
pub(crate) struct SiteCtx<'a> {
    pub dialect: &'a Dialect,
    /// Date of the first export: rows that change after it appear in two versions.
    pub first_export: NaiveDate,
    pub missing_rate: f64,
}

impl SiteCtx<'_> {
    fn missing(&self, rng: &mut ChaCha8Rng) -> Cell {
        Cell::Missing(rng.random_range(0..8))
    }

    fn maybe_missing(&self, rng: &mut ChaCha8Rng, cell: Cell) -> Cell {
        if self.missing_rate > 0.0 && rng.random_bool(self.missing_rate) {
            self.missing(rng)
        } else {
            cell
        }
    }

    fn subject(&self, course: &Course, rng: &mut ChaCha8Rng) -> Cell {
        Cell::Subject(course.id, rng.random_range(0..4))
    }
}

fn pick<T: Copy>(rng: &mut ChaCha8Rng, items: &[T]) -> T {
    items[rng.random_range(0..items.len())]
}

fn text(s: &'static str) -> Cell {
    Cell::Text(Cow::Borrowed(s))
}

fn date_or_missing(d: Option<NaiveDate>) -> Cell {
    d.map(Cell::Date).unwrap_or(Cell::Missing(0))
}

/// Decimals needed to write `v` exactly at one decimal (0 for whole numbers).
fn decimals_of(v: f64) -> u8 {
    if (v - v.round()).abs() < 1e-9 { 0 } else { 1 }
}

/// The rows of `stream` for `course`, sorted by natural key.
pub(crate) fn rows(
    stream: Stream,
    course: &Course,
    site: &SiteCtx,
    rng: &mut ChaCha8Rng,
) -> Vec<GenRow> {
    match stream {
        Stream::Subjects => subjects(course, site, rng),
        Stream::Dosing => dosing(course, site, rng),
        Stream::Steroids => steroids(course, site, rng),
        Stream::Diary => diary(course, site, rng),
        Stream::Visits => visits(course, site, rng),
        Stream::Labs => labs(course, site, rng),
        Stream::Questionnaires => questionnaires(course, site, rng),
    }
}

/// A row whose `end` column (index `end_col`) is filled only after the first export.
fn with_open_end(
    cells: Vec<Cell>,
    avail: NaiveDate,
    end: Option<NaiveDate>,
    end_col: usize,
    site: &SiteCtx,
) -> GenRow {
    let early = match end {
        Some(e) if e > site.first_export && avail <= site.first_export => {
            let mut c = cells.clone();
            c[end_col] = Cell::Missing(0);
            Some(c)
        }
        _ => None,
    };
    GenRow {
        cells,
        avail,
        early,
    }
}

fn subjects(course: &Course, site: &SiteCtx, rng: &mut ChaCha8Rng) -> Vec<GenRow> {
    let d = site.dialect;
    let reason = course.stop.map(|(_, r)| {
        let i = match r {
            StopReason::LackOfEfficacy => 0,
            StopReason::AdverseEvent => 1,
            StopReason::Relocated => 2,
            StopReason::WithdrewConsent => 3,
        };
        text(d.reasons[i])
    });
    let stop_date = course.stop.map(|(s, _)| s);
    let cells = vec![
        site.subject(course, rng),
        text(d.groups[course.id.group.index()]),
        text(d.sexes[usize::from(!course.male)]),
        Cell::Date(course.birth),
        Cell::Date(course.enrol),
        date_or_missing(stop_date),
        reason.unwrap_or(Cell::Missing(0)),
    ];
    let avail = course.enrol;
    let early = match stop_date {
        Some(s) if s > site.first_export && avail <= site.first_export => {
            let mut c = cells.clone();
            c[5] = Cell::Missing(0);
            c[6] = Cell::Missing(0);
            Some(c)
        }
        _ => None,
    };
    vec![GenRow {
        cells,
        avail,
        early,
    }]
}

fn dosing(course: &Course, site: &SiteCtx, rng: &mut ChaCha8Rng) -> Vec<GenRow> {
    let d = site.dialect;
    course
        .regimens
        .iter()
        .map(|r| {
            let cells = vec![
                site.subject(course, rng),
                Cell::Date(r.start),
                date_or_missing(r.end),
                Cell::Num(r.dose_mg, decimals_of(r.dose_mg)),
                Cell::Num(r.per_day, 0),
                text(d.regimens[usize::from(r.optimal)]),
            ];
            with_open_end(cells, r.start, r.end, 2, site)
        })
        .collect()
}

/// One corticosteroid order before it becomes cells.
struct Order {
    drug: &'static str,
    dose: f64,
    decimals: u8,
    per_kg: bool,
    frequency: &'static str,
    iv: bool,
    start: NaiveDate,
    end: Option<NaiveDate>,
}

pub(crate) const PREDNISONE: &[&str] = &["Prednisone", "prednisone", "PREDNISONE"];
pub(crate) const PREDNISOLONE: &[&str] = &["prednisolone", "Prednisolone", "PREDNISOLONE"];
pub(crate) const METHYLPRED: &[&str] = &[
    "Solu-Medrol",
    "methylpred",
    "Methylprednisolone",
    "SOLU-MEDROL",
];
pub(crate) const DEXAMETHASONE: &[&str] = &["Dexamethasone", "dexamethasone", "Decadron"];
pub(crate) const HYDROCORTISONE: &[&str] = &["hydrocortisone", "Hydrocortisone", "cortisol"];
pub(crate) const QD: &[&str] = &["QD", "qd", "daily", "Daily"];
pub(crate) const BID: &[&str] = &["BID", "bid"];
pub(crate) const TID: &[&str] = &["TID", "tid"];
pub(crate) const QOD: &[&str] = &["QOD", "qod", "every other day"];
pub(crate) const WEEKLY: &[&str] = &["weekly", "Weekly"];
pub(crate) const MG: &[&str] = &["mg", "mg", "MG"];
pub(crate) const MG_PER_KG: &[&str] = &["mg/kg", "mg/kg", "MG/KG"];

fn round_mg(mg: f64) -> (f64, u8) {
    let v = if mg < 5.0 {
        ((mg * 2.0).round() / 2.0).max(0.5)
    } else if mg < 40.0 {
        mg.round()
    } else {
        (mg / 5.0).round() * 5.0
    };
    (v, decimals_of(v))
}

// No two orders of a subject start on the same day, so that dirt in the drug name (part of
// the natural key as written) can never create a key conflict the truth does not expect.
fn start_is_free(orders: &[Order], start: NaiveDate) -> bool {
    orders.iter().all(|o| o.start != start)
}

fn steroid_orders(course: &Course, rng: &mut ChaCha8Rng) -> Vec<Order> {
    let mut orders = Vec::new();
    let last = course.last_visit;
    let earliest = plus(course.birth, 30);
    let treated_from = course.first_dose.unwrap_or(last);

    // The chronic oral chain, tapered on treatment.
    if course.steroid_start > 0.0 {
        let names = if rng.random_bool(0.7) {
            PREDNISONE
        } else {
            PREDNISOLONE
        };
        let per_kg_chain = rng.random_bool(0.2);
        let taper_end = plus(course.taper_start, course.taper_days as i64);
        let mut start = plus(course.enrol, -days(rng, 30, 400)).max(earliest);
        let mut next = course.taper_start;
        loop {
            if next <= start {
                next = plus(start, days(rng, 28, 84));
            }
            let is_last = next >= taper_end || next >= plus(last, -7);
            let mgkg = course.steroid_plan(start);
            let weight = course.weight_kg(start);
            let mut frequency = pick(rng, QD);
            let mut per_admin = mgkg;
            if mgkg * weight >= 20.0 && rng.random_bool(0.3) {
                frequency = pick(rng, BID);
                per_admin = mgkg / 2.0;
            } else if mgkg < 0.15 && rng.random_bool(0.3) {
                frequency = pick(rng, QOD);
                per_admin = mgkg * 2.0;
            }
            let (dose, decimals) = if per_kg_chain {
                (((per_admin * 100.0).round() / 100.0).max(0.01), 2)
            } else {
                round_mg(per_admin * weight)
            };
            let end = if is_last {
                let stops = course.responder && course.steroid_target == 0.0;
                if stops {
                    Some(taper_end.min(last))
                } else {
                    None
                }
            } else if rng.random_bool(0.4) {
                None
            } else if rng.random_bool(0.15) {
                // Overlapping orders: the old one is closed a few days late.
                Some(plus(next, days(rng, 1, 5)).min(last))
            } else {
                Some(plus(next, -1))
            };
            orders.push(Order {
                drug: pick(rng, names),
                dose,
                decimals,
                per_kg: per_kg_chain,
                frequency,
                iv: false,
                start,
                end,
            });
            if is_last {
                // Physiologic hydrocortisone after stopping a long course.
                if let Some(stop) = end
                    && rng.random_bool(0.7)
                {
                    let hc_start = plus(stop, 1);
                    let hc_end = plus(hc_start, days(rng, 90, 180));
                    if hc_start < plus(last, -7) && start_is_free(&orders, hc_start) {
                        orders.push(Order {
                            drug: pick(rng, HYDROCORTISONE),
                            dose: if rng.random_bool(0.5) { 2.5 } else { 5.0 },
                            decimals: 1,
                            per_kg: false,
                            frequency: pick(rng, TID),
                            iv: false,
                            start: hc_start,
                            end: (hc_end < last).then_some(hc_end),
                        });
                    }
                }
                break;
            }
            start = next;
            next = plus(start, days(rng, 28, 84));
        }
    }

    // Methylprednisolone pulses for flares before and early in treatment.
    if course.id.group != Group::Other || rng.random_bool(0.3) {
        let n = rng.random_range(0..=2);
        let window_start = plus(course.enrol, -200).max(earliest);
        let window_end = plus(treated_from, 180).min(plus(last, -10));
        let mut taken: Vec<NaiveDate> = Vec::new();
        for _ in 0..n {
            let span = days_between(window_start, window_end);
            if span < 10 {
                break;
            }
            let start = plus(window_start, days(rng, 0, span));
            if taken.iter().any(|t| days_between(*t, start).abs() < 60)
                || !start_is_free(&orders, start)
            {
                continue;
            }
            taken.push(start);
            let weight = course.weight_kg(start);
            let weekly = rng.random_bool(0.2);
            let end = if weekly {
                plus(start, 7 * days(rng, 4, 8) - 1)
            } else {
                plus(start, 2)
            };
            let per_kg = rng.random_bool(0.4);
            let mgkg = pick(rng, &[10.0f64, 15.0, 20.0, 30.0])
                .min(1000.0 / weight)
                .floor()
                .max(1.0);
            let (dose, decimals) = if per_kg {
                (mgkg, 0)
            } else {
                ((mgkg * weight / 10.0).round().max(1.0) * 10.0, 0)
            };
            orders.push(Order {
                drug: pick(rng, METHYLPRED),
                dose,
                decimals,
                per_kg,
                frequency: if weekly {
                    pick(rng, WEEKLY)
                } else {
                    pick(rng, QD)
                },
                iv: true,
                start,
                end: Some(end.min(last)),
            });
        }
    }

    // An occasional short dexamethasone course.
    if rng.random_bool(0.15) {
        let span = days_between(course.enrol, last).max(1);
        let start = plus(course.enrol, days(rng, 0, span - 1));
        if start < plus(last, -6) && start_is_free(&orders, start) {
            let per_kg = rng.random_bool(0.5);
            let weight = course.weight_kg(start);
            let (dose, decimals) = if per_kg {
                (0.15, 2)
            } else {
                round_mg(0.15 * weight)
            };
            orders.push(Order {
                drug: pick(rng, DEXAMETHASONE),
                dose,
                decimals,
                per_kg,
                frequency: pick(rng, BID),
                iv: rng.random_bool(0.3),
                start,
                end: Some(plus(start, 4)),
            });
        }
    }
    orders.sort_by(|a, b| a.start.cmp(&b.start).then(a.drug.cmp(b.drug)));
    orders
}

fn steroids(course: &Course, site: &SiteCtx, rng: &mut ChaCha8Rng) -> Vec<GenRow> {
    let d = site.dialect;
    steroid_orders(course, rng)
        .into_iter()
        .map(|o| {
            let routes = if o.iv { d.iv_routes } else { d.oral_routes };
            // The last route spelling of a site is its long free-text one: rare.
            let route = if routes.len() > 1 && rng.random_bool(0.08) {
                routes[routes.len() - 1]
            } else {
                routes[rng.random_range(0..routes.len().max(2) - 1)]
            };
            let unit = if o.per_kg {
                pick(rng, MG_PER_KG)
            } else {
                pick(rng, MG)
            };
            let cells = vec![
                site.subject(course, rng),
                text(o.drug),
                Cell::Num(o.dose, o.decimals),
                text(unit),
                text(o.frequency),
                site.maybe_missing(rng, text(route)),
                Cell::Date(o.start),
                date_or_missing(o.end),
            ];
            with_open_end(cells, o.start, o.end, 7, site)
        })
        .collect()
}

fn diary(course: &Course, site: &SiteCtx, rng: &mut ChaCha8Rng) -> Vec<GenRow> {
    let total = days_between(course.enrol, course.last_visit).max(0);
    let mut out = Vec::with_capacity(total as usize + 1);
    let mut flare_left = 0i64;
    let mut flare = 1.0;
    for t in 0..=total {
        let day = plus(course.enrol, t);
        if flare_left > 0 {
            flare_left -= 1;
        } else if rng.random_bool(0.01) {
            flare_left = days(rng, 3, 10);
            flare = uniform(rng, 1.5, 2.5);
        } else {
            flare = 1.0;
        }
        // Patients skip some days.
        if rng.random_bool(0.07) {
            continue;
        }
        let level = course.activity(day) * flare * uniform(rng, 0.7, 1.3);
        let mut cells = Vec::with_capacity(8);
        cells.push(site.subject(course, rng));
        cells.push(Cell::Date(day));
        for w in course.item_weights {
            if site.missing_rate > 0.0 && rng.random_bool(site.missing_rate) {
                cells.push(site.missing(rng));
                continue;
            }
            let mean = level * w * uniform(rng, 0.5, 1.5);
            // Stochastic rounding keeps the mean item score equal to `mean`.
            let score = (mean + rng.random::<f64>()).floor().clamp(0.0, 4.0);
            cells.push(Cell::Int(score as i64));
        }
        out.push(GenRow {
            cells,
            avail: day,
            early: None,
        });
    }
    out
}

fn visits(course: &Course, site: &SiteCtx, rng: &mut ChaCha8Rng) -> Vec<GenRow> {
    let d = site.dialect;
    course
        .visits
        .iter()
        .enumerate()
        .map(|(i, &day)| {
            let cm = course.height_cm(day) + 0.3 * normal(rng);
            let kg = course.weight_kg(day) * (1.0 + 0.01 * normal(rng));
            let height = Cell::Num(cm * d.height_factor, d.height_decimals);
            let (weight, weight_unit) = if d.infant_grams && course.age(day) < 2.0 {
                (Cell::Num((kg * 1000.0).round(), 0), "g")
            } else {
                (
                    Cell::Num(kg * d.weight_factor, d.weight_decimals),
                    pick(rng, d.weight_units),
                )
            };
            let bmd = if i % 4 == 1 && course.age(day) >= 4.0 {
                let treated = course
                    .first_dose
                    .map(|t| days_between(t, day).max(0) as f64 / 365.25)
                    .unwrap_or(0.0);
                Cell::Num(-1.5 + 0.2 * treated + 0.8 * normal(rng), 2)
            } else {
                site.missing(rng)
            };
            let comment = if rng.random_bool(0.08) {
                text(pick(rng, d.comments))
            } else {
                text("")
            };
            let cells = vec![
                site.subject(course, rng),
                Cell::Date(day),
                site.maybe_missing(rng, height),
                text(pick(rng, d.height_units)),
                site.maybe_missing(rng, weight),
                text(weight_unit),
                bmd,
                comment,
            ];
            GenRow {
                cells,
                avail: day,
                early: None,
            }
        })
        .collect()
}

/// A lab value in canonical units: CRP mg/L, IP-10 pg/mL, IFN score, platelets and
/// lymphocytes 10^9/L, hemoglobin g/dL, creatinine mg/dL, BK virus copies/mL.
fn lab_value(analyte: usize, course: &Course, day: NaiveDate, rng: &mut ChaCha8Rng) -> f64 {
    let a = course.activity(day) * uniform(rng, 0.8, 1.25);
    let n = normal(rng);
    match analyte {
        0 => ((0.6 + 20.0 * a.powf(1.5)).ln() + 0.5 * n).exp(),
        1 => {
            let scale = if course.id.group == Group::Candle {
                3500.0
            } else {
                2000.0
            };
            ((120.0 + scale * a).ln() + 0.35 * n).exp()
        }
        2 => (2.0 + 40.0 * a + 4.0 * n).max(0.5),
        3 => (300.0 - 40.0 * a + 60.0 * n).max(20.0),
        4 => (2.2 - 0.6 * a + 0.4 * n).max(0.2),
        5 => (12.5 - 1.2 * a + 0.8 * n).max(6.0),
        6 => ((0.25 + 0.025 * course.age(day)) * (1.0 + 0.1 * n)).max(0.1),
        _ => {
            let treated = course.first_dose.is_some_and(|t| day >= t);
            if treated && rng.random_bool(0.12) {
                ((3000f64).ln() + 1.2 * n).exp().max(600.0)
            } else {
                0.0
            }
        }
    }
}

// Assay limits in canonical units: CRP below 0.5 mg/L, IP-10 above 10000 pg/mL and BK virus
// below 500 copies/mL are reported censored.
fn lab_cell(analyte: usize, v: f64, factor: f64, decimals: u8) -> Cell {
    match analyte {
        0 if v < 0.5 => Cell::Censored('<', 0.5 * factor, decimals),
        1 if v > 10_000.0 => Cell::Censored('>', 10_000.0 * factor, decimals),
        7 if v < 500.0 => Cell::Censored('<', 500.0 * factor, decimals),
        _ => Cell::Num(v * factor, decimals),
    }
}

fn labs(course: &Course, site: &SiteCtx, rng: &mut ChaCha8Rng) -> Vec<GenRow> {
    let d = site.dialect;
    let visits = &course.visits;
    let mut dates: Vec<(NaiveDate, bool)> = Vec::new();
    for (i, &v) in visits.iter().enumerate() {
        dates.push((v, true));
        // A CRP-only draw between visits now and then.
        if let Some(&next) = visits.get(i + 1)
            && days_between(v, next) >= 40
            && rng.random_bool(0.4)
        {
            let mid = plus(v, days_between(v, next) / 2 + days(rng, -10, 10));
            dates.push((mid, false));
        }
    }
    let mut out = Vec::new();
    for (i, (day, full)) in dates.into_iter().enumerate() {
        for (a, style) in d.analytes.iter().enumerate() {
            let wanted = match a {
                0 => true,
                2 => full && i % 2 == 0,
                7 => full && i % 2 == 1,
                _ => full,
            };
            if !wanted {
                continue;
            }
            let v = lab_value(a, course, day, rng);
            let cells = vec![
                site.subject(course, rng),
                Cell::Date(day),
                text(style.name),
                lab_cell(a, v, style.factor, style.decimals),
                text(pick(rng, style.units)),
            ];
            out.push(GenRow {
                cells,
                avail: day,
                early: None,
            });
        }
    }
    out
}

fn questionnaires(course: &Course, site: &SiteCtx, rng: &mut ChaCha8Rng) -> Vec<GenRow> {
    let d = site.dialect;
    let mut out = Vec::new();
    for &day in &course.visits {
        if course.age(day) < 2.0 {
            continue;
        }
        let a = course.activity(day) * uniform(rng, 0.8, 1.25);
        let values = [
            (92.0 - 30.0 * a + 8.0 * normal(rng)).clamp(5.0, 100.0),
            (10.0 + 40.0 * a + 10.0 * normal(rng)).clamp(0.0, 100.0),
            (8.0 + 38.0 * a + 8.0 * normal(rng)).clamp(0.0, 100.0),
        ];
        for (style, v) in d.instruments.iter().zip(values) {
            if !rng.random_bool(0.85) {
                continue;
            }
            let cells = vec![
                site.subject(course, rng),
                Cell::Date(day),
                text(style.name),
                Cell::Num(v * style.factor, style.decimals),
                text(style.unit),
            ];
            out.push(GenRow {
                cells,
                avail: day,
                early: None,
            });
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::generate::course::{Calendar, date};
    use crate::generate::dialect::DIALECTS;
    use rand::SeedableRng;

    fn course(k: usize) -> Course {
        let cal = Calendar::new(18, 3);
        let mut rng = ChaCha8Rng::seed_from_u64(11);
        rng.set_stream(k as u64);
        Course::draw(&cal, k, &mut rng)
    }

    #[test]
    fn steroid_orders_start_on_distinct_days_and_end_after_they_start() {
        for k in 0..18 {
            let c = course(k);
            let mut rng = ChaCha8Rng::seed_from_u64(3);
            let orders = steroid_orders(&c, &mut rng);
            for (i, a) in orders.iter().enumerate() {
                if let Some(e) = a.end {
                    assert!(e >= a.start, "{k}: order ends before it starts");
                    assert!(e <= c.last_visit);
                }
                for b in &orders[i + 1..] {
                    assert_ne!(a.start, b.start, "{k}: two orders start on one day");
                }
            }
        }
    }

    #[test]
    fn open_orders_show_no_end_in_the_first_export() {
        let c = course(0);
        let site = SiteCtx {
            dialect: &DIALECTS[0],
            first_export: plus(c.regimens[0].start, 1),
            missing_rate: 0.0,
        };
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        let rows = dosing(&c, &site, &mut rng);
        let early = rows[0]
            .early
            .as_ref()
            .expect("first regimen changed after the export");
        assert_eq!(early[2], Cell::Missing(0));
        assert!(matches!(rows[0].cells[2], Cell::Date(_)));
    }

    #[test]
    fn first_dates_are_not_before_1990() {
        let floor = date(1990, 1, 1);
        for k in 0..18 {
            let c = course(k);
            let mut rng = ChaCha8Rng::seed_from_u64(9);
            for o in steroid_orders(&c, &mut rng) {
                assert!(o.start >= floor);
            }
        }
    }
}
