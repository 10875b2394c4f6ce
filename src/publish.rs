//! The output folder: the run lock, run folders, Parquet writing with provenance in the footer,
//! and the atomic switch of `current` to a finished run.

use std::fs::{self, File};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use polars::prelude::*;

use crate::error::RunError;
use crate::parquet_pages::{ChunkPages, ColumnEncoder};

/// Key-value metadata written into every table's Parquet footer.
#[derive(Debug, Clone)]
pub struct Provenance {
    pub pipeline: String,
    pub pipeline_hash: String,
    pub table: String,
    pub stage_fingerprint: String,
    pub engine_version: String,
    /// The pipeline's identifying columns; those in a table are named in its footer, so that
    /// readers such as `inspect` withhold them.
    pub identifying: Vec<String>,
}

/// Footer key naming a table's identifying columns (comma-separated).
pub const IDENTIFYING_KEY: &str = "studyflow.identifying";

impl Provenance {
    fn pairs(&self, df: &DataFrame) -> Vec<(String, String)> {
        let columns: Vec<&str> = df.get_column_names().iter().map(|c| c.as_str()).collect();
        self.pairs_for(&columns)
    }

    /// The footer entries of a table of `columns`.
    fn pairs_for(&self, columns: &[&str]) -> Vec<(String, String)> {
        let identifying: Vec<&str> = self
            .identifying
            .iter()
            .map(String::as_str)
            .filter(|c| columns.contains(c))
            .collect();
        let mut pairs = vec![
            ("studyflow.pipeline".into(), self.pipeline.clone()),
            ("studyflow.pipeline_hash".into(), self.pipeline_hash.clone()),
            ("studyflow.table".into(), self.table.clone()),
            (
                "studyflow.stage_fingerprint".into(),
                self.stage_fingerprint.clone(),
            ),
            (
                "studyflow.engine_version".into(),
                self.engine_version.clone(),
            ),
        ];
        if !identifying.is_empty() {
            pairs.push((IDENTIFYING_KEY.into(), identifying.join(",")));
        }
        pairs
    }
}

/// The exclusive lock on an output folder, held for the whole run.
#[derive(Debug)]
pub struct RunLock {
    file: File,
    /// What the previous holder left, when it died without cleaning up.
    pub stale: Option<String>,
}

impl RunLock {
    /// Takes the lock of `out_dir` or says who holds it.
    pub fn acquire(out_dir: &Path) -> Result<RunLock, RunError> {
        fs::create_dir_all(out_dir).map_err(|e| RunError::io(out_dir, e))?;
        let path = out_dir.join(".lock");
        let mut file = fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(|e| RunError::io(&path, e))?;
        let mut previous = String::new();
        match file.try_lock() {
            Ok(()) => {}
            Err(fs::TryLockError::WouldBlock) => {
                let _ = file.read_to_string(&mut previous);
                return Err(RunError::Locked {
                    dir: out_dir.to_path_buf(),
                    holder: if previous.trim().is_empty() {
                        "unknown process".into()
                    } else {
                        previous.trim().to_string()
                    },
                });
            }
            Err(fs::TryLockError::Error(e)) => return Err(RunError::io(&path, e)),
        }
        let _ = file.read_to_string(&mut previous);
        // The OS frees a dead process's lock; what it wrote tells us a run died here.
        let stale = (!previous.trim().is_empty()).then(|| previous.trim().to_string());
        let me = format!(
            "pid {} on {} since {}",
            std::process::id(),
            hostname(),
            chrono::Utc::now().format("%Y-%m-%dT%H:%M:%SZ")
        );
        file.set_len(0).map_err(|e| RunError::io(&path, e))?;
        file.rewind().map_err(|e| RunError::io(&path, e))?;
        file.write_all(me.as_bytes())
            .map_err(|e| RunError::io(&path, e))?;
        file.sync_all().map_err(|e| RunError::io(&path, e))?;
        Ok(RunLock { file, stale })
    }
}

impl Drop for RunLock {
    fn drop(&mut self) {
        // A clean exit empties the lock file; a crash leaves the holder's line behind.
        let _ = self.file.set_len(0);
        let _ = self.file.unlock();
    }
}

fn hostname() -> String {
    fs::read_to_string("/etc/hostname")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "this host".into())
}

/// Writes `df` as Parquet (zstd, statistics) to `path` via a temporary file and a rename.
/// Returns the size in bytes and the blake3 of the file.
pub fn write_parquet(
    df: &mut DataFrame,
    path: &Path,
    prov: &Provenance,
) -> Result<(u64, String), RunError> {
    let (tmp, mut out) = HashedFile::create(path, 1 << 20)?;
    let pairs = prov.pairs(df);
    ParquetSettings::published()
        .write_frame(df, &mut out, Some(pairs))
        .map_err(|e| RunError::Internal(format!("writing {}: {e}", path.display())))?;
    out.publish(&tmp, path)
}

/// How a table's Parquet is encoded: its compression and statistics.
#[derive(Clone, Copy)]
pub struct ParquetSettings {
    pub compression: ParquetCompression,
    pub statistics: StatisticsOptions,
}

impl ParquetSettings {
    /// Every published table: zstd and full statistics.
    pub fn published() -> ParquetSettings {
        ParquetSettings {
            compression: ParquetCompression::Zstd(None),
            statistics: StatisticsOptions::full(),
        }
    }

    /// polars' writer with these settings.
    pub fn writer<W: Write>(&self, out: W) -> ParquetWriter<W> {
        ParquetWriter::new(out)
            .with_compression(self.compression)
            .with_statistics(self.statistics)
    }

