//! Bindings of the event core.
//!
//! `EventSink` is what `EventLogger` holds: it turns one event into a JSON
//! line (serialised here, in the calling thread, so the flush thread never
//! sees a Python object), builds the `Event` dataclass for the in-memory
//! deque, and hands the line to the lock-free queue of an
//! [`EventWriter`]. Nothing here panics across the boundary: errors become
//! Python exceptions, write errors an `OSError` naming the file.

use std::cell::Cell;
use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::atomic::{AtomicPtr, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use pyo3::exceptions::{PyOSError, PyValueError};
use pyo3::intern;
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyBool, PyDict, PyFloat, PyInt, PyList, PyString, PyTuple, PyType};
use pyo3::{PyTraverseError, PyVisit};

use crate::events::analysis::{self, Analysis, PartitionState, Raw};
use crate::events::json::{write_f64, write_i64, write_str};
use crate::events::writer::{current_pid, EventWriter, PushError, WriteError, WriterConfig};

/// Job-level events are fsynced before the logging call returns.
const DURABLE_EVENT_TYPES: [&str; 4] = ["job_start", "job_complete", "job_failed", "job_restart"];

/// Containers nested deeper than this are written as `str(value)`, which
/// also ends self-referencing structures (where `json.dumps` raises).
const MAX_DEPTH: usize = 200;

static ENUM_TYPE: PyOnceLock<Py<PyType>> = PyOnceLock::new();
static JSON_DUMPS: PyOnceLock<Py<PyAny>> = PyOnceLock::new();

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<EventSink>()?;
    m.add_class::<LogEventFastPath>()?;
    m.add_function(wrap_pyfunction!(analyze_events_file, m)?)?;
    m.add_function(wrap_pyfunction!(events_file_has_type, m)?)?;
    Ok(())
}

fn os_error(error: &WriteError) -> PyErr {
    let path = error.path.display().to_string();
    match error.errno {
        Some(errno) => {
            PyOSError::new_err((errno, format!("writing events: {}", error.message), path))
        }
        None => PyOSError::new_err(error.to_string()),
    }
}

fn push_error(error: PushError, path: &std::path::Path) -> PyErr {
    match error {
        PushError::Failed(error) => os_error(&error),
        PushError::Closed => {
            PyValueError::new_err(format!("event logger for {} is closed", path.display()))
        }
        PushError::Full(_) => PyOSError::new_err("event queue full"),
    }
}

