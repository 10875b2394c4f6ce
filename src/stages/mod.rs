//! The stage kinds: one trait, and the one list of kinds (`Kind`) with their YAML names.
//! Adding a kind touches its own file and this list, nothing else.

use std::fmt::Debug;
use std::path::{Path, PathBuf};

use chrono::NaiveDate;
use polars::prelude::*;

use crate::error::ConfigProblem;
use crate::source::ResolvedSource;
use crate::spec::PipelineSpec;

pub mod assign_phase;
pub mod baseline;
pub mod convert_units;
pub mod dedupe;
pub mod diary_score;
pub mod growth_zscore;
pub mod ingest;
pub(crate) mod packed;
pub mod phase_anchors;
pub mod phase_windows;
pub mod recode;
pub mod sql;
pub mod steroid_equivalent;
pub mod subject_table;
pub mod summarize;
pub mod validate;

/// What a stage sees of the run besides its input tables.
pub struct StageCtx<'a> {
    /// The stage's name (= its output table).
    pub name: &'a str,
    pub spec: &'a PipelineSpec,
    /// The date of the run; later dates are implausible.
    pub run_date: NaiveDate,
    /// Folder of the raw exports.
    pub data_dir: &'a Path,
    /// Folder of the pipeline YAML; relative paths in parameters start here.
    pub base_dir: &'a Path,
    /// Every source of the pipeline, resolved.
    pub sources: &'a [ResolvedSource],
}

impl StageCtx<'_> {
    /// Resolves a path written in the YAML against the YAML's folder.
    pub fn resolve(&self, p: &str) -> PathBuf {
        self.base_dir.join(p)
    }
}

/// The input tables of a stage, in the order of its `inputs:`.
pub struct Inputs {
    pub tables: Vec<(String, DataFrame)>,
}

impl Inputs {
    /// The table named `name`.
    pub fn get(&self, name: &str) -> Option<&DataFrame> {
        self.tables.iter().find(|(n, _)| n == name).map(|(_, t)| t)
    }
    /// The first input (for one-input kinds; the plan checks the count).
    pub fn first(&self) -> &DataFrame {
        &self.tables[0].1
    }
}

/// What a stage produces: its table, and rows it rejected or set aside.
pub struct StageOutput {
    pub table: LazyFrame,
    /// Rejected rows, in the schema of [`crate::rejects`].
    pub rejects: Option<DataFrame>,
    /// Rows collapsed or superseded (columns [`crate::rejects::DROPPED_COLUMNS`]).
    pub dropped: Option<DataFrame>,
    /// Raw files read (ingest only).
    pub files: Vec<FileRead>,
    /// When the table is these rows of the first input, every column of it in its order (a
    /// `dedupe`): the cache may then keep the row numbers instead of the table.
    pub rows_of_input: Option<IdxCa>,
}

/// One raw file as read by an ingest stage.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct FileRead {
    pub source: String,
    pub site: String,
    /// Path relative to the data folder (SRCFILE).
    pub file: String,
    pub bytes: u64,
    /// blake3 of the content.
    pub hash: String,
    pub export_date: String,
    /// Data records read (the header is not a row).
    pub rows: u64,
}

impl StageOutput {
    pub fn table(table: LazyFrame) -> Self {
        StageOutput {
            table,
            rejects: None,
            dropped: None,
            files: Vec::new(),
            rows_of_input: None,
        }
    }
}

/// How many inputs a kind takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Arity {
    None,
    One,
    AtLeastOne,
    Any,
    Exactly(usize),
}

/// A stage kind. `run` returns the output table; it must not read files the plan did not name.
pub trait Stage: Send + Sync + Debug {
    /// Inputs this kind takes.
    fn arity(&self) -> Arity {
        Arity::One
    }
    /// True when every output row is one input row that survived (it keeps SRCFILE/SRCLINE),
    /// so row fate can be followed through it.
    fn row_level(&self) -> bool {
        false
    }
    /// True when this kind's table may have many more rows than its inputs (a daily series
    /// from orders): the scheduler counts it as a large stage whatever its inputs' size.
    fn may_outgrow_inputs(&self) -> bool {
        false
    }
    /// Checks the parameters without reading data; returns messages of what is wrong.
    fn check(&self, _spec: &PipelineSpec) -> Vec<String> {
        Vec::new()
    }
    /// True when the cache keeps this kind's table. False for kinds whose table costs less to
    /// compute again from its inputs than to write and read (a view, as dbt would say): when
    /// a later run needs the table of such a reused stage, it computes it again. Published
    /// tables are always kept (the cache links the published file).
    fn cache_table(&self) -> bool {
        true
    }
    /// The columns this stage reads of its input `input`, when it reads only some: a table
    /// that must come from the cache is then decoded for those columns only. `None`: all.
    fn reads_columns(&self, _input: &str) -> Option<Vec<String>> {
        None
    }
    /// Names of sources this stage reads (ingest only).
    fn reads_source(&self) -> Option<&str> {
        None
    }
    /// Extra files (reference tables) whose content is part of this stage's fingerprint.
    fn reference_files(&self, _base_dir: &Path) -> Vec<PathBuf> {
        Vec::new()
    }
    /// True when the output depends on `ctx.run_date`: the run date then joins the stage's
    /// fingerprint, so a cached output is reused only on the same run date.
    /// (`ingest` says false: the engine tracks the run date per file for it.)
    fn reads_run_date(&self) -> bool {
        false
    }
    /// Why an output row of this stage may depend on rows of other subjects; `None` when
    /// it depends only on rows of its own subject, so that the stage can run on the rows of
    /// a few subjects at a time (`run --batch-subjects`, docs/subject-batches.md).
    /// `subject_columns` are the names a subject id goes by in the tables (each source's
    /// subject column, and `USUBJID`). A kind says so explicitly; by default it may not.
    fn across_subjects(&self, _subject_columns: &[String]) -> Option<String> {
        Some("its kind does not say that it works subject by subject".into())
    }
    /// True when this kind takes its first input's table for itself ([`Stage::run_owned`])
    /// and lets go of each column once it is done with it. The engine then hands the table
    /// over when the stage is its last reader, instead of holding it until the stage ends:
    /// a table and what is made of it need not be in memory whole at once.
    fn consumes_input(&self) -> bool {
        false
    }
    /// Builds the output table.
    fn run(&self, ctx: &StageCtx, inputs: &Inputs) -> anyhow::Result<StageOutput>;
    /// [`Stage::run`] on inputs the stage may consume (see [`Stage::consumes_input`]).
    fn run_owned(&self, ctx: &StageCtx, inputs: Inputs) -> anyhow::Result<StageOutput> {
        self.run(ctx, &inputs)
    }
}