    /// `df` written whole to `out` with these settings and `pairs` in the footer, in polars'
    /// row groups, its column chunks encoded by [`crate::parquet_pages::write_frame`]. The
    /// file's size.
    pub fn write_frame<W: Write>(
        &self,
        df: &mut DataFrame,
        out: W,
        pairs: Option<Vec<(String, String)>>,
    ) -> PolarsResult<u64> {
        let writer = self.batched(out, df.schema(), pairs)?;
        crate::parquet_pages::write_frame(df, writer, self.options())
    }

    /// polars' batched writer of a table of `schema` with these settings and `pairs` in the
    /// footer, to which row groups are handed already encoded.
    fn batched<W: Write>(
        &self,
        out: W,
        schema: &Schema,
        pairs: Option<Vec<(String, String)>>,
    ) -> PolarsResult<polars::io::parquet::write::BatchedWriter<W>> {
        let mut writer = self.writer(out);
        if let Some(pairs) = pairs {
            writer = writer.with_key_value_metadata(Some(KeyValueMetadata::from_static(pairs)));
        }
        writer.batched(schema)
    }

    /// The options polars' writer derives from these settings, for encoding a column chunk
    /// ([`TableWriter`]): the same pages the writer makes.
    pub(crate) fn options(&self) -> polars_parquet::write::WriteOptions {
        polars_parquet::write::WriteOptions {
            statistics: self.statistics,
            compression: self.compression.into(),
            version: polars_parquet::write::Version::V1,
            data_page_size: None,
        }
    }
}

/// Row groups of a table written part by part ([`TableWriter`]): 2^17 rows, half the largest
/// polars gives a table written whole (512 x 512) and about DuckDB's (122,880). The rows
/// waiting to fill a group are what a run in subject batches holds of each published table:
/// on the bench cohort halving the groups lowered the peak by about 0.17 GB at no cost in
/// time (a quarter: 0.04 GB more, and a little slower).
const ROW_GROUP: usize = 1 << 17;

/// Held while a [`TableWriter`] encodes and writes row groups: one table at a time. Two tables
/// putting row groups together at once (two batches committing) raised the peak of a run in
/// batches of 50 subjects by 10-35 MB (bench cohort, three alternating pairs, when a group's
/// rows were unpacked whole); one at a time was no slower.
static GROUP_WRITES: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// A published table written part by part, in order (a run in subject batches): the same
/// Parquet settings and footer as [`write_parquet`], rows gathered into row groups of
/// [`ROW_GROUP`] rows, so that no part is held longer than it takes to fill a row group. The
/// file is a temporary one until [`TableWriter::finish`] renames it into place.
///
/// A row group is encoded a column at a time ([`TableWriter::write_groups`]), each column's
/// values unpacked from the parts waiting for the group, so that a group's rows are never held
/// unpacked together: polars' own writer takes a group as one table of every column.
pub struct TableWriter {
    tmp: PathBuf,
    path: PathBuf,
    out: std::sync::Arc<std::sync::Mutex<Option<HashedFile>>>,
    writer: polars::io::parquet::write::BatchedWriter<SharedFile>,
    schema: Schema,
    encoder: ColumnEncoder,
    /// Parts waiting for a row group ([`Pending`]): a table of a few rows per batch waits for
    /// many batches, and every published table has some rows waiting.
    pending: Pending,
    pending_rows: usize,
    rows: u64,
}

/// The writer a [`TableWriter`] hands to polars, which keeps it until the footer is written.
struct SharedFile(std::sync::Arc<std::sync::Mutex<Option<HashedFile>>>);

impl Write for SharedFile {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match self.0.lock().ok().as_deref_mut().and_then(Option::as_mut) {
            Some(f) => f.write(buf),
            None => Err(std::io::Error::other("the table's file is closed")),
        }
    }
    fn flush(&mut self) -> std::io::Result<()> {
        match self.0.lock().ok().as_deref_mut().and_then(Option::as_mut) {
            Some(f) => f.flush(),
            None => Ok(()),
        }
    }
}

impl TableWriter {
    /// Starts the table at `path` with the columns of `first` (its first part).
    pub fn create(
        path: &Path,
        prov: &Provenance,
        first: &DataFrame,
    ) -> Result<TableWriter, RunError> {
        Self::start(
            path,
            first,
            ParquetSettings::published(),
            Some(prov.pairs(first)),
        )
    }

    /// Starts a cache part at `path` (rows a stage set aside, written file by file at the end
    /// of a run in subject batches) with the columns of `first`: the cache's Parquet settings
    /// ([`crate::cache::part_parquet`]), no provenance.
    pub fn create_part(path: &Path, first: &DataFrame) -> Result<TableWriter, RunError> {
        Self::start(path, first, crate::cache::part_parquet(), None)
    }

    fn start(
        path: &Path,
        first: &DataFrame,
        settings: ParquetSettings,
        pairs: Option<Vec<(String, String)>>,
    ) -> Result<TableWriter, RunError> {
        let failed =
            |e: PolarsError| RunError::Internal(format!("writing {}: {e}", path.display()));
        // Every table of a run in subject batches is open at once: small buffers (a row
        // group's pages are written in large writes, which pass the buffer by).
        let (tmp, file) = HashedFile::create(path, 1 << 16)?;
        let out = std::sync::Arc::new(std::sync::Mutex::new(Some(file)));
        let schema = first.schema().as_ref().clone();
        let writer = settings
            .batched(SharedFile(out.clone()), &schema, pairs)
            .map_err(failed)?;
        let encoder = ColumnEncoder::new(&schema, settings.options()).map_err(failed)?;
        Ok(TableWriter {
            tmp,
            path: path.to_path_buf(),
            out,
            writer,
            schema,
            encoder,
            pending: Pending::new(path),
            pending_rows: 0,
            rows: 0,
        })
    }

