//! The event queue and its flush thread.
//!
//! Producers copy whole JSON lines (bytes, already serialised) into one
//! shared pending buffer, under a mutex held only for the copy (producers
//! calling from Python hold the GIL already, so only the flush thread's swap
//! once per batch can meet them there); one background thread takes that
//! buffer whole and writes it to the JSONL file. The thread holds no Python object, so it can
//! run (and be joined) while the interpreter is finalising.
//!
//! * One `write()` per batch on an `O_APPEND` descriptor: batches are whole
//!   lines, so several processes appending to one file never interleave
//!   inside a line.
//! * A batch is written at the latest `flush_interval` after the flush
//!   thread saw its first line, or as soon as it reaches `max_batch_bytes`.
//! * The file is opened per batch (as the reference opens it per event), so a
//!   file that was moved away is recreated rather than written into the void.
//! * A failed write keeps its bytes and is retried on the next tick; until a
//!   retry succeeds, producers are refused with the error so nothing is lost
//!   silently and memory stays bounded by the queue.
//! * Lines are appended to the pending buffer by the producer's own thread
//!   and its line buffer is reused there at once: nothing crosses threads per
//!   line. An earlier design sent each line through a channel and got its
//!   buffer back from the flush thread; the handoff and the cache lines moving
//!   between cores cost 0.3 us of a 2.1 us event (one run, 6 rounds, 1M
//!   events, against not queueing the line at all).
//! * The flush thread swaps its emptied buffer for the pending one, so two
//!   buffers take turns and a steady stream allocates nothing.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::mpsc::{channel, sync_channel, Receiver, Sender, SyncSender, TryRecvError};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, Once};
use std::thread::{JoinHandle, Thread};
use std::time::{Duration, Instant};

use crossbeam_queue::ArrayQueue;

static PID: AtomicU32 = AtomicU32::new(0);
static PID_TRACKING: Once = Once::new();

extern "C" fn refresh_pid_in_child() {
    // SAFETY: getpid is async-signal-safe and has no preconditions.
    PID.store(unsafe { libc::getpid() } as u32, Ordering::Relaxed);
}

/// The id of the calling process, without a system call per event (glibc
/// no longer caches `getpid`): cached, and refreshed by a `pthread_atfork`
/// child handler, which runs for every `fork()`, Python's or not.
pub fn current_pid() -> u32 {
    PID_TRACKING.call_once(|| {
        PID.store(std::process::id(), Ordering::Relaxed);
        // SAFETY: registers a plain function without captured state.
        unsafe { libc::pthread_atfork(None, None, Some(refresh_pid_in_child)) };
    });
    PID.load(Ordering::Relaxed)
}

/// Tunables of one writer.
#[derive(Clone, Debug)]
pub struct WriterConfig {
    /// Longest time a line may wait in memory before it is written.
    pub flush_interval: Duration,
    /// Lines the queue holds before producers wait.
    pub queue_capacity: usize,
    /// A batch this large is written without waiting for the interval.
    pub max_batch_bytes: usize,
}

