//! Bindings of the event core.
//!
//! `EventSink` is what `EventLogger` holds: it turns one event into a JSON
//! line (serialised here, in the calling thread, so the flush thread never
//! sees a Python object), builds the `Event` dataclass for the in-memory
//! deque, and hands the line to the buffers of an [`EventWriter`]. Nothing
//! here panics across the boundary: errors become Python exceptions, write
//! errors an `OSError` naming the file.
//!
//! * [`sink`]: `EventSink`, the class `EventLogger` holds, and one logging
//!   call from its arguments to the writer;
//! * [`sink_writer`]: the sink's `EventWriter` over its life (fork restart,
//!   write-through, close); [`layout`]: the `Event` dataclass's fields and
//!   building `Event` objects; [`made`]: the values a call makes itself;
//!   [`kinds`]: the lock-free cache of `EventType` members; [`line`]: an
//!   event's JSON line; [`remembered`]: the events kept for `events`;
//!   [`gil_cell`]: a value guarded by the GIL, with no lock of its own;
//! * [`fast_path`]: `LogEventFastPath`, behind the C `_log_event` method;
//! * [`json_encoder`]: Python values to JSON as `json.dumps` writes them;
//! * [`analysis`]: the Rust log analysis as the reference's Python values;
//! * [`errors`]: every `OSError` events raise; [`ids`]: generated event
//!   ids.
//!
//! The writers' flush at C exit is in [`lifecycle::live_writers`].
//!
//! [`lifecycle::live_writers`]: crate::bindings::lifecycle::live_writers
//!
//! [`EventWriter`]: crate::events::writer::EventWriter

mod analysis;
mod errors;
mod fast_path;
mod gil_cell;
mod ids;
mod json_encoder;
mod kinds;
mod layout;
mod line;
mod made;
mod remembered;
mod sink;
mod sink_writer;

use pyo3::prelude::*;

pub(crate) use fast_path::{Caller, LogEventFastPath};
pub(crate) use sink::{EventSink, Logged};

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<EventSink>()?;
    m.add_class::<LogEventFastPath>()?;
    m.add_function(wrap_pyfunction!(analysis::analyze_events_file, m)?)?;
    m.add_function(wrap_pyfunction!(analysis::events_file_has_type, m)?)?;
    m.add_function(wrap_pyfunction!(analysis::read_event_lines, m)?)?;
    m.add_function(wrap_pyfunction!(analysis::event_lines, m)?)?;
    Ok(())
}
