//! Python face of the checkpoint core.
//!
//! Data comes in through the Arrow C stream interface (`__arrow_c_stream__`),
//! so pyarrow tables, HF datasets' tables, polars and duckdb results cross
//! without a copy; it goes out the same way. Compression and I/O run with
//! the GIL released. Every error becomes a Python exception naming the file.

use std::collections::HashMap;
use std::ffi::CStr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::time::Duration;

use arrow_array::ffi_stream::{FFI_ArrowArrayStream, RecordBatchStreamReader};
use arrow_array::{RecordBatch, RecordBatchIterator, RecordBatchReader};
use arrow_schema::{ArrowError, SchemaRef};
use pyo3::exceptions::{
    PyKeyboardInterrupt, PyMemoryError, PyOSError, PyRuntimeError, PyTypeError, PyValueError,
};
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyCapsule};

use super::lifecycle::gil::{self, guarded};
use crate::checkpoint::{
    self, manifest, reader, CheckpointError, Compression, SaveRequest, Staging, WriteOptions,
    WrittenShard,
};

// Defined in Python (data_juicer_accel/errors.py) so that they pickle.
pyo3::import_exception!(data_juicer_accel.errors, CheckpointCorruptError);
pyo3::import_exception!(data_juicer_accel.errors, CheckpointLockedError);

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
        e @ (CheckpointError::OutOfMemory { .. } | CheckpointError::NoMemory { .. }) => {
            PyMemoryError::new_err(e.to_string())
        }
        CheckpointError::Cancelled => PyKeyboardInterrupt::new_err(()),
        e @ CheckpointError::Internal(_) => PyRuntimeError::new_err(e.to_string()),
    }
}

/// How often a long call looks for Ctrl-C.
const SIGNAL_POLL: Duration = Duration::from_millis(100);

/// Runs `f` on a worker thread without the GIL while this thread checks
/// for Ctrl-C. On one, `cancel` is raised, `f` is waited for (it stops at
/// its next piece of work) and the KeyboardInterrupt is raised.
fn interruptible<T: Send>(
    py: Python<'_>,
    f: impl FnOnce(Arc<AtomicBool>) -> checkpoint::Result<T> + Send,
) -> PyResult<T> {
    let cancel = Arc::new(AtomicBool::new(false));
    let (done, result) = mpsc::channel();
    // `f` runs on the worker, or here when no thread can be started (a
    // memory limit): then without Ctrl-C checks, but it runs.
    let f = std::sync::Mutex::new(Some(f));
    let run = |cancel: Arc<AtomicBool>| {
        let f = f.lock().ok().and_then(|mut f| f.take());
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| match f {
            Some(f) => f(cancel),
            None => Err(CheckpointError::Internal(
                "the checkpoint work ran twice".into(),
            )),
        }))
        .unwrap_or_else(|payload| Err(CheckpointError::from_panic(payload)))
    };
    std::thread::scope(|scope| {
        let worker_cancel = cancel.clone();
        let spawned = std::thread::Builder::new()
            .name("dja-ckpt-call".into())
            .spawn_scoped(scope, || {
                let _ = done.send(run(worker_cancel));
            });
        if spawned.is_err() {
            return gil::detach(py, || run(cancel.clone())).map_err(to_py_err);
        }
        let mut interrupt: Option<PyErr> = None;
        let mut result = result;
        loop {
            // A Receiver is Send but not Sync: hand it over and back. The GIL
            // is re-taken through `gil::detach`, so a daemon thread here when
            // the interpreter exits is parked instead of aborting the process.
            let (received, back) =
                gil::detach(py, move || (result.recv_timeout(SIGNAL_POLL), result));
            result = back;
            match received {
                Ok(outcome) => {
                    return match interrupt {
                        Some(err) => Err(err),
                        None => outcome.map_err(to_py_err),
                    }
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    if interrupt.is_none() {
                        if let Err(err) = py.check_signals() {
                            cancel.store(true, Ordering::Relaxed);
                            interrupt = Some(err);
                        }
                    }
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    return Err(PyRuntimeError::new_err("checkpoint worker thread vanished"))
                }
            }
        }
    })
}