impl Default for WriterConfig {
    fn default() -> Self {
        WriterConfig {
            flush_interval: Duration::from_millis(100),
            queue_capacity: 65_536,
            max_batch_bytes: 1 << 20,
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

/// Why a line was not queued.
#[derive(Debug)]
pub enum PushError {
    /// The queue is full; the line is handed back so the caller can wait
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

/// What producers ask of the flush thread besides writing lines.
enum Request {
    Flush { fsync: bool, ack: Ack },
    Close { ack: Ack },
}

/// Emptied line buffers kept for the producers' reuse (one per thread in
/// the middle of a call is enough; a few more cover nested calls).
const POOLED_LINES: usize = 64;
/// A buffer that grew past this (a huge event) is freed, not kept.
const POOLED_LINE_MAX_CAPACITY: usize = 16 << 10;
/// Capacity of a fresh line buffer: a typical event line fits.
const NEW_LINE_CAPACITY: usize = 512;

/// Lines queued and not yet written.
#[derive(Default)]
struct Pending {
    /// Whole lines the flush thread has not taken yet.
    bytes: Vec<u8>,
    /// Lines in `bytes`.
    lines: usize,
    /// Lines the flush thread has taken but not written yet.
    taken: usize,
    /// Set under this lock by `close`, so that a line is either in `bytes`
    /// before the final write or refused.
    closed: bool,
}

impl Pending {
    fn unwritten(&self) -> usize {
        self.lines + self.taken
    }
}

/// State the flush thread shares with producers.
struct Shared {
    has_error: AtomicBool,
    error: Mutex<Option<WriteError>>,
    batches_written: AtomicU64,
    spare_lines: ArrayQueue<Vec<u8>>,
    pending: Mutex<Pending>,
    /// Signalled when written lines leave the queue (or a write failed).
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

    /// The pending lines; a poisoned lock (a panic while appending bytes)
    /// still guards whole lines, so it is used as is.
    fn pending(&self) -> MutexGuard<'_, Pending> {
        self.pending
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// One JSONL file fed by a bounded queue and a background flush thread.
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
        let shared = Arc::new(Shared {
            has_error: AtomicBool::new(false),
            error: Mutex::new(None),
            batches_written: AtomicU64::new(0),
            spare_lines: ArrayQueue::new(POOLED_LINES),
            pending: Mutex::new(Pending::default()),
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

    /// An empty buffer to serialise a line into (a recycled one when there
    /// is one). Handing it to [`try_push`](Self::try_push) returns it to the
    /// pool once its bytes are queued.
    pub fn line_buffer(&self) -> Vec<u8> {
        self.shared
            .spare_lines
            .pop()
            .unwrap_or_else(|| Vec::with_capacity(NEW_LINE_CAPACITY))
    }

    /// Queues one line without waiting.
    pub fn try_push(&self, line: Vec<u8>) -> Result<(), PushError> {
        if let Some(error) = self.shared.error() {
            return Err(PushError::Failed(error));
        }
        let pending = self.shared.pending();
        if pending.closed {
            return Err(PushError::Closed);
        }
        if pending.unwritten() >= self.config.queue_capacity.max(1) {
            return Err(PushError::Full(line));
        }
        self.append(pending, line);
        Ok(())
    }

    /// Queues one line, waiting while the queue is full. Returns the write
    /// error instead of waiting for a flush thread that cannot write.
    pub fn push_blocking(&self, line: Vec<u8>) -> Result<(), PushError> {
        let capacity = self.config.queue_capacity.max(1);
        let mut pending = self.shared.pending();
        loop {
            if pending.closed {
                return Err(PushError::Closed);
            }
            if pending.unwritten() < capacity {
                self.append(pending, line);
                return Ok(());
            }
            if let Some(error) = self.shared.error() {
                return Err(PushError::Failed(error));
            }
            self.flusher.unpark();
            // Timed, so that a flush thread that died is noticed.
            pending = match self
                .shared
                .space
                .wait_timeout(pending, self.config.flush_interval)
            {
                Ok((guard, _)) => guard,
                Err(poisoned) => poisoned.into_inner().0,
            };
            if self.thread_finished() {
                return Err(PushError::Failed(WriteError::stopped(&self.path)));
            }
        }
    }

    /// Appends `line` to the pending bytes, wakes the flush thread when the
    /// batch starts or fills, and keeps the line buffer for reuse.
    fn append(&self, mut pending: MutexGuard<'_, Pending>, line: Vec<u8>) {
        let before = pending.bytes.len();
        pending.bytes.extend_from_slice(&line);
        pending.lines += 1;
        let max = self.config.max_batch_bytes;
        let wake = before == 0 || (before < max && pending.bytes.len() >= max);
        drop(pending);
        self.shared.recycle(line);
        if wake {
            self.flusher.unpark();
        }
    }

    fn thread_finished(&self) -> bool {
        match self.thread.lock() {
            Ok(slot) => slot.as_ref().is_none_or(JoinHandle::is_finished),
            Err(_) => true,
        }
    }

    /// Writes every line queued before this call and, with `fsync`, makes
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

    /// Writes and fsyncs what is queued, then stops the flush thread.
    /// Idempotent; later pushes are refused.
    pub fn close(&self) -> Result<(), WriteError> {
        if self.closed.swap(true, Ordering::AcqRel) {
            return Ok(());
        }
        self.shared.pending().closed = true;
        self.shared.space.notify_all();
        let (ack, done) = sync_channel(1);
        let sent = self.requests.send(Request::Close { ack });
        self.flusher.unpark();
        let result = match sent {
            Ok(()) => done
                .recv()
                .unwrap_or_else(|_| Err(WriteError::stopped(&self.path))),
            Err(_) => Err(WriteError::stopped(&self.path)),
        };
        let handle = self.thread.lock().ok().and_then(|mut slot| slot.take());
        if let Some(handle) = handle {
            let _ = handle.join();
        }
        result
    }

    /// Forgets this writer without touching its queue or thread: used in a
    /// forked child, where the thread does not exist and the queue's locks
    /// may have been held at the fork. The lines it holds belong to the
    /// parent, which writes them; the child must not write them again.
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

/// The flush thread's side: the batch being written and the file it goes to.
struct Flusher {
    path: PathBuf,
    config: WriterConfig,
    shared: Arc<Shared>,
    /// Bytes taken from the pending buffer and not written yet.
    batch: Vec<u8>,
    /// Lines in `batch`.
    batch_lines: usize,
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
            batch: Vec::new(),
            batch_lines: 0,
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
                        self.take_pending();
                        let _ = self.write_batch(true);
                        return;
                    }
                }
            }
            let now = Instant::now();
            let (queued, full) = {
                let pending = self.shared.pending();
                // Only new lines make a batch due early: a failed batch
                // waits for its retry tick instead of spinning.
                let full = pending.lines > 0
                    && (pending.bytes.len() >= self.config.max_batch_bytes
                        || pending.unwritten() >= self.config.queue_capacity.max(1));
                (pending.lines > 0, full)
            };
            if (queued || !self.batch.is_empty()) && self.deadline.is_none() {
                self.deadline = Some(now + self.config.flush_interval);
            }
            match self.deadline {
                Some(deadline) if full || now >= deadline => {
                    self.take_pending();
                    let _ = self.write_batch(false);
                }
                Some(deadline) => std::thread::park_timeout(deadline - now),
                None => std::thread::park(),
            }
        }
    }

    fn handle(&mut self, request: Request) -> Step {
        self.take_pending();
        match request {
            Request::Flush { fsync, ack } => {
                let _ = ack.send(self.write_batch(fsync));
                Step::Continue
            }
            Request::Close { ack } => {
                let _ = ack.send(self.write_batch(true));
                Step::Stop
            }
        }
    }

    /// Moves the pending lines behind the batch: a swap of buffers when the
    /// batch is empty (the usual case), a copy after a failed write.
    fn take_pending(&mut self) {
        let mut pending = self.shared.pending();
        if pending.lines == 0 {
            return;
        }
        if self.batch.is_empty() {
            std::mem::swap(&mut self.batch, &mut pending.bytes);
        } else {
            self.batch.extend_from_slice(&pending.bytes);
            pending.bytes.clear();
        }
        pending.taken += pending.lines;
        self.batch_lines += pending.lines;
        pending.lines = 0;
    }

    /// Writes the batch in one `write()` (more only after a short write) and
    /// fsyncs on request. On failure the unwritten bytes stay for a retry.
    fn write_batch(&mut self, fsync: bool) -> Result<(), WriteError> {
        if self.batch.is_empty() && !(fsync && self.unsynced) {
            self.deadline = None;
            return Ok(());
        }
        let result = self.try_write(fsync);
        match &result {
            Ok(()) => {
                self.deadline = None;
                self.shared.set_error(None);
            }
            Err(error) => {
                self.deadline = Some(Instant::now() + self.config.flush_interval);
                self.shared.set_error(Some(error.clone()));
                self.shared.space.notify_all(); // waiting producers see the error
            }
        }
        result
    }

    fn try_write(&mut self, fsync: bool) -> Result<(), WriteError> {
        let path = self.path.clone();
        let path = &path;
        let fail = |err: io::Error| WriteError::from_io(path, &err);
        let created = !self.path.exists();
        let mut file = open_append(&self.path).map_err(fail)?;
        let mut written = 0;
        while written < self.batch.len() {
            match file.write(&self.batch[written..]) {
                Ok(0) => {
                    self.drop_written(written);
                    return Err(fail(io::Error::from(io::ErrorKind::WriteZero)));
                }
                Ok(n) => written += n,
                Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
                Err(err) => {
                    self.drop_written(written);
                    return Err(fail(err));
                }
            }
        }
        if written > 0 {
            self.shared.batches_written.fetch_add(1, Ordering::Relaxed);
            self.unsynced = true;
        }
        self.drop_written(written);
        if fsync {
            file.sync_all().map_err(fail)?;
            if created {
                sync_parent_dir(&self.path).map_err(fail)?;
            }
            self.unsynced = false;
        }
        Ok(())
    }

    /// Forgets the first `written` bytes of the batch and gives their lines'
    /// room back to producers.
    fn drop_written(&mut self, written: usize) {
        let lines = if written == self.batch.len() {
            self.batch_lines
        } else {
            self.batch[..written]
                .iter()
                .filter(|&&b| b == b'\n')
                .count()
        };
        if written == self.batch.len() {
            self.batch.clear();
            if self.batch.capacity() > 4 * self.config.max_batch_bytes {
                self.batch.shrink_to(self.config.max_batch_bytes);
            }
        } else {
            self.batch.drain(..written);
        }
        self.batch_lines -= lines;
        if lines > 0 {
            self.shared.pending().taken -= lines;
            self.shared.space.notify_all();
        }
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
}
