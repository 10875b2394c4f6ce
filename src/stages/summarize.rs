//! `summarize`: per subject, phase and parameter, the n, mean, sd, median, quartiles, min and
//! max of an analysis value: the input of a repeated-measures model with phase as a factor.

use polars::prelude::*;
use polars::series::IsSorted;
use serde::Deserialize;

use crate::spec::PipelineSpec;
use crate::stages::{Inputs, Stage, StageCtx, StageOutput};

/// Parameters of a `summarize` stage.
///
/// Long tables give `value:` and `parameter:` (`AVAL`, `PARAMCD`); wide tables (one column
/// per measure, like the daily diary and steroid tables) give `values:` and each column becomes
/// a PARAMCD. Missing values are left out (N counts the non-missing); rows without a phase are
/// left out. SD is the sample SD (n - 1); quartiles interpolate linearly (R type 7).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Summarize {
    /// Grouping columns (default USUBJID, APHASEN, APHASE).
    #[serde(default = "default_by")]
    pub by: Vec<String>,
    /// Long shape: the value column.
    #[serde(default)]
    pub value: Option<String>,
    /// Long shape: the parameter column.
    #[serde(default)]
    pub parameter: Option<String>,
    /// Wide shape: value columns, each summarised as its own parameter.
    #[serde(default)]
    pub values: Vec<String>,
}

fn default_by() -> Vec<String> {
    vec!["USUBJID".into(), "APHASEN".into(), "APHASE".into()]
}

const GROUP: &str = "__group";
const VALUE: &str = "__v";

/// The groups of a table: each row's group number, and one row per group with its keys.
struct Groups {
    /// Group number of each row (null for a row with a missing key: it is left out).
    of_row: Column,
    /// GROUP, then the key columns, one row per group.
    keys: DataFrame,
}

impl Groups {
    /// Groups `table` by `columns`. The keys are compared once per run of equal rows
    /// ([`crate::stages::runs`]): on a table sorted by subject, a daily table of millions of
    /// rows has a few thousand runs, and the statistics are then grouped by one integer.
    fn of(table: &DataFrame, columns: &[String]) -> PolarsResult<Groups> {
        let names: Vec<&str> = columns.iter().map(|c| c.as_str()).collect();
        let (run_of_row, first_rows) = crate::stages::runs(table, &names)?;
        let mut run_keys = table.select(names.iter().copied())?.take(&first_rows)?;
        run_keys.with_column(Column::new(
            "__run".into(),
            (0..first_rows.len() as IdxSize).collect::<Vec<_>>(),
        ))?;
        let complete = all_horizontal(
            names
                .iter()
                .map(|c| col(*c).is_not_null())
                .collect::<Vec<_>>(),
        )?;
        // Runs with one key are one group; the group of each run, in run order.
        let keys = run_keys
            .lazy()
            .filter(complete)
            // Groups numbered in order of their first run: on a table sorted by the keys the
            // group numbers of the rows never go down, and the statistics take each group as
            // one slice of rows ([`Summarize::stats`]).
            .group_by_stable(names.iter().map(|c| col(*c)).collect::<Vec<_>>())
            .agg([col("__run")])
            .with_row_index(GROUP, None)
            .collect()?;
        let group_of_run = keys
            .clone()
            .lazy()
            .select([col(GROUP), col("__run")])
            .explode(
                by_name(["__run"], true, false),
                ExplodeOptions {
                    empty_as_null: false,
                    keep_nulls: false,
                },
            )
            .collect()?;
        let mut lookup: Vec<Option<IdxSize>> = vec![None; first_rows.len()];
        let runs = group_of_run.column("__run")?.idx()?;
        let groups = group_of_run.column(GROUP)?.idx()?;
        for (run, group) in runs.iter().zip(groups.iter()) {
            if let (Some(run), Some(group)) = (run, group) {
                lookup[run as usize] = Some(group);
            }
        }
        let lookup = IdxCa::from_iter_options("__lookup".into(), lookup.into_iter());
        let of_row = lookup
            .take(&run_of_row)?
            .into_series()
            .with_name(GROUP.into());
        Ok(Groups {
            of_row: of_row.into_column(),
            keys: keys.drop("__run")?,
        })
    }
}

