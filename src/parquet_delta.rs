//! Integer and date columns written as the differences between their values (Parquet's
//! `DELTA_BINARY_PACKED`), encoded here rather than by polars' writer.
//!
//! A published daily table is sorted by subject and day, so its day column (`ADT`) climbs by
//! one from row to row but where the subject changes. As a dictionary (polars' choice for a
//! date column) each of its 9.4 million values in `adster` is an 11-bit key, 14.6 MB for zstd
//! to compress (0.93 MB after it); as differences a block of 256 days that climb by one is its
//! smallest difference and a width of zero, and the column takes 1.9 MB before zstd and 0.11
//! MB after it (the bench cohort; the diary table's days 12.2 -> 3.3 MB, 2.8 -> 0.9 MB).
//! [`pays`] decides, column chunk by column chunk, from the bytes the differences would take
//! against the dictionary's keys; the line numbers of a deduplicated table (64-bit, too many
//! values for a dictionary) are written this way whatever the estimate.
//!
//! [`encode`] writes the bytes polars' own encoder of the format writes (blocks of 256
//! differences, one mini-block each), but reads the values from a slice and packs a block in
//! the column's own width (32 values at a time, 64 for 64-bit columns): polars' encoder took
//! about 18 ns a value, the values through an iterator of 64-bit integers and the widths
//! worked out value by value.
//! (Blocks of 128 in four mini-blocks, as parquet-mr and Arrow C++ write them, were measured:
//! the line numbers of the diary table took 10.5 MB after zstd against 9.8 MB this way, and
//! its days 0.85 against 0.94 MB.) [`delta_pages`] lays the pages out as polars' writer lays
//! out a column's pages (the same rows a page, the same definition levels and statistics),
//! so a chunk is the bytes polars' writer makes with this encoding, but for the padding of a
//! page's last block.

use polars_arrow::array::PrimitiveArray;
use polars_parquet::parquet::encoding::bitpacked::encode_pack;
use polars_parquet::parquet::encoding::zigzag_leb128;
use polars_parquet::parquet::schema::types::PrimitiveType;
use polars_parquet::parquet::statistics::PrimitiveStatistics;
use polars_parquet::write::{Page, Version, WriteOptions};
use polars_parquet_format::Encoding as FormatEncoding;

use crate::parquet_keys::{flat_pages, uleb, valid_values};

/// Differences in a block, in one mini-block (polars' layout).
const BLOCK: usize = 256;

/// An integer type whose columns can be written as differences: Parquet's INT32 (32-bit
/// integers and dates) and INT64.
pub trait DeltaInt:
    polars_arrow::types::NativeType + polars_parquet::parquet::types::NativeType + Ord
{
    fn widen(self) -> i64;
    /// The blocks of `values`' differences (each `next - prev` in the type's own width,
    /// wrapping, as a reader adds it back): calls `block` with each block's smallest difference
    /// and the bit width of its differences less the smallest, and with a function that
    /// appends them bit-packed (`BLOCK * width / 8` bytes, zeros past the block's end).
    fn blocks(values: &[Self], block: impl FnMut(i64, usize, &dyn Fn(&mut Vec<u8>)));
    /// The smallest and largest of `values` (not empty).
    fn range(values: &[Self]) -> (Self, Self);
}