    /// The writer, holding the rows that wait for a row group as they are rather than packed
    /// in a file ([`Pending`]): for a table written on its own, whose waiting rows (at most a
    /// row group's) are all it holds.
    pub fn holding(mut self) -> TableWriter {
        self.pending.held = Some(Vec::new());
        self
    }

    /// Appends `rows` to the table in `slot`, which `start` starts with their columns when it
    /// holds none yet.
    pub fn append(
        slot: &mut Option<TableWriter>,
        rows: DataFrame,
        start: impl FnOnce(&DataFrame) -> Result<TableWriter, RunError>,
    ) -> Result<(), RunError> {
        let w = match slot {
            Some(w) => w,
            empty => empty.insert(start(&rows)?),
        };
        w.write(rows)
    }

    fn failed(&self, e: impl std::fmt::Display) -> RunError {
        RunError::Internal(format!("writing {}: {e}", self.path.display()))
    }

    /// Appends `part`, whose columns must be the first part's (same names, order and types).
    /// A part whose columns have other types (a column with no value in one batch of
    /// subjects may have no type) is cast to the table's types.
    pub fn write(&mut self, mut part: DataFrame) -> Result<(), RunError> {
        if part.schema().as_ref() != &self.schema {
            let names = |s: &Schema| s.iter_names().cloned().collect::<Vec<_>>();
            let cast = (names(part.schema()) == names(&self.schema))
                .then(|| {
                    part.clone()
                        .lazy()
                        .select(
                            self.schema
                                .iter()
                                .map(|(name, dtype)| col(name.clone()).strict_cast(dtype.clone()))
                                .collect::<Vec<_>>(),
                        )
                        .collect()
                        .ok()
                })
                .flatten();
            part = cast.ok_or_else(|| {
                self.failed(format!(
                    "a part has the columns {:?}, the table {:?}: the stage's columns depend on \
                     its rows, so it cannot run in subject batches",
                    part.schema(),
                    self.schema
                ))
            })?;
        }
        self.rows += part.height() as u64;
        self.pending_rows += part.height();
        if self.pending_rows >= ROW_GROUP {
            self.write_groups(Some(part), false)?;
        } else {
            self.pending.push(&part).map_err(|e| self.failed(e))?;
        }
        Ok(())
    }

    /// Writes the pending rows and `part` as row groups of [`ROW_GROUP`] rows, and with `all`
    /// the rows left over as a last, smaller one; without, they are packed and stay pending.
    ///
    /// The groups are encoded a column at a time (two columns at once on two threads): a
    /// column's values are read back and unpacked from every pending part and, with `part`'s,
    /// cut into the groups, each put in one piece and encoded as compressed pages; only the
    /// pages are kept until the groups are written. The pages are the ones polars' writer makes
    /// of the same group. The rows left over are always `part`'s last rows (fewer than a group
    /// were pending before it).
    fn write_groups(&mut self, part: Option<DataFrame>, all: bool) -> Result<(), RunError> {
        use rayon::prelude::*;
        let _one = GROUP_WRITES.lock().unwrap_or_else(|e| e.into_inner());
        let n = self.pending_rows;
        let written = if all { n } else { n - n % ROW_GROUP };
        let groups: Vec<(usize, usize)> = (0..written)
            .step_by(ROW_GROUP)
            .map(|at| (at, ROW_GROUP.min(written - at)))
            .collect();
        let columns = (0..self.schema.len())
            .into_par_iter()
            .map(|i| -> PolarsResult<Vec<ChunkPages>> {
                let (name, dtype) = self
                    .schema
                    .get_at_index(i)
                    .ok_or_else(|| polars_err!(ColumnNotFound: "column {i}"))?;
                let mut values = Series::new_empty(name.clone(), dtype);
                for piece in self.pending.column(i)? {
                    values.append_owned(piece?)?;
                }
                if let Some(part) = &part {
                    values.append(part.columns()[i].as_materialized_series())?;
                }
                groups
                    .iter()
                    .map(|&(at, len)| self.encoder.encode_series(i, &values.slice(at as i64, len)))
                    .collect()
            })
            .collect::<PolarsResult<Vec<_>>>()
            .map_err(|e| self.failed(e))?;
        let mut columns: Vec<_> = columns.into_iter().map(Vec::into_iter).collect();
        for &(_, len) in &groups {
            let pages: ChunkPages = columns
                .iter_mut()
                .flat_map(|column| column.next().unwrap_or_default())
                .collect();
            self.writer
                .write_row_group(len as u64, &pages)
                .map_err(|e| self.failed(e))?;
        }
        self.pending.clear().map_err(|e| self.failed(e))?;
        if written < n {
            let start = part
                .as_ref()
                .and_then(|p| p.height().checked_sub(n - written));
            let (Some(part), Some(start)) = (part, start) else {
                return Err(self.failed("the rows left over are not the last part's"));
            };
            let left = part.slice(start as i64, n - written);
            self.pending.push(&left).map_err(|e| self.failed(e))?;
        }
        self.pending_rows = n - written;
        Ok(())
    }

    /// Writes what is pending and the footer, syncs the file and renames it into place; its
    /// size, blake3 and row count.
    pub fn finish(mut self) -> Result<(u64, String, u64), RunError> {
        if self.pending_rows > 0 {
            self.write_groups(None, true)?;
        }
        self.writer.finish().map_err(|e| self.failed(e))?;
        drop(self.writer);
        let file = self
            .out
            .lock()
            .ok()
            .and_then(|mut f| f.take())
            .ok_or_else(|| RunError::Internal(format!("{} was closed", self.tmp.display())))?;
        let (bytes, hash) = file.publish(&self.tmp, &self.path)?;
        Ok((bytes, hash, self.rows))
    }
}

