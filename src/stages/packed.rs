//! One integer per row that sorts like some columns: each column's values as small codes,
//! packed side by side in a `u64` ([`packed_codes`]). A sort of plain integers then orders
//! the rows, far cheaper than comparing the columns row by row; `dedupe` finds its keys'
//! neighbours this way, and a published table is put in its `sort_by` order
//! ([`packed_order`]).

use polars::prelude::*;

/// The order of `df`'s rows by `columns` (each ascending, missing values first, text in byte
/// order; rows that tie keep their order, as a stable sort), or `None` when a column has no
/// codes ([`column_codes`]: floating point, booleans, `UInt64`, ...) or the codes and the row
/// numbers do not fit in 64 bits together: the caller then sorts by the columns themselves.
pub(crate) fn packed_order(df: &DataFrame, columns: &[String]) -> PolarsResult<Option<IdxCa>> {
    let Some((values, bits)) = packed_codes(df, columns)? else {
        return Ok(None);
    };
    let Some((values, row_bits)) = with_rows_sorted(values, &bits) else {
        return Ok(None);
    };
    let mask = low_bits(row_bits);
    let rows: Vec<IdxSize> = values.iter().map(|&p| (p & mask) as IdxSize).collect();
    Ok(Some(IdxCa::from_vec(PlSmallStr::EMPTY, rows)))
}

/// `packed` (codes `bits` wide, [`packed_codes`]) with each row's number shifted in below its
/// codes, sorted, and the number of bits the row numbers take; `None` when they do not fit
/// in 64 bits. Every value is then distinct, so the order is that of a stable sort by the
/// codes, and each value's lowest bits are its row.
pub(crate) fn with_rows_sorted(mut packed: Vec<u64>, bits: &[u32]) -> Option<(Vec<u64>, u32)> {
    use rayon::prelude::*;
    let n = packed.len();
    let row_bits = 64 - (n.saturating_sub(1) as u64).leading_zeros();
    if bits.iter().sum::<u32>() + row_bits > 64 {
        return None;
    }
    for (row, p) in packed.iter_mut().enumerate() {
        *p = p.checked_shl(row_bits).unwrap_or(0) | row as u64;
    }
    // Stable and unstable sorts agree on distinct values; the stable one finds the runs
    // already in order (most files list a subject's days in order; a table sorted by its
    // first keys is in order within them) and merges them.
    packed.par_sort();
    Some((packed, row_bits))
}

/// A mask of the lowest `bits` bits.
pub(crate) fn low_bits(bits: u32) -> u64 {
    1u64.checked_shl(bits).map_or(u64::MAX, |b| b - 1)
}

/// One integer per row that sorts like `columns`, as a vector: each column's codes
/// ([`column_codes`]) shifted in after the columns before, in one pass per column over one
/// vector, and the bits each column's code takes (the last column's in the lowest bits).
/// `None` when a column has no codes or they do not fit in 64 bits together.
pub(crate) fn packed_codes(
    df: &DataFrame,
    columns: &[String],
) -> PolarsResult<Option<(Vec<u64>, Vec<u32>)>> {
    let mut codes: Vec<Codes> = Vec::with_capacity(columns.len());
    for c in columns {
        match column_codes(df.column(c)?)? {
            Some(code) => codes.push(code),
            None => return Ok(None),
        }
    }
    let widths: Vec<u32> = codes
        .iter()
        .map(|c| 64 - c.largest().leading_zeros())
        .collect();
    if widths.iter().sum::<u32>() > 64 {
        return Ok(None);
    }
    // Each row's code is shifted in after the columns before's: read, then written.
    let mut packed: Vec<u64> = super::written_zeros(df.height());
    for (code, &bits) in codes.iter().zip(&widths) {
        if bits == 0 {
            continue;
        }
        match code {
            Codes::Runs { spans, codes, .. } => {
                for (&[start, len], &c) in spans.iter().zip(codes) {
                    let (start, len) = (start as usize, len as usize);
                    packed[start..start + len]
                        .iter_mut()
                        .for_each(|p| shift_in(p, bits, c));
                }
            }
            Codes::Ints { values, min, .. } => shift_in_ints(values, *min, bits, &mut packed)?,
        }
    }
    Ok(Some((packed, widths)))
}

/// Shifts code `c`, `bits` wide, in after the bits already in `p` (the columns before's).
#[inline]
fn shift_in(p: &mut u64, bits: u32, c: u64) {
    *p = p.checked_shl(bits).unwrap_or(0) | c;
}