/// The native half of one `EventLogger`: its queue, flush thread and the
/// `Event` class it builds in-memory events of.
#[pyclass(frozen, module = "data_juicer_accel._native")]
pub struct EventSink {
    /// Replaced (the old one leaked) in a forked child, whose copy of the
    /// parent's writer has no thread behind it.
    writer: AtomicPtr<EventWriter>,
    path: PathBuf,
    config: WriterConfig,
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
pub(super) enum Logged<'py> {
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
    fn into_python(self, py: Python<'py>) -> Option<Bound<'py, PyAny>> {
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
        let fresh = Box::into_raw(Box::new(self.open_writer()?));
        match self
            .writer
            .compare_exchange(current, fresh, Ordering::AcqRel, Ordering::Acquire)
        {
            Ok(_) => Ok(unsafe { &*fresh }),
            Err(winner) => {
                // Another thread of this child restarted it first.
                drop(unsafe { Box::from_raw(fresh) });
                Ok(unsafe { &*winner })
            }
        }
    }

    fn open_writer(&self) -> PyResult<EventWriter> {
        EventWriter::open(&self.path, self.config.clone()).map_err(|e| {
            PyOSError::new_err(format!(
                "starting the event flush thread for {}: {e}",
                self.path.display()
            ))
        })
    }

    /// Queues `line`, waiting without the GIL when the queue is full, and
    /// makes job-level events durable before returning.
    fn push(&self, py: Python<'_>, line: Vec<u8>, durable: bool) -> PyResult<()> {
        let writer = self.writer()?;
        match writer.try_push(line) {
            Ok(()) => {}
            Err(PushError::Full(line)) => py
                .detach(|| writer.push_blocking(line))
                .map_err(|e| push_error(e, &self.path))?,
            Err(other) => return Err(push_error(other, &self.path)),
        }
        if durable {
            py.detach(|| writer.flush(true)).map_err(|e| os_error(&e))?;
        }
        Ok(())
    }
}

#[pymethods]
impl EventSink {
    /// `path`: the JSONL file; `event_class`: the `Event` dataclass;
    /// `fields`: its field names in order; `flush_interval` in seconds;
    /// `queue_size` in events; `events_maxlen`: the `events` deque's maxlen.
    #[new]
    #[pyo3(signature = (path, event_class, fields, flush_interval=0.1, queue_size=65536, events_maxlen=None))]
    fn new(
        py: Python<'_>,
        path: PathBuf,
        event_class: Bound<'_, PyType>,
        fields: Vec<Bound<'_, PyString>>,
        flush_interval: f64,
        queue_size: usize,
        events_maxlen: Option<usize>,
    ) -> PyResult<Self> {
        // Longer intervals would overflow the flush thread's deadlines.
        if !(flush_interval > 0.0 && flush_interval <= MAX_FLUSH_INTERVAL_SECONDS) {
            return Err(PyValueError::new_err(format!(
                "flush_interval must be a positive number of seconds, at most \
                 {MAX_FLUSH_INTERVAL_SECONDS} (one day), not {flush_interval}"
            )));
        }
        let config = WriterConfig {
            flush_interval: Duration::from_secs_f64(flush_interval),
            queue_capacity: queue_size.max(1),
            ..WriterConfig::default()
        };
        let writer = EventWriter::open(&path, config.clone()).map_err(|e| {
            PyOSError::new_err(format!(
                "starting the event flush thread for {}: {e}",
                path.display()
            ))
        })?;
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
        Ok(EventSink {
            writer: AtomicPtr::new(Box::into_raw(Box::new(writer))),
            path,
            config,
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
        let keywords = kwargs.iter().flat_map(|kwargs| kwargs.iter());
        self.log_keywords(py, event_type, message, keywords, job_id, return_event)
            .map(|logged| logged.into_python(py))
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
        event.setattr(intern!(py, "job_id"), job_id)?;
        self.remember(Remembered::Built(event.clone().unbind()));
        let dict = event.getattr(intern!(py, "__dict__"))?;
        let dict = dict.cast::<PyDict>()?;
        let mut line = self.writer()?.line_buffer();
        line.push(b'{');
        let mut first = true;
        let mut durable = false;
        for (key, value) in dict.iter() {
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
        }
        line.extend_from_slice(b"}\n");
        self.push(py, line, durable)
    }

    /// Appends the events logged since the last call to `events` (a deque),
    /// in logging order, building the `Event` objects the fast path left as
    /// fields. Callers serialise calls (EventLogger holds a lock for it). If
    /// building or appending fails, the events are kept for the next call.
    fn move_events_into(&self, py: Python<'_>, events: Bound<'_, PyAny>) -> PyResult<()> {
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
        let writer = self.writer()?;
        py.detach(|| writer.flush(fsync)).map_err(|e| os_error(&e))
    }

    /// Flushes, fsyncs and stops the flush thread; later events are refused.
    fn close(&self, py: Python<'_>) -> PyResult<()> {
        let writer = self.writer()?;
        py.detach(|| writer.close()).map_err(|e| os_error(&e))
    }

    /// Restarts the flush thread in a forked child. The parent's queued lines
    /// are left to the parent (the child would write them twice).
    fn _after_fork_in_child(&self) -> PyResult<()> {
        self.writer().map(|_| ())
    }

    /// Number of `write()` calls made so far by this process's flush thread.
    #[getter]
    fn batches_written(&self) -> PyResult<u64> {
        Ok(self.writer()?.batches_written())
    }

    #[getter]
    fn path(&self) -> PathBuf {
        self.path.clone()
    }
}

impl EventSink {
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

/// loguru's numeric levels: below these, `_log_event` writes DEBUG lines
/// or an INFO line of its own.
const DEBUG_LEVEL: f64 = 10.0;
const INFO_LEVEL: f64 = 20.0;

/// `EventLoggingMixin._log_event` for the common case, in one native call:
/// the executor's `EventLogger` is the package's own (its `log_event` not
/// replaced) and no loguru sink takes DEBUG. Everything else, and every
/// error, is left to the Python method, which behaves as the reference.
#[pyclass(frozen, module = "data_juicer_accel._native")]
pub struct LogEventFastPath {
    /// loguru's `logger._core`, whose `min_level` is the lowest level any
    /// sink accepts (`inf` with none).
    loguru_core: Py<PyAny>,
    /// `EventLogger.log_event` as defined by the package.
    package_log_event: Py<PyAny>,
}

#[pymethods]
impl LogEventFastPath {
    #[new]
    fn new(loguru_core: Py<PyAny>, package_log_event: Py<PyAny>) -> Self {
        LogEventFastPath {
            loguru_core,
            package_log_event,
        }
    }

    /// Logs the event of `executor._log_event(event_type, message, **kwargs)`
    /// and returns `True`, or the `Event` when an INFO sink wants its line.
    /// Returns `None`, having done nothing, when the Python method must run.
    fn log<'py>(
        &self,
        py: Python<'py>,
        executor: Bound<'py, PyAny>,
        event_type: Bound<'py, PyAny>,
        message: Bound<'py, PyAny>,
        kwargs: Option<Bound<'py, PyDict>>,
    ) -> PyResult<Option<Bound<'py, PyAny>>> {
        let keywords = kwargs.iter().flat_map(|kwargs| kwargs.iter());
        self.log_keywords(py, &executor, event_type, message, keywords)
            .map(|logged| logged.into_python(py))
    }
}

impl LogEventFastPath {
    /// [`log`](Self::log) with the keyword arguments as `(name, value)` pairs.
    pub(super) fn log_keywords<'py>(
        &self,
        py: Python<'py>,
        executor: &Bound<'py, PyAny>,
        event_type: Bound<'py, PyAny>,
        message: Bound<'py, PyAny>,
        keywords: impl Iterator<Item = (Bound<'py, PyAny>, Bound<'py, PyAny>)>,
    ) -> PyResult<Logged<'py>> {
        let Some(min_level) = self.min_log_level(py) else {
            return Ok(Logged::Declined);
        };
        if min_level <= DEBUG_LEVEL {
            return Ok(Logged::Declined);
        }
        let Some((sink, job_id)) = self.package_logger_of(py, executor) else {
            return Ok(Logged::Declined);
        };
        let wants_event = min_level <= INFO_LEVEL;
        sink.get()
            .log_keywords(py, event_type, message, keywords, job_id, wants_event)
    }

