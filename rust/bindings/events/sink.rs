//! `EventSink`: one logger's event buffers and flush thread, its write-through
//! rule, the `Event` objects it keeps for `events`, and the lines it writes.

use std::collections::VecDeque;
use std::fs::{File, OpenOptions};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicPtr, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use pyo3::exceptions::PyValueError;
use pyo3::intern;
use pyo3::prelude::*;
use pyo3::types::{PyBool, PyDict, PyFloat, PyList, PyString, PyType};
use pyo3::{PyTraverseError, PyVisit};

use crate::events::json::{write_f64, write_str};
use crate::events::writer::{current_pid, EventWriter, PushError, WriterConfig};

use super::errors::{io_os_error, os_error, push_error};
use super::ids::{current_thread_ident, generated_event_id};
use super::json_encoder::{encode, enum_type, enum_value, write_member, StableItems};
use crate::bindings::lifecycle::gil::{detach, guarded};
use crate::bindings::lifecycle::{exit_gate, live_writers};

/// Job-level events are fsynced before the logging call returns.
const DURABLE_EVENT_TYPES: [&str; 4] = ["job_start", "job_complete", "job_failed", "job_restart"];

/// How a sink writes, from `EventSink(...)`'s arguments.
struct SinkConfig {
    writer: WriterConfig,
    write_through: bool,
}

