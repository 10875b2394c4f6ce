//! Parquet column chunks as polars' writer encodes them, with two of its steps taken a cheaper
//! way, and tables written through them.
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
//!   are the same bytes. A column with more runs than half its rows is left to polars' own
//!   steps, which then make the same choice they always did (a dictionary, or plain when the
//!   values are mostly distinct);
//! - writes a floating-point column plain at once, which is what polars' steps end in.

use polars::prelude::*;
use polars_arrow::array::Utf8ViewArray;
use polars_arrow::array::{Array, DictionaryArray, MutableBinaryViewArray, PrimitiveArray};
use polars_arrow::datatypes::{ArrowDataType, IntegerType};
use polars_parquet::write::{CompressedPage, Encoding, ParquetType, WriteOptions};

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
    /// writer makes of it (see the module's comment for the two steps taken otherwise).
    pub fn encode(&self, i: usize, array: &dyn Array) -> PolarsResult<ChunkPages> {
        use polars_parquet::read::ParquetError;
        use polars_parquet::write::{Compressor, array_to_columns};
        let mut encodings = self.encodings[i].clone();
        let mut dictionary = None;
        if encodings == [Encoding::RleDictionary] {
            match array.dtype() {
                ArrowDataType::Float32 | ArrowDataType::Float64 => {
                    encodings = vec![Encoding::Plain];
                }
                ArrowDataType::Utf8View => {
                    let text = array.as_any().downcast_ref::<Utf8ViewArray>();
                    dictionary = text.and_then(dictionary_of_runs);
                }
                _ => {}
            }
        }
        let array: &dyn Array = match &dictionary {
            Some(d) => d,
            None => array,
        };
        array_to_columns(array, self.types[i].clone(), self.options, &encodings)?
            .into_iter()
            .map(|pages| {
                let pages = pages.map(|page| {
                    page.map_err(|e| ParquetError::FeatureNotSupported(format!("{e}")))
                });
                Compressor::new_from_vec(pages, self.options.compression, vec![])
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(PolarsError::from)
            })
            .collect()
    }
}

/// `text` as a dictionary array (keys `u32`), built from its runs: each row is compared with the
/// row before, and only a row that starts a run is looked up among the values seen. The values
/// are in order of first appearance and null rows have null keys, as in the dictionary polars'
/// cast builds (`polars_compute::cast`, hashing every row). `None` when the column has more runs
/// than half its rows (the lookups would save little; polars' writer then decides as before).
pub fn dictionary_of_runs(text: &Utf8ViewArray) -> Option<DictionaryArray<u32>> {
    let n = text.len();
    if n == 0 {
        return None;
    }
    let validity = text.validity();
    let views = text.views();
    // Two views of one value are equal when the value is inline (12 bytes or fewer) or both
    // point to the same place; otherwise the bytes are compared when length and prefix agree.
    // SAFETY: `a` and `b` are below the array's length.
    let same = |a: usize, b: usize| {
        let (x, y) = (views[a], views[b]);
        x.as_u128() == y.as_u128()
            || (x.length == y.length
                && x.length > 12
                && x.prefix == y.prefix
                && unsafe { text.value_unchecked(a) == text.value_unchecked(b) })
    };
    let mut seen: PlHashMap<&str, u32> = PlHashMap::default();
    let mut values = MutableBinaryViewArray::<str>::new();
    let mut keys = Vec::with_capacity(n);
    let (mut runs, mut key) = (0usize, 0u32);
    // The row before, when it is not null.
    let mut before: Option<usize> = None;
    for i in 0..n {
        if validity.is_some_and(|v| !v.get_bit(i)) {
            keys.push(0);
            before = None;
            continue;
        }
        if before.is_none_or(|b| !same(b, i)) {
            runs += 1;
            if runs > n / 2 {
                return None;
            }
            // SAFETY: `i < n`.
            let value = unsafe { text.value_unchecked(i) };
            key = *seen.entry(value).or_insert_with(|| {
                values.push_value(value);
                (values.len() - 1) as u32
            });
        }
        keys.push(key);
        before = Some(i);
    }
    let keys = PrimitiveArray::new(ArrowDataType::UInt32, keys.into(), validity.cloned());
    let dtype =
        ArrowDataType::Dictionary(IntegerType::UInt32, Box::new(text.dtype().clone()), false);
    let values: Utf8ViewArray = values.into();
    DictionaryArray::try_new(dtype, keys, values.boxed()).ok()
}

/// Writes `df` to `writer` (polars' batched writer, with the table's footer settings) in the row
/// groups polars' writer gives a table written whole (up to 512 x 512 rows, the table's chunks
/// gathered or split evenly), each group's columns encoded on the thread pool with
/// [`ColumnEncoder`]: the file polars' `ParquetWriter::finish` makes, byte for byte.
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
    use proptest::prelude::*;

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
        // The files are polars' own, byte for byte, with floats (few values, many, nulls) and
        // integers beside them, in several row groups (600,000 rows, three chunks).
        let n = 600_000usize;
        let df = df!(
            "t" => (0..n).map(|i| values[(i / 7) % values.len()]).collect::<Vec<_>>(),
            "u" => (0..n).map(|i| format!("S-{i:07}")).collect::<Vec<_>>(),
            "few" => (0..n).map(|i| (i / 1000 % 4) as f64 / 2.0).collect::<Vec<_>>(),
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
            let (polars_bytes, our_bytes) = both_files(&df);
            assert!(polars_bytes == our_bytes);
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]
        #[test]
        fn text_columns_are_written_as_polars_writes_them(
            runs in proptest::collection::vec((0usize..16, 1usize..40, any::<bool>()), 1..80)
        ) {
            // Runs of values drawn from a few, short and long, some null.
            let pool = ["", "a", "nih", "site-b", "S-000123", "twelve-bytes", "thirteen-byte",
                "a much longer value"];
            let mut values: Vec<Option<&str>> = Vec::new();
            for (v, len, null) in runs {
                let value = (!null || v % 2 == 0).then_some(pool[v % pool.len()]);
                values.extend(std::iter::repeat_n(value, len));
            }
            let df = DataFrame::new(values.len(), vec![text(&values).into_column()]).unwrap();
            let (polars_bytes, our_bytes) = both_files(&df);
            prop_assert!(polars_bytes == our_bytes);
        }
    }
}
