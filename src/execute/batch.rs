//! Running the stages after the ingests in subject batches (`run --batch-subjects N`,
//! docs/subject-batches.md): the ingests run as always; their tables are then cut by subject
//! id into batches of about N subjects, and every later stage runs on one batch's rows at a
//! time, in the same order as a whole run. A batch's tables are dropped once the stages of the
//! batch that read them have run, and each published table is written part by part. The
//! ingests' tables, and each batch's rejected and set-aside rows, wait in a spill folder on
//! disk: the run holds the batches in flight and, of each published table, the rows waiting
//! for a row group, not every stage's whole table.
//!
//! This gives the same tables as a whole run when every stage after the ingests works subject
//! by subject ([`crate::stages::Stage::across_subjects`]); a plan with a stage that does not
//! runs whole, and says why. Batches are cut in the order of the subject ids, so a published
//! table sorted by subject first is sorted as a whole; each part's order against the one
//! before it is checked as it is written.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use super::*;
use crate::cache::TablePart;
use crate::manifest::TableRecord;
use crate::publish::TableWriter;
use crate::reuse::FileState;

/// Most batches a run is cut into (each reads a spill file per file of every source).
const MAX_BATCHES: usize = 1000;

/// The subject column of each ingest stage's source (`None` for the other stages).
type SubjectColumns = Vec<Option<String>>;

/// One stage's output for one batch.
struct Part {
    summary: StageSummary,
    rejects: Option<DataFrame>,
    dropped: Option<DataFrame>,
    /// The rows to publish (published stages only), sorted as published.
    table: Option<DataFrame>,
    seconds: f64,
}

/// What the batches of one stage add up to, as they are committed in batch order.
#[derive(Default)]
struct Sum {
    summary: Option<StageSummary>,
    /// The batches whose rejected rows (and set-aside rows) wait in the spill, in batch
    /// order: held there, not in memory, until the stage's cache entry is written.
    rejects: Vec<usize>,
    dropped: Vec<Dropped>,
    writer: Option<TableWriter>,
    /// The sort key of the last published row, to check the next part's order against.
    last: Option<DataFrame>,
    seconds: f64,
}

/// A batch's set-aside rows of a stage in the spill ([`Spill::write_dropped`]).
struct Dropped {
    batch: usize,
    /// The file of each record batch (a run of rows of one file, lines ascending); `None`
    /// when the rows have no file and line columns, or a row without a file (one record
    /// batch).
    files: Option<Vec<String>>,
}

/// A stage's parts are committed in batch order as the batches make them: a batch's part made
/// before the parts of the batches before it waits here until they are committed. Each stage
/// has its own, so that batches committing different stages do not wait for each other.
#[derive(Default)]
struct Commit {
    /// The batch whose part is committed next.
    next: usize,
    /// The parts of later batches, made before that one's.
    waiting: BTreeMap<usize, Part>,
    sum: Sum,
}

/// A stage's fingerprint, cache key and recipe, decided before the batches run.
struct Decided {
    fingerprint: String,
    key: String,
    recipe: Recipe,
    reasons: Vec<String>,
}

/// Adds the row counts of `b` to `a`.
fn add_summary(a: &mut StageSummary, b: StageSummary) {
    a.rows += b.rows;
    a.rejected += b.rejected;
    a.set_aside += b.set_aside;
    a.has_srcfile |= b.has_srcfile;
    a.has_rejects |= b.has_rejects;
    a.has_dropped |= b.has_dropped;
    for (mine, theirs) in [
        (&mut a.accepted_by_file, b.accepted_by_file),
        (&mut a.rejected_by_file, b.rejected_by_file),
        (&mut a.collapsed_by_file, b.collapsed_by_file),
        (&mut a.superseded_by_file, b.superseded_by_file),
    ] {
        for (file, n) in theirs {
            *mine.entry(file).or_default() += n;
        }
    }
    a.files.extend(b.files);
}

/// The rows of each batch in `table`: batch `b` holds the subject ids from `bounds[b - 1]`
/// (inclusive) to `bounds[b]` (exclusive); rows without a subject id go to the first batch.
/// Each subject is looked up once per run of its rows.
fn rows_by_batch(table: &DataFrame, column: &str, bounds: &[String]) -> PolarsResult<Vec<IdxCa>> {
    let ids = table.column(column)?.cast(&DataType::String)?;
    let ids = ids.str()?;
    let mut rows: Vec<Vec<IdxSize>> = vec![Vec::new(); bounds.len() + 1];
    let mut last: Option<(Option<&str>, usize)> = None;
    for (i, id) in ids.iter().enumerate() {
        let batch = match last {
            Some((seen, batch)) if seen == id => batch,
            _ => {
                let batch = id.map_or(0, |id| bounds.partition_point(|b| b.as_str() <= id));
                last = Some((id, batch));
                batch
            }
        };
        rows[batch].push(i as IdxSize);
    }
    Ok(rows
        .into_iter()
        .map(|r| IdxCa::from_vec("__rows".into(), r))
        .collect())
}

/// Rows of a file's set-aside rows handed over at a time, in line order
/// ([`Spill::dropped_by_file`]).
const SORTED_SLICE: usize = 1 << 16;

/// The fewest rows of a record batch of set-aside rows in the spill ([`Spill::dropped_chunk`]).
const MIN_DROPPED_CHUNK: usize = 1 << 8;

/// Rows of set-aside rows of one file and batch per record batch of the spill, for a run in
/// `batches` batches: a slice of [`SORTED_SLICE`] rows draws about `SORTED_SLICE / batches`
/// rows from each batch, so a record batch of that many is decoded about once, and one held
/// back per batch for the next slice comes to about a slice's rows.
fn dropped_chunk(batches: usize) -> usize {
    (SORTED_SLICE / batches.max(1)).max(MIN_DROPPED_CHUNK)
}

/// The ingests' rows, batch by batch, in Arrow IPC files of a folder of the run (removed when
/// the batches are done, or when the run fails): one file per raw file, a record batch per
/// piece of it and subject batch, so that a file's table is read once and let go of, and a
/// batch reads only its record batches ([`Spill::blocks`]).
struct Spill {
    dir: PathBuf,
    /// Of each ingest (by stage), an empty table of its columns, for a batch without rows.
    empty: Vec<Option<DataFrame>>,
    /// Of each ingest (by stage), the file entry of each file read back from the file cache:
    /// its rows were spilled without the columns the entry leaves out, which a batch puts
    /// back ([`cache::with_file_constants`]).
    entries: Vec<BTreeMap<usize, cache::FileEntry>>,
    /// Of each file spilled (by stage and file), the record batches of its spill file that
    /// hold each subject batch's rows, in reading order ([`Spill::write_file`]).
    blocks: Mutex<BTreeMap<(usize, usize), BlocksOfBatches>>,
    /// The most rows of one file a record batch of set-aside rows holds
    /// ([`dropped_chunk`]).
    dropped_chunk: usize,
}

/// Of each subject batch, the record batches of a spill file that hold its rows.
type BlocksOfBatches = Vec<Vec<usize>>;

impl Spill {
    fn create(dir: PathBuf, stages: usize) -> anyhow::Result<Spill> {
        std::fs::create_dir_all(&dir).map_err(|e| RunError::io(&dir, e))?;
        Ok(Spill {
            dir,
            empty: vec![None; stages],
            entries: vec![BTreeMap::new(); stages],
            blocks: Mutex::new(BTreeMap::new()),
            dropped_chunk: SORTED_SLICE,
        })
    }