/// The list of stage kinds. The YAML `kind:` is the snake_case of the variant.
#[derive(Debug)]
pub enum Kind {
    Ingest(ingest::Ingest),
    Validate(validate::Validate),
    Dedupe(dedupe::Dedupe),
    Sql(sql::Sql),
    ConvertUnits(convert_units::ConvertUnits),
    Recode(recode::Recode),
    DiaryScore(diary_score::DiaryScore),
    SteroidEquivalent(steroid_equivalent::SteroidEquivalent),
    GrowthZscore(growth_zscore::GrowthZscore),
    PhaseAnchors(phase_anchors::PhaseAnchors),
    PhaseWindows(phase_windows::PhaseWindows),
    SubjectTable(subject_table::SubjectTable),
    Summarize(summarize::Summarize),
    Baseline(baseline::Baseline),
    AssignPhase(assign_phase::AssignPhase),
}

/// YAML names of every kind, for messages.
pub const KIND_NAMES: &[&str] = &[
    "ingest",
    "validate",
    "dedupe",
    "sql",
    "convert_units",
    "recode",
    "diary_score",
    "steroid_equivalent",
    "growth_zscore",
    "phase_anchors",
    "phase_windows",
    "subject_table",
    "summarize",
    "baseline",
    "assign_phase",
];

impl Kind {
    /// Parses stage `index` of `spec` as the kind named `kind`.
    pub fn parse(spec: &PipelineSpec, index: usize, kind: &str) -> Result<Kind, ConfigProblem> {
        Ok(match kind {
            "ingest" => Kind::Ingest(spec.stage_params(index)?),
            "validate" => Kind::Validate(spec.stage_params(index)?),
            "dedupe" => Kind::Dedupe(spec.stage_params(index)?),
            "sql" => Kind::Sql(spec.stage_params(index)?),
            "convert_units" => Kind::ConvertUnits(spec.stage_params(index)?),
            "recode" => Kind::Recode(spec.stage_params(index)?),
            "diary_score" => Kind::DiaryScore(spec.stage_params(index)?),
            "steroid_equivalent" => Kind::SteroidEquivalent(spec.stage_params(index)?),
            "growth_zscore" => Kind::GrowthZscore(spec.stage_params(index)?),
            "phase_anchors" => Kind::PhaseAnchors(spec.stage_params(index)?),
            "phase_windows" => Kind::PhaseWindows(spec.stage_params(index)?),
            "subject_table" => Kind::SubjectTable(spec.stage_params(index)?),
            "summarize" => Kind::Summarize(spec.stage_params(index)?),
            "baseline" => Kind::Baseline(spec.stage_params(index)?),
            "assign_phase" => Kind::AssignPhase(spec.stage_params(index)?),
            other => {
                // `index` is the stage's place in the YAML list; stages that failed to parse
                // are not in `spec.stages`.
                let Some(entry) = spec.stages.iter().find(|e| e.index == index) else {
                    return Err(ConfigProblem {
                        file: spec.path.clone(),
                        line: 0,
                        column: 0,
                        message: format!("unknown stage kind `{other}`"),
                        hint: None,
                    });
                };
                let closest = crate::closest(other, KIND_NAMES.iter().copied());
                return Err(ConfigProblem {
                    file: spec.path.clone(),
                    line: entry.common.kind.referenced.line(),
                    column: entry.common.kind.referenced.column(),
                    message: format!("unknown stage kind `{other}`"),
                    hint: Some(match closest {
                        Some(c) => format!("did you mean `{c}`? kinds: {}", KIND_NAMES.join(", ")),
                        None => format!("kinds: {}", KIND_NAMES.join(", ")),
                    }),
                });
            }
        })
    }

    /// The kind as a trait object.
    pub fn stage(&self) -> &dyn Stage {
        match self {
            Kind::Ingest(s) => s,
            Kind::Validate(s) => s,
            Kind::Dedupe(s) => s,
            Kind::Sql(s) => s,
            Kind::ConvertUnits(s) => s,
            Kind::Recode(s) => s,
            Kind::DiaryScore(s) => s,
            Kind::SteroidEquivalent(s) => s,
            Kind::GrowthZscore(s) => s,
            Kind::PhaseAnchors(s) => s,
            Kind::PhaseWindows(s) => s,
            Kind::SubjectTable(s) => s,
            Kind::Summarize(s) => s,
            Kind::Baseline(s) => s,
            Kind::AssignPhase(s) => s,
        }
    }
}

/// The key of a spelling (codes of `recode`, units of `convert_units`): lower case, no
/// spaces, `µ`/`μ` as `u`.
pub(crate) fn spelling_key(s: &str) -> String {
    s.to_lowercase()
        .chars()
        .filter(|c| !c.is_whitespace())
        .map(|c| if c == 'µ' || c == 'μ' { 'u' } else { c })
        .collect()
}

/// [`spelling_key`] as an expression; a blank value is missing (null).
pub(crate) fn spelling_key_expr(e: Expr) -> Expr {
    let key = e
        .str()
        .to_lowercase()
        .str()
        .replace_all(lit("[µμ]"), lit("u"), false)
        .str()
        .replace_all(lit(r"\s"), lit(""), false);
    when(key.clone().eq(lit("")))
        .then(lit(NULL).cast(DataType::String))
        .otherwise(key)
}

/// `n` zeros, written into the vector before it is returned. `vec![0; n]` asks the allocator
/// for zeroed memory, and a large allocation gets fresh pages that nothing has touched: a
/// loop that adds into them (`*x += v`) then reads each page first, which maps the kernel's
/// shared zero page, and its write copies that page, a second fault that also flushes the
/// page from every core's TLB (on a virtual machine, an interrupt to each). Writing the
/// zeros first costs one fault a page. For vectors that are read before they are written.
pub(crate) fn written_zeros<T: Copy + Default>(n: usize) -> Vec<T> {
    // `black_box`: the optimiser must not see an allocation followed by zeros, which it may
    // turn back into a zeroed allocation.
    let mut v = std::hint::black_box(Vec::with_capacity(n));
    v.resize(n, T::default());
    v
}

