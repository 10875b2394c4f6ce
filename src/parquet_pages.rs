//! Parquet column chunks as polars' writer encodes them, with its dictionary decisions taken a
//! cheaper way for text, floating-point and wide integer columns and its footer null counts
//! corrected ([`PageNulls`]), and tables written through them.
//!
//! polars' writer tries a dictionary for every column chunk. For a text column it first
//! estimates the number of distinct values (a HyperLogLog over every value) and then builds the
//! dictionary by hashing every value again; for a floating-point column it makes the same
//! estimate and then finds that it has no dictionary for floats, and writes the values plain.
//! On the bench cohort those steps took about an eighth of a one-thread run: the published
//! tables are sorted by subject and date, so a text column (subject, site, phase, source file,
//! flag) is long runs of one value.
//!
//! [`ColumnEncoder::encode`] therefore
//! - builds a text column's dictionary from its runs ([`dictionary_of_runs`]): one comparison
//!   with the row before per row, and a hash lookup only where a run starts. The dictionary is
//!   the one polars builds (values in order of first appearance, the same keys), so the pages
//!   are the same bytes. A column of short runs (a parameter code on a table sorted by date
//!   first) costs a lookup per row here, where polars' writer hashes every row twice (an
//!   estimate of the distinct values, then the dictionary). Mostly distinct values (more than
//!   three in four rows) are left to polars' steps, which write them plain;
//! - gives a 64-bit floating-point column a dictionary when its values are few
//!   ([`dictionary_of_few`]: a daily score, a constant dose, a lab value rounded to its
//!   unit's precision), and otherwise writes it plain at once, which is where polars' steps end
//!   for every floating-point column. polars' writer has no dictionary for floats: it wrote the
//!   diary score's 7.9 million values plain, 8 bytes each, for zstd to compress. The Parquet
//!   format has dictionaries for doubles, and pyarrow and DuckDB write and read them; the
//!   values are written back bit for bit, and the statistics are polars' own (taken from the
//!   dictionary's values, whose smallest and largest are the column's);
//! - does the same for an integer column whose values span more than polars' writer marks in a
//!   bitmap (65,535 apart: line numbers): polars estimates its distinct values (a HyperLogLog)
//!   and, below three in four rows, hashes every value into a dictionary. The source line
//!   numbers of the diary table, half of them distinct in a row group, took a 24 MB dictionary
//!   that way. A 64-bit column of many values is written as the differences between its values
//!   (`DELTA_BINARY_PACKED`, a standard Parquet encoding every reader has): the diary's line
//!   numbers, two exports' lines in key order, take about 21 bits a value that way against 64
//!   plain, and zstd then has a third of the bytes to compress (on the bench cohort, 0.13 s
//!   and 9.8 MB against 0.29 s and 12.9 MB plain). An integer or date column of a
//!   narrower range gets the dictionary polars' writer gives it, made the same way
//!   ([`narrow_dictionary`]: the values present marked in a table, in ascending order), or,
//!   where polars' writer would write it plain, is written plain (32 bits) or as differences
//!   (64 bits);
//! - writes an integer or date column as differences wherever they take at most half the
//!   bytes of its dictionary's keys ([`parquet_delta::pays`]: the days of a daily table, which
//!   climb by one). Differences are encoded by [`parquet_delta`], not by polars' writer.
//!
//! The data pages of every dictionary built here are then made by [`parquet_keys`] rather than
//! by polars' writer, the same bytes for fewer instructions; the dictionary page and the
//! statistics are still polars' ([`ColumnEncoder::dictionary_chunk`]).

use polars::prelude::*;
use polars_arrow::array::Utf8ViewArray;
use polars_arrow::array::{Array, DictionaryArray, MutableBinaryViewArray, PrimitiveArray};
use polars_arrow::datatypes::{ArrowDataType, IntegerType};
use polars_parquet::write::{
    CompressedPage, CompressionOptions, Encoding, Page, ParquetType, WriteOptions,
};

use crate::{parquet_delta, parquet_keys};

/// The pages of one column chunk: one list per leaf column (one for every flat type).
pub type ChunkPages = Vec<Vec<CompressedPage>>;

/// What polars' writer encodes a column chunk with, for a table's columns: the Arrow field and
/// Parquet type of each column, its encodings and the write options (the steps of polars'
/// streaming Parquet sink, which encodes a row group column by column too).
pub struct ColumnEncoder {
    arrow: polars_arrow::datatypes::ArrowSchema,
    types: Vec<ParquetType>,
    encodings: Vec<Vec<Encoding>>,
    options: WriteOptions,
}

impl ColumnEncoder {
    pub fn new(schema: &Schema, options: WriteOptions) -> PolarsResult<ColumnEncoder> {
        let arrow = schema.to_arrow(CompatLevel::newest());
        let types = polars_parquet::arrow::write::to_parquet_schema(&arrow)?
            .fields()
            .to_vec();
        let encodings = polars::io::parquet::write::get_encodings(&arrow).to_vec();
        Ok(ColumnEncoder {
            arrow,
            types,
            encodings,
            options,
        })
    }

    /// `values` (column `i`) as the compressed pages of a chunk, put in one piece first.
    pub fn encode_series(&self, i: usize, values: &Series) -> PolarsResult<ChunkPages> {
        let values = values.rechunk();
        let field = self.arrow.get_at_index(i).map(|(_, f)| f);
        let field = field.ok_or_else(|| polars_err!(ColumnNotFound: "column {i}"))?;
        let array = values.to_arrow_with_field(0, std::borrow::Cow::Borrowed(field), true)?;
        self.encode(i, array.as_ref())
    }

