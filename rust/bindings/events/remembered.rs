//! `RememberedEvents`: the events a sink logged but has not yet handed to
//! `EventLogger.events`, kept as a deque and built into `Event` objects only
//! when `events` is read.
//!
//! The deque takes no lock of its own: it is a [`GilCell`], guarded by the
//! GIL every caller already holds (each method that touches it takes a
//! `Python<'_>` token, except the garbage collector's `traverse`, which
//! runs with the GIL held but gets no token from pyo3), and no Python code
//! runs while it is borrowed: evicted entries are dropped after the borrow
//! ends, because dropping a Python object may run Python code, which could
//! switch threads. `maxlen` is an atomic, read with a relaxed load.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};

use pyo3::intern;
use pyo3::prelude::*;
use pyo3::types::PyList;
use pyo3::{PyTraverseError, PyVisit};

use super::gil_cell::GilCell;
use super::layout::EventLayout;
use super::made::Made;

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
    /// Oldest first. Guarded by the GIL; never borrowed while Python code
    /// runs, so never found borrowed by another thread, nor in a child
    /// forked by the thread holding the GIL.
    queue: GilCell<VecDeque<Remembered>>,
    /// `events.maxlen` (`usize::MAX`: none): older entries are dropped.
    maxlen: AtomicUsize,
}

impl RememberedEvents {
    /// `maxlen`: the `events` deque's (`None`: it keeps everything).
    pub(super) fn new(maxlen: Option<usize>) -> Self {
        RememberedEvents {
            queue: GilCell::new(VecDeque::new()),
            maxlen: AtomicUsize::new(maxlen.unwrap_or(usize::MAX)),
        }
    }

    pub(super) fn set_maxlen(&self, maxlen: Option<usize>) {
        self.maxlen
            .store(maxlen.unwrap_or(usize::MAX), Ordering::Relaxed);
    }

    /// Keeps `entry`, dropping the oldest beyond `maxlen`.
    pub(super) fn remember(&self, py: Python<'_>, entry: Remembered) {
        let maxlen = self.maxlen.load(Ordering::Relaxed);
        let evicted = self.queue.with(py, |queue| {
            queue.push_back(entry);
            (queue.len() > maxlen).then(|| queue.pop_front()).flatten()
        });
        drop(evicted); // after the borrow: dropping may run Python code
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
        let mut taken = self.queue.with(py, std::mem::take).unwrap_or_default();
        if taken.is_empty() {
            return Ok(());
        }
        let moved = build_all(py, layout, &mut taken).and_then(|built| {
            events.call_method1(intern!(py, "extend"), (built,))?;
            Ok(())
        });
        if moved.is_err() {
            self.keep_in_front(py, taken);
        }
        moved
    }

    /// Puts `taken` back before what was logged meanwhile, keeping `maxlen`.
    fn keep_in_front(&self, py: Python<'_>, mut taken: VecDeque<Remembered>) {
        let maxlen = self.maxlen.load(Ordering::Relaxed);
        let mut evicted = Vec::new();
        self.queue.with(py, |queue| {
            taken.append(queue);
            while taken.len() > maxlen {
                evicted.extend(taken.pop_front());
            }
            *queue = taken;
        });
        drop(evicted); // after the borrow: dropping may run Python code
    }

    /// Visits every Python object kept, for the garbage collector. A queue
    /// borrowed when the collection started is skipped (none is: no borrow
    /// allocates through Python): an edge left out only keeps objects alive
    /// longer, never frees one in use.
    pub(super) fn traverse(&self, visit: &PyVisit<'_>) -> Result<(), PyTraverseError> {
        let visit_all = |queue: &VecDeque<Remembered>| {
            queue.iter().try_for_each(|entry| match entry {
                Remembered::Built(event) => visit.call(event),
                Remembered::Fields(fields, _made) => fields
                    .iter()
                    .flatten()
                    .try_for_each(|value| visit.call(value)),
            })
        };
        // SAFETY: this is the type's `tp_traverse`, called only by CPython's
        // garbage collector, which runs with the GIL held by this thread.
        unsafe { self.queue.with_in_gc(visit_all) }.unwrap_or(Ok(()))
    }

    /// Drops every event kept (the garbage collector breaking a cycle).
    pub(super) fn clear(&self, py: Python<'_>) {
        let dropped = self.queue.with(py, std::mem::take);
        drop(dropped); // after the borrow: dropping may run Python code
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
