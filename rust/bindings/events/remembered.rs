//! `RememberedEvents`: the events a sink logged but has not yet handed to
//! `EventLogger.events`, kept in an [`EventMemory`] (appended to without a
//! lock in the common case), and built into `Event` objects only when
//! `events` is read.
//!
//! [`EventMemory`]: crate::events::memory::EventMemory

use std::collections::VecDeque;

use pyo3::intern;
use pyo3::prelude::*;
use pyo3::types::PyList;
use pyo3::{PyTraverseError, PyVisit};

use super::layout::EventLayout;
use super::made::Made;
use crate::events::memory::EventMemory;

/// One logged event on its way to `EventLogger.events`.
pub(super) enum Remembered {
    /// An `Event` object that exists already (built for loguru, or passed
    /// to `log_event`).
    Built(Py<PyAny>),
    /// The values of `Event`'s fields, in declaration order, and those the
    /// call made itself; the object is built when `events` is read, if the
    /// deque still keeps it then.
    Fields(Box<[Option<Py<PyAny>>]>, Made),
}

/// The events of one sink not yet moved into `events`, newest `maxlen`.
pub(super) struct RememberedEvents {
    memory: EventMemory<Remembered>,
}

impl RememberedEvents {
    /// `maxlen`: the `events` deque's (`None`: it keeps everything).
    pub(super) fn new(maxlen: Option<usize>) -> Self {
        RememberedEvents {
            memory: EventMemory::new(maxlen.unwrap_or(usize::MAX)),
        }
    }

    pub(super) fn set_maxlen(&self, maxlen: Option<usize>) {
        self.memory.set_maxlen(maxlen.unwrap_or(usize::MAX));
    }

    /// Keeps `entry`; takes no lock but once per
    /// [`FRESH_CAPACITY`](crate::events::memory::FRESH_CAPACITY) events.
    pub(super) fn remember(&self, entry: Remembered) {
        self.memory.push(entry);
    }

    /// Appends the events kept so far to `events` (a deque), in logging
    /// order, built with `layout`. If building or appending fails, they
    /// are kept for the next call, before those logged meanwhile.
    pub(super) fn move_into(
        &self,
        py: Python<'_>,
        layout: &EventLayout,
        events: &Bound<'_, PyAny>,
    ) -> PyResult<()> {
        let mut taken = self.memory.take();
        if taken.is_empty() {
            return Ok(());
        }
        let moved = build_all(py, layout, &mut taken).and_then(|built| {
            events.call_method1(intern!(py, "extend"), (built,))?;
            Ok(())
        });
        if moved.is_err() {
            self.memory.put_back(taken);
        }
        moved
    }

    /// Visits every Python object kept, for the garbage collector.
    pub(super) fn traverse(&self, visit: &PyVisit<'_>) -> Result<(), PyTraverseError> {
        self.memory.visit(|entry| match entry {
            Remembered::Built(event) => visit.call(event),
            Remembered::Fields(fields, _made) => fields
                .iter()
                .flatten()
                .try_for_each(|value| visit.call(value)),
        })
    }

    /// Drops every event kept (the garbage collector breaking a cycle).
    pub(super) fn clear(&self) {
        drop(self.memory.take_all());
    }
}

/// Turns every kept entry into a built `Event` (in place, so that a
/// failure loses nothing) and lists them in order.
fn build_all<'py>(
    py: Python<'py>,
    layout: &EventLayout,
    taken: &mut VecDeque<Remembered>,
) -> PyResult<Bound<'py, PyList>> {
    let built = PyList::empty(py);
    for entry in taken.iter_mut() {
        if let Remembered::Fields(fields, made) = entry {
            let values = layout.field_values(py, fields, made)?;
            *entry = Remembered::Built(layout.build_event(py, values)?.unbind());
        }
        if let Remembered::Built(event) = entry {
            built.append(event.bind(py))?;
        }
    }
    Ok(built)
}
