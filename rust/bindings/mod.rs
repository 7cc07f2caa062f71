//! PyO3 bindings: Python types and exceptions around the pure-Rust cores.

mod checkpoint;
mod events;
pub(crate) mod exit_gate;
pub(crate) mod gil;
mod log_event_method;

use pyo3::prelude::*;

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    checkpoint::register(m)?;
    events::register(m)?;
    exit_gate::register(m)?;
    m.add_function(wrap_pyfunction!(log_event_method::log_event_method, m)?)?;
    Ok(())
}