/// The rows `rows` of `df` (what `df.take(rows)` gives), each column one chunk. An ingest's
/// table has one chunk per file, and polars' gather from several chunks looks up each row's
/// chunk, for every column. Here each row's chunk and place in it are found once for the
/// table ([`Located`]), and each integer, float, date or text column is gathered from its
/// chunks by them; other columns (and columns chunked otherwise) are made one chunk first and
/// then gathered, which copies the column (on the bench diary, 500 MB over nine columns).
pub(crate) fn gather_rows(df: &DataFrame, rows: &IdxCa) -> PolarsResult<DataFrame> {
    // Columns of one chunk each: polars' take (one bounds check for the table). The caller
    // keeps the table, so nothing is let go of column by column.
    if df.columns().iter().all(|c| c.n_chunks() <= 1) {
        return df.take(rows);
    }
    gather_rows_owned(df.clone(), rows)
}

/// [`gather_rows`] of a table the caller gives up: each of its columns is let go of as soon
/// as it is gathered, so that (when nothing else holds them) the table's memory is freed
/// while its rows are gathered rather than after.
///
/// A table whose columns are each one chunk has no places to find ([`Located::of`]): each
/// column is taken as polars' take would, still a column at a time (a raw table of one file).
pub(crate) fn gather_rows_owned(df: DataFrame, rows: &IdxCa) -> PolarsResult<DataFrame> {
    use rayon::prelude::*;
    let located = Located::of(&df, rows);
    let columns = df
        .into_columns()
        .into_par_iter()
        .map(
            |c| match located.as_ref().map(|l| l.gather(&c)).transpose()? {
                Some(Some(gathered)) => Ok(gathered),
                // (A column of one chunk is not copied by `rechunk`.)
                _ => c.rechunk().take(rows),
            },
        )
        .collect::<PolarsResult<Vec<_>>>()?;
    DataFrame::new(rows.len(), columns)
}

/// Rows of a table as places in its columns' chunks: for each row, its chunk and its place in
/// that chunk, for [`gather_rows`].
struct Located {
    /// The length of each chunk, which every column gathered this way must share.
    lengths: Vec<usize>,
    /// Each row's chunk and place in it.
    places: Vec<(u32, IdxSize)>,
}

impl Located {
    /// The places of `rows` in the chunks of `df`'s first column of several chunks; `None`
    /// when a row is missing or out of range.
    fn of(df: &DataFrame, rows: &IdxCa) -> Option<Located> {
        let first = df.columns().iter().find(|c| c.n_chunks() > 1)?;
        let lengths: Vec<usize> = first.as_materialized_series().chunk_lengths().collect();
        let mut starts = Vec::with_capacity(lengths.len());
        let mut total = 0usize;
        for &n in &lengths {
            starts.push(total);
            total += n;
        }
        if rows.null_count() > 0 {
            return None;
        }
        let mut places = Vec::with_capacity(rows.len());
        for r in rows.into_no_null_iter() {
            let r = r as usize;
            if r >= total {
                return None;
            }
            // The last chunk starting at or before the row (a chunk may be empty).
            let k = starts.partition_point(|&s| s <= r) - 1;
            places.push((k as u32, (r - starts[k]) as IdxSize));
        }
        Some(Located { lengths, places })
    }

    /// Column `c` gathered at the places, one chunk; `None` when its chunks are not the ones
    /// located, or its type is not gathered here.
    fn gather(&self, c: &Column) -> PolarsResult<Option<Column>> {
        if matches!(c, Column::Scalar(_)) {
            return Ok(None);
        }
        let s = c.as_materialized_series();
        if !s.chunk_lengths().eq(self.lengths.iter().copied()) {
            return Ok(None);
        }
        let physical = s.to_physical_repr();
        let gathered: Series = match physical.dtype() {
            DataType::Int8 => self.primitive(physical.i8()?).into_series(),
            DataType::Int16 => self.primitive(physical.i16()?).into_series(),
            DataType::Int32 => self.primitive(physical.i32()?).into_series(),
            DataType::Int64 => self.primitive(physical.i64()?).into_series(),
            DataType::UInt8 => self.primitive(physical.u8()?).into_series(),
            DataType::UInt16 => self.primitive(physical.u16()?).into_series(),
            DataType::UInt32 => self.primitive(physical.u32()?).into_series(),
            DataType::UInt64 => self.primitive(physical.u64()?).into_series(),
            DataType::Float32 => self.primitive(physical.f32()?).into_series(),
            DataType::Float64 => self.primitive(physical.f64()?).into_series(),
            DataType::String => self.text(physical.str()?).into_series(),
            _ => return Ok(None),
        };
        // Back to the column's own type (a date from its days): its physical values unchanged.
        let gathered = if gathered.dtype() == s.dtype() {
            gathered
        } else {
            gathered.cast(s.dtype())?
        };
        Ok(Some(gathered.with_name(s.name().clone()).into_column()))
    }

    /// Whether each place holds a value (each chunk's validity, `None` where it has none), or
    /// `None` when no chunk has a missing value.
    fn validity(
        &self,
        validities: &[Option<&polars_arrow::bitmap::Bitmap>],
    ) -> Option<polars_arrow::bitmap::Bitmap> {
        if validities
            .iter()
            .all(|v| v.is_none_or(|v| v.unset_bits() == 0))
        {
            return None;
        }
        Some(
            self.places
                .iter()
                .map(|&(k, i)| validities[k as usize].is_none_or(|v| v.get_bit(i as usize)))
                .collect(),
        )
    }

    fn primitive<T: PolarsNumericType>(&self, ca: &ChunkedArray<T>) -> ChunkedArray<T> {
        let slices: Vec<&[T::Native]> = ca.downcast_iter().map(|a| a.values().as_slice()).collect();
        let values: Vec<T::Native> = self
            .places
            .iter()
            .map(|&(k, i)| slices[k as usize][i as usize])
            .collect();
        let validities: Vec<_> = ca.downcast_iter().map(|a| a.validity()).collect();
        ChunkedArray::from_vec_validity(ca.name().clone(), values, self.validity(&validities))
    }

