//! `Flusher`: the flush thread. It sleeps until a batch starts, flips the
//! buffers when the batch is due (its interval, `max_batch_bytes`, a flush
//! or close request), writes the sealed one with one `write()`, and keeps
//! the bytes of a failed write to retry them before anything newer.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::mpsc::{Receiver, TryRecvError};
use std::sync::Arc;
use std::time::Instant;

use super::{Request, Shared, WriteError, WriterConfig};

#[derive(PartialEq)]
enum Step {
    Continue,
    Stop,
}

/// The flush thread's side: unwritten bytes of a failed write and the file.
pub(super) struct Flusher {
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
    pub(super) fn new(path: PathBuf, config: WriterConfig, shared: Arc<Shared>) -> Self {
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
    pub(super) fn run(mut self, requests: Receiver<Request>) {
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
