//! `Made`: the field values a fast-path call makes itself (timestamp,
//! generated event id, process and thread ids), kept as Rust values until
//! `events` is read or loguru wants the event.

use pyo3::prelude::*;
use pyo3::types::{PyFloat, PyString};

use super::layout::Role;
use crate::events::json::{write_f64, write_str};

/// The field values `log_fields` makes itself, kept as Rust values: their
/// Python objects (a float, two ints, a str) are made only when `events` is
/// read or loguru wants the event. Making them per event, and freeing them
/// when the deque drops the event, cost 1.0k of 15.7k instructions per
/// event (callgrind, `benches/event_loop.py`).
pub(super) struct Made {
    pub(super) timestamp: f64,
    /// Generated when the caller gave no `event_id`.
    pub(super) event_id: Option<String>,
    pub(super) process_id: u32,
    pub(super) thread_id: u64,
}

impl Made {
    /// Whether this call made the value of a field with `role`.
    pub(super) fn has(&self, role: Role) -> bool {
        match role {
            Role::Timestamp | Role::ProcessId | Role::ThreadId => true,
            Role::EventId => self.event_id.is_some(),
            _ => false,
        }
    }

    /// The value of a field with `role`, when this call made it.
    pub(super) fn value<'py>(
        &self,
        py: Python<'py>,
        role: Role,
    ) -> PyResult<Option<Bound<'py, PyAny>>> {
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
    pub(super) fn write(&self, out: &mut Vec<u8>, role: Role) {
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