/// `df`'s rows in buffers of their own. A slice, a filter or a gather of a string column keeps
/// the whole buffers its strings came from: a row kept after its batch is done (the last row
/// of a table's part, against which the next part's order is checked) is copied out of them,
/// so that it does not hold its batch's key columns.
pub(crate) fn detached(df: &DataFrame) -> PolarsResult<DataFrame> {
    let rows = IdxCa::from_vec("__rows".into(), (0..df.height() as IdxSize).collect());
    detached_take(df, &rows)
}

/// The rows `rows` of `df` (what `df.take(rows)` gives) in buffers of their own: the gather
/// copies the other columns, and each text column's strings are copied out of the buffers
/// they came from.
pub(crate) fn detached_take(df: &DataFrame, rows: &IdxCa) -> PolarsResult<DataFrame> {
    let columns = df
        .take(rows)?
        .into_columns()
        .into_iter()
        .map(|c| -> PolarsResult<Column> {
            Ok(match c.dtype() {
                DataType::String => {
                    let ca = c.str()?;
                    let arrays = ca.downcast_iter().map(|a| a.clone().gc());
                    StringChunked::from_chunk_iter(ca.name().clone(), arrays).into_column()
                }
                DataType::Binary => {
                    let ca = c.binary()?;
                    let arrays = ca.downcast_iter().map(|a| a.clone().gc());
                    BinaryChunked::from_chunk_iter(ca.name().clone(), arrays).into_column()
                }
                _ => c,
            })
        })
        .collect::<PolarsResult<Vec<_>>>()?;
    DataFrame::new(rows.len(), columns)
}

/// `rows` packed: Arrow IPC, compressed as one LZ4 frame without checksums. A few times
/// smaller than the rows, and in buffers of their own (a slice or gather of a batch's table
/// keeps the batch's buffers). Not polars' IPC compression, which makes each buffer an LZ4
/// frame with checksums of its content and of each block, computed on writing and again on
/// reading: in batches of 50 it cost 2-5 CPU seconds, and holding the waiting rows unpacked
/// was 3 s faster, at twice the peak (2026-11-28). The packed rows are only ever read back by
/// the run that wrote them.
fn packed(rows: &mut DataFrame) -> PolarsResult<Vec<u8>> {
    let mut frame = lz4::EncoderBuilder::new()
        .checksum(lz4::ContentChecksum::NoChecksum)
        .block_checksum(lz4::liblz4::BlockChecksum::NoBlockChecksum)
        .build(Vec::new())?;
    polars::io::ipc::IpcWriter::new(&mut frame).finish(rows)?;
    let (bytes, done) = frame.finish();
    done?;
    Ok(bytes)
}

/// The rows [`packed`] packed, unpacked into a buffer kept for the next ([`UNPACKED`]).
fn unpacked(bytes: &[u8]) -> PolarsResult<DataFrame> {
    use std::io::Read;
    let mut ipc = UNPACKED
        .lock()
        .map(|mut b| std::mem::take(&mut *b))
        .unwrap_or_default();
    ipc.clear();
    let rows = lz4::Decoder::new(bytes)
        .and_then(|mut frame| frame.read_to_end(&mut ipc))
        .map_err(PolarsError::from)
        .and_then(|_| polars::io::ipc::IpcReader::new(std::io::Cursor::new(&ipc[..])).finish());
    if let Ok(mut kept) = UNPACKED.lock() {
        *kept = ipc;
    }
    rows
}

/// A buffer for [`unpacked`], kept for the next part (by whichever thread): a fresh one of a
/// part's size for every column was fresh pages each time, as a batched run's allocator gives
/// freed pages back.
static UNPACKED: std::sync::Mutex<Vec<u8>> = std::sync::Mutex::new(Vec::new());

/// The rows of a [`TableWriter`] waiting for a row group, held in a temporary file beside the
/// table's (`.<table>.pending.tmp-<pid>`, swept as any temporary file when a run is killed):
/// each column of each part packed on its own (Arrow IPC in one LZ4 frame, [`packed`]), so
/// that a group can be encoded a column at a time, reading back one column of every part. On the bench
/// cohort in batches of 50 subjects the tables' waiting rows came to some 30 MB packed at
/// once, held in memory until this file took them.
///
/// A table written alone ([`TableWriter::holding`]: the run's `duplicates`, written after the
/// stages) holds its waiting rows as they are instead: at most a row group's, and packing
/// each column of each part only to unpack it again cost more than encoding it.
struct Pending {
    path: PathBuf,
    file: Option<File>,
    /// Per part, per column: where its packed bytes are in the file, and how many.
    parts: Vec<Vec<(u64, usize)>>,
    /// The parts as they are, when they are held rather than packed.
    held: Option<Vec<DataFrame>>,
}

impl Pending {
    fn new(table: &Path) -> Pending {
        let name = table.file_name().map(|n| n.to_string_lossy().into_owned());
        Pending {
            path: tmp_name(&table.with_file_name(format!("{}.pending", name.unwrap_or_default()))),
            file: None,
            parts: Vec::new(),
            held: None,
        }
    }

