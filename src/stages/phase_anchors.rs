//! `phase_anchors`: one row per subject with its anchor dates (first dose, optimal start,
//! final visit...), each an aggregate (min or max) of date columns over named tables.

use polars::prelude::*;
use serde::Deserialize;

use crate::spec::PipelineSpec;
use crate::stages::{Arity, Inputs, Stage, StageCtx, StageOutput};

/// Parameters of a `phase_anchors` stage.
///
/// ```yaml
/// - name: anchors
///   kind: phase_anchors
///   inputs: [subjects, dosing, visits]
///   subjects: subjects            # every subject gets a row, even with no events (and so
///                                 # does a subject with events but no subjects row)
///   subject: subject              # subject id column, in every input
///   anchors:
///     - {name: TRTSDT, agg: min, from: [{table: dosing, column: start}]}
///     - {name: OPTSDT, agg: min, from: [{table: dosing, column: start, filter: "regimen = 'optimal'"}]}
///     - {name: LSTVSTDT, agg: max, from: [{table: visits, column: date}]}
/// ```
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PhaseAnchors {
    /// Input listing every subject.
    pub subjects: String,
    /// Subject id column in every input (the output names it USUBJID).
    #[serde(default = "default_subject")]
    pub subject: String,
    /// Anchor dates, in output column order.
    pub anchors: Vec<Anchor>,
}

fn default_subject() -> String {
    "subject".into()
}

/// One anchor date: an aggregate of date columns over one or more tables.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Anchor {
    /// Output column name (e.g. TRTSDT).
    pub name: String,
    /// `min` (earliest) or `max` (latest).
    pub agg: String,
    /// The date columns it is taken over.
    pub from: Vec<AnchorSource>,
}

/// A date column of an input table, optionally filtered.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AnchorSource {
    pub table: String,
    pub column: String,
    /// SQL condition on the table's rows, e.g. `regimen = 'optimal'`.
    #[serde(default)]
    pub filter: Option<String>,
}

impl Stage for PhaseAnchors {
    /// Each subject's dates, from that subject's rows.
    fn across_subjects(&self, _subject_columns: &[String]) -> Option<String> {
        None
    }

    /// The subject column and the anchors' date columns of `input`; all of it when an anchor
    /// filters its rows (the filter may name any column).
    fn reads_columns(&self, input: &str) -> Option<Vec<String>> {
        let mut columns = vec![self.subject.clone()];
        for f in self.anchors.iter().flat_map(|a| &a.from) {
            if f.table == input {
                if f.filter.is_some() {
                    return None;
                }
                if !columns.contains(&f.column) {
                    columns.push(f.column.clone());
                }
            }
        }
        Some(columns)
    }

    fn arity(&self) -> Arity {
        Arity::AtLeastOne
    }

    fn check(&self, _spec: &PipelineSpec) -> Vec<String> {
        let mut out = Vec::new();
        for a in &self.anchors {
            if a.agg != "min" && a.agg != "max" {
                out.push(format!(
                    "anchor `{}`: agg must be `min` or `max`, not `{}`",
                    a.name, a.agg
                ));
            }
            if a.from.is_empty() {
                out.push(format!("anchor `{}` has no `from` columns", a.name));
            }
            for f in &a.from {
                if let Some(sql) = &f.filter
                    && let Err(e) = polars::sql::sql_expr(sql)
                {
                    out.push(format!(
                        "anchor `{}`: filter `{sql}` is not valid SQL: {e}",
                        a.name
                    ));
                }
            }
        }
        out
    }

