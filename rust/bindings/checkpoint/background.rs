//! Background saves: `CheckpointManager(..., background=True)`.
//!
//! `submit` takes the snapshot while the caller waits (the record batches of
//! the dataset imported through the Arrow C stream: references to their
//! buffers, no copy) and returns; the writer thread of
//! `crate::checkpoint::background` compresses and commits it without Python.

use std::path::PathBuf;
use std::time::Duration;

use arrow_array::ffi_stream::RecordBatchStreamReader;
use arrow_array::{RecordBatch, UInt64Array};
use arrow_schema::DataType;
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;

use super::bridge::{import_raw_stream, import_stream, to_py_err};
use super::calls::{detached, SIGNAL_POLL};
use super::writer::write_options;
use crate::bindings::lifecycle::gil;
use crate::checkpoint::background::{BackgroundWriter, Snapshot};
use crate::checkpoint::bucket::Location;
use crate::checkpoint::sizing::SizedStream;
use crate::checkpoint::snapshot::{detach_batches, MemoryMap};
use crate::checkpoint::{self, CheckpointError, WriteOptions};

/// How long an interrupted wait gives the save being written to stop
/// (at its next piece of work) and remove its staging directory.
const ABANDON_WAIT: Duration = Duration::from_secs(5);

/// One writer thread committing the newest submitted checkpoint.
#[pyclass(module = "data_juicer_accel._native", frozen)]
pub struct BackgroundCheckpointWriter {
    writer: BackgroundWriter,
}

/// All batches of a C stream (references to its buffers, no copy).
fn pull(stream: RecordBatchStreamReader) -> checkpoint::Result<Vec<RecordBatch>> {
    stream
        .collect::<Result<Vec<_>, _>>()
        .map_err(CheckpointError::input)
}

/// The C stream of `indices`, checked to be one uint64 column.
fn index_stream(indices: &Bound<'_, PyAny>) -> PyResult<RecordBatchStreamReader> {
    let stream = import_stream(indices)?;
    let schema = arrow_array::RecordBatchReader::schema(&stream);
    if schema.fields().len() != 1 || schema.field(0).data_type() != &DataType::UInt64 {
        return Err(PyValueError::new_err(
            "indices must be a table with one uint64 column (an indices mapping)",
        ));
    }
    Ok(stream)
}

/// The first column of every batch, known to be uint64 (see `index_stream`).
fn index_arrays(batches: Vec<RecordBatch>) -> checkpoint::Result<Vec<UInt64Array>> {
    batches
        .iter()
        .map(|b| {
            b.column(0)
                .as_any()
                .downcast_ref::<UInt64Array>()
                .cloned()
                .ok_or_else(|| CheckpointError::Input("indices column is not uint64".into()))
        })
        .collect()
}

#[pymethods]
impl BackgroundCheckpointWriter {
    #[new]
    fn new() -> PyResult<Self> {
        Ok(BackgroundCheckpointWriter {
            writer: BackgroundWriter::start().map_err(to_py_err)?,
        })
    }