    /// Text: each row's view, pointing into the data buffers of all chunks, listed one chunk
    /// after another (shared, not copied); a view longer than it holds inline has its
    /// buffer's number moved by the buffers of the chunks before its own.
    fn text(&self, ca: &StringChunked) -> StringChunked {
        use polars_arrow::array::{Array, Utf8ViewArray};
        let arrays: Vec<&Utf8ViewArray> = ca.downcast_iter().collect();
        let mut first_buffer = Vec::with_capacity(arrays.len());
        let mut buffers = Vec::new();
        for a in &arrays {
            first_buffer.push(buffers.len() as u32);
            buffers.extend(a.data_buffers().iter().cloned());
        }
        let chunk_views: Vec<&[polars_arrow::array::View]> =
            arrays.iter().map(|a| a.views().as_slice()).collect();
        let views: Vec<polars_arrow::array::View> = self
            .places
            .iter()
            .map(|&(k, i)| {
                let mut v = chunk_views[k as usize][i as usize];
                if v.length > polars_arrow::array::View::MAX_INLINE_SIZE {
                    v.buffer_idx += first_buffer[k as usize];
                }
                v
            })
            .collect();
        let validities: Vec<_> = arrays.iter().map(|a| a.validity()).collect();
        let validity = self.validity(&validities);
        let total_buffer_len = buffers.iter().map(|b| b.len()).sum();
        // SAFETY: every view is a view of a valid UTF-8 array, pointing into that array's own
        // data buffers, which are all listed, in order, from `first_buffer` of its chunk on;
        // views held inline point into no buffer.
        let array = unsafe {
            Utf8ViewArray::new_unchecked_unknown_md(
                ArrowDataType::Utf8View,
                views.into(),
                buffers.into(),
                validity,
                Some(total_buffer_len),
            )
        };
        StringChunked::with_chunk(ca.name().clone(), array)
    }
}

/// Why a stage whose rows go together by `columns` (a key, groups) may mix subjects: `None`
/// when a subject column is among them ([`Stage::across_subjects`]). `what` names the columns
/// in the reason, with its verb (`"its key"`, `"holds"`).
pub(crate) fn no_subject_in(
    columns: &[String],
    subject_columns: &[String],
    (what, verb): (&str, &str),
) -> Option<String> {
    (!columns.iter().any(|c| subject_columns.contains(c))).then(|| {
        format!(
            "{what} ({}) {verb} no subject column ({})",
            columns.join(", "),
            subject_columns.join(", ")
        )
    })
}

/// True for the types whose values compare as they are stored, one value to one stored form:
/// text, booleans, dates and times, integers (not floating point, where `-0.0 == 0.0`).
pub(crate) fn exact_key(dtype: &DataType) -> bool {
    matches!(
        dtype,
        DataType::String
            | DataType::Boolean
            | DataType::Date
            | DataType::Datetime(_, _)
            | DataType::Int8
            | DataType::Int16
            | DataType::Int32
            | DataType::Int64
            | DataType::UInt8
            | DataType::UInt16
            | DataType::UInt32
            | DataType::UInt64
    )
}

/// Distinct rows: for each row of `df`, the number of its distinct combination of `columns`
/// (missing equals missing), and the first row of each combination, in no particular order.
/// Work that is a function of those columns alone can be done once per combination and
/// gathered back by the numbers. Floating-point values are told apart by their bits (`-0.0`
/// and `0.0` are written differently, and grouping by value would equate them). `None` when a
/// column is not there or is of a type not grouped here (nested, objects).
pub(crate) fn distinct_rows(
    df: &DataFrame,
    columns: &[String],
) -> PolarsResult<Option<(IdxCa, IdxCa)>> {
    if columns.is_empty() {
        return Ok(None);
    }
    let mut keys = Vec::with_capacity(columns.len());
    for c in columns {
        let Ok(column) = df.column(c) else {
            return Ok(None);
        };
        let key = match column.dtype() {
            // (A 32-bit float widens exactly, its sign of zero kept: one 64-bit value each.)
            DataType::Float32 | DataType::Float64 => column
                .cast(&DataType::Float64)?
                .f64()?
                .iter()
                .map(|v| v.map(f64::to_bits))
                .collect::<UInt64Chunked>()
                .with_name(c.into())
                .into_column(),
            dt if exact_key(dt) => column.clone(),
            _ => return Ok(None),
        };
        keys.push(key);
    }
    let n = df.height();
    let keys = DataFrame::new(n, keys)?;
    let by = keys.group_by(columns.iter().map(|c| c.as_str()))?;
    let mut ids: Vec<IdxSize> = vec![0; n];
    let mut firsts: Vec<IdxSize> = Vec::new();
    match &**by.get_groups() {
        GroupsType::Idx(groups) => {
            for (k, (first, rows)) in groups.iter().enumerate() {
                firsts.push(first);
                for &r in rows.iter() {
                    ids[r as usize] = k as IdxSize;
                }
            }
        }
        GroupsType::Slice { groups, .. } => {
            for (k, [start, len]) in groups.iter().enumerate() {
                firsts.push(*start);
                for r in *start..start + len {
                    ids[r as usize] = k as IdxSize;
                }
            }
        }
    }
    Ok(Some((
        IdxCa::from_vec("distinct".into(), ids),
        IdxCa::from_vec("first".into(), firsts),
    )))
}

/// A validity bitmap of `flags`, one bit per flag, its bytes packed on every core (flags
/// filled in place by several workers, where a bitmap is grown one bit at a time).
pub(crate) fn bitmap_of(flags: &[bool]) -> PolarsResult<polars_arrow::bitmap::Bitmap> {
    use rayon::prelude::*;
    const BYTES: usize = 1 << 13;
    let mut bytes = vec![0u8; flags.len().div_ceil(8)];
    bytes
        .par_chunks_mut(BYTES)
        .zip(flags.par_chunks(8 * BYTES))
        .for_each(|(bytes, flags)| {
            for (byte, eight) in bytes.iter_mut().zip(flags.chunks(8)) {
                *byte = eight
                    .iter()
                    .enumerate()
                    .fold(0, |b, (bit, &f)| b | (u8::from(f) << bit));
            }
        });
    polars_arrow::bitmap::Bitmap::try_new(bytes, flags.len())
}