    fn run(&self, _ctx: &StageCtx, inputs: &Inputs) -> anyhow::Result<StageOutput> {
        let table = |name: &str| {
            inputs.get(name).ok_or_else(|| {
                anyhow::anyhow!("`{name}` is not one of this stage's inputs; add it to `inputs:`")
            })
        };
        let subj = self.subject.as_str();
        // Every subject of the subjects table, and every subject with a row in an anchor's
        // table: a subject whose demographics row was rejected still has its records phased.
        // Each table is taken a run of rows of one subject at a time (`per_run`), so a daily
        // table of millions of rows sorted by subject is a few thousand rows here.
        // The runs of a table (its first rows) are found once and serve every anchor that
        // reads the whole table; a filtered table has runs of its own.
        let mut known: std::collections::HashMap<String, IdxCa> = Default::default();
        let mut runs_of = |name: &str| -> anyhow::Result<IdxCa> {
            if let Some(first_rows) = known.get(name) {
                return Ok(first_rows.clone());
            }
            let first_rows = crate::stages::run_starts(&table(name)?.select([subj])?, &[subj])?;
            known.insert(name.to_string(), first_rows.clone());
            Ok(first_rows)
        };
        let mut tables: Vec<&str> = vec![&self.subjects];
        for f in self.anchors.iter().flat_map(|a| &a.from) {
            if !tables.contains(&f.table.as_str()) {
                tables.push(&f.table);
            }
        }
        let mut ids = Vec::new();
        for name in tables {
            let first_rows = runs_of(name)?;
            ids.push(per_run(table(name)?.clone().lazy(), subj, None, Some(first_rows))?.lazy());
        }
        let mut out = concat(ids, UnionArgs::default())?
            .filter(col("USUBJID").is_not_null())
            .select([col("USUBJID")])
            .unique_stable(None, UniqueKeepStrategy::First);
        for a in &self.anchors {
            let latest = a.agg != "min";
            let mut parts = Vec::new();
            for f in &a.from {
                let mut lf = table(&f.table)?.clone().lazy();
                let first_rows = match &f.filter {
                    Some(sql) => {
                        lf = lf.filter(polars::sql::sql_expr(sql)?);
                        None
                    }
                    None => Some(runs_of(&f.table)?),
                };
                parts.push(per_run(lf, subj, Some((&f.column, latest)), first_rows)?.lazy());
            }
            let all = concat(parts, UnionArgs::default())?;
            let agg = if latest {
                col("__d").max()
            } else {
                col("__d").min()
            };
            let per_subject = all
                .group_by([col("USUBJID")])
                .agg([agg.alias(a.name.as_str())]);
            out = out.join(
                per_subject,
                [col("USUBJID")],
                [col("USUBJID")],
                JoinArgs::new(JoinType::Left),
            );
        }
        Ok(StageOutput::table(
            out.sort(["USUBJID"], Default::default()),
        ))
    }
}

