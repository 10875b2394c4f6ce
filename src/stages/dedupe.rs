//! `dedupe`: one row per natural key. Identical rows in one file collapse, differing rows with
//! one key in one file are rejected as a conflict, and a newer export supersedes an older one.

use polars::prelude::*;
use serde::Deserialize;

use crate::spec::PipelineSpec;
use crate::stages::packed::{low_bits, packed_codes, with_rows_sorted};
use crate::stages::{Inputs, Stage, StageCtx, StageOutput};

/// Parameters of a `dedupe` stage.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Dedupe {
    /// Columns of the natural key.
    pub key: Vec<String>,
}

/// Columns that say where a row came from; they are not compared between duplicates.
pub const LINEAGE: &[&str] = &["SITE", "SRCFILE", "SRCLINE", "EXPORTDT"];

const SIG: &str = "__sig";
const ORDER: &str = "__order";
const ROW: &str = "__row";
const PACKED: &str = "__packed";
const KEPT_ROW: &str = "__keptrow";

/// One integer per row that sorts like `columns` (missing values first, text in byte order)
/// when every column is text or an integer up to 64 bits signed or 32 bits unsigned (dates
/// included) and their codes fit in 64 bits together; `None` otherwise. A text column's code
/// is the value's place among its distinct values, found once per run of equal rows; an
/// integer's is its distance from the smallest. With the key, the bits each column's code takes
/// (the last column's in the lowest bits): two rows agree on the first columns exactly when
/// their keys do after the later columns' bits are shifted out.
fn packed_sort_key(
    df: &DataFrame,
    columns: &[String],
) -> PolarsResult<Option<(UInt64Chunked, Vec<u32>)>> {
    Ok(packed_codes(df, columns)?
        .map(|(packed, widths)| (UInt64Chunked::from_vec(PACKED.into(), packed), widths)))
}

/// How [`key_order`] may sort.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Packing {
    /// By one packed integer when the codes fit in 64 bits (see [`packed_sort_key`]), with
    /// the row number in place of the line where it may be ([`packed_with_rows`]).
    Allowed,
    /// By one packed integer with the line, never the row number.
    #[cfg(test)]
    LinesOnly,
    /// By the columns themselves (what a key too wide for one integer does).
    #[cfg(test)]
    Never,
}

/// True when the rows of each file (`ORDER`) are one block, in line order: then a row's place
/// in the table orders the rows of a file as their lines do. (An ingest reads file after
/// file; a stage between it and the dedupe might have reordered rows.)
fn lines_follow_rows(narrow: &DataFrame) -> PolarsResult<bool> {
    // (The export order is a row index already, the lines `Int64` from an ingest: no copies.)
    let order = narrow.column(ORDER)?.cast(&IDX_DTYPE)?;
    let line = narrow.column("SRCLINE")?.cast(&DataType::Int64)?;
    let (order, line) = (order.idx()?, line.i64()?);
    if order.null_count() > 0 || line.null_count() > 0 {
        return Ok(false);
    }
    let mut seen = std::collections::HashSet::new();
    let mut previous: Option<(IdxSize, i64)> = None;
    for (o, l) in order.into_no_null_iter().zip(line.into_no_null_iter()) {
        match previous {
            Some((po, pl)) if po == o => {
                if l <= pl {
                    return Ok(false);
                }
            }
            _ => {
                if !seen.insert(o) {
                    return Ok(false);
                }
            }
        }
        previous = Some((o, l));
    }
    Ok(true)
}

/// [`key_order`] by one sort of plain integers, when the rows of each file are in line order
/// ([`lines_follow_rows`]) and the key, the export order and the row number fit in 64 bits
/// together (`None` otherwise): each row's packed key and export order, with its row number
/// in the lowest bits in place of its line. Every value is then distinct, the sort needs no
/// second array of row numbers to carry along, and the row, the file and the key of each
/// sorted value are its bits.
fn packed_with_rows(
    narrow: &DataFrame,
    key_and_order: &[String],
) -> PolarsResult<Option<SortedRows>> {
    let Some((values, bits)) = packed_codes(narrow, key_and_order)? else {
        return Ok(None);
    };
    let Some((values, row_bits)) = with_rows_sorted(values, &bits) else {
        return Ok(None);
    };
    let order_bits = bits[bits.len() - 1];
    Ok(Some(SortedRows {
        key_shift: row_bits + order_bits,
        file_shift: row_bits,
        rows: Rows::LowBits(low_bits(row_bits)),
        packed: values,
    }))
}