/// Ends a stream of batches early once `cancel` is raised.
struct Cancellable<I> {
    inner: I,
    cancel: Arc<AtomicBool>,
}

impl<I: Iterator<Item = Result<RecordBatch, ArrowError>>> Iterator for Cancellable<I> {
    type Item = Result<RecordBatch, ArrowError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.cancel.load(Ordering::Relaxed) {
            return Some(Err(ArrowError::ExternalError("interrupted".into())));
        }
        self.inner.next()
    }
}

/// Runs `f` without the GIL; a panic inside comes back as RuntimeError.
fn detached<T: Send>(
    py: Python<'_>,
    f: impl FnOnce() -> checkpoint::Result<T> + Send,
) -> PyResult<T> {
    gil::detach(py, || {
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(f))
            .unwrap_or_else(|payload| Err(CheckpointError::from_panic(payload)))
    })
    .map_err(to_py_err)
}

/// Takes ownership of the C stream behind `data.__arrow_c_stream__()`.
fn import_stream(data: &Bound<'_, PyAny>) -> PyResult<RecordBatchStreamReader> {
    RecordBatchStreamReader::try_new(import_raw_stream(data)?)
        .map_err(|e| PyValueError::new_err(format!("invalid Arrow C stream: {e}")))
}

/// The C stream behind `data.__arrow_c_stream__()`, not yet imported.
fn import_raw_stream(data: &Bound<'_, PyAny>) -> PyResult<FFI_ArrowArrayStream> {
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
    Ok(unsafe { std::ptr::replace(pointer.as_ptr(), FFI_ArrowArrayStream::empty()) })
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

/// Write options from Python's arguments; unset sizes take the defaults of
/// [`WriteOptions::default`] (the one place they are written).
fn write_options(
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
    #[pyo3(signature = (ckpt_dir, *, compression="zstd", level=1, threads=1, chunk_bytes=None, max_shard_bytes=None, holder=None))]
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
    ) -> PyResult<Self> {
        guarded("CheckpointWriter()", || {
            let options = write_options(compression, level, threads, chunk_bytes, max_shard_bytes)?;
            checkpoint::writer::ipc_options(options.compression).map_err(to_py_err)?;
            let staging = detached(py, || Staging::create_for(&ckpt_dir, holder.as_deref()))?;
            Ok(CheckpointWriter {
                staging: Some(staging),
                options,
                shards: None,
            })
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
        guarded("CheckpointWriter.write_data", || {
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
            let shards = interruptible(py, move |cancel| {
                let input = Cancellable {
                    inner: stream,
                    cancel: cancel.clone(),
                };
                checkpoint::write_shards_cancellable(&dir, schema, input, &options, &cancel)
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
            detached(py, || staging.add_file(name, data))
        })
    }

    /// Writes the manifest and swaps the checkpoint in. Returns `latest/`.
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
            let latest = detached(py, move || staging.commit(manifest))?;
            Ok(latest.to_string_lossy().into_owned())
        })
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
        guarded("LoadedCheckpoint.__arrow_c_stream__", || {
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
        })
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
    guarded("read_checkpoint", || {
        let loaded = interruptible(py, |cancel| {
            let options = reader::ReadOptions {
                verify,
                threads: threads.unwrap_or_else(reader::default_threads).max(1),
                cancel: Some(cancel),
                ..Default::default()
            };
            reader::read_checkpoint(&path, &options)
        })?;
        Ok(loaded.map(|l| LoadedCheckpoint {
            manifest_json: l.manifest.to_json(),
            num_rows: l.manifest.num_rows,
            files: l.files,
            data: Some((l.schema, l.batches)),
        }))
    })
}

/// The validated manifest of the checkpoint in `path` as JSON, or None.
#[pyfunction]
fn read_manifest(py: Python<'_>, path: PathBuf) -> PyResult<Option<String>> {
    guarded("read_manifest", || {
        Ok(detached(py, || manifest::Manifest::read(&path))?.map(|m| m.to_json()))
    })
}

/// The first of `names` in the directory `path` that is an Arrow IPC
/// stream with compressed batches, as `(name, codec)`; None when none is.
/// Only message headers are read. A missing file or one that is no IPC
/// stream counts as not compressed; a symlink or special file is
/// `CheckpointCorruptError`.
#[pyfunction]
fn compressed_shard(
    py: Python<'_>,
    path: PathBuf,
    names: Vec<String>,
) -> PyResult<Option<(String, String)>> {
    guarded("compressed_shard", || {
        detached(py, || {
            let Some(dir) = checkpoint::dirfd::CheckpointDir::open(&path)? else {
                return Ok(None);
            };
            for name in names {
                if let Some(codec) = reader::batch_compression(&dir, &name)? {
                    return Ok(Some((name, codec)));
                }
            }
            Ok(None)
        })
    })
}

/// The xxh3-64 of `data` as the manifest writes it (16 lower-case hex digits).
#[pyfunction]
fn xxh3_64_hex(data: &[u8]) -> String {
    manifest::checksum_hex(xxhash_rust::xxh3::xxh3_64(data))
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
    m.add_function(wrap_pyfunction!(xxh3_64_hex, m)?)?;
    m.add_function(wrap_pyfunction!(compressed_shard, m)?)?;
    background_saves::register(m)?;
    ray_shards::register(m)
}

// ======================================================================
// Ray: shard files written by the worker tasks, committed by the driver
// (see `checkpoint::shards`).
// ======================================================================

mod ray_shards {
    use std::path::PathBuf;

    use arrow_array::RecordBatchReader;
    use pyo3::exceptions::PyValueError;
    use pyo3::prelude::*;
    use pyo3::types::PyDict;

    use super::{detached, guarded, import_stream, write_options, LoadedCheckpoint};
    use crate::checkpoint::manifest::{checksum_hex, FileEntry};
    use crate::checkpoint::shards::{self, read_verified_shard, write_prefixed_shards};
    use crate::checkpoint::{SaveRequest, Staging, WriteOptions};

    fn entry_to_dict<'py>(py: Python<'py>, e: &FileEntry) -> PyResult<Bound<'py, PyDict>> {
        let dict = PyDict::new(py);
        dict.set_item("file", &e.file)?;
        dict.set_item("bytes", e.bytes)?;
        dict.set_item("xxh3_64", &e.xxh3_64)?;
        dict.set_item("rows", e.rows)?;
        dict.set_item("raw_bytes", e.raw_bytes)?;
        Ok(dict)
    }

    fn entry_from_dict(dict: &Bound<'_, PyDict>) -> PyResult<FileEntry> {
        fn required<'py, T: FromPyObjectOwned<'py>>(
            dict: &Bound<'py, PyDict>,
            key: &str,
        ) -> PyResult<T> {
            let value = dict.get_item(key)?.ok_or_else(|| {
                PyValueError::new_err(format!("shard entry {dict} has no {key:?}"))
            })?;
            value.extract().map_err(|_| {
                PyValueError::new_err(format!("shard entry {dict}: {key:?} has the wrong type"))
            })
        }
        fn optional<'py>(dict: &Bound<'py, PyDict>, key: &str) -> PyResult<Option<u64>> {
            match dict.get_item(key)? {
                Some(v) if !v.is_none() => Ok(Some(required(dict, key)?)),
                _ => Ok(None),
            }
        }
        Ok(FileEntry {
            file: required(dict, "file")?,
            bytes: required(dict, "bytes")?,
            xxh3_64: required(dict, "xxh3_64")?,
            rows: optional(dict, "rows")?,
            raw_bytes: optional(dict, "raw_bytes")?,
        })
    }

    /// The staging directory of one Ray checkpoint save, held by the driver:
    /// lock taken and leftovers of dead saves cleared on creation; the write
    /// tasks put their shards into `dir`; `commit` makes them the checkpoint.
    #[pyclass(module = "data_juicer_accel._native")]
    pub struct ShardStaging {
        staging: Option<Staging>,
    }

    #[pymethods]
    impl ShardStaging {
        #[new]
        #[pyo3(signature = (ckpt_dir, *, holder=None))]
        fn new(py: Python<'_>, ckpt_dir: PathBuf, holder: Option<String>) -> PyResult<Self> {
            guarded("ShardStaging()", || {
                let staging = detached(py, || Staging::create_for(&ckpt_dir, holder.as_deref()))?;
                Ok(ShardStaging {
                    staging: Some(staging),
                })
            })
        }

        /// Path of the staging directory, or None after commit or abort.
        #[getter]
        fn dir(&self) -> Option<String> {
            let staging = self.staging.as_ref()?;
            Some(staging.dir().to_string_lossy().into_owned())
        }

        /// Commits `shards` (manifest entries in row order, as returned by
        /// `write_shard_files`), each fsynced, with the manifest written last.
        /// Returns the path of the committed `latest/`.
        #[pyo3(signature = (shards, *, kind="ray", compression="zstd", level=1))]
        fn commit(
            &mut self,
            py: Python<'_>,
            shards: Vec<Bound<'_, PyDict>>,
            kind: &str,
            compression: &str,
            level: i32,
        ) -> PyResult<String> {
            guarded("ShardStaging.commit", || {
                let entries = shards
                    .iter()
                    .map(entry_from_dict)
                    .collect::<PyResult<Vec<_>>>()?;
                let request = SaveRequest {
                    kind,
                    options: write_options(compression, level, 1, None, None)?,
                };
                let staging = self.staging.take().ok_or_else(|| {
                    PyValueError::new_err("this ShardStaging is already committed or aborted")
                })?;
                let latest = detached(py, move || {
                    shards::commit_shards(staging, &request, entries)
                })?;
                Ok(latest.to_string_lossy().into_owned())
            })
        }

        /// Removes the staging directory and releases the lock.
        fn abort(&mut self) {
            self.staging = None;
        }
    }

    /// Undoes what a save killed between the renames of the non-atomic
    /// fallback left in `ckpt_dir`. False while another process saves there.
    #[pyfunction]
    fn recover_checkpoint_dir(py: Python<'_>, ckpt_dir: PathBuf) -> PyResult<bool> {
        guarded("recover_checkpoint_dir", || {
            detached(py, || shards::recover(&ckpt_dir))
        })
    }

    /// Writes one Ray block (or any Arrow C stream) as shard files
    /// `{prefix}-data-NNNNN-of-NNNNN.arrow` into the existing directory
    /// `dir`, fsynced (with `sync=False`, only their writeback is started:
    /// `ShardStaging.commit` fsyncs every shard it commits), with the GIL
    /// released. Returns one manifest file entry per shard: `file`,
    /// `bytes`, `xxh3_64`, `rows`, `raw_bytes`.
    #[pyfunction]
    #[pyo3(signature = (dir, data, *, prefix, compression="zstd", level=1, threads=1, chunk_bytes=None, max_shard_bytes=None, sync=true))]
    #[allow(clippy::too_many_arguments)]
    fn write_shard_files<'py>(
        py: Python<'py>,
        dir: PathBuf,
        data: &Bound<'py, PyAny>,
        prefix: &str,
        compression: &str,
        level: i32,
        threads: usize,
        chunk_bytes: Option<u64>,
        max_shard_bytes: Option<u64>,
        sync: bool,
    ) -> PyResult<Vec<Bound<'py, PyDict>>> {
        guarded("write_shard_files", || {
            let options = WriteOptions {
                sync,
                ..write_options(compression, level, threads, chunk_bytes, max_shard_bytes)?
            };
            let stream = import_stream(data)?;
            let schema = stream.schema();
            let prefix = prefix.to_owned();
            let shards = detached(py, move || {
                write_prefixed_shards(&dir, &prefix, schema, stream, &options)
            })?;
            shards
                .into_iter()
                .map(|s| {
                    let entry = FileEntry {
                        file: s.file,
                        bytes: s.bytes,
                        xxh3_64: checksum_hex(s.xxh3),
                        rows: Some(s.rows),
                        raw_bytes: Some(s.raw_bytes),
                    };
                    entry_to_dict(py, &entry)
                })
                .collect()
        })
    }

    /// Reads the shard file `path`, verified against its manifest entry
    /// (`bytes`, `xxh3_64`, `rows`) as a checkpoint load verifies it (a
    /// regular file inside its directory, reads bounded by `bytes`, memory
    /// checked), with the GIL released. The result's `manifest` is that
    /// entry as JSON; its table goes out once through `__arrow_c_stream__`.
    #[pyfunction]
    #[pyo3(signature = (path, *, bytes, xxh3_64, rows, verify=true))]
    fn read_shard_file(
        py: Python<'_>,
        path: PathBuf,
        bytes: u64,
        xxh3_64: String,
        rows: u64,
        verify: bool,
    ) -> PyResult<LoadedCheckpoint> {
        guarded("read_shard_file", || {
            let (dir, file) = match (path.parent(), path.file_name()) {
                (Some(dir), Some(file)) => (dir.to_path_buf(), file.to_string_lossy().into_owned()),
                _ => {
                    return Err(PyValueError::new_err(format!(
                        "{} does not name a shard file",
                        path.display()
                    )))
                }
            };
            let dir = if dir.as_os_str().is_empty() {
                PathBuf::from(".")
            } else {
                dir
            };
            let entry = FileEntry {
                file,
                bytes,
                xxh3_64,
                rows: Some(rows),
                raw_bytes: None,
            };
            let (schema, batches) = detached(py, || read_verified_shard(&dir, &entry, verify))?;
            let num_rows = batches.iter().map(|b| b.num_rows() as u64).sum();
            Ok(LoadedCheckpoint {
                manifest_json: serde_json::to_string(&entry).expect("an entry always serialises"),
                num_rows,
                files: Default::default(),
                data: Some((schema, batches)),
            })
        })
    }

    pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
        let defaults = WriteOptions::default();
        m.add("DEFAULT_CHUNK_BYTES", defaults.chunk_bytes)?;
        m.add("DEFAULT_MAX_SHARD_BYTES", defaults.max_shard_bytes)?;
        // Whether DATA_JUICER_ACCEL_FAULT is honoured (test builds only).
        m.add("FAULT_INJECTION", crate::checkpoint::fault::ENABLED)?;
        m.add_class::<ShardStaging>()?;
        m.add_function(wrap_pyfunction!(recover_checkpoint_dir, m)?)?;
        m.add_function(wrap_pyfunction!(write_shard_files, m)?)?;
        m.add_function(wrap_pyfunction!(read_shard_file, m)?)?;
        Ok(())
    }
}

