//! PyO3 bindings: Python types and exceptions around the pure-Rust cores.

mod checkpoint;
mod events;
pub(crate) mod lifecycle;
mod log_event_method;

use pyo3::prelude::*;

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    // First: the fork and exit hooks are in place before anything can run.
    lifecycle::register(m)?;
    checkpoint::register(m)?;
    events::register(m)?;
    m.add_function(wrap_pyfunction!(log_event_method::log_event_method, m)?)?;
    Ok(())
}