    /// `array` (column `i`, one chunk) as the compressed pages of a chunk: the pages polars'
    /// writer makes of it but for the steps the module's comment lists.
    pub fn encode(&self, i: usize, array: &dyn Array) -> PolarsResult<ChunkPages> {
        use polars_parquet::write::array_to_columns;
        let mut encodings = self.encodings[i].clone();
        let mut dictionary = None;
        let mut differences = false;
        if encodings == [Encoding::RleDictionary] {
            fn numbers<T: polars_arrow::types::NativeType>(
                array: &dyn Array,
            ) -> Option<&PrimitiveArray<T>> {
                array.as_any().downcast_ref()
            }
            // Columns whose encoding is decided here: a dictionary when the values are few,
            // else plain.
            let few: Option<Option<DictionaryArray<u32>>> = match array.dtype() {
                ArrowDataType::Float64 => {
                    Some(numbers::<f64>(array).and_then(|f| dictionary_of_few(f, f64::to_bits)))
                }
                // An integer column of a narrow range gets the dictionary polars' writer gives
                // it, marking the values present ([`narrow_dictionary`]); of a wide range (line
                // numbers), polars would estimate the distinct values and hash every value.
                // A column whose differences take far fewer bytes than a dictionary's keys
                // (the days of a daily table) is written as differences ([`parquet_delta`]).
                ArrowDataType::Int64 => numbers::<i64>(array).and_then(|i| {
                    if parquet_delta::pays(i) {
                        return Some(None);
                    }
                    integer_dictionary(i, 2048, |v| v as u64)
                }),
                ArrowDataType::Int32 | ArrowDataType::Date32 => {
                    numbers::<i32>(array).and_then(|i| {
                        if parquet_delta::pays(i) {
                            differences = true;
                            return Some(None);
                        }
                        integer_dictionary(i, 512, |v| v as u32 as u64)
                    })
                }
                ArrowDataType::Float32 => Some(None),
                ArrowDataType::Utf8View => {
                    let text = array.as_any().downcast_ref::<Utf8ViewArray>();
                    dictionary = text.and_then(dictionary_of_runs);
                    None
                }
                _ => None,
            };
            match few {
                Some(Some(d)) => dictionary = Some(d),
                // 64-bit integers that would be written plain (line numbers) are written as
                // their differences instead ([`Encoding::DeltaBinaryPacked`]), as are
                // 32-bit ones whose differences pay.
                Some(None) if differences || delta_encoded(array.dtype()) => {
                    if let Some(pages) = self.delta_chunk(i, array)? {
                        return Ok(vec![pages]);
                    }
                    encodings = vec![Encoding::DeltaBinaryPacked]
                }
                Some(None) => encodings = vec![Encoding::Plain],
                None => {}
            }
        }
        let validity = array.validity().cloned();
        let flat = !array.dtype().is_nested();
        if let Some(d) = &dictionary
            && flat
            && let Some(pages) = self.dictionary_chunk(i, d)?
        {
            let chunk = pages
                .into_iter()
                .map(|page| compressed(page, self.options.compression))
                .collect::<PolarsResult<Vec<_>>>()?;
            return Ok(vec![chunk]);
        }
        let array: &dyn Array = match &dictionary {
            Some(d) => d,
            None => array,
        };
        array_to_columns(array, self.types[i].clone(), self.options, &encodings)?
            .into_iter()
            .map(|pages| {
                let mut nulls = PageNulls {
                    validity: validity.clone(),
                    dictionary: false,
                    row: 0,
                };
                pages
                    .map(|page| {
                        let page = if flat { nulls.correct(page?) } else { page? };
                        compressed(page, self.options.compression)
                    })
                    .collect::<PolarsResult<Vec<_>>>()
            })
            .collect()
    }
}

impl ColumnEncoder {
    /// The compressed pages of a flat integer column chunk (column `i`) written as differences
    /// by [`parquet_delta`]; `None` when polars' writer must make them.
    fn delta_chunk(
        &self,
        i: usize,
        array: &dyn Array,
    ) -> PolarsResult<Option<Vec<CompressedPage>>> {
        let ParquetType::PrimitiveType(type_) = &self.types[i] else {
            return Ok(None);
        };
        let any = array.as_any();
        let pages = match array.dtype() {
            ArrowDataType::Int64 => any
                .downcast_ref::<PrimitiveArray<i64>>()
                .and_then(|v| parquet_delta::delta_pages(v, type_, self.options)),
            ArrowDataType::Int32 | ArrowDataType::Date32 => any
                .downcast_ref::<PrimitiveArray<i32>>()
                .and_then(|v| parquet_delta::delta_pages(v, type_, self.options)),
            _ => None,
        };
        pages
            .map(|pages| {
                pages
                    .into_iter()
                    .map(|page| compressed(page, self.options.compression))
                    .collect()
            })
            .transpose()
    }

    /// The pages of a flat column chunk of `dictionary` (column `i`): the dictionary page and
    /// the statistics as polars' writer makes them (of the dictionary's values, whatever the
    /// keys: it is given the first row only), the data pages from [`parquet_keys`]. `None` when
    /// polars' writer must make them all.
    fn dictionary_chunk(
        &self,
        i: usize,
        dictionary: &DictionaryArray<u32>,
    ) -> PolarsResult<Option<Vec<Page>>> {
        use polars_parquet::parquet::page::DataPageHeader;
        use polars_parquet::write::array_to_columns;
        let ParquetType::PrimitiveType(type_) = &self.types[i] else {
            return Ok(None);
        };
        if dictionary.is_empty() {
            return Ok(None);
        }
        let head = dictionary.clone().sliced(0, 1);
        let encodings = [Encoding::RleDictionary];
        let head: &dyn Array = &head;
        let mut leaves = array_to_columns(head, self.types[i].clone(), self.options, &encodings)?;
        let (Some(mut pages), true) = (leaves.pop(), leaves.is_empty()) else {
            return Ok(None);
        };
        let (Some(Page::Dict(dict)), Some(Page::Data(first))) =
            (pages.next().transpose()?, pages.next().transpose()?)
        else {
            return Ok(None);
        };
        let statistics = match first.header() {
            DataPageHeader::V1(h) => h.statistics.clone(),
            DataPageHeader::V2(h) => h.statistics.clone(),
        };
        Ok(
            parquet_keys::dictionary_pages(dictionary, type_, self.options, statistics)
                .map(|data| std::iter::once(Page::Dict(dict)).chain(data).collect()),
        )
    }
}