/// The rows of `input` in key order (the key, then export order `order_of_row`, then line),
/// with numbers equal on neighbouring rows exactly when their keys are equal (missing equals
/// missing), and their keys and files.
fn key_order(
    input: &DataFrame,
    key: &[String],
    order_of_row: Column,
    packing: Packing,
) -> PolarsResult<SortedRows> {
    let mut sort_columns: Vec<String> = key.to_vec();
    sort_columns.extend([ORDER.to_string(), "SRCLINE".to_string()]);
    let mut narrow: Vec<Column> = Vec::new();
    for c in key.iter().chain(std::iter::once(&"SRCLINE".to_string())) {
        if !narrow.iter().any(|n| n.name() == c) {
            narrow.push(input.column(c)?.clone());
        }
    }
    narrow.push(order_of_row);
    let narrow = DataFrame::new(input.height(), narrow)?;
    if packing == Packing::Allowed && lines_follow_rows(&narrow)? {
        let key_and_order = &sort_columns[..sort_columns.len() - 1];
        if let Some(found) = packed_with_rows(&narrow, key_and_order)? {
            return Ok(found);
        }
    }
    let packed = match packing {
        Packing::Allowed => packed_sort_key(&narrow, &sort_columns)?,
        #[cfg(test)]
        Packing::LinesOnly => packed_sort_key(&narrow, &sort_columns)?,
        #[cfg(test)]
        Packing::Never => None,
    };
    if let Some((packed, bits)) = packed {
        // Sorting one integer is much cheaper than comparing text keys row against row, and
        // the key and the file of a row are its packed key with the line's (and the export
        // order's) bits shifted out: nothing else of the rows is copied.
        let line_bits = bits[bits.len() - 1];
        let order_bits = bits[bits.len() - 2];
        let rows = packed.arg_sort(SortOptions::default().with_multithreaded(true));
        let sorted = packed.take(&rows)?;
        drop(packed);
        return Ok(SortedRows {
            packed: sorted.into_no_null_iter().collect(),
            key_shift: line_bits + order_bits,
            file_shift: line_bits,
            rows: Rows::Listed(rows.into_no_null_iter().collect()),
        });
    }
    let key_names: Vec<&str> = key.iter().map(String::as_str).collect();
    let mut file_names = key_names.clone();
    file_names.push(ORDER);
    let sorted = narrow
        .lazy()
        .with_row_index(ROW, None)
        .sort_by_exprs(
            sort_columns
                .iter()
                .map(|c| col(c.as_str()))
                .collect::<Vec<_>>(),
            SortMultipleOptions::default(),
        )
        .collect()?;
    let (key_run, _) = crate::stages::runs(&sorted, &key_names)?;
    let (file_run, _) = crate::stages::runs(&sorted, &file_names)?;
    // A row's key run in the high half, its key-and-file run in the low half: the low half
    // alone already differs between neighbours exactly when key or file does.
    Ok(SortedRows {
        packed: key_run
            .into_no_null_iter()
            .zip(file_run.into_no_null_iter())
            .map(|(k, f)| (u64::from(k) << 32) | u64::from(f))
            .collect(),
        key_shift: 32,
        file_shift: 0,
        rows: Rows::Listed(sorted.column(ROW)?.idx()?.into_no_null_iter().collect()),
    })
}

impl Stage for Dedupe {
    fn row_level(&self) -> bool {
        true
    }

    /// Duplicates share the key: with the subject in the key, they share the subject.
    fn across_subjects(&self, subject_columns: &[String]) -> Option<String> {
        crate::stages::no_subject_in(&self.key, subject_columns, ("its key", "holds"))
    }

    fn check(&self, _spec: &PipelineSpec) -> Vec<String> {
        if self.key.is_empty() {
            vec!["`key` needs at least one column".into()]
        } else {
            Vec::new()
        }
    }

    fn consumes_input(&self) -> bool {
        true
    }

    fn run(&self, _ctx: &StageCtx, inputs: &Inputs) -> anyhow::Result<StageOutput> {
        self.dedupe(inputs.first().clone(), Packing::Allowed)
    }

    /// The input's columns are let go of as the kept rows are gathered from them (on the
    /// bench diary, 9.7 million raw rows beside the 7.9 million kept).
    fn run_owned(&self, _ctx: &StageCtx, inputs: Inputs) -> anyhow::Result<StageOutput> {
        let input = inputs
            .tables
            .into_iter()
            .next()
            .map(|(_, t)| t)
            .ok_or_else(|| anyhow::anyhow!("dedupe has no input"))?;
        self.dedupe(input, Packing::Allowed)
    }
}