/// Runs of consecutive equal rows: for each row of `df`, the number of its run of rows equal in
/// every one of `columns` (missing equals missing), and the first row of each run. On a table
/// sorted by those columns there is one run per distinct value, and work keyed by the run
/// (a lookup, a grouping) is done once per run instead of once per row; on any other table it
/// is still right, the runs just being shorter.
pub(crate) fn runs(df: &DataFrame, columns: &[&str]) -> PolarsResult<(IdxCa, IdxCa)> {
    let n = df.height();
    let first_rows = run_starts(df, columns)?;
    let firsts: &[IdxSize] = match first_rows.is_empty() {
        true => &[],
        false => first_rows.cont_slice()?,
    };
    // Each run's number given to its rows, a run at a time.
    let mut run_of_row: Vec<IdxSize> = Vec::with_capacity(n);
    for (run, &first) in firsts.iter().enumerate() {
        let end = firsts.get(run + 1).map_or(n, |&next| next as usize);
        run_of_row.extend(std::iter::repeat_n(run as IdxSize, end - first as usize));
    }
    Ok((IdxCa::from_vec("__run".into(), run_of_row), first_rows))
}

/// The first row of each run of [`runs`], without numbering every row: where a caller needs
/// only the runs (their first rows, their spans), not each row's run.
pub(crate) fn run_starts(df: &DataFrame, columns: &[&str]) -> PolarsResult<IdxCa> {
    let n = df.height();
    // Whether each row but the first differs from the row before in any of `columns`: the
    // table's rows after the first against its rows before the last (slices, not copies).
    let mut differs: Option<BooleanChunked> = None;
    for c in columns {
        let s = df.column(c)?.as_materialized_series();
        if n < 2 {
            break;
        }
        let d = match s.dtype() {
            DataType::String => text_differs(s.str()?),
            _ => s.slice(1, n - 1).not_equal_missing(&s.slice(0, n - 1))?,
        };
        differs = Some(match differs {
            Some(before) => &before | &d,
            None => d,
        });
    }
    let mut first_rows: Vec<IdxSize> = Vec::new();
    if n > 0 {
        first_rows.push(0);
    }
    if let Some(differs) = differs {
        // Bit `i` of `differs` is row `i + 1`; a run starts at each set bit (not at a missing
        // one), found a word at a time.
        let mut row = 1;
        for a in differs.downcast_iter() {
            let starts = match a.validity() {
                Some(valid) if valid.unset_bits() > 0 => a.values() & valid,
                _ => a.values().clone(),
            };
            first_rows.extend(starts.true_idx_iter().map(|i| (row + i) as IdxSize));
            row += a.len();
        }
    }
    Ok(IdxCa::from_vec("__first".into(), first_rows))
}

/// Whether `values` never go down (each at least the one before it).
pub(crate) fn non_decreasing<T: PartialOrd + Copy>(values: impl IntoIterator<Item = T>) -> bool {
    let mut values = values.into_iter();
    let Some(mut last) = values.next() else {
        return true;
    };
    values.all(|x| {
        let up = x >= last;
        last = x;
        up
    })
}

/// Whether rows `a` and `b` of `text` (both not null) hold the same value: equal views are
/// equal values (inline, 12 bytes or fewer, or pointing to the same bytes of the array), and
/// otherwise the bytes are compared only when length and prefix agree. polars' comparison reads
/// the bytes of every value longer than a view holds inline, even where both rows point to the
/// same bytes; a source file's path is such a value, the same in every row of its file.
pub(crate) fn same_text(text: &polars_arrow::array::Utf8ViewArray, a: usize, b: usize) -> bool {
    let views = text.views();
    same_viewed(text, views[a], views[b], a, b)
}

/// [`same_text`] with the rows' views already read (`x` of row `a`, `y` of row `b`).
#[inline]
fn same_viewed(
    text: &polars_arrow::array::Utf8ViewArray,
    x: polars_arrow::array::View,
    y: polars_arrow::array::View,
    a: usize,
    b: usize,
) -> bool {
    x.as_u128() == y.as_u128()
        || (x.length == y.length
            && x.length > 12
            && x.prefix == y.prefix
            // SAFETY: `a` and `b` are below the array's length (their views were read).
            && unsafe { text.value_unchecked(a) == text.value_unchecked(b) })
}

/// Whether each row but the first of `text` differs from the row before (missing equals
/// missing), for [`runs`]: rows of one chunk compared by [`same_text`].
fn text_differs(text: &StringChunked) -> BooleanChunked {
    use polars_arrow::array::Array;
    use polars_arrow::bitmap::MutableBitmap;
    let n = text.len();
    let mut out = MutableBitmap::with_capacity(n.saturating_sub(1));
    // The last row of the chunk before: its value (or missing).
    let mut last: Option<Option<&str>> = None;
    for arr in text.downcast_iter() {
        if arr.is_empty() {
            continue;
        }
        let validity = arr.validity();
        let valid = |i: usize| validity.is_none_or(|v| v.get_bit(i));
        // SAFETY: `i < arr.len()` at both calls below.
        let value = |i: usize| valid(i).then(|| unsafe { arr.value_unchecked(i) });
        if let Some(before) = last {
            out.push(before != value(0));
        }
        if arr.null_count() == 0 {
            // No missing value: each row against the one before, packed 64 to a word. (Never
            // with no rows: polars' bitmap then adds a byte it does not count, and the next
            // bit pushed lands after it.)
            if arr.len() > 1 {
                // Neighbouring views read from the slice (not through the array per row), 64
                // rows to a word: first whether their views differ, then, for those rows only,
                // whether they still hold the same text (a longer one kept in two places).
                let views = arr.views().as_slice();
                let pairs = views.len() - 1;
                let mut k = 0;
                while k < pairs {
                    let bits = (pairs - k).min(64);
                    let (before, after) = (&views[k..k + bits], &views[k + 1..k + 1 + bits]);
                    let mut word = 0u64;
                    for (j, (x, y)) in before.iter().zip(after).enumerate() {
                        word |= u64::from(x.as_u128() != y.as_u128()) << j;
                    }
                    let mut differ = word;
                    while differ != 0 {
                        let j = differ.trailing_zeros() as usize;
                        differ &= differ - 1;
                        let i = k + j + 1;
                        if same_viewed(arr, views[i - 1], views[i], i - 1, i) {
                            word &= !(1u64 << j);
                        }
                    }
                    out.extend_from_slice(&word.to_le_bytes(), 0, bits);
                    k += bits;
                }
            }
        } else {
            for i in 1..arr.len() {
                let differs = match (valid(i - 1), valid(i)) {
                    (false, false) => false,
                    (true, true) => !same_text(arr, i - 1, i),
                    _ => true,
                };
                out.push(differs);
            }
        }
        last = Some(value(arr.len() - 1));
    }
    BooleanChunked::from_bitmap("__differs".into(), out.freeze())
}