impl SinkConfig {
    /// `flush_interval` 0 means write-through; otherwise it is the longest
    /// time a line waits in memory.
    fn new(flush_interval: f64, queue_size: usize, write_through: bool) -> PyResult<Self> {
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

/// The native half of one `EventLogger`: its buffers, flush thread and the
/// `Event` class it builds in-memory events of.
#[pyclass(frozen, module = "data_juicer_accel._native")]
pub struct EventSink {
    /// Replaced (the old one leaked) in a forked child, whose copy of the
    /// parent's writer has no thread behind it.
    writer: AtomicPtr<EventWriter>,
    path: PathBuf,
    config: WriterConfig,
    /// Each call has its line in the file before it returns: asked for
    /// (`flush_interval=0`), in a worker process, or in a forked child.
    write_through: AtomicBool,
    event_class: Py<PyType>,
    object_new: Py<PyAny>,
    /// `Event`'s field names in declaration order.
    fields: Vec<Py<PyString>>,
    /// `"name": ` per field, as the line spells it.
    member_prefixes: Vec<Vec<u8>>,
    roles: Vec<Role>,
    /// `{field: None for field in fields}`, copied for each event's `__dict__`.
    none_fields: Py<PyDict>,
    /// What the fast path needs of each `EventType` member seen so far.
    event_kinds: Mutex<Vec<Arc<EventKind>>>,
    /// Events logged but not yet moved into `EventLogger.events`. The lock
    /// is only taken with the GIL held and no Python code runs under it
    /// (which could switch threads), so it is never held by another thread
    /// when Python forks, nor waited for by a thread holding the GIL.
    remembered: Mutex<VecDeque<Remembered>>,
    /// `events.maxlen`: older entries are dropped from `remembered`.
    events_maxlen: AtomicUsize,
}

/// One logged event on its way to `EventLogger.events`.
enum Remembered {
    /// An `Event` object that exists already (built for loguru, or passed
    /// to `log_event`).
    Built(Py<PyAny>),
    /// The values of `Event`'s fields, in declaration order, and those the
    /// call made itself; the object is built when `events` is read, if the
    /// deque still keeps it then.
    Fields(Box<[Option<Py<PyAny>>]>, Made),
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

/// The field values `log_fields` makes itself, kept as Rust values: their
/// Python objects (a float, two ints, a str) are made only when `events` is
/// read or loguru wants the event. Making them per event, and freeing them
/// when the deque drops the event, cost 1.0k of 15.7k instructions per
/// event (callgrind, `benches/event_loop.py`).
struct Made {
    timestamp: f64,
    /// Generated when the caller gave no `event_id`.
    event_id: Option<String>,
    process_id: u32,
    thread_id: u64,
}

impl Made {
    /// Whether this call made the value of a field with `role`.
    fn has(&self, role: Role) -> bool {
        match role {
            Role::Timestamp | Role::ProcessId | Role::ThreadId => true,
            Role::EventId => self.event_id.is_some(),
            _ => false,
        }
    }

    /// The value of a field with `role`, when this call made it.
    fn value<'py>(&self, py: Python<'py>, role: Role) -> PyResult<Option<Bound<'py, PyAny>>> {
        Ok(match (role, &self.event_id) {
            (Role::Timestamp, _) => Some(PyFloat::new(py, self.timestamp).into_any()),
            (Role::ProcessId, _) => Some(self.process_id.into_pyobject(py)?.into_any()),
            (Role::ThreadId, _) => Some(self.thread_id.into_pyobject(py)?.into_any()),
            (Role::EventId, Some(id)) => Some(PyString::new(py, id).into_any()),
            _ => None,
        })
    }

    /// Writes the JSON of a field this call made (see [`has`](Self::has)),
    /// as `json.dumps` writes the Python value.
    fn write(&self, out: &mut Vec<u8>, role: Role) {
        match (role, &self.event_id) {
            (Role::Timestamp, _) => write_f64(out, self.timestamp),
            (Role::ProcessId, _) => {
                out.extend_from_slice(itoa::Buffer::new().format(self.process_id).as_bytes())
            }
            (Role::ThreadId, _) => {
                out.extend_from_slice(itoa::Buffer::new().format(self.thread_id).as_bytes())
            }
            (Role::EventId, Some(id)) => write_str(out, id),
            _ => {}
        }
    }
}

/// An event type as the fast path writes it, worked out once per member
/// rather than once per event (an `isinstance` and an attribute lookup).
struct EventKind {
    /// The member itself, held so that its address stays its identity.
    member: Py<PyAny>,
    /// `str(member.value)`: the prefix of generated event ids.
    name: String,
    /// `member.value` as JSON.
    json: Vec<u8>,
    /// A job-level event, fsynced before the call returns.
    durable: bool,
}

/// The longest `flush_interval` accepted: a day.
const MAX_FLUSH_INTERVAL_SECONDS: f64 = 86_400.0;

/// Event types remembered per sink; `EventType` has 26 members.
const MAX_EVENT_KINDS: usize = 64;

/// Who provides a field's value on the fast path.
#[derive(Clone, Copy, PartialEq)]
enum Role {
    /// The caller's keyword argument, or None.
    Plain,
    /// The caller's, or generated when absent or None.
    EventId,
    /// Always the logger's job id.
    JobId,
    // Made by the call itself; a keyword of that name is a TypeError.
    EventType,
    Timestamp,
    Message,
    ProcessId,
    ThreadId,
}

impl Role {
    fn of(field: &str) -> Role {
        match field {
            "event_id" => Role::EventId,
            "job_id" => Role::JobId,
            "event_type" => Role::EventType,
            "timestamp" => Role::Timestamp,
            "message" => Role::Message,
            "process_id" => Role::ProcessId,
            "thread_id" => Role::ThreadId,
            _ => Role::Plain,
        }
    }
}

impl EventSink {
    /// The sink of `EventSink(...)` once its arguments are checked: creates
    /// the file (so that it exists from the logger's construction) and
    /// starts the flush thread.
    fn create(
        py: Python<'_>,
        path: PathBuf,
        event_class: Bound<'_, PyType>,
        fields: Vec<Bound<'_, PyString>>,
        sink_config: SinkConfig,
        events_maxlen: Option<usize>,
    ) -> PyResult<Self> {
        let object_new = py
            .get_type::<PyAny>()
            .getattr(intern!(py, "__new__"))?
            .unbind();
        let field_names = fields
            .iter()
            .map(|f| f.to_str().map(str::to_owned))
            .collect::<PyResult<Vec<_>>>()?;
        let none_fields = PyDict::new(py);
        let mut interned = Vec::with_capacity(field_names.len());
        for name in &field_names {
            let key = PyString::intern(py, name);
            none_fields.set_item(&key, py.None())?;
            interned.push(key.unbind());
        }
        detach(py, || open_append(&path)).map_err(|e| io_os_error("creating", &path, &e))?;
        let writer = EventWriter::open(&path, sink_config.writer.clone())
            .map_err(|e| io_os_error("starting the event flush thread for", &path, &e))?;
        let writer = Box::into_raw(Box::new(writer));
        live_writers::add(writer);
        Ok(EventSink {
            writer: AtomicPtr::new(writer),
            path,
            config: sink_config.writer,
            write_through: AtomicBool::new(sink_config.write_through),
            event_class: event_class.unbind(),
            object_new,
            roles: field_names.iter().map(|name| Role::of(name)).collect(),
            member_prefixes: field_names
                .iter()
                .map(|name| {
                    let mut prefix = Vec::with_capacity(name.len() + 4);
                    write_str(&mut prefix, name);
                    prefix.extend_from_slice(b": ");
                    prefix
                })
                .collect(),
            fields: interned,
            none_fields: none_fields.unbind(),
            event_kinds: Mutex::new(Vec::new()),
            remembered: Mutex::new(VecDeque::new()),
            events_maxlen: AtomicUsize::new(events_maxlen.unwrap_or(usize::MAX)),
        })
    }

