//! Native core of `data_juicer_accel`.
//!
//! * [`checkpoint`]: zstd Arrow IPC checkpoint shards, written in parallel and
//!   committed atomically; pure Rust, no Python.
//! * [`events`]: the job-event double buffer (producers reserve room with
//!   atomics) and its flush thread.
//! * [`bindings`]: the PyO3 layer; the only place that touches Python, and
//!   (in `bindings::lifecycle`) the only one that registers fork and exit
//!   hooks, at import.

#![deny(clippy::undocumented_unsafe_blocks)]

pub mod bindings;
pub mod checkpoint;
pub mod events;

use pyo3::prelude::*;

#[pymodule]
fn _native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    bindings::register(m)
}