thread_local! {
    /// The zstd context of this thread's Parquet pages ([`compressed`]), made once.
    static ZSTD: std::cell::RefCell<Option<(i32, zstd::bulk::Compressor<'static>)>> =
        const { std::cell::RefCell::new(None) };
}

/// `page` compressed as polars' writer compresses it (its `compress`), but with zstd through a
/// context kept by the thread: polars' writer made a new context for every page, and setting
/// up a context clears its tables (about a hundredth of a run's instructions). zstd's output
/// does not depend on the context having been used before; the tests compare whole files
/// with polars'. Other codecs, and pages of version 2, go to polars' `compress`.
fn compressed(page: Page, compression: CompressionOptions) -> PolarsResult<CompressedPage> {
    use polars_parquet::parquet::CowBuffer;
    use polars_parquet::parquet::page::{CompressedDataPage, CompressedDictPage, DataPageHeader};
    let CompressionOptions::Zstd(level) = compression else {
        return Ok(polars_parquet::write::compress(page, vec![], compression)?);
    };
    if let Page::Data(d) = &page
        && matches!(d.header(), DataPageHeader::V2(_))
    {
        return Ok(polars_parquet::write::compress(page, vec![], compression)?);
    }
    let level = level.map(|l| l.compression_level()).unwrap_or_default();
    let squeeze = |input: &[u8]| -> PolarsResult<Vec<u8>> {
        ZSTD.with_borrow_mut(|kept| {
            let ctx = match kept {
                Some((l, ctx)) if *l == level => ctx,
                _ => &mut kept.insert((level, zstd::bulk::Compressor::new(level)?)).1,
            };
            let mut out = Vec::with_capacity(zstd::zstd_safe::compress_bound(input.len()));
            ctx.compress_to_buffer(input, &mut out)?;
            Ok(out)
        })
        .map_err(|e: std::io::Error| polars_err!(ComputeError: "zstd: {e}"))
    };
    Ok(match page {
        Page::Data(d) => {
            let out = squeeze(d.buffer())?;
            let rows = d.num_rows.unwrap_or(d.num_values());
            CompressedPage::Data(CompressedDataPage::new(
                d.header().clone(),
                CowBuffer::Owned(out),
                compression.into(),
                d.buffer().len(),
                d.descriptor.clone(),
                rows,
            ))
        }
        Page::Dict(d) => {
            let out = squeeze(&d.buffer)?;
            CompressedPage::Dict(CompressedDictPage::new(
                CowBuffer::Owned(out),
                compression.into(),
                d.buffer.len(),
                d.num_values,
                d.is_sorted,
            ))
        }
    })
}

/// The null count of each data page of a dictionary-encoded column chunk.
///
/// polars' writer gives every data page of such a chunk the statistics of the whole chunk, and
/// the chunk's statistics in the footer are the pages' added up: a chunk of two pages (more
/// than a megabyte of keys: a row group of 262,144 rows or more) reported twice its nulls. Each
/// data page gets the null count of its own rows instead; the values' smallest and largest stay
/// the chunk's, which the pages add up to anyway.
struct PageNulls {
    /// The column's validity (all rows valid when `None`).
    validity: Option<polars_arrow::bitmap::Bitmap>,
    /// Whether the chunk began with a dictionary page.
    dictionary: bool,
    /// The first row of the next data page.
    row: usize,
}

impl PageNulls {
    fn correct(&mut self, page: Page) -> Page {
        use polars_parquet::parquet::CowBuffer;
        use polars_parquet::parquet::page::{DataPage, DataPageHeader};
        let mut page = match page {
            Page::Dict(d) => {
                self.dictionary = true;
                return Page::Dict(d);
            }
            Page::Data(d) if self.dictionary => d,
            other => return other,
        };
        let rows = page.num_values();
        let nulls = match &self.validity {
            None => 0,
            Some(v) if self.row + rows <= v.len() => v.clone().sliced(self.row, rows).unset_bits(),
            // Pages of more values than the column has rows (not a flat column after all):
            // left as polars wrote them.
            Some(_) => return Page::Data(page),
        };
        self.row += rows;
        let mut header = page.header().clone();
        let statistics = match &mut header {
            DataPageHeader::V1(h) => h.statistics.as_mut(),
            DataPageHeader::V2(h) => h.statistics.as_mut(),
        };
        let Some(statistics) = statistics else {
            return Page::Data(page);
        };
        statistics.null_count = Some(nulls as i64);
        let buffer = CowBuffer::Owned(std::mem::take(page.buffer_mut()));
        Page::Data(DataPage::new(header, buffer, page.descriptor.clone(), rows))
    }
}

/// Views whose keys [`dictionary_of_runs`] keeps.
const VIEWS_KEPT: usize = 4096;

/// `text` as a dictionary array (keys `u32`), built from its runs: each row is compared with the
/// row before, and only a row that starts a run is looked up among the values seen. The values
/// are in order of first appearance and null rows have null keys, as in the dictionary polars'
/// cast builds (`polars_compute::cast`, hashing every row). `None` when the column is not worth
/// a dictionary by polars' writer's rule: more than 128 rows, of which more than three in four
/// distinct values (polars' writer estimates the distinct values, hashing every row, before it
/// hashes them all again to build the dictionary; the count here is exact, so a column close to
/// the line can be decided otherwise, with the same values either way).
pub fn dictionary_of_runs(text: &Utf8ViewArray) -> Option<DictionaryArray<u32>> {
    let n = text.len();
    if n == 0 {
        return None;
    }
    let validity = text.validity();
    let mut seen: PlHashMap<&str, u32> = PlHashMap::default();
    // The keys of views met before: a view holds a short text whole, and a longer one's place
    // in the array's buffers, so rows of one view hold one text, found without hashing or
    // comparing the text (a file's path, in every row of it, lies once in a buffer). Several
    // views may hold one text; only the first few thousand are kept, so that a column of long
    // texts each in its own place does not fill a second map.
    let mut by_view: PlHashMap<u128, u32> = PlHashMap::default();
    let mut values = MutableBinaryViewArray::<str>::new();
    let mut keys = Vec::with_capacity(n);
    let mut key = 0u32;
    let views = text.views().as_slice();
    let valid = |i: usize| validity.is_none_or(|v| v.get_bit(i));
    // The row before, when it is not null.
    let mut before: Option<usize> = None;
    let mut i = 0;
    while i < n {
        if !valid(i) {
            keys.push(0);
            before = None;
            i += 1;
            continue;
        }
        let view = views[i].as_u128();
        if before.is_none_or(|b| !crate::stages::same_text(text, b, i)) {
            key = match by_view.get(&view) {
                Some(&known) => known,
                None => {
                    // SAFETY: `i < n`.
                    let value = unsafe { text.value_unchecked(i) };
                    let found = *seen.entry(value).or_insert_with(|| {
                        values.push_value(value);
                        (values.len() - 1) as u32
                    });
                    if by_view.len() < VIEWS_KEPT {
                        by_view.insert(view, found);
                    }
                    found
                }
            };
            if n > 128 && 4 * values.len() > 3 * n {
                return None;
            }
        }
        // The rows after it with the very same view hold the same text: one step for them.
        let same = views[i + 1..]
            .iter()
            .enumerate()
            .take_while(|(k, v)| v.as_u128() == view && valid(i + 1 + k))
            .count();
        keys.extend(std::iter::repeat_n(key, 1 + same));
        before = Some(i + same);
        i += 1 + same;
    }
    let keys = PrimitiveArray::new(ArrowDataType::UInt32, keys.into(), validity.cloned());
    let dtype =
        ArrowDataType::Dictionary(IntegerType::UInt32, Box::new(text.dtype().clone()), false);
    let values: Utf8ViewArray = values.into();
    // SAFETY: every key is the place of a value pushed to `values` (a null row's key, 0, is
    // never read). `try_new` would check each of the column's keys again.
    unsafe { DictionaryArray::try_new_unchecked(dtype, keys, values.boxed()) }.ok()
}

/// `values` as a dictionary array (keys `u32`) when they are few: values in order of first
/// appearance, compared by their bits (`bits`; so -0.0 and 0.0, and NaNs of different
/// payloads, stay apart and every value is written back exactly), a hash lookup only where the
/// value differs from the row before, null rows with null keys. `None`, as soon as it is known,
/// when the column holds more than one distinct value in [`FEW_VALUES_SHARE`] rows: such a
/// column is written plain.
pub fn dictionary_of_few<T: polars_arrow::types::NativeType>(
    values: &PrimitiveArray<T>,
    bits: impl Fn(T) -> u64,
) -> Option<DictionaryArray<u32>> {
    let n = values.len();
    if n == 0 {
        return None;
    }
    let most = (n / FEW_VALUES_SHARE).max(1);
    let validity = values.validity();
    let mut seen: PlHashMap<u64, u32> = PlHashMap::default();
    let mut distinct: Vec<T> = Vec::new();
    let mut keys = Vec::with_capacity(n);
    let (mut before, mut key) = (None::<u64>, 0u32);
    for (i, v) in values.values().iter().enumerate() {
        if validity.is_some_and(|b| !b.get_bit(i)) {
            keys.push(0);
            continue;
        }
        let b = bits(*v);
        if before != Some(b) {
            key = match seen.get(&b) {
                Some(k) => *k,
                None => {
                    if distinct.len() == most {
                        return None;
                    }
                    distinct.push(*v);
                    let k = (distinct.len() - 1) as u32;
                    seen.insert(b, k);
                    k
                }
            };
            before = Some(b);
        }
        keys.push(key);
    }
    let keys = PrimitiveArray::new(ArrowDataType::UInt32, keys.into(), validity.cloned());
    let dtype = values.dtype().clone();
    let dictionary = ArrowDataType::Dictionary(IntegerType::UInt32, Box::new(dtype.clone()), false);
    let values = PrimitiveArray::new(dtype, distinct.into(), None);
    // SAFETY: every key is the place of a value pushed to `distinct` (a null row's key, 0, is
    // never read). `try_new` would check each of the column's keys again.
    unsafe { DictionaryArray::try_new_unchecked(dictionary, keys, values.boxed()) }.ok()
}

/// Whether a column of `dtype` that would be written plain is written
/// [`Encoding::DeltaBinaryPacked`] instead: 64-bit integers (line numbers). Not 32-bit ones: the
/// writer takes their differences as 64-bit integers, and one of more than 32 bits (values
/// further apart than 2^31) is more than a 32-bit column's reader accepts (pyarrow's).
fn delta_encoded(dtype: &ArrowDataType) -> bool {
    matches!(dtype, ArrowDataType::Int64)
}

/// The smallest and largest of `values`, nulls left out; `None` when every value is null.
fn range<T: polars_arrow::types::NativeType + Into<i64>>(
    values: &PrimitiveArray<T>,
) -> Option<(i128, i128)> {
    let mut range: Option<(i64, i64)> = None;
    let see = |v: T| {
        let v: i64 = v.into();
        range = Some(range.map_or((v, v), |(lo, hi)| (lo.min(v), hi.max(v))));
    };
    for_each_value(values, see);
    range.map(|(lo, hi)| (lo.into(), hi.into()))
}

/// Calls `f` with each value of `values` that is not null, in order; the values between two
/// nulls are read as one slice (a column has few nulls, if any).
fn for_each_value<T: polars_arrow::types::NativeType>(
    values: &PrimitiveArray<T>,
    mut f: impl FnMut(T),
) {
    let all = values.values().as_slice();
    match values.validity().filter(|v| v.unset_bits() > 0) {
        Some(valid) => {
            for (start, len) in polars_arrow::bitmap::utils::SlicesIterator::new(valid) {
                all[start..start + len].iter().copied().for_each(&mut f);
            }
        }
        None => all.iter().copied().for_each(f),
    }
}

/// The dictionary of an integer column ([`narrow_dictionary`] within [`WIDE`], with polars'
/// threshold `few` for the type; else [`dictionary_of_few`], comparing values by `bits`);
/// `Some(None)` when it is written plain, `None` when every value is null (polars' writer
/// decides).
fn integer_dictionary<T: polars_arrow::types::NativeType + Into<i64> + TryFrom<i64>>(
    values: &PrimitiveArray<T>,
    few: usize,
    bits: impl Fn(T) -> u64,
) -> Option<Option<DictionaryArray<u32>>> {
    match range(values)? {
        (lo, hi) if hi - lo > WIDE => Some(dictionary_of_few(values, bits)),
        (lo, hi) => narrow_dictionary(values, lo, hi, few),
    }
}

/// The range of integers in which polars' writer looks for a dictionary by marking the values
/// present (65,535): a column whose values are further apart is "wide".
const WIDE: i128 = u16::MAX as i128;

/// The dictionary polars' writer gives an integer column whose values lie within [`WIDE`]
/// (`lo` to `hi`; its `min_max_integer_encode_as_dictionary_optional`): the values present,
/// in ascending order, when they are at most `few` (polars' threshold for the type) or fewer
/// than three in four rows; `Some(None)` (written plain) when they are not. The same
/// dictionary and keys, so the same pages, as polars' writer makes; its pages are then made
/// by [`parquet_keys`].
fn narrow_dictionary<T: polars_arrow::types::NativeType + Into<i64> + TryFrom<i64>>(
    values: &PrimitiveArray<T>,
    lo: i128,
    hi: i128,
    few: usize,
) -> Option<Option<DictionaryArray<u32>>> {
    let (lo, span) = (lo as i64, (hi - lo) as usize);
    let offset = |v: T| (Into::<i64>::into(v) - lo) as usize;
    let mut present = vec![false; span + 1];
    for_each_value(values, |v| {
        if let Some(seen) = present.get_mut(offset(v)) {
            *seen = true;
        }
    });
    let distinct: Vec<T> = (0..=span)
        .filter(|o| present[*o])
        .filter_map(|o| T::try_from(lo + o as i64).ok())
        .collect();
    if distinct.len() > few && distinct.len() as f64 / values.len() as f64 >= 0.75 {
        return Some(None);
    }
    // A null row's value is any value: clamped into the range, it has a key as polars gives it.
    let clamped = |v: &T| (Into::<i64>::into(*v).clamp(lo, lo + span as i64) - lo) as usize;
    let keys: Vec<u32> = if distinct.len() == span + 1 {
        // Every value of the range is present (a diary item's 0 to 4): a value's key is its
        // distance from the smallest; without null rows, every value is in the range already.
        if values.validity().is_none_or(|v| v.unset_bits() == 0) {
            values.values().iter().map(|v| offset(*v) as u32).collect()
        } else {
            values.values().iter().map(|v| clamped(v) as u32).collect()
        }
    } else {
        let mut lookup = vec![0u32; span + 1];
        for (k, v) in distinct.iter().enumerate() {
            lookup[offset(*v)] = k as u32;
        }
        values.values().iter().map(|v| lookup[clamped(v)]).collect()
    };
    let keys = PrimitiveArray::new(
        ArrowDataType::UInt32,
        keys.into(),
        values.validity().cloned(),
    );
    let physical = ArrowDataType::from(T::PRIMITIVE);
    let dictionary =
        ArrowDataType::Dictionary(IntegerType::UInt32, Box::new(physical.clone()), false);
    let values = PrimitiveArray::new(physical, distinct.into(), None);
    // SAFETY: a key is a value's distance from the smallest where every value of the range
    // is present (so below `distinct.len()`), else its place in `lookup`, made from
    // `distinct`; a null row's value is clamped into the range first. `try_new` would check
    // each of the column's keys again.
    Some(unsafe { DictionaryArray::try_new_unchecked(dictionary, keys, values.boxed()) }.ok())
}

/// A floating-point column, or an integer column of a wide range, gets a dictionary while its
/// distinct values are at most one in this many of its rows ([`dictionary_of_few`]).
pub const FEW_VALUES_SHARE: usize = 16;

/// Writes `df` to `writer` (polars' batched writer, with the table's footer settings) in the row
/// groups polars' writer gives a table written whole (up to 512 x 512 rows, the table's chunks
/// gathered or split evenly), each group's columns encoded on the thread pool with
/// [`ColumnEncoder`]: the file polars' `ParquetWriter::finish` makes, but for the encodings
/// and null counts [`ColumnEncoder`] gives.
pub fn write_frame<W: std::io::Write>(
    df: &mut DataFrame,
    mut writer: polars::io::parquet::write::BatchedWriter<W>,
    options: WriteOptions,
) -> PolarsResult<u64> {
    use rayon::prelude::*;
    let chunked = polars::frame::chunk_df_for_writing(df, 512 * 512)?;
    let encoder = ColumnEncoder::new(chunked.schema(), options)?;
    for batch in chunked.iter_chunks(CompatLevel::newest(), false) {
        if batch.is_empty() {
            continue;
        }
        let pages = batch
            .columns()
            .par_iter()
            .enumerate()
            .map(|(i, array)| encoder.encode(i, array.as_ref()))
            .collect::<PolarsResult<Vec<ChunkPages>>>()?;
        let pages: ChunkPages = pages.into_iter().flatten().collect();
        writer.write_row_group(batch.len() as u64, &pages)?;
    }
    writer.finish()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::publish::ParquetSettings;
    use polars_parquet::read::FileMetadata;
    use proptest::prelude::*;

    fn wide_range<T: polars_arrow::types::NativeType + Into<i64>>(v: &PrimitiveArray<T>) -> bool {
        range(v).is_some_and(|(lo, hi)| hi - lo > WIDE)
    }

    /// `df` as polars' writer writes a table whole, and through [`write_frame`].
    fn both_files(df: &DataFrame) -> (Vec<u8>, Vec<u8>) {
        let settings = ParquetSettings::published();
        let mut polars_bytes = Vec::new();
        settings
            .writer(&mut polars_bytes)
            .finish(&mut df.clone())
            .unwrap();
        let mut our_bytes = Vec::new();
        let writer = settings
            .writer(&mut our_bytes)
            .batched(df.schema())
            .unwrap();
        write_frame(&mut df.clone(), writer, settings.options()).unwrap();
        (polars_bytes, our_bytes)
    }

    /// `df` written both ways ([`both_files`]): polars' bytes, ours (read back by polars as
    /// `df`, which is checked), and the footers of ours and of polars'.
    fn written(df: &DataFrame) -> (Vec<u8>, Vec<u8>, FileMetadata, FileMetadata) {
        let (theirs, ours) = both_files(df);
        let back = ParquetReader::new(std::io::Cursor::new(&ours))
            .finish()
            .unwrap();
        assert!(back.equals_missing(df));
        let footer = |bytes: &[u8]| {
            polars_parquet::read::read_metadata(&mut std::io::Cursor::new(bytes)).unwrap()
        };
        let (a, b) = (footer(&ours), footer(&theirs));
        (theirs, ours, a, b)
    }

    /// Writes `df` both ways: the same file as polars' (row groups, columns, encodings, page
    /// sizes, values' smallest and largest), read back as `df`, but that the footer counts
    /// each null once (polars' footer counts a dictionary chunk's nulls once per data page).
    /// Where no chunk had to be corrected, the files are the same bytes.
    fn polars_file_but_null_counts(df: &DataFrame) {
        let (theirs, ours, a, b) = written(df);
        assert_eq!(a.row_groups.len(), b.row_groups.len());
        let (mut from, mut corrected) = (0, false);
        for (x, y) in a.row_groups.iter().zip(&b.row_groups) {
            assert_eq!(x.num_rows(), y.num_rows());
            for (c, (p, q)) in x
                .parquet_columns()
                .iter()
                .zip(y.parquet_columns())
                .enumerate()
            {
                assert_eq!(p.num_values(), q.num_values());
                assert_eq!(
                    p.dictionary_page_offset().is_some(),
                    q.dictionary_page_offset().is_some()
                );
                let mut s = p.statistics(&a.footer_buf).unwrap().unwrap().serialize();
                let mut t = q.statistics(&b.footer_buf).unwrap().unwrap().serialize();
                let nulls = df.columns()[c]
                    .slice(from as i64, x.num_rows())
                    .null_count();
                assert_eq!(s.null_count, Some(nulls as i64));
                corrected |= t.null_count != s.null_count;
                (s.null_count, t.null_count) = (None, None);
                assert_eq!(s, t);
            }
            from += x.num_rows();
        }
        assert_eq!(ours == theirs, !corrected);
    }

    fn text(values: &[Option<&str>]) -> Series {
        Series::new("t".into(), values)
    }

    #[test]
    fn a_text_column_of_runs_is_the_dictionary_polars_builds() {
        // Runs, a value coming back after others, nulls inside and between runs, values longer
        // than a view holds inline (12 bytes) and an empty string.
        let values: Vec<Option<&str>> = [
            Some("S-0001"),
            Some("S-0001"),
            None,
            Some("S-0001"),
            Some("a-longer-value-than-twelve"),
            Some("a-longer-value-than-twelve"),
            Some(""),
            Some(""),
            Some("S-0002"),
            Some("S-0002"),
            Some("S-0001"),
            Some("S-0001"),
            None,
            None,
            Some("a-longer-value-than-twelve"),
            Some("a-longer-value-than-twelve"),
        ]
        .into_iter()
        .cycle()
        .take(1000)
        .collect();
        let column = text(&values);
        let array = column.rechunk().to_arrow(0, CompatLevel::newest());
        let d = dictionary_of_runs(array.as_any().downcast_ref().unwrap())
            .expect("a column of runs has a dictionary");
        let dict_values: Vec<&str> = d
            .values()
            .as_any()
            .downcast_ref::<Utf8ViewArray>()
            .unwrap()
            .values_iter()
            .collect();
        assert_eq!(
            dict_values,
            ["S-0001", "a-longer-value-than-twelve", "", "S-0002"]
        );
        let keys: Vec<Option<u32>> = d.keys().iter().map(|k| k.copied()).take(8).collect();
        assert_eq!(
            keys,
            [
                Some(0),
                Some(0),
                None,
                Some(0),
                Some(1),
                Some(1),
                Some(2),
                Some(2)
            ]
        );
        // Mostly distinct values are left to polars' steps.
        let distinct: Vec<String> = (0..1000).map(|i| format!("S-{i:05}")).collect();
        let distinct = Series::new("u".into(), distinct);
        let array = distinct.rechunk().to_arrow(0, CompatLevel::newest());
        assert!(dictionary_of_runs(array.as_any().downcast_ref().unwrap()).is_none());
        // The files are polars' own, with floats (many values, nulls, 32-bit) and integers
        // beside them, in several row groups (600,000 rows, three chunks), but for the null
        // counts of chunks of several dictionary pages, which polars counts twice.
        let n = 600_000usize;
        let df = df!(
            "t" => (0..n).map(|i| values[(i / 7) % values.len()]).collect::<Vec<_>>(),
            // A new value at every row, a few values in all.
            "alternating" => (0..n).map(|i| values[i % values.len()]).collect::<Vec<_>>(),
            "u" => (0..n).map(|i| format!("S-{i:07}")).collect::<Vec<_>>(),
            "many" => (0..n).map(|i| (i as f64).sqrt()).collect::<Vec<_>>(),
            "f32" => (0..n).map(|i| (i % 3 != 0).then_some(i as f32)).collect::<Vec<_>>(),
            "n" => (0..n).map(|i| (i / 50) as i64).collect::<Vec<_>>(),
        )
        .unwrap();
        let mut chunked = df.slice(0, 100_000);
        chunked.vstack_mut(&df.slice(100_000, 450_000)).unwrap();
        chunked.vstack_mut(&df.slice(550_000, 50_000)).unwrap();
        // No rows, and a text column with no value.
        let empty = df.slice(0, 0);
        let no_value = df!("t" => vec![None::<&str>; 300]).unwrap();
        for df in [df, chunked, empty, no_value] {
            polars_file_but_null_counts(&df);
        }
    }

    /// The values of `d`'s dictionary and its keys.
    fn float_dictionary(d: &DictionaryArray<u32>) -> (Vec<u64>, Vec<Option<u32>>) {
        let values = d
            .values()
            .as_any()
            .downcast_ref::<PrimitiveArray<f64>>()
            .unwrap();
        let bits = values.values().iter().map(|v| v.to_bits()).collect();
        (bits, d.keys().iter().map(|k| k.copied()).collect())
    }

    #[test]
    fn few_floats_get_a_dictionary_of_their_exact_values() {
        // Values in order of first appearance, a value coming back after others, nulls in and
        // between runs; -0.0 and 0.0, and two NaNs of different payloads, are kept apart.
        let nan2 = f64::from_bits(f64::NAN.to_bits() | 1);
        let column = Series::new(
            "f".into(),
            [
                Some(0.5),
                Some(0.5),
                None,
                Some(0.5),
                Some(-0.0),
                Some(0.0),
                Some(f64::NAN),
                Some(nan2),
                Some(0.5),
                None,
                None,
                Some(1.25),
            ],
        );
        // 16 times over: six distinct values in 192 rows, within FEW_VALUES_SHARE.
        let column = column.extend_constant(AnyValue::Null, 0).unwrap();
        let mut long = column.clone();
        for _ in 1..16 {
            long.append(&column).unwrap();
        }
        let array = long.rechunk().to_arrow(0, CompatLevel::newest());
        let d = dictionary_of_few(
            array
                .as_any()
                .downcast_ref::<PrimitiveArray<f64>>()
                .unwrap(),
            f64::to_bits,
        )
        .unwrap();
        let (values, keys) = float_dictionary(&d);
        let keys = &keys[..12];
        let want = [0.5, -0.0, 0.0, f64::NAN, nan2, 1.25].map(f64::to_bits);
        assert_eq!(values, want);
        // Keys by row (-1: a null row).
        let want_keys = [0, 0, -1, 0, 1, 2, 3, 4, 0, -1, -1, 5].map(|k| u32::try_from(k).ok());
        assert_eq!(keys, want_keys);
        // More distinct values than one in FEW_VALUES_SHARE rows: no dictionary.
        let n = 16 * 100;
        let has_dictionary = |values: Vec<f64>| {
            let array = Series::new("g".into(), values).to_arrow(0, CompatLevel::newest());
            let floats = array
                .as_any()
                .downcast_ref::<PrimitiveArray<f64>>()
                .unwrap();
            dictionary_of_few(floats, f64::to_bits).is_some()
        };
        assert!(!has_dictionary((0..n).map(|i| (i % 101) as f64).collect()));
        assert!(has_dictionary((0..n).map(|i| (i % 100) as f64).collect()));
    }

    #[test]
    fn wide_integer_columns_get_a_dictionary_only_of_few_values_and_narrow_ones_polars() {
        let n = 16 * 1000usize;
        // Five values a million apart: a dictionary, in order of first appearance.
        let few: Vec<Option<i64>> = (0..n)
            .map(|i| (i % 9 != 0).then_some((i as i64 / 7 % 5) * 1_000_000 - 2_000_000))
            .collect();
        let array = Series::new("w".into(), &few).to_arrow(0, CompatLevel::newest());
        let ints = array
            .as_any()
            .downcast_ref::<PrimitiveArray<i64>>()
            .unwrap();
        assert!(wide_range(ints));
        let d = dictionary_of_few(ints, |v| v as u64).unwrap();
        let values = d
            .values()
            .as_any()
            .downcast_ref::<PrimitiveArray<i64>>()
            .unwrap();
        assert_eq!(
            values.values().as_slice(),
            [-2_000_000, -1_000_000, 0, 1_000_000, 2_000_000]
        );
        // Line numbers, every value distinct: plain.
        let lines: Vec<i32> = (0..n as i32).map(|i| i * 50).collect();
        let array = Series::new("l".into(), &lines).to_arrow(0, CompatLevel::newest());
        let ints = array
            .as_any()
            .downcast_ref::<PrimitiveArray<i32>>()
            .unwrap();
        assert!(wide_range(ints) && dictionary_of_few(ints, |v| v as u32 as u64).is_none());
        // 65,535 apart is polars' bitmap range: not wide.
        let narrow = Series::new("n".into(), [Some(-5i32), None, Some(65_530)]);
        let array = narrow.to_arrow(0, CompatLevel::newest());
        assert!(!wide_range(
            array
                .as_any()
                .downcast_ref::<PrimitiveArray<i32>>()
                .unwrap()
        ));
        // Written and read back, beside a narrow column that polars' writer still encodes.
        let df = df!(
            "w" => few,
            "l" => lines,
            "n" => (0..n).map(|i| (i % 4 != 0).then_some(i as i32 % 300)).collect::<Vec<_>>(),
        )
        .unwrap();
        let (theirs, ours, a, b) = written(&df);
        let (x, y) = (
            a.row_groups[0].parquet_columns(),
            b.row_groups[0].parquet_columns(),
        );
        let dictionary = |c: &[polars_parquet::parquet::metadata::ColumnChunkMetadata]| {
            c.iter()
                .map(|c| c.dictionary_page_offset().is_some())
                .collect::<Vec<_>>()
        };
        assert_eq!(dictionary(x), [true, false, true]);
        // The narrow column is polars' own chunk, byte for byte.
        let bytes = |file: &[u8], c: &polars_parquet::parquet::metadata::ColumnChunkMetadata| {
            let r = c.byte_range();
            file[r.start as usize..r.end as usize].to_vec()
        };
        assert_eq!(bytes(&ours, &x[2]), bytes(&theirs, &y[2]));
    }

    #[test]
    fn a_file_with_float_dictionaries_reads_back_as_the_table() {
        // Few values (a dictionary), many (plain), nulls and NaN, in several row groups and
        // chunks; polars reads the table back and the footer's statistics are polars' own.
        let n = 600_000usize;
        let df = df!(
            "few" => (0..n).map(|i| (i % 5 != 0).then_some((i / 1000 % 4) as f64 / 2.0)).collect::<Vec<_>>(),
            "nan" => (0..n).map(|i| if i % 3 == 0 { f64::NAN } else { -((i / 7 % 9) as f64) }).collect::<Vec<_>>(),
            "many" => (0..n).map(|i| (i as f64).sqrt()).collect::<Vec<_>>(),
        )
        .unwrap();
        let mut chunked = df.slice(0, 100_000);
        chunked.vstack_mut(&df.slice(100_000, 500_000)).unwrap();
        for table in [df, chunked] {
            let (_, _, ours, theirs) = written(&table);
            assert_eq!(ours.row_groups.len(), theirs.row_groups.len());
            for (a, b) in ours.row_groups.iter().zip(&theirs.row_groups) {
                let (a, b) = (a.parquet_columns(), b.parquet_columns());
                // few and nan: a dictionary page; many: plain, as polars writes it.
                let dictionary: Vec<bool> = a
                    .iter()
                    .map(|c| c.dictionary_page_offset().is_some())
                    .collect();
                assert_eq!(dictionary, [true, true, false]);
                for (x, y) in a.iter().zip(b) {
                    let x = x.statistics(&ours.footer_buf).unwrap().unwrap();
                    let y = y.statistics(&theirs.footer_buf).unwrap().unwrap();
                    assert_eq!(x, y);
                }
            }
        }
    }

    #[test]
    fn the_footer_counts_each_null_once_in_a_chunk_of_several_pages() {
        // Two row groups of 262,144 rows: a dictionary's keys fill more than one page per
        // chunk. Nulls in a text column of runs, a float column of few values and an integer
        // column (polars' own dictionary), and none in another.
        let n = 2 * 512 * 512;
        let df = df!(
            "t" => (0..n).map(|i| (i % 7 != 0).then(|| format!("S-{:04}", i / 300))).collect::<Vec<_>>(),
            "f" => (0..n).map(|i| (i % 5 != 0).then_some((i % 9) as f64 / 4.0)).collect::<Vec<_>>(),
            "k" => (0..n).map(|i| (i % 3 != 0).then_some((i % 11) as i64)).collect::<Vec<_>>(),
            "all" => (0..n).map(|i| format!("v{}", i / 1000)).collect::<Vec<_>>(),
        )
        .unwrap();
        let (_, ours) = both_files(&df);
        let footer = polars_parquet::read::read_metadata(&mut std::io::Cursor::new(&ours)).unwrap();
        assert_eq!(footer.row_groups.len(), 2);
        let mut from = 0;
        for group in &footer.row_groups {
            let rows = group.num_rows();
            for (c, column) in group.parquet_columns().iter().enumerate() {
                assert!(column.dictionary_page_offset().is_some());
                let stats = column.statistics(&footer.footer_buf).unwrap().unwrap();
                let want = df.columns()[c].slice(from as i64, rows).null_count();
                assert_eq!(
                    stats.serialize().null_count,
                    Some(want as i64),
                    "column {c}"
                );
            }
            from += rows;
        }
    }

    #[test]
    fn dictionary_columns_are_the_bytes_polars_writes() {
        // Chunks of one data page (200,000 rows) and of two (2 x 262,144 rows, no nulls, where
        // polars' footer counts are right): the same file, byte for byte. Integers of a narrow
        // range with and without nulls, dates, a constant, a column of values too many for a
        // dictionary (written plain), one with no value, and text of runs with nulls. (Values
        // in no order: values that climb are written as differences, which polars does not.)
        let frame = |n: usize, nulls: bool| {
            let some = |i: usize, every: usize| !nulls || !i.is_multiple_of(every);
            df!(
                "score" => (0..n).map(|i| some(i, 7).then_some((i % 5) as i32)).collect::<Vec<_>>(),
                "count" => (0..n).map(|i| (i / 40) as i64 % 3000).collect::<Vec<_>>(),
                "day" => (0..n).map(|i| some(i, 11).then_some(18_000 + (i / 3 * 37) as i32 % 2000)).collect::<Vec<_>>(),
                "constant" => vec![4i64; n],
                "distinct" => (0..n).map(|i| some(i, 13).then_some((i * 7_919 % 60_000) as i32 - 100)).collect::<Vec<_>>(),
                "none" => vec![None::<i32>; n],
                "t" => (0..n).map(|i| some(i, 9).then(|| format!("S-{:04}", i / 300))).collect::<Vec<_>>(),
            )
            .unwrap()
            .lazy()
            .with_column(col("day").cast(DataType::Date))
            .collect()
            .unwrap()
        };
        // A column whose values are all there but which has a validity bitmap (as a table
        // read back from the cache can have).
        let n = 1000;
        let all_valid = PrimitiveArray::new(
            ArrowDataType::Int32,
            (0..n as i32).map(|i| i % 4).collect::<Vec<_>>().into(),
            Some(polars_arrow::bitmap::Bitmap::new_with_value(true, n)),
        );
        let all_valid = Series::from_arrow("v".into(), all_valid.boxed()).unwrap();
        let chunk = all_valid.to_arrow(0, CompatLevel::newest());
        assert!(chunk.validity().is_some());
        let (theirs, ours) = both_files(&DataFrame::new(n, vec![all_valid.into_column()]).unwrap());
        assert!(theirs == ours, "a validity without a missing value");
        // (A column with no value has nulls, which polars' footer counts once per page.)
        let two_pages = frame(2 * 512 * 512, false).drop("none").unwrap();
        for df in [frame(200_000, true), two_pages, frame(37, true)] {
            let (theirs, ours) = both_files(&df);
            assert!(theirs == ours, "{} rows", df.height());
        }
    }

    /// The encodings the footer of `file` gives each column chunk of its first row group.
    fn chunk_encodings(file: &[u8]) -> Vec<Vec<polars_parquet_format::Encoding>> {
        use polars_parquet_format::FileMetaData;
        use polars_parquet_format::thrift::protocol::TCompactInputProtocol;
        let n = file.len();
        let footer_len = u32::from_le_bytes(file[n - 8..n - 4].try_into().unwrap()) as usize;
        let footer = &file[n - 8 - footer_len..n - 8];
        let meta =
            FileMetaData::read_from_in_protocol(&mut TCompactInputProtocol::new(footer, 1 << 24))
                .unwrap();
        meta.row_groups[0]
            .columns
            .iter()
            .map(|c| c.meta_data.as_ref().unwrap().encodings.clone())
            .collect()
    }

    /// `df` written both ways ([`written`]: ours read back as `df`), over several row groups,
    /// its first column written as differences in ours; and the encodings of our chunks.
    #[allow(clippy::type_complexity)]
    fn first_column_as_differences(
        df: &DataFrame,
    ) -> (
        Vec<u8>,
        Vec<u8>,
        FileMetadata,
        FileMetadata,
        Vec<Vec<polars_parquet_format::Encoding>>,
    ) {
        let (theirs, ours, a, b) = written(df);
        assert!(a.row_groups.len() > 1);
        let encodings = chunk_encodings(&ours);
        let delta = polars_parquet_format::Encoding::DELTA_BINARY_PACKED;
        assert!(encodings[0].contains(&delta), "{encodings:?}");
        (theirs, ours, a, b, encodings)
    }

    /// Every column chunk of `a` has the smallest and largest value of `b`'s.
    fn same_min_max(a: &FileMetadata, b: &FileMetadata) {
        for (x, y) in a.row_groups.iter().zip(&b.row_groups) {
            for (p, q) in x.parquet_columns().iter().zip(y.parquet_columns()) {
                let s = p.statistics(&a.footer_buf).unwrap().unwrap().serialize();
                let t = q.statistics(&b.footer_buf).unwrap().unwrap().serialize();
                assert_eq!((s.min_value, s.max_value), (t.min_value, t.max_value));
            }
        }
    }

    /// The compressed bytes of the first column, over every row group.
    fn first_column_bytes(f: &FileMetadata) -> i64 {
        f.row_groups
            .iter()
            .map(|g| g.parquet_columns()[0].compressed_size())
            .sum()
    }

    #[test]
    fn many_64_bit_integers_are_written_as_their_differences() {
        // Line numbers of two files interleaved (a dedupe's kept rows), some missing, over
        // several row groups; beside them the same numbers as 32-bit integers, written plain.
        let n = 600_000usize;
        let lines: Vec<Option<i64>> = (0..n)
            .map(|i| {
                (i % 97 != 0).then_some(if i % 3 == 0 {
                    i as i64
                } else {
                    5 * i as i64 + 2
                })
            })
            .collect();
        let df = df!(
            "line" => &lines,
            "line32" => lines.iter().map(|v| v.map(|v| v as i32)).collect::<Vec<_>>(),
        )
        .unwrap();
        // Read back by polars as the table, the statistics polars' own.
        let (theirs, ours, a, b, encodings) = first_column_as_differences(&df);
        use polars_parquet_format::Encoding as E;
        assert!(
            !encodings[1].contains(&E::DELTA_BINARY_PACKED),
            "{encodings:?}"
        );
        assert!(encodings[1].contains(&E::PLAIN), "{encodings:?}");
        assert!(chunk_encodings(&theirs)[0].contains(&E::PLAIN));
        same_min_max(&a, &b);
        // Smaller than plain.
        let (x, y) = (first_column_bytes(&a), first_column_bytes(&b));
        assert!(x < y, "{x} against {y}");
        assert!(ours.len() < theirs.len());
    }

    #[test]
    fn the_days_of_a_daily_table_are_written_as_their_differences() {
        // Subjects' days, climbing by one with a day missing here and there, over several row
        // groups and pages; some missing; beside them an item score (a few values, a
        // dictionary as polars writes it) and days sorted by day first (long runs of one
        // day: a dictionary as well).
        let n = 700_000usize;
        let subject_days = 1_800;
        let day: Vec<Option<i32>> = (0..n)
            .map(|i| {
                let (s, d) = (i / subject_days, (i % subject_days) as i32);
                (i % 1_013 != 5).then_some(14_000 + 3 * s as i32 + d + d / 50)
            })
            .collect();
        let score: Vec<Option<i32>> = (0..n)
            .map(|i| (i % 11 != 0).then_some((i % 5) as i32))
            .collect();
        let by_day: Vec<i32> = (0..n).map(|i| 14_000 + (i / 2_000) as i32).collect();
        let df = df!("day" => &day, "score" => &score, "by_day" => &by_day)
            .unwrap()
            .lazy()
            .with_columns([
                col("day").cast(DataType::Date),
                col("by_day").cast(DataType::Date),
            ])
            .collect()
            .unwrap();
        // Read back by polars as the table.
        let (theirs, _, a, b, encodings) = first_column_as_differences(&df);
        use polars_parquet_format::Encoding as E;
        assert_eq!(encodings[1..], chunk_encodings(&theirs)[1..]);
        assert!(chunk_encodings(&theirs)[0].contains(&E::RLE_DICTIONARY));
        // The statistics are polars' own: each chunk's smallest and largest day.
        same_min_max(&a, &b);
        // Each group's days in far fewer bytes than the dictionary's keys.
        let (x, y) = (first_column_bytes(&a), first_column_bytes(&b));
        assert!(4 * x < y, "{x} against {y}");
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]
        #[test]
        fn differences_of_any_64_bit_integers_read_back_as_written(
            values in proptest::collection::vec(
                prop_oneof![
                    4 => any::<i64>().prop_map(Some),
                    2 => (-100_000i64..100_000).prop_map(Some),
                    1 => Just(Some(i64::MIN)),
                    1 => Just(Some(i64::MAX)),
                    1 => Just(None),
                ],
                1..3000,
            ),
        ) {
            // Values too many for a dictionary and too far apart for polars' bitmap, the
            // extremes next to each other (differences that wrap around), missing values.
            let df = df!("v" => &values).unwrap();
            let (_, ours) = both_files(&df);
            let back = ParquetReader::new(std::io::Cursor::new(&ours)).finish().unwrap();
            prop_assert!(back.equals_missing(&df));
        }

        #[test]
        fn integer_columns_of_a_narrow_range_are_written_as_polars_writes_them(
            runs in proptest::collection::vec((-300i64..300, 1usize..60, 0u8..4), 1..120),
            spread in prop_oneof![Just(1i64), Just(7), Just(200)],
            every_value in proptest::bool::ANY,
        ) {
            // Runs of values, some null, over a few values or a wide spread of them (up to
            // polars' 65,535), as 64- and 32-bit integers and dates; or over five values in a
            // row, mostly all of them present (a diary item's 0 to 4).
            let mut values: Vec<Option<i64>> = Vec::new();
            for (v, len, null) in runs {
                let v = if every_value { v.rem_euclid(5) - 2 } else { v };
                let value = (null != 0).then_some(v * spread);
                values.extend(std::iter::repeat_n(value, len));
            }
            let n = values.len();
            let df = df!(
                "i64" => &values,
                "i32" => values.iter().map(|v| v.map(|v| v as i32)).collect::<Vec<_>>(),
                "date" => values.iter().map(|v| v.map(|v| 19_000 + v as i32)).collect::<Vec<_>>(),
            )
            .unwrap()
            .lazy()
            .with_column(col("date").cast(DataType::Date))
            .collect()
            .unwrap();
            prop_assert_eq!(df.height(), n);
            // Runs of scattered values: their differences do not pay, the columns are polars'.
            for c in df.columns() {
                let c = c.as_materialized_series().rechunk();
                let pays = match c.dtype() {
                    DataType::Int64 => parquet_delta::pays(c.i64().unwrap().downcast_iter().next().unwrap()),
                    DataType::Int32 => parquet_delta::pays(c.i32().unwrap().downcast_iter().next().unwrap()),
                    _ => parquet_delta::pays(c.date().unwrap().physical().downcast_iter().next().unwrap()),
                };
                prop_assume!(!pays);
            }
            let (polars_bytes, our_bytes) = both_files(&df);
            prop_assert!(polars_bytes == our_bytes);
        }

        #[test]
        fn text_columns_are_written_as_polars_writes_them(
            runs in proptest::collection::vec((0usize..16, 1usize..40, any::<bool>()), 1..80)
        ) {
            // Runs of values drawn from a few, short and long, some null.
            let pool = ["", "a", "nih", "site-b", "S-000123", "twelve-bytes", "thirteen-byte",
                "a much longer value"];
            let mut values: Vec<Option<&str>> = Vec::new();
            let mut picks: Vec<Option<IdxSize>> = Vec::new();
            for (v, len, null) in runs {
                let value = (!null || v % 2 == 0).then_some(pool[v % pool.len()]);
                values.extend(std::iter::repeat_n(value, len));
                let pick = value.map(|_| (v % pool.len()) as IdxSize);
                picks.extend(std::iter::repeat_n(pick, len));
            }
            // The same values gathered from one column of the pool: the rows of a value share
            // one view, a long value's included (as a file's path in a table made by a join).
            let shared = Series::new("s".into(), pool)
                .take(&IdxCa::from_iter_options("i".into(), picks.into_iter()))
                .unwrap();
            let df = DataFrame::new(
                values.len(),
                vec![text(&values).into_column(), shared.into_column()],
            )
            .unwrap();
            let (polars_bytes, our_bytes) = both_files(&df);
            prop_assert!(polars_bytes == our_bytes);
        }
    }
}
