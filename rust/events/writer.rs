//! The event buffer and its flush thread.
//!
//! This file holds the producers' side (`EventWriter`) and what they share
//! with the flush thread; [`slab`] is one of the two buffers, [`flusher`]
//! the flush thread, and `writer/tests.rs` the tests.
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

use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::{channel, sync_channel, Sender, SyncSender};
use std::sync::{Arc, Condvar, Mutex, Once};
use std::thread::{JoinHandle, Thread};
use std::time::Duration;

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

// The flush thread, the buffers and the tests live in `writer/`.
mod flusher;
mod slab;
#[cfg(test)]
mod tests;

use flusher::Flusher;
use slab::Slab;