impl Summarize {
    /// The statistics of `values` per group (rows with a missing or NaN value left out), with
    /// the group's keys, PARAMCD taken from `parameter`.
    ///
    /// The rows are grouped as slices: ordered by group number (already so on a table sorted
    /// by the keys, else sorted here) and flagged as sorted, polars takes each group as one
    /// run of rows. Grouped by hashing instead, the median and both quartiles would gather
    /// each group's values three times.
    fn stats(groups: &Groups, values: Column, parameter: Expr) -> PolarsResult<LazyFrame> {
        let v = || col(VALUE);
        let rows = DataFrame::new(
            values.len(),
            vec![groups.of_row.clone(), values.with_name(VALUE.into())],
        )?
        .lazy()
        .filter(v().is_not_null().and(v().is_not_nan()))
        .filter(col(GROUP).is_not_null())
        .collect()?;
        let mut rows =
            if crate::stages::non_decreasing(rows.column(GROUP)?.idx()?.into_no_null_iter()) {
                rows
            } else {
                rows.sort([GROUP], SortMultipleOptions::default())?
            };
        let mut group = rows.drop_in_place(GROUP)?;
        group.set_sorted_flag(IsSorted::Ascending);
        rows.insert_column(0, group)?;
        let quartiles = quartiles(rows.column(GROUP)?.idx()?, rows.column(VALUE)?.f64()?)?;
        Ok(rows
            .lazy()
            .group_by([col(GROUP)])
            .agg([
                v().count().cast(DataType::Int64).alias("N"),
                v().mean().alias("MEAN"),
                // Over a slice of rows polars' variance merges partial sums, which leaves an
                // SD of about 1e-15 times the value where all of a group's values are equal
                // (a constant dose): that SD is 0.
                when(v().min().eq(v().max()).and(v().count().gt(lit(1))))
                    .then(lit(0.0))
                    .otherwise(v().std(1))
                    .alias("SD"),
                v().min().alias("MIN"),
                v().max().alias("MAX"),
            ])
            .join(
                quartiles.lazy(),
                [col(GROUP)],
                [col(GROUP)],
                JoinArgs::new(JoinType::Inner),
            )
            .join(
                groups.keys.clone().lazy(),
                [col(GROUP)],
                [col(GROUP)],
                JoinArgs::new(JoinType::Inner),
            )
            .with_column(parameter.alias("PARAMCD")))
    }

    /// One summary per parameter: the long shape groups by its parameter column too; each
    /// column of the wide shape is summarised over the same groups (no long copy of the table
    /// is built).
    fn summaries(&self, table: &DataFrame) -> PolarsResult<Vec<LazyFrame>> {
        let value =
            |name: &str| -> PolarsResult<Column> { table.column(name)?.cast(&DataType::Float64) };
        let mut parts = Vec::new();
        if let (Some(v), Some(p)) = (&self.value, &self.parameter) {
            let mut keys = self.by.clone();
            keys.push(p.clone());
            let mut long = table.select(keys.iter().map(|k| k.as_str()))?;
            long.apply(p.as_str(), |c| {
                c.cast(&DataType::String).unwrap_or_else(|_| c.clone())
            })?;
            let groups = Groups::of(&long, &keys)?;
            parts.push(Self::stats(&groups, value(v)?, col(p.as_str()))?);
        }
        if !self.values.is_empty() {
            let groups = Groups::of(table, &self.by)?;
            for v in &self.values {
                parts.push(Self::stats(&groups, value(v)?, lit(v.clone()))?);
            }
        }
        let mut columns: Vec<Expr> = self.by.iter().map(|b| col(b.as_str())).collect();
        columns.push(col("PARAMCD").cast(DataType::String));
        columns.extend(["N", "MEAN", "SD", "MEDIAN", "Q1", "Q3", "MIN", "MAX"].map(col));
        Ok(parts
            .into_iter()
            .map(|p| p.select(columns.clone()))
            .collect())
    }
}

/// The median and both quartiles of each group's values (`values`, ordered by `group`, none
/// missing or NaN), one row per group: each as polars' quantile with linear interpolation
/// gives it (`quantile`), from one sort of the group's values, where polars' grouped
/// median and quantiles select within a copy of the group's values once for each.
///
/// The rows are cut into blocks of about [`QUARTILE_BLOCK`] rows at group boundaries, and the
/// blocks are summarised on every core, in order: the daily steroid table's summary runs
/// near the end of a run, when little else is left to share the cores with.
fn quartiles(group: &IdxCa, values: &Float64Chunked) -> PolarsResult<DataFrame> {
    quartiles_in_blocks(group, values, QUARTILE_BLOCK)
}

