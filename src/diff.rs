//! `diff`: two runs' tables (or two Parquet files) compared by key: rows added, removed and
//! changed, per column, with a numeric tolerance and example rows. Equal tables exit 0.

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use polars::prelude::*;

use crate::manifest::Manifest;

/// How to compare.
#[derive(Debug, Clone, Default)]
pub struct DiffOptions {
    /// Key columns for every compared table (default: the table's recorded key).
    pub keys: Vec<String>,
    /// Numbers closer than this (absolute) count as equal.
    pub tolerance: f64,
    /// Example rows shown per kind of difference.
    pub examples: usize,
}

/// One side of a diff: a run folder, or a single Parquet file.
#[derive(Debug, Clone)]
pub enum Side {
    Run {
        dir: PathBuf,
        manifest: Option<Box<Manifest>>,
    },
    File(PathBuf),
}

impl Side {
    /// `current`, `previous` (the run published before `current`), a run id under
    /// `out_dir/runs`, a run folder, or a `.parquet` file.
    pub fn resolve(arg: &str, out_dir: &Path) -> anyhow::Result<Side> {
        let as_path = Path::new(arg);
        if arg.ends_with(".parquet") || as_path.is_file() {
            if !as_path.is_file() {
                bail!("no Parquet file {arg}");
            }
            return Ok(Side::File(as_path.to_path_buf()));
        }
        let dir = match arg {
            "current" => crate::publish::current_run(out_dir)
                .ok_or_else(|| anyhow::anyhow!("no published run in {}", out_dir.display()))?,
            "previous" => previous_run(out_dir)?,
            _ if as_path.is_dir() => as_path.to_path_buf(),
            _ if out_dir.join("runs").join(arg).is_dir() => out_dir.join("runs").join(arg),
            _ => bail!(
                "`{arg}` is neither a run (current, previous, a run id in {}/runs, a run folder) \
                 nor a Parquet file",
                out_dir.display()
            ),
        };
        Ok(Side::Run {
            manifest: Manifest::read(&dir).ok().map(Box::new),
            dir,
        })
    }

    fn shown(&self) -> String {
        match self {
            Side::Run { dir, .. } | Side::File(dir) => dir.display().to_string(),
        }
    }

    /// Table names of a run (from its manifest, else its Parquet files).
    fn tables(&self) -> anyhow::Result<Vec<String>> {
        match self {
            Side::File(p) => Ok(vec![stem(p)]),
            Side::Run {
                manifest: Some(m), ..
            } => Ok(m.tables.iter().map(|t| t.name.clone()).collect()),
            Side::Run { dir, .. } => {
                let mut names: Vec<String> = std::fs::read_dir(dir)
                    .with_context(|| format!("listing {}", dir.display()))?
                    .flatten()
                    .map(|e| e.path())
                    .filter(|p| p.extension().is_some_and(|x| x == "parquet"))
                    .map(|p| stem(&p))
                    .collect();
                names.sort();
                Ok(names)
            }
        }
    }

    fn path_of(&self, table: &str) -> PathBuf {
        match self {
            Side::File(p) => p.clone(),
            Side::Run { dir, .. } => dir.join(format!("{table}.parquet")),
        }
    }

    /// The recorded key of a table: the manifest's, else a manifest beside the file.
    fn key_of(&self, table: &str) -> Option<Vec<String>> {
        let from = |m: &Manifest| {
            m.tables
                .iter()
                .find(|t| t.name == table)
                .map(|t| t.key.clone())
                .filter(|k| !k.is_empty())
                .or_else(|| {
                    m.stage(table)
                        .map(|s| s.sort_by.clone())
                        .filter(|k| !k.is_empty())
                })
        };
        match self {
            Side::Run { manifest, .. } => manifest.as_deref().and_then(from),
            Side::File(p) => p
                .parent()
                .and_then(|d| Manifest::read(d).ok())
                .and_then(|m| from(&m)),
        }
    }
}