impl Dedupe {
    /// Deduplicates `input`, sorting by a packed key as `packing` allows. The input is given
    /// up: its columns are let go of as the kept rows are gathered, last.
    fn dedupe(&self, input: DataFrame, packing: Packing) -> anyhow::Result<StageOutput> {
        let names: Vec<String> = input
            .get_column_names()
            .iter()
            .map(|s| s.to_string())
            .collect();
        for k in &self.key {
            if !names.contains(k) {
                anyhow::bail!(
                    "key column `{k}` is not in the input; columns: {}",
                    names.join(", ")
                );
            }
        }
        for l in ["SRCFILE", "SRCLINE", "EXPORTDT"] {
            if !names.contains(&l.to_string()) {
                anyhow::bail!(
                    "the input has no `{l}` column: dedupe needs rows straight from an ingest"
                );
            }
        }
        let key: Vec<Expr> = self.key.iter().map(|k| col(k.as_str())).collect();
        let mut key_file = key.clone();
        key_file.push(col("SRCFILE"));

        // Export order of the files (export date, then path) as one small integer per row,
        // looked up once per run of rows of one file (an ingest appends file after file).
        // (Runs of one file and site: the file and site of any row are its run's, below.)
        let (run_of_row, first_rows) = crate::stages::runs(&input, &["SRCFILE", "SITE"])?;
        let run_files = input
            .select(["SRCFILE", "EXPORTDT"])?
            .take(&first_rows)?
            .lazy()
            .with_row_index("__run", None);
        let order = run_files
            .clone()
            .select([col("SRCFILE"), col("EXPORTDT")])
            .unique_stable(None, UniqueKeepStrategy::First)
            .sort_by_exprs(
                [col("EXPORTDT"), col("SRCFILE")],
                SortMultipleOptions::default(),
            )
            .with_row_index(ORDER, None)
            .select([col("SRCFILE"), col(ORDER)]);
        let order_of_run = run_files
            .join(
                order,
                [col("SRCFILE")],
                [col("SRCFILE")],
                JoinArgs::new(JoinType::Left),
            )
            .sort(["__run"], Default::default())
            .collect()?;
        let order_of_row = order_of_run
            .column(ORDER)?
            .take(&run_of_row)?
            .with_name(ORDER.into());
        // The rows in key order, file by file in export order: neighbours then say which keys
        // repeat within a file and which row is the newest, without hashing every row into
        // groups; the value columns are gathered once at the end (and for the few rows whose
        // key repeats in a file).
        let sorted = key_order(&input, &self.key, order_of_row, packing)?;

        // Within one file: most keys occur once. Only the repeated ones are compared, by a
        // signature of every value column: identical rows keep their first line, differing
        // rows conflict.
        let values: Vec<Expr> = names
            .iter()
            .filter(|n| !LINEAGE.contains(&n.as_str()))
            .map(|n| {
                col(n.as_str())
                    .cast(DataType::String)
                    .fill_null(lit("\u{1}"))
            })
            .collect();
        let mut key_file_sig = key_file.clone();
        key_file_sig.push(col(SIG));
        let repeated_rows = IdxCa::from_vec(ROW.into(), sorted.repeated_rows());
        let mut repeated = input.take(&repeated_rows)?;
        repeated.with_column(repeated_rows.into_column())?;
        let repeated = repeated
            .lazy()
            .with_column(len().over(&key_file)?.alias("__nkey"))
            .with_column(concat_str(values, "\u{1f}", false).alias(SIG))
            .with_columns([
                col("SRCLINE")
                    .min()
                    .over(&key_file_sig)?
                    .alias("__keepline"),
                col(SIG)
                    .n_unique()
                    .over(&key_file)?
                    .gt(lit(1))
                    .alias("__conflict"),
            ])
            .collect()?;

        let key_text = concat_str(
            self.key
                .iter()
                .map(|k| {
                    concat_str(
                        [
                            lit(format!("{k}=")),
                            col(k.as_str())
                                .cast(DataType::String)
                                .fill_null(lit("null")),
                        ],
                        "",
                        false,
                    )
                })
                .collect::<Vec<_>>(),
            ", ",
            false,
        );
        let rejects = repeated
            .clone()
            .lazy()
            .filter(col("__conflict"))
            .select([
                col("SRCFILE"),
                col("SRCLINE"),
                col("SITE"),
                lit(self.key.join("+")).alias("COLUMN"),
                key_text.clone().alias("RAWVALUE"),
                lit("conflict").alias("RULE"),
                concat_str(
                    [
                        col("__nkey").cast(DataType::String),
                        lit(" rows of this file share the key ("),
                        key_text,
                        lit(") but differ in their values; all of them are rejected"),
                    ],
                    "",
                    false,
                )
                .alias("REASON"),
            ])
            .collect()?;
        // Each collapsed row with the first of its identical rows, the one kept in its place.
        let collapsed = repeated
            .clone()
            .lazy()
            .with_column(
                col(ROW)
                    .filter(col("SRCLINE").eq(col("__keepline")))
                    .first()
                    .over(&key_file_sig)?
                    .alias(KEPT_ROW),
            )
            .filter(
                col("__conflict")
                    .not()
                    .and(col("SRCLINE").neq(col("__keepline"))),
            )
            .select([col(ROW), col(KEPT_ROW)])
            .collect()?;

        // Across files: the newest export (then the last file path) wins each key. Among the
        // rows that survive their own file, still in key order, that is the last of each key;
        // an older row points at it.
        let first_of_repeated = repeated
            .lazy()
            .filter(
                col("__conflict")
                    .not()
                    .and(col("SRCLINE").eq(col("__keepline"))),
            )
            .select([col(ROW)])
            .collect()?;
        let (kept, superseded) =
            sorted.newest_of_keys(first_of_repeated.column(ROW)?.idx()?, input.height());
        // The sorted keys (8 bytes a raw row, and the rows beside them) are done with: let go
        // of before the gathers below, the stage's peak, rather than at its end.
        drop(sorted);
        // A row's file and site are those of its run (a small table); its line is gathered
        // from the lines as they are (a chunk per file of an ingest), not copied into one
        // chunk first for the few rows set aside.
        let of_runs = run_constants(&input, &first_rows)?;
        let run_lineage = of_runs.select(["SRCFILE", "SITE"])?;
        let lines = input.column("SRCLINE")?;
        let lineage_of = |rows: &IdxCa| -> PolarsResult<DataFrame> {
            let mut of = run_lineage.take(&run_of_row.take(rows)?)?;
            of.with_column(lines.take(rows)?)?;
            Ok(of)
        };
        // Every set-aside row with the row kept in its place and whether it was collapsed
        // (else superseded), in the order of the input: an ingest's rows come file after file,
        // so the run's table of set-aside rows is these blocks put in file order
        // (`row_fate::all_dropped`). Their lineage is gathered in that order, with no sort of
        // the finished table.
        let mut set_aside: Vec<(IdxSize, IdxSize, bool)> = Vec::new();
        for (rows, kept, is_collapsed) in [
            (
                collapsed.column(ROW)?.idx()?,
                collapsed.column(KEPT_ROW)?.idx()?,
                true,
            ),
            (&superseded[0], &superseded[1], false),
        ] {
            for (r, k) in rows.iter().zip(kept.iter()) {
                let (Some(r), Some(k)) = (r, k) else {
                    anyhow::bail!("a set-aside row without the row kept in its place");
                };
                set_aside.push((r, k, is_collapsed));
            }
        }
        set_aside.sort_unstable_by_key(|&(row, _, _)| row);
        let (rows, kept_in_place): (Vec<IdxSize>, Vec<IdxSize>) =
            set_aside.iter().map(|&(row, kept, _)| (row, kept)).unzip();
        let mut dropped = lineage_of(&IdxCa::from_vec(ROW.into(), rows))?;
        let kept_of = lineage_of(&IdxCa::from_vec(KEPT_ROW.into(), kept_in_place))?;
        let fate = StringChunked::from_iter_values(
            "FATE".into(),
            set_aside
                .iter()
                .map(|&(_, _, c)| if c { "collapsed" } else { "superseded" }),
        );
        dropped.hstack_mut(&[
            fate.into_column(),
            kept_of
                .column("SRCFILE")?
                .clone()
                .with_name("KEPTFILE".into()),
            kept_of
                .column("SRCLINE")?
                .clone()
                .with_name("KEPTLINE".into()),
        ])?;
        let dropped =
            dropped.select(["SRCFILE", "SRCLINE", "SITE", "FATE", "KEPTFILE", "KEPTLINE"])?;
        drop((set_aside, superseded, collapsed, kept_of));
        // The kept rows come out in key order (missing keys first): the survivors already are,
        // and the tables a dedupe feeds are published sorted by their key, which then costs
        // no second sort.
        let table = kept_rows(input, &kept, &run_of_row, &of_runs)?.lazy();
        Ok(StageOutput {
            table,
            rejects: Some(rejects),
            dropped: Some(dropped),
            files: Vec::new(),
            rows_of_input: Some(kept),
        })
    }
}

