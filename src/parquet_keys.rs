//! The data pages of a dictionary-encoded Parquet column chunk, made from the dictionary's keys
//! a run at a time instead of through polars' value-by-value encoder.
//!
//! A data page of a dictionary column holds the definition levels (which rows are null) and the
//! keys of the rows that are not, both in Parquet's RLE / bit-packing hybrid. polars' writer
//! feeds every key and every level through one generic loop (about 40 instructions a key, with
//! the keys taken from an iterator that zips each one with its validity bit): on the bench cohort
//! that loop was about a sixteenth of a run's instructions, most of them in `addiary`'s
//! 127 million values. [`Hybrid`] takes the same decisions as polars' encoder (the same runs,
//! the same literal groups, the same bytes: a property test compares the two) but jumps over a
//! run it has already decided to repeat, reads the keys from a slice, and the definition levels
//! a 64-bit word at a time. [`dictionary_pages`] then lays out the chunk's data pages as polars'
//! writer does (rows per page, headers, statistics), so a column chunk is the same bytes as
//! polars' (the tests of [`crate::parquet_pages`] compare whole files), but for the null count of
//! each page, which is the page's own ([`crate::parquet_pages`] explains why).

use polars_arrow::array::DictionaryArray;
use polars_arrow::bitmap::Bitmap;
use polars_arrow::bitmap::utils::SlicesIterator;
use polars_parquet::parquet::CowBuffer;
use polars_parquet::parquet::encoding::bitpacked::encode_pack;
use polars_parquet::parquet::encoding::uleb128;
use polars_parquet::parquet::metadata::Descriptor;
use polars_parquet::parquet::page::{DataPage, DataPageHeader, DataPageHeaderV1};
use polars_parquet::parquet::schema::Repetition;
use polars_parquet::parquet::schema::types::PrimitiveType;
use polars_parquet::parquet::statistics::ParquetStatistics;
use polars_parquet::write::{Page, Version, WriteOptions};
use polars_parquet_format::Encoding as FormatEncoding;

/// Values of a literal (bit-packed) group at most, as in polars' encoder.
const MAX_LITERAL: usize = 8 * 1024;

/// What the hybrid encoding is made of, for one kind of value: a bit-packed group of literal
/// values and a repeated value.
trait Hybridable: Copy + PartialEq + Default {
    fn bitpacked(out: &mut Vec<u8>, values: &[Self], num_bits: usize);
    fn repeated(out: &mut Vec<u8>, run: usize, value: Self, num_bits: usize);
}

pub(crate) fn uleb(out: &mut Vec<u8>, value: u64) {
    let mut container = [0u8; 10];
    let used = uleb128::encode(value, &mut container);
    out.extend_from_slice(&container[..used]);
}

fn ceil8(n: usize) -> usize {
    n.div_ceil(8)
}

impl Hybridable for u32 {
    fn bitpacked(out: &mut Vec<u8>, values: &[u32], num_bits: usize) {
        uleb(out, ((ceil8(values.len()) as u64) << 1) | 1);
        // One buffer for the whole group, as polars' encoder keeps it: a last group of fewer
        // than 32 values is packed with the values of the group before it behind them (readers
        // ignore them), which keeps the bytes polars' writer writes.
        let mut buffer = [0u32; 32];
        let mut packed = [0u8; 128];
        let chunks = values.chunks_exact(32);
        let rest = chunks.remainder();
        for chunk in chunks {
            buffer.copy_from_slice(chunk);
            encode_pack::<u32>(&buffer, num_bits, &mut packed);
            out.extend_from_slice(&packed[..4 * num_bits]);
        }
        if !rest.is_empty() {
            buffer[..rest.len()].copy_from_slice(rest);
            encode_pack::<u32>(&buffer, num_bits, &mut packed);
            out.extend_from_slice(&packed[..ceil8(rest.len()) * num_bits]);
        }
    }

