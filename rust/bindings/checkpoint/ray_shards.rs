//! Ray: shard files written by the worker tasks, committed by the driver
//! (see `checkpoint::shards`). `ShardStaging` is the driver's save;
//! `write_shard_files` and `read_shard_file` run in the Ray tasks. In a
//! bucket: `BucketShardStaging`, `write_bucket_shards` and
//! `read_bucket_shard`.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow_array::RecordBatchReader;
use arrow_schema::SchemaRef;
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::{PyCapsule, PyDict};

use super::bridge::{export_schema, import_stream, to_py_err};
use super::calls::detached;
use super::reader::LoadedCheckpoint;
use super::writer::write_options;
use crate::bindings::lifecycle::gil::guarded;
use crate::checkpoint::bucket::{Bucket, BucketStaging, Location};
use crate::checkpoint::dirfd::CheckpointDir;
use crate::checkpoint::manifest::{checksum_hex, FileEntry};
use crate::checkpoint::probe::shard_schema;
use crate::checkpoint::shards::{
    self, read_bucket_shard as read_bucket_shard_core, read_verified_shard, write_bucket_shards,
    write_prefixed_shards,
};
use crate::checkpoint::{CheckpointError, SaveRequest, Staging, WriteOptions};

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
        let value = dict
            .get_item(key)?
            .ok_or_else(|| PyValueError::new_err(format!("shard entry {dict} has no {key:?}")))?;
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

/// The manifest entries the write tasks reported, and the request of
/// their commit.
fn commit_request<'k>(
    shards: &[Bound<'_, PyDict>],
    kind: &'k str,
    compression: &str,
    level: i32,
) -> PyResult<(Vec<FileEntry>, SaveRequest<'k>)> {
    let entries = shards
        .iter()
        .map(entry_from_dict)
        .collect::<PyResult<Vec<_>>>()?;
    let request = SaveRequest {
        kind,
        options: write_options(compression, level, 1, None, None)?,
    };
    Ok((entries, request))
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
            let (entries, request) = commit_request(&shards, kind, compression, level)?;
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
        entries_to_dicts(py, shards)
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
        let (dir, file) = split_shard_path(&path)?;
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

/// The directory holding the shard file `path` (`.` when it names none)
/// and the file's name.
fn split_shard_path(path: &Path) -> PyResult<(PathBuf, String)> {
    let (Some(dir), Some(file)) = (path.parent(), path.file_name()) else {
        return Err(PyValueError::new_err(format!(
            "{} does not name a shard file",
            path.display()
        )));
    };
    let dir = if dir.as_os_str().is_empty() {
        PathBuf::from(".")
    } else {
        dir.to_path_buf()
    };
    Ok((dir, file.to_string_lossy().into_owned()))
}

/// The schema of a shard, for `pyarrow.schema()` (`__arrow_c_schema__`).
#[pyclass(module = "data_juicer_accel._native", frozen)]
pub struct ShardSchema {
    schema: SchemaRef,
}

#[pymethods]
impl ShardSchema {
    fn __arrow_c_schema__<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyCapsule>> {
        export_schema(py, &self.schema)
    }
}

/// The schema at the start of the shard file `path`, read only if it is a
/// regular file inside its directory (never a symlink out of it, nor a
/// FIFO). Only its first message is read; the rows are verified when a
/// task reads the shard.
#[pyfunction]
fn read_shard_schema(py: Python<'_>, path: PathBuf) -> PyResult<ShardSchema> {
    guarded("read_shard_schema", || {
        let (dir, file) = split_shard_path(&path)?;
        let schema = detached(py, || {
            let handle = CheckpointDir::open(&dir)?.ok_or_else(|| {
                CheckpointError::io(&dir, std::io::Error::from(std::io::ErrorKind::NotFound))
            })?;
            shard_schema(&handle, &file)
        })?;
        Ok(ShardSchema { schema })
    })
}

/// The client of the bucket prefix `uri` (`s3://bucket/prefix`); a local
/// path is refused, as a task must never write one that looks like a URI.
pub(super) fn open_bucket(
    uri: &str,
    options: Option<Vec<(String, String)>>,
) -> PyResult<Arc<Bucket>> {
    match Location::parse(uri, &options.unwrap_or_default()).map_err(to_py_err)? {
        Location::Bucket(bucket) => Ok(bucket),
        Location::Dir(_) => Err(PyValueError::new_err(format!(
            "{uri:?} names no bucket (expected s3://bucket/prefix)"
        ))),
    }
}

fn entries_to_dicts<'py>(
    py: Python<'py>,
    shards: Vec<crate::checkpoint::WrittenShard>,
) -> PyResult<Vec<Bound<'py, PyDict>>> {
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
}

/// One Ray checkpoint save in a bucket prefix, held by the driver: it
/// notes the newest version and names the generation the write tasks
/// upload into; `commit` publishes their shards as the next version.
/// Dropped or aborted without a commit, it deletes the generation.
#[pyclass(module = "data_juicer_accel._native")]
pub struct BucketShardStaging {
    staging: Option<BucketStaging>,
    uri: String,
    generation: String,
}