    fn path(&self, stage: usize, file: usize) -> PathBuf {
        self.dir.join(format!("{stage}-{file}.arrow"))
    }

    fn part_path(&self, role: &str, stage: usize, batch: usize) -> PathBuf {
        self.dir.join(format!("{role}-{stage}-{batch}.arrow"))
    }

    /// Keeps `rows`, the `role` part (rejects or set-aside rows) that batch `batch` of
    /// `stage` made, until [`Spill::stacked_parts`] reads them back.
    fn write_part(
        &self,
        role: &str,
        stage: usize,
        batch: usize,
        mut rows: DataFrame,
    ) -> anyhow::Result<()> {
        let path = self.part_path(role, stage, batch);
        write_ipc(&path, &mut rows)
    }

    /// Keeps the rows batch `batch` of `stage` set aside, in record batches of rows of one file
    /// (a stage sets rows aside in the order of its input, which an ingest reads file after
    /// file), each run of a file's rows cut into record batches of at most
    /// [`Spill::dropped_chunk`] rows; the file of each record batch ([`Dropped::files`]).
    fn write_dropped(
        &self,
        stage: usize,
        batch: usize,
        mut rows: DataFrame,
    ) -> anyhow::Result<Option<Vec<String>>> {
        let path = self.part_path("dropped", stage, batch);
        let in_blocks = rows.height() > 0
            && rows.column("SRCLINE").is_ok()
            && rows
                .column("SRCFILE")
                .is_ok_and(|c| c.dtype() == &DataType::String && c.null_count() == 0);
        if !in_blocks {
            write_ipc(&path, &mut rows)?;
            return Ok(None);
        }
        let runs = crate::row_fate::file_runs(&rows)?;
        let mut w = SpillWriter::create(path, rows.schema())?;
        let mut files = Vec::with_capacity(runs.len());
        let chunk = self.dropped_chunk.max(1);
        for (file, start, len) in runs {
            for at in (start..start + len).step_by(chunk) {
                w.write(&rows.slice(at as i64, chunk.min(start + len - at)))?;
                files.push(file.clone());
            }
        }
        w.finish()?;
        Ok(Some(files))
    }

    /// The set-aside rows of `stage` (`parts`, every batch's) handed to `each` file by file, in
    /// the order of the files' names, each file's blocks from every batch put together and its
    /// lines put in order: the order a whole run sets them aside in, which lets the run's
    /// `duplicates` be joined from them without a sort (`row_fate::all_dropped`). One file's
    /// lines, one slice of its rows and the record batches kept for the next slice are held at
    /// a time. `None`, having handed nothing, when a batch's rows are not in
    /// file blocks ([`Spill::stacked_parts`] then puts them together whole); otherwise how
    /// many record batches were decoded whole. The spill files stay until the spill is removed.
    fn dropped_by_file(
        &self,
        stage: usize,
        parts: &[Dropped],
        each: &mut dyn FnMut(DataFrame) -> anyhow::Result<()>,
    ) -> anyhow::Result<Option<usize>> {
        self.dropped_by_file_in(stage, parts, SORTED_SLICE, each)
    }

    /// [`Spill::dropped_by_file`], handing over `slice` rows at a time.
    fn dropped_by_file_in(
        &self,
        stage: usize,
        parts: &[Dropped],
        slice: usize,
        each: &mut dyn FnMut(DataFrame) -> anyhow::Result<()>,
    ) -> anyhow::Result<Option<usize>> {
        let mut decoded = 0;
        let mut blocks: BTreeMap<&str, Vec<(usize, usize)>> = BTreeMap::new();
        for p in parts {
            let Some(files) = &p.files else {
                return Ok(None);
            };
            for (block, file) in files.iter().enumerate() {
                blocks.entry(file).or_default().push((p.batch, block));
            }
        }
        for of_file in blocks.values() {
            let paths: Vec<PathBuf> = of_file
                .iter()
                .map(|&(batch, _)| self.part_path("dropped", stage, batch))
                .collect();
            // The line column of every batch's record batches of the file, put together,
            // gives the order of the file's rows; their other columns are never held together
            // (their lines interleave: the exports are not in subject order). Each slice of
            // the order is gathered from the record batches it draws on, decoded one at a time,
            // its rows copied out of them (on 10,000 subjects, holding one diary file's
            // set-aside rows from every batch, about 650,000, set the run's peak). A batch's
            // rows of a file come in lines ascending, so a slice draws on one or two record
            // batches of each batch; the last one it drew on of each batch is kept for the next
            // slice while those kept come to at most a slice's rows, so that a record batch is
            // decoded about once (until 2026-11-28 a batch's rows of a file were one record
            // batch, decoded whole for every slice: nine times over for a diary file's 570,000
            // set-aside rows on the bench cohort, most of a batched run's last three seconds).
            let mut lines: Option<Series> = None;
            let mut starts = Vec::with_capacity(of_file.len() + 1);
            starts.push(0usize);
            let mut reader = BlockReader::default();
            for (k, &(_, block)) in of_file.iter().enumerate() {
                let l = reader.read(&paths[k], block, Some("SRCLINE"))?;
                let l = l.column("SRCLINE")?.as_materialized_series().clone();
                starts.push(starts[starts.len() - 1] + l.len());
                match &mut lines {
                    Some(all) => {
                        all.append_owned(l)?;
                    }
                    None => lines = Some(l),
                }
            }
            let Some(lines) = lines else {
                continue;
            };
            let order: Vec<IdxSize> = lines
                .arg_sort(SortOptions::default().with_maintain_order(true))
                .into_no_null_iter()
                .collect();
            drop(lines);
            let mut reader = BlockReader::default();
            let mut kept: BTreeMap<usize, DataFrame> = BTreeMap::new();
            for slice in order.chunks(slice.max(1)) {
                // Each record batch's rows in the slice, and their places in it.
                let mut wanted: BTreeMap<usize, (Vec<IdxSize>, Vec<usize>)> = BTreeMap::new();
                for (place, &row) in slice.iter().enumerate() {
                    let k = starts.partition_point(|&s| s <= row as usize) - 1;
                    let (rows, places) = wanted.entry(k).or_default();
                    rows.push((row as usize - starts[k]) as IdxSize);
                    places.push(place);
                }
                let mut gathered: Option<DataFrame> = None;
                let mut from = vec![0 as IdxSize; slice.len()];
                let mut n: IdxSize = 0;
                let mut last_of_batch: BTreeMap<usize, (usize, DataFrame)> = BTreeMap::new();
                for (k, (rows, places)) in wanted {
                    let block = match kept.remove(&k) {
                        Some(b) => b,
                        None => {
                            decoded += 1;
                            reader.read(&paths[k], of_file[k].1, None)?
                        }
                    };
                    let rows = IdxCa::from_vec("rows".into(), rows);
                    let piece = crate::publish::detached_take(&block, &rows)?;
                    last_of_batch.insert(of_file[k].0, (k, block));
                    for place in places {
                        from[place] = n;
                        n += 1;
                    }
                    match &mut gathered {
                        Some(g) => {
                            g.vstack_mut_owned(piece)?;
                        }
                        None => gathered = Some(piece),
                    }
                }
                // Only this slice's last record batches are kept (one kept before that this slice
                // did not draw on is let go of, and read again if a later slice draws on it).
                kept.clear();
                let mut held = 0;
                for (k, block) in last_of_batch.into_values() {
                    held += block.height();
                    if held > slice.len() {
                        break;
                    }
                    kept.insert(k, block);
                }
                if let Some(g) = gathered {
                    each(g.take(&IdxCa::from_vec("rows".into(), from))?)?;
                }
            }
        }
        Ok(Some(decoded))
    }

