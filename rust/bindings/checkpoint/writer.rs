//! `CheckpointWriter`: one save of the Python `CheckpointManager`, from a
//! table streamed in to its atomic commit, in a directory or a bucket; and the write options every
//! saving binding builds from Python's arguments.

use std::path::PathBuf;

use arrow_array::RecordBatchReader;
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;

use super::bridge::{import_stream, to_py_err};
use super::calls::{detached, interruptible, Cancellable};
use crate::bindings::lifecycle::gil::guarded;
use crate::checkpoint::bucket::Location;
use crate::checkpoint::save::PendingSave;
use crate::checkpoint::{self, Compression, SaveRequest, WriteOptions, WrittenShard};

fn compression(name: &str, level: i32) -> PyResult<Compression> {
    match name {
        "zstd" => Ok(Compression::Zstd(level)),
        "none" | "uncompressed" => Ok(Compression::None),
        other => Err(PyValueError::new_err(format!(
            "compression must be 'zstd' or 'none', got {other:?}"
        ))),
    }
}

/// Write options from Python's arguments; unset sizes take the defaults of
/// [`WriteOptions::default`] (the one place they are written).
pub fn write_options(
    compression_name: &str,
    level: i32,
    threads: usize,
    chunk_bytes: Option<u64>,
    max_shard_bytes: Option<u64>,
) -> PyResult<WriteOptions> {
    let defaults = WriteOptions::default();
    Ok(WriteOptions {
        compression: compression(compression_name, level)?,
        threads: threads.max(1),
        rows_per_shard: None,
        max_shard_bytes: max_shard_bytes.unwrap_or(defaults.max_shard_bytes),
        chunk_bytes: chunk_bytes.unwrap_or(defaults.chunk_bytes),
        sync: true,
    })
}

/// Writes one checkpoint into a staging directory beside `latest/` and
/// commits it atomically. Used by the Python `CheckpointManager`.
#[pyclass(module = "data_juicer_accel._native")]
pub struct CheckpointWriter {
    staging: Option<PendingSave>,
    options: WriteOptions,
    shards: Option<Vec<WrittenShard>>,
}

impl CheckpointWriter {
    fn staging(&mut self) -> PyResult<&mut PendingSave> {
        self.staging.as_mut().ok_or_else(|| {
            PyValueError::new_err("this CheckpointWriter is already committed or aborted")
        })
    }
}

#[pymethods]
impl CheckpointWriter {
    #[new]
    #[pyo3(signature = (ckpt_dir, *, compression="zstd", level=1, threads=1, chunk_bytes=None, max_shard_bytes=None, holder=None, storage_options=None))]
    #[allow(clippy::too_many_arguments)]
    fn new(
        py: Python<'_>,
        ckpt_dir: PathBuf,
        compression: &str,
        level: i32,
        threads: usize,
        chunk_bytes: Option<u64>,
        max_shard_bytes: Option<u64>,
        holder: Option<String>,
        storage_options: Option<Vec<(String, String)>>,
    ) -> PyResult<Self> {
        guarded("CheckpointWriter()", || {
            let options = write_options(compression, level, threads, chunk_bytes, max_shard_bytes)?;
            checkpoint::writer::ipc_options(options.compression).map_err(to_py_err)?;
            let location = Location::from_path(&ckpt_dir, &storage_options.unwrap_or_default())
                .map_err(to_py_err)?;
            let create = || PendingSave::create(&location, holder.as_deref());
            let staging = match &location {
                // Taken on the caller's thread: a second saver is told its name.
                Location::Dir(_) => detached(py, create)?,
                // Requests to a stalled server give up on Ctrl-C.
                Location::Bucket(_) => interruptible(py, |_| create())?,
            };
            Ok(CheckpointWriter {
                staging: Some(staging),
                options,
                shards: None,
            })
        })
    }

    /// Path of the staging directory (removed on commit or abort); `None`
    /// in a bucket.
    #[getter]
    fn staging_dir(&self) -> Option<String> {
        self.staging
            .as_ref()
            .and_then(|s| s.staging_dir())
            .map(|dir| dir.to_string_lossy().into_owned())
    }

    /// Streams `data` into zstd Arrow IPC shards. Returns the rows written.
    #[pyo3(signature = (data, *, rows_per_shard=None))]
    fn write_data(
        &mut self,
        py: Python<'_>,
        data: &Bound<'_, PyAny>,
        rows_per_shard: Option<u64>,
    ) -> PyResult<u64> {
        guarded("CheckpointWriter.write_data", || {
            if self.shards.is_some() {
                return Err(PyValueError::new_err(
                    "write_data() was already called on this CheckpointWriter",
                ));
            }
            let stream = import_stream(data)?;
            let mut options = self.options.clone();
            options.rows_per_shard = rows_per_shard;
            let staging = self.staging()?;
            let schema = stream.schema();
            let shards = interruptible(py, move |cancel| {
                let input = Cancellable {
                    inner: stream,
                    cancel: cancel.clone(),
                };
                staging.write_shards(schema, input, &options, &cancel)
            })?;
            let rows = shards.iter().map(|s| s.rows).sum();
            self.shards = Some(shards);
            Ok(rows)
        })
    }

    /// Names of the shard files written, in order.
    #[getter]
    fn shard_files(&self) -> Vec<String> {
        self.shards
            .iter()
            .flatten()
            .map(|s| s.file.clone())
            .collect()
    }

    /// Adds a small file (state.json, ckpt_op.json, ...) to the checkpoint.
    fn add_file(&mut self, py: Python<'_>, name: &str, data: &[u8]) -> PyResult<()> {
        guarded("CheckpointWriter.add_file", || {
            let staging = self.staging()?;
            interruptible(py, |_| staging.add_file(name, data))
        })
    }

    /// Writes the manifest and swaps the checkpoint in (a directory) or
    /// publishes it (a bucket). Returns `latest/`, or the bucket's URI.
    fn commit(&mut self, py: Python<'_>, kind: &str) -> PyResult<String> {
        guarded("CheckpointWriter.commit", || {
            let shards = self
                .shards
                .take()
                .ok_or_else(|| PyValueError::new_err("commit() before write_data()"))?;
            let staging = self.staging.take().ok_or_else(|| {
                PyValueError::new_err("this CheckpointWriter is already committed or aborted")
            })?;
            let request = SaveRequest {
                kind,
                options: self.options.clone(),
            };
            let manifest = checkpoint::manifest_for(&request, &shards);
            interruptible(py, move |_| staging.commit(manifest))
        })
    }

    /// Drops the staging directory (or the uploaded objects) and releases the lock.
    fn abort(&mut self, py: Python<'_>) -> PyResult<()> {
        let staging = self.staging.take();
        self.shards = None;
        // In a bucket that is requests over the network: other Python
        // threads run meanwhile (one may be the endpoint itself).
        detached(py, move || {
            drop(staging);
            Ok(())
        })
    }
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    let defaults = WriteOptions::default();
    m.add("DEFAULT_CHUNK_BYTES", defaults.chunk_bytes)?;
    m.add("DEFAULT_MAX_SHARD_BYTES", defaults.max_shard_bytes)?;
    m.add_class::<CheckpointWriter>()
}
