//! Python face of the checkpoint core.
//!
//! Data comes in through the Arrow C stream interface (`__arrow_c_stream__`),
//! so pyarrow tables, HF datasets' tables, polars and duckdb results cross
//! without a copy; it goes out the same way. Compression and I/O run with
//! the GIL released. Every error becomes a Python exception naming the file.

use std::collections::HashMap;
use std::ffi::CStr;
use std::path::PathBuf;

use arrow_array::ffi_stream::{FFI_ArrowArrayStream, RecordBatchStreamReader};
use arrow_array::{RecordBatch, RecordBatchIterator, RecordBatchReader};
use arrow_schema::SchemaRef;
use pyo3::create_exception;
use pyo3::exceptions::{PyOSError, PyRuntimeError, PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyCapsule};

use crate::checkpoint::{
    self, manifest, reader, CheckpointError, Compression, SaveRequest, Staging, WriteOptions,
    WrittenShard,
};

create_exception!(
    _native,
    CheckpointCorruptError,
    PyValueError,
    "A checkpoint file does not hold what its manifest promises (the message names the file)."
);
create_exception!(
    _native,
    CheckpointLockedError,
    PyOSError,
    "Another process is saving into the same checkpoint directory."
);

const STREAM_CAPSULE: &CStr = c"arrow_array_stream";

pub fn to_py_err(err: CheckpointError) -> PyErr {
    match err {
        CheckpointError::Io { path, source } => {
            let filename = path.to_string_lossy().into_owned();
            match source.raw_os_error() {
                // OSError(errno, strerror, filename) picks the subclass
                // (FileNotFoundError, PermissionError, ...) as Python does.
                Some(errno) => {
                    let strerror = std::io::Error::from_raw_os_error(errno).to_string();
                    let strerror = strerror
                        .split(" (os error")
                        .next()
                        .unwrap_or_default()
                        .to_string();
                    PyOSError::new_err((errno, strerror, filename))
                }
                None => PyOSError::new_err(format!("{filename}: {source}")),
            }
        }
        e @ CheckpointError::Corrupt { .. } => CheckpointCorruptError::new_err(e.to_string()),
        e @ CheckpointError::Locked { .. } => CheckpointLockedError::new_err(e.to_string()),
        e @ CheckpointError::Input(_) => PyValueError::new_err(e.to_string()),
        e @ CheckpointError::Internal(_) => PyRuntimeError::new_err(e.to_string()),
    }
}

/// Runs `f` without the GIL; a panic inside comes back as RuntimeError.
fn detached<T: Send>(
    py: Python<'_>,
    f: impl FnOnce() -> checkpoint::Result<T> + Send,
) -> PyResult<T> {
    py.detach(|| {
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(f))
            .unwrap_or_else(|payload| Err(CheckpointError::from_panic(payload)))
    })
    .map_err(to_py_err)
}

/// Takes ownership of the C stream behind `data.__arrow_c_stream__()`.
fn import_stream(data: &Bound<'_, PyAny>) -> PyResult<RecordBatchStreamReader> {
    if !data.hasattr("__arrow_c_stream__")? {
        return Err(PyTypeError::new_err(format!(
            "expected an object exporting the Arrow C stream interface (__arrow_c_stream__), got {}",
            data.get_type().name()?
        )));
    }
    let capsule = data.call_method0("__arrow_c_stream__")?;
    let capsule = capsule
        .cast::<PyCapsule>()
        .map_err(|_| PyTypeError::new_err("__arrow_c_stream__() did not return a PyCapsule"))?;
    let pointer = capsule
        .pointer_checked(Some(STREAM_CAPSULE))?
        .cast::<FFI_ArrowArrayStream>();
    // SAFETY: the capsule holds a valid FFI_ArrowArrayStream (checked by
    // name). We move it out and leave a released one behind, so the
    // capsule's destructor does not release the stream we now own.
    let stream = unsafe { std::ptr::replace(pointer.as_ptr(), FFI_ArrowArrayStream::empty()) };
    RecordBatchStreamReader::try_new(stream)
        .map_err(|e| PyValueError::new_err(format!("invalid Arrow C stream: {e}")))
}

fn compression(name: &str, level: i32) -> PyResult<Compression> {
    match name {
        "zstd" => Ok(Compression::Zstd(level)),
        "none" | "uncompressed" => Ok(Compression::None),
        other => Err(PyValueError::new_err(format!(
            "compression must be 'zstd' or 'none', got {other:?}"
        ))),
    }
}

/// Writes one checkpoint into a staging directory beside `latest/` and
/// commits it atomically. Used by the Python `CheckpointManager`.
#[pyclass(module = "data_juicer_accel._native")]
pub struct CheckpointWriter {
    staging: Option<Staging>,
    options: WriteOptions,
    shards: Option<Vec<WrittenShard>>,
}

impl CheckpointWriter {
    fn staging(&mut self) -> PyResult<&mut Staging> {
        self.staging.as_mut().ok_or_else(|| {
            PyValueError::new_err("this CheckpointWriter is already committed or aborted")
        })
    }
}

#[pymethods]
impl CheckpointWriter {
    #[new]
    #[pyo3(signature = (ckpt_dir, *, compression="zstd", level=1, threads=1, chunk_bytes=8_388_608, max_shard_bytes=524_288_000))]
    fn new(
        py: Python<'_>,
        ckpt_dir: PathBuf,
        compression: &str,
        level: i32,
        threads: usize,
        chunk_bytes: u64,
        max_shard_bytes: u64,
    ) -> PyResult<Self> {
        let options = WriteOptions {
            compression: self::compression(compression, level)?,
            threads: threads.max(1),
            rows_per_shard: None,
            max_shard_bytes,
            chunk_bytes,
        };
        checkpoint::writer::ipc_options(options.compression).map_err(to_py_err)?;
        let staging = detached(py, || Staging::create(&ckpt_dir))?;
        Ok(CheckpointWriter {
            staging: Some(staging),
            options,
            shards: None,
        })
    }