/// The runs of [`runs`] as slices of rows: each run's first row and its number of rows, from
/// the runs' first rows (`first_rows`) in a table of `n` rows.
pub(crate) fn run_spans(first_rows: &IdxCa, n: usize) -> Vec<[IdxSize; 2]> {
    let firsts: Vec<IdxSize> = first_rows.into_no_null_iter().collect();
    let ends = firsts.iter().skip(1).copied().chain([n as IdxSize]);
    firsts
        .iter()
        .zip(ends)
        .map(|(&first, end)| [first, end - first])
        .collect()
}

/// The runs of equal values of a column ([`runs`]) and each run's value looked up among
/// sorted distinct values ([`places_of_runs`]).
pub(crate) struct RunPlaces {
    /// Each row's run.
    pub run_of_row: IdxCa,
    /// Each run's first row.
    pub first_rows: IdxCa,
    /// Each run's value's place among the sorted values (0 where it is not there).
    pub place: IdxCa,
    /// Whether each run's value is among the sorted values (a missing value is not).
    pub found: BooleanChunked,
    /// How many sorted values there are.
    pub sorted: usize,
}

/// The runs of `values` and each run's value's place among `sorted` (distinct values,
/// ascending, no missing one), looked up once per run. `sorted_of` gives the sorted values
/// from the runs' values (one per run), so a caller that looks values up among their own
/// distinct values finds those once per run too.
pub(crate) fn places_of_runs(
    values: &Series,
    sorted_of: impl FnOnce(&Series) -> PolarsResult<Series>,
) -> PolarsResult<RunPlaces> {
    let n = values.len();
    let (run_of_row, first_rows) = runs(
        &DataFrame::new(
            n,
            vec![values.clone().with_name("__v".into()).into_column()],
        )?,
        &["__v"],
    )?;
    let run_values = values.take(&first_rows)?;
    let sorted = sorted_of(&run_values)?;
    let (place, found) = if sorted.is_empty() {
        let k = first_rows.len();
        (
            IdxCa::full("__place".into(), 0, k),
            BooleanChunked::full("__found".into(), false, k),
        )
    } else {
        let last = (sorted.len() - 1) as IdxSize;
        let look_up = |values: &Series| -> PolarsResult<(IdxCa, BooleanChunked)> {
            let place = search_sorted(&sorted, values, SearchSortedSide::Left, false)?
                .apply_values(|p| p.min(last));
            let found = sorted.take(&place)?.equal_missing(values)?;
            Ok((place, found))
        };
        match view_groups(&run_values) {
            // Each distinct view looked up once (a text alternating row by row, as a lab's
            // parameter in a table sorted by subject and date, has a run at every row).
            Some((firsts, group)) => {
                let (place, found) = look_up(&run_values.take(&firsts)?)?;
                (place.take(&group)?, found.take(&group)?)
            }
            None => look_up(&run_values)?,
        }
    };
    Ok(RunPlaces {
        run_of_row,
        first_rows,
        place,
        found,
        sorted: sorted.len(),
    })
}

/// The rows of a text column of one chunk grouped by their view: the first row of each
/// distinct view, and each row's group (missing rows make a group of their own). Rows of one
/// view hold one text: a short text lies in its view whole, a longer one's view names its
/// place in the buffers. `None` for other columns, and as soon as most rows so far have views
/// of their own (each would be looked up anyway).
fn view_groups(values: &Series) -> Option<(IdxCa, IdxCa)> {
    use polars_arrow::array::Array;
    let text = values.str().ok()?;
    if text.chunks().len() != 1 {
        return None;
    }
    let array = text.downcast_iter().next()?;
    let views = array.views().as_slice();
    let mut group_of: PlHashMap<Option<u128>, IdxSize> = PlHashMap::default();
    let mut firsts: Vec<IdxSize> = Vec::new();
    let mut groups: Vec<IdxSize> = Vec::with_capacity(views.len());
    for (i, view) in views.iter().enumerate() {
        let key = array.is_valid(i).then(|| view.as_u128());
        let group = *group_of.entry(key).or_insert_with(|| {
            firsts.push(i as IdxSize);
            (firsts.len() - 1) as IdxSize
        });
        groups.push(group);
        if i >= 1024 && 2 * firsts.len() > i {
            return None;
        }
    }
    Some((
        IdxCa::from_vec("__first".into(), firsts),
        IdxCa::from_vec("__group".into(), groups),
    ))
}

/// A stage context for unit tests of kinds: a minimal pipeline, run date 2026-11-25.
#[cfg(test)]
pub mod tests_support {
    use super::*;

    pub fn ctx_for<R>(f: impl FnOnce(&StageCtx) -> R) -> R {
        let yaml = "pipeline: test\nstages:\n  - name: t\n    kind: sql\n    query: SELECT 1\n";
        let spec = PipelineSpec::parse(Path::new("test.yaml"), yaml.into()).expect("test yaml");
        let ctx = StageCtx {
            name: "t",
            spec: &spec,
            run_date: NaiveDate::from_ymd_opt(2026, 11, 25).expect("date"),
            data_dir: Path::new("."),
            base_dir: Path::new("."),
            sources: &[],
        };
        f(&ctx)
    }

    /// Values of a column as text (`null` for missing), for assertions.
    pub fn strings(df: &DataFrame, column: &str) -> Vec<String> {
        let c = df
            .column(column)
            .expect("column")
            .cast(&DataType::String)
            .expect("cast");
        c.str()
            .expect("str")
            .iter()
            .map(|v| v.unwrap_or("null").to_string())
            .collect()
    }

    /// Values of an integer column, for assertions.
    pub fn ints(df: &DataFrame, column: &str) -> Vec<Option<i64>> {
        let c = df
            .column(column)
            .expect("column")
            .cast(&DataType::Int64)
            .expect("cast");
        c.i64().expect("i64").iter().collect()
    }