    fn repeated(out: &mut Vec<u8>, run: usize, value: u32, num_bits: usize) {
        uleb(out, (run as u64) << 1);
        out.extend_from_slice(&value.to_le_bytes()[..ceil8(num_bits)]);
    }
}

impl Hybridable for bool {
    fn bitpacked(out: &mut Vec<u8>, values: &[bool], _num_bits: usize) {
        uleb(out, ((ceil8(values.len()) as u64) << 1) | 1);
        for chunk in values.chunks(8) {
            let byte = chunk
                .iter()
                .enumerate()
                .fold(0u8, |b, (i, v)| b | (u8::from(*v) << i));
            out.push(byte);
        }
    }

    fn repeated(out: &mut Vec<u8>, run: usize, value: bool, _num_bits: usize) {
        uleb(out, (run as u64) << 1);
        out.push(u8::from(value));
    }
}

/// The state of polars' hybrid encoder (`hybrid_rle::encode`), fed a value or a run of one
/// value at a time; its fields are that function's variables.
struct Hybrid<V: Hybridable> {
    /// How often the last value came in a row (`consecutive_repeats`).
    repeats: usize,
    previous: V,
    /// Values not yet written (`buffered_bits`, `buffer_idx`).
    buffer: Vec<V>,
    /// How many of them go out as literals (`literal_run_idx`).
    literal: usize,
    num_bits: usize,
}

impl<V: Hybridable> Hybrid<V> {
    fn new(num_bits: usize) -> Self {
        Hybrid {
            repeats: 0,
            previous: V::default(),
            buffer: Vec::with_capacity(MAX_LITERAL),
            literal: 0,
            num_bits,
        }
    }

    /// One value: the body of polars' loop.
    #[inline]
    fn push(&mut self, out: &mut Vec<u8>, value: V) {
        if value == self.previous {
            self.repeats += 1;
            if self.repeats >= 8 {
                if self.repeats > 8 {
                    return;
                }
                // A run long enough to repeat: the literals before it padded to a multiple of
                // 8 with some of its values.
                let padding = (8 - self.literal % 8) % 8;
                self.repeats -= padding;
                self.literal += padding;
            }
        } else if self.repeats > 8 {
            if self.literal > 0 {
                V::bitpacked(out, &self.buffer[..self.literal], self.num_bits);
                self.literal = 0;
            }
            V::repeated(out, self.repeats, self.previous, self.num_bits);
            self.repeats = 1;
            self.buffer.clear();
        } else {
            self.literal = self.buffer.len();
            self.repeats = 1;
        }
        if self.buffer.len() == MAX_LITERAL {
            V::bitpacked(out, &self.buffer, self.num_bits);
            self.repeats = 1;
            self.buffer.clear();
            self.literal = 0;
        }
        self.buffer.push(value);
        self.previous = value;
    }

    /// `n` values `value`: what `n` calls of [`Hybrid::push`] do, but a run already long enough
    /// to be repeated grows in one step.
    #[inline]
    fn push_run(&mut self, out: &mut Vec<u8>, value: V, mut n: usize) {
        while n > 0 && !(self.repeats >= 8 && value == self.previous) {
            self.push(out, value);
            n -= 1;
        }
        self.repeats += n;
    }

    /// The last literals and the last run: the end of polars' function.
    fn finish(mut self, out: &mut Vec<u8>) {
        if self.repeats <= 8 {
            self.literal = self.buffer.len();
        }
        if self.literal > 0 {
            V::bitpacked(out, &self.buffer[..self.literal], self.num_bits);
        }
        if self.repeats > 8 {
            V::repeated(out, self.repeats, self.previous, self.num_bits);
        }
    }
}

/// `keys` in the hybrid encoding of `num_bits` bits a key: the bytes polars'
/// `hybrid_rle::encode` writes for them.
pub fn encode_keys(out: &mut Vec<u8>, keys: &[u32], num_bits: usize) {
    let mut h = Hybrid::<u32>::new(num_bits);
    let mut i = 0;
    while i < keys.len() {
        if h.repeats < 8 {
            let taken = h.literals(&keys[i..]);
            if taken > 0 {
                i += taken;
                continue;
            }
        }
        let key = keys[i];
        let run = keys[i..].iter().take_while(|k| **k == key).count();
        h.push_run(out, key, run);
        i += run;
    }
    h.finish(out);
}

