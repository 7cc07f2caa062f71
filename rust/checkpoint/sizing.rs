//! Shard sizing as `datasets.save_to_disk` does it, computed from the
//! exported arrays themselves so a background save can size its shards in
//! the writer thread instead of the caller's.
//!
//! The byte count follows pyarrow's `Table.nbytes` (arrow C++'s
//! `ReferencedBufferSize`, the bytes of buffers the visible rows reference):
//! validity bitmaps and boolean values as the bytes covering the rows' bits,
//! fixed-width values as `len` entries, offsets as `len` entries,
//! variable-width values as the range the offsets span, list values as the
//! offsets select. A struct counts only its children, each over the
//! struct's rows shifted by the child's own offset: pyarrow leaves the
//! struct's own validity bitmap out.
//!
//! A bitmap counts whenever the producer exported one, even when the rows
//! it covers hold no null. arrow-rs drops such bitmaps on import, so the
//! count is taken from the C Data Interface arrays before they are imported.
//! Callers pass only schemas [`is_sized_natively`] accepts.

use std::ffi::CStr;

use arrow_array::ffi::{from_ffi_and_data_type, FFI_ArrowArray};
use arrow_array::ffi_stream::FFI_ArrowArrayStream;
use arrow_array::{RecordBatch, RecordBatchOptions, StructArray};
use arrow_schema::ffi::FFI_ArrowSchema;
use arrow_schema::{ArrowError, DataType, Schema, SchemaRef};

/// Whether [`exported_bytes`] knows how pyarrow counts `data_type`.
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
        DataType::Struct(fields) => fields.iter().all(|f| is_sized_natively(f.data_type())),
        other => other.primitive_width().is_some(),
    }
}

/// Bytes of the bitmap bytes bits `offset..offset + len` lie in, as arrow
/// C++'s `CoveringBytes` counts them (an empty range inside a byte counts it).
fn covering_bytes(offset: usize, len: usize) -> u64 {
    ((offset + len).div_ceil(8) - offset / 8) as u64
}

/// An offset type of a variable-width or list array.
trait OffsetValue: Copy {
    fn to_usize(self) -> Option<usize>;
}

impl OffsetValue for i32 {
    fn to_usize(self) -> Option<usize> {
        usize::try_from(self).ok()
    }
}

impl OffsetValue for i64 {
    fn to_usize(self) -> Option<usize> {
        usize::try_from(self).ok()
    }
}

/// The offsets `[offset]` and `[offset + len]` of `array`; `None` for a
/// missing buffer or offsets that go backwards.
fn offset_span<O: OffsetValue>(
    array: &FFI_ArrowArray,
    offset: usize,
    len: usize,
) -> Option<(usize, usize)> {
    let offsets = array.buffer(1).cast::<O>();
    if offsets.is_null() {
        return (len == 0).then_some((0, 0)); // an empty array may come without offsets
    }
    // SAFETY: a valid exported array of this type holds `offset + len + 1`
    // offsets from its offset on (the C Data Interface's layout); the
    // buffer need not be aligned, hence the unaligned reads.
    let (first, last) = unsafe {
        (
            offsets.add(offset).read_unaligned(),
            offsets.add(offset + len).read_unaligned(),
        )
    };
    let (first, last) = (first.to_usize()?, last.to_usize()?);
    (last >= first).then_some((first, last))
}

/// pyarrow's referenced bytes of rows `offset..offset + len` of the exported
/// `array` of type `data_type` (`offset` already includes the array's own,
/// as arrow C++ passes it down); `None` for a type it does not know.
fn referenced_bytes(
    array: &FFI_ArrowArray,
    data_type: &DataType,
    offset: usize,
    len: usize,
) -> Option<u64> {
    let values = match data_type {
        DataType::Null => return Some(0),
        DataType::Struct(fields) => return struct_bytes(array, fields, offset, len),
        DataType::Boolean => covering_bytes(offset, len),
        DataType::Utf8 | DataType::Binary => {
            let (first, last) = offset_span::<i32>(array, offset, len)?;
            4 * len as u64 + (last - first) as u64
        }
        DataType::LargeUtf8 | DataType::LargeBinary => {
            let (first, last) = offset_span::<i64>(array, offset, len)?;
            8 * len as u64 + (last - first) as u64
        }
        DataType::FixedSizeBinary(width) => u64::try_from(*width).ok()? * len as u64,
        DataType::List(field) => {
            let (first, last) = offset_span::<i32>(array, offset, len)?;
            4 * len as u64 + list_values_bytes(array, field.data_type(), first, last)?
        }
        DataType::LargeList(field) => {
            let (first, last) = offset_span::<i64>(array, offset, len)?;
            8 * len as u64 + list_values_bytes(array, field.data_type(), first, last)?
        }
        other => other.primitive_width()? as u64 * len as u64,
    };
    let validity = if array.buffer(0).is_null() {
        0
    } else {
        covering_bytes(offset, len)
    };
    Some(validity + values)
}