/// [`DeltaInt`] for a signed type `$t`, its differences less a block's smallest held in the
/// unsigned type `$u` of its width and packed `$pack` at a time (polars' `encode_pack`), so
/// that each loop works on lanes of the column's width.
macro_rules! delta_int {
    ($t:ty, $u:ty, $pack:expr) => {
        impl DeltaInt for $t {
            fn widen(self) -> i64 {
                self as i64
            }

            fn blocks(values: &[$t], mut block: impl FnMut(i64, usize, &dyn Fn(&mut Vec<u8>))) {
                let mut deltas = [0 as $t; BLOCK];
                let mut reduced = [0 as $u; BLOCK];
                let mut i = 1;
                while i < values.len() {
                    let m = BLOCK.min(values.len() - i);
                    let (before, after) = (&values[i - 1..i - 1 + m], &values[i..i + m]);
                    for ((d, b), a) in deltas[..m].iter_mut().zip(before).zip(after) {
                        *d = a.wrapping_sub(*b);
                    }
                    let min = deltas[..m].iter().fold(<$t>::MAX, |x, d| x.min(*d));
                    let mut bits: $u = 0;
                    for (r, d) in reduced[..m].iter_mut().zip(&deltas[..m]) {
                        // Below 2^bits of the type: the difference less the smallest, wrapped.
                        *r = d.wrapping_sub(min) as $u;
                        bits |= *r;
                    }
                    reduced[m..].fill(0);
                    let width = (<$u>::BITS - bits.leading_zeros()) as usize;
                    let pack = |out: &mut Vec<u8>| {
                        let start = out.len();
                        out.resize(start + BLOCK * width / 8, 0);
                        let chunks = out[start..].chunks_exact_mut($pack * width / 8);
                        for (values, packed) in reduced.chunks_exact($pack).zip(chunks) {
                            encode_pack::<$u>(values, width, packed);
                        }
                    };
                    block(min as i64, width, &pack);
                    i += m;
                }
            }

            fn range(values: &[$t]) -> ($t, $t) {
                values.iter().fold((<$t>::MAX, <$t>::MIN), |(lo, hi), v| {
                    (lo.min(*v), hi.max(*v))
                })
            }
        }
    };
}

// polars packs 32-bit values 32 at a time and 64-bit values 64 at a time; a block's bits
// follow one another either way.
delta_int!(i32, u32, 32);
delta_int!(i64, u64, 64);

fn zigzag(out: &mut Vec<u8>, value: i64) {
    let (bytes, used) = zigzag_leb128::encode(value);
    out.extend_from_slice(&bytes[..used]);
}

/// `values` in the `DELTA_BINARY_PACKED` encoding as polars' encoder writes it: the header
/// (block size 256, one mini-block a block, the number of values, the first value), then each
/// block's smallest difference, its width and its differences less the smallest, bit-packed
/// (the last block padded to 256 values, with zeros where polars' encoder leaves the block
/// before's differences: readers skip them).
pub fn encode<T: DeltaInt>(out: &mut Vec<u8>, values: &[T]) {
    uleb(out, BLOCK as u64);
    uleb(out, 1);
    uleb(out, values.len() as u64);
    zigzag(out, values.first().map_or(0, |v| v.widen()));
    T::blocks(values, |min, width, pack| {
        zigzag(out, min);
        out.push(width as u8);
        if width > 0 {
            pack(out);
        }
    });
}

/// The bytes [`encode`] writes for `values`' blocks (the header left out).
fn encoded_bytes<T: DeltaInt>(values: &[T]) -> usize {
    let mut bytes = 0;
    T::blocks(values, |_, width, _| bytes += 2 + BLOCK * width / 8);
    bytes
}

/// The rows [`pays`] looks at: the first of a column chunk (a table is sorted by its keys, so
/// a chunk's first rows show how its values go on).
const SAMPLE: usize = 16 * 1024;

/// Whether `values` are written as differences rather than as a dictionary's keys (or plain):
/// when the differences take at most half the bytes of the keys. The keys are estimated from
/// the values' changes from row to row: a column of long runs (a day in a table sorted by
/// day first) repeats each key in a couple of bytes a run; one that changes at most rows packs
/// each key in the bits of its number of distinct values (at most the changes, at most the
/// range). Either way zstd compresses the result; the estimate only compares the two
/// encodings' sizes before it, over the chunk's first [`SAMPLE`] rows. Nulls are left out, as
/// the encodings leave them out.
pub fn pays<T: DeltaInt>(values: &PrimitiveArray<T>) -> bool {
    let head = values.clone().sliced(0, values.len().min(SAMPLE));
    let mut scratch = Vec::new();
    let valid = valid_values(head.values(), head.validity(), &mut scratch);
    let n = valid.len();
    if n < BLOCK {
        return false;
    }
    let changes = valid.windows(2).filter(|w| w[0] != w[1]).count();
    let (lo, hi) = T::range(valid);
    let distinct = (changes as u64 + 1).min(hi.widen().abs_diff(lo.widen()).saturating_add(1));
    let key_bits = (64 - (distinct - 1).leading_zeros()).max(1) as usize;
    let keys = if 8 * changes >= n {
        n * key_bits / 8
    } else {
        changes * (2 + key_bits.div_ceil(8))
    };
    let plain = std::mem::size_of_val(valid);
    2 * encoded_bytes(valid) <= keys.min(plain)
}