fn stem(p: &Path) -> String {
    p.file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// The published run before the one `current` points at.
fn previous_run(out_dir: &Path) -> anyhow::Result<PathBuf> {
    let current = crate::publish::current_run(out_dir)
        .ok_or_else(|| anyhow::anyhow!("no published run in {}", out_dir.display()))?;
    let current_name = current.file_name().map(|n| n.to_os_string());
    let mut runs: Vec<PathBuf> = std::fs::read_dir(out_dir.join("runs"))?
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            let name = p.file_name().map(|n| n.to_string_lossy().into_owned());
            p.is_dir() && name.is_some_and(|n| !n.ends_with(".partial") && !n.ends_with(".failed"))
        })
        .filter(|p| p.join("manifest.json").is_file())
        .collect();
    runs.sort();
    let at = runs
        .iter()
        .position(|p| p.file_name().map(|n| n.to_os_string()) == current_name)
        .unwrap_or(runs.len());
    at.checked_sub(1)
        .and_then(|i| runs.get(i).cloned())
        .ok_or_else(|| anyhow::anyhow!("there is no run before the current one"))
}

/// A row shown as an example.
#[derive(Debug, Clone, PartialEq)]
pub struct Example {
    /// Key column and value.
    pub key: Vec<(String, String)>,
    /// Changed rows: column, value in A, value in B.
    pub changes: Vec<(String, String, String)>,
    /// Added or removed rows: the other columns and their values.
    pub values: Vec<(String, String)>,
}

fn pairs(list: &[(String, String)]) -> serde_json::Value {
    serde_json::Value::Object(
        list.iter()
            .map(|(k, v)| (k.clone(), serde_json::Value::String(v.clone())))
            .collect(),
    )
}

impl Example {
    fn json(&self) -> serde_json::Value {
        let mut o = serde_json::json!({ "key": pairs(&self.key) });
        if !self.changes.is_empty() {
            o["changes"] = self
                .changes
                .iter()
                .map(|(c, a, b)| serde_json::json!({"column": c, "a": a, "b": b}))
                .collect();
        }
        if !self.values.is_empty() {
            o["values"] = pairs(&self.values);
        }
        o
    }
}

/// The comparison of one table.
#[derive(Debug, Clone, PartialEq)]
pub struct TableDiff {
    pub table: String,
    pub key: Vec<String>,
    /// False when the key does not identify rows (repeats are paired in order).
    pub key_unique: bool,
    pub rows_a: u64,
    pub rows_b: u64,
    pub added: u64,
    pub removed: u64,
    pub changed: u64,
    /// Changed rows per column (columns without changes are left out).
    pub columns: Vec<(String, u64)>,
    pub columns_only_in_a: Vec<String>,
    pub columns_only_in_b: Vec<String>,
    /// Column, type in A, type in B.
    pub type_changes: Vec<(String, String, String)>,
    pub examples_added: Vec<Example>,
    pub examples_removed: Vec<Example>,
    pub examples_changed: Vec<Example>,
}

impl TableDiff {
    fn json(&self) -> serde_json::Value {
        let examples = |l: &[Example]| l.iter().map(Example::json).collect::<Vec<_>>();
        serde_json::json!({
            "table": self.table,
            "equal": self.equal(),
            "key": self.key,
            "key_unique": self.key_unique,
            "rows_a": self.rows_a,
            "rows_b": self.rows_b,
            "added": self.added,
            "removed": self.removed,
            "changed": self.changed,
            "changed_per_column": serde_json::Value::Object(
                self.columns.iter().map(|(c, n)| (c.clone(), (*n).into())).collect()
            ),
            "columns_only_in_a": self.columns_only_in_a,
            "columns_only_in_b": self.columns_only_in_b,
            "type_changes": self.type_changes.iter()
                .map(|(c, a, b)| serde_json::json!({"column": c, "a": a, "b": b}))
                .collect::<Vec<_>>(),
            "examples": {
                "added": examples(&self.examples_added),
                "removed": examples(&self.examples_removed),
                "changed": examples(&self.examples_changed),
            },
        })
    }

    pub fn equal(&self) -> bool {
        self.added == 0
            && self.removed == 0
            && self.changed == 0
            && self.columns_only_in_a.is_empty()
            && self.columns_only_in_b.is_empty()
            && self.type_changes.is_empty()
    }
}

/// The comparison of two runs (or two files).
#[derive(Debug, Clone)]
pub struct DiffReport {
    pub a: String,
    pub b: String,
    pub equal: bool,
    pub tables: Vec<TableDiff>,
    pub tables_only_in_a: Vec<String>,
    pub tables_only_in_b: Vec<String>,
}