#[pymethods]
impl BucketShardStaging {
    #[new]
    #[pyo3(signature = (uri, *, storage_options=None))]
    fn new(
        py: Python<'_>,
        uri: &str,
        storage_options: Option<Vec<(String, String)>>,
    ) -> PyResult<Self> {
        guarded("BucketShardStaging()", || {
            let bucket = open_bucket(uri, storage_options)?;
            let staging = detached(py, || BucketStaging::create(bucket))?;
            Ok(BucketShardStaging {
                uri: staging.shown(),
                generation: staging.generation().to_string(),
                staging: Some(staging),
            })
        })
    }

    /// `s3://bucket/prefix` of the checkpoint.
    #[getter]
    fn uri(&self) -> &str {
        &self.uri
    }

    /// `generations/<id>`: what the write tasks pass to `write_bucket_shards`.
    #[getter]
    fn generation(&self) -> &str {
        &self.generation
    }

    /// Publishes `shards` (manifest entries in row order, as returned by
    /// `write_bucket_shards`) as the next version; returns the URI. Another
    /// save that published first raises `CheckpointLockedError`.
    #[pyo3(signature = (shards, *, kind="ray", compression="zstd", level=1))]
    fn commit(
        &mut self,
        py: Python<'_>,
        shards: Vec<Bound<'_, PyDict>>,
        kind: &str,
        compression: &str,
        level: i32,
    ) -> PyResult<String> {
        guarded("BucketShardStaging.commit", || {
            let (entries, request) = commit_request(&shards, kind, compression, level)?;
            let staging = self.staging.take().ok_or_else(|| {
                PyValueError::new_err("this BucketShardStaging is already committed or aborted")
            })?;
            detached(py, move || {
                shards::commit_bucket_shards(staging, &request, entries)
            })
        })
    }

    /// Deletes what was uploaded for this save (nothing after a commit).
    fn abort(&mut self, py: Python<'_>) {
        let staging = self.staging.take();
        crate::bindings::lifecycle::gil::detach(py, move || drop(staging));
    }

    fn __repr__(&self) -> String {
        format!("BucketShardStaging({:?}, {:?})", self.uri, self.generation)
    }
}

/// Uploads one Ray block (or any Arrow C stream) as the shards
/// `{prefix}-part-NNNNN.arrow` of the generation `generation` in the
/// bucket prefix `uri`, with the GIL released. Returns one manifest entry
/// per shard, as `write_shard_files` does.
#[pyfunction]
#[pyo3(signature = (uri, generation, data, *, prefix, storage_options=None, compression="zstd", level=1, threads=1, chunk_bytes=None, max_shard_bytes=None))]
#[allow(clippy::too_many_arguments)]
fn write_bucket_shard_files<'py>(
    py: Python<'py>,
    uri: &str,
    generation: &str,
    data: &Bound<'py, PyAny>,
    prefix: &str,
    storage_options: Option<Vec<(String, String)>>,
    compression: &str,
    level: i32,
    threads: usize,
    chunk_bytes: Option<u64>,
    max_shard_bytes: Option<u64>,
) -> PyResult<Vec<Bound<'py, PyDict>>> {
    guarded("write_bucket_shard_files", || {
        let options = write_options(compression, level, threads, chunk_bytes, max_shard_bytes)?;
        let bucket = open_bucket(uri, storage_options)?;
        let stream = import_stream(data)?;
        let schema = stream.schema();
        let shards = detached(py, move || {
            write_bucket_shards(bucket, generation, prefix, schema, stream, &options)
        })?;
        entries_to_dicts(py, shards)
    })
}

/// Reads the shard `file` of the generation `generation` in the bucket
/// prefix `uri`, verified against its manifest entry (`bytes`, `xxh3_64`,
/// `rows`) as a bucket load verifies it, with the GIL released. A damaged
/// or missing object raises `CheckpointCorruptError` naming its key.
#[pyfunction]
#[pyo3(signature = (uri, generation, *, file, bytes, xxh3_64, rows, storage_options=None, verify=true))]
#[allow(clippy::too_many_arguments)]
fn read_bucket_shard(
    py: Python<'_>,
    uri: &str,
    generation: &str,
    file: String,
    bytes: u64,
    xxh3_64: String,
    rows: u64,
    storage_options: Option<Vec<(String, String)>>,
    verify: bool,
) -> PyResult<LoadedCheckpoint> {
    guarded("read_bucket_shard", || {
        let bucket = open_bucket(uri, storage_options)?;
        let entry = FileEntry {
            file,
            bytes,
            xxh3_64,
            rows: Some(rows),
            raw_bytes: None,
        };
        let (schema, batches) = detached(py, || {
            read_bucket_shard_core(&bucket, generation, &entry, verify)
        })?;
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
    m.add_class::<BucketShardStaging>()?;
    m.add_function(wrap_pyfunction!(write_bucket_shard_files, m)?)?;
    m.add_function(wrap_pyfunction!(read_bucket_shard, m)?)?;
    m.add_class::<ShardStaging>()?;
    m.add_function(wrap_pyfunction!(write_shard_files, m)?)?;
    m.add_function(wrap_pyfunction!(read_shard_file, m)?)?;
    m.add_class::<ShardSchema>()?;
    m.add_function(wrap_pyfunction!(read_shard_schema, m)?)
}