    /// The writer of the current process, restarting it after a fork that
    /// `os.register_at_fork` did not see.
    fn writer(&self) -> PyResult<&EventWriter> {
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
    fn push(&self, py: Python<'_>, line: Vec<u8>, durable: bool) -> PyResult<()> {
        let writer = self.writer()?;
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
            let sink_config = SinkConfig::new(flush_interval, queue_size, write_through)?;
            Self::create(py, path, event_class, fields, sink_config, events_maxlen)
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
            self.move_remembered_into(py, events)
        })
    }

    /// How many events `events` keeps (its `maxlen`; `None`: all). Older
    /// fields are dropped unbuilt, as the deque would drop their events.
    #[pyo3(signature = (maxlen))]
    fn set_events_maxlen(&self, maxlen: Option<usize>) {
        self.events_maxlen
            .store(maxlen.unwrap_or(usize::MAX), Ordering::Relaxed);
    }

    fn __traverse__(&self, visit: PyVisit<'_>) -> Result<(), PyTraverseError> {
        // A queue locked by a logging thread is skipped: an edge left out
        // only keeps objects alive longer, never frees one in use.
        if let Ok(queue) = self.remembered.try_lock() {
            for entry in queue.iter() {
                match entry {
                    Remembered::Built(event) => visit.call(event)?,
                    Remembered::Fields(fields, _made) => {
                        for value in fields.iter().flatten() {
                            visit.call(value)?;
                        }
                    }
                }
            }
        }
        Ok(())
    }

    fn __clear__(&self) {
        let dropped = self
            .remembered
            .lock()
            .map(|mut queue| std::mem::take(&mut *queue));
        drop(dropped); // outside the lock: dropping may run Python code
    }

    /// Writes everything queued so far; with `fsync`, makes it durable.
    /// Raises `OSError` if a write failed.
    #[pyo3(signature = (fsync=false))]
    fn flush(&self, py: Python<'_>, fsync: bool) -> PyResult<()> {
        let _in_flight = exit_gate::enter(py);
        guarded("EventSink.flush", || {
            let writer = self.writer()?;
            detach(py, || writer.flush(fsync)).map_err(|e| os_error(&e))
        })
    }

    /// Flushes, fsyncs and stops the flush thread; later events are refused.
    fn close(&self, py: Python<'_>) -> PyResult<()> {
        let _in_flight = exit_gate::enter(py);
        guarded("EventSink.close", || {
            let writer = self.writer()?;
            detach(py, || writer.close()).map_err(|e| os_error(&e))
        })
    }

    /// Restarts the flush thread in a forked child. The parent's queued lines
    /// are left to the parent (the child would write them twice).
    fn _after_fork_in_child(&self) -> PyResult<()> {
        guarded("EventSink._after_fork_in_child", || {
            self.writer().map(|_| ())
        })
    }

    /// Number of `write()` calls made so far by this process's flush thread.
    #[getter]
    fn batches_written(&self) -> PyResult<u64> {
        guarded("EventSink.batches_written", || {
            Ok(self.writer()?.batches_written())
        })
    }

    #[getter]
    fn path(&self) -> PathBuf {
        self.path.clone()
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
        self.remember(Remembered::Built(event.clone().unbind()));
        let dict = event.getattr(intern!(py, "__dict__"))?;
        let dict = dict.cast::<PyDict>()?;
        let mut line = self.writer()?.line_buffer();
        line.push(b'{');
        let mut first = true;
        let mut durable = false;
        let items = StableItems::of(dict);
        for item in items.list.iter() {
            let (key, value) = item.extract::<(Bound<'_, PyAny>, Bound<'_, PyAny>)>()?;
            if value.is_none() {
                continue;
            }
            let key = key.str()?;
            let key = key.to_str()?;
            if key == "event_type" {
                let type_value = enum_value(py, &value)?;
                if let Ok(name) = type_value.cast::<PyString>() {
                    durable = DURABLE_EVENT_TYPES.contains(&name.to_str()?);
                }
            }
            write_member(py, &mut line, &mut first, key, &value)?;
            items.check_unchanged()?;
        }
        line.extend_from_slice(b"}\n");
        self.push(py, line, durable)
    }