    /// Packs each column of `rows` and appends it to the file, which is created the first time
    /// (or, held, keeps `rows`).
    fn push(&mut self, rows: &DataFrame) -> Result<(), RunError> {
        if let Some(held) = &mut self.held {
            held.push(rows.clone());
            return Ok(());
        }
        let file = match &mut self.file {
            Some(file) => file,
            none => none.insert(File::create(&self.path).map_err(|e| RunError::io(&self.path, e))?),
        };
        let mut columns = Vec::with_capacity(rows.width());
        for c in rows.columns() {
            let bytes = packed(&mut DataFrame::new(rows.height(), vec![c.clone()])?)?;
            let at = file
                .stream_position()
                .and_then(|at| file.write_all(&bytes).map(|()| at))
                .map_err(|e| RunError::io(&self.path, e))?;
            columns.push((at, bytes.len()));
        }
        self.parts.push(columns);
        Ok(())
    }

    /// Column `i` of every part, in order, each read back and unpacked as it is taken.
    fn column(
        &self,
        i: usize,
    ) -> PolarsResult<Box<dyn Iterator<Item = PolarsResult<Series>> + '_>> {
        if let Some(held) = &self.held {
            return Ok(Box::new(held.iter().map(move |part| {
                let c = part.columns().get(i);
                let c = c.ok_or_else(|| polars_err!(ColumnNotFound: "column {i}"))?;
                Ok(c.as_materialized_series().clone())
            })));
        }
        let mut file = match self.parts.is_empty() {
            true => None,
            false => Some(File::open(&self.path)?),
        };
        Ok(Box::new(self.parts.iter().map(move |part| {
            let (at, len) = part[i];
            let file = file
                .as_mut()
                .ok_or_else(|| polars_err!(ComputeError: "no file of waiting rows"))?;
            let mut bytes = vec![0; len];
            file.seek(SeekFrom::Start(at))?;
            file.read_exact(&mut bytes)?;
            let piece = unpacked(&bytes)?;
            Ok(piece
                .into_columns()
                .swap_remove(0)
                .take_materialized_series())
        })))
    }

    /// Forgets every part and empties the file.
    fn clear(&mut self) -> Result<(), RunError> {
        if let Some(held) = &mut self.held {
            held.clear();
        }
        if let Some(file) = &mut self.file {
            file.set_len(0)
                .and_then(|()| file.seek(SeekFrom::Start(0)).map(drop))
                .map_err(|e| RunError::io(&self.path, e))?;
        }
        self.parts.clear();
        Ok(())
    }
}

impl Drop for Pending {
    fn drop(&mut self) {
        if self.file.take().is_some() {
            let _ = fs::remove_file(&self.path);
        }
    }
}

/// A temporary file beside a published file, hashed as it is written: reading a large file
/// back only to hash it cost page faults and copies on registry-scale tables.
struct HashedFile(crate::cache::HashingWriter<std::io::BufWriter<File>>);

impl HashedFile {
    /// The temporary file for `path`, and its writer.
    fn create(path: &Path, buffer: usize) -> Result<(PathBuf, HashedFile), RunError> {
        let tmp = tmp_name(path);
        let file = File::create(&tmp).map_err(|e| RunError::io(&tmp, e))?;
        let writer =
            crate::cache::HashingWriter::new(std::io::BufWriter::with_capacity(buffer, file));
        Ok((tmp, HashedFile(writer)))
    }

    /// Flushes and syncs the temporary file `tmp` and renames it to `path`; its size and
    /// blake3.
    fn publish(self, tmp: &Path, path: &Path) -> Result<(u64, String), RunError> {
        let (buf, bytes, hash) = self.0.finish();
        let file = buf
            .into_inner()
            .map_err(|e| RunError::io(tmp, e.into_error()))?;
        file.sync_all().map_err(|e| RunError::io(tmp, e))?;
        drop(file);
        fs::rename(tmp, path).map_err(|e| RunError::io(path, e))?;
        Ok((bytes, hash))
    }
}

impl Write for HashedFile {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.write(buf)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.0.flush()
    }
}