/// Compares `a` and `b`: every table both have (or only `table`).
pub fn diff(
    a: &Side,
    b: &Side,
    table: Option<&str>,
    opts: &DiffOptions,
) -> anyhow::Result<DiffReport> {
    let files = (matches!(a, Side::File(_)), matches!(b, Side::File(_)));
    let (names, only_a, only_b) = match (files, table) {
        ((true, true), Some(_)) => {
            bail!("TABLE is for comparing runs; two Parquet files are compared as they are")
        }
        ((true, true), None) => (vec![stem(&a.path_of(""))], vec![], vec![]),
        ((true, false), _) | ((false, true), _) => {
            bail!("compare two runs or two Parquet files, not one of each")
        }
        ((false, false), Some(t)) => {
            let (ta, tb) = (a.tables()?, b.tables()?);
            for (side, names) in [(a, &ta), (b, &tb)] {
                if !names.iter().any(|n| n == t) {
                    bail!(
                        "{} has no table `{t}` (it has: {})",
                        side.shown(),
                        names.join(", ")
                    );
                }
            }
            (vec![t.to_string()], vec![], vec![])
        }
        ((false, false), None) => {
            let (ta, tb) = (a.tables()?, b.tables()?);
            let both: Vec<String> = ta.iter().filter(|t| tb.contains(t)).cloned().collect();
            let only_a = ta.iter().filter(|t| !tb.contains(t)).cloned().collect();
            let only_b = tb.iter().filter(|t| !ta.contains(t)).cloned().collect();
            (both, only_a, only_b)
        }
    };
    let mut tables = Vec::new();
    for name in &names {
        let fa = crate::inspect::read_table(&a.path_of(name))?;
        let fb = crate::inspect::read_table(&b.path_of(name))?;
        let key = if !opts.keys.is_empty() {
            opts.keys.clone()
        } else {
            b.key_of(name)
                .or_else(|| a.key_of(name))
                .unwrap_or_default()
        };
        tables.push(
            compare(name, &fa, &fb, &key, opts).with_context(|| format!("comparing `{name}`"))?,
        );
    }
    let equal = tables.iter().all(TableDiff::equal) && only_a.is_empty() && only_b.is_empty();
    Ok(DiffReport {
        a: a.shown(),
        b: b.shown(),
        equal,
        tables,
        tables_only_in_a: only_a,
        tables_only_in_b: only_b,
    })
}

const A: &str = "\u{1}a";
const B: &str = "\u{1}b";
const CH: &str = "\u{1}changed";
const N: &str = "\u{1}n";

fn show(v: AnyValue) -> String {
    match v {
        AnyValue::Null => "null".into(),
        AnyValue::String(s) => s.to_string(),
        AnyValue::StringOwned(s) => s.to_string(),
        other => other.to_string(),
    }
}