/// The input's rows in key order ([`key_order`]): one number per row in that order whose bits
/// hold what is compared, so that nothing else is copied out of the sort: shifted right by
/// `key_shift`, the numbers of neighbouring rows are equal exactly when their keys are (missing
/// equals missing); by `file_shift`, exactly when their keys and files are. Each one's input
/// row is in its lowest bits or listed beside it (`rows`).
struct SortedRows {
    packed: Vec<u64>,
    key_shift: u32,
    file_shift: u32,
    rows: Rows,
}

/// Where [`SortedRows`] keeps each one's input row.
enum Rows {
    /// In the bits of this mask.
    LowBits(u64),
    /// In a list of its own, in key order.
    Listed(Vec<IdxSize>),
}

impl SortedRows {
    fn len(&self) -> usize {
        self.packed.len()
    }

    /// The input row of the `i`th row in key order.
    #[inline]
    fn row(&self, i: usize) -> IdxSize {
        match &self.rows {
            Rows::LowBits(mask) => (self.packed[i] & mask) as IdxSize,
            Rows::Listed(rows) => rows[i],
        }
    }

    /// The key's number of the `i`th row in key order.
    #[inline]
    fn key(&self, i: usize) -> u64 {
        self.packed[i].checked_shr(self.key_shift).unwrap_or(0)
    }