    fn min_log_level(&self, py: Python<'_>) -> Option<f64> {
        let level = self
            .loguru_core
            .bind(py)
            .getattr(intern!(py, "min_level"))
            .ok()?;
        level.extract::<f64>().ok()
    }

    /// The sink and job id of `executor.event_logger` when it is a package
    /// `EventLogger` whose `log_event` is the package's.
    fn package_logger_of<'py>(
        &self,
        py: Python<'py>,
        executor: &Bound<'py, PyAny>,
    ) -> Option<(Bound<'py, EventSink>, Bound<'py, PyAny>)> {
        let event_logger = executor.getattr(intern!(py, "event_logger")).ok()?;
        let log_event = event_logger
            .get_type()
            .getattr(intern!(py, "log_event"))
            .ok()?;
        if !log_event.is(self.package_log_event.bind(py)) {
            return None;
        }
        let instance_dict = event_logger.getattr(intern!(py, "__dict__")).ok()?;
        let instance_dict = instance_dict.cast::<PyDict>().ok()?;
        if instance_dict.contains(intern!(py, "log_event")).ok()? {
            return None;
        }
        let sink = instance_dict.get_item(intern!(py, "_sink")).ok()??;
        let sink = sink.cast_into::<EventSink>().ok()?;
        let job_id = instance_dict.get_item(intern!(py, "job_id")).ok()??;
        Some((sink, job_id))
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
        // SAFETY: `Drop` has the only reference; the pointer came from Box.
        let writer = unsafe { Box::from_raw(current) };
        if writer.owned_by_current_process() {
            drop(writer); // flushes, fsyncs, joins the thread (no GIL needed)
        } else {
            writer.abandon();
        }
    }
}

/// `threading.get_ident()`: CPython returns `pthread_self()` on POSIX.
fn current_thread_ident() -> u64 {
    // SAFETY: pthread_self has no preconditions.
    unsafe { libc::pthread_self() as u64 }
}

/// `f"{event_type.value}_{int(time.time())}_{uuid4().hex[:8]}"`, as the
/// reference names events logged without an id.
fn generated_event_id(type_name: &str, now: f64) -> String {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut seconds = itoa::Buffer::new();
    let seconds = seconds.format(now as i64);
    let mut id = String::with_capacity(type_name.len() + seconds.len() + 10);
    id.push_str(type_name);
    id.push('_');
    id.push_str(seconds);
    id.push('_');
    let random = random_u32();
    for shift in (0..8).rev() {
        id.push(char::from(HEX[((random >> (shift * 4)) & 0xf) as usize]));
    }
    id
}