/// The data pages of a flat column chunk of `values` written as differences: the rows of each
/// page, its definition levels, and its statistics (the smallest and largest of its values,
/// its nulls) as polars' writer makes a plain page of them; the values [`encode`]d. `None` for
/// a file of version 2 pages, which polars' writer then makes.
pub fn delta_pages<T: DeltaInt>(
    values: &PrimitiveArray<T>,
    type_: &PrimitiveType,
    options: WriteOptions,
) -> Option<Vec<Page>> {
    let rows = values.len();
    if options.version != Version::V1 || rows == 0 {
        return None;
    }
    Some(flat_pages(
        values.values(),
        values.validity(),
        type_,
        &options,
        FormatEncoding::DELTA_BINARY_PACKED,
        |buffer, valid, nulls| {
            encode(buffer, valid);
            let range = (!valid.is_empty()).then(|| T::range(valid));
            options.has_statistics().then(|| {
                let s = &options.statistics;
                PrimitiveStatistics::<T> {
                    primitive_type: type_.clone(),
                    null_count: s.null_count.then_some(nulls as i64),
                    distinct_count: None,
                    min_value: range.map(|r| r.0).filter(|_| s.min_value),
                    max_value: range.map(|r| r.1).filter(|_| s.max_value),
                }
                .serialize()
            })
        },
    ))
}

#[cfg(test)]
mod tests {
    use polars::prelude::{ArrowDataType, ArrowField, ArrowSchema, PlSmallStr};
    use polars_arrow::array::Array;
    use polars_arrow::bitmap::{Bitmap, MutableBitmap};
    use polars_parquet::parquet::encoding::uleb128;
    use polars_parquet::parquet::page::DataPageHeader;
    use polars_parquet::write::{
        CompressionOptions, Encoding, ParquetType, StatisticsOptions, array_to_columns,
        to_parquet_schema,
    };
    use proptest::prelude::*;

    use super::*;

    /// The values of a `DELTA_BINARY_PACKED` buffer, added up in a `bits`-bit integer
    /// (wrapping, as a reader of that physical type adds them), and the bytes read: a reader
    /// written from the format's description, checked on polars' encoder's bytes below.
    fn decode(bytes: &[u8], bits: u32) -> (Vec<i64>, usize) {
        let mut p = 0;
        let mut next = || {
            let (v, n) = uleb128::decode(&bytes[p..]);
            p += n;
            v
        };
        let (block, minis, count) = (next() as usize, next() as usize, next() as usize);
        let (first, n) = zigzag_leb128::decode(&bytes[p..]);
        p += n;
        let wrap = |v: i64| if bits == 32 { v as i32 as i64 } else { v };
        let mut out = Vec::new();
        if count > 0 {
            out.push(first);
        }
        while out.len() < count {
            let (min, n) = zigzag_leb128::decode(&bytes[p..]);
            p += n;
            let widths = bytes[p..p + minis].to_vec();
            p += minis;
            let per_mini = block / minis;
            for w in widths {
                if out.len() >= count {
                    break;
                }
                let w = w as usize;
                assert!(
                    w as u32 <= bits,
                    "a width of {w} bits in a {bits}-bit column"
                );
                for k in 0..per_mini {
                    let mut v = 0u64;
                    for b in 0..w {
                        let bit = k * w + b;
                        v |= u64::from((bytes[p + bit / 8] >> (bit % 8)) & 1) << b;
                    }
                    if out.len() < count {
                        let before = *out.last().unwrap();
                        out.push(wrap(before.wrapping_add(min).wrapping_add(v as i64)));
                    }
                }
                p += per_mini * w / 8;
            }
        }
        (out, p)
    }

