//! `EventSink`: the native half of one `EventLogger`, the class Python
//! sees. A logging call makes the event's fields, keeps the event for
//! `events` ([`remembered`](super::remembered)), serialises its line
//! ([`line`](super::line)) and hands it to the writer
//! ([`sink_writer`](super::sink_writer)).
//!
//! The producer path takes no lock of its own: the remembered events are
//! guarded by the GIL the caller already holds, the cache of event kinds
//! and the writer's buffers use atomics. The only blocking is the writer's
//! documented wait, GIL released, when both of its buffers are full (and,
//! by design, the write a durable event or a write-through call awaits).

use std::path::PathBuf;
use std::time::{SystemTime, UNIX_EPOCH};

use pyo3::intern;
use pyo3::prelude::*;
use pyo3::types::{PyBool, PyDict, PyString, PyType};
use pyo3::{PyTraverseError, PyVisit};

use super::ids::{current_thread_ident, generated_event_id};
use super::kinds::EventKinds;
use super::layout::{EventLayout, Role};
use super::line::{fields_line, object_line};
use super::made::Made;
use super::remembered::{Remembered, RememberedEvents};
use super::sink_writer::{SinkConfig, SinkWriter};
use crate::bindings::lifecycle::exit_gate;
use crate::bindings::lifecycle::gil::guarded;
use crate::events::writer::current_pid;

/// The native half of one `EventLogger`: its buffers, flush thread and the
/// `Event` class it builds in-memory events of.
#[pyclass(frozen, module = "data_juicer_accel._native")]
pub struct EventSink {
    /// The `Event` dataclass and its fields.
    layout: EventLayout,
    /// What the fast path needs of each `EventType` member seen so far.
    kinds: EventKinds,
    /// Events logged but not yet moved into `EventLogger.events`.
    remembered: RememberedEvents,
    writer: SinkWriter,
}

/// What a fast-path call did with an event.
pub(crate) enum Logged<'py> {
    /// Queued and kept for `events`; no `Event` object was built.
    Queued,
    /// Queued and kept; the `Event` was built because an INFO sink wants it.
    Built(Bound<'py, PyAny>),
    /// Nothing done: the Python method must run (and raise what the
    /// reference raises, if anything).
    Declined,
}

impl<'py> Logged<'py> {
    /// `True`, the `Event`, or `None`: what the Python-facing methods return.
    pub(super) fn into_python(self, py: Python<'py>) -> Option<Bound<'py, PyAny>> {
        match self {
            Logged::Queued => Some(PyBool::new(py, true).to_owned().into_any()),
            Logged::Built(event) => Some(event),
            Logged::Declined => None,
        }
    }
}

#[pymethods]
impl EventSink {
    /// `path`: the JSONL file, created here; `event_class`: the `Event`
    /// dataclass; `fields`: its field names in order; `flush_interval` in
    /// seconds, 0 for write-through; `queue_size`: events each of the two
    /// buffers holds;
    /// `events_maxlen`: the `events` deque's maxlen; `write_through`: each
    /// call writes its line before returning (as does `flush_interval=0`).
    #[new]
    #[pyo3(signature = (path, event_class, fields, flush_interval=0.1, queue_size=65536, events_maxlen=None, write_through=false))]
    #[allow(clippy::too_many_arguments)]
    fn new(
        py: Python<'_>,
        path: PathBuf,
        event_class: Bound<'_, PyType>,
        fields: Vec<Bound<'_, PyString>>,
        flush_interval: f64,
        queue_size: usize,
        events_maxlen: Option<usize>,
        write_through: bool,
    ) -> PyResult<Self> {
        guarded("EventSink()", || {
            let config = SinkConfig::new(flush_interval, queue_size, write_through)?;
            Ok(EventSink {
                layout: EventLayout::new(py, event_class, fields)?,
                kinds: EventKinds::new(),
                remembered: RememberedEvents::new(events_maxlen),
                writer: SinkWriter::create(py, path, config)?,
            })
        })
    }