/// Publishes at `path` the table of Parquet file `src` (written by [`write_parquet`], of the
/// same rows in the same order) with the footer `prov` gives it, as [`write_parquet`] would
/// write it, without decoding and encoding the table again: the data pages are copied as they
/// are, and the footer is written again with its `studyflow.*` entries replaced. A reused
/// table whose lineage changed (an input file changed, its content did not) costs a copy.
/// Returns the size, the blake3 and the row count; `None` when `src` cannot be read, is not the
/// file of blake3 `src_blake3` (checked as it is copied) or has no footer this can rewrite (the
/// caller then writes the table).
pub fn restamp_parquet(
    src: &Path,
    src_blake3: &str,
    path: &Path,
    prov: &Provenance,
) -> Result<Option<(u64, String, u64)>, RunError> {
    use polars_parquet_format::thrift::protocol::{TCompactInputProtocol, TCompactOutputProtocol};
    use polars_parquet_format::{FileMetaData, KeyValue};
    // A source that cannot be read (a previous run's folder removed by hand) is no error: the
    // caller writes the table instead.
    let Ok(mut file) = File::open(src) else {
        return Ok(None);
    };
    let len = file.metadata().map_or(0, |m| m.len());
    if len < 12 {
        return Ok(None);
    }
    let mut tail = [0u8; 8];
    if file.seek(SeekFrom::Start(len - 8)).is_err() || file.read_exact(&mut tail).is_err() {
        return Ok(None);
    }
    let footer_len = u64::from(u32::from_le_bytes([tail[0], tail[1], tail[2], tail[3]]));
    if &tail[4..] != b"PAR1" || footer_len + 12 > len {
        return Ok(None);
    }
    let data_len = len - 8 - footer_len;
    let mut footer = vec![0u8; footer_len as usize];
    if file.seek(SeekFrom::Start(data_len)).is_err() || file.read_exact(&mut footer).is_err() {
        return Ok(None);
    }
    // The reader's budget bounds what the footer's lengths may make it allocate.
    let budget = footer.len().saturating_mul(64).max(1 << 20);
    let Ok(mut meta) = FileMetaData::read_from_in_protocol(&mut TCompactInputProtocol::new(
        footer.as_slice(),
        budget,
    )) else {
        return Ok(None);
    };
    // The provenance of the table's columns as the writer would give it.
    let columns: Vec<&str> = meta
        .schema
        .iter()
        .skip(1)
        .map(|e| e.name.as_str())
        .collect();
    let pairs = prov.pairs_for(&columns);
    let Some(old) = meta.key_value_metadata.take() else {
        return Ok(None);
    };
    let Some(first) = old.iter().position(|kv| kv.key.starts_with("studyflow.")) else {
        return Ok(None);
    };
    let mut kv: Vec<KeyValue> = Vec::with_capacity(old.len());
    for (i, entry) in old.into_iter().enumerate() {
        if i == first {
            kv.extend(
                pairs
                    .iter()
                    .map(|(k, v)| KeyValue::new(k.clone(), Some(v.clone()))),
            );
        }
        if !entry.key.starts_with("studyflow.") {
            kv.push(entry);
        }
    }
    meta.key_value_metadata = Some(kv);
    let mut new_footer = Vec::with_capacity(footer.len() + 256);
    if meta
        .write_to_out_protocol(&mut TCompactOutputProtocol::new(&mut new_footer))
        .is_err()
    {
        return Ok(None);
    }

    let (tmp, mut out) = HashedFile::create(path, 1 << 20)?;
    // The source is hashed as it is copied: a file changed since it was published is not
    // trusted.
    let mut source_hash = blake3::Hasher::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut left = data_len;
    let mut readable = file.seek(SeekFrom::Start(0)).is_ok();
    while readable && left > 0 {
        let n = (left as usize).min(buf.len());
        if file.read_exact(&mut buf[..n]).is_err() {
            readable = false;
            break;
        }
        source_hash.update(&buf[..n]);
        out.write_all(&buf[..n])
            .map_err(|e| RunError::io(&tmp, e))?;
        left -= n as u64;
    }
    source_hash.update(&footer);
    source_hash.update(&tail);
    if !readable || source_hash.finalize().to_hex().as_str() != src_blake3 {
        drop(out);
        let _ = fs::remove_file(&tmp);
        return Ok(None);
    }
    out.write_all(&new_footer)
        .and_then(|_| out.write_all(&(new_footer.len() as u32).to_le_bytes()))
        .and_then(|_| out.write_all(b"PAR1"))
        .map_err(|e| RunError::io(&tmp, e))?;
    let (bytes, hash) = out.publish(&tmp, path)?;
    Ok(Some((bytes, hash, meta.num_rows.max(0) as u64)))
}

/// Writes bytes to `path` via a temporary file and a rename.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), RunError> {
    let tmp = tmp_name(path);
    let mut file = File::create(&tmp).map_err(|e| RunError::io(&tmp, e))?;
    file.write_all(bytes).map_err(|e| RunError::io(&tmp, e))?;
    file.sync_all().map_err(|e| RunError::io(&tmp, e))?;
    fs::rename(&tmp, path).map_err(|e| RunError::io(path, e))
}

/// Size and blake3 of a file.
pub fn hash_file(path: &Path) -> Result<(u64, String), RunError> {
    let bytes = fs::read(path).map_err(|e| RunError::io(path, e))?;
    Ok((
        bytes.len() as u64,
        blake3::hash(&bytes).to_hex().to_string(),
    ))
}

fn tmp_name(path: &Path) -> PathBuf {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    path.with_file_name(format!(".{name}.tmp-{}", std::process::id()))
}

/// Removes the temporary files a failed write left in `dir` (best effort), so a failed run's
/// folder holds only finished files.
pub fn remove_temporaries(dir: &Path) {
    for e in fs::read_dir(dir).into_iter().flatten().flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if name.starts_with('.') && name.contains(".tmp-") {
            let _ = fs::remove_file(e.path());
        }
    }
}

/// Points `out_dir/current` at `runs/<run_id>` in one atomic rename.
pub fn switch_current(out_dir: &Path, run_id: &str) -> Result<(), RunError> {
    let link = out_dir.join("current");
    let tmp = out_dir.join(format!(".current.tmp-{}", std::process::id()));
    let _ = fs::remove_file(&tmp);
    let target = Path::new("runs").join(run_id);
    #[cfg(unix)]
    std::os::unix::fs::symlink(&target, &tmp).map_err(|e| RunError::io(&tmp, e))?;
    #[cfg(not(unix))]
    fs::write(&tmp, target.to_string_lossy().as_bytes()).map_err(|e| RunError::io(&tmp, e))?;
    fs::rename(&tmp, &link).map_err(|e| RunError::io(&link, e))?;
    sync_dir(out_dir);
    Ok(())
}

/// The run folder `current` points at, if any.
pub fn current_run(out_dir: &Path) -> Option<PathBuf> {
    let link = out_dir.join("current");
    let target = fs::read_link(&link).ok()?;
    let dir = out_dir.join(target);
    dir.is_dir().then_some(dir)
}

fn sync_dir(dir: &Path) {
    if let Ok(d) = File::open(dir) {
        let _ = d.sync_all();
    }
}

