//! The cache in the output folder (`out/cache/`): stage outputs by fingerprint and parsed raw
//! files by content. Entries are verified before they are trusted; a bad one is a miss.

use std::collections::{BTreeMap, HashSet};
use std::fs;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use polars::prelude::*;
use serde::{Deserialize, Serialize};

use crate::stages::FileRead;
use crate::stages::ingest::{FILE_CONSTANTS, file_constant};

/// Version of the entry layout; entries of another version are misses.
pub const CACHE_FORMAT: u32 = 2;

/// The cache folder of one output folder. Deleting it is always safe: it only costs time.
#[derive(Debug, Clone)]
pub struct Cache {
    dir: PathBuf,
}

/// One file of an entry, with what it must be to be trusted: Arrow IPC (`.arrow`), or for the
/// table of a published stage, the published Parquet file itself (`.parquet`, a hard link).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Part {
    /// `table`, `rejects` or `dropped`.
    pub role: String,
    pub file: String,
    pub bytes: u64,
    pub blake3: String,
    pub rows: u64,
}

/// What a stage's output amounts to, enough for row fate and the manifest without reading it.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct StageSummary {
    pub rows: u64,
    pub rejected: u64,
    pub set_aside: u64,
    /// Rows per SRCFILE of the table (row-level stages only).
    pub has_srcfile: bool,
    pub accepted_by_file: BTreeMap<String, u64>,
    pub rejected_by_file: BTreeMap<String, u64>,
    pub collapsed_by_file: BTreeMap<String, u64>,
    pub superseded_by_file: BTreeMap<String, u64>,
    /// Raw files read (ingest only).
    pub files: Vec<FileRead>,
    pub has_rejects: bool,
    pub has_dropped: bool,
    /// Names the table's content for the stages that read it: the fingerprint of the stage run
    /// that first made this very table. A stage that runs again and makes the same table keeps
    /// that name, so the stages after it are reused (early cutoff). `None`: its fingerprint.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content: Option<String>,
}

/// A cached stage output.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StageEntry {
    pub format: u32,
    pub fingerprint: String,
    pub stage: String,
    pub created_utc: String,
    pub summary: StageSummary,
    pub parts: Vec<Part>,
    /// Ingest stages keep no table of their own: their files' entries, in reading order. So
    /// does a stage whose table is rows of an ingest's table (a `rows` part, see [`RowsOf`]):
    /// the entries of that ingest's files.
    #[serde(default)]
    pub file_keys: Vec<String>,
}

/// A cached parse of one raw file.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FileEntry {
    pub format: u32,
    pub key: String,
    pub read: FileRead,
    /// Upper date bound it was parsed with.
    pub bound: String,
    /// Latest date that passed; a later bound gives the same result when `late` is false.
    pub latest_date: Option<String>,
    /// Some date was after the bound: the result holds for that bound only.
    pub late: bool,
    pub parts: Vec<Part>,
    /// Columns of the parse left out of the table part, with their places: each holds one
    /// value for the whole file, which `read` gives ([`FILE_CONSTANTS`]).
    #[serde(default)]
    pub constants: Vec<(usize, String)>,
    /// Integer columns the table part stores in 8 or 16 bits, as their declared bounds allow
    /// ([`FileTableWriter`]); they read back as `Int32`, as the ingest makes them.
    #[serde(default)]
    pub narrowed: Vec<String>,
    /// The table part stores each row's `SRCLINE` less the row's number in the file (from 1)
    /// ([`FileTableWriter`]); reading it back adds the number again.
    #[serde(default)]
    pub lines_from_rows: bool,
}

impl FileEntry {
    /// The part holding the file's parsed table.
    pub fn table_part(&self) -> Result<&Part, String> {
        self.parts
            .iter()
            .find(|p| p.role == "table")
            .ok_or_else(|| "the entry has no table".to_string())
    }

    /// True when parsing again with upper date bound `bound` would give the same result.
    pub fn holds_for(&self, bound: &str) -> bool {
        self.bound == bound
            || (!self.late && self.latest_date.as_deref().is_none_or(|d| d <= bound))
    }
}

/// A cache lookup.
#[derive(Debug)]
pub enum Lookup<T> {
    Found(T),
    Missing,
    /// There is an entry, but it cannot be trusted (the reason says why).
    Corrupt(String),
}

/// Frames of a stage output.
#[derive(Debug, Clone)]
pub struct Frames {
    pub table: DataFrame,
    pub rejects: Option<DataFrame>,
    pub dropped: Option<DataFrame>,
    /// When the table is rows of an ingest's table, which rows of which files' entries: the
    /// cache then keeps these numbers instead of the table (see [`RowsOf`]).
    pub rows: Option<RowsOf>,
}

/// The column of a `rows` part.
const ROWS: &str = "ROW";

/// A table that is rows of an ingest's table: the ingest's files' entries, in reading order
/// (their tables one after the other make the ingest's table), and the numbers of the rows
/// in that order. A deduplicated stream is most of its raw rows: its cache entry keeps 4
/// bytes a row instead of encoding the rows again (the diary's 7.9 million rows: 1.4 CPU s
/// to encode), and the table is put together again from the files' entries when read.
#[derive(Debug, Clone)]
pub struct RowsOf {
    pub file_keys: Vec<String>,
    pub rows: IdxCa,
}

/// Writes bytes to `path` through a temporary name and a rename. No fsync: a cache file
/// torn by a crash fails its size or hash check and is rebuilt.
pub fn write_file(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let tmp = tmp_path(path);
    let mut f = fs::File::create(&tmp)?;
    f.write_all(bytes)?;
    drop(f);
    fs::rename(&tmp, path)
}

/// A temporary name next to `path`, unique per writer: two stages of one run may write the
/// same file entry at once.
fn tmp_path(path: &Path) -> PathBuf {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    path.with_file_name(format!(".{name}.tmp-{}-{n}", std::process::id()))
}

/// Hard-links `src` at `dest`, or copies it where the file system cannot link.
pub fn link_or_copy(src: &Path, dest: &Path) -> std::io::Result<()> {
    fs::hard_link(src, dest).or_else(|_| fs::copy(src, dest).map(|_| ()))
}

/// A table part that is a hard link to a file already written (a copy where the file system
/// cannot link), through a temporary name and a rename: the published file of a stage, or the
/// part of an earlier entry holding the same table. The part keeps the file's extension, which
/// says its format.
fn link_part(
    folder: &Path,
    key: &str,
    src: &Path,
    bytes: u64,
    blake3: &str,
    rows: u64,
) -> std::io::Result<Part> {
    let ext = src.extension().and_then(|x| x.to_str()).unwrap_or("arrow");
    let file = format!("{key}.table.{ext}");
    let path = folder.join(&file);
    let tmp = tmp_path(&path);
    link_or_copy(src, &tmp)?;
    fs::rename(&tmp, &path)?;
    Ok(Part {
        role: "table".into(),
        file,
        bytes,
        blake3: blake3.to_string(),
        rows,
    })
}

/// JSON followed by a line `blake3 <hash of the JSON>`, so that a file altered or torn in any
/// way, even into other valid JSON, is not trusted.
pub fn sealed_json<T: Serialize>(value: &T) -> serde_json::Result<Vec<u8>> {
    let mut bytes = serde_json::to_vec(value)?;
    let hash = blake3::hash(&bytes).to_hex().to_string();
    bytes.extend_from_slice(format!("\nblake3 {hash}\n").as_bytes());
    Ok(bytes)
}

/// Reads what [`sealed_json`] wrote, checking the seal.
pub fn from_sealed_json<T: for<'de> Deserialize<'de>>(bytes: &[u8]) -> Result<T, String> {
    let text = std::str::from_utf8(bytes).map_err(|_| "not UTF-8".to_string())?;
    let (json, seal) = text
        .trim_end_matches('\n')
        .rsplit_once('\n')
        .ok_or("no seal line")?;
    let hash = seal.strip_prefix("blake3 ").ok_or("no seal line")?;
    if blake3::hash(json.as_bytes()).to_hex().as_str() != hash {
        return Err("does not match its seal".into());
    }
    serde_json::from_str(json).map_err(|e| e.to_string())
}

/// Cheap check of a file without reading it: its size, and `magic` at both ends.
fn looks_whole(path: &Path, bytes: u64, magic: &[u8], format: &str) -> Result<(), String> {
    let shown = path.display();
    let mut f = fs::File::open(path).map_err(|e| format!("{shown}: {e}"))?;
    let len = f.metadata().map_err(|e| format!("{shown}: {e}"))?.len();
    if len != bytes {
        return Err(format!("{shown} has {len} bytes, expected {bytes}"));
    }
    let n = magic.len();
    if len < 2 * n as u64 {
        return Err(format!("{shown} is too short for {format}"));
    }
    let mut head = vec![0u8; n];
    let mut tail = vec![0u8; n];
    f.read_exact(&mut head)
        .and_then(|_| f.seek(SeekFrom::End(-(n as i64))).map(|_| ()))
        .and_then(|_| f.read_exact(&mut tail))
        .map_err(|e| format!("{shown}: {e}"))?;
    if head != magic || tail != magic {
        return Err(format!("{shown} is not a whole {format} file"));
    }
    Ok(())
}

/// Every part of an entry has its recorded size and whole Arrow IPC or Parquet framing.
fn parts_look_whole(folder: &Path, parts: &[Part]) -> Result<(), String> {
    parts.iter().try_for_each(|p| {
        let path = folder.join(&p.file);
        if is_parquet(&p.file) {
            parquet_looks_whole(&path, p.bytes)
        } else {
            part_looks_whole(&path, p.bytes)
        }
    })
}

fn is_parquet(file: &str) -> bool {
    file.ends_with(".parquet")
}