    /// The `role` parts of `stage` of `batches`, one after the other (`None`: no batch made
    /// one), each file removed once read. Set-aside rows are put in file and line order: a
    /// whole run sets them aside file by file, lines ascending, which lets the run's
    /// `duplicates` be joined from them without a sort (`row_fate::all_dropped`); the
    /// batches' rows of one file would otherwise interleave.
    fn stacked_parts(
        &self,
        role: &str,
        stage: usize,
        batches: &[usize],
    ) -> anyhow::Result<Option<DataFrame>> {
        let mut parts = Vec::with_capacity(batches.len());
        for &b in batches {
            let path = self.part_path(role, stage, b);
            parts.push(read_ipc(&path)?);
            let _ = std::fs::remove_file(&path);
        }
        let has_lines = |d: &DataFrame| d.column("SRCFILE").is_ok() && d.column("SRCLINE").is_ok();
        if role == "dropped" && parts.len() > 1 && parts.iter().all(has_lines) {
            let lazy: Vec<LazyFrame> = parts.into_iter().map(DataFrame::lazy).collect();
            return Ok(Some(
                concat(lazy, UnionArgs::default())?
                    .sort_by_exprs(
                        [col("SRCFILE"), col("SRCLINE")],
                        SortMultipleOptions::default().with_multithreaded(true),
                    )
                    .collect()?,
            ));
        }
        Ok(stacked(parts)?)
    }

    /// Writes the rows of file `file` of `stage` to its spill file, piece by piece (`pieces`
    /// calls its argument with each piece of the file, in order, in one pass over the file's
    /// table or cache entry): each piece's rows of each subject batch
    /// become one record batch, and the file's index notes which record batches are whose.
    /// One spill file per file, not per file and batch: creating a file costs the kernel far
    /// more than writing a record batch (about 0.3-0.6 ms each on this machine's ext4, some
    /// 4,200 files for the bench cohort in batches of 50).
    fn write_file(
        &self,
        (stage, file): (usize, usize),
        column: &str,
        bounds: &[String],
        pieces: impl FnOnce(&mut dyn FnMut(DataFrame) -> anyhow::Result<()>) -> anyhow::Result<()>,
    ) -> anyhow::Result<()> {
        let mut blocks: BlocksOfBatches = vec![Vec::new(); bounds.len() + 1];
        let mut writer: Option<SpillWriter> = None;
        let mut written = 0usize;
        pieces(&mut |piece| {
            let rows = rows_by_batch(&piece, column, bounds)?;
            for (b, r) in rows.iter().enumerate() {
                if r.is_empty() {
                    continue;
                }
                let rows = crate::stages::gather_rows(&piece, r)?;
                let w = match &mut writer {
                    Some(w) => w,
                    slot => {
                        slot.insert(SpillWriter::create(self.path(stage, file), rows.schema())?)
                    }
                };
                w.write(&rows)?;
                blocks[b].push(written);
                written += 1;
            }
            Ok(())
        })?;
        if let Some(w) = writer {
            w.finish()?;
        }
        self.blocks
            .lock()
            .map_err(|_| poisoned())?
            .insert((stage, file), blocks);
        Ok(())
    }

    /// The rows of `batch` of `stage`, its `files` one after the other, in reading order.
    fn read(&self, stage: usize, batch: usize, files: usize) -> anyhow::Result<DataFrame> {
        let mut parts = Vec::new();
        for file in 0..files {
            let blocks = match self
                .blocks
                .lock()
                .map_err(|_| poisoned())?
                .get(&(stage, file))
            {
                Some(of_batches) => of_batches.get(batch).cloned().unwrap_or_default(),
                None => Vec::new(),
            };
            if blocks.is_empty() {
                continue;
            }
            let rows = read_ipc_blocks(&self.path(stage, file), &blocks)?;
            let rows = match self.entries[stage].get(&file) {
                Some(e) => cache::with_file_constants(e, rows).map_err(RunError::Internal)?,
                None => rows,
            };
            parts.push(rows.lazy());
        }
        if parts.is_empty() {
            return self.empty[stage].clone().ok_or_else(|| {
                RunError::Internal(format!("no columns for the ingest of stage {stage}")).into()
            });
        }
        // As an ingest puts its files' tables together (`ingest::assemble`).
        Ok(concat(parts, UnionArgs::default())?.collect()?)
    }
}

/// Why reading or writing (`doing`) the spill file at `path` failed.
fn spill_failed(doing: &str, path: &Path, e: impl std::fmt::Display) -> RunError {
    RunError::Internal(format!("{doing} {}: {e}", path.display()))
}

/// The writer of a spill file at `path`: Arrow IPC, LZ4 (cheap to write and read back, read
/// once), through a buffer of `buffer` bytes.
fn spill_writer(
    path: &Path,
    buffer: usize,
) -> anyhow::Result<polars::io::ipc::IpcWriter<std::io::BufWriter<std::fs::File>>> {
    use polars::io::ipc::{IpcCompression, IpcWriter};
    let f = std::fs::File::create(path).map_err(|e| RunError::io(path, e))?;
    Ok(IpcWriter::new(std::io::BufWriter::with_capacity(buffer, f))
        .with_compression(Some(IpcCompression::LZ4)))
}

/// Writes `rows` as a spill file.
fn write_ipc(path: &Path, rows: &mut DataFrame) -> anyhow::Result<()> {
    spill_writer(path, 1 << 20)?
        .finish(rows)
        .map_err(|e| spill_failed("writing", path, e))?;
    Ok(())
}

/// A spill file written piece by piece: Arrow IPC, LZ4, one record batch per piece and batch.
struct SpillWriter {
    path: PathBuf,
    writer: polars::io::ipc::BatchedWriter<std::io::BufWriter<std::fs::File>>,
}

impl SpillWriter {
    fn create(path: PathBuf, schema: &Schema) -> anyhow::Result<SpillWriter> {
        let arrow = schema.to_arrow(CompatLevel::newest());
        let fields = polars_arrow::io::ipc::write::default_ipc_fields(arrow.iter_values());
        let writer = spill_writer(&path, 1 << 16)?
            .batched(schema, fields)
            .map_err(|e| spill_failed("writing", &path, e))?;
        Ok(SpillWriter { path, writer })
    }

    fn write(&mut self, rows: &DataFrame) -> anyhow::Result<()> {
        self.writer
            .write_batch(rows)
            .map_err(|e| spill_failed("writing", &self.path, e))?;
        Ok(())
    }

    fn finish(mut self) -> anyhow::Result<()> {
        self.writer
            .finish()
            .map_err(|e| spill_failed("writing", &self.path, e))?;
        Ok(())
    }
}

/// Reads record batches of spill files, keeping the last file's reader open for the next
/// record batch of the same file and columns.
#[derive(Default)]
struct BlockReader {
    open: Option<(PathBuf, Option<String>, FileReaderOf)>,
}

type FileReaderOf = polars_arrow::io::ipc::read::FileReader<std::io::BufReader<std::fs::File>>;

