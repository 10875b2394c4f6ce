//! Row fate: where each raw file's rows went (accepted, rejected, collapsed, superseded),
//! reconciled from stage summaries, and the engine's own tables (rejects, duplicates, row_fate).

use std::collections::{BTreeMap, HashMap};

use polars::prelude::*;
use polars_arrow::array::{Array, Utf8ViewArray};

use crate::cache::{PartRows, StageSummary};
use crate::error::DataError;
use crate::manifest::FileFate;
use crate::plan::Plan;
use crate::stages::FileRead;

/// Rows per SRCFILE in `df` (optionally only where `filter` holds). Rows of one file mostly
/// sit together (an ingest appends file after file; a table in key order alternates between a
/// few exports), so the rows are counted per run of one view ([`views_counted`]) and the views
/// added up by their text, instead of hashing the file name of every row.
fn counts_by_file(df: &DataFrame, filter: Option<Expr>) -> anyhow::Result<BTreeMap<String, u64>> {
    if df.height() == 0 || df.column("SRCFILE").is_err() {
        return Ok(BTreeMap::new());
    }
    let files = match filter {
        Some(f) => df
            .clone()
            .lazy()
            .filter(f)
            .select([col("SRCFILE")])
            .collect()?,
        None => df.select(["SRCFILE"])?,
    };
    let names = files.column("SRCFILE")?.cast(&DataType::String)?;
    // Counted by the name's text (no copy per view), copied once per file at the end.
    let mut counts: PlHashMap<&str, u64> = PlHashMap::new();
    for chunk in names.str()?.downcast_iter() {
        for (file, n) in views_counted(chunk) {
            *counts.entry(file).or_insert(0) += n;
        }
    }
    let by_file: BTreeMap<String, u64> = counts
        .into_iter()
        .map(|(file, n)| (file.to_string(), n))
        .collect();
    Ok(by_file)
}

/// True when the `SRCFILE` columns of `a` and `b` are the very same arrays (the same views,
/// validity and text buffers: a stage passed its input's column on, as a row-level stage that
/// adds columns does), so that their rows per file are equal without counting them again.
/// False is no claim that they differ.
pub(crate) fn same_files_column(a: &DataFrame, b: &DataFrame) -> bool {
    let column = |df: &DataFrame| {
        df.column("SRCFILE")
            .ok()
            .and_then(Column::as_series)
            .and_then(|s| s.str().ok())
            .cloned()
    };
    let (Some(a), Some(b)) = (column(a), column(b)) else {
        return false;
    };
    let bits = |v: Option<&polars_arrow::bitmap::Bitmap>| {
        v.map(|v| {
            let (bytes, offset, len) = v.as_slice();
            (bytes.as_ptr(), offset, len)
        })
    };
    a.len() == b.len()
        && a.chunks().len() == b.chunks().len()
        && a.downcast_iter().zip(b.downcast_iter()).all(|(x, y)| {
            x.len() == y.len()
                && std::ptr::eq(x.views().as_ptr(), y.views().as_ptr())
                && bits(x.validity()) == bits(y.validity())
                && x.data_buffers().len() == y.data_buffers().len()
                && (x.data_buffers().iter())
                    .zip(y.data_buffers().iter())
                    .all(|(p, q)| std::ptr::eq(p.as_ptr(), q.as_ptr()) && p.len() == q.len())
        })
}

/// The rows of `text` that are not null, counted by their view (a string's length and bytes,
/// or where in the array's buffers they lie): runs of one text are counted in one step, and
/// each run's first view is looked up once. A run goes on while the view is the very same or
/// the text is (a table whose texts were copied one by one, as polars does when it compacts
/// an array's buffers, has a view per row). Equal views are equal texts; one text may have
/// several views (copies in different places), which the caller adds up by text.
fn views_counted(text: &Utf8ViewArray) -> Vec<(&str, u64)> {
    let views = text.views().as_slice();
    let valid = |i: usize| text.validity().is_none_or(|v| v.get_bit(i));
    // Each distinct view: its first row and its count.
    let mut seen: PlHashMap<u128, (usize, u64)> = PlHashMap::new();
    let mut i = 0;
    while i < views.len() {
        let view = views[i].as_u128();
        let run = 1
            + (i + 1..views.len())
                .take_while(|&j| crate::stages::same_text(text, i, j))
                .count();
        let counted = match text.validity() {
            None => run as u64,
            Some(_) => (i..i + run).filter(|&r| valid(r)).count() as u64,
        };
        if counted > 0 {
            seen.entry(view).or_insert((i, 0)).1 += counted;
        }
        i += run;
    }
    seen.into_values()
        .map(|(first, n)| {
            // The first row of a view may be null (a null row's view is any view): the text
            // of a valid row of that view is the same text.
            let row = (first..views.len())
                .find(|&r| valid(r) && views[r].as_u128() == views[first].as_u128())
                .unwrap_or(first);
            (text.value(row), n)
        })
        .collect()
}