impl Hybrid<u32> {
    /// Takes the longest start of `keys` that [`Hybrid::push`] would only buffer: no run
    /// reaching 8 values and the buffer not full. Within it each push either counts a repeat
    /// or, at a new value, marks where the literals would end; done in one pass, only the end
    /// state is kept. Returns how many keys were taken (the next one needs [`Hybrid::push`]).
    /// Only called with fewer than 8 repeats, so no repeated run is waiting to be written.
    fn literals(&mut self, keys: &[u32]) -> usize {
        let room = MAX_LITERAL - self.buffer.len();
        let (mut repeats, mut previous) = (self.repeats, self.previous);
        let mut changed = None;
        let mut taken = 0;
        for &key in keys.iter().take(room) {
            if key == previous {
                if repeats + 1 >= 8 {
                    break;
                }
                repeats += 1;
            } else {
                repeats = 1;
                changed = Some(taken);
                previous = key;
            }
            taken += 1;
        }
        if let Some(at) = changed {
            self.literal = self.buffer.len() + at;
        }
        self.buffer.extend_from_slice(&keys[..taken]);
        (self.repeats, self.previous) = (repeats, previous);
        taken
    }
}

/// The bits of `bits` in the hybrid encoding of one bit a value: the bytes polars'
/// `hybrid_rle::encode` writes for `bits.iter()`. Runs are found a 64-bit word at a time.
pub fn encode_bits(out: &mut Vec<u8>, bits: &Bitmap) {
    let mut h = Hybrid::<bool>::new(1);
    let mut runs = |mut word: u64, mut left: u32| {
        while left > 0 {
            let set = word & 1 == 1;
            let run = if set {
                word.trailing_ones()
            } else {
                word.trailing_zeros()
            }
            .min(left);
            h.push_run(out, set, run as usize);
            word = word.checked_shr(run).unwrap_or(0);
            left -= run;
        }
    };
    let chunks = bits.chunks::<u64>();
    let rest = chunks.remainder();
    let rest_len = chunks.remainder_len() as u32;
    for word in chunks {
        runs(word, 64);
    }
    if rest_len > 0 {
        runs(rest, rest_len);
    }
    h.finish(out);
}

/// The rows of each data page of a flat column chunk of `rows` values of `value_bytes` bytes
/// each, as polars' writer splits an array into pages (`estimated_bytes_size` of the values and
/// validity, then `row_slice_ranges`: rows split evenly into pages of about `data_page_size`
/// bytes).
fn rows_per_page(
    rows: usize,
    value_bytes: usize,
    validity: Option<&Bitmap>,
    options: &WriteOptions,
) -> usize {
    let byte_size = rows * value_bytes + validity.map_or(0, |v| v.as_slice().0.len());
    let bytes_per_row = if rows == 0 {
        0
    } else {
        (byte_size as f64 / rows as f64) as usize
    };
    let max_page_size = options
        .data_page_size
        .unwrap_or(1024 * 1024)
        .min(2usize.pow(31) - 2usize.pow(25));
    (max_page_size / (bytes_per_row + 1)).max(1)
}

/// The validity of a page's rows (`length` rows from `offset`), as polars slices an array for
/// each page: a validity without a missing value goes, and the page's definition levels are
/// then one repeated run.
fn page_validity(validity: Option<&Bitmap>, offset: usize, length: usize) -> Option<Bitmap> {
    validity
        .map(|v| v.clone().sliced(offset, length))
        .filter(|v| v.unset_bits() > 0)
}