impl BlockReader {
    /// Record batch `block` of the spill file at `path`: every column, or column `only`.
    fn read(&mut self, path: &Path, block: usize, only: Option<&str>) -> anyhow::Result<DataFrame> {
        if !matches!(&self.open, Some((p, o, _)) if p == path && o.as_deref() == only) {
            self.open = None;
        }
        let (_, _, reader) = match &mut self.open {
            Some(open) => open,
            None => {
                let f = std::fs::File::open(path).map_err(|e| RunError::io(path, e))?;
                let reader = cache::ipc_file_reader(std::io::BufReader::new(f), only)
                    .map_err(|e| spill_failed("reading", path, e))?;
                self.open
                    .insert((path.to_path_buf(), only.map(str::to_string), reader))
            }
        };
        reader.set_current_block(block);
        match reader.next() {
            Some(Ok(batch)) => Ok(DataFrame::from(batch)),
            Some(Err(e)) => Err(spill_failed("reading", path, e).into()),
            None => Err(spill_failed("reading", path, format!("no record batch {block}")).into()),
        }
    }
}

/// Record batches `blocks` of the spill file at `path`, one after the other.
fn read_ipc_blocks(path: &Path, blocks: &[usize]) -> anyhow::Result<DataFrame> {
    let mut reader = BlockReader::default();
    let mut rows: Option<DataFrame> = None;
    for &block in blocks {
        let batch = reader.read(path, block, None)?;
        match &mut rows {
            Some(r) => {
                r.vstack_mut_owned(batch)?;
            }
            None => rows = Some(batch),
        }
    }
    rows.ok_or_else(|| spill_failed("reading", path, "no record batch").into())
}

fn read_ipc(path: &Path) -> anyhow::Result<DataFrame> {
    let f = std::fs::File::open(path).map_err(|e| RunError::io(path, e))?;
    Ok(polars::io::ipc::IpcReader::new(std::io::BufReader::new(f))
        .finish()
        .map_err(|e| spill_failed("reading", path, e))?)
}