/// The summary of a stage output. `accepted_by_file` is counted for row-level stages only;
/// when given (ingest: rows per file are known) it is taken as is.
pub fn summarize(
    table: &DataFrame,
    rejects: Option<&DataFrame>,
    dropped: Option<&DataFrame>,
    row_level: bool,
    files: Vec<FileRead>,
    accepted_by_file: Option<BTreeMap<String, u64>>,
) -> anyhow::Result<StageSummary> {
    let has_srcfile = table.column("SRCFILE").is_ok();
    let accepted_by_file = match accepted_by_file {
        Some(m) => m,
        None if row_level => counts_by_file(table, None)?,
        None => BTreeMap::new(),
    };
    let (collapsed_by_file, superseded_by_file) = match dropped {
        Some(d) if d.height() > 0 => (
            counts_by_file(d, Some(col("FATE").eq(lit("collapsed"))))?,
            counts_by_file(d, Some(col("FATE").eq(lit("superseded"))))?,
        ),
        _ => (BTreeMap::new(), BTreeMap::new()),
    };
    Ok(StageSummary {
        content: None,
        rows: table.height() as u64,
        rejected: rejects.map(|r| r.height() as u64).unwrap_or(0),
        set_aside: dropped.map(|d| d.height() as u64).unwrap_or(0),
        has_srcfile,
        accepted_by_file,
        rejected_by_file: match rejects {
            Some(r) => counts_by_file(r, None)?,
            None => BTreeMap::new(),
        },
        collapsed_by_file,
        superseded_by_file,
        files,
        has_rejects: rejects.is_some(),
        has_dropped: dropped.is_some(),
    })
}

/// Row fate of every input file, following each ingest through its row-level stages.
pub fn row_fate(plan: &Plan, done: &[&StageSummary]) -> anyhow::Result<Vec<FileFate>> {
    let mut out = Vec::new();
    let lineage_child = |i: usize| -> Vec<usize> {
        plan.consumers(i)
            .into_iter()
            .filter(|&j| {
                plan.stages[j].kind.stage().row_level()
                    && plan.stages[j].input_ids.first() == Some(&i)
            })
            .collect()
    };
    for (id, s) in plan.stages.iter().enumerate() {
        let Some(source) = s.kind.stage().reads_source() else {
            continue;
        };
        // Walk to every terminal of the row-level chain, keeping the path.
        let mut stack = vec![vec![id]];
        while let Some(path) = stack.pop() {
            let last = *path.last().unwrap_or(&id);
            let children = lineage_child(last);
            if !children.is_empty() {
                for c in children {
                    let mut p = path.clone();
                    p.push(c);
                    stack.push(p);
                }
                continue;
            }
            let terminal = done[last];
            if terminal.rows > 0 && !terminal.has_srcfile {
                anyhow::bail!(
                    "stage `{}` is row-level but its table has no SRCFILE column",
                    plan.stages[last].name
                );
            }
            let mut rejected: HashMap<&str, u64> = HashMap::new();
            let mut collapsed: HashMap<&str, u64> = HashMap::new();
            let mut superseded: HashMap<&str, u64> = HashMap::new();
            for &p in &path {
                for (f, n) in &done[p].rejected_by_file {
                    *rejected.entry(f).or_default() += n;
                }
                for (f, n) in &done[p].collapsed_by_file {
                    *collapsed.entry(f).or_default() += n;
                }
                for (f, n) in &done[p].superseded_by_file {
                    *superseded.entry(f).or_default() += n;
                }
            }
            for f in &done[id].files {
                let get = |m: &HashMap<&str, u64>| m.get(f.file.as_str()).copied().unwrap_or(0);
                out.push(FileFate {
                    source: source.to_string(),
                    file: f.file.clone(),
                    table: plan.stages[last].name.clone(),
                    read: f.rows,
                    accepted: terminal.accepted_by_file.get(&f.file).copied().unwrap_or(0),
                    rejected: get(&rejected),
                    collapsed: get(&collapsed),
                    superseded: get(&superseded),
                });
            }
        }
    }
    out.sort_by(|a, b| (&a.source, &a.file, &a.table).cmp(&(&b.source, &b.file, &b.table)));
    Ok(out)
}