    fn primitive(dtype: ArrowDataType) -> PrimitiveType {
        let schema = ArrowSchema::from_iter([ArrowField::new(PlSmallStr::from("v"), dtype, true)]);
        match to_parquet_schema(&schema).unwrap().fields()[0].clone() {
            ParquetType::PrimitiveType(p) => p,
            _ => panic!("flat"),
        }
    }

    fn options(page_bytes: usize) -> WriteOptions {
        WriteOptions {
            statistics: StatisticsOptions::full(),
            version: Version::V1,
            compression: CompressionOptions::Uncompressed,
            data_page_size: Some(page_bytes),
        }
    }

    /// The pages polars' writer makes of `array` as differences, beside ours: the same rows a
    /// page, headers and statistics (null counts included), definition levels and values read
    /// back; the same bytes where no page's last block is padded (polars pads it with the
    /// block before's differences, these pages with zeros).
    fn same_pages_as_polars<T: DeltaInt + Into<i64>>(
        array: &PrimitiveArray<T>,
        bits: u32,
        page_bytes: usize,
    ) -> Result<(), TestCaseError> {
        let type_ = primitive(array.dtype().clone());
        let options = options(page_bytes);
        let theirs: Vec<Page> = array_to_columns(
            array as &dyn Array,
            ParquetType::PrimitiveType(type_.clone()),
            options,
            &[Encoding::DeltaBinaryPacked],
        )
        .unwrap()
        .pop()
        .unwrap()
        .map(Result::unwrap)
        .collect();
        let ours = delta_pages(array, &type_, options).unwrap();
        prop_assert_eq!(ours.len(), theirs.len());
        let mut row = 0;
        for (o, t) in ours.iter().zip(&theirs) {
            let (Page::Data(o), Page::Data(t)) = (o, t) else {
                panic!("data pages")
            };
            let (DataPageHeader::V1(oh), DataPageHeader::V1(th)) = (o.header(), t.header()) else {
                panic!("V1")
            };
            prop_assert_eq!(oh, th);
            prop_assert_eq!(o.num_rows, t.num_rows);
            let rows = o.num_values();
            // Definition levels: their length, then the levels; the same in both.
            let levels = 4 + u32::from_le_bytes(o.buffer()[..4].try_into().unwrap()) as usize;
            prop_assert_eq!(&o.buffer()[..levels], &t.buffer()[..levels]);
            let slice = array.clone().sliced(row, rows);
            let want: Vec<i64> = slice.non_null_values_iter().map(Into::into).collect();
            let (got, used) = decode(&o.buffer()[levels..], bits);
            prop_assert_eq!(used, o.buffer().len() - levels);
            prop_assert_eq!(&got, &want);
            let padded = want.len() > BLOCK + 1 && !(want.len() - 1).is_multiple_of(BLOCK);
            if !padded {
                prop_assert_eq!(o.buffer(), t.buffer());
            }
            row += rows;
        }
        prop_assert_eq!(row, array.len());
        Ok(())
    }

    fn with_missing<T: polars_arrow::types::NativeType>(
        values: Vec<T>,
        dtype: ArrowDataType,
        missing: u8,
    ) -> PrimitiveArray<T> {
        let n = values.len();
        let validity: Option<Bitmap> = match missing {
            0 => None,
            1 => Some(Bitmap::new_with_value(true, n)),
            2 => Some((0..n).map(|i| i % 7 != 3).collect::<MutableBitmap>().into()),
            _ => Some(
                (0..n)
                    .map(|i| i >= n / 2 || i % 2 == 0)
                    .collect::<MutableBitmap>()
                    .into(),
            ),
        };
        PrimitiveArray::new(dtype, values.into(), validity)
    }

