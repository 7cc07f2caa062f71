//! PyO3 bindings: Python types and exceptions around the pure-Rust cores.

mod checkpoint;
mod events;

use pyo3::prelude::*;

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    checkpoint::register(m)?;
    events::register(m)?;
    Ok(())
}