impl Drop for Spill {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The tables `parts` one after the other (`None` when no batch made one).
fn stacked(parts: Vec<DataFrame>) -> PolarsResult<Option<DataFrame>> {
    let mut parts = parts.into_iter();
    let Some(mut all) = parts.next() else {
        return Ok(None);
    };
    for p in parts {
        all.vstack_mut_owned(p)?;
    }
    all.rechunk_mut_par();
    Ok(Some(all))
}

/// The subject column of each ingest stage's source (by stage), or why `plan` cannot run in
/// subject batches: a stage after the ingests that may need rows of several subjects at once
/// ([`crate::stages::Stage::across_subjects`]), a published table not sorted by a subject
/// column first, or a source without a subject column.
pub(crate) fn batch_plan(plan: &Plan) -> Result<SubjectColumns, String> {
    let mut subject_of = vec![None; plan.stages.len()];
    for (id, s) in plan.stages.iter().enumerate() {
        if let Kind::Ingest(ing) = &s.kind {
            let source = plan
                .spec
                .sources
                .iter()
                .find(|src| src.value.name == ing.source)
                .ok_or_else(|| format!("source `{}` is not defined", ing.source))?;
            match source
                .value
                .columns
                .iter()
                .find(|c| c.value.ty == "subject")
            {
                Some(c) => subject_of[id] = Some(c.value.name.clone()),
                None => {
                    return Err(format!(
                        "source `{}` (stage `{}`) has no column of type subject",
                        ing.source, s.name
                    ));
                }
            }
        }
    }
    let mut names: Vec<String> = subject_of.iter().flatten().cloned().collect();
    names.push("USUBJID".into());
    names.sort();
    names.dedup();
    for s in &plan.stages {
        if matches!(s.kind, Kind::Ingest(_)) {
            continue;
        }
        if let Some(why) = s.kind.stage().across_subjects(&names) {
            return Err(format!("stage `{}` ({}): {why}", s.name, s.kind_name));
        }
        if s.publish && s.sort_by.first().is_none_or(|k| !names.contains(k)) {
            return Err(format!(
                "stage `{}` is published sorted by {} rather than by a subject column ({})",
                s.name,
                if s.sort_by.is_empty() {
                    "nothing".to_string()
                } else {
                    s.sort_by.join(", ")
                },
                names.join(", ")
            ));
        }
    }
    Ok(subject_of)
}

impl Engine<'_> {
    /// Runs the plan with the stages after the ingests in batches of about `size` subjects.
    /// `Ok(false)`, having run nothing, when the plan cannot run so (the log says why); the
    /// caller then runs it whole.
    pub(crate) fn execute_batched(&self, size: usize) -> anyhow::Result<bool> {
        let subject_of = match batch_plan(self.plan) {
            Ok(p) => p,
            Err(why) => {
                self.log.warn(&format!(
                    "not running in subject batches: {why}; running the stages whole"
                ));
                return Ok(false);
            }
        };
        let plan = self.plan;
        let n = plan.stages.len();
        let bar = self.log.progress(n as u64);
        // The ingests let go of their files' tables as they cache them.
        self.lean_ingests.store(true, Ordering::Relaxed);
        let ingests: Vec<usize> = (0..n).filter(|&id| subject_of[id].is_some()).collect();
        concurrently(&ingests, self.workers, |&id| {
            self.settle(id, self.stage(id, false)?, &bar)
        })?;
        // Every later stage, in dependency order, decided as a run of all of them.
        let order: Vec<usize> = plan
            .waves
            .iter()
            .flatten()
            .copied()
            .filter(|&id| subject_of[id].is_none())
            .collect();
        let mut fps: Vec<Option<String>> = vec![None; n];
        let mut contents: Vec<Option<String>> = vec![None; n];
        for &id in &ingests {
            let s = self.slot(id)?;
            fps[id] = Some(s.fingerprint.clone());
            contents[id] = Some(s.content.clone());
        }
        let mut decided: Vec<Option<Decided>> = (0..n).map(|_| None).collect();
        let mut all_reused = true;
        for &id in &order {
            let of = |v: &[Option<String>]| -> Vec<Option<String>> {
                plan.stages[id]
                    .input_ids
                    .iter()
                    .map(|&j| v[j].clone())
                    .collect()
            };
            let recipe = self.judge.recipe(id, &of(&fps));
            let d = self
                .judge
                .decide(id, recipe, true, Vec::new(), &of(&contents));
            all_reused &= matches!(d.action, crate::reuse::Action::Reuse);
            let fingerprint = d.fingerprint.clone().unwrap_or_default();
            let key = d.key.clone().unwrap_or_default();
            fps[id] = Some(fingerprint.clone());
            // What the stages reading it see, as a whole run would: a reused stage's content
            // is its entry's (see `Slot::reused`).
            contents[id] = Some(match (&d.action, &d.entry) {
                (crate::reuse::Action::Reuse, Some(e)) => {
                    e.summary.content.clone().unwrap_or(key.clone())
                }
                _ => key.clone(),
            });
            decided[id] = Some(Decided {
                fingerprint,
                key,
                recipe: d.recipe,
                reasons: d.reasons,
            });
        }

        for &id in &ingests {
            // An ingest that ran has only its rejects in memory: the batches read its files.
            all_reused &= self.slot(id)?.state.lock().map_err(|_| poisoned())?.status != "ran";
        }
        if all_reused {
            self.lean_ingests.store(false, Ordering::Relaxed);
            // Nothing after the ingests has to run: the whole run reuses it all.
            bar.finish_and_clear();
            self.log
                .info("every stage after the ingests is up to date: no subject batches");
            self.execute()?;
            return Ok(true);
        }

        // From here on the run holds a few batches at a time: what the ingests freed goes back
        // to the system now, and what is freed later goes back after a short while.
        crate::memory::give_back();
        crate::memory::decay_after(crate::memory::BATCH_DECAY_MS);
        // Each ingest's files, read back from the file cache one at a time (parsed again when
        // their parse could not be cached): first their subject ids, then their rows by batch.
        let mut sources: Vec<Option<(ingest::FileParser, Vec<FileState>)>> =
            (0..n).map(|_| None).collect();
        for &id in &ingests {
            let Kind::Ingest(ing) = &plan.stages[id].kind else {
                continue;
            };
            let src = self.slot(id)?.recipe.source.clone().ok_or_else(|| {
                RunError::Internal(format!("`{}` has no source recipe", plan.stages[id].name))
            })?;
            let states = self.judge.files(id, ing.source(self.sources)?, &src)?;
            sources[id] = Some((ing.parser(&self.ctx(id))?, states));
        }
        let files: Vec<(usize, usize)> = ingests
            .iter()
            .flat_map(|&id| {
                let count = sources[id].as_ref().map_or(0, |(_, states)| states.len());
                (0..count).map(move |f| (id, f))
            })
            .collect();
        let file_table =
            |id: usize, f: usize, columns: Option<&[String]>| -> anyhow::Result<DataFrame> {
                let (parser, states) = sources[id]
                    .as_ref()
                    .ok_or_else(|| RunError::Internal("an ingest without files".into()))?;
                let st = &states[f];
                if let Some(table) = st
                    .cached
                    .as_ref()
                    .and_then(|e| self.cache.load_file_table(e, columns).ok())
                {
                    return Ok(table);
                }
                let s = &plan.stages[id];
                let table = parser
                    .parse(&st.file)
                    .map_err(|e| stage_error(&s.name, &s.kind_name, e.into()))?
                    .table;
                Ok(match columns {
                    Some(c) => table.select(c.iter().map(String::as_str))?,
                    None => table,
                })
            };
        // A cached parse's subject column is read a piece at a time: decoding the column of a
        // whole file, beside the file's bytes, was the peak of the ingests (two large diary
        // files at once).
        let ids: Vec<Vec<String>> = files
            .par_iter()
            .map(|&(id, f)| -> anyhow::Result<Vec<String>> {
                let column = subject_of[id].clone().unwrap_or_default();
                let cached = sources[id]
                    .as_ref()
                    .and_then(|(_, states)| states[f].cached.as_ref())
                    .and_then(|e| self.cache.file_column_pieces(e, &column).ok());
                let pieces: Box<dyn Iterator<Item = anyhow::Result<DataFrame>>> = match cached {
                    Some(pieces) => {
                        Box::new(pieces.map(|p| p.map_err(|e| RunError::Internal(e).into())))
                    }
                    None => Box::new(std::iter::once(file_table(
                        id,
                        f,
                        Some(std::slice::from_ref(&column)),
                    ))),
                };
                let mut distinct = std::collections::BTreeSet::new();
                for piece in pieces {
                    let ids = piece?.column(&column)?.cast(&DataType::String)?;
                    let ids = ids.as_materialized_series().unique()?;
                    distinct.extend(ids.str()?.iter().flatten().map(str::to_string));
                }
                Ok(distinct.into_iter().collect())
            })
            .collect::<anyhow::Result<_>>()?;
        let mut ids: Vec<String> = ids.into_iter().flatten().collect();
        ids.sort_unstable();
        ids.dedup();
        // At most `MAX_BATCHES` batches: a batch reads a spill file per file of every source.
        let mut size = size.max(1);
        if ids.len().div_ceil(size) > MAX_BATCHES {
            let larger = ids.len().div_ceil(MAX_BATCHES);
            self.log.warn(&format!(
                "batches of {size} subjects would be more than {MAX_BATCHES}: batches of {larger}"
            ));
            size = larger;
        }
        let batches = ids.len().div_ceil(size).max(1);
        let bounds: Vec<String> = (1..batches).map(|b| ids[b * size].clone()).collect();
        self.log.info(&format!(
            "{} subjects in {batches} batches of up to {size}",
            ids.len()
        ));
        let mut spill = Spill::create(self.run_dir.join(".batches"), n)?;
        spill.dropped_chunk = dropped_chunk(batches);
        // Each file's rows, cut by batch: a cached parse is read a piece at a time, so no
        // file's table is whole here (one parsed again is).
        type Spilled = (usize, usize, DataFrame, Option<cache::FileEntry>);
        let spilled: Vec<Spilled> = files
            .par_iter()
            .map(|&(id, f)| -> anyhow::Result<Spilled> {
                let column = subject_of[id].clone().unwrap_or_default();
                let cached = sources[id]
                    .as_ref()
                    .and_then(|(_, states)| states[f].cached.as_ref())
                    .and_then(|e| Some((e, self.cache.file_table_pieces(e).ok()?)));
                let Some((entry, pieces)) = cached else {
                    let t = file_table(id, f, None)?;
                    let empty = t.clear();
                    spill.write_file((id, f), &column, &bounds, |each| each(t))?;
                    return Ok((id, f, empty, None));
                };
                let empty = cache::with_file_constants(entry, pieces.empty())
                    .map_err(RunError::Internal)?;
                // The pieces opened (read and checked) above.
                spill.write_file((id, f), &column, &bounds, |each| {
                    for piece in pieces {
                        each(piece.map_err(RunError::Internal)?)?;
                    }
                    Ok(())
                })?;
                Ok((id, f, empty, Some(entry.clone())))
            })
            .collect::<anyhow::Result<_>>()?;
        for (id, f, empty, entry) in spilled {
            spill.empty[id].get_or_insert(empty);
            if let Some(e) = entry {
                spill.entries[id].insert(f, e);
            }
        }
        for &id in &ingests {
            // Its table was let go of as it was made: its rejects stay for row fate.
            self.slot(id)?.released.store(true, Ordering::Release);
        }
        let spill = spill;
        // The ingests' buffers, freed, are of sizes the batches do not ask for again.
        crate::memory::give_back();
        let file_count: Vec<usize> = (0..n)
            .map(|id| sources[id].as_ref().map_or(0, |(_, states)| states.len()))
            .collect();
        drop(sources);

        // The batches, `workers` at a time, committed in batch order.
        let commit: Vec<Mutex<Commit>> = (0..n).map(|_| Mutex::default()).collect();
        let batch_numbers: Vec<usize> = (0..batches).collect();
        concurrently(&batch_numbers, self.workers, |&b| {
            unpanicked(
                || format!("subject batch {}", b + 1),
                || {
                    let commit = (&commit[..], &decided[..]);
                    self.run_batch(b, &order, &ingests, (&spill, &file_count), commit)
                },
            )?;
            if self.log.plain_steps() {
                self.log
                    .info(&format!("subject batch {} of {batches} done", b + 1));
            } else {
                bar.set_message(format!("subject batch {} of {batches}", b + 1));
            }
            Ok(())
        })?;
        self.lean_ingests.store(false, Ordering::Relaxed);

        // Each stage's slot, cache entry and published table, as a whole run leaves them.
        let mut sums = commit
            .into_iter()
            .map(|c| Ok(c.into_inner().map_err(|_| poisoned())?.sum))
            .collect::<anyhow::Result<Vec<Sum>>>()?;
        // The published tables first: the rows still waiting for a row group are written
        // and let go of before the set-aside rows are read back.
        let mut files: Vec<Option<cache::TableFile>> = (0..n).map(|_| None).collect();
        for &id in &order {
            let Some(writer) = sums[id].writer.take() else {
                continue;
            };
            let s = &plan.stages[id];
            let d = decided[id]
                .as_ref()
                .ok_or_else(|| RunError::Internal(format!("`{}` was not decided", s.name)))?;
            let (bytes, blake3, rows) = writer.finish()?;
            let file = format!("{}.parquet", s.name);
            let record = TableRecord {
                name: s.name.clone(),
                file: file.clone(),
                rows,
                bytes,
                blake3: blake3.clone(),
                key: s.sort_by.clone(),
                // Its row groups follow the batches: other bytes than the same table
                // written whole.
                content_key: crate::run::table_content_key(
                    plan,
                    &s.name,
                    Some(&s.sort_by),
                    &d.fingerprint,
                    Some(&format!("subject batches of {size}")),
                ),
                status: "written".into(),
            };
            let _ = self.published[id].set(record);
            files[id] = Some(cache::TableFile {
                path: self.run_dir.join(file),
                bytes,
                blake3,
            });
        }
        for &id in &order {
            let s = &plan.stages[id];
            let d = decided[id]
                .take()
                .ok_or_else(|| RunError::Internal(format!("`{}` was not decided", s.name)))?;
            let sum = std::mem::take(&mut sums[id]);
            let mut summary = sum.summary.unwrap_or_default();
            summary.content = Some(d.key.clone());
            let dropped_batches: Vec<usize> = sum.dropped.iter().map(|p| p.batch).collect();
            // Its set-aside rows go to its cache entry file by file, never all at once.
            let written = self.dropped_to_cache(&spill, id, &d.key, &sum.dropped);
            let wrote_dropped = written.is_some();
            let mut frames = Frames {
                table: DataFrame::empty(),
                rejects: spill.stacked_parts("rejects", id, &sum.rejects)?,
                dropped: match wrote_dropped {
                    true => None,
                    false => spill.stacked_parts("dropped", id, &dropped_batches)?,
                },
                rows: None,
            };
            let file = files[id].take();
            let table = match &file {
                Some(f) => TablePart::Link(f),
                None => TablePart::Omit,
            };
            // A table published in parts is linked; an unpublished one was never whole.
            let entry = self.store_part(
                id,
                &d.key,
                Some(&frames),
                table,
                &summary,
                Vec::new(),
                written.into_iter().collect(),
            );
            if entry.is_none() && wrote_dropped {
                // No entry to read them back from: they stay in memory, as a whole run's do.
                frames.dropped = spill.stacked_parts("dropped", id, &dropped_batches)?;
            }
            let mut reasons = vec![format!("ran in {batches} subject batches")];
            reasons.extend(d.reasons);
            let mut slot = Slot::ran(
                d.fingerprint,
                d.key.clone(),
                d.key,
                d.recipe,
                (frames, summary),
                reasons,
                Instant::now(),
                None,
            );
            if let Some(entry) = entry {
                // Its rejects and set-aside rows are read back from the cache when the run's
                // `rejects` and `duplicates` are made, not held until then.
                slot.entry = Some(entry);
                *slot.frames.get_mut().map_err(|_| poisoned())? = None;
            }
            slot.state.lock().map_err(|_| poisoned())?.seconds = sum.seconds;
            // Its table was never whole: a later reader would get nothing.
            slot.released.store(true, Ordering::Release);
            self.settle(id, slot, &bar)?;
        }
        drop(spill);
        bar.finish_and_clear();
        Ok(true)
    }