    /// Days climbing by one in runs (a subject's days) that jump between runs, as a daily
    /// table's; or values anywhere in `range`.
    fn days(range: std::ops::Range<i64>) -> impl Strategy<Value = Vec<i64>> {
        let climbing =
            proptest::collection::vec((range.clone(), 1usize..700), 1..12).prop_map(|runs| {
                runs.into_iter()
                    .flat_map(|(start, len)| (0..len as i64).map(move |k| start + k))
                    .collect()
            });
        let anywhere = proptest::collection::vec(range, 1..1500);
        prop_oneof![climbing, anywhere]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(96))]

        /// The reader of the tests reads polars' encoder's bytes as the values written.
        #[test]
        fn the_tests_reader_reads_polars_encoder(values in days(-1_000_000..1_000_000)) {
            let array = PrimitiveArray::new(ArrowDataType::Int64, values.clone().into(), None);
            let type_ = primitive(ArrowDataType::Int64);
            let page = array_to_columns(&array as &dyn Array, ParquetType::PrimitiveType(type_),
                options(1 << 20), &[Encoding::DeltaBinaryPacked])
                .unwrap().pop().unwrap().next().unwrap().unwrap();
            let Page::Data(page) = page else { panic!("a data page") };
            let levels = 4 + u32::from_le_bytes(page.buffer()[..4].try_into().unwrap()) as usize;
            prop_assert_eq!(decode(&page.buffer()[levels..], 64).0, values);
        }

        #[test]
        fn dates_are_the_pages_polars_writes(
            values in days(-30_000..60_000),
            missing in 0u8..4,
            page_bytes in prop_oneof![Just(1usize << 20), 64..4000usize],
        ) {
            let values: Vec<i32> = values.into_iter().map(|v| v as i32).collect();
            let array = with_missing(values, ArrowDataType::Date32, missing);
            same_pages_as_polars(&array, 32, page_bytes)?;
        }

        #[test]
        fn integers_of_64_bits_are_the_pages_polars_writes(
            values in prop_oneof![
                days(-1_000_000..1_000_000),
                proptest::collection::vec(any::<i64>(), 1..1500),
            ],
            missing in 0u8..4,
            page_bytes in prop_oneof![Just(1usize << 20), 64..4000usize],
        ) {
            // Any 64-bit values: differences that wrap around, widths up to 64 bits.
            let array = with_missing(values, ArrowDataType::Int64, missing);
            same_pages_as_polars(&array, 64, page_bytes)?;
        }

        /// 32-bit differences wrap in 32 bits (polars' encoder takes them in 64 bits, widths a
        /// 32-bit reader refuses): values at the type's extremes read back in 32-bit
        /// arithmetic, no width above 32 bits.
        #[test]
        fn integers_of_32_bits_take_their_differences_in_32_bits(
            values in proptest::collection::vec(
                prop_oneof![any::<i32>(), Just(i32::MIN), Just(i32::MAX), -5..5i32], 1..1500),
        ) {
            let mut out = Vec::new();
            encode(&mut out, &values);
            let (got, used) = decode(&out, 32);
            prop_assert_eq!(used, out.len());
            prop_assert_eq!(got, values.iter().map(|v| i64::from(*v)).collect::<Vec<_>>());
        }
    }

    #[test]
    fn daily_days_pay_and_runs_of_days_and_scattered_values_do_not() {
        let n = 40_000;
        let daily: Vec<i32> = (0..n)
            .map(|i| 15_000 + (i % 1_800) + 7 * (i / 1_800))
            .collect();
        let array = |v: &[i32]| PrimitiveArray::new(ArrowDataType::Date32, v.to_vec().into(), None);
        assert!(pays(&array(&daily)));
        // Missing days here and there (a diary a subject skipped) still pay.
        let skipped: Vec<i32> = daily
            .iter()
            .enumerate()
            .filter(|(i, _)| i % 9 != 4)
            .map(|(_, d)| *d)
            .collect();
        assert!(pays(&array(&skipped)));
        // A table sorted by day first: long runs of one day, which a dictionary repeats.
        let runs: Vec<i32> = (0..n).map(|i| 15_000 + i / 300).collect();
        assert!(!pays(&array(&runs)));
        // Values with no order (a lab value's day in a table sorted by parameter).
        let scattered: Vec<i32> = (0..n).map(|i| 15_000 + (i * 7_919) % 1_826).collect();
        assert!(!pays(&array(&scattered)));
        // Too few values to bother.
        assert!(!pays(&array(&daily[..100])));
    }
}