/// Compares two frames by `key` (every common column when empty).
pub fn compare(
    table: &str,
    a: &DataFrame,
    b: &DataFrame,
    key: &[String],
    opts: &DiffOptions,
) -> anyhow::Result<TableDiff> {
    let sa = a.schema();
    let sb = b.schema();
    let common: Vec<String> = sa
        .iter_names()
        .filter(|c| sb.contains(c))
        .map(|c| c.to_string())
        .collect();
    let key: Vec<String> = if key.is_empty() {
        common.clone()
    } else {
        key.to_vec()
    };
    for k in &key {
        if !sa.contains(k) || !sb.contains(k) {
            bail!("key column `{k}` is not in both tables (use --key)");
        }
    }
    let values: Vec<String> = common
        .iter()
        .filter(|c| !key.contains(c))
        .cloned()
        .collect();
    let mut type_changes = Vec::new();
    for c in &common {
        let (ta, tb) = (sa.get(c), sb.get(c));
        if let (Some(ta), Some(tb)) = (ta, tb)
            && ta != tb
        {
            type_changes.push((c.clone(), ta.to_string(), tb.to_string()));
        }
    }
    let same_type = |c: &str| sa.get(c) == sb.get(c);
    let numeric = |c: &str| {
        sa.get(c).is_some_and(|t| t.is_primitive_numeric())
            && sb.get(c).is_some_and(|t| t.is_primitive_numeric())
    };

    // Each side: the key (as text where the types differ), a repeat number within the key,
    // and the value columns renamed apart.
    let side = |df: &DataFrame, tag: &str| -> PolarsResult<LazyFrame> {
        let mut cols: Vec<Expr> = key
            .iter()
            .map(|k| {
                if same_type(k) {
                    col(k.as_str())
                } else {
                    col(k.as_str()).cast(DataType::String)
                }
            })
            .collect();
        let part: Vec<Expr> = key.iter().map(|k| col(k.as_str())).collect();
        cols.push(
            int_range(lit(0), len(), 1, DataType::Int64)
                .over(part)?
                .alias(N),
        );
        for v in &values {
            cols.push(col(v.as_str()).alias(format!("{v}{tag}")));
        }
        cols.push(lit(true).alias(format!("{CH}{tag}")));
        Ok(df.clone().lazy().select(cols))
    };
    let mut on: Vec<Expr> = key.iter().map(|k| col(k.as_str())).collect();
    on.push(col(N));
    let mut args = JoinArgs::new(JoinType::Full).with_coalesce(JoinCoalesce::CoalesceColumns);
    args.nulls_equal = true;
    let joined = side(a, A)?.join(side(b, B)?, on.clone(), on, args);
    let in_a = col(format!("{CH}{A}")).is_not_null();
    let in_b = col(format!("{CH}{B}")).is_not_null();
    let mut flags = Vec::new();
    for v in &values {
        let (x, y) = (col(format!("{v}{A}")), col(format!("{v}{B}")));
        let differs = if numeric(v) {
            let (x, y) = (x.cast(DataType::Float64), y.cast(DataType::Float64));
            let close = (x.clone() - y.clone()).abs().lt_eq(lit(opts.tolerance));
            x.clone()
                .is_null()
                .neq(y.clone().is_null())
                .or(x.is_not_null().and(y.is_not_null()).and(close.not()))
        } else if same_type(v) {
            x.neq_missing(y)
        } else {
            x.cast(DataType::String)
                .neq_missing(y.cast(DataType::String))
        };
        flags.push(
            in_a.clone()
                .and(in_b.clone())
                .and(differs)
                .fill_null(lit(false))
                .alias(format!("{v}{CH}")),
        );
    }
    let mut any = lit(false);
    for v in &values {
        any = any.or(col(format!("{v}{CH}")));
    }
    let mut sort: Vec<Expr> = key.iter().map(|k| col(k.as_str())).collect();
    sort.push(col(N));
    let flagged = joined
        .with_columns(flags)
        .with_column(any.alias(CH))
        .sort_by_exprs(sort, SortMultipleOptions::default().with_nulls_last(false))
        .collect()?;

    let count = |e: Expr| -> anyhow::Result<u64> {
        let df = flagged
            .clone()
            .lazy()
            .select([e.cast(DataType::UInt64).sum()])
            .collect()?;
        Ok(df.columns()[0].get(0)?.extract::<u64>().unwrap_or(0))
    };
    let added = count(in_a.clone().not())?;
    let removed = count(in_b.clone().not())?;
    let changed = count(col(CH))?;
    let mut columns = Vec::new();
    for v in &values {
        let n = count(col(format!("{v}{CH}")))?;
        if n > 0 {
            columns.push((v.clone(), n));
        }
    }
    let max_repeat = flagged
        .column(N)?
        .as_materialized_series()
        .max::<i64>()?
        .unwrap_or(0);

    let examples =
        |filter: Expr, tag: Option<&str>, changes: bool| -> anyhow::Result<Vec<Example>> {
            let rows = flagged
                .clone()
                .lazy()
                .filter(filter)
                .limit(opts.examples as IdxSize)
                .collect()?;
            let mut out = Vec::new();
            for i in 0..rows.height() {
                let get = |c: &str| {
                    rows.column(c)
                        .and_then(|c| c.get(i))
                        .map(show)
                        .unwrap_or_default()
                };
                let mut ex = Example {
                    key: key.iter().map(|k| (k.clone(), get(k))).collect(),
                    changes: Vec::new(),
                    values: Vec::new(),
                };
                for v in &values {
                    if changes {
                        if get(&format!("{v}{CH}")) == "true" {
                            ex.changes.push((
                                v.clone(),
                                get(&format!("{v}{A}")),
                                get(&format!("{v}{B}")),
                            ));
                        }
                    } else if let Some(tag) = tag {
                        ex.values.push((v.clone(), get(&format!("{v}{tag}"))));
                    }
                }
                out.push(ex);
            }
            Ok(out)
        };
    Ok(TableDiff {
        table: table.to_string(),
        key: key.clone(),
        key_unique: max_repeat == 0,
        rows_a: a.height() as u64,
        rows_b: b.height() as u64,
        added,
        removed,
        changed,
        columns,
        columns_only_in_a: sa
            .iter_names()
            .filter(|c| !sb.contains(c))
            .map(|c| c.to_string())
            .collect(),
        columns_only_in_b: sb
            .iter_names()
            .filter(|c| !sa.contains(c))
            .map(|c| c.to_string())
            .collect(),
        type_changes,
        examples_added: examples(in_a.clone().not(), Some(B), false)?,
        examples_removed: examples(in_b.clone().not(), Some(A), false)?,
        examples_changed: examples(col(CH), None, true)?,
    })
}

