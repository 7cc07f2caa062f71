//! Shard sizing as `datasets.save_to_disk` does it, computed from the
//! record batches themselves so a background save can size its shards in
//! the writer thread instead of the caller's.
//!
//! The byte count follows pyarrow's `Table.nbytes` (the bytes of buffers the
//! visible rows reference): validity bitmaps and fixed-width values as the
//! bytes covering the slice, offsets as `len` entries, variable-width values
//! as the range the offsets span, list values as the offsets select.
//! Callers pass only schemas [`is_sized_natively`] accepts.

use arrow_array::RecordBatch;
use arrow_buffer::ArrowNativeType;
use arrow_data::ArrayData;
use arrow_schema::DataType;

/// Whether [`referenced_bytes`] knows how pyarrow counts `data_type`.
pub fn is_sized_natively(data_type: &DataType) -> bool {
    match data_type {
        DataType::Null
        | DataType::Boolean
        | DataType::Utf8
        | DataType::LargeUtf8
        | DataType::Binary
        | DataType::LargeBinary
        | DataType::FixedSizeBinary(_) => true,
        DataType::List(f) | DataType::LargeList(f) => is_sized_natively(f.data_type()),
        // Not structs: their count here differs from pyarrow's.
        other => other.primitive_width().is_some(),
    }
}

/// Bytes of the bitmap bits `offset..offset + len` lie in.
fn covering_bytes(offset: usize, len: usize) -> u64 {
    if len == 0 {
        return 0;
    }
    ((offset + len).div_ceil(8) - offset / 8) as u64
}

/// The span `[first, last]` of the offsets of `data`'s visible rows.
/// `None` when the offsets buffer is shorter than the rows need.
fn offset_span<O: ArrowNativeType + Into<i64>>(data: &ArrayData) -> Option<(usize, usize)> {
    if data.is_empty() {
        return Some((0, 0)); // an empty array may come without offsets
    }
    let offsets = data.buffer::<O>(0); // from the array's offset on
    let first: i64 = (*offsets.first()?).into();
    let last: i64 = (*offsets.get(data.len())?).into();
    Some((
        usize::try_from(first).ok()?,
        usize::try_from(last).ok()?.max(first as usize),
    ))
}

/// pyarrow's `Array.nbytes` of `data`; `None` for a type it does not know.
pub fn referenced_bytes(data: &ArrayData) -> Option<u64> {
    let (offset, len) = (data.offset(), data.len());
    let validity = data
        .nulls()
        .map_or(0, |n| covering_bytes(n.offset(), n.len()));
    let values = match data.data_type() {
        DataType::Null => return Some(0),
        DataType::Boolean => covering_bytes(offset, len),
        DataType::Utf8 | DataType::Binary => {
            let (first, last) = offset_span::<i32>(data)?;
            4 * len as u64 + (last - first) as u64
        }
        DataType::LargeUtf8 | DataType::LargeBinary => {
            let (first, last) = offset_span::<i64>(data)?;
            8 * len as u64 + (last - first) as u64
        }
        DataType::FixedSizeBinary(width) => *width as u64 * len as u64,
        DataType::List(_) => {
            let (first, last) = offset_span::<i32>(data)?;
            4 * len as u64 + child_bytes(data, first, last)?
        }
        DataType::LargeList(_) => {
            let (first, last) = offset_span::<i64>(data)?;
            8 * len as u64 + child_bytes(data, first, last)?
        }
        DataType::Struct(_) => return None,
        other => other.primitive_width()? as u64 * len as u64,
    };
    Some(validity + values)
}

/// Bytes of the values `first..last` of a list's child.
fn child_bytes(list: &ArrayData, first: usize, last: usize) -> Option<u64> {
    let child = list.child_data().first()?;
    if last > child.len() {
        return None;
    }
    referenced_bytes(&child.slice(first, last - first))
}

/// pyarrow's `Table.nbytes` of the table `batches` make up.
pub fn batches_bytes(batches: &[RecordBatch]) -> Option<u64> {
    let mut sum = 0;
    for batch in batches {
        for column in batch.columns() {
            sum += referenced_bytes(&column.to_data())?;
        }
    }
    Some(sum)
}

/// Rows per shard `datasets.save_to_disk(num_proc=num_proc)` would give
/// `rows` visible rows of `nbytes` bytes; `None` for no rows.
pub fn datasets_rows_per_shard(
    nbytes: u64,
    rows: u64,
    num_proc: u64,
    max_shard_bytes: u64,
) -> Option<u64> {
    if rows == 0 {
        return None;
    }
    let by_size = nbytes / max_shard_bytes.max(1) + 1;
    let shards = by_size.max(num_proc.max(1)).min(rows).max(1);
    Some(rows.div_ceil(shards))
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow_array::{Array, BooleanArray, Int64Array, StringArray};

    #[test]
    fn shard_count_follows_datasets() {
        // max(nbytes // limit + 1, num_proc) shards, at most one per row.
        assert_eq!(datasets_rows_per_shard(100, 10, 1, 100), Some(5));
        assert_eq!(datasets_rows_per_shard(99, 10, 1, 100), Some(10));
        assert_eq!(datasets_rows_per_shard(0, 10, 4, 100), Some(3));
        assert_eq!(datasets_rows_per_shard(10_000, 3, 1, 1), Some(1));
        assert_eq!(datasets_rows_per_shard(5, 0, 2, 100), None);
    }

    #[test]
    fn slices_count_the_bytes_they_reference() {
        let texts = StringArray::from(vec![
            Some("ab"),
            Some("cde"),
            None,
            Some("fghij"),
            Some("k"),
        ]);
        // Validity covering bits 1..5 (1 byte), 3 offsets, "cde" + "" + "fghij".
        assert_eq!(
            referenced_bytes(&texts.slice(1, 3).to_data()),
            Some(1 + 12 + 8)
        );
        let flags = BooleanArray::from(vec![true; 21]);
        assert_eq!(referenced_bytes(&flags.slice(3, 9).to_data()), Some(2));
        let numbers = Int64Array::from(vec![1; 20]);
        assert_eq!(referenced_bytes(&numbers.slice(3, 5).to_data()), Some(40));
        assert!(!is_sized_natively(&DataType::Utf8View));
    }
}
