//! Python face of the checkpoint core.
//!
//! Data comes in through the Arrow C stream interface (`__arrow_c_stream__`),
//! so pyarrow tables, HF datasets' tables, polars and duckdb results cross
//! without a copy; it goes out the same way. Compression and I/O run with
//! the GIL released. Every error becomes a Python exception naming the file.
//!
//! * [`writer`]: `CheckpointWriter`, one save of `CheckpointManager`;
//! * [`reader`]: `LoadedCheckpoint`, `read_checkpoint` and the small reads
//!   of a checkpoint directory;
//! * [`location`]: whether `ckpt_dir` is a bucket, and small reads of the
//!   committed checkpoint wherever it is (`read_committed` in [`reader`]);
//! * [`background`]: `BackgroundCheckpointWriter`, background saves;
//! * [`ray_shards`]: Ray shard files, written and read by the tasks,
//!   committed by the driver;
//! * [`ray_pins`]: Ray loads on the driver: the committed manifest, the
//!   generation a lazy load pins;
//! * [`bridge`]: errors to Python exceptions, the Arrow C stream in and out;
//!   [`calls`]: core work run without the GIL, stopped by Ctrl-C.

mod background;
mod bridge;
mod calls;
mod location;
mod ray_pins;
mod ray_shards;
mod reader;
mod writer;

use pyo3::prelude::*;

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    // Whether DATA_JUICER_ACCEL_FAULT is honoured (test builds only).
    m.add("FAULT_INJECTION", crate::checkpoint::fault::ENABLED)?;
    bridge::register_exceptions(m)?;
    reader::register(m)?;
    location::register(m)?;
    writer::register(m)?;
    background::register(m)?;
    ray_shards::register(m)?;
    ray_pins::register(m)
}