fn key_text(ex: &Example) -> String {
    ex.key
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(" ")
}

impl DiffReport {
    /// The report as JSON (`--format json`).
    pub fn json(&self) -> serde_json::Value {
        serde_json::json!({
            "a": self.a,
            "b": self.b,
            "equal": self.equal,
            "tables": self.tables.iter().map(TableDiff::json).collect::<Vec<_>>(),
            "tables_only_in_a": self.tables_only_in_a,
            "tables_only_in_b": self.tables_only_in_b,
        })
    }

    /// The report for a person.
    pub fn text(&self) -> String {
        let mut s = String::new();
        let differing = self.tables.iter().filter(|t| !t.equal()).count()
            + self.tables_only_in_a.len()
            + self.tables_only_in_b.len();
        s.push_str(&format!("A: {}\nB: {}\n", self.a, self.b));
        if self.equal {
            s.push_str(&format!("equal: {} tables compared\n", self.tables.len()));
        } else {
            let tables = if differing == 1 {
                "table differs"
            } else {
                "tables differ"
            };
            s.push_str(&format!("different: {differing} {tables}\n"));
        }
        for t in &self.tables_only_in_a {
            s.push_str(&format!("table {t}: only in A\n"));
        }
        for t in &self.tables_only_in_b {
            s.push_str(&format!("table {t}: only in B\n"));
        }
        for t in &self.tables {
            if t.equal() {
                s.push_str(&format!("table {}: equal ({} rows)\n", t.table, t.rows_a));
                continue;
            }
            s.push_str(&format!(
                "table {}: {} rows in A, {} in B; {} added, {} removed, {} changed (key: {})\n",
                t.table,
                t.rows_a,
                t.rows_b,
                t.added,
                t.removed,
                t.changed,
                t.key.join(", ")
            ));
            if !t.key_unique {
                s.push_str("  note: the key does not identify rows; repeats are paired in order\n");
            }
            if !t.columns.is_empty() {
                let per: Vec<String> = t.columns.iter().map(|(c, n)| format!("{c} {n}")).collect();
                s.push_str(&format!("  changed per column: {}\n", per.join(", ")));
            }
            for c in &t.columns_only_in_a {
                s.push_str(&format!("  column {c}: only in A\n"));
            }
            for c in &t.columns_only_in_b {
                s.push_str(&format!("  column {c}: only in B\n"));
            }
            for (c, x, y) in &t.type_changes {
                s.push_str(&format!("  column {c}: type {x} in A, {y} in B\n"));
            }
            for ex in &t.examples_changed {
                let ch: Vec<String> = ex
                    .changes
                    .iter()
                    .map(|(c, x, y)| format!("{c} {x} -> {y}"))
                    .collect();
                s.push_str(&format!("  changed {}: {}\n", key_text(ex), ch.join(", ")));
            }
            for (what, list) in [
                ("added", &t.examples_added),
                ("removed", &t.examples_removed),
            ] {
                for ex in list {
                    let vals: Vec<String> =
                        ex.values.iter().map(|(c, v)| format!("{c}={v}")).collect();
                    s.push_str(&format!("  {what} {}: {}\n", key_text(ex), vals.join(" ")));
                }
            }
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stages::tests_support::dates;

    fn opts() -> DiffOptions {
        DiffOptions {
            keys: vec![],
            tolerance: 0.0,
            examples: 5,
        }
    }

    fn keyed(t: &TableDiff) -> Vec<String> {
        t.examples_changed.iter().map(key_text).collect()
    }

    #[test]
    fn rows_added_removed_and_changed_by_key_and_column() {
        let a = df!(
            "id" => ["a", "b", "c", "d"],
            "x" => [1.0, 2.0, 3.0, 4.0],
            "s" => [Some("p"), Some("q"), None, Some("r")],
        )
        .unwrap();
        let b = df!(
            "id" => ["a", "b", "c", "e"],
            "x" => [1.0, 2.5, 3.0, 5.0],
            "s" => [Some("p"), Some("q"), Some("new"), Some("t")],
        )
        .unwrap();
        let t = compare("t", &a, &b, &["id".into()], &opts()).unwrap();
        assert_eq!((t.added, t.removed, t.changed), (1, 1, 2));
        assert_eq!(t.columns, vec![("x".into(), 1), ("s".into(), 1)]);
        assert_eq!(keyed(&t), ["id=b", "id=c"]);
        assert_eq!(
            t.examples_changed[1].changes,
            vec![("s".to_string(), "null".to_string(), "new".to_string())]
        );
        assert_eq!(key_text(&t.examples_added[0]), "id=e");
        assert_eq!(key_text(&t.examples_removed[0]), "id=d");
        assert!(!t.equal() && t.key_unique);
    }

    #[test]
    fn a_tolerance_hides_small_numeric_differences() {
        let a = df!("id" => [1i64, 2], "x" => [1.0, 2.0]).unwrap();
        let b = df!("id" => [1i64, 2], "x" => [1.0 + 1e-12, 2.1]).unwrap();
        let exact = compare("t", &a, &b, &["id".into()], &opts()).unwrap();
        assert_eq!(exact.changed, 2);
        let loose = DiffOptions {
            tolerance: 1e-9,
            ..opts()
        };
        let t = compare("t", &a, &b, &["id".into()], &loose).unwrap();
        assert_eq!((t.changed, keyed(&t)), (1, vec!["id=2".to_string()]));
    }

    #[test]
    fn equal_tables_and_dates_and_repeated_keys() {
        let a = df!("id" => ["a", "a"], "d" => dates(&["2020-01-01", "2020-01-02"])).unwrap();
        let t = compare("t", &a, &a.clone(), &["id".into()], &opts()).unwrap();
        assert!(t.equal(), "{t:?}");
        assert!(!t.key_unique);
        let b = df!("id" => ["a", "a"], "d" => dates(&["2020-01-01", "2020-01-03"])).unwrap();
        let t = compare("t", &a, &b, &["id".into()], &opts()).unwrap();
        assert_eq!(t.changed, 1);
        assert_eq!(
            t.examples_changed[0].changes,
            vec![("d".into(), "2020-01-02".into(), "2020-01-03".into())]
        );
    }

    #[test]
    fn without_a_key_rows_are_compared_whole() {
        let a = df!("x" => [1i64, 2, 2]).unwrap();
        let b = df!("x" => [2i64, 2, 3]).unwrap();
        let t = compare("t", &a, &b, &[], &opts()).unwrap();
        assert_eq!((t.added, t.removed, t.changed), (1, 1, 0));
    }

    #[test]
    fn schema_changes_are_differences_and_a_missing_key_is_an_error() {
        let a = df!("id" => [1i64], "x" => [1i64]).unwrap();
        let b = df!("id" => [1i64], "x" => [1.0], "y" => [0i64]).unwrap();
        let t = compare("t", &a, &b, &["id".into()], &opts()).unwrap();
        assert_eq!(t.changed, 0, "1 and 1.0 are the same number");
        assert_eq!(t.columns_only_in_b, ["y"]);
        assert_eq!(t.type_changes.len(), 1);
        assert!(!t.equal());
        assert!(compare("t", &a, &b, &["nope".into()], &opts()).is_err());
    }
}