    /// A Date column from `YYYY-MM-DD` strings (for `df!`).
    pub fn dates(days: &[&str]) -> Series {
        let epoch = NaiveDate::from_ymd_opt(1970, 1, 1).expect("date");
        let v: Vec<Option<i32>> = days
            .iter()
            .map(|d| {
                NaiveDate::parse_from_str(d, "%Y-%m-%d")
                    .ok()
                    .map(|d| (d - epoch).num_days() as i32)
            })
            .collect();
        Series::new("d".into(), v)
            .cast(&DataType::Date)
            .expect("date cast")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs by hand: a run ends where any of the columns changes, missing equals missing, and
    /// the table's chunks do not matter.
    #[test]
    fn runs_are_the_stretches_of_rows_equal_in_every_column() {
        let part = |s: Vec<Option<&str>>, n: Vec<Option<i64>>| df!("s" => s, "n" => n).unwrap();
        let mut df = part(
            vec![Some("a"), Some("a"), None, None],
            vec![Some(1), Some(1), Some(1), Some(1)],
        );
        df.vstack_mut(&part(
            vec![None, Some("a"), Some("a"), Some("a")],
            vec![None, None, None, Some(2)],
        ))
        .unwrap();
        let ids = |ca: IdxCa| ca.into_no_null_iter().collect::<Vec<_>>();
        let (run_of_row, first) = runs(&df, &["s", "n"]).unwrap();
        assert_eq!(ids(run_of_row), [0, 0, 1, 1, 2, 3, 3, 4]);
        assert_eq!(ids(first), [0, 2, 4, 5, 7]);
        let (run_of_row, first) = runs(&df, &["s"]).unwrap();
        assert_eq!(ids(run_of_row), [0, 0, 1, 1, 1, 2, 2, 2]);
        assert_eq!(ids(first), [0, 2, 5]);
        // No column: one run; one row; no row.
        assert_eq!(ids(runs(&df, &[]).unwrap().1), [0]);
        assert_eq!(ids(runs(&df.slice(3, 1), &["s"]).unwrap().0), [0]);
        let (run_of_row, first) = runs(&df.slice(0, 0), &["s"]).unwrap();
        assert_eq!((run_of_row.len(), first.len()), (0, 0));
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(24))]
        /// The bitmap packed on every core has the bits of a bitmap grown flag by flag, across
        /// the workers' pieces (65,536 flags each) and in the last, partial byte.
        #[test]
        fn bitmap_of_flags_is_the_bitmap_grown_bit_by_bit(
            len in 0usize..140_000,
            seed in proptest::prelude::any::<u64>(),
            every in 1u64..9,
        ) {
            let flags: Vec<bool> = (0..len as u64)
                .map(|i| (i.wrapping_mul(seed | 1) >> 7) % every == 0)
                .collect();
            let ours = bitmap_of(&flags).unwrap();
            let grown = polars_arrow::bitmap::Bitmap::from_iter(flags.iter().copied());
            proptest::prop_assert_eq!(ours.len(), flags.len());
            proptest::prop_assert!(ours.iter().eq(grown.iter()));
            proptest::prop_assert_eq!(ours.unset_bits(), grown.unset_bits());
        }
    }

    proptest::proptest! {
        /// Runs of long and short stretches, over hundreds of rows (whole 64-row words with
        /// and without a run start, and the rows after the last word), in chunks and slices
        /// that start inside a word, match a row-by-row count.
        #[test]
        fn runs_match_a_row_by_row_count(
            stretches in proptest::collection::vec((0i64..3, 1usize..150), 1..12),
            nulls in proptest::collection::vec(0usize..400, 0..3),
            split in 0usize..400,
            from in 0usize..70,
        ) {
            let mut values: Vec<Option<i64>> = stretches
                .iter()
                .flat_map(|&(v, len)| std::iter::repeat_n(Some(v), len))
                .collect();
            for i in nulls {
                if i < values.len() {
                    values[i] = None;
                }
            }
            let split = split.min(values.len());
            let mut df = df!("n" => &values[..split]).unwrap();
            df.vstack_mut(&df!("n" => &values[split..]).unwrap()).unwrap();
            let from = from.min(values.len());
            let df = df.slice(from as i64, values.len() - from);
            let values = &values[from..];
            let (run_of_row, first) = runs(&df, &["n"]).unwrap();
            let (mut want_runs, mut want_first) = (Vec::new(), Vec::new());
            for (i, v) in values.iter().enumerate() {
                if i == 0 || values[i - 1] != *v {
                    want_first.push(i as IdxSize);
                }
                want_runs.push(want_first.len() as IdxSize - 1);
            }
            proptest::prop_assert_eq!(run_of_row.into_no_null_iter().collect::<Vec<_>>(), want_runs);
            proptest::prop_assert_eq!(first.into_no_null_iter().collect::<Vec<_>>(), want_first);
        }
    }

    proptest::proptest! {
        /// Text compared view first gives polars' comparison of the rows with the rows before,
        /// on columns of several chunks, nulls, inline and long values, and equal long values
        /// stored apart (in different chunks, and repeated within one); chunks of more than
        /// one 64-row word, and of a part of one.
        #[test]
        fn text_differs_is_polars_comparison(
            parts in proptest::collection::vec((
                proptest::collection::vec(proptest::option::of(0usize..6), 0..150),
                proptest::bool::ANY), 1..5),
        ) {
            let pool = ["", "S1", "twelve-bytes", "hamburg/diary_2019-03-31.csv",
                "hamburg/diary_2019-07-01.csv", "nih/diary_2019-03-30.csv"];
            let mut column = Series::new_empty("t".into(), &DataType::String);
            for (part, complete) in &parts {
                // Each part is one chunk, its long values written in its own buffer (one copy
                // per row); some without a missing value (compared a word of rows at a time).
                let values: Vec<Option<&str>> = part
                    .iter()
                    .map(|v| match (v, complete) {
                        (None, true) => Some(pool[4]),
                        _ => v.map(|i| pool[i]),
                    })
                    .collect();
                column.append(&Series::new("t".into(), values)).unwrap();
            }
            // And a chunk of repeats of one stored value (views to the same bytes).
            let repeated = Series::new("t".into(), [Some(pool[3])]).new_from_index(0, 4);
            column.append(&repeated).unwrap();
            let n = column.len();
            let ours: Vec<Option<bool>> = text_differs(column.str().unwrap()).iter().collect();
            let want: Vec<Option<bool>> = column
                .slice(1, n - 1)
                .not_equal_missing(&column.slice(0, n - 1))
                .unwrap()
                .iter()
                .collect();
            proptest::prop_assert_eq!(ours, want);
        }
    }

    /// Runs whose views repeat are looked up once per view ([`view_groups`]): the places
    /// and the found flags are those a search of every run gives, missing values and values
    /// not among the sorted ones included.
    #[test]
    fn runs_looked_up_by_view_find_what_searching_every_run_finds() {
        let pool = Series::new(
            "p".into(),
            [
                "a",
                "nih",
                "a much longer value",
                "another long value here",
                "zz",
            ],
        );
        let picks = (0..5000u32).map(|i| (i % 7 != 3).then_some((i * 3 % 5) as IdxSize));
        let values = pool
            .take(&IdxCa::from_iter_options("i".into(), picks))
            .unwrap();
        let sorted = Series::new("s".into(), ["a", "a much longer value", "b", "nih"]);
        let r = places_of_runs(&values, |_| Ok(sorted.clone())).unwrap();
        let run_values = values.take(&r.first_rows).unwrap();
        assert!(view_groups(&run_values).is_some(), "the views repeat");
        let place = search_sorted(&sorted, &run_values, SearchSortedSide::Left, false)
            .unwrap()
            .apply_values(|p| p.min(3));
        let found = sorted
            .take(&place)
            .unwrap()
            .equal_missing(&run_values)
            .unwrap();
        let ours: Vec<Option<IdxSize>> = r.place.iter().collect();
        assert_eq!(ours, place.iter().collect::<Vec<_>>());
        let ours: Vec<Option<bool>> = r.found.iter().collect();
        assert_eq!(ours, found.iter().collect::<Vec<_>>());
        assert!(ours.contains(&Some(true)) && ours.contains(&Some(false)));
        // Text each in its own place (no view repeats) is searched run by run.
        let own: Vec<String> = (0..3000).map(|i| format!("value number {i:06}")).collect();
        assert!(view_groups(&Series::new("o".into(), own)).is_none());
    }

    proptest::proptest! {
        // Tables of two to five chunks (some empty), with missing values in each kind of
        // column, gathered at any rows (repeats, any order): the same as polars' take, each
        // column one chunk, and the located gather used for every kind it covers.
        #[test]
        fn gather_rows_by_places_equals_take(
            chunks in proptest::collection::vec(
                proptest::collection::vec(
                    (
                        proptest::option::of(-5i32..5),
                        proptest::option::of(proptest::num::f64::NORMAL),
                        proptest::option::of(0usize..3),
                        -3i64..3,
                    ),
                    0..12,
                ),
                2..6,
            ),
            picks in proptest::collection::vec(0usize..1000, 0..40),
        ) {
            let texts = ["a", "a text longer than twelve bytes", ""];
            let parts: Vec<DataFrame> = chunks
                .iter()
                .enumerate()
                .map(|(k, rows)| {
                    let n = rows.len();
                    // Each chunk a slice of a longer one (its first rows again in front), so
                    // that its validity starts within a byte.
                    let skip = k % 4;
                    let rows: Vec<_> =
                        rows.iter().cycle().take(skip.min(n)).chain(rows).cloned().collect();
                    let mut df = df!(
                        "i" => rows.iter().map(|r| r.0).collect::<Vec<_>>(),
                        "f" => rows.iter().map(|r| r.1).collect::<Vec<_>>(),
                        "t" => rows.iter().map(|r| r.2.map(|t| texts[t])).collect::<Vec<_>>(),
                        "l" => rows.iter().map(|r| r.3).collect::<Vec<_>>(),
                        "b" => rows.iter().map(|r| r.3 > 0).collect::<Vec<_>>(),
                    )
                    .unwrap();
                    let d = df.column("i").unwrap().cast(&DataType::Date).unwrap();
                    df.with_column(d.with_name("d".into())).unwrap();
                    let file = format!("a file path of chunk {k}, longer than a view holds");
                    df.with_column(Column::new("file".into(), vec![file; rows.len()])).unwrap();
                    df.slice((rows.len() - n) as i64, n)
                })
                .collect();
            let mut df = parts[0].clone();
            for p in &parts[1..] {
                df.vstack_mut(p).unwrap();
            }
            let total = df.height();
            proptest::prop_assume!(total > 0);
            let rows = IdxCa::from_vec(
                "r".into(),
                picks.iter().map(|&p| (p % total) as IdxSize).collect(),
            );
            let gathered = gather_rows(&df, &rows).unwrap();
            let taken = df.take(&rows).unwrap();
            proptest::prop_assert_eq!(gathered.schema(), taken.schema());
            proptest::prop_assert!(gathered.equals_missing(&taken));
            proptest::prop_assert!(gathered.columns().iter().all(|c| c.n_chunks() <= 1));
            if df.column("i").unwrap().n_chunks() > 1 {
                let located = Located::of(&df, &rows).unwrap();
                for name in ["i", "f", "t", "l", "d", "file"] {
                    let by_places = located.gather(df.column(name).unwrap()).unwrap();
                    proptest::prop_assert!(by_places.is_some(), "`{}` not gathered by places", name);
                }
                // Booleans are left to polars.
                proptest::prop_assert!(located.gather(df.column("b").unwrap()).unwrap().is_none());
            }
        }
    }

    /// Gathering column by column from several chunks gives what `take` gives: values,
    /// missing values, types and names, with rows repeated, reordered and left out.
    #[test]
    fn gather_rows_equals_take_on_a_table_of_several_chunks() {
        let part = |from: i64| {
            df!(
                "n" => [Some(from), None, Some(from + 2)],
                "s" => [Some(format!("a rather long text {from}")), Some("x".into()), None],
                "d" => [Some(1.5 * from as f64), Some(0.0), None],
            )
            .unwrap()
            .lazy()
            .with_column(lit("one per file").alias("c"))
        };
        let df = concat([part(0), part(10), part(20)], UnionArgs::default())
            .unwrap()
            .collect()
            .unwrap();
        assert!(df.columns().iter().any(|c| c.n_chunks() > 1));
        let rows = IdxCa::from_vec("r".into(), vec![8, 0, 4, 4, 1, 7, 2]);
        let gathered = gather_rows(&df, &rows).unwrap();
        let taken = df.take(&rows).unwrap();
        assert_eq!(gathered.schema(), taken.schema());
        assert!(gathered.equals_missing(&taken));
        assert_eq!(gathered.height(), 7);
        assert!(gathered.columns().iter().all(|c| c.n_chunks() == 1));
        // One chunk already: the same as take.
        let single = taken.clone();
        let again = gather_rows(&single, &IdxCa::from_vec("r".into(), vec![6, 0])).unwrap();
        assert!(
            again.equals_missing(
                &single
                    .take(&IdxCa::from_vec("r".into(), vec![6, 0]))
                    .unwrap()
            )
        );
    }
}