    /// The key's and file's number of the `i`th row in key order.
    #[inline]
    fn file(&self, i: usize) -> u64 {
        self.packed[i].checked_shr(self.file_shift).unwrap_or(0)
    }

    /// Whether the row at `i` shares its key with a neighbour of its own file.
    fn repeated(&self, i: usize) -> bool {
        let f = self.file(i);
        (i > 0 && self.file(i - 1) == f) || (i + 1 < self.len() && self.file(i + 1) == f)
    }

    /// The input rows whose key occurs more than once in their file, in input order.
    fn repeated_rows(&self) -> Vec<IdxSize> {
        let mut rows: Vec<IdxSize> = (0..self.len())
            .filter(|&i| self.repeated(i))
            .map(|i| self.row(i))
            .collect();
        rows.sort_unstable();
        rows
    }

    /// Across files, among the rows that survive their own file (a key once in it, or the
    /// first of identical rows, `first_of_repeated`; `n` input rows): the newest of each key
    /// (the last in key order, which puts the files in export order), in key order, and each
    /// older row with the newest row of its key.
    fn newest_of_keys(&self, first_of_repeated: &IdxCa, n: usize) -> (IdxCa, [IdxCa; 2]) {
        let mut first = vec![false; n];
        for r in first_of_repeated.into_no_null_iter() {
            first[r as usize] = true;
        }
        let mut kept: Vec<IdxSize> = Vec::new();
        let (mut older, mut newest_of) = (Vec::new(), Vec::new());
        let mut next: Option<(u64, IdxSize)> = None;
        for i in (0..self.len()).rev() {
            let row = self.row(i);
            if self.repeated(i) && !first[row as usize] {
                continue;
            }
            match next {
                Some((key, newest)) if key == self.key(i) => {
                    older.push(row);
                    newest_of.push(newest);
                }
                _ => {
                    kept.push(row);
                    next = Some((self.key(i), row));
                }
            }
        }
        kept.reverse();
        (
            IdxCa::from_vec(ROW.into(), kept),
            [
                IdxCa::from_vec(ROW.into(), older),
                IdxCa::from_vec(KEPT_ROW.into(), newest_of),
            ],
        )
    }
}

/// The columns of `input` that hold one value in each of its runs of one file and site
/// (`first_rows`, [`crate::stages::runs`]), one row per run: the file and the site, and the
/// export date when that is one value in every run (as an ingest makes it; a stage between the
/// ingest and the dedupe may change it).
fn run_constants(input: &DataFrame, first_rows: &IdxCa) -> PolarsResult<DataFrame> {
    let mut by_run: Vec<PlSmallStr> = vec!["SRCFILE".into(), "SITE".into()];
    let dates = input.column("EXPORTDT")?.as_materialized_series();
    let one_date_a_run = crate::stages::run_spans(first_rows, input.height())
        .iter()
        .all(|&[start, len]| {
            let run = dates.slice(start as i64, len as usize);
            run.equal_missing(&run.head(Some(1)))
                .is_ok_and(|same| same.all())
        });
    if one_date_a_run {
        by_run.push("EXPORTDT".into());
    }
    input.select(by_run)?.take(first_rows)
}