/// Removes unfinished run folders and half-made `current` links left by runs that died
/// (never the published one). Called under the run lock.
pub fn sweep_unfinished(out_dir: &Path) {
    // A run killed between making its new link and renaming it over `current` leaves it.
    for e in fs::read_dir(out_dir).into_iter().flatten().flatten() {
        if e.file_name().to_string_lossy().starts_with(".current.tmp-") {
            let _ = fs::remove_file(e.path());
        }
    }
    let runs = out_dir.join("runs");
    let Ok(entries) = fs::read_dir(&runs) else {
        return;
    };
    for e in entries.flatten() {
        let p = e.path();
        if p.extension().is_some_and(|x| x == "partial") {
            let _ = fs::remove_dir_all(&p);
        }
    }
}

/// Test-only failpoints: `STUDYFLOW_FAILPOINT=<name>` makes the run fail at that step;
/// `STUDYFLOW_FAILPOINT_ACTION=abort` kills the process there instead, and `panic` panics.
pub fn failpoint(name: &str) -> Result<(), RunError> {
    match std::env::var("STUDYFLOW_FAILPOINT") {
        Ok(v) if v == name => {
            match std::env::var("STUDYFLOW_FAILPOINT_ACTION").as_deref() {
                Ok("abort") => std::process::abort(),
                Ok("panic") => panic!("failpoint {name}"),
                _ => {}
            }
            Err(RunError::Failpoint(name.to_string()))
        }
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn prov(fingerprint: &str) -> Provenance {
        Provenance {
            pipeline: "p".into(),
            pipeline_hash: "h".into(),
            table: "t".into(),
            stage_fingerprint: fingerprint.into(),
            engine_version: "v".into(),
            identifying: vec!["birth".into(), "absent".into()],
        }
    }

    /// The footer's key-value pairs and the row count of each row group of a Parquet file.
    fn footer(path: &Path) -> (Vec<(String, String)>, Vec<usize>) {
        let mut reader = ParquetReader::new(File::open(path).unwrap());
        let md = reader.get_metadata().unwrap().clone();
        let kv = md
            .key_value_metadata()
            .as_ref()
            .map(|kv| {
                kv.iter()
                    .map(|e| (e.key.clone(), e.value.clone().unwrap_or_default()))
                    .collect()
            })
            .unwrap_or_default();
        (kv, md.row_groups.iter().map(|g| g.num_rows()).collect())
    }

    #[test]
    fn a_table_written_in_parts_is_the_table_in_full_row_groups_with_its_footer() {
        let dir = tempfile::tempdir().unwrap();
        let part = |from: i64, n: usize| {
            df!(
                "USUBJID" => (0..n).map(|i| format!("S{:07}", from + i as i64)).collect::<Vec<_>>(),
                "AVAL" => (0..n).map(|i| (from + i as i64) as f64 / 4.0).collect::<Vec<_>>(),
                "birth" => (0..n).map(|i| (i % 3 != 0).then_some("x")).collect::<Vec<_>>(),
                "SITE" => (0..n).map(|i| ["nih", "site-b", "site-c"][(from as usize + i) % 3]).collect::<Vec<_>>(),
                // Days in no order (days that climb are written as their differences, which
                // polars' writer does not do: see `parquet_delta`).
                "DAY" => (0..n).map(|i| (i % 7 != 0).then_some(((from + i as i64) * 37 % 9000) as i32)).collect::<Vec<_>>(),
                "FLAG" => (0..n).map(|i| (i % 11 != 0).then_some(i % 2 == 0)).collect::<Vec<_>>(),
            )
            .unwrap()
            .lazy()
            .with_column(col("DAY").cast(DataType::Date))
            .collect()
            .unwrap()
        };
        // Parts smaller and larger than a row group, and an empty one.
        let sizes = [70_000usize, 0, 400_000, 5, 300_000];
        let path = dir.path().join("t.parquet");
        let mut w = TableWriter::create(&path, &prov("fp"), &part(0, 1)).unwrap();
        let mut whole = part(0, 0);
        let mut from = 0i64;
        for n in sizes {
            let p = part(from, n);
            whole.vstack_mut(&p).unwrap();
            w.write(p).unwrap();
            from += n as i64;
        }
        let (bytes, hash, rows) = w.finish().unwrap();
        assert_eq!(rows, whole.height() as u64);
        assert_eq!((bytes, hash), hash_file(&path).unwrap());
        let back = ParquetReader::new(File::open(&path).unwrap())
            .finish()
            .unwrap();
        assert!(back.equals_missing(&whole));
        let (kv, groups) = footer(&path);
        let mut full = vec![ROW_GROUP; 770_005 / ROW_GROUP];
        full.push(770_005 % ROW_GROUP);
        assert_eq!(groups, full);
        // The footer of the same table written whole.
        let once = dir.path().join("once.parquet");
        write_parquet(&mut whole.clone(), &once, &prov("fp")).unwrap();
        assert_eq!(kv, footer(&once).0);
        assert!(kv.contains(&("studyflow.identifying".into(), "birth".into())));
        assert!(!tmp_name(&path).exists());
        let waiting = tmp_name(&dir.path().join("t.parquet.pending"));
        assert!(!waiting.exists());
        // A table given up on (a failed run) leaves no file of waiting rows.
        let given_up = dir.path().join("u.parquet");
        let mut w = TableWriter::create(&given_up, &prov("fp"), &part(0, 1)).unwrap();
        w.write(part(0, 10)).unwrap();
        let waiting = tmp_name(&dir.path().join("u.parquet.pending"));
        assert!(waiting.exists());
        drop(w);
        assert!(!waiting.exists());
        // Byte for byte the file polars' own writer makes of the same rows in the same row
        // groups (each group a table of every column): the groups encoded a column at a time
        // are the same pages.
        let mut groups = DataFrame::empty_with_schema(whole.schema());
        for at in (0..whole.height()).step_by(ROW_GROUP) {
            let mut group = whole.slice(at as i64, ROW_GROUP);
            group.rechunk_mut();
            groups.vstack_mut_owned(group).unwrap();
        }
        let mut polars_bytes = Vec::new();
        let pairs = KeyValueMetadata::from_static(prov("fp").pairs(&whole));
        let mut polars_writer = ParquetSettings::published()
            .writer(&mut polars_bytes)
            .with_key_value_metadata(Some(pairs))
            .batched(whole.schema())
            .unwrap();
        polars_writer.write_batch(&groups).unwrap();
        polars_writer.finish().unwrap();
        drop(polars_writer);
        assert!(fs::read(&path).unwrap() == polars_bytes);
    }

    #[test]
    fn a_writer_holding_its_waiting_rows_writes_the_file_of_one_packing_them() {
        // Parts smaller and larger than a row group, an empty one, text with missing values:
        // the same bytes whether the rows waiting for a group are packed in a file or held.
        let dir = tempfile::tempdir().unwrap();
        let part = |from: usize, n: usize| {
            df!(
                "SRCFILE" => (0..n).map(|i| format!("site/file_{}.csv", (from + i) / 50_000)).collect::<Vec<_>>(),
                "SRCLINE" => (0..n).map(|i| (from + i) as i64 * 3 + 2).collect::<Vec<_>>(),
                "REASON" => (0..n).map(|i| (i % 5 != 0).then_some("newer export")).collect::<Vec<_>>(),
            )
            .unwrap()
        };
        let write = |name: &str, hold: bool| {
            let path = dir.path().join(name);
            let mut writer = None;
            let mut from = 0;
            for n in [70_000usize, 0, 300_000, 5, 200_000, 90_000] {
                TableWriter::append(&mut writer, part(from, n), |first| {
                    let w = TableWriter::create(&path, &prov("fp"), first)?;
                    Ok(if hold { w.holding() } else { w })
                })
                .unwrap();
                from += n;
                // A holding writer leaves no file of waiting rows beside the table.
                let waiting = tmp_name(&dir.path().join(format!("{name}.pending")));
                assert_eq!(waiting.exists(), !hold, "{name} at {from}");
            }
            let (bytes, _, rows) = writer.unwrap().finish().unwrap();
            assert_eq!(rows, from as u64);
            (bytes, fs::read(&path).unwrap())
        };
        let (packed, held) = (write("packed.parquet", false), write("held.parquet", true));
        assert!(packed == held);
        let back = ParquetReader::new(std::io::Cursor::new(&held.1))
            .finish()
            .unwrap();
        assert_eq!(back.height(), 660_005);
    }

    #[test]
    fn a_part_without_types_is_cast_and_a_part_of_other_columns_refused() {
        let dir = tempfile::tempdir().unwrap();
        let first = df!("A" => ["x"], "B" => [1i64]).unwrap();
        let path = dir.path().join("t.parquet");
        let mut w = TableWriter::create(&path, &prov("fp"), &first).unwrap();
        w.write(first.clone()).unwrap();
        // A batch where `A` has no value at all: no type.
        let untyped = DataFrame::new(
            2,
            vec![
                Column::full_null("A".into(), 2, &DataType::Null),
                Column::new("B".into(), [2i64, 3]),
            ],
        )
        .unwrap();
        w.write(untyped).unwrap();
        let other = df!("A" => ["y"], "C" => [1i64]).unwrap();
        let e = w.write(other).unwrap_err().to_string();
        assert!(e.contains("cannot run in subject batches"), "{e}");
        w.finish().unwrap();
        let back = ParquetReader::new(File::open(&path).unwrap())
            .finish()
            .unwrap();
        assert_eq!(back.column("A").unwrap().null_count(), 2);
        assert_eq!(back.height(), 3);
    }

    #[test]
    fn a_restamped_table_is_the_file_a_fresh_write_gives_and_a_changed_source_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let mut df = df!(
            "USUBJID" => ["C1", "C2", "C3"],
            "birth" => ["2010-01-01", "2011-02-02", "2012-03-03"],
            "AVAL" => [Some(1.5), None, Some(3.0)],
        )
        .unwrap();
        let old = dir.path().join("old.parquet");
        let (_, old_hash) = write_parquet(&mut df, &old, &prov("before")).unwrap();
        let fresh = dir.path().join("fresh.parquet");
        let (fresh_bytes, fresh_hash) = write_parquet(&mut df, &fresh, &prov("after")).unwrap();

        let restamped = dir.path().join("restamped.parquet");
        let (bytes, hash, rows) = restamp_parquet(&old, &old_hash, &restamped, &prov("after"))
            .unwrap()
            .expect("restamped");
        assert_eq!(
            (bytes, hash.as_str(), rows),
            (fresh_bytes, fresh_hash.as_str(), 3)
        );
        assert_eq!(fs::read(&restamped).unwrap(), fs::read(&fresh).unwrap());

        // A source whose bytes are not those published is not copied.
        let mut bytes = fs::read(&old).unwrap();
        bytes[10] ^= 1;
        fs::write(&old, &bytes).unwrap();
        let again = dir.path().join("again.parquet");
        assert!(
            restamp_parquet(&old, &old_hash, &again, &prov("after"))
                .unwrap()
                .is_none()
        );
        assert!(!again.exists());
        assert_eq!(
            fs::read_dir(dir.path()).unwrap().count(),
            3,
            "no temporary left"
        );
        // A source that is gone is no error either: the caller writes the table.
        let gone = dir.path().join("gone.parquet");
        assert!(
            restamp_parquet(&gone, &old_hash, &again, &prov("after"))
                .unwrap()
                .is_none()
        );
    }
}