    /// Writes the set-aside rows of batched stage `id` to the `dropped` part of its cache
    /// entry `key`, file by file ([`Spill::dropped_by_file`]); the part, or `None` when there
    /// are none, when they are not in file blocks, or when the part could not be written (the
    /// log says why).
    fn dropped_to_cache(
        &self,
        spill: &Spill,
        id: usize,
        key: &str,
        parts: &[Dropped],
    ) -> Option<cache::Part> {
        let written = (|| -> anyhow::Result<Option<cache::Part>> {
            let (path, file) = self.cache.stage_part_path(key, "dropped")?;
            let mut writer: Option<TableWriter> = None;
            let in_files = spill.dropped_by_file(id, parts, &mut |rows| {
                // Written on its own, one stage at a time: the rows waiting for a row group
                // are held as they are, not packed in a file and read back.
                TableWriter::append(&mut writer, rows, |first| {
                    TableWriter::create_part(&path, first).map(TableWriter::holding)
                })?;
                Ok(())
            })?;
            let Some(w) = writer.filter(|_| in_files.is_some()) else {
                return Ok(None);
            };
            let (bytes, blake3, rows) = w.finish()?;
            Ok(Some(cache::Part {
                role: "dropped".into(),
                file,
                bytes,
                blake3,
                rows,
            }))
        })();
        written.unwrap_or_else(|e| {
            let name = &self.plan.stages[id].name;
            self.log.warn(&format!(
                "could not cache the set-aside rows of `{name}` file by file: {e:#}"
            ));
            None
        })
    }

    /// Runs every stage of `order` on the rows of batch `b` of the `ingests` (from `spill`),
    /// committing what each stage made as it is made ([`Engine::commit`]).
    fn run_batch(
        &self,
        b: usize,
        order: &[usize],
        ingests: &[usize],
        (spill, file_count): (&Spill, &[usize]),
        (commit, decided): (&[Mutex<Commit>], &[Option<Decided>]),
    ) -> anyhow::Result<()> {
        let plan = self.plan;
        let n = plan.stages.len();
        let mut held: Vec<Option<DataFrame>> = vec![None; n];
        for &id in ingests {
            held[id] = Some(spill.read(id, b, file_count[id])?);
        }
        // Readers still to run of each table in this batch.
        let mut left = vec![0usize; n];
        for &id in order {
            for j in plan.distinct_inputs(id) {
                left[j] += 1;
            }
        }
        for &id in order {
            let s = &plan.stages[id];
            let t0 = Instant::now();
            let mut inputs = Vec::with_capacity(s.inputs.len());
            for (&j, name) in s.input_ids.iter().zip(&s.inputs) {
                let t = held[j].as_ref().ok_or_else(|| {
                    RunError::Internal(format!(
                        "`{}` of batch {} is gone",
                        plan.stages[j].name,
                        b + 1
                    ))
                })?;
                let t = match s.kind.stage().reads_columns(name) {
                    // A column the table lacks is left for the stage to name in its message.
                    Some(columns) => t
                        .select(columns.iter().map(String::as_str))
                        .unwrap_or(t.clone()),
                    None => t.clone(),
                };
                inputs.push((name.clone(), t));
            }
            let (table, out, summary) = self.run_on(id, inputs)?;
            for j in plan.distinct_inputs(id) {
                left[j] -= 1;
                if left[j] == 0 {
                    held[j] = None;
                }
            }
            let part = Part {
                summary,
                rejects: out.rejects,
                dropped: out.dropped,
                table: s.publish.then(|| table.clone()),
                seconds: t0.elapsed().as_secs_f64(),
            };
            // Committed now, not when the batch is done: a batch holds only the tables its
            // later stages read.
            self.commit(commit, spill, b, id, part, decided)?;
            if left[id] > 0 {
                held[id] = Some(table);
            }
        }
        Ok(())
    }