/// Eight hex digits for generated event ids (the reference uses
/// `uuid4().hex[:8]`); a per-thread xorshift seeded from time, pid and the
/// thread, enough for ids that only need to differ.
fn random_u32() -> u32 {
    thread_local! {
        static STATE: Cell<u64> = const { Cell::new(0) };
    }
    STATE.with(|state| {
        let mut x = state.get();
        if x == 0 {
            let nanos = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos() as u64);
            x = nanos ^ (u64::from(std::process::id()) << 32) ^ current_thread_ident() | 1;
        }
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        state.set(x);
        (x >> 16) as u32
    })
}

fn enum_type(py: Python<'_>) -> PyResult<&Bound<'_, PyType>> {
    ENUM_TYPE.import(py, "enum", "Enum")
}

/// `value.value` for an `Enum` member, else `value`. Members keep it in
/// `_value_`, an instance attribute; `.value` is a slower Python property.
fn enum_value<'py>(py: Python<'py>, value: &Bound<'py, PyAny>) -> PyResult<Bound<'py, PyAny>> {
    if value.is_instance(enum_type(py)?)? {
        match value.getattr(intern!(py, "_value_")) {
            Ok(inner) => Ok(inner),
            Err(_) => value.getattr(intern!(py, "value")),
        }
    } else {
        Ok(value.clone())
    }
}

fn write_member(
    py: Python<'_>,
    out: &mut Vec<u8>,
    first: &mut bool,
    key: &str,
    value: &Bound<'_, PyAny>,
) -> PyResult<()> {
    if !*first {
        out.extend_from_slice(b", ");
    }
    *first = false;
    write_str(out, key);
    out.extend_from_slice(b": ");
    encode(py, out, value, 0)
}

/// Writes `value` as `json.dumps` would; where `json.dumps` raises
/// (sets, custom objects, non-string keys it cannot convert, cycles) the
/// value's `str()` is written instead. Enums are written as their value.
fn encode(
    py: Python<'_>,
    out: &mut Vec<u8>,
    value: &Bound<'_, PyAny>,
    depth: usize,
) -> PyResult<()> {
    // The order of checks follows the C encoder of the json module.
    if let Ok(text) = value.cast::<PyString>() {
        return encode_str(py, out, text);
    }
    if value.is_none() {
        out.extend_from_slice(b"null");
    } else if let Ok(flag) = value.cast::<PyBool>() {
        out.extend_from_slice(if flag.is_true() { b"true" } else { b"false" });
    } else if let Ok(int) = value.cast::<PyInt>() {
        encode_int(py, out, int)?;
    } else if let Ok(float) = value.cast::<PyFloat>() {
        write_f64(out, float.value());
    } else if depth >= MAX_DEPTH {
        encode_str(py, out, &value.str()?)?;
    } else if let Ok(list) = value.cast::<PyList>() {
        encode_items(py, out, list.iter(), depth)?;
    } else if let Ok(tuple) = value.cast::<PyTuple>() {
        encode_items(py, out, tuple.iter(), depth)?;
    } else if let Ok(dict) = value.cast::<PyDict>() {
        out.push(b'{');
        for (i, (key, item)) in dict.iter().enumerate() {
            if i > 0 {
                out.extend_from_slice(b", ");
            }
            encode_key(py, out, &key)?;
            out.extend_from_slice(b": ");
            encode(py, out, &item, depth + 1)?;
        }
        out.push(b'}');
    } else if value.is_instance(enum_type(py)?)? {
        encode(py, out, &enum_value(py, value)?, depth + 1)?;
    } else {
        encode_str(py, out, &value.str()?)?;
    }
    Ok(())
}

fn encode_items<'py>(
    py: Python<'py>,
    out: &mut Vec<u8>,
    items: impl Iterator<Item = Bound<'py, PyAny>>,
    depth: usize,
) -> PyResult<()> {
    out.push(b'[');
    for (i, item) in items.enumerate() {
        if i > 0 {
            out.extend_from_slice(b", ");
        }
        encode(py, out, &item, depth + 1)?;
    }
    out.push(b']');
    Ok(())
}

