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
    background_saves::register(m)?;
    ray_shards::register(m)
}

// ======================================================================
// Ray: shard files written by one worker task, committed by the driver.
//
// The Ray checkpoint manager (python/data_juicer_accel/utils/ray_ckpt.py)
// has every Ray write task put the shards of its blocks into one staging
// directory shared by all tasks of a save; the driver writes the manifest
// last and renames the directory into place. These two functions are the
// worker's half: no lock, no manifest, no commit.
// ======================================================================

mod ray_shards {
    use std::fs;
    use std::path::{Path, PathBuf};

    use arrow_array::{RecordBatch, RecordBatchReader};
    use arrow_schema::{ArrowError, SchemaRef};
    use pyo3::prelude::*;
    use pyo3::types::PyDict;

    use super::{detached, import_stream, LoadedCheckpoint};
    use crate::checkpoint::commit::sync_dir;
    use crate::checkpoint::error::IoContext;
    use crate::checkpoint::manifest::{checksum_hex, is_safe_file_name, FileEntry, MANIFEST_FILE};
    use crate::checkpoint::{
        reader, write_shards, CheckpointError, Result, WriteOptions, WrittenShard,
    };

    /// Writes `input` with [`write_shards`] into a private hidden directory
    /// inside `dir`, then moves each shard up to `dir` as
    /// `{prefix}-data-NNNNN-of-NNNNN.arrow` and fsyncs `dir`. Tasks writing
    /// into the same `dir` at once must use different prefixes. On error the
    /// private directory is removed and nothing is left under a final name.
    pub fn write_prefixed_shards<I>(
        dir: &Path,
        prefix: &str,
        schema: SchemaRef,
        input: I,
        opts: &WriteOptions,
    ) -> Result<Vec<WrittenShard>>
    where
        I: Iterator<Item = std::result::Result<RecordBatch, ArrowError>>,
    {
        if !is_safe_file_name(prefix) || prefix.len() > 200 || prefix == MANIFEST_FILE {
            return Err(CheckpointError::Input(format!(
                "shard prefix {prefix:?} must be one plain file-name component"
            )));
        }
        let private = dir.join(format!(".{prefix}.writing"));
        match fs::remove_dir_all(&private) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                return Err(CheckpointError::io(&private, e))
            }
            _ => {}
        }
        fs::create_dir(&private).at(&private)?;
        let result = write_shards(&private, schema, input, opts).and_then(|shards| {
            let mut moved = Vec::with_capacity(shards.len());
            for mut shard in shards {
                let name = format!("{prefix}-{}", shard.file);
                let to = dir.join(&name);
                fs::rename(private.join(&shard.file), &to).at(&to)?;
                shard.file = name;
                moved.push(shard);
            }
            sync_dir(dir)?;
            Ok(moved)
        });
        let _ = fs::remove_dir_all(&private);
        result
    }

    /// Reads one shard file, checks its size and xxh3 against `entry` and
    /// its row count, and decodes it with the checks of a checkpoint load.
    pub fn read_verified_shard(
        path: &Path,
        entry: &FileEntry,
        verify: bool,
    ) -> Result<(SchemaRef, Vec<RecordBatch>)> {
        let bytes = reader::read_verified_file(path, entry, verify)?;
        let (schema, batches) = reader::decode_shard_bytes(path, bytes, reader::physical_memory())?;
        let rows: u64 = batches.iter().map(|b| b.num_rows() as u64).sum();
        if let Some(expected) = entry.rows {
            if rows != expected {
                return Err(CheckpointError::corrupt(
                    path,
                    format!("shard holds {rows} rows, the manifest says {expected}"),
                ));
            }
        }
        Ok((schema, batches))
    }

    /// Writes one Ray block (or any Arrow C stream) as shard files
    /// `{prefix}-data-NNNNN-of-NNNNN.arrow` into the existing directory
    /// `dir`, fsynced, with the GIL released. Returns one manifest file
    /// entry per shard: `file`, `bytes`, `xxh3_64`, `rows`, `raw_bytes`.
    #[pyfunction]
    #[pyo3(signature = (dir, data, *, prefix, compression="zstd", level=1, threads=1, chunk_bytes=8_388_608, max_shard_bytes=524_288_000))]
    #[allow(clippy::too_many_arguments)]
    fn write_shard_files<'py>(
        py: Python<'py>,
        dir: PathBuf,
        data: &Bound<'py, PyAny>,
        prefix: &str,
        compression: &str,
        level: i32,
        threads: usize,
        chunk_bytes: u64,
        max_shard_bytes: u64,
    ) -> PyResult<Vec<Bound<'py, PyDict>>> {
        let options = WriteOptions {
            compression: super::compression(compression, level)?,
            threads: threads.max(1),
            rows_per_shard: None,
            max_shard_bytes,
            chunk_bytes,
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
                let entry = PyDict::new(py);
                entry.set_item("file", s.file)?;
                entry.set_item("bytes", s.bytes)?;
                entry.set_item("xxh3_64", checksum_hex(s.xxh3))?;
                entry.set_item("rows", s.rows)?;
                entry.set_item("raw_bytes", s.raw_bytes)?;
                Ok(entry)
            })
            .collect()
    }

    /// Reads the shard file `path`, verified against its manifest entry
    /// (`bytes`, `xxh3_64`, `rows`), with the GIL released. The result's
    /// `manifest` is that entry as JSON; its table goes out once through
    /// `__arrow_c_stream__`.
    #[pyfunction]
    #[pyo3(signature = (path, *, bytes, xxh3_64, rows=None, verify=true))]
    fn read_shard_file(
        py: Python<'_>,
        path: PathBuf,
        bytes: u64,
        xxh3_64: String,
        rows: Option<u64>,
        verify: bool,
    ) -> PyResult<LoadedCheckpoint> {
        let entry = FileEntry {
            file: path
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default(),
            bytes,
            xxh3_64,
            rows,
            raw_bytes: None,
        };
        let (schema, batches) = detached(py, || read_verified_shard(&path, &entry, verify))?;
        let num_rows = batches.iter().map(|b| b.num_rows() as u64).sum();
        Ok(LoadedCheckpoint {
            manifest_json: serde_json::to_string(&entry).expect("an entry always serialises"),
            num_rows,
            files: Default::default(),
            data: Some((schema, batches)),
        })
    }

    pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
        m.add_function(wrap_pyfunction!(write_shard_files, m)?)?;
        m.add_function(wrap_pyfunction!(read_shard_file, m)?)?;
        Ok(())
    }

    #[cfg(test)]
    mod tests {
        use std::sync::Arc;

        use arrow_array::{ArrayRef, Int64Array, StringArray};
        use arrow_schema::{DataType, Field, Schema};

        use super::*;
        use crate::checkpoint::Compression;

        fn schema() -> SchemaRef {
            Arc::new(Schema::new(vec![
                Field::new("text", DataType::Utf8, true),
                Field::new("n", DataType::Int64, false),
            ]))
        }

        fn batch(start: i64, rows: i64) -> RecordBatch {
            let text: StringArray = (start..start + rows)
                .map(|i| Some(format!("row {i} ").repeat(20)))
                .collect();
            let n = Int64Array::from_iter_values(start..start + rows);
            RecordBatch::try_new(schema(), vec![Arc::new(text) as ArrayRef, Arc::new(n)]).unwrap()
        }

        fn options(max_shard_bytes: u64) -> WriteOptions {
            WriteOptions {
                compression: Compression::Zstd(1),
                threads: 2,
                rows_per_shard: None,
                max_shard_bytes,
                chunk_bytes: 16 << 10,
            }
        }

        fn entry(s: &WrittenShard) -> FileEntry {
            FileEntry {
                file: s.file.clone(),
                bytes: s.bytes,
                xxh3_64: checksum_hex(s.xxh3),
                rows: Some(s.rows),
                raw_bytes: Some(s.raw_bytes),
            }
        }

        fn names(dir: &Path) -> Vec<String> {
            let mut names: Vec<String> = fs::read_dir(dir)
                .unwrap()
                .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect();
            names.sort();
            names
        }

        #[test]
        fn two_tasks_share_a_directory_and_read_back() {
            let dir = tempfile::tempdir().unwrap();
            let a = (0..4).map(|i| Ok(batch(i * 500, 500)));
            let b = (4..6).map(|i| Ok(batch(i * 500, 500)));
            let sa = write_prefixed_shards(dir.path(), "t00000-x", schema(), a, &options(64 << 10))
                .unwrap();
            let sb = write_prefixed_shards(dir.path(), "t00001-y", schema(), b, &options(u64::MAX))
                .unwrap();
            assert!(sa.len() > 1, "the byte limit splits task a into shards");
            assert_eq!(sb.len(), 1);
            assert!(sa.iter().all(|s| s.file.starts_with("t00000-x-data-")));
            // Only final names are left: no private directory, nothing hidden.
            let mut expected: Vec<String> = sa.iter().chain(&sb).map(|s| s.file.clone()).collect();
            expected.sort();
            assert_eq!(names(dir.path()), expected);
            let mut n = Vec::new();
            for s in sa.iter().chain(&sb) {
                let (_, batches) =
                    read_verified_shard(&dir.path().join(&s.file), &entry(s), true).unwrap();
                for b in batches {
                    let col = b.column(1).as_any().downcast_ref::<Int64Array>().unwrap();
                    n.extend(col.values().iter().copied());
                }
            }
            assert_eq!(
                n,
                (0..3000).collect::<Vec<i64>>(),
                "rows in task then shard order"
            );
        }

        #[test]
        fn empty_input_gives_one_schema_only_shard() {
            let dir = tempfile::tempdir().unwrap();
            let shards = write_prefixed_shards(
                dir.path(),
                "empty",
                schema(),
                std::iter::empty(),
                &options(1 << 20),
            )
            .unwrap();
            assert_eq!(shards.len(), 1);
            assert_eq!(shards[0].rows, 0);
            let (schema_read, batches) =
                read_verified_shard(&dir.path().join(&shards[0].file), &entry(&shards[0]), true)
                    .unwrap();
            assert_eq!(schema_read.fields(), schema().fields());
            assert!(batches.iter().all(|b| b.num_rows() == 0));
        }

        #[test]
        fn refuses_unsafe_prefixes() {
            let dir = tempfile::tempdir().unwrap();
            for bad in ["", "../up", "a/b", ".hidden", MANIFEST_FILE] {
                let err = write_prefixed_shards(
                    dir.path(),
                    bad,
                    schema(),
                    std::iter::empty(),
                    &options(1),
                )
                .unwrap_err();
                assert!(matches!(err, CheckpointError::Input(_)), "{bad}: {err}");
            }
            assert!(names(dir.path()).is_empty());
        }

        #[test]
        fn failed_input_leaves_nothing_under_a_final_name() {
            let dir = tempfile::tempdir().unwrap();
            let input = vec![
                Ok(batch(0, 100)),
                Err(ArrowError::ComputeError("worker lost its input".into())),
            ];
            let err = write_prefixed_shards(
                dir.path(),
                "t1",
                schema(),
                input.into_iter(),
                &options(1 << 20),
            )
            .unwrap_err();
            assert!(err.to_string().contains("worker lost its input"), "{err}");
            assert!(names(dir.path()).is_empty(), "{:?}", names(dir.path()));
        }

        #[test]
        fn detects_damage_against_the_entry() {
            let dir = tempfile::tempdir().unwrap();
            let shards = write_prefixed_shards(
                dir.path(),
                "t",
                schema(),
                std::iter::once(Ok(batch(0, 200))),
                &options(u64::MAX),
            )
            .unwrap();
            let path = dir.path().join(&shards[0].file);
            let good = entry(&shards[0]);
            let mut wrong_rows = good.clone();
            wrong_rows.rows = Some(199);
            let err = read_verified_shard(&path, &wrong_rows, true).unwrap_err();
            assert!(err.to_string().contains("199"), "{err}");
            let mut bytes = fs::read(&path).unwrap();
            let middle = bytes.len() / 2;
            bytes[middle] ^= 0x55;
            fs::write(&path, &bytes).unwrap();
            let err = read_verified_shard(&path, &good, true).unwrap_err();
            assert!(matches!(err, CheckpointError::Corrupt { .. }), "{err}");
            assert!(err.to_string().contains("xxh3"), "{err}");
            fs::write(&path, &bytes[..middle]).unwrap();
            let err = read_verified_shard(&path, &good, true).unwrap_err();
            assert!(err.to_string().contains("truncated"), "{err}");
        }
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

    use arrow_array::ffi_stream::RecordBatchStreamReader;
    use arrow_array::{RecordBatch, UInt64Array};
    use arrow_schema::DataType;
    use pyo3::exceptions::PyValueError;
    use pyo3::prelude::*;

    use super::{detached, import_stream, to_py_err};
    use crate::checkpoint::background::{BackgroundWriter, DeferredRows, Snapshot};
    use crate::checkpoint::{self, CheckpointError, WriteOptions};

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
        /// reported (and queues nothing then).
        #[pyo3(signature = (ckpt_dir, data, *, kind, files, state_template=None, indices=None,
                            compression="zstd", level=1, threads=1, chunk_bytes=8_388_608,
                            max_shard_bytes=524_288_000, rows_per_shard=None))]
        #[allow(clippy::too_many_arguments)]
        fn submit(
            &self,
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
        ) -> PyResult<u64> {
            let options = WriteOptions {
                compression: super::compression(compression, level)?,
                threads: threads.max(1),
                rows_per_shard,
                max_shard_bytes,
                chunk_bytes,
            };
            checkpoint::writer::ipc_options(options.compression).map_err(to_py_err)?;
            let stream = import_stream(data)?;
            let schema = arrow_array::RecordBatchReader::schema(&stream);
            let index_stream = indices.map(index_stream).transpose()?;
            // The streams hold references to the data: the writer thread pulls them.
            let deferred: DeferredRows = Box::new(move || {
                let batches = pull(stream)?;
                let indices = index_stream
                    .map(|s| pull(s).and_then(index_arrays))
                    .transpose()?;
                Ok((batches, indices))
            });
            let snapshot = Snapshot {
                ckpt_dir,
                schema,
                batches: Vec::new(),
                indices: None,
                files,
                state_template,
                kind,
                options,
                deferred: Some(deferred),
            };
            self.writer.submit(snapshot).map_err(to_py_err)
        }

        /// Blocks (GIL released) until every submitted save is committed or
        /// has failed; raises the first failure not yet reported.
        fn wait(&self, py: Python<'_>) -> PyResult<()> {
            detached(py, || self.writer.wait())
        }

        /// `wait()`, then stops the writer thread. Later calls do nothing.
        fn close(&self, py: Python<'_>) -> PyResult<()> {
            detached(py, || self.writer.close())
        }

        /// Blocks (GIL released) up to `timeout` seconds until a commit not
        /// yet taken exists; False on timeout or once the writer is closed.
        fn wait_for_commit(&self, py: Python<'_>, timeout: f64) -> bool {
            let timeout = std::time::Duration::from_secs_f64(timeout.clamp(0.0, 3600.0));
            py.detach(|| self.writer.wait_for_commit(timeout))
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