/// Fails when a file's rows do not reconcile.
pub fn reconcile(fates: &[FileFate]) -> Result<(), DataError> {
    let broken: Vec<String> = fates
        .iter()
        .filter(|f| !f.reconciles())
        .map(|f| {
            format!(
                "{} -> {}: read {} != accepted {} + rejected {} + collapsed {} + superseded {}",
                f.file, f.table, f.read, f.accepted, f.rejected, f.collapsed, f.superseded
            )
        })
        .collect();
    if broken.is_empty() {
        Ok(())
    } else {
        Err(DataError::Reconciliation(broken.join("; ")))
    }
}

/// Every stage's rejects in one table, with STAGE and SOURCE. `rejects` is per stage.
pub fn all_rejects(
    plan: &Plan,
    rejects: &[Option<DataFrame>],
    files: &[&FileRead],
) -> anyhow::Result<DataFrame> {
    let mut parts = Vec::new();
    let file_source: BTreeMap<&str, &str> = files
        .iter()
        .map(|f| (f.file.as_str(), f.source.as_str()))
        .collect();
    for (id, r) in rejects.iter().enumerate() {
        if let Some(r) = r
            && r.height() > 0
        {
            parts.push(
                r.clone()
                    .lazy()
                    .with_column(lit(plan.stages[id].name.clone()).alias("STAGE")),
            );
        }
    }
    let mut table = if parts.is_empty() {
        crate::rejects::empty()?
            .lazy()
            .with_column(lit("").alias("STAGE"))
            .limit(0)
    } else {
        concat(parts, UnionArgs::default())?
    };
    let map = df!(
        "SRCFILE" => file_source.keys().copied().collect::<Vec<_>>(),
        "SOURCE" => file_source.values().copied().collect::<Vec<_>>(),
    )?;
    table = table.join(
        map.lazy(),
        [col("SRCFILE")],
        [col("SRCFILE")],
        JoinArgs::new(JoinType::Left),
    );
    Ok(table
        .select([
            col("SOURCE"),
            col("SRCFILE"),
            col("SRCLINE"),
            col("SITE"),
            col("STAGE"),
            col("COLUMN"),
            col("RAWVALUE"),
            col("RULE"),
            col("REASON"),
        ])
        .sort_by_exprs(
            [col("SRCFILE"), col("SRCLINE"), col("STAGE")],
            SortMultipleOptions::default(),
        )
        .collect()?)
}

/// Every stage's collapsed and superseded rows in one table, sorted by file and line.
///
/// A dedupe sets its rows aside in the order of its input, which an ingest reads file after
/// file: each stage's part is then a few blocks of one file each, lines ascending. When every
/// file is one such block of one part, the blocks are put in file order and joined (slices, no
/// row is compared or copied before the table is written); otherwise the rows are sorted.
/// Either way the order is the same: a raw row is set aside at most once.
pub fn all_dropped(dropped: &[Option<DataFrame>]) -> anyhow::Result<DataFrame> {
    let parts: Vec<&DataFrame> = dropped
        .iter()
        .flatten()
        .filter(|d| d.height() > 0)
        .collect();
    if parts.is_empty() {
        return Ok(df!(
            "SRCFILE" => Vec::<String>::new(),
            "SRCLINE" => Vec::<i64>::new(),
            "SITE" => Vec::<String>::new(),
            "FATE" => Vec::<String>::new(),
            "KEPTFILE" => Vec::<String>::new(),
            "KEPTLINE" => Vec::<i64>::new(),
        )?);
    }
    let keys = parts
        .iter()
        .map(|d| d.select(["SRCFILE", "SRCLINE"]))
        .collect::<PolarsResult<Vec<_>>>()?;
    if let Some(blocks) = file_blocks(&keys)? {
        let mut out = DataFrame::empty_with_schema(parts[0].schema());
        for b in &blocks {
            out.vstack_mut(&parts[b.part].slice(b.start as i64, b.len))?;
        }
        return Ok(out);
    }
    let lazy: Vec<LazyFrame> = parts.iter().map(|d| (*d).clone().lazy()).collect();
    Ok(concat(lazy, UnionArgs::default())?
        .sort_by_exprs(
            [col("SRCFILE"), col("SRCLINE")],
            SortMultipleOptions::default(),
        )
        .collect()?)
}