/// The bytes of a struct's children over its rows; pyarrow counts no
/// validity bitmap of the struct itself.
fn struct_bytes(
    array: &FFI_ArrowArray,
    fields: &arrow_schema::Fields,
    offset: usize,
    len: usize,
) -> Option<u64> {
    if array.num_children() != fields.len() {
        return None;
    }
    let mut sum = 0;
    for (i, field) in fields.iter().enumerate() {
        let child = array.child(i);
        // Row `i` of the struct is row `offset + child.offset() + i` of the child.
        sum += referenced_bytes(child, field.data_type(), offset + child.offset(), len)?;
    }
    Some(sum)
}

/// The bytes of values `first..last` of a list's child. Arrow C++ indexes
/// the child from its buffers' start, leaving the child's own offset out.
fn list_values_bytes(
    list: &FFI_ArrowArray,
    value_type: &DataType,
    first: usize,
    last: usize,
) -> Option<u64> {
    if list.num_children() != 1 {
        return None;
    }
    referenced_bytes(list.child(0), value_type, first, last - first)
}

/// pyarrow's `nbytes` of the exported `array` of type `data_type`; `None`
/// for a type [`is_sized_natively`] rejects.
pub fn exported_bytes(array: &FFI_ArrowArray, data_type: &DataType) -> Option<u64> {
    if !is_sized_natively(data_type) {
        return None;
    }
    referenced_bytes(array, data_type, array.offset(), array.len())
}

/// A C stream of record batches whose pyarrow `Table.nbytes` is counted as
/// they are imported (the count needs the bitmaps arrow-rs drops).
pub struct SizedStream {
    stream: FFI_ArrowArrayStream,
    schema: SchemaRef,
}

impl SizedStream {
    /// Takes `stream` and reads its schema.
    pub fn try_new(mut stream: FFI_ArrowArrayStream) -> Result<Self, ArrowError> {
        let get_schema = stream.get_schema().ok_or_else(|| {
            ArrowError::CDataInterface("the stream has no get_schema callback".into())
        })?;
        let mut ffi_schema = FFI_ArrowSchema::empty();
        // SAFETY: the callback is called with the stream it was read from.
        let code = unsafe { get_schema(&raw mut stream, &raw mut ffi_schema) };
        if code != 0 {
            return Err(stream_error(&mut stream, "get_schema", code));
        }
        let schema = std::sync::Arc::new(Schema::try_from(&ffi_schema)?);
        Ok(SizedStream { stream, schema })
    }

    pub fn schema(&self) -> SchemaRef {
        self.schema.clone()
    }

    /// All batches of the stream (references to their buffers, no copy) and
    /// pyarrow's `Table.nbytes` of them, `None` when the schema holds a type
    /// [`is_sized_natively`] rejects.
    pub fn read_all(mut self) -> Result<(Vec<RecordBatch>, Option<u64>), ArrowError> {
        let batch_type = DataType::Struct(self.schema.fields().clone());
        let mut nbytes = Some(0u64).filter(|_| is_sized_natively(&batch_type));
        let mut batches = Vec::new();
        while let Some(array) = self.next_array()? {
            nbytes = nbytes.and_then(|sum| Some(sum + exported_bytes(&array, &batch_type)?));
            // SAFETY: the producer exported `array` with the stream's schema.
            let data = unsafe { from_ffi_and_data_type(array, batch_type.clone()) }?;
            let rows = data.len();
            let columns = StructArray::from(data).into_parts().1;
            let options = RecordBatchOptions::new().with_row_count(Some(rows));
            batches.push(RecordBatch::try_new_with_options(
                self.schema.clone(),
                columns,
                &options,
            )?);
        }
        Ok((batches, nbytes))
    }