/// What a stage's cache entry holds of its table.
#[derive(Debug, Clone, Copy)]
pub enum TablePart<'a> {
    /// The table, as an Arrow IPC part.
    Write,
    /// A hard link to the published file (the table as published).
    Link(&'a TableFile),
    /// A hard link to the table part of an earlier entry whose table this one equals (early
    /// cutoff): the same table is not encoded again. Written when that entry has no table.
    Same(&'a StageEntry),
    /// Nothing: the table is computed again from the stage's inputs when needed.
    Omit,
}

impl StageEntry {
    /// The part holding the stage's table, when the entry has one.
    pub fn table_part(&self) -> Option<&Part> {
        self.part("table")
    }

    /// The entry's part of role `role` (`table`, `rejects`, `dropped`), when it has one.
    pub fn part(&self, role: &str) -> Option<&Part> {
        self.parts.iter().find(|p| p.role == role)
    }

    /// The part holding the numbers of the rows of the ingest the table is made of, when the
    /// entry keeps its table that way ([`RowsOf`]).
    pub fn rows_part(&self) -> Option<&Part> {
        self.part("rows")
    }

    /// True when the entry holds the stage's table (itself, or as rows of its files).
    pub fn has_table(&self) -> bool {
        self.table_part().is_some() || self.rows_part().is_some()
    }
}

impl Part {
    /// True for a Parquet part: a table part that links the published file, or rejected and
    /// set-aside rows. Table parts the cache writes itself are Arrow IPC.
    pub fn is_parquet(&self) -> bool {
        is_parquet(&self.file)
    }
}

/// A published table's file, which a stage's cache entry links to instead of writing its
/// table a second time.
#[derive(Debug, Clone)]
pub struct TableFile {
    pub path: PathBuf,
    pub bytes: u64,
    pub blake3: String,
}

/// A parsed file's table without the columns that hold one value for the whole file
/// ([`FILE_CONSTANTS`]), and those columns with their places. A file's cached table leaves
/// them out and takes them from the entry's [`FileRead`] when read back: a third of a raw
/// diary row's bytes that would be encoded and compressed for nothing.
fn without_constants(table: &DataFrame) -> (DataFrame, Vec<(usize, String)>) {
    let mut kept = Vec::with_capacity(table.width());
    let mut constants = Vec::new();
    for (i, c) in table.columns().iter().enumerate() {
        if FILE_CONSTANTS.contains(&c.name().as_str()) && matches!(c, Column::Scalar(_)) {
            constants.push((i, c.name().to_string()));
        } else {
            kept.push(c.clone());
        }
    }
    match DataFrame::new(table.height(), kept) {
        Ok(t) => (t, constants),
        Err(_) => (table.clone(), Vec::new()),
    }
}

/// `table` with those of the columns `narrowed` it has ([`FileTableWriter::narrowing`]) back
/// as `Int32`.
fn widened(mut table: DataFrame, narrowed: &[String]) -> Result<DataFrame, String> {
    for name in narrowed {
        if let Ok(c) = table.column(name) {
            let c = c.cast(&DataType::Int32).map_err(|e| e.to_string())?;
            table.with_column(c).map_err(|e| e.to_string())?;
        }
    }
    Ok(table)
}

/// An `Int32` column in the narrower integer type `to` (`Int8` or `Int16`), or an error when
/// a value does not fit: the values of a chunk whose slots all fit are converted as they are;
/// otherwise value by value, missing ones stored as 0. (polars' strict cast converts, then
/// counts the missing values of both columns to find a value that did not fit.)
fn narrowed_ints(values: &Int32Chunked, to: &DataType) -> anyhow::Result<Column> {
    fn narrow<T>(values: &Int32Chunked) -> anyhow::Result<Column>
    where
        T: PolarsNumericType,
        T::Native: TryFrom<i32> + Default,
    {
        use polars_arrow::array::PrimitiveArray;
        let chunks = values
            .downcast_iter()
            .map(|a| {
                let valid = a.validity();
                // Most chunks: every slot (missing ones too) in the narrower type's range, found
                // in one pass, and then each converted as it is; a loop each that vectorises.
                // Any other chunk goes value by value, skipping missing rows: `None` when a
                // present value does not fit.
                let all = a.values().as_slice();
                let fits = |x: i32| T::Native::try_from(x).is_ok();
                let (lo, hi) = all
                    .iter()
                    .fold((i32::MAX, i32::MIN), |(lo, hi), &x| (lo.min(x), hi.max(x)));
                let narrow = if all.is_empty() || (fits(lo) && fits(hi)) {
                    Some(
                        all.iter()
                            .map(|&x| T::Native::try_from(x).unwrap_or_default())
                            .collect(),
                    )
                } else {
                    all.iter()
                        .enumerate()
                        .map(|(i, &x)| match valid {
                            Some(v) if !v.get_bit(i) => Some(T::Native::default()),
                            _ => T::Native::try_from(x).ok(),
                        })
                        .collect::<Option<Vec<T::Native>>>()
                };
                let Some(narrow) = narrow else {
                    anyhow::bail!(
                        "`{}` holds a value outside {:?}, the type it is stored in",
                        values.name(),
                        T::get_static_dtype()
                    );
                };
                Ok(PrimitiveArray::new(
                    T::get_static_dtype().to_arrow(CompatLevel::newest()),
                    narrow.into(),
                    valid.cloned(),
                ))
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        Ok(ChunkedArray::<T>::from_chunk_iter(values.name().clone(), chunks).into_column())
    }
    match to {
        DataType::Int8 => narrow::<Int8Type>(values),
        DataType::Int16 => narrow::<Int16Type>(values),
        _ => Ok(values.clone().into_column().strict_cast(to)?),
    }
}

/// The numbers (from 1) of the rows of a file's table from row `first` (from 0) on, `n` rows.
fn row_numbers(first: u64, n: usize) -> Series {
    let first = first as i64 + 1;
    Int64Chunked::from_iter_values("SRCLINE".into(), first..first + n as i64).into_series()
}

/// A stored file table's rows from row `first` of the file on, as the parse made them: the
/// narrowed columns widened, and `SRCLINE` given back the row numbers taken from it when
/// `lines_from_rows` ([`FileTableWriter`]).
fn stored_back(
    table: DataFrame,
    narrowed: &[String],
    lines_from_rows: bool,
    first: u64,
) -> Result<DataFrame, String> {
    let mut table = widened(table, narrowed)?;
    if lines_from_rows && let Ok(c) = table.column("SRCLINE") {
        let rows = row_numbers(first, c.len());
        let lines = (c.as_materialized_series() + &rows).map_err(|e| e.to_string())?;
        table
            .with_column(lines.into_column())
            .map_err(|e| e.to_string())?;
    }
    Ok(table)
}

/// A cached file table with the columns `constants` left out put back, made from `read`: in
/// their places, or, for `columns`, in that order.
fn with_constants(
    table: DataFrame,
    read: &FileRead,
    constants: &[(usize, String)],
    columns: Option<&[String]>,
) -> Result<DataFrame, String> {
    if constants.is_empty() {
        return Ok(table);
    }
    let n = table.height();
    let days = chrono::NaiveDate::parse_from_str(&read.export_date, "%Y-%m-%d")
        .map_err(|e| format!("export date `{}`: {e}", read.export_date))?
        .to_epoch_days();
    let constant = |name: &str| -> Result<Column, String> {
        file_constant(name, &read.site, &read.file, days, n)
            .ok_or_else(|| format!("`{name}` is not a column with one value per file"))
    };
    let left_out = |name: &str| constants.iter().any(|(_, c)| c == name);
    let cols = match columns {
        Some(columns) => columns
            .iter()
            .map(|name| match table.column(name) {
                Ok(c) => Ok(c.clone()),
                Err(_) if left_out(name) => constant(name),
                Err(e) => Err(e.to_string()),
            })
            .collect::<Result<Vec<Column>, String>>()?,
        None => {
            let mut cols = table.columns().to_vec();
            for (at, name) in constants {
                cols.insert((*at).min(cols.len()), constant(name)?);
            }
            cols
        }
    };
    DataFrame::new(n, cols).map_err(|e| e.to_string())
}

/// Most rows in one record batch of a cached file table: a run in subject batches reads a
/// file's parse back one piece at a time ([`Cache::file_table_pieces`]), so that no file's
/// table is ever whole in its memory (a diary file of the bench cohort holds 2.6 million
/// rows: ten pieces).
pub const PIECE_ROWS: usize = 1 << 18;

/// Rows of a piece of a file parsed in a run in subject batches, which hands its rows to the
/// file's cache entry as they are parsed ([`crate::stages::ingest::FileParser::parse_in_pieces`]):
/// smaller than [`PIECE_ROWS`], since the spill then decodes one such piece of each of two
/// files at a time (bench cohort, batches of 100: the spill's peak 0.32 -> 0.24 GB).
pub const PARSE_PIECE_ROWS: usize = 1 << 16;

/// `table` as pieces of at most [`PIECE_ROWS`] rows (slices, not copies), which the IPC
/// writer writes as one record batch each. A table whose columns are already in chunks is
/// left as it is: slicing those would make the writer copy every column to line them up.
fn in_pieces(table: &DataFrame) -> DataFrame {
    if table.height() <= PIECE_ROWS || table.columns().iter().any(|c| c.n_chunks() > 1) {
        return table.clone();
    }
    let mut pieces = table.slice(0, PIECE_ROWS);
    let mut at = PIECE_ROWS;
    while at < table.height() {
        pieces.vstack_mut_unchecked(&table.slice(at as i64, PIECE_ROWS));
        at += PIECE_ROWS;
    }
    pieces
}

/// A parsed file's table written to the file cache piece by piece ([`Cache::file_table_writer`]):
/// Arrow IPC, one record batch per chunk of a piece, LZ4 as [`encode`], without the columns
/// that hold one value for the file ([`without_constants`]), into a temporary file that
/// [`Cache::store_file_written`] renames to the entry's name.
///
/// Integer columns whose declared bounds fit 8 or 16 bits (the diary's item scores, 0 to 4)
/// are stored in that width ([`FileTableWriter::narrowing`]) and widened back to `Int32` when
/// read. The codec's time grows with the bytes it is given: a raw diary file's table is about
/// 40 % fewer bytes so, and compresses in about half the time to a smaller file (a bench diary
/// file, 2.6 million rows, with zstd as the cache then had: the scores 0.89 -> 0.62 MB each).
///
/// `SRCLINE` (when it has no missing value) is stored as the line less the row's number in
/// the file: a file's lines follow its rows, so what is stored is a run of one value that
/// grows by one at each rejected or blank line, which the codec takes in a few passes of its
/// fastest kind (a bench diary file, with zstd: 44 -> 3 ms and 2.6 -> 0.08 MB, where the lines
/// themselves, each a new value, were the costliest column).
pub struct FileTableWriter {
    tmp: PathBuf,
    writer: Option<
        polars_arrow::io::ipc::write::FileWriter<HashingWriter<std::io::BufWriter<fs::File>>>,
    >,
    constants: Vec<(usize, String)>,
    /// Columns to store narrower, and in what type.
    narrow: Vec<(PlSmallStr, DataType)>,
    /// Those of them the table had (`Int32`, stored narrower).
    narrowed: Vec<String>,
    /// `SRCLINE` is stored less the row numbers.
    lines_from_rows: bool,
    rows: u64,
}

impl FileTableWriter {
    /// Appends `piece`, whose columns must be the first piece's, as record batches of at most
    /// [`PIECE_ROWS`] rows.
    pub fn write(&mut self, piece: &DataFrame) -> anyhow::Result<()> {
        use polars_arrow::io::ipc::write::{FileWriter, WriteOptions};
        let (mut stored, constants) = without_constants(piece);
        let mut narrowed = Vec::new();
        for (name, to) in &self.narrow {
            if let Ok(c) = stored.column(name)
                && c.dtype() == &DataType::Int32
            {
                // Strict: a value outside the bounds fails the entry rather than changing.
                let c = narrowed_ints(c.i32()?, to)?;
                stored.with_column(c)?;
                narrowed.push(name.to_string());
            }
        }
        let lines_from_rows = match stored.column("SRCLINE") {
            Ok(c) if c.dtype() == &DataType::Int64 && c.null_count() == 0 => {
                let rows = row_numbers(self.rows, c.len());
                let less = (c.as_materialized_series() - &rows)?;
                stored.with_column(less.into_column())?;
                true
            }
            _ => false,
        };
        let mut stored = in_pieces(&stored);
        let writer = match &mut self.writer {
            Some(w) => {
                if constants != self.constants
                    || narrowed != self.narrowed
                    || lines_from_rows != self.lines_from_rows
                {
                    anyhow::bail!("a piece of the table has other columns than the first");
                }
                w
            }
            None => {
                let f = fs::File::create(&self.tmp)?;
                let out = HashingWriter::new(std::io::BufWriter::with_capacity(1 << 20, f));
                let schema = stored.schema().to_arrow(CompatLevel::newest());
                let options = WriteOptions {
                    compression: Some(ipc_compression()?.into()),
                };
                self.constants = constants;
                self.narrowed = narrowed;
                self.lines_from_rows = lines_from_rows;
                self.writer
                    .insert(FileWriter::try_new(out, Arc::new(schema), None, options)?)
            }
        };
        stored.align_chunks_par();
        for batch in stored.iter_chunks(CompatLevel::newest(), true) {
            writer.write(&batch, None)?;
        }
        self.rows += piece.height() as u64;
        Ok(())
    }

    /// Stores the `Int32` columns named in `narrow` in the types given there, which must hold
    /// every value the column can have (the column's declared bounds).
    pub fn narrowing(mut self, narrow: Vec<(PlSmallStr, DataType)>) -> FileTableWriter {
        self.narrow = narrow;
        self
    }

    /// Finishes the file and renames it to `path` (file name `file`): the table's part, the
    /// columns left out and the columns stored narrower.
    fn finish(mut self, path: &Path, file: String) -> anyhow::Result<FinishedTable> {
        let mut w = self
            .writer
            .take()
            .ok_or_else(|| anyhow::anyhow!("no piece of the table was written"))?;
        w.finish()?;
        let (buf, bytes, blake3) = w.into_inner().finish();
        buf.into_inner().map_err(|e| e.into_error())?;
        fs::rename(&self.tmp, path)?;
        let part = Part {
            role: "table".into(),
            file,
            bytes,
            blake3,
            rows: self.rows,
        };
        Ok(FinishedTable {
            part,
            constants: std::mem::take(&mut self.constants),
            narrowed: std::mem::take(&mut self.narrowed),
            lines_from_rows: self.lines_from_rows,
        })
    }
}

/// A file's table written to the cache ([`FileTableWriter::finish`]): its part, the columns
/// left out and the columns stored narrower.
struct FinishedTable {
    part: Part,
    constants: Vec<(usize, String)>,
    narrowed: Vec<String>,
    lines_from_rows: bool,
}

impl Drop for FileTableWriter {
    fn drop(&mut self) {
        // Not finished: the temporary file goes (after a rename there is none).
        let _ = fs::remove_file(&self.tmp);
    }
}

/// Cheap check of a Parquet file (a published table): its size and the magic at both ends.
pub fn parquet_looks_whole(path: &Path, bytes: u64) -> Result<(), String> {
    looks_whole(path, bytes, b"PAR1", "Parquet")
}

// Cache parts are Arrow IPC files, LZ4: a cold run writes every cached stage's output and
// every parsed file in that stage's thread, sharing the cores with the other stages. polars'
// IPC writer compresses each buffer of a record batch on its own, and at zstd (level 1) it
// made a new streaming context for each, copying the buffer into it: about 8 % of a
// one-thread run's instructions on a 300-subject cohort. LZ4 (framed, with checksums): 3.8 %
// fewer instructions for the run, 5 % less CPU and wall time over eight alternating pairs on
// the bench cohort, for a file cache of 50 MB instead of 27 MB (stage entries 116 MB instead
// of 106, most of them links to published tables). An earlier round measured the codecs on
// one cached file with pyarrow's writer, which keeps its contexts, and kept zstd.
// The part is streamed to its file through a hasher, not built in memory first: a buffer the
// size of a large table, grown by doubling, cost page faults and copies worth several seconds
// of a registry-scale run.
//
// Rejected and set-aside rows are Parquet instead: their text columns repeat a few values
// (file, site, rule, fate), which Parquet's dictionaries make about three times cheaper to
// read back, for the same cost to write, and every run reads them back to build `rejects`
// and `duplicates` (1.7 million set-aside diary rows: 0.16 -> 0.05 CPU s to read).
fn encode(df: &DataFrame, out: impl Write, format: PartFormat) -> PolarsResult<()> {
    use polars::io::ipc::IpcWriter;
    let mut df = df.clone();
    match format {
        PartFormat::Ipc => IpcWriter::new(out)
            .with_compression(Some(ipc_compression()?))
            .finish(&mut df),
        PartFormat::Parquet => part_parquet().write_frame(&mut df, out, None).map(|_| ()),
    }
}

/// How a cache part (rejected or set-aside rows) is encoded as Parquet: zstd, no statistics.
pub fn part_parquet() -> crate::publish::ParquetSettings {
    crate::publish::ParquetSettings {
        compression: ParquetCompression::Zstd(None),
        statistics: StatisticsOptions::empty(),
    }
}

/// How a cache part is encoded.
#[derive(Clone, Copy)]
enum PartFormat {
    Ipc,
    Parquet,
}

impl PartFormat {
    /// Tables are Arrow IPC; rejected and set-aside rows Parquet (see [`encode`]).
    fn of(role: &str) -> PartFormat {
        match role {
            "rejects" | "dropped" => PartFormat::Parquet,
            _ => PartFormat::Ipc,
        }
    }

    fn extension(self) -> &'static str {
        match self {
            PartFormat::Ipc => "arrow",
            PartFormat::Parquet => "parquet",
        }
    }
}

/// A writer that counts and hashes (blake3) the bytes it passes on.
pub struct HashingWriter<W: Write> {
    inner: W,
    hasher: blake3::Hasher,
    bytes: u64,
}

impl<W: Write> HashingWriter<W> {
    pub fn new(inner: W) -> Self {
        HashingWriter {
            inner,
            hasher: blake3::Hasher::new(),
            bytes: 0,
        }
    }

    /// The inner writer, the number of bytes written and their blake3 (hex).
    pub fn finish(self) -> (W, u64, String) {
        (
            self.inner,
            self.bytes,
            self.hasher.finalize().to_hex().to_string(),
        )
    }
}

impl<W: Write> Write for HashingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.bytes += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

fn decode(bytes: Vec<u8>, parquet: bool, columns: Option<&[String]>) -> PolarsResult<DataFrame> {
    let bytes = std::io::Cursor::new(bytes);
    let columns = columns.map(|c| c.to_vec());
    if parquet {
        ParquetReader::new(bytes).with_columns(columns).finish()
    } else {
        polars::io::ipc::IpcReader::new(bytes)
            .with_columns(columns)
            .finish()
    }
}

/// Why the cache part at `path` is not what its entry says: `found` `what` (bytes, rows)
/// where the entry says `expected`.
fn miscounted(path: &Path, found: u64, what: &str, expected: u64) -> String {
    format!("{} has {found} {what}, expected {expected}", path.display())
}

/// The bytes of the cache part `part` at `path`, checked against its size and hash.
fn verified_bytes(path: &Path, part: &Part) -> Result<Vec<u8>, String> {
    let bytes = fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
    as_recorded(path, part, bytes.len() as u64, &blake3::hash(&bytes))?;
    Ok(bytes)
}

/// Whether the cache part at `path`, of `bytes` bytes hashing to `hash`, is what its entry
/// `part` records; why not.
fn as_recorded(path: &Path, part: &Part, bytes: u64, hash: &blake3::Hash) -> Result<(), String> {
    if bytes != part.bytes {
        return Err(miscounted(path, bytes, "bytes", part.bytes));
    }
    if hash.to_hex().as_str() != part.blake3 {
        return Err(format!("{} does not match its hash", path.display()));
    }
    Ok(())
}

/// The compression of Arrow IPC cache parts: LZ4 (see [`encode`]).
fn ipc_compression() -> PolarsResult<polars::io::ipc::IpcCompression> {
    Ok(polars::io::ipc::IpcCompression::LZ4)
}

/// A stage's rejected or set-aside rows, read a range of rows at a time: the table in memory,
/// or its cache part's Parquet bytes (a few times smaller than the rows), decoded range by
/// range, so that a run's `duplicates` is written without holding every stage's rows at once.
pub enum PartRows {
    Table(DataFrame),
    Cached {
        bytes: Vec<u8>,
        path: PathBuf,
        rows: usize,
    },
}

impl PartRows {
    pub fn height(&self) -> usize {
        match self {
            PartRows::Table(df) => df.height(),
            PartRows::Cached { rows, .. } => *rows,
        }
    }

    /// Columns `names` of every row.
    pub fn columns(&self, names: &[&str]) -> Result<DataFrame, String> {
        self.columns_of_rows(names, 0, self.height())
    }

    /// Columns `names` of the `len` rows from row `start`.
    pub fn columns_of_rows(
        &self,
        names: &[&str],
        start: usize,
        len: usize,
    ) -> Result<DataFrame, String> {
        match self {
            PartRows::Table(df) => df
                .select(names.iter().copied())
                .map(|d| d.slice(start as i64, len))
                .map_err(|e| e.to_string()),
            PartRows::Cached { bytes, path, rows } => {
                let names = names.iter().map(|n| n.to_string()).collect();
                self.checked(
                    ParquetReader::new(std::io::Cursor::new(bytes.as_slice()))
                        .with_columns(Some(names))
                        .with_slice(Some((start, len)))
                        .finish(),
                    path,
                    len.min(rows.saturating_sub(start)),
                )
            }
        }
    }

    /// The `len` rows from row `start`.
    pub fn rows(&self, start: usize, len: usize) -> Result<DataFrame, String> {
        match self {
            PartRows::Table(df) => Ok(df.slice(start as i64, len)),
            PartRows::Cached { bytes, path, rows } => self.checked(
                ParquetReader::new(std::io::Cursor::new(bytes.as_slice()))
                    .with_slice(Some((start, len)))
                    .finish(),
                path,
                len.min(rows.saturating_sub(start)),
            ),
        }
    }

    fn checked(
        &self,
        read: PolarsResult<DataFrame>,
        path: &Path,
        expected: usize,
    ) -> Result<DataFrame, String> {
        let df = read.map_err(|e| format!("{}: {e}", path.display()))?;
        if df.height() != expected {
            return Err(miscounted(
                path,
                df.height() as u64,
                "rows",
                expected as u64,
            ));
        }
        Ok(df)
    }
}

/// A reader of the record batches of the Arrow IPC file `f`: every column, or column `only`
/// (only its buffers decoded).
pub(crate) fn ipc_file_reader<R: std::io::Read + Seek>(
    mut f: R,
    only: Option<&str>,
) -> Result<polars_arrow::io::ipc::read::FileReader<R>, String> {
    use polars_arrow::io::ipc::read::{FileReader, read_file_metadata};
    let metadata = read_file_metadata(&mut f).map_err(|e| e.to_string())?;
    let projection = match only {
        Some(name) => Some(vec![
            metadata
                .schema
                .index_of(name)
                .ok_or_else(|| format!("no stored column `{name}`"))?,
        ]),
        None => None,
    };
    Ok(FileReader::new(f, metadata, projection, None))
}

/// A file's cached table read back one piece (record batch, at most [`PIECE_ROWS`] rows) at
/// a time ([`Cache::file_table_pieces`]), without the columns its entry left out
/// ([`with_file_constants`] puts them back). The part was checked against its size and hash
/// before the first piece; its rows are counted against the entry's after the last.
pub struct TablePieces {
    reader: polars_arrow::io::ipc::read::FileReader<std::io::BufReader<fs::File>>,
    path: PathBuf,
    rows: u64,
    seen: u64,
    /// Columns stored narrower, widened back as each piece is read ([`widened`]).
    narrowed: Vec<String>,
    /// `SRCLINE` is stored less the row numbers ([`stored_back`]).
    lines_from_rows: bool,
}

impl TablePieces {
    /// A table of the part's columns without rows (the left-out columns not put back).
    pub fn empty(&self) -> DataFrame {
        let empty = DataFrame::empty_with_schema(&Schema::from_arrow_schema(self.reader.schema()));
        widened(empty.clone(), &self.narrowed).unwrap_or(empty)
    }
}

impl Iterator for TablePieces {
    type Item = Result<DataFrame, String>;

    fn next(&mut self) -> Option<Self::Item> {
        match self.reader.next() {
            Some(Ok(batch)) => {
                let piece = DataFrame::from(batch);
                let first = self.seen;
                self.seen += piece.height() as u64;
                Some(
                    stored_back(piece, &self.narrowed, self.lines_from_rows, first)
                        .map_err(|e| format!("{}: {e}", self.path.display())),
                )
            }
            Some(Err(e)) => Some(Err(format!("{}: {e}", self.path.display()))),
            None if self.seen != self.rows => {
                let e = miscounted(&self.path, self.seen, "rows", self.rows);
                self.seen = self.rows;
                Some(Err(e))
            }
            None => None,
        }
    }
}

/// Rows of file entry `e`'s table read by [`Cache::file_table_pieces`] (a piece, or rows
/// taken from pieces), with the columns the entry left out put back in their places.
pub fn with_file_constants(e: &FileEntry, rows: DataFrame) -> Result<DataFrame, String> {
    with_constants(rows, &e.read, &e.constants, None)
}

fn part_looks_whole(path: &Path, bytes: u64) -> Result<(), String> {
    looks_whole(path, bytes, b"ARROW1", "Arrow IPC")
}

impl Cache {
    /// The cache of output folder `out_dir` (`out_dir/cache`).
    pub fn new(out_dir: &Path) -> Cache {
        Cache {
            dir: out_dir.join("cache"),
        }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn stages(&self) -> PathBuf {
        self.dir.join("stages")
    }

    fn files(&self) -> PathBuf {
        self.dir.join("files")
    }

    fn write_part(
        &self,
        folder: &Path,
        key: &str,
        role: &str,
        df: &DataFrame,
    ) -> anyhow::Result<Part> {
        let format = PartFormat::of(role);
        let file = format!("{key}.{role}.{}", format.extension());
        let path = folder.join(&file);
        let tmp = tmp_path(&path);
        let written = (|| -> anyhow::Result<(u64, String)> {
            let f = fs::File::create(&tmp)?;
            let mut w = HashingWriter::new(std::io::BufWriter::with_capacity(1 << 20, f));
            encode(df, &mut w, format)?;
            let (buf, bytes, hash) = w.finish();
            buf.into_inner().map_err(|e| e.into_error())?;
            Ok((bytes, hash))
        })();
        let (bytes, blake3) = match written {
            Ok(w) => w,
            Err(e) => {
                let _ = fs::remove_file(&tmp);
                return Err(e);
            }
        };
        fs::rename(&tmp, &path)?;
        Ok(Part {
            role: role.into(),
            file,
            bytes,
            blake3,
            rows: df.height() as u64,
        })
    }

    fn read_part(&self, folder: &Path, part: &Part) -> Result<DataFrame, String> {
        self.read_part_columns(folder, part, None)
    }

    /// [`Cache::read_part`], decoding only `columns` when given (the whole file is still
    /// checked against its size and hash).
    fn read_part_columns(
        &self,
        folder: &Path,
        part: &Part,
        columns: Option<&[String]>,
    ) -> Result<DataFrame, String> {
        let path = folder.join(&part.file);
        let bytes = verified_bytes(&path, part)?;
        let df = decode(bytes, is_parquet(&part.file), columns)
            .map_err(|e| format!("{}: {e}", path.display()))?;
        if df.height() as u64 != part.rows {
            return Err(miscounted(&path, df.height() as u64, "rows", part.rows));
        }
        Ok(df)
    }

    fn read_meta<T: for<'de> Deserialize<'de>>(path: &Path) -> Lookup<T> {
        match fs::read(path) {
            Ok(b) => match from_sealed_json(&b) {
                Ok(v) => Lookup::Found(v),
                Err(why) => Lookup::Corrupt(format!("{}: {why}", path.display())),
            },
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Lookup::Missing,
            Err(e) => Lookup::Corrupt(format!("{}: {e}", path.display())),
        }
    }

    /// The stage entry of fingerprint `fp`, checked cheaply (sizes and file magic; ingest
    /// entries also check their files' entries). Hashes are checked when parts are read.
    pub fn stage_entry(&self, fp: &str) -> Lookup<StageEntry> {
        let folder = self.stages();
        let e: StageEntry = match Self::read_meta(&folder.join(format!("{fp}.json"))) {
            Lookup::Found(e) => e,
            Lookup::Missing => return Lookup::Missing,
            Lookup::Corrupt(why) => return Lookup::Corrupt(why),
        };
        if e.format != CACHE_FORMAT || e.fingerprint != fp {
            return Lookup::Missing;
        }
        if let Err(why) = parts_look_whole(&folder, &e.parts) {
            return Lookup::Corrupt(why);
        }
        for k in &e.file_keys {
            if let Err(why) = self.usable_file_entry(k) {
                return Lookup::Corrupt(why);
            }
        }
        Lookup::Found(e)
    }

    /// The entry of parsed file `key` a stage entry names: missing or corrupt, it says why.
    pub fn usable_file_entry(&self, key: &str) -> Result<FileEntry, String> {
        match self.file_entry(key) {
            Lookup::Found(fe) => Ok(fe),
            Lookup::Missing => Err(format!("file entry {key} is missing")),
            Lookup::Corrupt(why) => Err(why),
        }
    }

    /// Reads a stage entry's frames, verifying every part's hash and row count.
    /// Ingest entries are assembled by the caller from their file entries.
    pub fn load_stage(&self, e: &StageEntry) -> Result<Frames, String> {
        let folder = self.stages();
        let mut table = None;
        let mut rejects = None;
        let mut dropped = None;
        for p in &e.parts {
            match p.role.as_str() {
                "table" => table = Some(self.read_part(&folder, p)?),
                "rows" => table = Some(self.rows_table(e, p, None)?),
                "rejects" => rejects = Some(self.read_part(&folder, p)?),
                "dropped" => dropped = Some(self.read_part(&folder, p)?),
                other => return Err(format!("unknown part `{other}`")),
            }
        }
        Ok(Frames {
            table: table.ok_or("the entry has no table")?,
            rejects,
            dropped,
            rows: None,
        })
    }

    /// Reads only `columns` of a stage entry's table.
    pub fn load_stage_columns(
        &self,
        e: &StageEntry,
        columns: &[String],
    ) -> Result<DataFrame, String> {
        self.load_stage_table(e, Some(columns))
    }

    /// Reads a stage entry's table (only `columns` when given).
    pub fn load_stage_table(
        &self,
        e: &StageEntry,
        columns: Option<&[String]>,
    ) -> Result<DataFrame, String> {
        match (e.table_part(), e.rows_part()) {
            (Some(part), _) => self.read_part_columns(&self.stages(), part, columns),
            (None, Some(rows)) => self.rows_table(e, rows, columns),
            (None, None) => Err("the entry has no table".into()),
        }
    }

    /// The table of an entry kept as rows of its files ([`RowsOf`]): the files' tables (only
    /// `columns` when given) one after the other, then those rows. Every part read is checked
    /// against its hash, as any part is.
    fn rows_table(
        &self,
        e: &StageEntry,
        rows: &Part,
        columns: Option<&[String]>,
    ) -> Result<DataFrame, String> {
        let numbers = self.read_part(&self.stages(), rows)?;
        let mut tables = Vec::with_capacity(e.file_keys.len());
        for k in &e.file_keys {
            let fe = self.usable_file_entry(k)?;
            let part = fe
                .table_part()
                .map_err(|_| format!("the entry of file {k} has no table"))?;
            tables.push(self.file_table(&fe, part, columns)?.lazy());
        }
        let whole = concat(tables, UnionArgs::default())
            .and_then(|lf| lf.collect())
            .map_err(|e| e.to_string())?;
        let numbers = numbers
            .column(ROWS)
            .and_then(|c| c.idx().cloned())
            .map_err(|e| e.to_string())?;
        if numbers.max().is_some_and(|m| m as usize >= whole.height()) {
            return Err(format!(
                "row numbers beyond the {} rows of its files",
                whole.height()
            ));
        }
        crate::stages::gather_rows(&whole, &numbers).map_err(|e| e.to_string())
    }

    /// The table part `part` of file entry `e` (only `columns` when given), with the columns
    /// its entry left out put back ([`with_constants`]). Only those are left out of the
    /// columns decoded: an entry that stored them as columns reads them from its part.
    fn file_table(
        &self,
        e: &FileEntry,
        part: &Part,
        columns: Option<&[String]>,
    ) -> Result<DataFrame, String> {
        let stored: Option<Vec<String>> = columns.map(|c| {
            c.iter()
                .filter(|n| !e.constants.iter().any(|(_, left_out)| left_out == *n))
                .cloned()
                .collect()
        });
        let table = self.read_part_columns(&self.files(), part, stored.as_deref())?;
        let table = stored_back(table, &e.narrowed, e.lines_from_rows, 0)?;
        with_constants(table, &e.read, &e.constants, columns)
    }

    /// Reads one part (`rejects` or `dropped`) of a stage entry; `None` when it has none.
    pub fn load_stage_part(&self, e: &StageEntry, role: &str) -> Result<Option<DataFrame>, String> {
        let folder = self.stages();
        match e.part(role) {
            Some(p) => self.read_part(&folder, p).map(Some),
            None => Ok(None),
        }
    }

    /// One part (`rejects` or `dropped`, Parquet) of a stage entry, checked against its size
    /// and hash, to be decoded a range of rows at a time ([`PartRows`]); `None` when it has
    /// none.
    pub fn stage_part_rows(&self, e: &StageEntry, role: &str) -> Result<Option<PartRows>, String> {
        let Some(p) = e.part(role) else {
            return Ok(None);
        };
        let path = self.stages().join(&p.file);
        if !is_parquet(&p.file) {
            return Err(format!("{} is not a Parquet part", path.display()));
        }
        let bytes = verified_bytes(&path, p)?;
        Ok(Some(PartRows::Cached {
            bytes,
            path,
            rows: p.rows as usize,
        }))
    }

    /// Reads the rejects of one parsed file (empty when it had none).
    pub fn load_file_rejects(&self, e: &FileEntry) -> Result<DataFrame, String> {
        let folder = self.files();
        match e.parts.iter().find(|p| p.role == "rejects") {
            Some(p) => self.read_part(&folder, p),
            None => crate::rejects::empty().map_err(|e| e.to_string()),
        }
    }

    /// Where stage entry `fp` keeps its `role` part (Parquet), for a part written piece by
    /// piece ([`crate::publish::TableWriter::create_part`]) and then given to
    /// [`Cache::store_stage`]: the path, and the file name the entry records.
    pub fn stage_part_path(&self, fp: &str, role: &str) -> anyhow::Result<(PathBuf, String)> {
        let folder = self.stages();
        fs::create_dir_all(&folder)?;
        let file = format!("{fp}.{role}.parquet");
        Ok((folder.join(&file), file))
    }

    /// Stores a stage output; the JSON is written last, so a torn entry is a miss. The table
    /// part is written, linked to the published file, or left out (see [`TablePart`]); parts
    /// already written (`written`, see [`Cache::stage_part_path`]) join those of `frames`.
    #[allow(clippy::too_many_arguments)]
    pub fn store_stage(
        &self,
        fp: &str,
        stage: &str,
        frames: Option<&Frames>,
        table: TablePart,
        summary: &StageSummary,
        mut file_keys: Vec<String>,
        written: Vec<Part>,
    ) -> anyhow::Result<StageEntry> {
        let folder = self.stages();
        fs::create_dir_all(&folder)?;
        let mut parts = Vec::new();
        if let Some(f) = frames {
            let rows = f.table.height() as u64;
            // The table itself, or the numbers of its rows among its files' rows.
            let write = |parts: &mut Vec<Part>, file_keys: &mut Vec<String>| {
                let part = match &f.rows {
                    Some(r) => {
                        let numbers = DataFrame::new(
                            r.rows.len(),
                            vec![r.rows.clone().with_name(ROWS.into()).into_column()],
                        )?;
                        *file_keys = r.file_keys.clone();
                        self.write_part(&folder, fp, "rows", &numbers)?
                    }
                    None => self.write_part(&folder, fp, "table", &f.table)?,
                };
                parts.push(part);
                anyhow::Ok(())
            };
            match table {
                TablePart::Write => write(&mut parts, &mut file_keys)?,
                TablePart::Link(t) => {
                    parts.push(link_part(&folder, fp, &t.path, t.bytes, &t.blake3, rows)?)
                }
                TablePart::Same(earlier) => match earlier.table_part() {
                    Some(p) => {
                        let src = folder.join(&p.file);
                        parts.push(link_part(&folder, fp, &src, p.bytes, &p.blake3, rows)?)
                    }
                    None => write(&mut parts, &mut file_keys)?,
                },
                TablePart::Omit => {}
            }
            if let Some(r) = &f.rejects {
                parts.push(self.write_part(&folder, fp, "rejects", r)?);
            }
            if let Some(d) = &f.dropped {
                parts.push(self.write_part(&folder, fp, "dropped", d)?);
            }
        }
        parts.extend(written);
        let e = StageEntry {
            format: CACHE_FORMAT,
            fingerprint: fp.to_string(),
            stage: stage.to_string(),
            created_utc: chrono::Utc::now().format("%Y-%m-%dT%H:%M:%SZ").to_string(),
            summary: summary.clone(),
            parts,
            file_keys,
        };
        write_file(&folder.join(format!("{fp}.json")), &sealed_json(&e)?)?;
        Ok(e)
    }

    /// The entry of one parsed file, checked cheaply like [`Cache::stage_entry`].
    pub fn file_entry(&self, key: &str) -> Lookup<FileEntry> {
        let folder = self.files();
        let e: FileEntry = match Self::read_meta(&folder.join(format!("{key}.json"))) {
            Lookup::Found(e) => e,
            Lookup::Missing => return Lookup::Missing,
            Lookup::Corrupt(why) => return Lookup::Corrupt(why),
        };
        if e.format != CACHE_FORMAT || e.key != key {
            return Lookup::Missing;
        }
        if let Err(why) = parts_look_whole(&folder, &e.parts) {
            return Lookup::Corrupt(why);
        }
        Lookup::Found(e)
    }

    /// The table of a cached parse, `columns` only when given.
    pub fn load_file_table(
        &self,
        e: &FileEntry,
        columns: Option<&[String]>,
    ) -> Result<DataFrame, String> {
        self.file_table(e, e.table_part()?, columns)
    }

    /// A parsed file's table, one piece at a time (see [`TablePieces`]).
    pub fn file_table_pieces(&self, e: &FileEntry) -> Result<TablePieces, String> {
        self.file_pieces(e, None)
    }

    /// One stored column of a parsed file's table, one piece at a time: the file is checked
    /// against its hash as a whole, and only the column's buffers are decoded. A column the
    /// entry left out (one value for the file) is not stored, and is an error here.
    pub fn file_column_pieces(&self, e: &FileEntry, column: &str) -> Result<TablePieces, String> {
        self.file_pieces(e, Some(column))
    }

    fn file_pieces(&self, e: &FileEntry, column: Option<&str>) -> Result<TablePieces, String> {
        let part = e.table_part()?;
        let path = self.files().join(&part.file);
        if is_parquet(&part.file) {
            return Err(format!("{}: not an Arrow IPC table", path.display()));
        }
        // Checked as it is read, then read again piece by piece: the compressed file is not
        // held beside its pieces (cached parts do not change once written).
        let failed = |e: std::io::Error| format!("{}: {e}", path.display());
        let mut f = fs::File::open(&path).map_err(failed)?;
        let mut hasher = blake3::Hasher::new();
        let bytes = std::io::copy(&mut f, &mut hasher).map_err(failed)?;
        as_recorded(&path, part, bytes, &hasher.finalize())?;
        f.seek(SeekFrom::Start(0)).map_err(failed)?;
        let f = std::io::BufReader::with_capacity(1 << 16, f);
        let reader = ipc_file_reader(f, column).map_err(|e| format!("{}: {e}", path.display()))?;
        Ok(TablePieces {
            reader,
            path,
            rows: part.rows,
            seen: 0,
            narrowed: e.narrowed.clone(),
            lines_from_rows: e.lines_from_rows,
        })
    }

    /// Reads a parsed file's table and rejects, verifying hashes and row counts.
    pub fn load_file(&self, e: &FileEntry) -> Result<(DataFrame, DataFrame), String> {
        let folder = self.files();
        let mut table = None;
        let mut rejects = None;
        for p in &e.parts {
            match p.role.as_str() {
                "table" => table = Some(self.file_table(e, p, None)?),
                "rejects" => rejects = Some(self.read_part(&folder, p)?),
                other => return Err(format!("unknown part `{other}`")),
            }
        }
        Ok((
            table.ok_or("the entry has no table")?,
            match rejects {
                Some(r) => r,
                None => crate::rejects::empty().map_err(|e| e.to_string())?,
            },
        ))
    }

    /// A writer of a parsed file's table, piece by piece, as the file is parsed; given to
    /// [`Cache::store_file_written`] once the file's key is known.
    pub fn file_table_writer(&self) -> anyhow::Result<FileTableWriter> {
        let folder = self.files();
        fs::create_dir_all(&folder)?;
        Ok(FileTableWriter {
            tmp: tmp_path(&folder.join("parse.table.arrow")),
            writer: None,
            constants: Vec::new(),
            narrow: Vec::new(),
            narrowed: Vec::new(),
            lines_from_rows: false,
            rows: 0,
        })
    }

    /// Stores one parsed file, its table already written by `table` (rejects only when there
    /// are some).
    #[allow(clippy::too_many_arguments)]
    pub fn store_file_written(
        &self,
        key: &str,
        table: FileTableWriter,
        rejects: &DataFrame,
        read: &FileRead,
        bound: &str,
        latest_date: Option<String>,
        late: bool,
    ) -> anyhow::Result<FileEntry> {
        let folder = self.files();
        let file = format!("{key}.table.{}", PartFormat::Ipc.extension());
        let FinishedTable {
            part: table_part,
            constants,
            narrowed,
            lines_from_rows,
        } = table.finish(&folder.join(&file), file)?;
        let mut parts = vec![table_part];
        if rejects.height() > 0 {
            parts.push(self.write_part(&folder, key, "rejects", rejects)?);
        }
        let e = FileEntry {
            format: CACHE_FORMAT,
            key: key.to_string(),
            read: read.clone(),
            bound: bound.to_string(),
            latest_date,
            late,
            parts,
            constants,
            narrowed,
            lines_from_rows,
        };
        write_file(&folder.join(format!("{key}.json")), &sealed_json(&e)?)?;
        Ok(e)
    }

    /// Removes every stage entry and file entry not kept, and leftover temporary files.
    /// Call only when no run is writing to this cache.
    /// Returns how many files were removed.
    pub fn prune(&self, keep_stages: &HashSet<String>, keep_files: &HashSet<String>) -> usize {
        let mut removed = 0;
        // Temporary files of writes that a killed run left behind.
        for e in fs::read_dir(&self.dir).into_iter().flatten().flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if name.starts_with('.') && name.contains(".tmp-") && fs::remove_file(e.path()).is_ok()
            {
                removed += 1;
            }
        }
        for (folder, keep) in [(self.stages(), keep_stages), (self.files(), keep_files)] {
            let Ok(entries) = fs::read_dir(&folder) else {
                continue;
            };
            for e in entries.flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                let key = name.split('.').next().unwrap_or("");
                if !keep.contains(key) && fs::remove_file(e.path()).is_ok() {
                    removed += 1;
                }
            }
        }
        removed
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Asserts that file entry `e`'s table reads back as `parsed`: whole, column `one` alone,
    /// and in pieces.
    fn reads_back_as_parsed(cache: &Cache, e: &FileEntry, parsed: &DataFrame, one: &str) {
        assert!(cache.load_file(e).unwrap().0.equals_missing(parsed));
        let cols = [one.to_string()];
        let alone = cache
            .file_table(e, e.table_part().unwrap(), Some(&cols))
            .unwrap();
        assert!(alone.equals_missing(&parsed.select(cols).unwrap()));
        let pieces = cache.file_table_pieces(e).unwrap();
        assert_eq!(pieces.empty().schema(), parsed.schema());
        let mut back = DataFrame::empty_with_schema(parsed.schema());
        for p in pieces {
            back.vstack_mut(&p.unwrap()).unwrap();
        }
        assert!(back.equals_missing(parsed));
    }

    /// Stores `table` as the parse of a file without rejects.
    fn store_file(cache: &Cache, key: &str, table: &DataFrame, read: &FileRead) -> FileEntry {
        let mut w = cache.file_table_writer().unwrap();
        w.write(table).unwrap();
        let empty = crate::rejects::empty().unwrap();
        cache
            .store_file_written(key, w, &empty, read, "2026-11-25", None, false)
            .unwrap()
    }

    #[test]
    fn a_cached_part_is_read_a_range_of_rows_at_a_time() {
        let n = 95usize;
        let mut df = df!(
            "SRCFILE" => (0..n).map(|i| format!("f{}", i / 30)).collect::<Vec<_>>(),
            "SRCLINE" => (0..n as i64).collect::<Vec<_>>(),
        )
        .unwrap();
        let mut bytes = Vec::new();
        part_parquet()
            .writer(&mut bytes)
            .with_row_group_size(Some(20))
            .finish(&mut df)
            .unwrap();
        let part = PartRows::Cached {
            bytes,
            path: PathBuf::from("p.dropped.parquet"),
            rows: n,
        };
        assert_eq!(part.height(), n);
        // Within a row group, across several, and the last rows.
        for (start, len) in [(3, 5), (15, 50), (90, 5), (90, 10)] {
            let got = part.rows(start, len).unwrap();
            assert!(got.equals(&df.slice(start as i64, len)), "{start} {len}");
            let keys = part.columns_of_rows(&["SRCLINE"], start, len).unwrap();
            let want = df.select(["SRCLINE"]).unwrap().slice(start as i64, len);
            assert!(keys.equals(&want), "{start} {len}");
        }
        let keys = part.columns(&["SRCLINE"]).unwrap();
        assert!(keys.equals(&df.select(["SRCLINE"]).unwrap()));
        // A part with fewer rows than its entry says is refused.
        let PartRows::Cached { bytes, path, .. } = part else {
            unreachable!()
        };
        let short = PartRows::Cached {
            bytes,
            path,
            rows: n + 1,
        };
        assert!(short.columns(&["SRCLINE"]).unwrap_err().contains("95 rows"));
        assert!(short.rows(90, 10).unwrap_err().contains("expected 6"));
    }

    fn frames() -> Frames {
        Frames {
            table: df!("SRCFILE" => ["a", "a", "b"], "x" => [1i64, 2, 3]).unwrap(),
            rejects: Some(crate::rejects::empty().unwrap()),
            dropped: None,
            rows: None,
        }
    }

    #[test]
    fn an_entry_with_the_same_table_links_the_earlier_part() {
        let dir = tempfile::tempdir().unwrap();
        let cache = Cache::new(dir.path());
        let s = StageSummary::default();
        let store = |key: &str, table: TablePart| {
            cache
                .store_stage(key, "s", Some(&frames()), table, &s, vec![], vec![])
                .unwrap()
        };
        let earlier = store("old", TablePart::Write);
        let later = store("new", TablePart::Same(&earlier));
        let (a, b) = (earlier.table_part().unwrap(), later.table_part().unwrap());
        assert_eq!((a.bytes, &a.blake3), (b.bytes, &b.blake3));
        assert_eq!(b.file, "new.table.arrow");
        // The earlier entry pruned, the later one still reads back (its own link).
        let keep = HashSet::from(["new".to_string()]);
        cache.prune(&keep, &HashSet::new());
        let Lookup::Found(e) = cache.stage_entry("new") else {
            panic!("entry not found")
        };
        assert!(cache.load_stage(&e).unwrap().table.equals(&frames().table));
        // An earlier entry without a table: the table is written.
        let bare = store("bare", TablePart::Omit);
        let written = store("w", TablePart::Same(&bare));
        assert_eq!(written.table_part().unwrap().blake3, a.blake3);
    }

    #[test]
    fn a_hashing_writer_counts_and_hashes_what_it_passes_on() {
        let data: Vec<u8> = (0..100_000u32).flat_map(|i| i.to_le_bytes()).collect();
        let mut w = HashingWriter::new(Vec::new());
        for chunk in data.chunks(777) {
            w.write_all(chunk).unwrap();
        }
        let (inner, bytes, hash) = w.finish();
        assert_eq!(inner, data);
        assert_eq!(bytes, data.len() as u64);
        assert_eq!(hash, blake3::hash(&data).to_hex().to_string());
    }

    #[test]
    fn a_stored_entry_reads_back_and_a_truncated_one_is_not_trusted() {
        let dir = tempfile::tempdir().unwrap();
        let cache = Cache::new(dir.path());
        let summary = StageSummary {
            rows: 3,
            ..Default::default()
        };
        let store = || {
            cache
                .store_stage(
                    "fp1",
                    "s",
                    Some(&frames()),
                    TablePart::Write,
                    &summary,
                    vec![],
                    vec![],
                )
                .unwrap()
        };
        store();
        let Lookup::Found(e) = cache.stage_entry("fp1") else {
            panic!("entry not found")
        };
        assert_eq!(e.summary.rows, 3);
        let back = cache.load_stage(&e).unwrap();
        assert!(back.table.equals(&frames().table));
        assert_eq!(back.rejects.unwrap().height(), 0);
        assert!(back.dropped.is_none());
        // Some columns only: decoded alone, the same values.
        let x = cache.load_stage_columns(&e, &["x".to_string()]).unwrap();
        assert!(x.equals(&frames().table.select(["x"]).unwrap()));
        assert!(matches!(cache.stage_entry("fp2"), Lookup::Missing));

        // Truncated: the cheap check sees it.
        let table = dir.path().join("cache/stages/fp1.table.arrow");
        let len = fs::metadata(&table).unwrap().len();
        fs::OpenOptions::new()
            .write(true)
            .open(&table)
            .unwrap()
            .set_len(len / 2)
            .unwrap();
        assert!(matches!(cache.stage_entry("fp1"), Lookup::Corrupt(_)));

        // Same size, one byte flipped: only the hash check on reading sees it.
        store();
        let mut bytes = fs::read(&table).unwrap();
        bytes[len as usize / 2] ^= 0xff;
        fs::write(&table, &bytes).unwrap();
        let Lookup::Found(e) = cache.stage_entry("fp1") else {
            panic!("cheap check passes")
        };
        assert!(cache.load_stage(&e).unwrap_err().contains("hash"));
        assert!(
            cache
                .load_stage_columns(&e, &["x".to_string()])
                .unwrap_err()
                .contains("hash")
        );

        // A torn JSON is not trusted either, nor one altered into other valid JSON.
        let json = dir.path().join("cache/stages/fp1.json");
        let good = fs::read_to_string(&json).unwrap();
        fs::write(&json, &good[..good.len() / 2]).unwrap();
        assert!(matches!(cache.stage_entry("fp1"), Lookup::Corrupt(_)));
        fs::write(&json, good.replacen("\"rows\":3", "\"rows\":4", 1)).unwrap();
        assert!(matches!(cache.stage_entry("fp1"), Lookup::Corrupt(_)));
    }

    /// Stores `frames` as stage entry `fp`, its table written.
    fn store_written(cache: &Cache, fp: &str, frames: &Frames) -> StageEntry {
        let s = StageSummary::default();
        cache
            .store_stage(fp, "s", Some(frames), TablePart::Write, &s, vec![], vec![])
            .unwrap()
    }

    /// What reading `nih/d_2017-06-30.csv` (`rows` records) gave.
    fn file_read(rows: u64) -> FileRead {
        FileRead {
            source: "s".into(),
            site: "nih".into(),
            file: "nih/d_2017-06-30.csv".into(),
            bytes: 1,
            hash: "h".into(),
            export_date: "2017-06-30".into(),
            rows,
        }
    }

    #[test]
    fn a_large_parsed_file_is_cached_in_pieces_that_read_back_one_at_a_time() {
        let dir = tempfile::tempdir().unwrap();
        let cache = Cache::new(dir.path());
        let n = 2 * PIECE_ROWS + 5;
        let read = file_read(n as u64);
        let parsed = DataFrame::new(
            n,
            vec![
                Column::new_scalar("SITE".into(), Scalar::from(PlSmallStr::from("nih")), n),
                Column::new("SRCLINE".into(), (2..n as i64 + 2).collect::<Vec<i64>>()),
            ],
        )
        .unwrap();
        let e = store_file(&cache, "f", &parsed, &read);
        let pieces = cache.file_table_pieces(&e).unwrap();
        let empty_table = with_file_constants(&e, pieces.empty()).unwrap();
        assert_eq!(empty_table.schema(), parsed.schema());
        let pieces: Vec<DataFrame> = pieces.map(Result::unwrap).collect();
        let heights: Vec<usize> = pieces.iter().map(DataFrame::height).collect();
        assert_eq!(heights, [PIECE_ROWS, PIECE_ROWS, 5]);
        // Without the constant column; put back, the pieces are the parse.
        assert_eq!(pieces[0].get_column_names(), ["SRCLINE"]);
        let mut back = with_file_constants(&e, pieces[0].clone()).unwrap();
        for p in &pieces[1..] {
            back.vstack_mut(&with_file_constants(&e, p.clone()).unwrap())
                .unwrap();
        }
        assert!(back.equals(&parsed));
        // Read whole, it is one table as before.
        assert!(cache.load_file(&e).unwrap().0.equals(&parsed));
        // A part whose bytes changed is refused before any piece is read.
        let path = cache.files().join(&e.parts[0].file);
        let mut bytes = fs::read(&path).unwrap();
        let last = bytes.len() - 20;
        bytes[last] ^= 1;
        fs::write(&path, bytes).unwrap();
        assert!(cache.file_table_pieces(&e).err().unwrap().contains("hash"));
    }

    #[test]
    fn integer_columns_stored_narrower_read_back_as_the_parse_made_them() {
        let dir = tempfile::tempdir().unwrap();
        let cache = Cache::new(dir.path());
        let n = PIECE_ROWS + 3;
        let read = file_read(n as u64);
        let score: Vec<Option<i32>> = (0..n)
            .map(|i| (i % 7 != 0).then_some((i % 5) as i32))
            .collect();
        let count: Vec<i32> = (0..n).map(|i| (i % 1000) as i32 - 500).collect();
        let parsed = DataFrame::new(
            n,
            vec![
                Column::new("SRCLINE".into(), (2..n as i64 + 2).collect::<Vec<i64>>()),
                Column::new("score".into(), score),
                Column::new("count".into(), count),
                Column::new("wide".into(), (0..n as i32).collect::<Vec<i32>>()),
            ],
        )
        .unwrap();
        let narrow = vec![
            ("score".into(), DataType::Int8),
            ("count".into(), DataType::Int16),
            ("absent".into(), DataType::Int8),
        ];
        let mut w = cache.file_table_writer().unwrap().narrowing(narrow.clone());
        w.write(&parsed).unwrap();
        let empty = crate::rejects::empty().unwrap();
        let e = cache
            .store_file_written("f", w, &empty, &read, "2026-11-25", None, false)
            .unwrap();
        assert_eq!(e.narrowed, ["score", "count"]);
        let stored = cache.read_part(&cache.files(), &e.parts[0]).unwrap();
        let types: Vec<&DataType> = stored.columns().iter().map(|c| c.dtype()).collect();
        assert_eq!(
            types,
            [
                &DataType::Int64,
                &DataType::Int8,
                &DataType::Int16,
                &DataType::Int32
            ]
        );
        // Whole, a column at a time and in pieces, the table is the parse.
        reads_back_as_parsed(&cache, &e, &parsed, "score");
        let column: Vec<DataFrame> = cache
            .file_column_pieces(&e, "count")
            .unwrap()
            .map(Result::unwrap)
            .collect();
        assert_eq!(column[0].column("count").unwrap().dtype(), &DataType::Int32);
        // A value the narrower type cannot hold fails the entry instead of changing.
        let mut w = cache.file_table_writer().unwrap().narrowing(narrow);
        let bad = df!("score" => [1i32, 300]).unwrap();
        assert!(w.write(&bad).is_err());
    }

    #[test]
    fn narrowing_keeps_every_value_and_fails_on_one_that_does_not_fit() {
        use polars_arrow::array::PrimitiveArray;
        use polars_arrow::bitmap::Bitmap;
        // In range: converted as they are, in pieces (two chunks), missing values kept.
        let mut a = Int32Chunked::new("s".into(), &[Some(0), None, Some(4), Some(-128)]);
        a.append(&Int32Chunked::new("s".into(), &[Some(127), Some(3)]))
            .unwrap();
        let n = narrowed_ints(&a, &DataType::Int8).unwrap();
        assert_eq!(n.dtype(), &DataType::Int8);
        let back = n.cast(&DataType::Int32).unwrap();
        assert!(
            back.as_materialized_series()
                .equals_missing(&a.clone().into_series())
        );
        // A missing row whose slot holds a value out of range: the value-by-value path, which
        // skips it; the row stays missing.
        let slots = PrimitiveArray::new(
            polars_arrow::datatypes::ArrowDataType::Int32,
            vec![1, 1000, 2].into(),
            Some(Bitmap::from([true, false, true])),
        );
        let a = Int32Chunked::with_chunk("s".into(), slots);
        let n = narrowed_ints(&a, &DataType::Int8).unwrap();
        assert_eq!(n.dtype(), &DataType::Int8);
        let back = n.cast(&DataType::Int32).unwrap();
        let got: Vec<Option<i32>> = back.i32().unwrap().iter().collect();
        assert_eq!(got, [Some(1), None, Some(2)]);
        // A present value out of range fails, for both narrower types.
        let a = Int32Chunked::new("s".into(), &[Some(1), Some(40_000)]);
        assert!(narrowed_ints(&a, &DataType::Int8).is_err());
        assert!(narrowed_ints(&a, &DataType::Int16).is_err());
        let a = Int32Chunked::new("s".into(), &[Some(1), Some(-200), None]);
        assert!(narrowed_ints(&a, &DataType::Int8).is_err());
        assert!(narrowed_ints(&a, &DataType::Int16).is_ok());
    }

    #[test]
    fn a_files_lines_are_stored_less_their_row_numbers_and_read_back_as_parsed() {
        let dir = tempfile::tempdir().unwrap();
        let cache = Cache::new(dir.path());
        // Two pieces of a parse: line 1 is the header, some lines were rejected or blank.
        let n = PIECE_ROWS + 5;
        let lines: Vec<i64> = (0..n as i64).map(|i| 2 + i + i / 1000).collect();
        let parsed = DataFrame::new(
            n,
            vec![
                Column::new("SRCLINE".into(), lines.clone()),
                Column::new("v".into(), (0..n as i64).collect::<Vec<i64>>()),
            ],
        )
        .unwrap();
        let read = file_read(n as u64);
        let mut w = cache.file_table_writer().unwrap();
        w.write(&parsed.slice(0, 700)).unwrap();
        w.write(&parsed.slice(700, n)).unwrap();
        let empty = crate::rejects::empty().unwrap();
        let e = cache
            .store_file_written("f", w, &empty, &read, "2026-11-25", None, false)
            .unwrap();
        assert!(e.lines_from_rows);
        // Stored: each line less its row's number, from 1.
        let stored = cache.read_part(&cache.files(), &e.parts[0]).unwrap();
        let less: Vec<i64> = (0..n as i64).map(|i| 1 + i / 1000).collect();
        let got: Vec<i64> = stored
            .column("SRCLINE")
            .unwrap()
            .i64()
            .unwrap()
            .into_no_null_iter()
            .collect();
        assert_eq!(got, less);
        // Whole, the lines alone, in pieces and the lines in pieces: the parse.
        reads_back_as_parsed(&cache, &e, &parsed, "SRCLINE");
        let mut column: Vec<i64> = Vec::new();
        for p in cache.file_column_pieces(&e, "SRCLINE").unwrap() {
            column.extend(
                p.unwrap()
                    .column("SRCLINE")
                    .unwrap()
                    .i64()
                    .unwrap()
                    .into_no_null_iter(),
            );
        }
        assert_eq!(column, lines);
        // A missing line: the lines are stored as they are.
        let gap = df!("SRCLINE" => [Some(2i64), None, Some(4)]).unwrap();
        let mut w = cache.file_table_writer().unwrap();
        w.write(&gap).unwrap();
        let e = cache
            .store_file_written("g", w, &empty, &file_read(3), "2026-11-25", None, false)
            .unwrap();
        assert!(!e.lines_from_rows);
        assert!(cache.load_file(&e).unwrap().0.equals_missing(&gap));
    }

    #[test]
    fn a_parsed_file_is_cached_without_its_constant_columns_and_reads_back_whole() {
        let dir = tempfile::tempdir().unwrap();
        let cache = Cache::new(dir.path());
        let read = file_read(2);
        let export = Scalar::new(DataType::Date, AnyValue::Date(17347));
        // As an ingest makes it: site, file and export date are one value for the file.
        let parsed = DataFrame::new(
            2,
            vec![
                Column::new_scalar("SITE".into(), Scalar::from(PlSmallStr::from("nih")), 2),
                Column::new_scalar(
                    "SRCFILE".into(),
                    Scalar::from(PlSmallStr::from("nih/d_2017-06-30.csv")),
                    2,
                ),
                Column::new("SRCLINE".into(), [2i64, 3]),
                Column::new_scalar("EXPORTDT".into(), export, 2),
                Column::new("v".into(), ["x", "y"]),
            ],
        )
        .unwrap();
        let e = store_file(&cache, "f", &parsed, &read);
        let stored = cache.read_part(&cache.files(), &e.parts[0]).unwrap();
        assert_eq!(stored.get_column_names(), ["SRCLINE", "v"]);
        let (back, _) = cache.load_file(&e).unwrap();
        assert_eq!(back.schema(), parsed.schema());
        assert!(back.equals(&parsed), "{back}");
        // Some columns of a dedupe's rows: the constants come from the file's entry.
        let frames = Frames {
            table: parsed.select(["v", "SRCFILE"]).unwrap(),
            rejects: None,
            dropped: None,
            rows: Some(RowsOf {
                file_keys: vec!["f".into()],
                rows: IdxCa::from_vec("r".into(), vec![1, 0]),
            }),
        };
        let st = store_written(&cache, "fp", &frames);
        let cols = ["EXPORTDT".to_string(), "v".to_string()];
        let got = cache.load_stage_columns(&st, &cols).unwrap();
        let want = parsed
            .take(&IdxCa::from_vec("r".into(), vec![1, 0]))
            .unwrap();
        assert!(got.equals(&want.select(cols.clone()).unwrap()), "{got}");
        // An entry written with the constants as columns reads back as it was written.
        let mut old = parsed.clone();
        for c in FILE_CONSTANTS {
            let s = old.column(c).unwrap().as_materialized_series().clone();
            old.with_column(s.into_column()).unwrap();
        }
        let e = store_file(&cache, "g", &old, &read);
        let stored = cache.read_part(&cache.files(), &e.parts[0]).unwrap();
        assert_eq!(stored.width(), 5);
        assert!(cache.load_file(&e).unwrap().0.equals(&parsed));
        let frames = Frames {
            rows: Some(RowsOf {
                file_keys: vec!["g".into()],
                rows: IdxCa::from_vec("r".into(), vec![1, 0]),
            }),
            ..frames
        };
        let st = store_written(&cache, "fq", &frames);
        let got = cache.load_stage_columns(&st, &cols).unwrap();
        assert!(got.equals(&want.select(cols).unwrap()), "{got}");
    }

    #[test]
    fn an_entry_kept_as_rows_of_its_files_reads_back_as_those_rows() {
        let dir = tempfile::tempdir().unwrap();
        let cache = Cache::new(dir.path());
        let read = |file: &str| FileRead {
            source: "s".into(),
            site: "A".into(),
            file: file.into(),
            bytes: 1,
            hash: "h".into(),
            export_date: "2017-06-30".into(),
            rows: 2,
        };
        let a = df!("SRCLINE" => [2i64, 3], "v" => ["a2", "a3"]).unwrap();
        let b = df!("SRCLINE" => [2i64, 3, 4], "v" => ["b2", "b3", "b4"]).unwrap();
        for (key, t, f) in [("fa", &a, "a.csv"), ("fb", &b, "b.csv")] {
            store_file(&cache, key, t, &read(f));
        }
        // Rows 3, 0 and 2 of a's rows then b's: b3, a2, b2.
        let kept = df!("SRCLINE" => [3i64, 2, 2], "v" => ["b3", "a2", "b2"]).unwrap();
        let frames = Frames {
            table: kept.clone(),
            rejects: None,
            dropped: None,
            rows: Some(RowsOf {
                file_keys: vec!["fa".into(), "fb".into()],
                rows: IdxCa::from_vec("r".into(), vec![3, 0, 2]),
            }),
        };
        let e = store_written(&cache, "fp", &frames);
        assert!(e.table_part().is_none() && e.rows_part().is_some() && e.has_table());
        assert!(cache.load_stage(&e).unwrap().table.equals(&kept));
        let v = cache.load_stage_columns(&e, &["v".to_string()]).unwrap();
        assert!(v.equals(&kept.select(["v"]).unwrap()));
        // A file's entry gone: the table cannot be put together, and says why.
        std::fs::remove_file(dir.path().join("cache/files/fb.json")).unwrap();
        let err = cache.load_stage_table(&e, None).unwrap_err();
        assert!(err.contains("fb"), "{err}");
    }

    #[test]
    fn file_entries_hold_for_later_bounds_unless_a_date_was_late() {
        let mut e = FileEntry {
            format: CACHE_FORMAT,
            key: "k".into(),
            read: FileRead {
                source: "s".into(),
                site: "A".into(),
                file: "a/x.csv".into(),
                bytes: 1,
                hash: "h".into(),
                export_date: "2017-06-30".into(),
                rows: 1,
            },
            bound: "2026-11-25".into(),
            latest_date: Some("2020-01-01".into()),
            late: false,
            parts: vec![],
            constants: vec![],
            narrowed: vec![],
            lines_from_rows: false,
        };
        assert!(e.holds_for("2026-11-26"));
        assert!(e.holds_for("2020-01-01"));
        assert!(!e.holds_for("2019-12-31"));
        e.late = true;
        assert!(e.holds_for("2026-11-25"));
        assert!(!e.holds_for("2026-11-26"));
    }

    #[test]
    fn prune_keeps_what_is_named_and_removes_the_rest() {
        let dir = tempfile::tempdir().unwrap();
        let cache = Cache::new(dir.path());
        store_written(&cache, "keep", &frames());
        store_written(&cache, "drop", &frames());
        fs::write(dir.path().join("cache/.file_hashes.json.tmp-1-2"), b"{").unwrap();
        let removed = cache.prune(&HashSet::from(["keep".to_string()]), &HashSet::new());
        assert_eq!(removed, 4);
        assert!(matches!(cache.stage_entry("keep"), Lookup::Found(_)));
        assert!(matches!(cache.stage_entry("drop"), Lookup::Missing));
    }
}