/// The rows `rows` of `input`, whose runs are `run_of_row`, with `of_runs` the columns that
/// hold one value per run ([`run_constants`]): those are taken from each row's run, a table of
/// a few rows, instead of gathered from whole columns made one chunk first (on the bench diary
/// three of its twelve columns, 350 MB copied and gathered). `input` is given up: those
/// columns are let go of first, and each other one as soon as it is gathered
/// ([`crate::stages::gather_rows_owned`]).
fn kept_rows(
    input: DataFrame,
    rows: &IdxCa,
    run_of_row: &IdxCa,
    of_runs: &DataFrame,
) -> PolarsResult<DataFrame> {
    let names = input.get_column_names_owned();
    let of_run = of_runs.take(&run_of_row.take(rows)?)?;
    let rest = input.drop_many(of_runs.get_column_names_owned());
    drop(input);
    let rest = crate::stages::gather_rows_owned(rest, rows)?;
    let columns = names
        .iter()
        .map(|name| match of_run.column(name) {
            Ok(c) => Ok(c.clone()),
            Err(_) => rest.column(name).cloned(),
        })
        .collect::<PolarsResult<Vec<Column>>>()?;
    DataFrame::new(rows.len(), columns)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stages::tests_support::{ctx_for, ints, strings};

    fn table() -> DataFrame {
        // file a (older export): C1/d1 twice identical, C1/d2 conflict, C2/d1 once
        // file b (newer export): C2/d1 corrected -> supersedes a's C2/d1
        let d = |s: &str| chrono::NaiveDate::parse_from_str(s, "%Y-%m-%d").unwrap();
        let days = |s: &str| (d(s) - d("1970-01-01")).num_days() as i32;
        df!(
            "SITE" => ["A"; 6],
            "SRCFILE" => ["a", "a", "a", "a", "a", "b"],
            "SRCLINE" => [2i64, 3, 4, 5, 6, 2],
            "EXPORTDT" => [days("2017-01-01"), days("2017-01-01"), days("2017-01-01"), days("2017-01-01"), days("2017-01-01"), days("2017-06-30")],
            "subject" => ["C1", "C1", "C1", "C1", "C2", "C2"],
            "date" => ["d1", "d1", "d2", "d2", "d1", "d1"],
            "score" => [Some(1i64), Some(1), Some(2), Some(3), None, Some(4)],
        )
        .unwrap()
        .lazy()
        .with_column(col("EXPORTDT").cast(DataType::Date))
        .collect()
        .unwrap()
    }

    #[test]
    fn collapse_conflict_and_supersede() {
        let stage = Dedupe {
            key: vec!["subject".into(), "date".into()],
        };
        let inputs = Inputs {
            tables: vec![("x".into(), table())],
        };
        let out = ctx_for(|ctx| stage.run(ctx, &inputs)).unwrap();
        let kept = out
            .table
            .sort(["SRCFILE", "SRCLINE"], Default::default())
            .collect()
            .unwrap();
        assert_eq!(strings(&kept, "SRCFILE"), ["a", "b"]);
        assert_eq!(ints(&kept, "SRCLINE"), [Some(2), Some(2)]);
        let rej = out
            .rejects
            .unwrap()
            .sort(["SRCLINE"], Default::default())
            .unwrap();
        assert_eq!(ints(&rej, "SRCLINE"), [Some(4), Some(5)]);
        assert_eq!(
            rej.column("RULE").unwrap().str().unwrap().get(0),
            Some("conflict")
        );
        let dropped = out
            .dropped
            .unwrap()
            .sort(["SRCLINE"], Default::default())
            .unwrap();
        let fates = strings(&dropped, "FATE");
        assert_eq!(fates, vec!["collapsed", "superseded"]);
        assert_eq!(
            dropped.column("KEPTFILE").unwrap().str().unwrap().get(1),
            Some("b")
        );
        // Row fate: 6 in = 2 kept + 2 rejected + 2 set aside.
        assert_eq!(kept.height() + rej.height() + dropped.height(), 6);
    }

    #[test]
    fn the_newest_export_wins_whatever_the_file_order_and_null_keys_match() {
        // File b (older export) is read before file a (newer). C1 with a missing date is in
        // both: a's copy (twice, identical) supersedes b's. C2 is only in b.
        let d = |s: &str| chrono::NaiveDate::parse_from_str(s, "%Y-%m-%d").unwrap();
        let days = |s: &str| (d(s) - d("1970-01-01")).num_days() as i32;
        let t = df!(
            "SITE" => ["A"; 4],
            "SRCFILE" => ["b", "b", "a", "a"],
            "SRCLINE" => [2i64, 3, 2, 3],
            "EXPORTDT" => [days("2017-01-01"), days("2017-01-01"), days("2017-06-30"), days("2017-06-30")],
            "subject" => ["C1", "C2", "C1", "C1"],
            "date" => [None, Some("d1"), None, None],
            "score" => [1i64, 2, 5, 5],
        )
        .unwrap()
        .lazy()
        .with_column(col("EXPORTDT").cast(DataType::Date))
        .collect()
        .unwrap();
        let stage = Dedupe {
            key: vec!["subject".into(), "date".into()],
        };
        let inputs = Inputs {
            tables: vec![("x".into(), t)],
        };
        let out = ctx_for(|ctx| stage.run(ctx, &inputs)).unwrap();
        let kept = out.table.collect().unwrap();
        // In key order: C1 (missing date) before C2.
        assert_eq!(strings(&kept, "subject"), ["C1", "C2"]);
        assert_eq!(strings(&kept, "SRCFILE"), ["a", "b"]);
        assert_eq!(ints(&kept, "SRCLINE"), [Some(2), Some(3)]);
        assert_eq!(out.rejects.unwrap().height(), 0);
        // Set-aside rows in the order of the input: b's line 2, then a's line 3.
        let dropped = out.dropped.unwrap();
        assert_eq!(strings(&dropped, "FATE"), ["superseded", "collapsed"]);
        assert_eq!(strings(&dropped, "SRCFILE"), ["b", "a"]);
        assert_eq!(ints(&dropped, "SRCLINE"), [Some(2), Some(3)]);
        assert_eq!(strings(&dropped, "KEPTFILE"), ["a", "a"]);
        assert_eq!(ints(&dropped, "KEPTLINE"), [Some(2), Some(2)]);
    }

    /// Rows stand for lines only when each file is one block of rows in line order.
    #[test]
    fn lines_follow_rows_only_in_blocks_in_line_order() {
        let narrow = |order: &[u32], line: &[i64]| {
            df!(ORDER => order.to_vec(), "SRCLINE" => line.to_vec()).unwrap()
        };
        let follows =
            |order: &[u32], line: &[i64]| lines_follow_rows(&narrow(order, line)).unwrap();
        assert!(follows(&[1, 1, 0, 0, 2], &[2, 5, 2, 3, 9]));
        assert!(follows(&[], &[]));
        // A file's lines out of order, or one line twice.
        assert!(!follows(&[1, 1, 0, 0], &[5, 2, 2, 3]));
        assert!(!follows(&[1, 1], &[4, 4]));
        // A file in two blocks.
        assert!(!follows(&[1, 0, 1], &[2, 2, 3]));
        // A missing line.
        let with_missing = df!(ORDER => [0u32, 0], "SRCLINE" => [Some(2i64), None]).unwrap();
        assert!(!lines_follow_rows(&with_missing).unwrap());
    }

    /// A file's constants come from its run when each run holds one of them; an export date
    /// that differs within a run (changed by a stage before the dedupe) is gathered per row.
    #[test]
    fn kept_rows_take_a_files_constants_from_its_run() {
        let input = df!(
            "SITE" => ["s", "s", "t", "t", "t"],
            "SRCFILE" => ["a.csv", "a.csv", "b.csv", "b.csv", "b.csv"],
            "SRCLINE" => [2i64, 3, 2, 3, 4],
            "EXPORTDT" => [10i32, 10, 20, 20, 20],
            "v" => [Some(1i64), None, Some(3), Some(4), Some(5)],
        )
        .unwrap()
        .lazy()
        .with_column(col("EXPORTDT").cast(DataType::Date))
        .collect()
        .unwrap();
        let mut stacked = input.slice(0, 2);
        stacked.vstack_mut(&input.slice(2, 3)).unwrap();
        let rows = IdxCa::from_vec("r".into(), vec![4, 0, 3, 1]);
        let (run_of_row, first_rows) = crate::stages::runs(&stacked, &["SRCFILE", "SITE"]).unwrap();
        let of_runs = run_constants(&stacked, &first_rows).unwrap();
        assert_eq!(of_runs.width(), 3);
        let kept = kept_rows(stacked.clone(), &rows, &run_of_row, &of_runs).unwrap();
        assert!(kept.equals_missing(&stacked.take(&rows).unwrap()));
        assert_eq!(
            strings(&kept, "SRCFILE"),
            ["b.csv", "a.csv", "b.csv", "a.csv"]
        );
        let mut varied = stacked.clone();
        varied
            .with_column(
                Series::new("EXPORTDT".into(), [10i32, 10, 20, 21, 20])
                    .cast(&DataType::Date)
                    .unwrap()
                    .into_column(),
            )
            .unwrap();
        let of_runs = run_constants(&varied, &first_rows).unwrap();
        assert_eq!(of_runs.width(), 2);
        let kept = kept_rows(varied.clone(), &rows, &run_of_row, &of_runs).unwrap();
        assert!(kept.equals_missing(&varied.take(&rows).unwrap()));
    }

    proptest::proptest! {
        /// Sorting by the packed key orders rows exactly as sorting by the columns does
        /// (missing first, text in byte order, integers and dates by value), on any input.
        #[test]
        fn the_packed_key_sorts_like_the_columns(
            rows in proptest::collection::vec(
                (proptest::option::of(0usize..5), proptest::option::of(-3i32..4), 0u32..3, 0i64..40),
                0..40),
        ) {
            let texts = ["C1", "C10", "C2", "", "C1 "];
            let df = df!(
                "subject" => rows.iter().map(|r| r.0.map(|i| texts[i])).collect::<Vec<_>>(),
                "date" => rows.iter().map(|r| r.1).collect::<Vec<_>>(),
                ORDER => rows.iter().map(|r| r.2).collect::<Vec<_>>(),
                "SRCLINE" => rows.iter().map(|r| r.3).collect::<Vec<_>>(),
            )
            .unwrap()
            .lazy()
            .with_column(col("date").cast(DataType::Date))
            .with_row_index("i", None)
            .collect()
            .unwrap();
            let columns: Vec<String> =
                ["subject", "date", ORDER, "SRCLINE"].map(String::from).to_vec();
            let (packed, _) = packed_sort_key(&df, &columns).unwrap().expect("fits in 64 bits");
            let mut with_key = df.clone();
            with_key.with_column(packed.into_column()).unwrap();
            let by_key = with_key
                .lazy()
                .sort_by_exprs([col(PACKED)], SortMultipleOptions::default().with_maintain_order(true))
                .collect()
                .unwrap();
            let by_columns = df
                .lazy()
                .sort_by_exprs(
                    columns.iter().map(|c| col(c.as_str())).collect::<Vec<_>>(),
                    SortMultipleOptions::default().with_maintain_order(true),
                )
                .collect()
                .unwrap();
            proptest::prop_assert_eq!(ints(&by_key, "i"), ints(&by_columns, "i"));
        }

        /// Sorting by the packed key and sorting by the columns deduplicate alike: the same
        /// rows kept in the same order, the same conflicts, the same rows collapsed and
        /// superseded pointing at the same kept rows, on any input (keys with missing values,
        /// repeats within a file, several exports, files in any order).
        #[test]
        fn a_packed_key_deduplicates_like_the_columns(
            rows in proptest::collection::vec(
                (proptest::option::of(0usize..4), proptest::option::of(0i32..3), 0usize..3, 0i64..3),
                0..60),
            lines_backwards in proptest::bool::ANY,
        ) {
            let texts = ["C1", "C10", "C2", "C1 "];
            // Three files, two of them exported on the same day; each file's rows in line order.
            let files = ["s/b.csv", "s/a.csv", "s/c.csv"];
            let exported = [3i32, 5, 3];
            let mut rows = rows;
            rows.sort_by_key(|r| r.2);
            let sites = ["s", "t", "s"];
            let t = df!(
                "SITE" => rows.iter().map(|r| sites[r.2]).collect::<Vec<_>>(),
                "SRCFILE" => rows.iter().map(|r| files[r.2]).collect::<Vec<_>>(),
                // Each file's rows in line order, or (as a stage between ingest and dedupe
                // might leave them) in reverse line order.
                "SRCLINE" => (0..rows.len() as i64)
                    .map(|i| if lines_backwards { rows.len() as i64 + 1 - i } else { i + 2 })
                    .collect::<Vec<_>>(),
                "EXPORTDT" => rows.iter().map(|r| exported[r.2]).collect::<Vec<_>>(),
                "subject" => rows.iter().map(|r| r.0.map(|i| texts[i])).collect::<Vec<_>>(),
                "date" => rows.iter().map(|r| r.1).collect::<Vec<_>>(),
                "score" => rows.iter().map(|r| r.3).collect::<Vec<_>>(),
            )
            .unwrap()
            .lazy()
            .with_columns([col("EXPORTDT").cast(DataType::Date), col("date").cast(DataType::Date)])
            .collect()
            .unwrap();
            // A chunk per file, as an ingest gives its table.
            let mut stacked = t.slice(0, 0);
            let mut at = 0;
            for f in 0..files.len() {
                let n = rows.iter().filter(|r| r.2 == f).count();
                stacked.vstack_mut(&t.slice(at as i64, n)).unwrap();
                at += n;
            }
            let t = stacked;
            let stage = Dedupe { key: vec!["subject".into(), "date".into()] };
            let columns = stage.dedupe(t.clone(), Packing::Never).unwrap();
            let table = |o: &StageOutput| o.table.clone().collect().unwrap();
            let part = |d: &Option<DataFrame>| d.clone().unwrap();
            // With the row number where lines follow rows, and with the line.
            let packed = stage.dedupe(t.clone(), Packing::Allowed).unwrap();
            for p in [&packed, &stage.dedupe(t.clone(), Packing::LinesOnly).unwrap()] {
                proptest::prop_assert!(table(p).equals_missing(&table(&columns)));
                proptest::prop_assert!(part(&p.rejects).equals_missing(&part(&columns.rejects)));
                proptest::prop_assert!(part(&p.dropped).equals_missing(&part(&columns.dropped)));
            }
            // Each set-aside row, and the row it points at, are rows of the input (lines are
            // unique here): their files, sites and lines as in the input.
            let dropped = part(&packed.dropped);
            let input_row = |line: i64| -> (String, String) {
                let i = ints(&t, "SRCLINE").iter().position(|l| *l == Some(line)).unwrap();
                (strings(&t, "SRCFILE")[i].to_string(), strings(&t, "SITE")[i].to_string())
            };
            let (files_out, sites_out) = (strings(&dropped, "SRCFILE"), strings(&dropped, "SITE"));
            let (kept_files, kept_lines) = (strings(&dropped, "KEPTFILE"), ints(&dropped, "KEPTLINE"));
            // A superseded row points at a row kept.
            let kept_out = ints(&table(&packed), "SRCLINE");
            let fates = strings(&dropped, "FATE");
            for (i, line) in ints(&dropped, "SRCLINE").iter().enumerate() {
                let (file, site) = input_row(line.unwrap());
                proptest::prop_assert_eq!((files_out[i].to_string(), sites_out[i].to_string()), (file, site));
                proptest::prop_assert_eq!(kept_files[i].to_string(), input_row(kept_lines[i].unwrap()).0);
                if fates[i] == "superseded" {
                    proptest::prop_assert!(kept_out.contains(&kept_lines[i]));
                }
            }
            // The kept rows are the input's rows they name, lineage included.
            let kept_rows = packed.rows_of_input.as_ref().unwrap();
            proptest::prop_assert!(table(&packed).equals_missing(&t.take(kept_rows).unwrap()));
            // Every row in exactly one place.
            proptest::prop_assert_eq!(
                table(&packed).height() + part(&packed.rejects).height() + part(&packed.dropped).height(),
                rows.len()
            );
        }
    }
}
