//! The event buffer and its flush thread.
//!
//! Producers copy whole JSON lines (bytes, already serialised) into one of
//! two preallocated buffers without taking a lock; one background thread
//! writes the filled buffer to the JSONL file while producers fill the other.
//! The thread holds no Python object, so it can run (and be joined) while the
//! interpreter is finalising.
//!
//! * A producer reserves room with one atomic add on the active buffer's
//!   `reserved` word (bytes and lines), copies its line into the reserved
//!   range, and publishes it with an atomic add on `committed`. Reservations
//!   are contiguous, so the buffer always holds whole lines in the order
//!   they were reserved.
//! * The flush thread flips buffers with atomics: it makes the other (empty)
//!   buffer active, seals the full one (an atomic or, which also tells it how
//!   much was reserved), and waits only for the producers still copying into
//!   it, then writes it.
//! * Memory is bounded by the two buffers. A producer that finds the active
//!   buffer full wakes the flush thread and waits (parked on a condition
//!   variable: the only place a producer blocks) until a flip makes room;
//!   no line is dropped. A line larger than a buffer is handed to the flush
//!   thread, which writes it after everything reserved before it.
//! * One `write()` per batch on an `O_APPEND` descriptor: batches are whole
//!   lines, so several processes appending to one file never interleave
//!   inside a line.
//! * A batch is written at the latest `flush_interval` after the flush
//!   thread saw its first line, or as soon as it reaches `max_batch_bytes`.
//! * The file is opened per batch (as the reference opens it per event), so a
//!   file that was moved away is recreated rather than written into the void.
//! * A failed write keeps its bytes and is retried on the next tick; until a
//!   retry succeeds, producers are refused with the error so nothing is lost
//!   silently and memory stays bounded.
//! * Lines are copied into the buffer by the producer's own thread and its
//!   line buffer is reused there at once: nothing crosses threads per line.
//!   An earlier design sent each line through a channel and got its buffer
//!   back from the flush thread; the handoff and the cache lines moving
//!   between cores cost 0.3 us of a 2.1 us event (one run, 6 rounds, 1M
//!   events, against not queueing the line at all).

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::ptr::NonNull;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::{channel, sync_channel, Receiver, Sender, SyncSender, TryRecvError};
use std::sync::{Arc, Condvar, Mutex, Once};
use std::thread::{JoinHandle, Thread};
use std::time::{Duration, Instant};

use crossbeam_queue::ArrayQueue;

static PID: AtomicU32 = AtomicU32::new(0);
static PID_TRACKING: Once = Once::new();

/// Points [`current_pid`] at the new process: the `pthread_atfork` child
/// handler the process registers (the bindings do at import), which runs
/// for every `fork()`, Python's or not.
pub extern "C" fn refresh_pid_after_fork() {
    // SAFETY: getpid is async-signal-safe and has no preconditions.
    PID.store(unsafe { libc::getpid() } as u32, Ordering::Relaxed);
}

/// The id of the calling process, without a system call per event (glibc
/// no longer caches `getpid`): cached, and refreshed in a forked child by
/// [`refresh_pid_after_fork`].
pub fn current_pid() -> u32 {
    PID_TRACKING.call_once(|| PID.store(std::process::id(), Ordering::Relaxed));
    PID.load(Ordering::Relaxed)
}

/// Tunables of one writer.
#[derive(Clone, Debug)]
pub struct WriterConfig {
    /// Longest time a line may wait in memory before it is written.
    pub flush_interval: Duration,
    /// Lines each of the two buffers holds before producers wait.
    pub queue_capacity: usize,
    /// A batch this large is written without waiting for the interval.
    pub max_batch_bytes: usize,
    /// Bytes each of the two buffers holds; a longer line is written on its
    /// own, after the lines queued before it.
    pub buffer_bytes: usize,
}

impl Default for WriterConfig {
    fn default() -> Self {
        WriterConfig {
            flush_interval: Duration::from_millis(100),
            queue_capacity: 65_536,
            max_batch_bytes: 1 << 20,
            buffer_bytes: 4 << 20,
        }
    }
}

/// A write that failed, with the file it was for.
#[derive(Clone, Debug)]
pub struct WriteError {
    pub path: PathBuf,
    pub errno: Option<i32>,
    pub message: String,
}

impl WriteError {
    fn from_io(path: &Path, err: &io::Error) -> Self {
        WriteError {
            path: path.to_path_buf(),
            errno: err.raw_os_error(),
            message: err.to_string(),
        }
    }

    fn stopped(path: &Path) -> Self {
        WriteError {
            path: path.to_path_buf(),
            errno: None,
            message: "the event flush thread is not running".to_string(),
        }
    }
}

impl std::fmt::Display for WriteError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "writing events to {}: {}",
            self.path.display(),
            self.message
        )
    }
}