    /// Commits stage `id`'s part of batch `b` once the batches before it have committed theirs,
    /// and the parts of later batches that waited for it: their counts are added, their
    /// rejected and set-aside rows go to the spill, their published rows to the table's writer
    /// (their order against the rows before them checked).
    fn commit(
        &self,
        commit: &[Mutex<Commit>],
        spill: &Spill,
        b: usize,
        id: usize,
        part: Part,
        decided: &[Option<Decided>],
    ) -> anyhow::Result<()> {
        let mut c = commit[id].lock().map_err(|_| poisoned())?;
        let c = &mut *c;
        c.waiting.insert(b, part);
        while let Some(part) = c.waiting.remove(&c.next) {
            let (b, sum) = (c.next, &mut c.sum);
            c.next += 1;
            let s = &self.plan.stages[id];
            sum.seconds += part.seconds;
            match &mut sum.summary {
                Some(total) => add_summary(total, part.summary),
                None => sum.summary = Some(part.summary),
            }
            if let Some(r) = part.rejects {
                spill.write_part("rejects", id, b, r)?;
                sum.rejects.push(b);
            }
            if let Some(d) = part.dropped {
                let files = spill.write_dropped(id, b, d)?;
                sum.dropped.push(Dropped { batch: b, files });
            }
            let Some(table) = part.table else {
                continue;
            };
            if table.height() > 0 {
                let keys: Vec<&str> = s.sort_by.iter().map(String::as_str).collect();
                let first = table.select(keys.iter().copied())?.slice(0, 1);
                if let Some(last) = &sum.last {
                    let mut pair = last.clone();
                    pair.vstack_mut(&first)?;
                    if !crate::run::already_sorted(&pair, &s.sort_by)? {
                        return Err(DataError::Stage {
                            stage: s.name.clone(),
                            message: format!(
                                "in subject batches its rows are not in the order of its \
                                 sort_by ({}): the first of them is not ordered like the \
                                 subject ids; run it without --batch-subjects",
                                s.sort_by.join(", ")
                            ),
                        }
                        .into());
                    }
                }
                sum.last = Some(publish::detached(
                    &table
                        .select(keys.iter().copied())?
                        .slice(table.height() as i64 - 1, 1),
                )?);
            }
            TableWriter::append(&mut sum.writer, table, |first| {
                let d = decided[id]
                    .as_ref()
                    .ok_or_else(|| RunError::Internal(format!("`{}` was not decided", s.name)))?;
                publish::failpoint(&format!("write:{}", s.name))?;
                let prov = crate::run::provenance(self.plan, &s.name, &d.fingerprint);
                TableWriter::create(
                    &self.run_dir.join(format!("{}.parquet", s.name)),
                    &prov,
                    first,
                )
            })?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_go_to_the_batch_of_their_subject_id_and_missing_ids_to_the_first() {
        let t = df!(
            "subject" => [Some("C7"), Some("C7"), None, Some("A1"), Some("C10"), Some("Z9"), Some("C7")],
        )
        .unwrap();
        // Batches: [.., C10), [C10, S1), [S1, ..).
        let bounds = ["C10".to_string(), "S1".to_string()];
        let rows: Vec<Vec<IdxSize>> = rows_by_batch(&t, "subject", &bounds)
            .unwrap()
            .iter()
            .map(|r| r.into_no_null_iter().collect())
            .collect();
        assert_eq!(rows, [vec![2, 3], vec![0, 1, 4, 6], vec![5]]);
    }

    #[test]
    fn batch_counts_add_up_by_file() {
        let one = |file: &str, rows: u64| StageSummary {
            rows,
            rejected: 1,
            accepted_by_file: [(file.to_string(), rows)].into(),
            rejected_by_file: [(file.to_string(), 1)].into(),
            ..Default::default()
        };
        let mut total = one("a.csv", 3);
        add_summary(&mut total, one("a.csv", 4));
        add_summary(&mut total, one("b.csv", 5));
        assert_eq!((total.rows, total.rejected), (12, 3));
        assert_eq!(
            total.accepted_by_file,
            [("a.csv".to_string(), 7), ("b.csv".to_string(), 5)].into()
        );
        assert_eq!(total.rejected_by_file["a.csv"], 2);
    }

    /// Set-aside rows of `files` at `lines`.
    fn part(files: &[&str], lines: &[i64]) -> DataFrame {
        df!("SRCFILE" => files, "SRCLINE" => lines, "FATE" => vec!["collapsed"; lines.len()])
            .unwrap()
    }

    #[test]
    fn set_aside_rows_come_back_from_the_spill_in_file_and_line_order_and_rejects_in_batch_order() {
        let dir = tempfile::tempdir().unwrap();
        let spill = Spill::create(dir.path().join(".batches"), 1).unwrap();
        let lines = |d: &DataFrame| -> Vec<i64> {
            d.column("SRCLINE")
                .unwrap()
                .i64()
                .unwrap()
                .into_no_null_iter()
                .collect()
        };
        // Two batches' set-aside rows of the same two files, lines interleaved.
        spill
            .write_part(
                "dropped",
                0,
                0,
                part(&["b.csv", "a.csv", "b.csv"], &[2, 5, 9]),
            )
            .unwrap();
        spill
            .write_part("dropped", 0, 3, part(&["a.csv", "b.csv"], &[1, 4]))
            .unwrap();
        let back = spill.stacked_parts("dropped", 0, &[0, 3]).unwrap().unwrap();
        let files: Vec<&str> = back
            .column("SRCFILE")
            .unwrap()
            .str()
            .unwrap()
            .iter()
            .flatten()
            .collect();
        assert_eq!(files, ["a.csv", "a.csv", "b.csv", "b.csv", "b.csv"]);
        assert_eq!(lines(&back), [1, 5, 2, 4, 9]);
        // Rejects stay in batch order; a part read back is gone from the spill.
        spill
            .write_part("rejects", 0, 0, part(&["b.csv"], &[7]))
            .unwrap();
        spill
            .write_part("rejects", 0, 1, part(&["a.csv"], &[3]))
            .unwrap();
        let back = spill.stacked_parts("rejects", 0, &[0, 1]).unwrap().unwrap();
        assert_eq!(lines(&back), [7, 3]);
        assert!(!spill.part_path("rejects", 0, 0).exists());
        assert!(spill.stacked_parts("rejects", 0, &[]).unwrap().is_none());
    }

    #[test]
    fn set_aside_rows_come_back_file_by_file_with_their_lines_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let spill = Spill::create(dir.path().join(".batches"), 1).unwrap();
        // Each batch's rows in blocks of one file, in reading order; the batches' lines of
        // one file interleave.
        let mut parts = Vec::new();
        for (batch, rows) in [
            (0, part(&["b.csv", "b.csv", "a.csv"], &[2, 9, 5])),
            (3, part(&["a.csv", "b.csv"], &[1, 4])),
            (4, part(&["c.csv"], &[8])),
        ] {
            let files = spill.write_dropped(0, batch, rows).unwrap();
            parts.push(Dropped { batch, files });
        }
        assert_eq!(
            parts[0].files.as_deref(),
            Some(&["b.csv".to_string(), "a.csv".to_string()][..])
        );
        let mut got: Vec<(String, Vec<i64>)> = Vec::new();
        let in_files = spill
            .dropped_by_file(0, &parts, &mut |rows| {
                let files = rows.column("SRCFILE")?.str()?.clone();
                let file = files.get(0).unwrap_or_default().to_string();
                assert!(files.iter().all(|f| f == Some(file.as_str())));
                let lines = rows.column("SRCLINE")?.i64()?.into_no_null_iter().collect();
                got.push((file, lines));
                Ok(())
            })
            .unwrap();
        assert!(in_files.is_some());
        let want = [
            ("a.csv", vec![1, 5]),
            ("b.csv", vec![2, 4, 9]),
            ("c.csv", vec![8]),
        ];
        assert_eq!(
            got,
            want.map(|(f, l)| (f.to_string(), l)).to_vec(),
            "one file at a time, in the order of their names"
        );
        // Rows without a file column are not in blocks: nothing is handed over.
        let files = spill
            .write_dropped(0, 5, df!("SRCLINE" => [3i64]).unwrap())
            .unwrap();
        assert!(files.is_none());
        parts.push(Dropped { batch: 5, files });
        let mut handed = 0;
        let in_files = spill
            .dropped_by_file(0, &parts, &mut |_| {
                handed += 1;
                Ok(())
            })
            .unwrap();
        assert!(in_files.is_none());
        assert_eq!(handed, 0);
    }

    #[test]
    fn set_aside_rows_gathered_a_few_at_a_time_from_interleaved_batches_keep_their_rows() {
        let dir = tempfile::tempdir().unwrap();
        // Three batches whose lines of one file interleave, with a line in two batches (its
        // rows come in batch order, as a stable sort of the batches put together gives) and
        // a value that travels with each row.
        let rows = |files: &[&str], lines: &[i64], values: &[&str]| {
            df!("SRCFILE" => files, "SRCLINE" => lines, "VALUE" => values).unwrap()
        };
        for chunk in [1, 2, 100] {
            let mut spill = Spill::create(dir.path().join(format!(".batches-{chunk}")), 1).unwrap();
            spill.dropped_chunk = chunk;
            let mut parts = Vec::new();
            for (batch, r) in [
                (
                    0,
                    rows(
                        &["a.csv", "a.csv", "a.csv"],
                        &[1, 6, 7],
                        &["a1", "a6", "a7"],
                    ),
                ),
                (
                    1,
                    rows(
                        &["a.csv", "a.csv", "b.csv"],
                        &[2, 6, 3],
                        &["b2", "b6", "b3"],
                    ),
                ),
                (2, rows(&["a.csv", "a.csv"], &[3, 9], &["c3", "c9"])),
            ] {
                let files = spill.write_dropped(0, batch, r).unwrap();
                parts.push(Dropped { batch, files });
            }
            for slice in [1, 2, 3, 100] {
                let mut got: Vec<(String, i64, String)> = Vec::new();
                let mut sizes = Vec::new();
                spill
                    .dropped_by_file_in(0, &parts, slice, &mut |r| {
                        sizes.push(r.height());
                        let f = r.column("SRCFILE")?.str()?.clone();
                        let l = r.column("SRCLINE")?.i64()?.clone();
                        let v = r.column("VALUE")?.str()?.clone();
                        for i in 0..r.height() {
                            let text = |c: &StringChunked| c.get(i).unwrap_or_default().to_string();
                            got.push((text(&f), l.get(i).unwrap_or_default(), text(&v)));
                        }
                        Ok(())
                    })
                    .unwrap();
                let want: Vec<(String, i64, String)> = [
                    ("a.csv", 1, "a1"),
                    ("a.csv", 2, "b2"),
                    ("a.csv", 3, "c3"),
                    ("a.csv", 6, "a6"),
                    ("a.csv", 6, "b6"),
                    ("a.csv", 7, "a7"),
                    ("a.csv", 9, "c9"),
                    ("b.csv", 3, "b3"),
                ]
                .map(|(f, l, v)| (f.to_string(), l, v.to_string()))
                .to_vec();
                assert_eq!(got, want, "slices of {slice}, record batches of {chunk}");
                assert!(
                    sizes.iter().all(|&n| n <= slice),
                    "slices of {slice}: {sizes:?}"
                );
            }
        }
    }

    #[test]
    fn set_aside_rows_of_many_batches_are_decoded_about_once() {
        // Four batches of 100 set-aside rows of one file each, their lines interleaved (batch
        // b holds lines 4i + b), gathered in slices of 100: a slice draws 25 rows from each
        // batch. In record batches of 25 or 20 rows (the last one of each batch kept for the
        // next slice), every record batch is decoded once, and the rows come in line order.
        for chunk in [25, 20] {
            let dir = tempfile::tempdir().unwrap();
            let mut spill = Spill::create(dir.path().join(".batches"), 1).unwrap();
            spill.dropped_chunk = chunk;
            let mut parts = Vec::new();
            let mut record_batches = 0;
            for batch in 0..4usize {
                let lines: Vec<i64> = (0..100).map(|i| 4 * i + batch as i64).collect();
                let files = spill
                    .write_dropped(0, batch, part(&vec!["a.csv"; 100], &lines))
                    .unwrap();
                record_batches += files.as_ref().map_or(0, Vec::len);
                parts.push(Dropped { batch, files });
            }
            assert_eq!(record_batches, 4 * 100usize.div_ceil(chunk));
            let mut got: Vec<i64> = Vec::new();
            let decoded = spill
                .dropped_by_file_in(0, &parts, 100, &mut |r| {
                    got.extend(r.column("SRCLINE")?.i64()?.into_no_null_iter());
                    Ok(())
                })
                .unwrap();
            assert_eq!(
                got,
                (0..400).collect::<Vec<i64>>(),
                "record batches of {chunk}"
            );
            assert_eq!(decoded, Some(record_batches), "record batches of {chunk}");
        }
        assert_eq!(dropped_chunk(100), SORTED_SLICE / 100);
        assert_eq!(dropped_chunk(1000), MIN_DROPPED_CHUNK);
    }

    #[test]
    fn a_file_spilled_piece_by_piece_gives_each_batch_its_rows_in_file_order() {
        let dir = tempfile::tempdir().unwrap();
        let mut spill = Spill::create(dir.path().join(".batches"), 1).unwrap();
        let subjects = ["A1", "E5", "C3", "A1", "B2", "D4", "E5", "C3", "B2", "A1"];
        let lines: Vec<i64> = (1..=10).collect();
        let table = df!("SRCLINE" => &lines, "subject" => subjects).unwrap();
        let bounds: Vec<String> = ["B2", "C3", "D4", "E5"].map(String::from).to_vec();
        let passes = std::sync::atomic::AtomicUsize::new(0);
        spill
            .write_file((0, 0), "subject", &bounds, |each| {
                passes.fetch_add(1, Ordering::Relaxed);
                // Pieces of 4, 4 and 2 rows.
                for at in [0, 4, 8] {
                    each(table.slice(at, 4))?;
                }
                Ok(())
            })
            .unwrap();
        // The pieces are read once, into one spill file for the file.
        assert_eq!(passes.into_inner(), 1);
        let files: Vec<_> = std::fs::read_dir(dir.path().join(".batches"))
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(files, ["0-0.arrow"]);
        spill.empty[0] = Some(table.clear());
        let lines_of = |batch: usize| -> Vec<i64> {
            let rows = spill.read(0, batch, 1).unwrap();
            rows.column("SRCLINE")
                .unwrap()
                .i64()
                .unwrap()
                .into_no_null_iter()
                .collect()
        };
        assert_eq!(lines_of(0), [1, 4, 10]);
        assert_eq!(lines_of(1), [5, 9]);
        assert_eq!(lines_of(2), [3, 8]);
        assert_eq!(lines_of(3), [6]);
        assert_eq!(lines_of(4), [2, 7]);
    }
}