    /// The next exported batch; `None` at the end of the stream.
    fn next_array(&mut self) -> Result<Option<FFI_ArrowArray>, ArrowError> {
        let get_next = self.stream.get_next().ok_or_else(|| {
            ArrowError::CDataInterface("the stream has no get_next callback".into())
        })?;
        let mut array = FFI_ArrowArray::empty();
        // SAFETY: the callback is called with the stream it was read from.
        let code = unsafe { get_next(&raw mut self.stream, &raw mut array) };
        if code != 0 {
            return Err(stream_error(&mut self.stream, "get_next", code));
        }
        Ok((!array.is_released()).then_some(array))
    }
}

/// The producer's error for a failed `call` on `stream`.
fn stream_error(stream: &mut FFI_ArrowArrayStream, call: &str, code: i32) -> ArrowError {
    let message = stream.get_last_error().and_then(|get_last_error| {
        // SAFETY: the callback is called with the stream it was read from;
        // the string it returns is valid until the next call on the stream.
        let text = unsafe { get_last_error(stream) };
        (!text.is_null()).then(|| {
            // SAFETY: a non-null error is a NUL-terminated string (C stream interface).
            unsafe { CStr::from_ptr(text) }
                .to_string_lossy()
                .into_owned()
        })
    });
    ArrowError::CDataInterface(format!(
        "{call} of the Arrow C stream failed with code {code}{}",
        message.map_or(String::new(), |m| format!(": {m}"))
    ))
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
    use std::sync::Arc;

    use arrow_array::{
        Array, ArrayRef, BooleanArray, Int64Array, ListArray, StringArray, StructArray,
    };
    use arrow_buffer::NullBuffer;
    use arrow_data::ArrayData;
    use arrow_schema::{Field, Fields};

    /// The count of `data` exported through the C Data Interface, as the
    /// writer thread sees it.
    fn nbytes(data: &ArrayData) -> Option<u64> {
        exported_bytes(&FFI_ArrowArray::new(data), data.data_type())
    }

    /// A struct array of `children`, null where `valid` is false.
    fn structs(children: Vec<(&str, ArrayRef)>, valid: Option<Vec<bool>>) -> StructArray {
        let fields: Fields = children
            .iter()
            .map(|(name, a)| Field::new(*name, a.data_type().clone(), true))
            .collect();
        let arrays = children.into_iter().map(|(_, a)| a).collect();
        StructArray::new(fields, arrays, valid.map(NullBuffer::from))
    }

    fn int64s(values: impl IntoIterator<Item = Option<i64>>) -> ArrayRef {
        Arc::new(Int64Array::from_iter(values))
    }

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
        // Validity covering bits 1..4 (1 byte), 3 offsets, "cde" + "" + "fghij".
        assert_eq!(nbytes(&texts.to_data().slice(1, 3)), Some(1 + 12 + 8));
        let flags = BooleanArray::from(vec![true; 21]);
        assert_eq!(nbytes(&flags.to_data().slice(3, 9)), Some(2));
        let numbers = Int64Array::from(vec![1; 20]);
        assert_eq!(nbytes(&numbers.to_data().slice(3, 5)), Some(40));
        assert!(!is_sized_natively(&DataType::Utf8View));
    }

    #[test]
    fn a_bitmap_counts_even_where_its_rows_hold_no_null() {
        // pa.array([None if i % 7 == 0 else "x" * (i % 13) for i in range(301)]).slice(1, 6).nbytes == 46
        let texts =
            StringArray::from_iter((0..301).map(|i| (i % 7 != 0).then(|| "x".repeat(i % 13))));
        assert_eq!(nbytes(&texts.to_data().slice(1, 6)), Some(46));
        // pa.array([1, None, 3] * 5).slice(3, 0).nbytes == 1 (arrow C++'s CoveringBytes)
        let numbers = Int64Array::from_iter([Some(1), None, Some(3)].repeat(5));
        assert_eq!(nbytes(&numbers.to_data().slice(3, 0)), Some(1));
    }

    #[test]
    fn structs_count_their_children_but_not_their_own_bitmap() {
        // pa.array([None if i % 6 == 0 else {"n": i} for i in range(12)]).nbytes == 96
        let valid = (0..12).map(|i| i % 6 != 0).collect();
        let s = structs(vec![("n", int64s((0..12).map(Some)))], Some(valid));
        assert_eq!(nbytes(&s.to_data()), Some(96));
        // ... .slice(1, 9).nbytes == 72
        assert_eq!(nbytes(&s.to_data().slice(1, 9)), Some(72));
        // pa.array([{}] * 3, pa.struct([])).nbytes == 0
        let empty = StructArray::new_empty_fields(3, None);
        assert_eq!(nbytes(&empty.to_data()), Some(0));
    }

    #[test]
    fn a_struct_child_bitmap_counts_over_the_struct_rows() {
        // pa.array([{"n": None if i % 4 == 0 else i} for i in range(12)]).nbytes == 98
        let s = structs(
            vec![("n", int64s((0..12).map(|i| (i % 4 != 0).then_some(i))))],
            None,
        );
        assert_eq!(nbytes(&s.to_data()), Some(98));
        // ... .slice(1, 3).nbytes == 25 and .slice(9, 3).nbytes == 25 (no null in rows 9..12)
        assert_eq!(nbytes(&s.to_data().slice(1, 3)), Some(25));
        assert_eq!(nbytes(&s.to_data().slice(9, 3)), Some(25));
    }

    #[test]
    fn nested_structs_and_lists_follow_pyarrow() {
        // pa.array([None if i % 5 == 0 else {"o": {"x": i, "y": None if i % 2 else "s"}}
        //           for i in range(10)]).nbytes == 126, .slice(2, 7).nbytes == 90
        let y = StringArray::from_iter((0..10).map(|i| match i {
            0 | 5 => Some(""),
            i if i % 2 == 1 => None,
            _ => Some("s"),
        }));
        let inner = structs(
            vec![("x", int64s((0..10).map(Some))), ("y", Arc::new(y))],
            None,
        );
        let valid = (0..10).map(|i| i % 5 != 0).collect();
        let outer = structs(vec![("o", Arc::new(inner))], Some(valid));
        assert_eq!(nbytes(&outer.to_data()), Some(126));
        assert_eq!(nbytes(&outer.to_data().slice(2, 7)), Some(90));

        // pa.array([[{"a": i}] * (i % 3) for i in range(10)]).nbytes == 112, .slice(2, 5).nbytes == 60
        let lengths: Vec<usize> = (0..10).map(|i| i % 3).collect();
        let a: Vec<Option<i64>> = (0..10i64)
            .flat_map(|i| vec![Some(i); (i % 3) as usize])
            .collect();
        let items = structs(vec![("a", int64s(a))], None);
        let field = Arc::new(Field::new("item", items.data_type().clone(), true));
        let offsets = arrow_buffer::OffsetBuffer::from_lengths(lengths);
        let lists = ListArray::new(field, offsets, Arc::new(items), None);
        assert_eq!(nbytes(&lists.to_data()), Some(112));
        assert_eq!(nbytes(&lists.to_data().slice(2, 5)), Some(60));

        // pa.array([{"l": [1] * (i % 4), "t": "ab"} for i in range(10)]).nbytes == 204,
        // .slice(3, 4).nbytes == 88
        let ones = int64s(std::iter::repeat_n(Some(1), 13));
        let field = Arc::new(Field::new("item", DataType::Int64, true));
        let offsets = arrow_buffer::OffsetBuffer::from_lengths((0..10).map(|i| i % 4));
        let l = ListArray::new(field, offsets, ones, None);
        let t = StringArray::from(vec!["ab"; 10]);
        let s = structs(vec![("l", Arc::new(l)), ("t", Arc::new(t))], None);
        assert_eq!(nbytes(&s.to_data()), Some(204));
        assert_eq!(nbytes(&s.to_data().slice(3, 4)), Some(88));
    }
}
