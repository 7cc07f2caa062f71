//! `SinkWriter`: the [`EventWriter`] behind one sink over its lifetime:
//! created with the sink, restarted in a forked child, pushed to with the
//! write-through rule, closed (or abandoned in a child) when the sink goes.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicPtr, Ordering};
use std::time::Duration;

use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;

use super::errors::{io_os_error, os_error, push_error};
use crate::bindings::lifecycle::gil::detach;
use crate::bindings::lifecycle::live_writers;
use crate::events::writer::{EventWriter, PushError, WriterConfig};

/// The longest `flush_interval` accepted: a day.
const MAX_FLUSH_INTERVAL_SECONDS: f64 = 86_400.0;

/// How a sink writes, from `EventSink(...)`'s arguments.
pub(super) struct SinkConfig {
    writer: WriterConfig,
    write_through: bool,
}

impl SinkConfig {
    /// `flush_interval` 0 means write-through; otherwise it is the longest
    /// time a line waits in memory.
    pub(super) fn new(
        flush_interval: f64,
        queue_size: usize,
        write_through: bool,
    ) -> PyResult<Self> {
        // Longer intervals would overflow the flush thread's deadlines.
        let buffered = flush_interval > 0.0 && flush_interval <= MAX_FLUSH_INTERVAL_SECONDS;
        if !(buffered || flush_interval == 0.0) {
            return Err(PyValueError::new_err(format!(
                "flush_interval must be 0 (write each event before logging returns) or a \
                 positive number of seconds, at most {MAX_FLUSH_INTERVAL_SECONDS} (one day), \
                 not {flush_interval}"
            )));
        }
        let mut writer = WriterConfig {
            queue_capacity: queue_size.max(1),
            ..WriterConfig::default()
        };
        if buffered {
            writer.flush_interval = Duration::from_secs_f64(flush_interval);
        }
        Ok(SinkConfig {
            writer,
            write_through: write_through || !buffered,
        })
    }
}

/// Opens (creating) the JSONL file for appending, as the flush thread does.
fn open_append(path: &Path) -> std::io::Result<File> {
    OpenOptions::new()
        .append(true)
        .create(true)
        .custom_flags(libc::O_CLOEXEC)
        .open(path)
}

/// The writer of one sink and the rule of when a call waits for its line.
pub(super) struct SinkWriter {
    /// Replaced (the old one leaked) in a forked child, whose copy of the
    /// parent's writer has no thread behind it.
    writer: AtomicPtr<EventWriter>,
    pub(super) path: PathBuf,
    config: WriterConfig,
    /// Each call has its line in the file before it returns: asked for
    /// (`flush_interval=0`), in a worker process, or in a forked child.
    write_through: AtomicBool,
}

impl SinkWriter {
    /// Creates the file (so that it exists from the logger's construction)
    /// and starts the flush thread.
    pub(super) fn create(py: Python<'_>, path: PathBuf, config: SinkConfig) -> PyResult<Self> {
        detach(py, || open_append(&path)).map_err(|e| io_os_error("creating", &path, &e))?;
        let writer = EventWriter::open(&path, config.writer.clone())
            .map_err(|e| io_os_error("starting the event flush thread for", &path, &e))?;
        let writer = Box::into_raw(Box::new(writer));
        live_writers::add(writer);
        Ok(SinkWriter {
            writer: AtomicPtr::new(writer),
            path,
            config: config.writer,
            write_through: AtomicBool::new(config.write_through),
        })
    }

    /// The writer of the current process, restarting it after a fork that
    /// `os.register_at_fork` did not see.
    pub(super) fn current(&self) -> PyResult<&EventWriter> {
        let current = self.writer.load(Ordering::Acquire);
        // SAFETY: writers are only freed by `Drop`, when no `&self` exists;
        // replaced ones are leaked, so the pointer stays valid.
        let writer = unsafe { &*current };
        if writer.owned_by_current_process() {
            return Ok(writer);
        }
        // A forked child may end by `os._exit` or a signal at any moment:
        // nothing it logs may wait in memory.
        self.write_through.store(true, Ordering::Relaxed);
        let fresh = Box::into_raw(Box::new(self.open_writer()?));
        match self
            .writer
            .compare_exchange(current, fresh, Ordering::AcqRel, Ordering::Acquire)
        {
            Ok(_) => {
                live_writers::add(fresh);
                // SAFETY: `fresh` is now the sink's writer, freed only by `Drop`.
                Ok(unsafe { &*fresh })
            }
            Err(winner) => {
                // Another thread of this child restarted it first.
                // SAFETY: `fresh` came from `Box::into_raw` above and was
                // never shared.
                drop(unsafe { Box::from_raw(fresh) });
                // SAFETY: as for `current`: the winner is freed only by `Drop`.
                Ok(unsafe { &*winner })
            }
        }
    }

    fn open_writer(&self) -> PyResult<EventWriter> {
        EventWriter::open(&self.path, self.config.clone())
            .map_err(|e| io_os_error("starting the event flush thread for", &self.path, &e))
    }

    /// Buffers `line`, waiting without the GIL when both buffers are full; writes
    /// it before returning in write-through mode, and makes job-level events
    /// durable before returning.
    pub(super) fn push(&self, py: Python<'_>, line: Vec<u8>, durable: bool) -> PyResult<()> {
        let writer = self.current()?;
        match writer.try_push(line) {
            Ok(()) => {}
            Err(PushError::Full(line)) => {
                detach(py, || writer.push_blocking(line)).map_err(|e| push_error(e, &self.path))?
            }
            Err(other) => return Err(push_error(other, &self.path)),
        }
        if durable || self.write_through.load(Ordering::Relaxed) {
            detach(py, || writer.flush(durable)).map_err(|e| os_error(&e))?;
        }
        Ok(())
    }

    /// Writes everything queued so far; with `fsync`, makes it durable.
    pub(super) fn flush(&self, py: Python<'_>, fsync: bool) -> PyResult<()> {
        let writer = self.current()?;
        detach(py, || writer.flush(fsync)).map_err(|e| os_error(&e))
    }

    /// Flushes, fsyncs and stops the flush thread.
    pub(super) fn close(&self, py: Python<'_>) -> PyResult<()> {
        let writer = self.current()?;
        detach(py, || writer.close()).map_err(|e| os_error(&e))
    }
}

impl Drop for SinkWriter {
    fn drop(&mut self) {
        let current = self.writer.swap(std::ptr::null_mut(), Ordering::AcqRel);
        if current.is_null() {
            return;
        }
        live_writers::remove(current);
        // SAFETY: `Drop` has the only reference; the pointer came from Box.
        let writer = unsafe { Box::from_raw(current) };
        if writer.owned_by_current_process() {
            // Flushes, fsyncs, joins the thread (no GIL needed); what it
            // cannot write is lost with the writer, and said so.
            if let Err(error) = writer.close() {
                live_writers::report_lost(&writer, &error);
            }
        } else {
            writer.abandon();
        }
    }
}