/// Writes the run's `duplicates` ([`all_dropped`]'s table) to `dest` from every stage's
/// set-aside rows, a file's block at a time when they are in file blocks: a part that is
/// cached is decoded block by block, and no more than a block and a row group of the table
/// are held at once. Its size, blake3 and rows.
pub fn write_dropped(
    parts: Vec<PartRows>,
    dest: &std::path::Path,
    prov: &crate::publish::Provenance,
) -> anyhow::Result<(u64, String, u64)> {
    let parts: Vec<PartRows> = parts.into_iter().filter(|p| p.height() > 0).collect();
    let heights: Vec<usize> = parts.iter().map(PartRows::height).collect();
    let blocks = if parts.is_empty() {
        None
    } else {
        file_blocks_by(&heights, KEY_ROWS, |p, start, len| {
            parts[p]
                .columns_of_rows(&["SRCFILE", "SRCLINE"], start, len)
                .map_err(|e| polars_err!(ComputeError: "{e}"))
        })?
    };
    let Some(blocks) = blocks else {
        // Not in file blocks (or no rows): sorted whole.
        let whole = parts
            .iter()
            .map(|p| p.rows(0, p.height()).map(Some))
            .collect::<Result<Vec<_>, String>>()
            .map_err(anyhow::Error::msg)?;
        let mut table = all_dropped(&whole)?;
        drop(whole);
        let rows = table.height() as u64;
        let (bytes, blake3) = crate::publish::write_parquet(&mut table, dest, prov)?;
        return Ok((bytes, blake3, rows));
    };
    // Each block is decoded [`KEY_ROWS`] rows at a time: the diary's set-aside rows of one
    // file of a 10,000-subject cohort are some 650,000.
    let mut writer: Option<crate::publish::TableWriter> = None;
    for b in &blocks {
        for at in (0..b.len).step_by(KEY_ROWS) {
            let rows = parts[b.part]
                .rows(b.start + at, KEY_ROWS.min(b.len - at))
                .map_err(anyhow::Error::msg)?;
            crate::publish::TableWriter::append(&mut writer, rows, |first| {
                crate::publish::TableWriter::create(dest, prov, first).map(|w| w.holding())
            })?;
        }
    }
    let w = writer.ok_or_else(|| anyhow::anyhow!("set-aside rows without a block"))?;
    let (bytes, blake3, rows) = w.finish()?;
    Ok((bytes, blake3, rows))
}

/// The runs of rows of one file in `df` (by SRCFILE, which must be text): each run's file,
/// first row and length, in row order.
pub(crate) fn file_runs(df: &DataFrame) -> PolarsResult<Vec<(String, usize, usize)>> {
    let first_rows = crate::stages::run_starts(df, &["SRCFILE"])?;
    let files = df.column("SRCFILE")?.str()?;
    Ok(crate::stages::run_spans(&first_rows, df.height())
        .into_iter()
        .map(|[start, len]| {
            let (start, len) = (start as usize, len as usize);
            (files.get(start).unwrap_or_default().to_string(), start, len)
        })
        .collect())
}

/// A run of rows of one file in part `part` of the set-aside rows.
#[derive(Debug, PartialEq)]
struct Block {
    part: usize,
    start: usize,
    len: usize,
}

/// The parts' rows as blocks of one file, in file order, when each block's lines ascend and
/// no file has two blocks; `None` otherwise (a block's order is then not the table's). `keys`
/// holds each part's SRCFILE and SRCLINE.
fn file_blocks(keys: &[DataFrame]) -> PolarsResult<Option<Vec<Block>>> {
    let heights: Vec<usize> = keys.iter().map(DataFrame::height).collect();
    file_blocks_by(&heights, KEY_ROWS, |p, start, len| {
        Ok(keys[p].slice(start as i64, len))
    })
}

/// Rows of set-aside keys [`file_blocks_by`] decodes at a time, and of a block's rows
/// [`write_dropped`] does.
const KEY_ROWS: usize = 1 << 18;

/// [`file_blocks`] of parts of `heights` rows, whose SRCFILE and SRCLINE `keys(part, start,
/// len)` gives `step` rows at a time: a cached part's keys are never decoded whole (the
/// diary's set-aside rows of a 10,000-subject cohort, 4 million, took some 100 MB).
fn file_blocks_by(
    heights: &[usize],
    step: usize,
    keys: impl Fn(usize, usize, usize) -> PolarsResult<DataFrame>,
) -> PolarsResult<Option<Vec<Block>>> {
    let mut blocks: Vec<(String, Block)> = Vec::new();
    for (p, &height) in heights.iter().enumerate() {
        // The part's row before this range: its file and line.
        let mut before: Option<(String, i64)> = None;
        for start in (0..height).step_by(step.max(1)) {
            let part = keys(p, start, step.max(1).min(height - start))?;
            if part.height() == 0 {
                continue;
            }
            match file_blocks_of_range(&part, p, start, before.take(), &mut blocks)? {
                Some(last) => before = Some(last),
                None => return Ok(None),
            }
        }
    }
    blocks.sort_by(|a, b| a.0.cmp(&b.0));
    if blocks.windows(2).any(|w| w[0].0 == w[1].0) {
        return Ok(None);
    }
    Ok(Some(blocks.into_iter().map(|(_, b)| b).collect()))
}

