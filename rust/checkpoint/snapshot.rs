//! The snapshot of a background save: batches whose every buffer stays as
//! it was when the caller handed them over.
//!
//! Arrow buffers are immutable by contract, but the memory behind them need
//! not be: pyarrow wraps numpy arrays without a copy (`pa.array(ndarray)`,
//! `Table.from_pandas`), and a table read from a memory-mapped file shows
//! whatever the file holds now (a truncated file makes the read a SIGBUS).
//! Nothing in the Arrow C Data Interface says who owns a buffer, so a buffer
//! is kept by reference only where its address proves it is memory of
//! pyarrow's own allocator (see [`MemoryMap::is_pool_memory`]); every other
//! buffer is copied before the caller gets control back.

use std::fs;

use arrow_array::{Array, ArrayRef, RecordBatch, RecordBatchOptions, StructArray};
use arrow_buffer::{BooleanBuffer, Buffer, NullBuffer};
use arrow_data::ArrayData;

use super::error::{CheckpointError, Result};

/// Where mimalloc (pyarrow's default memory pool on Linux) places the memory
/// it asks the OS for: it passes aligned address hints from 2 TiB up and
/// wraps at 30 TiB (`MI_HINT_BASE`, `MI_HINT_MAX` in mimalloc's `os.c`).
/// Without a hint Linux maps top-down from just below the stack (near
/// 128 TiB) or, in the legacy layout, bottom-up from 42 TiB; `brk` heaps
/// lie next to the executable. So an anonymous mapping in this window is
/// mimalloc's. Memory of other allocators (numpy's malloc, jemalloc, the
/// system pool) lies outside it and is copied.
const POOL_WINDOW: std::ops::Range<u64> = (2 << 40)..(30 << 40);

/// One line of `/proc/self/maps`: `start..end`, and whether a file (or a
/// device, a shared memory object, huge pages) backs it.
#[derive(Debug, Clone, Copy)]
struct Mapping {
    start: u64,
    end: u64,
    file_backed: bool,
}

/// The mappings of this process at the moment of the snapshot.
pub struct MemoryMap {
    mappings: Vec<Mapping>,
}

impl MemoryMap {
    /// Reads `/proc/self/maps`; `None` where it cannot be read (then every
    /// buffer is copied).
    pub fn read() -> Option<Self> {
        let text = fs::read_to_string("/proc/self/maps").ok()?;
        Some(Self::parse(&text))
    }

    fn parse(text: &str) -> Self {
        let mut mappings: Vec<Mapping> = text.lines().filter_map(parse_line).collect();
        mappings.sort_by_key(|m| m.start);
        MemoryMap { mappings }
    }

    /// The mapping holding byte `address`, if any.
    fn find(&self, address: u64) -> Option<&Mapping> {
        let i = self.mappings.partition_point(|m| m.start <= address);
        let m = self.mappings.get(i.checked_sub(1)?)?;
        (address < m.end).then_some(m)
    }

    /// Whether `len` bytes at `ptr` are memory of pyarrow's allocator:
    /// anonymous, private to this process, in [`POOL_WINDOW`].
    pub fn is_pool_memory(&self, ptr: *const u8, len: usize) -> bool {
        let start = ptr as u64;
        let Some(last) = start.checked_add((len as u64).max(1) - 1) else {
            return false;
        };
        if !POOL_WINDOW.contains(&start) || !POOL_WINDOW.contains(&last) {
            return false;
        }
        // Adjacent mappings of one allocator: every byte must be anonymous.
        let mut at = start;
        while at <= last {
            match self.find(at) {
                Some(m) if !m.file_backed => at = m.end,
                _ => return false,
            }
        }
        true
    }
}

/// `start-end perms offset dev inode [path]`; anonymous when the inode is 0
/// and the path is empty or a kernel name such as `[heap]` or `[anon:…]`.
fn parse_line(line: &str) -> Option<Mapping> {
    let mut fields = line.split_whitespace();
    let (start, end) = fields.next()?.split_once('-')?;
    let perms = fields.next()?;
    let inode = fields.nth(2)?;
    let path = fields.next().unwrap_or("");
    let shared = perms.as_bytes().get(3) == Some(&b's');
    Some(Mapping {
        start: u64::from_str_radix(start, 16).ok()?,
        end: u64::from_str_radix(end, 16).ok()?,
        file_backed: shared || inode != "0" || !(path.is_empty() || path.starts_with('[')),
    })
}

/// Bytes a snapshot copied and kept by reference.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct SnapshotBytes {
    pub copied: u64,
    pub referenced: u64,
}

/// `batches` with every buffer not provably pyarrow's own replaced by a
/// copy. Fails with an out-of-memory error, not an abort, when a copy
/// cannot be allocated.
pub fn detach_batches(
    batches: Vec<RecordBatch>,
    memory: Option<&MemoryMap>,
) -> Result<(Vec<RecordBatch>, SnapshotBytes)> {
    let mut bytes = SnapshotBytes::default();
    let mut out = Vec::new();
    out.try_reserve_exact(batches.len())
        .map_err(|_| out_of_memory(batches.len() as u64 * 64))?;
    for batch in batches {
        let rows = batch.num_rows();
        let schema = batch.schema();
        let data = StructArray::from(batch).into_data();
        let data = detach(&data, memory, &mut bytes)?;
        let columns: Vec<ArrayRef> = StructArray::from(data).into_parts().1;
        let options = RecordBatchOptions::new().with_row_count(Some(rows));
        let batch = RecordBatch::try_new_with_options(schema, columns, &options)
            .map_err(|e| CheckpointError::Internal(format!("snapshot of a batch: {e}")))?;
        out.push(batch);
    }
    Ok((out, bytes))
}