/// The definition levels of an optional flat column's page of `length` rows (`validity` from
/// [`page_validity`]), with their length in front, as polars' writer puts them at the start of
/// a V1 data page.
fn definition_levels(buffer: &mut Vec<u8>, length: usize, validity: Option<&Bitmap>) {
    let start = buffer.len();
    buffer.extend_from_slice(&[0; 4]);
    match validity {
        None => <bool as Hybridable>::repeated(buffer, length, true, 1),
        Some(v) => encode_bits(buffer, v),
    }
    let levels = ((buffer.len() - start - 4) as i32).to_le_bytes();
    buffer[start..start + 4].copy_from_slice(&levels);
}

/// The values of a page's rows that are not null: `values` itself when none is, else those
/// rows' values copied into `scratch`.
pub(crate) fn valid_values<'a, T: Copy>(
    values: &'a [T],
    validity: Option<&Bitmap>,
    scratch: &'a mut Vec<T>,
) -> &'a [T] {
    match validity {
        Some(v) if v.unset_bits() > 0 => {
            scratch.clear();
            for (start, len) in SlicesIterator::new(v) {
                scratch.extend_from_slice(&values[start..start + len]);
            }
            scratch
        }
        _ => values,
    }
}

/// The data pages of a dictionary column chunk of `dictionary`'s keys, laid out as polars'
/// writer lays them out (its `serialize_keys`: rows split evenly into pages of about
/// `data_page_size` bytes of keys, definition levels then the key width then the keys, a V1
/// header with `statistics`), each with its own rows' null count. `None` when polars' writer
/// must make them: a V2 file, or a dictionary whose values have missing values of their own.
pub fn dictionary_pages(
    dictionary: &DictionaryArray<u32>,
    type_: &PrimitiveType,
    options: WriteOptions,
    statistics: Option<ParquetStatistics>,
) -> Option<Vec<Page>> {
    if options.version != Version::V1 || dictionary.values().validity().is_some() {
        return None;
    }
    let keys = dictionary.keys();
    Some(flat_pages(
        keys.values(),
        keys.validity(),
        type_,
        &options,
        FormatEncoding::RLE_DICTIONARY,
        |buffer, valid, nulls| {
            let num_bits = (32 - valid.iter().copied().max().unwrap_or(0).leading_zeros()) as usize;
            buffer.push(num_bits as u8);
            encode_keys(buffer, valid, num_bits);
            statistics.clone().map(|mut s| {
                s.null_count = Some(nulls as i64);
                s
            })
        },
    ))
}

/// The V1 data pages of a flat column chunk of `values` (`validity`: which rows hold one),
/// laid out as polars' writer lays them out: the rows of each page ([`rows_per_page`]), its
/// definition levels for an optional column, then what `page` appends for the page's values
/// that are not null (given with the page's null count), in `encoding`, with the statistics
/// `page` returns.
pub(crate) fn flat_pages<T: Copy>(
    values: &[T],
    validity: Option<&Bitmap>,
    type_: &PrimitiveType,
    options: &WriteOptions,
    encoding: FormatEncoding,
    mut page: impl FnMut(&mut Vec<u8>, &[T], usize) -> Option<ParquetStatistics>,
) -> Vec<Page> {
    let rows = values.len();
    let rows_per_page = rows_per_page(rows, size_of::<T>(), validity, options);
    let optional = type_.field_info.repetition != Repetition::Required;
    let mut pages = Vec::new();
    let mut scratch: Vec<T> = Vec::new();
    for offset in (0..rows).step_by(rows_per_page) {
        let length = rows_per_page.min(rows - offset);
        let page_validity = page_validity(validity, offset, length);
        let mut buffer = Vec::new();
        if optional {
            definition_levels(&mut buffer, length, page_validity.as_ref());
        }
        let nulls = page_validity.as_ref().map_or(0, |v| v.unset_bits());
        let page_values = &values[offset..offset + length];
        let valid = valid_values(page_values, page_validity.as_ref(), &mut scratch);
        let statistics = page(&mut buffer, valid, nulls);
        pages.push(data_page(type_, encoding, buffer, length, statistics));
    }
    pages
}