/// Why a line was not buffered.
#[derive(Debug)]
pub enum PushError {
    /// Both buffers are full; the line is handed back so the caller can wait
    /// (e.g. after releasing the GIL) with [`EventWriter::push_blocking`].
    Full(Vec<u8>),
    /// An earlier write failed and has not been retried successfully yet.
    Failed(WriteError),
    /// The writer was closed.
    Closed,
}

#[derive(PartialEq)]
enum Step {
    Continue,
    Stop,
}

type Ack = SyncSender<Result<(), WriteError>>;

/// What producers ask of the flush thread besides writing buffered lines.
enum Request {
    Flush {
        fsync: bool,
        ack: Ack,
    },
    /// A line longer than a buffer, written after the lines before it.
    Oversized {
        line: Vec<u8>,
        ack: Ack,
    },
    Close {
        ack: Ack,
    },
}

/// Emptied line buffers kept for the producers' reuse (one per thread in
/// the middle of a call is enough; a few more cover nested calls).
const POOLED_LINES: usize = 64;
/// A buffer that grew past this (a huge event) is freed, not kept.
const POOLED_LINE_MAX_CAPACITY: usize = 16 << 10;
/// Capacity of a fresh line buffer: a typical event line fits.
const NEW_LINE_CAPACITY: usize = 512;

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
struct Slab {
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
    fn new(capacity: usize, max_lines: usize, sealed: bool) -> io::Result<Self> {
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
    fn append(&self, line: &[u8]) -> Result<u64, bool> {
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
    fn fill(&self, max_batch_bytes: usize) -> (bool, bool) {
        let word = self.reserved.load(Ordering::Acquire);
        let bytes = reserved_bytes(word);
        let full = bytes >= max_batch_bytes as u64
            || reserved_lines(word) >= self.max_lines
            || self.overflow_at.load(Ordering::Acquire) != NO_OVERFLOW;
        (bytes > 0, bytes > 0 && full)
    }

    /// Makes this (sealed, written) buffer empty and open to producers.
    fn reopen(&self) {
        self.committed.store(0, Ordering::Relaxed);
        self.overflow_at.store(NO_OVERFLOW, Ordering::Relaxed);
        self.reserved.store(0, Ordering::Release);
    }

    /// Seals the buffer and waits until every line reserved before the seal
    /// is copied in; returns those lines' bytes.
    fn seal(&self) -> &[u8] {
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

/// State the flush thread shares with producers.
struct Shared {
    has_error: AtomicBool,
    error: Mutex<Option<WriteError>>,
    /// Lines a failed write left unwritten (kept for the retry).
    unwritten_lines: AtomicU64,
    batches_written: AtomicU64,
    spare_lines: ArrayQueue<Vec<u8>>,
    slabs: [Slab; 2],
    /// Index of the buffer producers fill.
    active: AtomicUsize,
    /// Flips so far: a producer waiting for room waits for this to change.
    flips: AtomicU64,
    /// Set by `close` before the flush thread's last flip.
    closed: AtomicBool,
    /// Where producers that found the buffers full wait (the only lock a
    /// producer takes, and only then).
    room: Mutex<()>,
    space: Condvar,
}

impl Shared {
    fn set_error(&self, error: Option<WriteError>) {
        let failed = error.is_some();
        if let Ok(mut slot) = self.error.lock() {
            *slot = error;
        }
        self.has_error.store(failed, Ordering::Release);
    }

    fn error(&self) -> Option<WriteError> {
        if !self.has_error.load(Ordering::Acquire) {
            return None;
        }
        self.error.lock().ok().and_then(|slot| slot.clone())
    }

    /// Keeps an emptied line buffer for a producer to reuse.
    fn recycle(&self, mut line: Vec<u8>) {
        if line.capacity() <= POOLED_LINE_MAX_CAPACITY {
            line.clear();
            let _ = self.spare_lines.push(line); // pool full: freed here
        }
    }

    fn active_slab(&self) -> &Slab {
        &self.slabs[self.active.load(Ordering::Acquire)]
    }

    /// Wakes the producers waiting for room (after a flip, an error, close).
    fn wake_waiters(&self) {
        drop(self.room.lock());
        self.space.notify_all();
    }
}

/// Outcome of one attempt to buffer a line.
enum Append {
    Done,
    Full,
    Closed,
}

/// One JSONL file fed by two preallocated buffers (producers reserve room
/// with atomics) and a background flush thread.
pub struct EventWriter {
    path: PathBuf,
    config: WriterConfig,
    requests: Sender<Request>,
    shared: Arc<Shared>,
    thread: Mutex<Option<JoinHandle<()>>>,
    /// To wake the flush thread (first line of a batch, full batch, flush,
    /// close, a producer waiting for room).
    flusher: Thread,
    closed: AtomicBool,
    owner_pid: u32,
}

impl EventWriter {
    /// Starts the flush thread for `path`. The file is created at the first
    /// write, as the reference creates it at the first event.
    pub fn open(path: impl Into<PathBuf>, config: WriterConfig) -> io::Result<Self> {
        let path = path.into();
        let (requests, receiver) = channel();
        let slab = |sealed| Slab::new(config.buffer_bytes, config.queue_capacity, sealed);
        let shared = Arc::new(Shared {
            has_error: AtomicBool::new(false),
            error: Mutex::new(None),
            unwritten_lines: AtomicU64::new(0),
            batches_written: AtomicU64::new(0),
            spare_lines: ArrayQueue::new(POOLED_LINES),
            slabs: [slab(false)?, slab(true)?],
            active: AtomicUsize::new(0),
            flips: AtomicU64::new(0),
            closed: AtomicBool::new(false),
            room: Mutex::new(()),
            space: Condvar::new(),
        });
        let flusher = Flusher::new(path.clone(), config.clone(), Arc::clone(&shared));
        let thread = std::thread::Builder::new()
            .name("dj-events-flush".to_string())
            .spawn(move || flusher.run(receiver))?;
        Ok(EventWriter {
            path,
            config,
            requests,
            shared,
            flusher: thread.thread().clone(),
            thread: Mutex::new(Some(thread)),
            closed: AtomicBool::new(false),
            owner_pid: current_pid(),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Whether this writer's flush thread lives in the calling process (it
    /// does not in a child forked after the writer was opened).
    pub fn owned_by_current_process(&self) -> bool {
        self.owner_pid == current_pid()
    }

    /// Number of `write()` batches done so far (for tests and diagnostics).
    pub fn batches_written(&self) -> u64 {
        self.shared.batches_written.load(Ordering::Relaxed)
    }

    /// The pending write error, if the last write failed.
    pub fn error(&self) -> Option<WriteError> {
        self.shared.error()
    }

    /// Lines the last failed write left unwritten (0 after a successful
    /// one): after a failed `flush` or `close`, every line buffered before
    /// it. They are lost if the process ends now.
    pub fn unwritten_lines(&self) -> u64 {
        self.shared.unwritten_lines.load(Ordering::Acquire)
    }

    /// An empty buffer to serialise a line into (a recycled one when there
    /// is one). Handing it to [`try_push`](Self::try_push) returns it to the
    /// pool once its bytes are queued.
    pub fn line_buffer(&self) -> Vec<u8> {
        self.shared
            .spare_lines
            .pop()
            .unwrap_or_else(|| Vec::with_capacity(NEW_LINE_CAPACITY))
    }

    /// Buffers one line without waiting and without taking a lock (a lock is
    /// read only after a failed write, for its error).
    pub fn try_push(&self, line: Vec<u8>) -> Result<(), PushError> {
        if let Some(error) = self.shared.error() {
            return Err(PushError::Failed(error));
        }
        match self.append(&line) {
            Append::Done => {
                self.shared.recycle(line);
                Ok(())
            }
            Append::Full => Err(PushError::Full(line)),
            Append::Closed => Err(PushError::Closed),
        }
    }

    /// Copies `line` into the active buffer, retrying across a flip in
    /// progress; wakes the flush thread when a batch starts or fills.
    fn append(&self, line: &[u8]) -> Append {
        if line.len() > self.config.buffer_bytes.max(1) {
            return Append::Full; // never fits: `push_blocking` hands it over
        }
        loop {
            if self.shared.closed.load(Ordering::Acquire) {
                return Append::Closed;
            }
            match self.shared.active_slab().append(line) {
                Ok(end) => {
                    let len = line.len() as u64;
                    let max = self.config.max_batch_bytes as u64;
                    if end == len || (end >= max && end - len < max) {
                        self.flusher.unpark();
                    }
                    return Append::Done;
                }
                Err(false) => {
                    self.flusher.unpark();
                    return Append::Full;
                }
                // Sealed: the flush thread has just made the other buffer
                // active (or is closing); read `active` again.
                Err(true) => std::hint::spin_loop(),
            }
        }
    }

    /// Buffers one line, waiting on a condition variable while both buffers
    /// are full; a line longer than a buffer goes to the flush thread. Returns the
    /// write error instead of waiting for a flush thread that cannot write.
    pub fn push_blocking(&self, line: Vec<u8>) -> Result<(), PushError> {
        if line.len() > self.config.buffer_bytes.max(1) {
            return self.push_oversized(line);
        }
        loop {
            let flips = self.shared.flips.load(Ordering::Acquire);
            if let Some(error) = self.shared.error() {
                return Err(PushError::Failed(error));
            }
            match self.append(&line) {
                Append::Done => {
                    self.shared.recycle(line);
                    return Ok(());
                }
                Append::Closed => return Err(PushError::Closed),
                Append::Full => self.wait_for_room(flips)?,
            }
        }
    }

    /// Waits until the flush thread flipped buffers since `flips`, the
    /// writer closed or a write failed.
    fn wait_for_room(&self, flips: u64) -> Result<(), PushError> {
        let mut guard = self
            .shared
            .room
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        while self.shared.flips.load(Ordering::Acquire) == flips
            && !self.shared.closed.load(Ordering::Acquire)
            && !self.shared.has_error.load(Ordering::Acquire)
        {
            self.flusher.unpark();
            // Timed, so that a flush thread that died is noticed.
            guard = match self
                .shared
                .space
                .wait_timeout(guard, self.config.flush_interval)
            {
                Ok((guard, _)) => guard,
                Err(poisoned) => poisoned.into_inner().0,
            };
            // A writer closed meanwhile refuses the line (its thread ends
            // too, which is no failure).
            if !self.shared.closed.load(Ordering::Acquire) && self.thread_finished() {
                return Err(PushError::Failed(WriteError::stopped(&self.path)));
            }
        }
        Ok(())
    }

    /// Hands a line longer than a buffer to the flush thread, which writes
    /// it after every line reserved before this call.
    fn push_oversized(&self, line: Vec<u8>) -> Result<(), PushError> {
        if self.shared.closed.load(Ordering::Acquire) {
            return Err(PushError::Closed);
        }
        if let Some(error) = self.shared.error() {
            return Err(PushError::Failed(error));
        }
        let (ack, done) = sync_channel(1);
        if self
            .requests
            .send(Request::Oversized { line, ack })
            .is_err()
        {
            return Err(PushError::Failed(WriteError::stopped(&self.path)));
        }
        self.flusher.unpark();
        match done.recv() {
            Ok(Ok(())) => Ok(()),
            Ok(Err(error)) => Err(PushError::Failed(error)),
            Err(_) => Err(PushError::Failed(WriteError::stopped(&self.path))),
        }
    }

    fn thread_finished(&self) -> bool {
        match self.thread.lock() {
            Ok(slot) => slot.as_ref().is_none_or(JoinHandle::is_finished),
            Err(_) => true,
        }
    }

    /// Writes every line buffered before this call and, with `fsync`, makes
    /// the file durable. Returns the write error, if any.
    pub fn flush(&self, fsync: bool) -> Result<(), WriteError> {
        if self.closed.load(Ordering::Acquire) {
            return self.shared.error().map_or(Ok(()), Err);
        }
        let (ack, done) = sync_channel(1);
        if self.requests.send(Request::Flush { fsync, ack }).is_err() {
            return Err(WriteError::stopped(&self.path));
        }
        self.flusher.unpark();
        done.recv()
            .unwrap_or_else(|_| Err(WriteError::stopped(&self.path)))
    }

    /// Writes and fsyncs what is buffered, then stops the flush thread.
    /// Idempotent (a later call returns the error of lines still unwritten);
    /// later pushes are refused.
    pub fn close(&self) -> Result<(), WriteError> {
        if self.closed.swap(true, Ordering::AcqRel) {
            return self.shared.error().map_or(Ok(()), Err);
        }
        let (ack, done) = sync_channel(1);
        let sent = self.requests.send(Request::Close { ack });
        self.flusher.unpark();
        let result = match sent {
            Ok(()) => done
                .recv()
                .unwrap_or_else(|_| Err(WriteError::stopped(&self.path))),
            Err(_) => Err(WriteError::stopped(&self.path)),
        };
        self.shared.closed.store(true, Ordering::Release);
        self.shared.wake_waiters();
        let handle = self.thread.lock().ok().and_then(|mut slot| slot.take());
        if let Some(handle) = handle {
            let _ = handle.join();
        }
        result
    }

    /// Forgets this writer without touching its buffers or thread: used in
    /// a forked child, where the thread does not exist and locks may have
    /// been held at the fork. The lines it holds belong to the parent, which
    /// writes them; the child must not write them again.
    pub fn abandon(self) {
        std::mem::forget(self);
    }
}

impl Drop for EventWriter {
    fn drop(&mut self) {
        if self.owned_by_current_process() {
            let _ = self.close();
        }
    }
}

/// The flush thread's side: unwritten bytes of a failed write and the file.
struct Flusher {
    path: PathBuf,
    config: WriterConfig,
    shared: Arc<Shared>,
    /// Bytes a failed write left, written before anything newer.
    retry: Vec<u8>,
    /// When the oldest line not yet written must be on disk.
    deadline: Option<Instant>,
    /// Bytes written since the last fsync (an fsync request must cover them).
    unsynced: bool,
}

impl Flusher {
    fn new(path: PathBuf, config: WriterConfig, shared: Arc<Shared>) -> Self {
        Flusher {
            path,
            config,
            shared,
            retry: Vec::new(),
            deadline: None,
            unsynced: false,
        }
    }

    /// Idle, the thread parks until a producer starts a batch (one wake-up
    /// per batch); then it sleeps until the batch's deadline, or until the
    /// batch fills or a flush or close request comes.
    fn run(mut self, requests: Receiver<Request>) {
        loop {
            loop {
                match requests.try_recv() {
                    Ok(request) => {
                        if self.handle(request) == Step::Stop {
                            return;
                        }
                    }
                    Err(TryRecvError::Empty) => break,
                    Err(TryRecvError::Disconnected) => {
                        let _ = self.close();
                        return;
                    }
                }
            }
            let now = Instant::now();
            let (queued, full) = self.shared.active_slab().fill(self.config.max_batch_bytes);
            if (queued || !self.retry.is_empty()) && self.deadline.is_none() {
                self.deadline = Some(now + self.config.flush_interval);
            }
            match self.deadline {
                Some(deadline) if full || now >= deadline => {
                    let _ = self.flip_and_write(false);
                }
                Some(deadline) => std::thread::park_timeout(deadline - now),
                None => std::thread::park(),
            }
        }
    }

    fn handle(&mut self, request: Request) -> Step {
        match request {
            Request::Flush { fsync, ack } => {
                let _ = ack.send(self.flip_and_write(fsync));
                Step::Continue
            }
            Request::Oversized { line, ack } => {
                let result = self.flip_and_write(false);
                let result = result.and_then(|()| {
                    self.retry.extend_from_slice(&line);
                    self.write_retry(false)
                });
                let _ = ack.send(result);
                Step::Continue
            }
            Request::Close { ack } => {
                let _ = ack.send(self.close());
                Step::Stop
            }
        }
    }

    /// The last writes: the active buffer, then the other one sealed for
    /// good (a producer that reserved in it before the seal is written too;
    /// one that comes later finds both sealed and `closed` set).
    fn close(&mut self) -> Result<(), WriteError> {
        self.shared.closed.store(true, Ordering::Release);
        let first = self.flip_and_write(false);
        let shared = Arc::clone(&self.shared);
        let bytes = shared.active_slab().seal();
        let result = self.write(bytes, true);
        self.shared.wake_waiters();
        first.and(result)
    }

    /// Makes the other buffer active, then writes the one producers filled
    /// (after any bytes a failed write left). On failure the unwritten
    /// bytes are kept for the next tick.
    fn flip_and_write(&mut self, fsync: bool) -> Result<(), WriteError> {
        let shared = Arc::clone(&self.shared);
        let full = shared.active.load(Ordering::Acquire);
        let empty = 1 - full;
        shared.slabs[empty].reopen();
        shared.active.store(empty, Ordering::Release);
        let bytes = shared.slabs[full].seal();
        let result = self.write(bytes, fsync);
        shared.flips.fetch_add(1, Ordering::AcqRel);
        shared.wake_waiters();
        result
    }

    /// Writes `bytes` (behind any retry bytes) in one batch.
    fn write(&mut self, bytes: &[u8], fsync: bool) -> Result<(), WriteError> {
        if self.retry.is_empty() {
            let result = self.write_batch(bytes, fsync);
            if let Err((error, written)) = result {
                self.retry.extend_from_slice(&bytes[written..]);
                self.count_unwritten();
                return Err(error);
            }
            return Ok(());
        }
        self.retry.extend_from_slice(bytes);
        self.write_retry(fsync)
    }

    fn write_retry(&mut self, fsync: bool) -> Result<(), WriteError> {
        let retry = std::mem::take(&mut self.retry);
        let result = self.write_batch(&retry, fsync);
        let result = match result {
            Ok(()) => {
                self.retry = retry;
                self.retry.clear();
                if self.retry.capacity() > 4 * self.config.max_batch_bytes {
                    self.retry = Vec::new();
                }
                Ok(())
            }
            Err((error, written)) => {
                self.retry = retry;
                self.retry.drain(..written);
                Err(error)
            }
        };
        self.count_unwritten();
        result
    }

    /// Publishes how many lines the retry bytes hold (a cut line counts).
    fn count_unwritten(&self) {
        let newlines = self.retry.iter().filter(|&&b| b == b'\n').count() as u64;
        let cut = u64::from(self.retry.last().is_some_and(|&b| b != b'\n'));
        let lines = newlines + cut;
        self.shared.unwritten_lines.store(lines, Ordering::Release);
    }

    /// Writes `batch` in one `write()` (more only after a short write) and
    /// fsyncs on request; on failure, says how many bytes were written.
    fn write_batch(&mut self, batch: &[u8], fsync: bool) -> Result<(), (WriteError, usize)> {
        if batch.is_empty() && !(fsync && self.unsynced) {
            self.deadline = None;
            return Ok(());
        }
        let result = self.try_write(batch, fsync);
        match &result {
            Ok(()) => {
                self.deadline = None;
                self.shared.set_error(None);
            }
            Err((error, _)) => {
                self.deadline = Some(Instant::now() + self.config.flush_interval);
                self.shared.set_error(Some(error.clone()));
                self.shared.wake_waiters(); // waiting producers see the error
            }
        }
        result
    }

    fn try_write(&mut self, batch: &[u8], fsync: bool) -> Result<(), (WriteError, usize)> {
        let path = self.path.clone();
        let fail = |err: io::Error, written| (WriteError::from_io(&path, &err), written);
        let created = !self.path.exists();
        let mut file = open_append(&self.path).map_err(|e| fail(e, 0))?;
        let mut written = 0;
        while written < batch.len() {
            match file.write(&batch[written..]) {
                Ok(0) => return Err(fail(io::Error::from(io::ErrorKind::WriteZero), written)),
                Ok(n) => written += n,
                Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
                Err(err) => return Err(fail(err, written)),
            }
        }
        if written > 0 {
            self.shared.batches_written.fetch_add(1, Ordering::Relaxed);
            self.unsynced = true;
        }
        if fsync {
            file.sync_all().map_err(|e| fail(e, written))?;
            if created {
                sync_parent_dir(&self.path).map_err(|e| fail(e, written))?;
            }
            self.unsynced = false;
        }
        Ok(())
    }
}

fn open_append(path: &Path) -> io::Result<File> {
    OpenOptions::new()
        .append(true)
        .create(true)
        .custom_flags(libc::O_CLOEXEC)
        .open(path)
}

/// Makes a newly created file's directory entry durable.
fn sync_parent_dir(path: &Path) -> io::Result<()> {
    match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => File::open(dir)?.sync_all(),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicU64;
    use std::sync::Arc;

    fn lines_of(path: &Path) -> Vec<String> {
        std::fs::read_to_string(path)
            .unwrap_or_default()
            .lines()
            .map(str::to_string)
            .collect()
    }

    /// A writer of `name` (a path relative to a fresh temporary directory,
    /// which the caller keeps alive) and that file's path.
    fn open_in_tempdir(
        name: &str,
        config: WriterConfig,
    ) -> (tempfile::TempDir, PathBuf, EventWriter) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(name);
        let writer = EventWriter::open(&path, config).unwrap();
        (dir, path, writer)
    }

    #[test]
    fn file_is_created_lazily_and_flush_writes_everything() {
        let (_dir, path, writer) = open_in_tempdir("events.jsonl", WriterConfig::default());
        assert!(!path.exists());
        for i in 0..100 {
            writer
                .try_push(format!("{{\"i\": {i}}}\n").into_bytes())
                .unwrap();
        }
        writer.flush(true).unwrap();
        let lines = lines_of(&path);
        assert_eq!(lines.len(), 100);
        assert_eq!(lines[99], "{\"i\": 99}");
        assert!(writer.batches_written() <= 100);
    }

    #[test]
    fn lines_are_written_after_the_interval_without_flush() {
        let config = WriterConfig {
            flush_interval: Duration::from_millis(10),
            ..WriterConfig::default()
        };
        let (_dir, path, writer) = open_in_tempdir("events.jsonl", config);
        writer.try_push(b"{}\n".to_vec()).unwrap();
        // Poll instead of asserting a duration: the tick must come eventually.
        let start = Instant::now();
        while lines_of(&path).is_empty() && start.elapsed() < Duration::from_secs(30) {
            std::thread::sleep(Duration::from_millis(5));
        }
        assert_eq!(lines_of(&path), vec!["{}"]);
        drop(writer);
    }

    #[test]
    fn many_producers_keep_their_order_and_lose_nothing() {
        let config = WriterConfig {
            queue_capacity: 16,
            max_batch_bytes: 512,
            ..WriterConfig::default()
        };
        let (_dir, path, writer) = open_in_tempdir("events.jsonl", config);
        let writer = Arc::new(writer);
        let threads: Vec<_> = (0..4)
            .map(|t| {
                let writer = Arc::clone(&writer);
                std::thread::spawn(move || {
                    for i in 0..2000 {
                        let line = format!("{t} {i}\n").into_bytes();
                        match writer.try_push(line) {
                            Ok(()) => {}
                            Err(PushError::Full(line)) => writer.push_blocking(line).unwrap(),
                            Err(other) => panic!("{other:?}"),
                        }
                    }
                })
            })
            .collect();
        for thread in threads {
            thread.join().unwrap();
        }
        writer.close().unwrap();
        let mut next = [0usize; 4];
        for line in lines_of(&path) {
            let (t, i) = line.split_once(' ').unwrap();
            let (t, i): (usize, usize) = (t.parse().unwrap(), i.parse().unwrap());
            assert_eq!(next[t], i, "thread {t} out of order");
            next[t] += 1;
        }
        assert_eq!(next, [2000; 4]);
    }

    #[test]
    fn a_failed_write_is_reported_and_kept_for_retry() {
        let dir = tempfile::tempdir().unwrap();
        let missing_dir = dir.path().join("gone");
        let path = missing_dir.join("events.jsonl");
        let writer = EventWriter::open(&path, WriterConfig::default()).unwrap();
        writer.try_push(b"{\"kept\": true}\n".to_vec()).unwrap();
        let error = writer.flush(false).unwrap_err();
        assert!(error.to_string().contains("events.jsonl"), "{error}");
        assert_eq!(error.errno, Some(libc::ENOENT));
        assert!(matches!(
            writer.try_push(b"x\n".to_vec()),
            Err(PushError::Failed(_))
        ));
        std::fs::create_dir(&missing_dir).unwrap();
        writer.flush(false).unwrap();
        assert_eq!(lines_of(&path), vec!["{\"kept\": true}"]);
        assert!(writer.error().is_none());
        writer.try_push(b"{}\n".to_vec()).unwrap();
    }

    #[test]
    fn written_line_buffers_come_back_for_reuse() {
        let (_dir, _path, writer) = open_in_tempdir("e.jsonl", WriterConfig::default());
        let mut line = writer.line_buffer();
        line.extend_from_slice(b"{}\n");
        let address = line.as_ptr();
        writer.try_push(line).unwrap();
        writer.flush(false).unwrap();
        let reused = writer.line_buffer();
        assert!(reused.is_empty() && reused.capacity() >= 3);
        assert_eq!(
            reused.as_ptr(),
            address,
            "the written buffer is handed out again"
        );
    }

    /// Pushes `lines` lines of thread `t` ("t i" plus padding), waiting for
    /// room when the buffers are full.
    fn push_numbered(
        writer: &EventWriter,
        t: usize,
        lines: usize,
        padding: impl Fn(usize) -> usize,
    ) {
        for i in 0..lines {
            let mut line = format!("{t} {i} ").into_bytes();
            line.resize(line.len() + padding(i), b'x');
            line.push(b'\n');
            match writer.try_push(line) {
                Ok(()) => {}
                Err(PushError::Full(line)) => writer.push_blocking(line).unwrap(),
                Err(other) => panic!("{other:?}"),
            }
        }
    }

    /// Every thread's lines are in the file, whole, once each, in its order.
    fn assert_all_in_order(path: &Path, threads: usize, lines: usize) {
        let mut next = vec![0usize; threads];
        for line in lines_of(path) {
            let mut parts = line.split(' ');
            let t: usize = parts.next().unwrap().parse().unwrap();
            let i: usize = parts.next().unwrap().parse().unwrap();
            assert!(
                parts.next().unwrap().bytes().all(|b| b == b'x'),
                "torn line {line:?}"
            );
            assert_eq!(next[t], i, "thread {t} out of order");
            next[t] += 1;
        }
        assert_eq!(next, vec![lines; threads]);
    }

    /// Small buffers and many threads: producers keep meeting full buffers,
    /// flips and lines longer than a buffer, and nothing is lost, torn or
    /// reordered within a thread.
    #[test]
    fn many_threads_through_small_buffers_lose_nothing() {
        for (buffer_bytes, queue_capacity) in [(64, 1000), (256, 3), (4096, 1000)] {
            let config = WriterConfig {
                buffer_bytes,
                queue_capacity,
                max_batch_bytes: buffer_bytes / 2,
                flush_interval: Duration::from_millis(1),
            };
            let (_dir, path, writer) = open_in_tempdir("events.jsonl", config);
            let writer = Arc::new(writer);
            let (threads, lines) = (8, 1500);
            let handles: Vec<_> = (0..threads)
                .map(|t| {
                    let writer = Arc::clone(&writer);
                    // Some lines longer than a buffer, most shorter.
                    std::thread::spawn(move || {
                        push_numbered(
                            &writer,
                            t,
                            lines,
                            |i| if i % 97 == 0 { 300 } else { i % 13 },
                        )
                    })
                })
                .collect();
            for handle in handles {
                handle.join().unwrap();
            }
            writer.close().unwrap();
            assert_all_in_order(&path, threads, lines);
        }
    }

    /// Concurrent flushes and a close racing the producers: every line a
    /// push accepted is in the file; pushes after the close are refused.
    #[test]
    fn flushes_and_close_racing_producers_keep_every_accepted_line() {
        let config = WriterConfig {
            buffer_bytes: 512,
            max_batch_bytes: 256,
            ..WriterConfig::default()
        };
        let (_dir, path, writer) = open_in_tempdir("events.jsonl", config);
        let writer = Arc::new(writer);
        let accepted = Arc::new(AtomicU64::new(0));
        let producers: Vec<_> = (0..4)
            .map(|t| {
                let (writer, accepted) = (Arc::clone(&writer), Arc::clone(&accepted));
                std::thread::spawn(move || {
                    for i in 0.. {
                        let line = format!("{t} {i} \n").into_bytes();
                        let pushed = match writer.try_push(line) {
                            Err(PushError::Full(line)) => writer.push_blocking(line),
                            other => other,
                        };
                        match pushed {
                            Ok(()) => accepted.fetch_add(1, Ordering::Relaxed),
                            Err(PushError::Closed) => return,
                            Err(other) => panic!("{other:?}"),
                        };
                    }
                })
            })
            .collect();
        for _ in 0..50 {
            writer.flush(false).unwrap();
        }
        writer.flush(true).unwrap();
        writer.close().unwrap();
        for producer in producers {
            producer.join().unwrap();
        }
        let lines = lines_of(&path);
        assert_eq!(lines.len() as u64, accepted.load(Ordering::Relaxed));
        let mut next = [0usize; 4];
        for line in lines {
            let (t, rest) = line.split_once(' ').unwrap();
            let t: usize = t.parse().unwrap();
            assert_eq!(rest.trim_end().parse::<usize>().unwrap(), next[t]);
            next[t] += 1;
        }
    }

    #[test]
    fn a_line_longer_than_the_buffer_is_written_after_the_ones_before() {
        let config = WriterConfig {
            buffer_bytes: 16,
            flush_interval: Duration::from_secs(3600),
            ..WriterConfig::default()
        };
        let (_dir, path, writer) = open_in_tempdir("events.jsonl", config);
        writer.try_push(b"short\n".to_vec()).unwrap();
        let long = format!("{}\n", "y".repeat(100)).into_bytes();
        let Err(PushError::Full(long)) = writer.try_push(long) else {
            panic!("a line longer than the buffer fits it");
        };
        writer.push_blocking(long).unwrap();
        writer.try_push(b"after\n".to_vec()).unwrap();
        writer.flush(false).unwrap();
        assert_eq!(
            lines_of(&path),
            vec!["short".to_string(), "y".repeat(100), "after".to_string()]
        );
    }

    #[test]
    fn a_full_queue_gets_room_back_once_its_lines_are_written() {
        let config = WriterConfig {
            queue_capacity: 2,
            flush_interval: Duration::from_secs(3600),
            ..WriterConfig::default()
        };
        let (_dir, path, writer) = open_in_tempdir("events.jsonl", config);
        writer.try_push(b"1\n".to_vec()).unwrap();
        writer.try_push(b"2\n".to_vec()).unwrap();
        let Err(PushError::Full(line)) = writer.try_push(b"3\n".to_vec()) else {
            panic!("a third line fits a queue of two");
        };
        // The waiting producer wakes the flush thread, which writes the
        // two lines long before the hour-long interval.
        writer.push_blocking(line).unwrap();
        writer.flush(false).unwrap();
        assert_eq!(lines_of(&path), vec!["1", "2", "3"]);
    }

    #[test]
    fn a_producer_waiting_for_room_gets_the_write_error() {
        let config = WriterConfig {
            queue_capacity: 1,
            ..WriterConfig::default()
        };
        let (dir, path, writer) = open_in_tempdir("gone/events.jsonl", config);
        writer.try_push(b"{\"kept\": true}\n".to_vec()).unwrap();
        // Rather than waiting forever for room that a failing write never
        // frees, the producer is told why.
        match writer.push_blocking(b"{}\n".to_vec()) {
            Err(PushError::Failed(error)) => assert_eq!(error.errno, Some(libc::ENOENT)),
            other => panic!("{other:?}"),
        }
        std::fs::create_dir(dir.path().join("gone")).unwrap();
        writer.flush(false).unwrap();
        assert_eq!(lines_of(&path), vec!["{\"kept\": true}"]);
    }

    #[test]
    fn close_is_idempotent_and_refuses_later_lines() {
        let (_dir, path, writer) = open_in_tempdir("events.jsonl", WriterConfig::default());
        writer.try_push(b"{}\n".to_vec()).unwrap();
        writer.close().unwrap();
        writer.close().unwrap();
        assert!(matches!(
            writer.try_push(b"{}\n".to_vec()),
            Err(PushError::Closed)
        ));
        writer.flush(true).unwrap();
        assert_eq!(lines_of(&path).len(), 1);
    }

    #[test]
    fn a_failed_write_counts_the_lines_it_left_unwritten() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("missing-dir").join("events.jsonl");
        let writer = EventWriter::open(&path, WriterConfig::default()).unwrap();
        for i in 0..3 {
            writer
                .try_push(format!("{{\"i\": {i}}}\n").into_bytes())
                .unwrap();
        }
        assert!(writer.flush(false).is_err());
        assert_eq!(writer.unwritten_lines(), 3);
        assert!(writer.close().is_err());
        assert!(
            writer.close().is_err(),
            "a second close still reports the loss"
        );
        assert_eq!(writer.unwritten_lines(), 3);
    }
}