/// Adds to `blocks` the runs of one file of `part` (rows of part `p` from row `start`, the
/// row before them `before`), the first run extending the last block when it goes on with
/// its file. The range's last file and line, or `None` when a file's lines do not ascend or a
/// key is missing.
fn file_blocks_of_range(
    part: &DataFrame,
    p: usize,
    start: usize,
    before: Option<(String, i64)>,
    blocks: &mut Vec<(String, Block)>,
) -> PolarsResult<Option<(String, i64)>> {
    if part.column("SRCFILE")?.null_count() > 0 || part.column("SRCLINE")?.null_count() > 0 {
        return Ok(None);
    }
    let ascending = part
        .clone()
        .lazy()
        .select([col("SRCFILE")
            .neq(col("SRCFILE").shift(lit(1)))
            .or(col("SRCLINE").gt(col("SRCLINE").shift(lit(1))))
            .fill_null(lit(true))
            .all(true)])
        .collect()?;
    if ascending.columns()[0].bool()?.get(0) != Some(true) {
        return Ok(None);
    }
    let lines = part.column("SRCLINE")?.cast(&DataType::Int64)?;
    let lines = lines.i64()?;
    let files = part.column("SRCFILE")?;
    let files = files.str()?;
    let (first_file, first_line) = (files.get(0), lines.get(0));
    let goes_on = match &before {
        Some((file, line)) if first_file == Some(file.as_str()) => {
            if first_line.is_none_or(|l| l <= *line) {
                return Ok(None);
            }
            true
        }
        _ => false,
    };
    for (i, (file, run_start, len)) in file_runs(part)?.into_iter().enumerate() {
        match blocks.last_mut() {
            Some((_, last)) if i == 0 && goes_on => last.len += len,
            _ => blocks.push((
                file,
                Block {
                    part: p,
                    start: start + run_start,
                    len,
                },
            )),
        }
    }
    let at = part.height() - 1;
    Ok(files
        .get(at)
        .zip(lines.get(at))
        .map(|(file, line)| (file.to_string(), line)))
}

/// Files above their source's reject limit.
pub fn over_limit<'a>(plan: &Plan, fates: &'a [FileFate]) -> Vec<(&'a FileFate, f64)> {
    fates
        .iter()
        .filter_map(|f| {
            let src = plan
                .spec
                .sources
                .iter()
                .find(|s| s.value.name == f.source)?;
            let limit = src.value.reject_limit;
            let frac = f.rejected as f64 / f.read.max(1) as f64;
            (f.read > 0 && frac > limit).then_some((f, limit))
        })
        .collect()
}

/// The error for files above their reject limit, with top reasons and examples from `rejects`.
/// Values of `identifying` columns are withheld from the examples.
pub fn reject_limit_error(
    over: &[(&FileFate, f64)],
    rejects: &DataFrame,
    identifying: &[String],
) -> anyhow::Result<anyhow::Error> {
    let mut failures = Vec::new();
    for (f, limit) in over {
        let frac = f.rejected as f64 / f.read.max(1) as f64;
        let mine = rejects
            .clone()
            .lazy()
            .filter(col("SRCFILE").eq(lit(f.file.clone())));
        let top = mine
            .clone()
            .group_by([col("RULE")])
            .agg([len().alias("n")])
            .sort_by_exprs(
                [col("n"), col("RULE")],
                SortMultipleOptions::default().with_order_descending_multi([true, false]),
            )
            .limit(3)
            .collect()?;
        let rules = top.column("RULE")?.str()?.clone();
        let ns = top.column("n")?.cast(&DataType::UInt64)?;
        let reasons: Vec<String> = rules
            .iter()
            .zip(ns.u64()?.iter())
            .map(|(r, n)| format!("{} ({})", r.unwrap_or("?"), n.unwrap_or(0)))
            .collect();
        let ex = mine.limit(3).collect()?;
        let mut examples = Vec::new();
        for i in 0..ex.height() {
            let get = |c: &str| {
                ex.column(c)
                    .ok()
                    .and_then(|c| c.get(i).ok())
                    .map(|v| v.to_string())
                    .unwrap_or_default()
            };
            let mut reason = get("REASON").trim_matches('"').to_string();
            // Stages may quote the raw value in REASON; a value of an identifying column
            // (or of a key holding one) stays out of the message.
            let raw = get("RAWVALUE").trim_matches('"').to_string();
            let identifying = get("COLUMN")
                .trim_matches('"')
                .split('+')
                .any(|c| identifying.iter().any(|i| i == c));
            if identifying && !raw.is_empty() {
                reason = reason.replace(&raw, "<withheld>");
            }
            examples.push(format!("line {}: {reason}", get("SRCLINE")));
        }
        failures.push(format!(
            "{}: {} of {} rows rejected ({:.1}%), above the limit of {:.1}% for source `{}`\n  top reasons: {}\n  examples:\n    {}",
            f.file,
            f.rejected,
            f.read,
            100.0 * frac,
            100.0 * limit,
            f.source,
            reasons.join(", "),
            examples.join("\n    ")
        ));
    }
    failures.dedup();
    Ok(DataError::RejectLimit(format!(
        "reject limit exceeded, nothing published:\n{}",
        failures.join("\n")
    ))
    .into())
}