/// A V1 data page of a flat column of `type_`: `length` rows, their definition levels and
/// values in `buffer`, the values in `encoding`.
fn data_page(
    type_: &PrimitiveType,
    encoding: FormatEncoding,
    buffer: Vec<u8>,
    length: usize,
    statistics: Option<ParquetStatistics>,
) -> Page {
    let header = DataPageHeader::V1(DataPageHeaderV1 {
        num_values: length as i32,
        encoding,
        definition_level_encoding: FormatEncoding::RLE,
        repetition_level_encoding: FormatEncoding::RLE,
        statistics,
    });
    let descriptor = Descriptor {
        primitive_type: type_.clone(),
        max_def_level: 0,
        max_rep_level: 0,
    };
    Page::Data(DataPage::new(
        header,
        CowBuffer::Owned(buffer),
        descriptor,
        length,
    ))
}

#[cfg(test)]
mod tests {
    use polars_arrow::bitmap::MutableBitmap;
    use polars_parquet::parquet::encoding::hybrid_rle;
    use proptest::prelude::*;

    use super::*;

    /// Runs of values (long runs, short runs and single values) and stretches where no value
    /// repeats the one before (longer than a literal group, 8,192 values, at times), mixed, as
    /// the keys and the validity of a sorted table come.
    fn runs_of<T: std::fmt::Debug + Clone>(
        value: impl Strategy<Value = T>,
        next: fn(&T) -> T,
    ) -> impl Strategy<Value = Vec<T>> {
        let length = prop_oneof![1..3usize, 1..12usize, 1..40usize, 1..20_000usize];
        prop::collection::vec((value, length, any::<bool>()), 0..24).prop_map(move |runs| {
            let mut out = Vec::new();
            for (v, n, stretch) in runs {
                if stretch {
                    let mut v = v;
                    for _ in 0..n {
                        let after = next(&v);
                        out.push(std::mem::replace(&mut v, after));
                    }
                } else {
                    out.extend(std::iter::repeat_n(v, n));
                }
            }
            out
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        #[test]
        fn keys_encode_to_the_bytes_of_polars_encoder(
            keys in runs_of(0..9u32, |k| (k + 1) % 9),
            wide in any::<bool>(),
        ) {
            let keys: Vec<u32> = if wide { keys.iter().map(|k| k * 1000 + 7).collect() } else { keys };
            let max = keys.iter().copied().max().unwrap_or(0);
            let num_bits = (32 - max.leading_zeros()) as usize;
            let mut want = Vec::new();
            hybrid_rle::encode::<u32, _, _>(&mut want, keys.iter().copied(), num_bits as u32).unwrap();
            let mut got = Vec::new();
            encode_keys(&mut got, &keys, num_bits);
            prop_assert_eq!(got, want);
        }

        /// Every page against the page polars' writer makes of the same dictionary: pages of
        /// a few hundred bytes (so a chunk has many), keys with and without missing values,
        /// a validity with none missing, and missing values in some pages only. The bytes and
        /// headers are polars', but for each page's null count, which is the page's own.
        #[test]
        fn pages_are_polars_pages_but_for_their_null_counts(
            keys in runs_of(0..6u32, |k| (k + 1) % 6),
            nulls in prop_oneof![Just(0u8), Just(1), Just(2), Just(3)],
            page_bytes in 40..2000usize,
        ) {
            use polars::prelude::{ArrowDataType, ArrowField, ArrowSchema, PlSmallStr};
            use polars_arrow::array::{Array, PrimitiveArray};
            use polars_arrow::datatypes::IntegerType;
            use polars_parquet::write::{array_to_columns, to_parquet_schema, Encoding, ParquetType, StatisticsOptions, CompressionOptions};
            let n = keys.len();
            // (No rows: polars' writer makes that chunk, a dictionary page alone.)
            prop_assume!(n > 0);
            // 0: no validity; 1: one with nothing missing; 2: every 5th missing; 3: missing
            // in the first third only.
            let validity: Option<Bitmap> = match nulls {
                0 => None,
                1 => Some(Bitmap::new_with_value(true, n)),
                2 => Some((0..n).map(|i| i % 5 != 0).collect::<MutableBitmap>().into()),
                _ => Some((0..n).map(|i| i >= n / 3 || i % 2 == 0).collect::<MutableBitmap>().into()),
            };
            let keys = PrimitiveArray::new(ArrowDataType::UInt32, keys.into(), validity);
            let values = PrimitiveArray::new(ArrowDataType::Int32, (0..6).map(|v| v * 10 - 7).collect::<Vec<i32>>().into(), None);
            let dtype = ArrowDataType::Dictionary(IntegerType::UInt32, Box::new(ArrowDataType::Int32), false);
            let d = DictionaryArray::try_new(dtype, keys, values.boxed()).unwrap();
            let schema = ArrowSchema::from_iter([ArrowField::new(PlSmallStr::from("k"), ArrowDataType::Int32, true)]);
            let ptype = to_parquet_schema(&schema).unwrap().fields()[0].clone();
            let ParquetType::PrimitiveType(primitive) = &ptype else { panic!("flat") };
            let options = WriteOptions {
                statistics: StatisticsOptions::full(),
                version: Version::V1,
                compression: CompressionOptions::Uncompressed,
                data_page_size: Some(page_bytes),
            };
            let theirs: Vec<Page> = array_to_columns(&d as &dyn Array, ptype.clone(), options, &[Encoding::RleDictionary])
                .unwrap()
                .pop()
                .unwrap()
                .map(Result::unwrap)
                .collect();
            let Page::Data(first) = &theirs[1] else { panic!("a data page") };
            let DataPageHeader::V1(h) = first.header() else { panic!("V1") };
            let ours = dictionary_pages(&d, primitive, options, h.statistics.clone()).unwrap();
            prop_assert_eq!(ours.len(), theirs.len() - 1);
            let mut row = 0;
            for (o, t) in ours.iter().zip(&theirs[1..]) {
                let (Page::Data(o), Page::Data(t)) = (o, t) else { panic!("data pages") };
                prop_assert_eq!(o.buffer(), t.buffer());
                prop_assert_eq!(o.num_values(), t.num_values());
                prop_assert_eq!(o.num_rows, t.num_rows);
                let (DataPageHeader::V1(oh), DataPageHeader::V1(th)) = (o.header(), t.header()) else { panic!("V1") };
                let (mut os, mut ts) = (oh.statistics.clone().unwrap(), th.statistics.clone().unwrap());
                let rows = o.num_values();
                let missing = d.keys().validity().map_or(0, |v| v.clone().sliced(row, rows).unset_bits());
                prop_assert_eq!(os.null_count, Some(missing as i64));
                row += rows;
                (os.null_count, ts.null_count) = (None, None);
                prop_assert_eq!(os, ts);
                prop_assert_eq!((oh.num_values, oh.encoding, oh.definition_level_encoding, oh.repetition_level_encoding),
                    (th.num_values, th.encoding, th.definition_level_encoding, th.repetition_level_encoding));
            }
            prop_assert_eq!(row, n);
        }

        #[test]
        fn bits_encode_to_the_bytes_of_polars_encoder(
            bits in runs_of(any::<bool>(), |b| !b),
            offset in 0..70usize,
        ) {
            // A bitmap sliced at any offset, as a page's rows are.
            let whole: Bitmap = std::iter::repeat_n(true, offset).chain(bits.iter().copied()).collect::<MutableBitmap>().into();
            let bitmap = whole.sliced(offset, bits.len());
            let mut want = Vec::new();
            hybrid_rle::encode::<bool, _, _>(&mut want, bitmap.iter(), 1).unwrap();
            let mut got = Vec::new();
            encode_bits(&mut got, &bitmap);
            prop_assert_eq!(got, want);
        }
    }
}