/// `rows`' subject column (`subject`, as USUBJID) with, when `date` is given, its date column
/// (as __d), one row per run of consecutive rows of one subject ([`crate::stages::run_starts`]): the
/// run's earliest date, or its latest when the flag is set (missing dates left out, as the
/// anchors' aggregates leave them out). The anchors are then aggregated over these rows,
/// which give every subject the same earliest and latest date as all of its rows.
///
/// `first_rows`: the runs' first rows when they are known (the rows are a whole table's, whose
/// runs were found before), else they are found here.
fn per_run(
    rows: LazyFrame,
    subject: &str,
    date: Option<(&str, bool)>,
    first_rows: Option<IdxCa>,
) -> PolarsResult<DataFrame> {
    let mut columns = vec![col(subject).alias("USUBJID")];
    if let Some((date, _)) = date {
        columns.push(col(date).cast(DataType::Date).alias("__d"));
    }
    let rows = rows.select(columns).collect()?;
    let first_rows = match first_rows {
        Some(first_rows) => first_rows,
        None => crate::stages::run_starts(&rows, &["USUBJID"])?,
    };
    let subjects = rows.column("USUBJID")?.take(&first_rows)?;
    let Some((_, latest)) = date else {
        return DataFrame::new(first_rows.len(), vec![subjects]);
    };
    let spans = crate::stages::run_spans(&first_rows, rows.height());
    let groups = GroupsType::new_slice(spans, false, true);
    let dates = rows.column("__d")?;
    // SAFETY: the slices are the runs of `rows`, within its rows.
    let reduced = unsafe {
        if latest {
            dates.agg_max(&groups)
        } else {
            dates.agg_min(&groups)
        }
    };
    DataFrame::new(
        subjects.len(),
        vec![subjects, reduced.with_name("__d".into())],
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stages::tests_support::{ctx_for, dates, strings};

    #[test]
    fn anchors_are_aggregates_with_filters_and_every_subject_gets_a_row() {
        let subjects = df!("subject" => ["C1", "C2", "S1"]).unwrap();
        let dosing = df!(
            "subject" => ["C1", "C1", "C1", "C2"],
            "start" => dates(&["2012-01-10", "2012-03-01", "2012-06-01", "2013-01-01"]),
            "regimen" => ["escalation", "optimal", "optimal", "escalation"],
        )
        .unwrap();
        // O9 has visits but no subjects row (its demographics row was rejected).
        let visits = df!(
            "subject" => ["C1", "C1", "C2", "S1", "O9"],
            "date" => dates(&["2011-12-01", "2015-05-05", "2014-01-01", "2013-02-02", "2014-04-04"]),
        )
        .unwrap();
        let yaml = "subjects: subjects\nanchors:\n  - {name: TRTSDT, agg: min, from: [{table: dosing, column: start}]}\n  - {name: OPTSDT, agg: min, from: [{table: dosing, column: start, filter: \"regimen = 'optimal'\"}]}\n  - {name: LSTVSTDT, agg: max, from: [{table: visits, column: date}]}\n";
        let stage: PhaseAnchors = serde_saphyr::from_str(yaml).unwrap();
        let inputs = Inputs {
            tables: vec![
                ("subjects".into(), subjects),
                ("dosing".into(), dosing),
                ("visits".into(), visits),
            ],
        };
        let out = ctx_for(|c| stage.run(c, &inputs))
            .unwrap()
            .table
            .collect()
            .unwrap();
        let s = |c: &str| strings(&out, c);
        assert_eq!(s("USUBJID"), ["C1", "C2", "O9", "S1"]);
        assert_eq!(s("TRTSDT"), ["2012-01-10", "2013-01-01", "null", "null"]);
        assert_eq!(s("OPTSDT"), ["2012-03-01", "null", "null", "null"]);
        assert_eq!(
            s("LSTVSTDT"),
            ["2015-05-05", "2014-01-01", "2014-04-04", "2013-02-02"]
        );
    }

    /// An event row: subject (index, or none), day, or none, and kind.
    type Event = (Option<u8>, Option<i32>, bool);

    proptest::proptest! {
        /// Taken a run of one subject's rows at a time, the anchors are those of every row, on
        /// any order of rows (sorted by subject or interleaved), with subjects and dates missing
        /// and a filter.
        #[test]
        fn anchors_match_an_oracle_on_any_row_order(
            events in proptest::collection::vec(
                (proptest::option::of(0u8..5), proptest::option::of(0i32..60), proptest::bool::ANY), 0..60),
            more in proptest::collection::vec(
                (proptest::option::of(0u8..5), proptest::option::of(0i32..60), proptest::bool::ANY), 0..20),
            sort in proptest::bool::ANY,
        ) {
            let names = ["S1", "S2", "S3", "S4", "S5"];
            let mut events = events;
            if sort {
                events.sort_by_key(|e| e.0);
            }
            let table = |rows: &[Event]| {
                let date = Series::new(
                    "date".into(),
                    rows.iter().map(|r| r.1).collect::<Vec<_>>(),
                )
                .cast(&DataType::Date)
                .unwrap();
                df!(
                    "subject" => rows.iter().map(|r| r.0.map(|i| names[i as usize])).collect::<Vec<_>>(),
                    "date" => date,
                    "kind" => rows.iter().map(|r| if r.2 { "a" } else { "b" }).collect::<Vec<_>>(),
                )
                .unwrap()
            };
            let yaml = "subjects: subjects\nanchors:\n  - {name: FIRST, agg: min, from: [{table: ev, column: date}]}\n  - {name: LAST, agg: max, from: [{table: ev, column: date, filter: \"kind = 'a'\"}, {table: more, column: date}]}\n";
            let stage: PhaseAnchors = serde_saphyr::from_str(yaml).unwrap();
            let inputs = Inputs {
                tables: vec![
                    ("subjects".into(), df!("subject" => ["S2"]).unwrap()),
                    ("ev".into(), table(&events)),
                    ("more".into(), table(&more)),
                ],
            };
            let out = ctx_for(|c| stage.run(c, &inputs)).unwrap().table.collect().unwrap();
            // The oracle: every subject named anywhere, its earliest day of `ev` and its latest
            // of `ev` rows of kind a and of `more`.
            let mut want: std::collections::BTreeMap<&str, (Option<i32>, Option<i32>)> =
                std::collections::BTreeMap::new();
            want.insert("S2", (None, None));
            for (rows, is_ev) in [(&events, true), (&more, false)] {
                for r in rows.iter() {
                    let Some(i) = r.0 else { continue };
                    let w = want.entry(names[i as usize]).or_insert((None, None));
                    if let Some(d) = r.1 {
                        if is_ev {
                            w.0 = Some(w.0.map_or(d, |x| x.min(d)));
                        }
                        if !is_ev || r.2 {
                            w.1 = Some(w.1.map_or(d, |x| x.max(d)));
                        }
                    }
                }
            }
            let days = |c: &str| -> Vec<Option<i32>> {
                out.column(c).unwrap().cast(&DataType::Int32).unwrap().i32().unwrap().iter().collect()
            };
            proptest::prop_assert_eq!(strings(&out, "USUBJID"), want.keys().map(|k| k.to_string()).collect::<Vec<_>>());
            proptest::prop_assert_eq!(days("FIRST"), want.values().map(|v| v.0).collect::<Vec<_>>());
            proptest::prop_assert_eq!(days("LAST"), want.values().map(|v| v.1).collect::<Vec<_>>());
        }
    }
}