    /// The fast path of `EventLoggingMixin._log_event`: makes the event's
    /// fields (timestamp, ids, pid and thread id made here), queues its line
    /// and keeps it for `events`. Returns the `Event` when `return_event`
    /// (built now; otherwise only when `events` is read), else `True`.
    /// Returns `None`, having done nothing, when `kwargs` holds a name
    /// `Event()` would reject, so the caller can take the reference's path
    /// and raise its `TypeError`.
    #[pyo3(signature = (event_type, message, kwargs, job_id, return_event))]
    fn log_fields<'py>(
        &self,
        py: Python<'py>,
        event_type: Bound<'py, PyAny>,
        message: Bound<'py, PyAny>,
        kwargs: Option<Bound<'py, PyDict>>,
        job_id: Bound<'py, PyAny>,
        return_event: bool,
    ) -> PyResult<Option<Bound<'py, PyAny>>> {
        let _in_flight = exit_gate::enter(py);
        guarded("EventSink.log_fields", || {
            let keywords = kwargs.iter().flat_map(|kwargs| kwargs.iter());
            self.log_keywords(py, event_type, message, keywords, job_id, return_event)
                .map(|logged| logged.into_python(py))
        })
    }

    /// `EventLogger.log_event(event)`: sets `event.job_id`, keeps the event
    /// for `events` and queues the line the reference writes for it (the
    /// non-`None` entries of `event.__dict__`, enums as their value).
    fn log_event(
        &self,
        py: Python<'_>,
        event: Bound<'_, PyAny>,
        job_id: Bound<'_, PyAny>,
    ) -> PyResult<()> {
        let _in_flight = exit_gate::enter(py);
        guarded("EventSink.log_event", || {
            self.log_event_object(py, event, job_id)
        })
    }

    /// Appends the events logged since the last call to `events` (a deque),
    /// in logging order, building the `Event` objects the fast path left as
    /// fields. Callers serialise calls (EventLogger holds a lock for it). If
    /// building or appending fails, the events are kept for the next call.
    fn move_events_into(&self, py: Python<'_>, events: Bound<'_, PyAny>) -> PyResult<()> {
        let _in_flight = exit_gate::enter(py);
        guarded("EventSink.move_events_into", || {
            self.remembered.move_into(py, &self.layout, &events)
        })
    }

    /// How many events `events` keeps (its `maxlen`; `None`: all). Older
    /// fields are dropped unbuilt, as the deque would drop their events.
    #[pyo3(signature = (maxlen))]
    fn set_events_maxlen(&self, maxlen: Option<usize>) {
        self.remembered.set_maxlen(maxlen);
    }

    fn __traverse__(&self, visit: PyVisit<'_>) -> Result<(), PyTraverseError> {
        self.remembered.traverse(&visit)
    }

    fn __clear__(&self, py: Python<'_>) {
        self.remembered.clear(py);
    }

    /// Writes everything queued so far; with `fsync`, makes it durable.
    /// Raises `OSError` if a write failed.
    #[pyo3(signature = (fsync=false))]
    fn flush(&self, py: Python<'_>, fsync: bool) -> PyResult<()> {
        let _in_flight = exit_gate::enter(py);
        guarded("EventSink.flush", || self.writer.flush(py, fsync))
    }

    /// Flushes, fsyncs and stops the flush thread; later events are refused.
    fn close(&self, py: Python<'_>) -> PyResult<()> {
        let _in_flight = exit_gate::enter(py);
        guarded("EventSink.close", || self.writer.close(py))
    }

    /// Restarts the flush thread in a forked child. The parent's queued lines
    /// are left to the parent (the child would write them twice).
    fn _after_fork_in_child(&self) -> PyResult<()> {
        guarded("EventSink._after_fork_in_child", || {
            self.writer.current().map(|_| ())
        })
    }

    /// Number of `write()` calls made so far by this process's flush thread.
    #[getter]
    fn batches_written(&self) -> PyResult<u64> {
        guarded("EventSink.batches_written", || {
            Ok(self.writer.current()?.batches_written())
        })
    }

    #[getter]
    fn path(&self) -> PathBuf {
        self.writer.path.clone()
    }
}

impl EventSink {
    /// [`log_event`](Self::log_event).
    fn log_event_object(
        &self,
        py: Python<'_>,
        event: Bound<'_, PyAny>,
        job_id: Bound<'_, PyAny>,
    ) -> PyResult<()> {
        event.setattr(intern!(py, "job_id"), job_id)?;
        self.remembered
            .remember(py, Remembered::Built(event.clone().unbind()));
        let buffer = self.writer.current()?.line_buffer();
        let (line, durable) = object_line(py, buffer, &event)?;
        self.writer.push(py, line, durable)
    }

    /// [`log_fields`](Self::log_fields) with the caller's keyword arguments
    /// as `(name, value)` pairs, from a dict or from a vectorcall's arrays.
    pub(super) fn log_keywords<'py>(
        &self,
        py: Python<'py>,
        event_type: Bound<'py, PyAny>,
        message: Bound<'py, PyAny>,
        keywords: impl Iterator<Item = (Bound<'py, PyAny>, Bound<'py, PyAny>)>,
        job_id: Bound<'py, PyAny>,
        return_event: bool,
    ) -> PyResult<Logged<'py>> {
        let Some(mut values) = self.layout.caller_values(py, keywords) else {
            return Ok(Logged::Declined);
        };
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0.0, |d| d.as_secs_f64());
        let kind = self.kinds.of(py, &event_type)?;
        let mut made = Made {
            timestamp: now,
            event_id: None,
            process_id: current_pid(),
            thread_id: current_thread_ident(),
        };
        for (slot, role) in values.iter_mut().zip(&self.layout.roles) {
            let value = match role {
                Role::EventId if slot.is_none() => {
                    made.event_id = Some(generated_event_id(&kind.name, now));
                    continue;
                }
                Role::JobId => job_id.clone(),
                Role::EventType => event_type.clone(),
                Role::Message => message.clone(),
                _ => continue, // the caller's, or made here
            };
            *slot = Some(value.unbind());
        }
        let buffer = self.writer.current()?.line_buffer();
        let line = fields_line(py, buffer, &self.layout, &values, &made, &kind)?;
        let logged = if return_event {
            let values = self.layout.field_values(py, &values, &made)?;
            let event = self.layout.build_event(py, values)?;
            self.remembered
                .remember(py, Remembered::Built(event.clone().unbind()));
            Logged::Built(event)
        } else {
            self.remembered
                .remember(py, Remembered::Fields(values.into_boxed_slice(), made));
            Logged::Queued
        };
        self.writer.push(py, line, kind.durable)?;
        Ok(logged)
    }
}