fn detach(
    data: &ArrayData,
    memory: Option<&MemoryMap>,
    bytes: &mut SnapshotBytes,
) -> Result<ArrayData> {
    let buffers = data
        .buffers()
        .iter()
        .map(|b| own(b, memory, bytes))
        .collect::<Result<Vec<_>>>()?;
    let nulls = match data.nulls() {
        Some(nulls) => {
            let bits = nulls.inner();
            let buffer = own(bits.inner(), memory, bytes)?;
            let bits = BooleanBuffer::new(buffer, bits.offset(), bits.len());
            // SAFETY: the same bits as before, so the same null count.
            Some(unsafe { NullBuffer::new_unchecked(bits, nulls.null_count()) })
        }
        None => None,
    };
    let children = data
        .child_data()
        .iter()
        .map(|c| detach(c, memory, bytes))
        .collect::<Result<Vec<_>>>()?;
    let builder = data
        .clone()
        .into_builder()
        .buffers(buffers)
        .nulls(nulls)
        .child_data(children);
    // SAFETY: every buffer holds the bytes it held in `data`, which is valid.
    Ok(unsafe { builder.build_unchecked() })
}

/// `buffer` itself when it is pyarrow's memory, else a copy.
fn own(buffer: &Buffer, memory: Option<&MemoryMap>, bytes: &mut SnapshotBytes) -> Result<Buffer> {
    let len = buffer.len();
    if len == 0 || memory.is_some_and(|m| m.is_pool_memory(buffer.as_ptr(), len)) {
        bytes.referenced += len as u64;
        return Ok(buffer.clone());
    }
    bytes.copied += len as u64;
    copy_aligned(buffer.as_slice())
}

/// A copy of `bytes` in memory aligned for any Arrow value type (16 bytes).
fn copy_aligned(bytes: &[u8]) -> Result<Buffer> {
    let words = bytes.len().div_ceil(16);
    let mut copy: Vec<u128> = Vec::new();
    copy.try_reserve_exact(words)
        .map_err(|_| out_of_memory(bytes.len() as u64))?;
    copy.resize(words, 0);
    // SAFETY: `copy` holds `words * 16 >= bytes.len()` initialised bytes.
    let target =
        unsafe { std::slice::from_raw_parts_mut(copy.as_mut_ptr().cast::<u8>(), words * 16) };
    target[..bytes.len()].copy_from_slice(bytes);
    Ok(Buffer::from_vec(copy).slice_with_length(0, bytes.len()))
}

fn out_of_memory(needed: u64) -> CheckpointError {
    CheckpointError::NoMemory {
        what: "the snapshot of a background save (a copy of memory the caller can still change)"
            .into(),
        needed,
        available: super::memory::available_memory(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    use arrow_array::{Int64Array, StringArray};
    use arrow_schema::{DataType, Field, Schema};

    const MAPS: &str = "\
55d0c0a00000-55d0c0c00000 rw-p 00000000 00:00 0                          [heap]
20000000000-20004000000 rw-p 00000000 00:00 0 \n\
20004000000-20008000000 rw-p 00000000 00:00 0 \n\
30000000000-30000100000 r--s 00000000 08:01 1234                       /data/x.arrow
40000000000-40000100000 rw-s 00000000 00:05 99                         /dev/zero (deleted)
7f0000000000-7f0000100000 rw-p 00000000 00:00 0 ";

    #[test]
    fn only_anonymous_memory_in_the_pool_window_is_kept() {
        let map = MemoryMap::parse(MAPS);
        let at = |a: u64| a as *const u8;
        assert!(map.is_pool_memory(at(0x200_0000_0000), 4096));
        // Across two adjacent anonymous mappings.
        assert!(map.is_pool_memory(at(0x200_03ff_f000), 0x2000));
        // Past the end of every mapping.
        assert!(!map.is_pool_memory(at(0x200_07ff_f000), 0x2000));
        assert!(
            !map.is_pool_memory(at(0x300_0000_0000), 16),
            "a mapped file"
        );
        assert!(
            !map.is_pool_memory(at(0x400_0000_0000), 16),
            "shared memory"
        );
        assert!(
            !map.is_pool_memory(at(0x7f00_0000_0000), 16),
            "outside the window"
        );
        assert!(
            !map.is_pool_memory(at(0x55d0_c0a0_0000), 16),
            "the brk heap"
        );
    }

    #[test]
    fn unprovable_buffers_are_copied_and_the_rows_stay_equal() {
        let schema = Arc::new(Schema::new(vec![
            Field::new("n", DataType::Int64, true),
            Field::new("s", DataType::Utf8, true),
        ]));
        let batch = RecordBatch::try_new(
            schema,
            vec![
                Arc::new(Int64Array::from(vec![Some(1), None, Some(3)])),
                Arc::new(StringArray::from(vec![Some("a"), Some("bc"), None])),
            ],
        )
        .unwrap()
        .slice(1, 2);
        let (copied, bytes) = detach_batches(vec![batch.clone()], None).unwrap();
        assert_eq!(copied[0], batch);
        assert!(bytes.copied > 0 && bytes.referenced == 0, "{bytes:?}");
        let original = batch.column(0).to_data().buffers()[0].as_ptr();
        assert_ne!(
            copied[0].column(0).to_data().buffers()[0].as_ptr(),
            original
        );
    }
}