    /// Snapshots `data` (and the rows `indices` selects) and queues its
    /// save into `ckpt_dir`, replacing a save still waiting. Returns its
    /// sequence number. Raises the failure of an earlier save not yet
    /// reported (and queues nothing then). `size_like_datasets=num_proc`
    /// lets the writer thread choose `rows_per_shard` as
    /// `datasets.save_to_disk(num_proc=num_proc)` would.
    ///
    /// `immutable=True` (HF datasets' tables) keeps references to every
    /// buffer and leaves reading the stream to the writer thread.
    /// Otherwise the stream is read before this returns, and every
    /// buffer not provably pyarrow's own memory is copied (see
    /// `checkpoint::snapshot`).
    #[pyo3(signature = (ckpt_dir, data, *, kind, files, state_template=None, indices=None,
                        compression="zstd", level=1, threads=1, chunk_bytes=8_388_608,
                        max_shard_bytes=524_288_000, rows_per_shard=None,
                        size_like_datasets=None, holder=None, immutable=false,
                        storage_options=None))]
    #[allow(clippy::too_many_arguments)]
    fn submit(
        &self,
        py: Python<'_>,
        ckpt_dir: PathBuf,
        data: &Bound<'_, PyAny>,
        kind: String,
        files: Vec<(String, Vec<u8>)>,
        state_template: Option<Vec<u8>>,
        indices: Option<&Bound<'_, PyAny>>,
        compression: &str,
        level: i32,
        threads: usize,
        chunk_bytes: u64,
        max_shard_bytes: u64,
        rows_per_shard: Option<u64>,
        size_like_datasets: Option<u64>,
        holder: Option<String>,
        immutable: bool,
        storage_options: Option<Vec<(String, String)>>,
    ) -> PyResult<u64> {
        let location = Location::from_path(&ckpt_dir, &storage_options.unwrap_or_default())
            .map_err(to_py_err)?;
        let options = WriteOptions {
            rows_per_shard,
            ..write_options(
                compression,
                level,
                threads,
                Some(chunk_bytes),
                Some(max_shard_bytes),
            )?
        };
        checkpoint::writer::ipc_options(options.compression).map_err(to_py_err)?;
        let stream = SizedStream::try_new(import_raw_stream(data)?)
            .map_err(|e| PyValueError::new_err(format!("invalid Arrow C stream: {e}")))?;
        let schema = stream.schema();
        let index_stream = indices.map(index_stream).transpose()?;
        let mut snapshot = Snapshot {
            location,
            schema,
            batches: Vec::new(),
            indices: None,
            files,
            state_template,
            kind,
            options,
            deferred: None,
            table_bytes: None,
            size_like_datasets,
            holder,
        };
        if immutable {
            // The streams hold references to the data: the writer thread pulls them.
            snapshot.deferred = Some(Box::new(move || {
                let (batches, table_bytes) = stream.read_all().map_err(CheckpointError::input)?;
                let indices = index_stream
                    .map(|s| pull(s).and_then(index_arrays))
                    .transpose()?;
                Ok((batches, indices, table_bytes))
            }));
        } else {
            // Read now, while the caller waits: the stream may call back
            // into Python, and the memory behind it may change after
            // this returns. What is not pyarrow's own memory is copied.
            let (batches, table_bytes) = stream.read_all().map_err(|e| {
                PyValueError::new_err(format!("the dataset could not be read as Arrow data: {e}"))
            })?;
            let indices = index_stream
                .map(|s| pull(s).and_then(index_arrays))
                .transpose()
                .map_err(to_py_err)?;
            let memory = MemoryMap::read();
            let (batches, _) = py
                .detach(|| detach_batches(batches, memory.as_ref()))
                .map_err(to_py_err)?;
            snapshot.batches = batches;
            snapshot.indices = indices;
            snapshot.table_bytes = table_bytes;
        }
        self.writer.submit(snapshot).map_err(to_py_err)
    }

    /// Blocks (GIL released) until every submitted save is committed or
    /// has failed; raises the first failure not yet reported. A Ctrl-C
    /// (whatever a signal handler raises) abandons the saves not
    /// committed yet, keeping the previous checkpoint, and is raised.
    fn wait(&self, py: Python<'_>) -> PyResult<()> {
        loop {
            let waited = gil::detach(py, || self.writer.wait_for(SIGNAL_POLL));
            match waited {
                Some(result) => return result.map_err(to_py_err),
                None => {
                    if let Err(interrupt) = py.check_signals() {
                        gil::detach(py, || self.writer.abandon(ABANDON_WAIT));
                        return Err(interrupt);
                    }
                }
            }
        }
    }

    /// `wait()`, then stops the writer thread. Later calls do nothing.
    fn close(&self, py: Python<'_>) -> PyResult<()> {
        self.wait(py)?;
        detached(py, || self.writer.close())
    }

    /// Abandons the saves not committed yet (see `wait`) and waits up
    /// to `timeout` seconds for the one being written to stop. Returns
    /// whether a save was abandoned.
    fn abandon(&self, py: Python<'_>, timeout: f64) -> bool {
        let timeout = Duration::from_secs_f64(timeout.clamp(0.0, 3600.0));
        gil::detach(py, || self.writer.abandon(timeout))
    }

    /// Blocks (GIL released) up to `timeout` seconds until a commit not
    /// yet taken exists; False on timeout, once the writer is closed or
    /// a save was abandoned.
    fn wait_for_commit(&self, py: Python<'_>, timeout: f64) -> bool {
        let timeout = Duration::from_secs_f64(timeout.clamp(0.0, 3600.0));
        gil::detach(py, || self.writer.wait_for_commit(timeout))
    }

    /// Saves abandoned so far (by an interrupted `wait`, or `abandon`).
    #[getter]
    fn abandoned(&self) -> u64 {
        self.writer.abandoned()
    }

    /// Sequence numbers committed since the last call, in commit order.
    fn take_committed(&self) -> Vec<u64> {
        self.writer.take_committed()
    }

    /// (submitted, committed, superseded, busy): sequence numbers of the
    /// last save submitted and committed, saves dropped for a newer one,
    /// and whether a save is being written or waiting.
    #[getter]
    fn progress(&self) -> (u64, u64, u64, bool) {
        let p = self.writer.progress();
        (p.submitted, p.committed, p.superseded, p.busy)
    }
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<BackgroundCheckpointWriter>()
}