    /// [`move_events_into`](Self::move_events_into).
    fn move_remembered_into(&self, py: Python<'_>, events: Bound<'_, PyAny>) -> PyResult<()> {
        let mut taken = match self.remembered.lock() {
            Ok(mut queue) => std::mem::take(&mut *queue),
            Err(_) => return Err(PyValueError::new_err("event memory is poisoned")),
        };
        if taken.is_empty() {
            return Ok(());
        }
        let moved = self.build_all(py, &mut taken).and_then(|built| {
            events.call_method1(intern!(py, "extend"), (built,))?;
            Ok(())
        });
        if moved.is_err() {
            self.keep_in_front(taken);
        }
        moved
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
        let Some(mut values) = self.caller_values(py, keywords) else {
            return Ok(Logged::Declined);
        };
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0.0, |d| d.as_secs_f64());
        let kind = self.event_kind(py, &event_type)?;
        let mut made = Made {
            timestamp: now,
            event_id: None,
            process_id: current_pid(),
            thread_id: current_thread_ident(),
        };
        for (slot, role) in values.iter_mut().zip(&self.roles) {
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
        let line = self.event_line(py, &values, &made, &kind)?;
        let logged = if return_event {
            let event = self.build_event(py, self.field_values(py, &values, &made)?)?;
            self.remember(Remembered::Built(event.clone().unbind()));
            Logged::Built(event)
        } else {
            self.remember(Remembered::Fields(values.into_boxed_slice(), made));
            Logged::Queued
        };
        self.push(py, line, kind.durable)?;
        Ok(logged)
    }

    /// The caller's keyword values by field, `None` left out; or `None`
    /// when a name is one `Event()` rejects or one the call makes itself.
    fn caller_values<'py>(
        &self,
        py: Python<'py>,
        keywords: impl Iterator<Item = (Bound<'py, PyAny>, Bound<'py, PyAny>)>,
    ) -> Option<Vec<Option<Py<PyAny>>>> {
        let mut values: Vec<Option<Py<PyAny>>> = Vec::with_capacity(self.roles.len());
        values.resize_with(self.roles.len(), || None);
        for (key, value) in keywords {
            let index = self.field_index(py, &key)?;
            match self.roles[index] {
                Role::Plain | Role::EventId if !value.is_none() => {
                    values[index] = Some(value.unbind())
                }
                Role::Plain | Role::EventId => {}
                Role::JobId => {} // overwritten by log_event in the reference
                _computed => return None,
            }
        }
        Some(values)
    }

    /// The JSON line of an event, fields in declaration order, `None` left
    /// out as the reference does.
    fn event_line(
        &self,
        py: Python<'_>,
        values: &[Option<Py<PyAny>>],
        made: &Made,
        kind: &EventKind,
    ) -> PyResult<Vec<u8>> {
        let mut line = self.writer()?.line_buffer();
        line.push(b'{');
        for (index, (value, &role)) in values.iter().zip(&self.roles).enumerate() {
            let value = value.as_ref().map(|v| v.bind(py));
            let made_here = made.has(role);
            if role != Role::EventType && !made_here && value.is_none_or(|v| v.is_none()) {
                continue;
            }
            if line.len() > 1 {
                line.extend_from_slice(b", ");
            }
            line.extend_from_slice(&self.member_prefixes[index]);
            if role == Role::EventType {
                line.extend_from_slice(&kind.json);
            } else if made_here {
                made.write(&mut line, role);
            } else if let Some(value) = value {
                encode(py, &mut line, value, 0)?;
            }
        }
        line.extend_from_slice(b"}\n");
        Ok(line)
    }
}