/// Dictionary keys as `json.dumps` converts them.
fn encode_key(py: Python<'_>, out: &mut Vec<u8>, key: &Bound<'_, PyAny>) -> PyResult<()> {
    if let Ok(text) = key.cast::<PyString>() {
        return encode_str(py, out, text);
    }
    let text = if let Ok(float) = key.cast::<PyFloat>() {
        let mut digits = Vec::new();
        write_f64(&mut digits, float.value());
        String::from_utf8_lossy(&digits).into_owned()
    } else if key.is_none() {
        "null".to_string()
    } else if let Ok(flag) = key.cast::<PyBool>() {
        flag.is_true().to_string()
    } else if let Ok(int) = key.cast::<PyInt>() {
        let mut digits = Vec::new();
        encode_int(py, &mut digits, int)?;
        String::from_utf8_lossy(&digits).into_owned()
    } else {
        key.str()?.to_str()?.to_owned()
    };
    write_str(out, &text);
    Ok(())
}

/// `int.__repr__` (not the subclass's repr: `IntEnum` members are numbers).
fn encode_int(py: Python<'_>, out: &mut Vec<u8>, int: &Bound<'_, PyInt>) -> PyResult<()> {
    if let Ok(small) = int.extract::<i64>() {
        write_i64(out, small);
    } else {
        let repr = py
            .get_type::<PyInt>()
            .getattr(intern!(py, "__repr__"))?
            .call1((int,))?;
        out.extend_from_slice(repr.cast::<PyString>()?.to_str()?.as_bytes());
    }
    Ok(())
}

fn encode_str(py: Python<'_>, out: &mut Vec<u8>, text: &Bound<'_, PyString>) -> PyResult<()> {
    match text.to_str() {
        Ok(text) => write_str(out, text),
        Err(_) => {
            // Lone surrogates have no UTF-8 form; json.dumps escapes them.
            let dumps = JSON_DUMPS.get_or_try_init(py, || {
                PyResult::Ok(py.import("json")?.getattr("dumps")?.unbind())
            })?;
            let quoted = dumps.bind(py).call1((text,))?;
            out.extend_from_slice(quoted.cast::<PyString>()?.to_str()?.as_bytes());
        }
    }
    Ok(())
}

/// Parses raw JSON (kept by the analysis) into the Python value
/// `json.loads` would give; `None` (absent) becomes `default`.
fn raw_to_py<'py>(
    py: Python<'py>,
    raw: &Raw,
    default: Bound<'py, PyAny>,
) -> PyResult<Bound<'py, PyAny>> {
    match raw {
        None => Ok(default),
        Some(text) => {
            let value: serde_json::Value =
                serde_json::from_str(text).map_err(|e| PyValueError::new_err(e.to_string()))?;
            json_to_py(py, &value)
        }
    }
}

fn json_to_py<'py>(py: Python<'py>, value: &serde_json::Value) -> PyResult<Bound<'py, PyAny>> {
    use serde_json::Value;
    Ok(match value {
        Value::Null => py.None().into_bound(py),
        Value::Bool(flag) => PyBool::new(py, *flag).to_owned().into_any(),
        Value::Number(number) => {
            if let Some(int) = number.as_i64() {
                int.into_pyobject(py)?.into_any()
            } else if let Some(int) = number.as_u64() {
                int.into_pyobject(py)?.into_any()
            } else {
                PyFloat::new(py, number.as_f64().unwrap_or(f64::NAN)).into_any()
            }
        }
        Value::String(text) => PyString::new(py, text).into_any(),
        Value::Array(items) => {
            let list = PyList::empty(py);
            for item in items {
                list.append(json_to_py(py, item)?)?;
            }
            list.into_any()
        }
        Value::Object(map) => {
            let dict = PyDict::new(py);
            for (key, item) in map {
                dict.set_item(key, json_to_py(py, item)?)?;
            }
            dict.into_any()
        }
    })
}