/// The `row_fate` table.
pub fn fate_table(fates: &[FileFate]) -> anyhow::Result<DataFrame> {
    Ok(df!(
        "SOURCE" => fates.iter().map(|f| f.source.clone()).collect::<Vec<_>>(),
        "SRCFILE" => fates.iter().map(|f| f.file.clone()).collect::<Vec<_>>(),
        "TABLE" => fates.iter().map(|f| f.table.clone()).collect::<Vec<_>>(),
        "READ" => fates.iter().map(|f| f.read).collect::<Vec<_>>(),
        "ACCEPTED" => fates.iter().map(|f| f.accepted).collect::<Vec<_>>(),
        "REJECTED" => fates.iter().map(|f| f.rejected).collect::<Vec<_>>(),
        "COLLAPSED" => fates.iter().map(|f| f.collapsed).collect::<Vec<_>>(),
        "SUPERSEDED" => fates.iter().map(|f| f.superseded).collect::<Vec<_>>(),
    )?)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A table whose SRCFILE column was passed on (columns added, a clone) has the same
    /// column; a reordered, shortened or rebuilt one does not count as the same.
    #[test]
    fn a_files_column_passed_on_is_the_same_and_a_copy_is_not() {
        let t = df!(
            "SRCFILE" => [Some("s/a_long_file_name.csv"), None, Some("s/b.csv")],
            "SRCLINE" => [2i64, 3, 2],
        )
        .unwrap();
        let mut added = t.clone();
        added
            .hstack_mut(&[Column::new("X".into(), [1i32, 2, 3])])
            .unwrap();
        assert!(same_files_column(&t, &added));
        assert!(same_files_column(&t, &t.select(["SRCFILE"]).unwrap()));
        let reordered = t.take(&IdxCa::from_vec("r".into(), vec![2, 1, 0])).unwrap();
        assert!(!same_files_column(&t, &reordered));
        assert!(!same_files_column(&t, &t.slice(0, 2)));
        let rebuilt = df!(
            "SRCFILE" => [Some("s/a_long_file_name.csv"), None, Some("s/b.csv")],
        )
        .unwrap();
        assert!(!same_files_column(&t, &rebuilt));
        assert!(!same_files_column(&t, &df!("SRCLINE" => [1i64]).unwrap()));
    }

    proptest::proptest! {
        /// The set-aside rows of several stages come out sorted by file and line whatever the
        /// order of each part: by joining file blocks when the parts are made of them, by
        /// sorting otherwise.
        #[test]
        fn set_aside_rows_come_out_sorted_by_file_and_line(
            rows in proptest::collection::btree_map((0usize..5, 2i64..40), 0usize..3, 0..60),
            in_blocks in proptest::bool::ANY,
            file_order in proptest::sample::subsequence(vec![3usize, 0, 4, 1, 2], 5),
        ) {
            let files = ["s/b.csv", "s/a.csv", "t/a.csv", "s/c.csv", "r/z.csv"];
            let mut parts = Vec::new();
            for part in 0..3 {
                // In blocks, each file belongs to one stage (as each file to one source).
                let of_part = |&(&(f, _), &p): &(&(usize, i64), &usize)| {
                    if in_blocks { f % 3 == part } else { p == part }
                };
                let mut mine: Vec<(usize, i64)> =
                    rows.iter().filter(of_part).map(|(k, _)| *k).collect();
                if in_blocks {
                    // File after file in an arbitrary (export) order, lines ascending.
                    mine.sort_by_key(|(f, l)| (file_order.iter().position(|x| x == f), *l));
                } else {
                    mine.sort_by_key(|(f, l)| (l % 7, *f));
                }
                parts.push(Some(df!(
                    "SRCFILE" => mine.iter().map(|(f, _)| files[*f]).collect::<Vec<_>>(),
                    "SRCLINE" => mine.iter().map(|(_, l)| *l).collect::<Vec<_>>(),
                    "SITE" => mine.iter().map(|_| "s").collect::<Vec<_>>(),
                    "FATE" => mine.iter().map(|_| "collapsed").collect::<Vec<_>>(),
                    "KEPTFILE" => mine.iter().map(|(f, _)| files[*f]).collect::<Vec<_>>(),
                    "KEPTLINE" => mine.iter().map(|(_, l)| l + 100).collect::<Vec<_>>(),
                ).unwrap()));
            }
            let got = all_dropped(&parts).unwrap();
            let mut want: Vec<(&str, i64)> = rows.keys().map(|(f, l)| (files[*f], *l)).collect();
            want.sort();
            let got_rows: Vec<(String, i64)> = got
                .column("SRCFILE").unwrap().str().unwrap().iter().flatten()
                .zip(got.column("SRCLINE").unwrap().i64().unwrap().into_no_null_iter())
                .map(|(f, l)| (f.to_string(), l))
                .collect();
            let want: Vec<(String, i64)> = want.into_iter().map(|(f, l)| (f.to_string(), l)).collect();
            proptest::prop_assert_eq!(got_rows, want);
            // Each row keeps its own kept line.
            let kept: Vec<i64> = got.column("KEPTLINE").unwrap().i64().unwrap().into_no_null_iter().collect();
            let lines: Vec<i64> = got.column("SRCLINE").unwrap().i64().unwrap().into_no_null_iter().collect();
            proptest::prop_assert!(kept.iter().zip(&lines).all(|(k, l)| *k == l + 100));
        }
    }

    #[test]
    fn duplicates_written_block_by_block_are_the_table_made_whole() {
        let dir = tempfile::tempdir().unwrap();
        let prov = crate::publish::Provenance {
            pipeline: "p".into(),
            pipeline_hash: "h".into(),
            table: "duplicates".into(),
            stage_fingerprint: "fp".into(),
            engine_version: "v".into(),
            identifying: Vec::new(),
        };
        let part = |files: &[&str], lines: &[i64]| {
            df!(
                "SRCFILE" => files,
                "SRCLINE" => lines,
                "SITE" => files.iter().map(|_| "s").collect::<Vec<_>>(),
                "FATE" => files.iter().map(|_| "collapsed").collect::<Vec<_>>(),
                "KEPTFILE" => files,
                "KEPTLINE" => lines.iter().map(|l| l + 100).collect::<Vec<_>>(),
            )
            .unwrap()
        };
        // In file blocks (written a block at a time), then not (sorted whole).
        let a = part(&["s/b", "s/b", "s/a"], &[2, 5, 3]);
        let b = part(&["t/c", "r/d"], &[4, 2]);
        let c = part(&["s/a", "r/d"], &[9, 1]);
        for parts in [vec![a.clone(), b.clone()], vec![a, b, c]] {
            let want = all_dropped(&parts.iter().cloned().map(Some).collect::<Vec<_>>()).unwrap();
            let dest = dir.path().join("duplicates.parquet");
            let rows = parts.into_iter().map(PartRows::Table).collect();
            let (bytes, blake3, n) = write_dropped(rows, &dest, &prov).unwrap();
            assert_eq!(n, want.height() as u64);
            assert_eq!(bytes, std::fs::metadata(&dest).unwrap().len());
            assert_eq!(crate::publish::hash_file(&dest).unwrap().1, blake3);
            let got = ParquetReader::new(std::fs::File::open(&dest).unwrap())
                .finish()
                .unwrap();
            assert!(got.equals(&want));
        }
        // No set-aside rows: the empty table.
        let dest = dir.path().join("none.parquet");
        let (_, _, n) = write_dropped(Vec::new(), &dest, &prov).unwrap();
        assert_eq!(n, 0);
        let got = ParquetReader::new(std::fs::File::open(&dest).unwrap())
            .finish()
            .unwrap();
        assert_eq!(
            got.get_column_names(),
            ["SRCFILE", "SRCLINE", "SITE", "FATE", "KEPTFILE", "KEPTLINE"]
        );
    }

    #[test]
    fn parts_made_of_file_blocks_are_joined_without_sorting() {
        let part =
            |files: &[&str], lines: &[i64]| df!("SRCFILE" => files, "SRCLINE" => lines).unwrap();
        let a = part(&["s/b", "s/b", "s/a"], &[2, 5, 3]);
        let b = part(&["t/c", "r/d"], &[4, 2]);
        let blocks = file_blocks(&[a.clone(), b.clone()])
            .unwrap()
            .expect("file blocks");
        let block = |part, start, len| Block { part, start, len };
        // r/d, s/a, s/b, t/c
        assert_eq!(
            blocks,
            [
                block(1, 1, 1),
                block(0, 2, 1),
                block(0, 0, 2),
                block(1, 0, 1)
            ]
        );
        // Lines out of order in a block, or one file in two blocks: not blocks.
        let c = part(&["s/b", "s/b"], &[5, 2]);
        assert!(file_blocks(std::slice::from_ref(&c)).unwrap().is_none());
        let d = part(&["s/a"], &[9]);
        assert!(file_blocks(&[a.clone(), d.clone()]).unwrap().is_none());
        // Keys read a few rows at a time give the same blocks, or the same refusal: a block
        // going on across ranges is one block, a line falling across them is refused.
        let e = part(&["s/b", "s/b", "s/b", "s/a", "s/a"], &[1, 4, 6, 2, 3]);
        let f = part(&["t/a", "t/a", "t/a"], &[3, 3, 4]);
        let g = part(&["u/a", "u/b", "u/b"], &[1, 2, 1]);
        for parts in [
            vec![a.clone(), b.clone()],
            vec![e.clone()],
            vec![e.clone(), b.clone()],
            vec![c.clone()],
            vec![a.clone(), d.clone()],
            vec![f.clone()],
            vec![g.clone()],
            vec![e.clone(), e.clone()],
        ] {
            let heights: Vec<usize> = parts.iter().map(DataFrame::height).collect();
            let whole = file_blocks(&parts).unwrap();
            for step in 1..=5 {
                let by = file_blocks_by(&heights, step, |p, start, len| {
                    Ok(parts[p].slice(start as i64, len))
                })
                .unwrap();
                assert_eq!(by, whole, "step {step}");
            }
        }
        let e_blocks = file_blocks(&[e]).unwrap().expect("file blocks");
        assert_eq!(e_blocks, [block(0, 3, 2), block(0, 0, 3)]);
    }

    #[test]
    fn counts_per_file_add_up_runs_of_a_file_wherever_they_are() {
        // Files interleaved (a table in key order), a missing file name, and a filter.
        let df = df!(
            "SRCFILE" => [Some("a"), Some("a"), Some("b"), None, Some("a"), Some("b"), Some("b")],
            "FATE" => ["x", "y", "x", "x", "x", "y", "x"],
        )
        .unwrap();
        let all = counts_by_file(&df, None).unwrap();
        assert_eq!(all, BTreeMap::from([("a".into(), 3), ("b".into(), 3)]));
        let x = counts_by_file(&df, Some(col("FATE").eq(lit("x")))).unwrap();
        assert_eq!(x, BTreeMap::from([("a".into(), 2), ("b".into(), 2)]));
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(128))]
        /// Counts by view against a plain count of every row: names short enough to sit in
        /// the view and longer ones, nulls, runs, and the same names in other chunks and
        /// buffers (pieces made apart and stacked, so equal names have different views).
        #[test]
        fn counts_per_file_are_a_plain_count_of_the_rows(
            pieces in proptest::collection::vec(
                proptest::collection::vec((0..5usize, 1..30usize, 0..6u8), 0..20),
                1..4,
            ),
        ) {
            let names = ["a", "nih/diary_2019-03-30.csv", "b.csv", "hh/diary_2019-04-01.csv", "twelve_bytes"];
            let mut df = DataFrame::empty_with_schema(&Schema::from_iter([Field::new("SRCFILE".into(), DataType::String)]));
            let mut want: BTreeMap<String, u64> = BTreeMap::new();
            for runs in &pieces {
                let mut column: Vec<Option<&str>> = Vec::new();
                for &(name, len, null) in runs {
                    let value = (null != 0).then_some(names[name]);
                    column.extend(std::iter::repeat_n(value, len));
                    if let Some(v) = value {
                        *want.entry(v.to_string()).or_insert(0) += len as u64;
                    }
                }
                let piece = DataFrame::new(column.len(), vec![Column::new("SRCFILE".into(), column)]).unwrap();
                df.vstack_mut(&piece).unwrap();
            }
            proptest::prop_assert_eq!(counts_by_file(&df, None).unwrap(), want);
        }
    }

    #[test]
    fn summaries_count_rows_per_file() {
        let table = df!("SRCFILE" => ["a", "a", "b"], "x" => [1i64, 2, 3]).unwrap();
        let dropped = df!(
            "SRCFILE" => ["a", "b", "b"],
            "SRCLINE" => [5i64, 6, 7],
            "SITE" => ["S", "S", "S"],
            "FATE" => ["collapsed", "superseded", "superseded"],
            "KEPTFILE" => ["a", "c", "c"],
            "KEPTLINE" => [2i64, 3, 4],
        )
        .unwrap();
        let s = summarize(&table, None, Some(&dropped), true, vec![], None).unwrap();
        assert_eq!((s.rows, s.rejected, s.set_aside), (3, 0, 3));
        assert_eq!(s.accepted_by_file["a"], 2);
        assert_eq!(s.collapsed_by_file["a"], 1);
        assert_eq!(s.superseded_by_file["b"], 2);
        assert!(!s.has_rejects && s.has_dropped);
        // Not row-level: no per-file counts of the table.
        let s = summarize(&table, None, None, false, vec![], None).unwrap();
        assert!(s.accepted_by_file.is_empty());
    }
}