/// [`quartiles`] with blocks of about `block` rows.
fn quartiles_in_blocks(
    group: &IdxCa,
    values: &Float64Chunked,
    block: usize,
) -> PolarsResult<DataFrame> {
    use rayon::prelude::*;
    let (group, values) = (group.rechunk(), values.rechunk());
    let (group, values) = (group.cont_slice()?, values.cont_slice()?);
    let mut cuts = vec![0];
    while let Some(&at) = cuts.last().filter(|&&at| at < group.len()) {
        let probe = at + block.max(1);
        cuts.push(if probe >= group.len() {
            group.len()
        } else {
            run_end(group, probe)
        });
    }
    // Per block: each group's number (from the row where it starts) and its three statistics.
    let blocks: Vec<(Vec<IdxSize>, [Vec<f64>; 3])> = cuts
        .par_windows(2)
        .map(|w| {
            let mut ids = Vec::new();
            let [mut median, mut q1, mut q3] = [Vec::new(), Vec::new(), Vec::new()];
            let mut sorted: Vec<f64> = Vec::new();
            let mut start = w[0];
            while start < w[1] {
                let end = run_end(group, start);
                sorted.clear();
                sorted.extend_from_slice(&values[start..end]);
                sorted.sort_unstable_by(f64::total_cmp);
                ids.push(group[start]);
                median.push(quantile(&sorted, 0.5));
                q1.push(quantile(&sorted, 0.25));
                q3.push(quantile(&sorted, 0.75));
                start = end;
            }
            (ids, [median, q1, q3])
        })
        .collect();
    let ids: Vec<IdxSize> = blocks.iter().flat_map(|b| b.0.iter().copied()).collect();
    let column = |name: &str, k: usize| {
        let all: Vec<f64> = blocks.iter().flat_map(|b| b.1[k].iter().copied()).collect();
        Column::new(name.into(), all)
    };
    DataFrame::new(
        ids.len(),
        vec![
            Column::new(GROUP.into(), ids),
            column("MEDIAN", 0),
            column("Q1", 1),
            column("Q3", 2),
        ],
    )
}

/// Rows in a block of [`quartiles`] (a block ends at the end of a group).
const QUARTILE_BLOCK: usize = 1 << 16;

/// The end of the run of rows of `group[start]`'s group (`group` sorted), found by galloping
/// from `start`: a group of n rows costs about 2 log2 n reads next to it, where a binary
/// search of the whole rest of the column reads far away and misses the cache at each step.
fn run_end(group: &[IdxSize], start: usize) -> usize {
    let g = group[start];
    // group[known - 1] is g; group[start + step] is the next probe.
    let (mut known, mut step) = (start + 1, 1);
    loop {
        let probe = start + step;
        if probe >= group.len() || group[probe] != g {
            let bound = probe.min(group.len());
            return known + group[known..bound].partition_point(|&x| x == g);
        }
        known = probe + 1;
        step *= 2;
    }
}

/// Quantile `q` of `sorted` (ascending, not empty) as polars computes it with linear
/// interpolation (its `quantile_idx` and `linear_interpol`): the value at (n - 1) q, or
/// between the two values around it.
fn quantile(sorted: &[f64], q: f64) -> f64 {
    let n = sorted.len();
    let float_idx = (n as f64 - 1.0) * q;
    let idx = (float_idx as usize).min(n - 1);
    let lower = sorted[idx];
    if idx == float_idx.ceil() as usize {
        return lower;
    }
    let upper = sorted[idx + 1];
    if lower == upper {
        lower
    } else {
        (float_idx - idx as f64) * (upper - lower) + lower
    }
}

impl Stage for Summarize {
    /// With the subject among the groups, each group is one subject's rows.
    fn across_subjects(&self, subject_columns: &[String]) -> Option<String> {
        crate::stages::no_subject_in(&self.by, subject_columns, ("its groups", "hold"))
    }

    fn check(&self, _spec: &PipelineSpec) -> Vec<String> {
        let long = self.value.is_some() || self.parameter.is_some();
        if long && (self.value.is_none() || self.parameter.is_none()) {
            return vec!["the long shape needs both `value` and `parameter`".into()];
        }
        if !long && self.values.is_empty() {
            return vec![
                "give `value` and `parameter` (long table) or `values` (wide table)".into(),
            ];
        }
        Vec::new()
    }

