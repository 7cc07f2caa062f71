//! Loads: `LoadedCheckpoint` (a verified checkpoint in memory, its table
//! handed out once through `__arrow_c_stream__`), `read_checkpoint`, and
//! the small reads the Python layer makes of a checkpoint directory
//! (its manifest, whether its shards are compressed, a checksum).

use std::collections::HashMap;
use std::path::PathBuf;

use arrow_array::{RecordBatch, RecordBatchIterator, RecordBatchReader};
use arrow_schema::SchemaRef;
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyCapsule};

use super::bridge::export_stream;
use super::bridge::to_py_err;
use super::calls::{detached, interruptible};
use crate::bindings::lifecycle::gil::guarded;
use crate::checkpoint::bucket::Location;
use crate::checkpoint::{self, manifest, probe, reader, save};

/// A verified checkpoint in memory; hands its table out once through the
/// Arrow C stream interface.
#[pyclass(module = "data_juicer_accel._native")]
pub struct LoadedCheckpoint {
    pub(super) manifest_json: String,
    pub(super) num_rows: u64,
    pub(super) files: HashMap<String, Vec<u8>>,
    pub(super) data: Option<(SchemaRef, Vec<RecordBatch>)>,
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
            export_stream(py, reader)
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
        read_at(py, verify, threads, |options| {
            reader::read_checkpoint(&path, options)
        })
    })
}

/// The committed checkpoint of `ckpt_dir` (a directory's `latest/`, or a
/// bucket's newest version); `None` when there is none.
#[pyfunction]
#[pyo3(signature = (ckpt_dir, *, verify=true, threads=None, storage_options=None))]
fn read_committed(
    py: Python<'_>,
    ckpt_dir: PathBuf,
    verify: bool,
    threads: Option<usize>,
    storage_options: Option<Vec<(String, String)>>,
) -> PyResult<Option<LoadedCheckpoint>> {
    guarded("read_committed", || {
        let location = Location::from_path(&ckpt_dir, &storage_options.unwrap_or_default())
            .map_err(to_py_err)?;
        read_at(py, verify, threads, |options| {
            save::read_location(&location, options)
        })
    })
}

/// Runs `read` with the read options of Python's arguments, Ctrl-C
/// interrupting it.
fn read_at(
    py: Python<'_>,
    verify: bool,
    threads: Option<usize>,
    read: impl FnOnce(&reader::ReadOptions) -> checkpoint::Result<Option<reader::LoadedCheckpoint>>
        + Send,
) -> PyResult<Option<LoadedCheckpoint>> {
    let loaded = interruptible(py, |cancel| {
        let options = reader::ReadOptions {
            verify,
            threads: threads.unwrap_or_else(reader::default_threads).max(1),
            cancel: Some(cancel),
            ..Default::default()
        };
        read(&options)
    })?;
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
                if let Some(codec) = probe::batch_compression(&dir, &name)? {
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
    m.add("MANIFEST_FILE", manifest::MANIFEST_FILE)?;
    m.add("FORMAT_VERSION", manifest::FORMAT_VERSION)?;
    m.add_class::<LoadedCheckpoint>()?;
    m.add_function(wrap_pyfunction!(read_checkpoint, m)?)?;
    m.add_function(wrap_pyfunction!(read_committed, m)?)?;
    m.add_function(wrap_pyfunction!(read_manifest, m)?)?;
    m.add_function(wrap_pyfunction!(xxh3_64_hex, m)?)?;
    m.add_function(wrap_pyfunction!(compressed_shard, m)?)
}
