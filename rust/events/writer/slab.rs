//! `Slab`: one of the writer's two preallocated buffers, which producers
//! fill without a lock: one atomic add on `reserved` reserves room for a
//! line (bytes and line count in one word), one on `committed` publishes
//! the copy; the flush thread seals it with an atomic or and waits only for
//! the copies still in progress.

use std::io;
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU64, Ordering};

/// A buffer's `reserved` word: bytes in the low 40 bits, lines above them,
/// and the sealed flag on top, so that one atomic add reserves both.
const BYTES_BITS: u32 = 40;
const BYTES_MASK: u64 = (1 << BYTES_BITS) - 1;
const ONE_LINE: u64 = 1 << BYTES_BITS;
const SEALED: u64 = 1 << 63;
/// Most lines a buffer may hold (the line count must not reach `SEALED`).
const MAX_LINES: usize = 1 << 22;
/// `overflow_at` of a buffer nobody overflowed.
const NO_OVERFLOW: u64 = u64::MAX;

fn reserved_bytes(word: u64) -> u64 {
    word & BYTES_MASK
}

fn reserved_lines(word: u64) -> u64 {
    (word & !SEALED) >> BYTES_BITS
}

/// One preallocated buffer that producers fill without locks.
pub(super) struct Slab {
    base: NonNull<u8>,
    capacity: usize,
    max_lines: u64,
    /// Bytes and lines reserved, plus [`SEALED`] once the flush thread took
    /// the buffer (or before it is made active).
    reserved: AtomicU64,
    /// Bytes copied in by producers (whole reservations).
    committed: AtomicU64,
    /// Offset of the first reservation that did not fit ([`NO_OVERFLOW`]):
    /// the end of the lines the buffer holds.
    overflow_at: AtomicU64,
}

// SAFETY: the bytes behind `base` are written only by the producer that
// reserved them (disjoint ranges, handed out by the atomic add on
// `reserved`) and read by the flush thread only after `committed` shows
// every reservation of the sealed buffer copied (Release/Acquire).
unsafe impl Send for Slab {}
// SAFETY: as for `Send`: all shared access goes through the atomics above.
unsafe impl Sync for Slab {}

impl Slab {
    /// A zeroed buffer of `capacity` bytes; `OutOfMemory` (not an abort)
    /// when it cannot be allocated, e.g. under `RLIMIT_AS`.
    pub(super) fn new(capacity: usize, max_lines: usize, sealed: bool) -> io::Result<Self> {
        let capacity = capacity.max(1);
        let layout = std::alloc::Layout::array::<u8>(capacity)
            .map_err(|_| io::Error::from(io::ErrorKind::OutOfMemory))?;
        // SAFETY: `layout` has a non-zero size. Freed in `drop` as the boxed
        // slice of `capacity` bytes it has the layout of.
        let base = NonNull::new(unsafe { std::alloc::alloc_zeroed(layout) }).ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::OutOfMemory,
                format!("cannot allocate an event buffer of {capacity} bytes"),
            )
        })?;
        Ok(Slab {
            base,
            capacity,
            max_lines: max_lines.clamp(1, MAX_LINES) as u64,
            reserved: AtomicU64::new(if sealed { SEALED } else { 0 }),
            committed: AtomicU64::new(0),
            overflow_at: AtomicU64::new(NO_OVERFLOW),
        })
    }

    /// Reserves room for `line` and copies it in. `Err(true)`: the buffer
    /// is sealed (try the active one again); `Err(false)`: it is full.
    pub(super) fn append(&self, line: &[u8]) -> Result<u64, bool> {
        let len = line.len() as u64;
        let before = self.reserved.fetch_add(ONE_LINE + len, Ordering::AcqRel);
        if before & SEALED != 0 {
            return Err(true);
        }
        let offset = reserved_bytes(before);
        if offset + len > self.capacity as u64 || reserved_lines(before) >= self.max_lines {
            self.overflow_at.fetch_min(offset, Ordering::AcqRel);
            return Err(false);
        }
        // SAFETY: `offset..offset + len` lies inside the buffer (checked
        // above) and was reserved by this call alone; the flush thread does
        // not read it before the `committed` add below.
        unsafe {
            std::ptr::copy_nonoverlapping(
                line.as_ptr(),
                self.base.as_ptr().add(offset as usize),
                line.len(),
            );
        }
        self.committed.fetch_add(len, Ordering::Release);
        Ok(offset + len)
    }

    /// Whether lines wait here, and whether the buffer is full enough to be
    /// written now (at `max_batch_bytes`, or a producer waits for room).
    pub(super) fn fill(&self, max_batch_bytes: usize) -> (bool, bool) {
        let word = self.reserved.load(Ordering::Acquire);
        let bytes = reserved_bytes(word);
        let full = bytes >= max_batch_bytes as u64
            || reserved_lines(word) >= self.max_lines
            || self.overflow_at.load(Ordering::Acquire) != NO_OVERFLOW;
        (bytes > 0, bytes > 0 && full)
    }

    /// Makes this (sealed, written) buffer empty and open to producers.
    pub(super) fn reopen(&self) {
        self.committed.store(0, Ordering::Relaxed);
        self.overflow_at.store(NO_OVERFLOW, Ordering::Relaxed);
        self.reserved.store(0, Ordering::Release);
    }

    /// Seals the buffer and waits until every line reserved before the seal
    /// is copied in; returns those lines' bytes.
    pub(super) fn seal(&self) -> &[u8] {
        let word = self.reserved.fetch_or(SEALED, Ordering::AcqRel);
        let reserved = reserved_bytes(word);
        let mut spins = 0u32;
        loop {
            // A reservation that did not fit records where the lines end
            // just after its add: until then, `end` is past what is copied.
            let end = reserved.min(self.overflow_at.load(Ordering::Acquire));
            if self.committed.load(Ordering::Acquire) == end {
                // SAFETY: the first `end` bytes are copied in (Acquire pairs
                // with the producers' Release) and no producer writes to a
                // sealed buffer's reserved range again until `reopen`.
                return unsafe { std::slice::from_raw_parts(self.base.as_ptr(), end as usize) };
            }
            // A producer is between its reservation and its copy.
            spins += 1;
            if spins < 64 {
                std::hint::spin_loop();
            } else {
                std::thread::yield_now();
            }
        }
    }
}

impl Drop for Slab {
    fn drop(&mut self) {
        let slice = std::ptr::slice_from_raw_parts_mut(self.base.as_ptr(), self.capacity);
        // SAFETY: `base` was allocated with the layout of a boxed slice of
        // exactly `capacity` bytes (see `new`) and is freed only here.
        drop(unsafe { Box::from_raw(slice) });
    }
}