    /// Path of the staging directory (removed on commit or abort).
    #[getter]
    fn staging_dir(&self) -> Option<String> {
        self.staging
            .as_ref()
            .map(|s| s.dir().to_string_lossy().into_owned())
    }

    /// Streams `data` into zstd Arrow IPC shards. Returns the rows written.
    #[pyo3(signature = (data, *, rows_per_shard=None))]
    fn write_data(
        &mut self,
        py: Python<'_>,
        data: &Bound<'_, PyAny>,
        rows_per_shard: Option<u64>,
    ) -> PyResult<u64> {
        if self.shards.is_some() {
            return Err(PyValueError::new_err(
                "write_data() was already called on this CheckpointWriter",
            ));
        }
        let stream = import_stream(data)?;
        let mut options = self.options.clone();
        options.rows_per_shard = rows_per_shard;
        let dir = self.staging()?.dir().to_path_buf();
        let schema = stream.schema();
        let shards = detached(py, move || {
            checkpoint::write_shards(&dir, schema, stream, &options)
        })?;
        let rows = shards.iter().map(|s| s.rows).sum();
        self.shards = Some(shards);
        Ok(rows)
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
        let staging = self.staging()?;
        detached(py, || staging.add_file(name, data))
    }

    /// Writes the manifest and swaps the checkpoint in. Returns `latest/`.
    fn commit(&mut self, py: Python<'_>, kind: &str) -> PyResult<String> {
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
        let latest = detached(py, move || staging.commit(manifest))?;
        Ok(latest.to_string_lossy().into_owned())
    }

    /// Drops the staging directory and releases the lock.
    fn abort(&mut self) {
        self.staging = None;
        self.shards = None;
    }
}

/// A verified checkpoint in memory; hands its table out once through the
/// Arrow C stream interface.
#[pyclass(module = "data_juicer_accel._native")]
pub struct LoadedCheckpoint {
    manifest_json: String,
    num_rows: u64,
    files: HashMap<String, Vec<u8>>,
    data: Option<(SchemaRef, Vec<RecordBatch>)>,
}

#[pymethods]
impl LoadedCheckpoint {
    /// The manifest, as JSON text.
    #[getter]
    fn manifest(&self) -> &str {
        &self.manifest_json
    }

    #[getter]
    fn num_rows(&self) -> u64 {
        self.num_rows
    }

    /// A verified metadata file of the checkpoint, or None.
    fn file<'py>(&self, py: Python<'py>, name: &str) -> Option<Bound<'py, PyBytes>> {
        self.files.get(name).map(|b| PyBytes::new(py, b))
    }

    #[pyo3(signature = (requested_schema=None))]
    fn __arrow_c_stream__<'py>(
        &mut self,
        py: Python<'py>,
        requested_schema: Option<Bound<'py, PyAny>>,
    ) -> PyResult<Bound<'py, PyCapsule>> {
        let _ = requested_schema; // the protocol allows returning the data's own schema
        let (schema, batches) = self.data.take().ok_or_else(|| {
            PyValueError::new_err("the table of this LoadedCheckpoint was already taken")
        })?;
        let reader: Box<dyn RecordBatchReader + Send> = Box::new(RecordBatchIterator::new(
            batches.into_iter().map(Ok),
            schema,
        ));
        PyCapsule::new(
            py,
            FFI_ArrowArrayStream::new(reader),
            Some(STREAM_CAPSULE.to_owned()),
        )
    }
}

/// Loads the checkpoint in `path` (a `latest/` directory). Returns None when
/// it has no manifest (not written by this package).
#[pyfunction]
#[pyo3(signature = (path, *, verify=true, threads=None))]
fn read_checkpoint(
    py: Python<'_>,
    path: PathBuf,
    verify: bool,
    threads: Option<usize>,
) -> PyResult<Option<LoadedCheckpoint>> {
    let options = reader::ReadOptions {
        verify,
        threads: threads.unwrap_or_else(reader::default_threads).max(1),
        ..Default::default()
    };
    let loaded = detached(py, || reader::read_checkpoint(&path, &options))?;
    Ok(loaded.map(|l| LoadedCheckpoint {
        manifest_json: l.manifest.to_json(),
        num_rows: l.manifest.num_rows,
        files: l.files,
        data: Some((l.schema, l.batches)),
    }))
}

/// The validated manifest of the checkpoint in `path` as JSON, or None.
#[pyfunction]
fn read_manifest(py: Python<'_>, path: PathBuf) -> PyResult<Option<String>> {
    Ok(detached(py, || manifest::Manifest::read(&path))?.map(|m| m.to_json()))
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    let py = m.py();
    m.add(
        "CheckpointCorruptError",
        py.get_type::<CheckpointCorruptError>(),
    )?;
    m.add(
        "CheckpointLockedError",
        py.get_type::<CheckpointLockedError>(),
    )?;
    m.add("MANIFEST_FILE", manifest::MANIFEST_FILE)?;
    m.add("FORMAT_VERSION", manifest::FORMAT_VERSION)?;
    m.add_class::<CheckpointWriter>()?;
    m.add_class::<LoadedCheckpoint>()?;
    m.add_function(wrap_pyfunction!(read_checkpoint, m)?)?;
    m.add_function(wrap_pyfunction!(read_manifest, m)?)?;
    Ok(())
}