// ======================================================================
// Background saves: `CheckpointManager(..., background=True)`.
//
// `submit` takes the snapshot while the caller waits (the record batches of
// the dataset imported through the Arrow C stream: references to their
// buffers, no copy) and returns; the writer thread of
// `crate::checkpoint::background` compresses and commits it without Python.
// ======================================================================

mod background_saves {
    use std::path::PathBuf;
    use std::time::Duration;

    use arrow_array::ffi_stream::RecordBatchStreamReader;
    use arrow_array::{RecordBatch, UInt64Array};
    use arrow_schema::DataType;
    use pyo3::exceptions::PyValueError;
    use pyo3::prelude::*;

    use super::super::lifecycle::gil;
    use super::{detached, import_raw_stream, import_stream, to_py_err, SIGNAL_POLL};
    use crate::checkpoint::background::{BackgroundWriter, Snapshot};
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
                            size_like_datasets=None, holder=None, immutable=false))]
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
        ) -> PyResult<u64> {
            let options = WriteOptions {
                compression: super::compression(compression, level)?,
                threads: threads.max(1),
                rows_per_shard,
                max_shard_bytes,
                chunk_bytes,
                sync: true,
            };
            checkpoint::writer::ipc_options(options.compression).map_err(to_py_err)?;
            let stream = SizedStream::try_new(import_raw_stream(data)?)
                .map_err(|e| PyValueError::new_err(format!("invalid Arrow C stream: {e}")))?;
            let schema = stream.schema();
            let index_stream = indices.map(index_stream).transpose()?;
            let mut snapshot = Snapshot {
                ckpt_dir,
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
                    let (batches, table_bytes) =
                        stream.read_all().map_err(CheckpointError::input)?;
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
                    PyValueError::new_err(format!(
                        "the dataset could not be read as Arrow data: {e}"
                    ))
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
}