/// Shifts each value of `values` (the physical integers of a [`Codes::Ints`]) in after the
/// bits already in its row of `packed`, as its distance from `min` plus one (0 when missing),
/// `bits` wide. The values are read in their own width: no copy of the column as `i64`.
fn shift_in_ints(values: &Series, min: i64, bits: u32, packed: &mut [u64]) -> PolarsResult<()> {
    fn shift<T>(values: &ChunkedArray<T>, min: i64, bits: u32, packed: &mut [u64])
    where
        T: PolarsNumericType,
        T::Native: Into<i64>,
    {
        let mut p = packed.iter_mut();
        for a in values.downcast_iter() {
            let valid = a.validity();
            for (i, &x) in a.values().iter().enumerate() {
                // x - min is below 2^64 - 1 (checked by `column_codes`), so the wrapping
                // difference is exact; a missing value is 0.
                let c = match valid {
                    Some(v) if !v.get_bit(i) => 0,
                    _ => x.into().wrapping_sub(min) as u64 + 1,
                };
                if let Some(p) = p.next() {
                    shift_in(p, bits, c);
                }
            }
        }
    }
    match values.dtype() {
        DataType::Int8 => shift(values.i8()?, min, bits, packed),
        DataType::Int16 => shift(values.i16()?, min, bits, packed),
        DataType::Int32 => shift(values.i32()?, min, bits, packed),
        DataType::Int64 => shift(values.i64()?, min, bits, packed),
        DataType::UInt8 => shift(values.u8()?, min, bits, packed),
        DataType::UInt16 => shift(values.u16()?, min, bits, packed),
        DataType::UInt32 => shift(values.u32()?, min, bits, packed),
        dt => polars_bail!(ComputeError: "no integer codes for {dt}"),
    }
    Ok(())
}

/// One column's codes for [`packed_codes`] (0 for a missing value).
enum Codes {
    /// Text: a code per run of equal rows (`spans`, each run's first row and length), the
    /// value's place among the column's distinct values, plus one; `distinct` values.
    Runs {
        spans: Vec<[IdxSize; 2]>,
        codes: Vec<u64>,
        distinct: u64,
    },
    /// Integers (dates included) in their physical type (any integer type but `UInt64`):
    /// each value's distance from the smallest (`min`), plus one; the largest code is
    /// `largest`.
    Ints {
        values: Series,
        min: i64,
        largest: u64,
    },
}

impl Codes {
    fn largest(&self) -> u64 {
        match self {
            Codes::Runs { distinct, .. } => *distinct,
            Codes::Ints { largest, .. } => *largest,
        }
    }
}

/// One column's codes ([`Codes`]), or `None` for a type without codes or an integer range
/// wider than 64 bits.
fn column_codes(column: &Column) -> PolarsResult<Option<Codes>> {
    let n = column.len();
    match column.dtype() {
        DataType::String => {
            // The distinct values are sorted once, and each run's value is looked up once.
            let r = crate::stages::places_of_runs(column.as_materialized_series(), |run_values| {
                run_values.drop_nulls().unique()?.sort(Default::default())
            })?;
            // Missing values (not found) first, as code 0.
            let codes = (r.place.into_no_null_iter().zip(r.found.iter()))
                .map(|(p, f)| if f == Some(true) { u64::from(p) + 1 } else { 0 })
                .collect();
            Ok(Some(Codes::Runs {
                spans: crate::stages::run_spans(&r.first_rows, n),
                codes,
                distinct: r.sorted as u64,
            }))
        }
        // (UInt64 may not fit the i64 the codes are computed in.)
        dt if (dt.is_integer() && *dt != DataType::UInt64) || matches!(dt, DataType::Date) => {
            let values = column
                .as_materialized_series()
                .to_physical_repr()
                .into_owned();
            let (Some(min), Some(max)) = (values.min::<i64>()?, values.max::<i64>()?) else {
                return Ok(Some(Codes::Ints {
                    values,
                    min: 0,
                    largest: 0,
                }));
            };
            let span = max as i128 - min as i128 + 1;
            if span > u64::MAX as i128 {
                return Ok(None);
            }
            Ok(Some(Codes::Ints {
                values,
                min,
                largest: span as u64,
            }))
        }
        _ => Ok(None),
    }
}