impl EventSink {
    /// Turns every kept entry into a built `Event` (in place, so that a
    /// failure loses nothing) and lists them in order.
    fn build_all<'py>(
        &self,
        py: Python<'py>,
        taken: &mut VecDeque<Remembered>,
    ) -> PyResult<Bound<'py, PyList>> {
        let built = PyList::empty(py);
        for entry in taken.iter_mut() {
            if let Remembered::Fields(fields, made) = entry {
                let values = self.field_values(py, fields, made)?;
                *entry = Remembered::Built(self.build_event(py, values)?.unbind());
            }
            if let Remembered::Built(event) = entry {
                built.append(event.bind(py))?;
            }
        }
        Ok(built)
    }

    /// Puts `taken` back before what was logged meanwhile, keeping `maxlen`.
    fn keep_in_front(&self, mut taken: VecDeque<Remembered>) {
        let maxlen = self.events_maxlen.load(Ordering::Relaxed);
        let mut evicted = Vec::new();
        if let Ok(mut queue) = self.remembered.lock() {
            taken.append(&mut queue);
            while taken.len() > maxlen {
                evicted.extend(taken.pop_front());
            }
            *queue = taken;
        }
        drop(evicted); // outside the lock: dropping may run Python code
    }

    /// Keeps `entry` for `events`, dropping the oldest beyond `maxlen`.
    fn remember(&self, entry: Remembered) {
        let maxlen = self.events_maxlen.load(Ordering::Relaxed);
        let evicted = match self.remembered.lock() {
            Ok(mut queue) => {
                queue.push_back(entry);
                (queue.len() > maxlen).then(|| queue.pop_front()).flatten()
            }
            Err(_) => None,
        };
        drop(evicted); // outside the lock: dropping may run Python code
    }

    /// Every field's value, in declaration order: the caller's and those
    /// `made` by the call.
    fn field_values(
        &self,
        py: Python<'_>,
        values: &[Option<Py<PyAny>>],
        made: &Made,
    ) -> PyResult<Vec<Option<Py<PyAny>>>> {
        values
            .iter()
            .zip(&self.roles)
            .map(|(value, &role)| match value {
                Some(value) => Ok(Some(value.clone_ref(py))),
                None => Ok(made.value(py, role)?.map(Bound::unbind)),
            })
            .collect()
    }

    /// An `Event` whose `__dict__` is `{field: value}` for every field, in
    /// declaration order, as `Event(...)` would make it.
    fn build_event<'py>(
        &self,
        py: Python<'py>,
        values: impl IntoIterator<Item = Option<Py<PyAny>>>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let dict = self.none_fields.bind(py).copy()?;
        for (field, value) in self.fields.iter().zip(values) {
            if let Some(value) = value {
                dict.set_item(field.bind(py), value)?;
            }
        }
        let event = self
            .object_new
            .bind(py)
            .call1((self.event_class.bind(py),))?;
        event.setattr(intern!(py, "__dict__"), dict)?;
        Ok(event)
    }

    /// The cached [`EventKind`] of `event_type`, worked out on first sight.
    /// Only enum members are cached: other values may be mutable.
    fn event_kind(
        &self,
        py: Python<'_>,
        event_type: &Bound<'_, PyAny>,
    ) -> PyResult<Arc<EventKind>> {
        let known = |kinds: &Vec<Arc<EventKind>>| {
            kinds
                .iter()
                .find(|kind| kind.member.as_ptr() == event_type.as_ptr())
                .cloned()
        };
        if let Some(kind) = self.event_kinds.lock().ok().and_then(|kinds| known(&kinds)) {
            return Ok(kind);
        }
        let value = enum_value(py, event_type)?;
        let name = match value.cast::<PyString>() {
            Ok(text) => text.to_str()?.to_owned(),
            Err(_) => value.str()?.to_str()?.to_owned(),
        };
        let mut json = Vec::new();
        encode(py, &mut json, &value, 0)?;
        let kind = Arc::new(EventKind {
            member: event_type.clone().unbind(),
            durable: value.is_instance_of::<PyString>()
                && DURABLE_EVENT_TYPES.contains(&name.as_str()),
            name,
            json,
        });
        if event_type.is_instance(enum_type(py)?)? {
            if let Ok(mut kinds) = self.event_kinds.lock() {
                if kinds.len() < MAX_EVENT_KINDS && known(&kinds).is_none() {
                    kinds.push(Arc::clone(&kind));
                }
            }
        }
        Ok(kind)
    }

    fn field_index(&self, py: Python<'_>, key: &Bound<'_, PyAny>) -> Option<usize> {
        // Keyword names are usually the interned strings themselves.
        if let Some(index) = self.fields.iter().position(|f| f.bind(py).is(key)) {
            return Some(index);
        }
        let key = key.cast::<PyString>().ok()?.to_str().ok()?;
        self.fields
            .iter()
            .position(|f| f.bind(py).to_str().is_ok_and(|name| name == key))
    }
}

impl Drop for EventSink {
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