    fn run(&self, _ctx: &StageCtx, inputs: &Inputs) -> anyhow::Result<StageOutput> {
        let table = inputs.first();
        for c in self
            .by
            .iter()
            .chain(self.values.iter())
            .chain(self.value.iter())
            .chain(self.parameter.iter())
        {
            if table.column(c).is_err() {
                anyhow::bail!("the input has no column `{c}`");
            }
        }
        let mut sort: Vec<String> = self.by.clone();
        sort.push("PARAMCD".into());
        let out =
            concat(self.summaries(table)?, UnionArgs::default())?.sort(sort, Default::default());
        Ok(StageOutput::table(out))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stages::tests_support::{ctx_for, strings};

    /// Each group's end, for groups of every length from 1 to 70 (the probes' steps 1, 2,
    /// 4, ... cross each length differently) and at the column's end.
    #[test]
    fn run_end_finds_each_groups_last_row() {
        let lengths: Vec<usize> = (1..=70).chain([1, 200, 1]).collect();
        let group: Vec<IdxSize> = lengths
            .iter()
            .enumerate()
            .flat_map(|(g, &n)| std::iter::repeat_n(g as IdxSize, n))
            .collect();
        let mut start = 0;
        for &n in &lengths {
            assert_eq!(
                run_end(&group, start),
                start + n,
                "the group at row {start}"
            );
            start += n;
        }
        assert_eq!(start, group.len());
    }

    /// The summary of `table` by a stage of parameters `yaml` (checked first).
    fn summarize(yaml: &str, table: DataFrame) -> DataFrame {
        let stage: Summarize = serde_saphyr::from_str(yaml).unwrap();
        assert!(stage.check(&ctx_for(|c| c.spec.clone())).is_empty());
        let inputs = Inputs {
            tables: vec![("daily".into(), table)],
        };
        ctx_for(|c| stage.run(c, &inputs))
            .unwrap()
            .table
            .collect()
            .unwrap()
    }

    #[test]
    fn statistics_per_subject_phase_and_parameter() {
        // Phase 1 diary scores 1, 2, 3, 4 (and a missing day): n 4, mean 2.5,
        // sd sqrt(((1.5^2)*2 + (0.5^2)*2) / 3) = sqrt(5/3) = 1.290994, median 2.5,
        // q1 = 1 + 0.75*(2-1) = 1.75, q3 = 3.25. Rows without a phase are left out.
        let t = df!(
            "USUBJID" => ["C1"; 6],
            "APHASEN" => [Some(1i64), Some(1), Some(1), Some(1), Some(1), None],
            "APHASE" => [Some("pre"), Some("pre"), Some("pre"), Some("pre"), Some("pre"), None],
            "DIARYSCORE" => [Some(1.0), Some(2.0), Some(3.0), Some(4.0), None, Some(9.0)],
        )
        .unwrap();
        let out = summarize("values: [DIARYSCORE]", t);
        assert_eq!(out.height(), 1);
        assert_eq!(strings(&out, "N"), ["4"]);
        assert_eq!(strings(&out, "MEAN"), ["2.5"]);
        let sd: f64 = strings(&out, "SD")[0].parse().unwrap();
        assert!((sd - (5.0f64 / 3.0).sqrt()).abs() < 1e-12);
        assert_eq!(strings(&out, "Q1"), ["1.75"]);
        assert_eq!(strings(&out, "Q3"), ["3.25"]);
        assert_eq!(
            (strings(&out, "MIN"), strings(&out, "MAX")),
            (vec!["1.0".to_string()], vec!["4.0".to_string()])
        );
    }

    #[test]
    fn wide_columns_are_summarised_apart_and_a_column_without_values_gives_no_row() {
        // Phase 1: A = 1, NaN, 3 (NaN is missing: n 2, mean 2); B all missing: no B row.
        // Phase 2: A missing, B = 5: only a B row.
        let t = df!(
            "USUBJID" => ["C1"; 4],
            "APHASEN" => [1i64, 1, 1, 2],
            "APHASE" => ["pre", "pre", "pre", "esc"],
            "A" => [Some(1.0), Some(f64::NAN), Some(3.0), None],
            "B" => [None, None, None, Some(5.0)],
        )
        .unwrap();
        let out = summarize("values: [A, B]", t);
        assert_eq!(strings(&out, "APHASEN"), ["1", "2"]);
        assert_eq!(strings(&out, "PARAMCD"), ["A", "B"]);
        assert_eq!(strings(&out, "N"), ["2", "1"]);
        assert_eq!(strings(&out, "MEAN"), ["2.0", "5.0"]);
        assert_eq!(strings(&out, "MEDIAN"), ["2.0", "5.0"]);
        assert_eq!(strings(&out, "Q1"), ["1.5", "5.0"]);
    }

    #[test]
    fn a_group_of_equal_values_has_an_sd_of_zero_and_a_single_value_none() {
        // Phase 1: 0.44 on 189 days (a constant dose per kg): SD exactly 0, not the 1e-15
        // that merging partial sums leaves. Phase 2: one value: no SD (n - 1 = 0).
        let n = 190;
        let t = df!(
            "USUBJID" => vec!["C1"; n],
            "APHASEN" => (0..n).map(|i| if i < 189 { 1i64 } else { 2 }).collect::<Vec<_>>(),
            "APHASE" => (0..n).map(|i| if i < 189 { "pre" } else { "esc" }).collect::<Vec<_>>(),
            "PREDMGKG" => (0..n).map(|i| if i < 189 { 0.44 } else { 0.5 }).collect::<Vec<f64>>(),
        )
        .unwrap();
        let out = summarize("values: [PREDMGKG]", t);
        assert_eq!(strings(&out, "N"), ["189", "1"]);
        let sd = out.column("SD").unwrap().f64().unwrap().clone();
        assert_eq!(sd.get(0), Some(0.0));
        assert_eq!(sd.get(1), None);
        assert_eq!(strings(&out, "MEDIAN"), ["0.44", "0.5"]);
    }

    /// R type 7 quantile of sorted values.
    fn quantile(sorted: &[f64], p: f64) -> f64 {
        let h = (sorted.len() - 1) as f64 * p;
        let lo = h.floor() as usize;
        let hi = h.ceil() as usize;
        sorted[lo] + (h - lo as f64) * (sorted[hi] - sorted[lo])
    }

    proptest::proptest! {
        /// One sort per group gives the median and quartiles polars' grouped median and
        /// quantiles give, to the bit: groups of one value, of ties, of values drawn from a
        /// wide range, negative and zero; summarised in blocks of any size, cut at groups.
        #[test]
        fn quartiles_are_polars_grouped_quantiles(
            groups in proptest::collection::vec(
                proptest::collection::vec(
                    proptest::prop_oneof![
                        proptest::strategy::Strategy::prop_map(-4i32..5, |v| f64::from(v) / 4.0),
                        proptest::num::f64::NORMAL,
                    ],
                    1..30,
                ),
                1..20,
            ),
            block in 1usize..40,
        ) {
            let group: Vec<IdxSize> = groups
                .iter()
                .enumerate()
                .flat_map(|(g, v)| std::iter::repeat_n(g as IdxSize, v.len()))
                .collect();
            let values: Vec<f64> = groups.concat();
            let mut g = IdxCa::from_vec(GROUP.into(), group);
            g.set_sorted_flag(IsSorted::Ascending);
            let v = Float64Chunked::from_vec(VALUE.into(), values.clone());
            let ours = quartiles_in_blocks(&g, &v, block).unwrap();
            let theirs = df!(GROUP => g.into_series(), VALUE => values)
                .unwrap()
                .lazy()
                .group_by([col(GROUP)])
                .agg([
                    col(VALUE).median().alias("MEDIAN"),
                    col(VALUE).quantile(lit(0.25), QuantileMethod::Linear).alias("Q1"),
                    col(VALUE).quantile(lit(0.75), QuantileMethod::Linear).alias("Q3"),
                ])
                .sort([GROUP], Default::default())
                .collect()
                .unwrap();
            proptest::prop_assert_eq!(ours.height(), groups.len());
            for c in [GROUP, "MEDIAN", "Q1", "Q3"] {
                let bits = |df: &DataFrame| -> Vec<u64> {
                    let s = df.column(c).unwrap().cast(&DataType::Float64).unwrap();
                    s.f64().unwrap().into_no_null_iter().map(f64::to_bits).collect()
                };
                proptest::prop_assert_eq!(bits(&ours), bits(&theirs), "{}", c);
            }
        }

        /// Grouping by runs of equal rows gives, on any row order (sorted, interleaved, keys
        /// missing), the statistics a row-by-row oracle of the rule gives, long and wide.
        #[test]
        fn statistics_match_an_oracle_on_any_row_order(
            rows in proptest::collection::vec(
                (0u8..4, proptest::option::of(1i64..3), 0u8..2,
                 proptest::option::of(0u8..6), proptest::option::of(0u8..6)), 0..40),
            presort in proptest::bool::ANY,
        ) {
            let mut rows = rows;
            if presort {
                rows.sort_by_key(|r| (r.0, r.1, r.2));
            }
            // Subject 3 is missing; a value 5 stands for NaN.
            let subject = |r: &(u8, Option<i64>, u8, Option<u8>, Option<u8>)| {
                ["S1", "S2", "S10"].get(r.0 as usize).copied()
            };
            let value = |v: Option<u8>| v.map(|v| if v == 5 { f64::NAN } else { v as f64 / 2.0 });
            let t = df!(
                "USUBJID" => rows.iter().map(subject).collect::<Vec<_>>(),
                "APHASEN" => rows.iter().map(|r| r.1).collect::<Vec<_>>(),
                "APHASE" => rows.iter().map(|r| r.1.map(|n| format!("phase {n}"))).collect::<Vec<_>>(),
                "PARAMCD" => rows.iter().map(|r| ["HGT", "WGT"][r.2 as usize]).collect::<Vec<_>>(),
                "A" => rows.iter().map(|r| value(r.3)).collect::<Vec<_>>(),
                "B" => rows.iter().map(|r| value(r.4)).collect::<Vec<_>>(),
            )
            .unwrap();
            let wide = summarize("values: [A, B]", t.clone());
            let long = summarize("value: A\nparameter: PARAMCD", t);
            for (out, shape) in [(wide, "wide"), (long, "long")] {
                // The oracle: values per (subject, phase number, parameter), in any order.
                let mut want: std::collections::BTreeMap<(String, i64, String), Vec<f64>> =
                    Default::default();
                for r in &rows {
                    let (Some(s), Some(n)) = (subject(r), r.1) else { continue };
                    let cells = if shape == "wide" {
                        vec![("A", r.3), ("B", r.4)]
                    } else {
                        vec![(["HGT", "WGT"][r.2 as usize], r.3)]
                    };
                    for (p, v) in cells {
                        if let Some(v) = value(v).filter(|v| !v.is_nan()) {
                            want.entry((s.to_string(), n, p.to_string())).or_default().push(v);
                        }
                    }
                }
                proptest::prop_assert_eq!(out.height(), want.len(), "{}", shape);
                let subjects = strings(&out, "USUBJID");
                let phases = strings(&out, "APHASEN");
                let labels = strings(&out, "APHASE");
                let params = strings(&out, "PARAMCD");
                let stat = |c: &str, i: usize| {
                    out.column(c).unwrap().cast(&DataType::Float64).unwrap().f64().unwrap().get(i)
                };
                for i in 0..out.height() {
                    let n: i64 = phases[i].parse().unwrap();
                    proptest::prop_assert_eq!(&labels[i], &format!("phase {n}"));
                    let key = (subjects[i].clone(), n, params[i].clone());
                    let mut v = want[&key].clone();
                    v.sort_by(f64::total_cmp);
                    let len = v.len() as f64;
                    let mean = v.iter().sum::<f64>() / len;
                    let sd = (len > 1.0).then(|| {
                        (v.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (len - 1.0)).sqrt()
                    });
                    let close = |got: Option<f64>, want: Option<f64>| match (got, want) {
                        (Some(g), Some(w)) => (g - w).abs() < 1e-9,
                        (g, w) => g == w,
                    };
                    proptest::prop_assert_eq!(stat("N", i), Some(len), "{:?}", key);
                    for (c, w) in [
                        ("MEAN", Some(mean)),
                        ("SD", sd),
                        ("MEDIAN", Some(quantile(&v, 0.5))),
                        ("Q1", Some(quantile(&v, 0.25))),
                        ("Q3", Some(quantile(&v, 0.75))),
                        ("MIN", Some(v[0])),
                        ("MAX", Some(v[v.len() - 1])),
                    ] {
                        proptest::prop_assert!(close(stat(c, i), w), "{} {:?} {:?} {:?}", c, key, stat(c, i), w);
                    }
                }
            }
        }
    }
}