/// One entry of the reference's `partition_states`.
fn partition_state_to_py<'py>(
    py: Python<'py>,
    state: &PartitionState,
) -> PyResult<Bound<'py, PyDict>> {
    let none = || py.None().into_bound(py);
    let dict = PyDict::new(py);
    let id = raw_to_py(py, &Some(state.id.clone()), none())?;
    let complete = state.latest_complete();
    // `latest_complete and metadata.get("success", False)`: None without a
    // completion, else the raw success value.
    let success = match complete {
        None => none(),
        Some(info) => raw_to_py(
            py,
            &info.success,
            PyBool::new(py, false).to_owned().into_any(),
        )?,
    };
    let from_complete = |pick: fn(&analysis::CompleteInfo) -> &Raw| -> PyResult<Bound<'py, PyAny>> {
        complete.map_or(Ok(none()), |info| raw_to_py(py, pick(info), none()))
    };
    let error = match complete {
        Some(info) if !info.is_success() => raw_to_py(py, &info.error, none())?,
        _ => none(),
    };
    let current_operation = match state.last_op_start() {
        None => none(),
        Some(op) => {
            let op_dict = PyDict::new(py);
            op_dict.set_item("name", raw_to_py(py, &op.name, none())?)?;
            op_dict.set_item("idx", raw_to_py(py, &op.idx, none())?)?;
            op_dict.set_item("started_at", raw_to_py(py, &op.timestamp, none())?)?;
            op_dict.set_item("completed", state.last_op_completed())?;
            op_dict.into_any()
        }
    };
    dict.set_item("partition_id", id)?;
    dict.set_item("status", state.status())?;
    dict.set_item("start_time", raw_to_py(py, &state.start_time(), none())?)?;
    dict.set_item("completion_time", from_complete(|info| &info.timestamp)?)?;
    dict.set_item("duration", from_complete(|info| &info.duration_seconds)?)?;
    dict.set_item("success", success)?;
    dict.set_item("error", error)?;
    dict.set_item("current_operation", current_operation)?;
    dict.set_item("retry_count", state.failure_count)?;
    dict.set_item("output_path", from_complete(|info| &info.output_path)?)?;
    Ok(dict)
}

fn analysis_to_py<'py>(py: Python<'py>, analysis: &Analysis) -> PyResult<Bound<'py, PyDict>> {
    let none = || py.None().into_bound(py);
    let states = PyDict::new(py);
    for state in analysis.partitions() {
        let state = partition_state_to_py(py, state)?;
        states.set_item(state.get_item("partition_id")?.unwrap_or_else(none), state)?;
    }
    let result = PyDict::new(py);
    result.set_item("total_events", analysis.total_events)?;
    result.set_item("job_status", analysis.job_status())?;
    result.set_item(
        "needs_reference_reading",
        analysis.needs_reference_reading(),
    )?;
    result.set_item("partition_states", states)?;
    // The latest checkpoint event as the reference sees it, reduced to the
    // one field it reads: `[]` or `[{"metadata": {"checkpoint_path": p}}]`.
    let checkpoints = PyList::empty(py);
    if let Some(path) = analysis.latest_checkpoint() {
        let event = PyDict::new(py);
        if path.is_some() {
            let metadata = PyDict::new(py);
            metadata.set_item("checkpoint_path", raw_to_py(py, path, none())?)?;
            event.set_item("metadata", metadata)?;
        }
        checkpoints.append(event)?;
    }
    result.set_item("checkpoints", checkpoints)?;
    // `[]` or the first job_start reduced to its timestamp.
    let job_starts = PyList::empty(py);
    if let Some(timestamp) = &analysis.first_job_start {
        let event = PyDict::new(py);
        event.set_item("event_type", "job_start")?;
        if timestamp.is_some() {
            event.set_item("timestamp", raw_to_py(py, timestamp, none())?)?;
        }
        job_starts.append(event)?;
    }
    result.set_item("job_start_events", job_starts)?;
    Ok(result)
}

/// Folds the JSONL log at `path` (in Rust, without the GIL) into what
/// `analyze_resumption_state` needs: `total_events`, `job_status`,
/// `partition_states` (as the reference computes them), `checkpoints`
/// (the latest checkpoint event, reduced) and `job_start_events` (the
/// first, reduced).
#[pyfunction]
fn analyze_events_file<'py>(py: Python<'py>, path: PathBuf) -> PyResult<Bound<'py, PyDict>> {
    let analysis = py.detach(|| analysis::analyze_file(&path)).map_err(|e| {
        PyOSError::new_err((
            e.raw_os_error().unwrap_or(0),
            e.to_string(),
            path.display().to_string(),
        ))
    })?;
    analysis_to_py(py, &analysis)
}

/// Whether the log at `path` holds an event of type `event_type`, read as
/// `check_job_completion` reads it; `None` when only Python can tell.
#[pyfunction]
fn events_file_has_type(
    py: Python<'_>,
    path: PathBuf,
    event_type: String,
) -> PyResult<Option<bool>> {
    py.detach(|| analysis::file_has_event_type(&path, &event_type))
        .map_err(|e| {
            PyOSError::new_err((
                e.raw_os_error().unwrap_or(0),
                e.to_string(),
                path.display().to_string(),
            ))
        })
}
