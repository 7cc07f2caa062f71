//! Where a checkpoint lives, for the Python managers: whether `ckpt_dir` is
//! a bucket, and the small reads they make of the committed checkpoint
//! wherever it is.

use std::path::PathBuf;

use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::PyBytes;

use super::bridge::to_py_err;
use super::calls::interruptible;
use crate::bindings::lifecycle::gil::guarded;
use crate::checkpoint::bucket::publish::{get_side_file, put_side_file, versions};
use crate::checkpoint::bucket::{Bucket, BucketUri, Location};
use crate::checkpoint::save;

/// `s3://bucket/prefix` when `ckpt_dir` names a bucket, `None` for a local
/// path. Any other URI, or credentials written into one, raise `ValueError`.
#[pyfunction]
fn bucket_uri(ckpt_dir: PathBuf) -> PyResult<Option<String>> {
    guarded("bucket_uri", || {
        let Some(text) = ckpt_dir.to_str() else {
            return Ok(None);
        };
        Ok(BucketUri::parse(text)
            .map_err(to_py_err)?
            .map(|uri| uri.shown()))
    })
}

/// The small file `name` of the committed checkpoint of `ckpt_dir`,
/// verified against its manifest; `None` when there is none.
#[pyfunction]
#[pyo3(signature = (ckpt_dir, name, *, storage_options=None))]
fn committed_file<'py>(
    py: Python<'py>,
    ckpt_dir: PathBuf,
    name: &str,
    storage_options: Option<Vec<(String, String)>>,
) -> PyResult<Option<Bound<'py, PyBytes>>> {
    guarded("committed_file", || {
        let location = Location::from_path(&ckpt_dir, &storage_options.unwrap_or_default())
            .map_err(to_py_err)?;
        let bytes = interruptible(py, |_| save::read_committed_file(&location, name))?;
        Ok(bytes.map(|b| PyBytes::new(py, &b)))
    })
}

/// The manifest (JSON) of the committed checkpoint of `ckpt_dir`, without
/// reading the rows; `None` when there is none.
#[pyfunction]
#[pyo3(signature = (ckpt_dir, *, storage_options=None))]
fn committed_manifest(
    py: Python<'_>,
    ckpt_dir: PathBuf,
    storage_options: Option<Vec<(String, String)>>,
) -> PyResult<Option<String>> {
    guarded("committed_manifest", || {
        let location = Location::from_path(&ckpt_dir, &storage_options.unwrap_or_default())
            .map_err(to_py_err)?;
        let manifest = interruptible(py, |_| save::read_committed_manifest(&location))?;
        Ok(manifest.map(|m| m.to_json()))
    })
}

/// The versions published in the bucket `ckpt_dir`, newest first (a save
/// keeps the newest two).
#[pyfunction]
#[pyo3(signature = (ckpt_dir, *, storage_options=None))]
fn bucket_versions(
    py: Python<'_>,
    ckpt_dir: PathBuf,
    storage_options: Option<Vec<(String, String)>>,
) -> PyResult<Vec<u64>> {
    guarded("bucket_versions", || {
        let bucket = bucket_of(ckpt_dir, storage_options)?;
        interruptible(py, |_| versions(&bucket))
    })
}

/// The bucket of `uri`, or a `ValueError` for a directory.
fn bucket_of(
    uri: PathBuf,
    storage_options: Option<Vec<(String, String)>>,
) -> PyResult<std::sync::Arc<Bucket>> {
    match Location::from_path(&uri, &storage_options.unwrap_or_default()).map_err(to_py_err)? {
        Location::Bucket(bucket) => Ok(bucket),
        Location::Dir(dir) => Err(PyValueError::new_err(format!(
            "{} is a directory, not a bucket (s3://bucket/prefix)",
            dir.display()
        ))),
    }
}

/// Puts the small file `name` under the bucket prefix `uri`, beside the
/// checkpoint's versions, in one atomic PUT.
#[pyfunction]
#[pyo3(signature = (uri, name, data, *, storage_options=None))]
fn put_bucket_file(
    py: Python<'_>,
    uri: PathBuf,
    name: &str,
    data: &[u8],
    storage_options: Option<Vec<(String, String)>>,
) -> PyResult<()> {
    guarded("put_bucket_file", || {
        let bucket = bucket_of(uri, storage_options)?;
        interruptible(py, |_| put_side_file(&bucket, name, data))
    })
}

/// The small file `name` under the bucket prefix `uri`; `None` when there is none.
#[pyfunction]
#[pyo3(signature = (uri, name, *, storage_options=None))]
fn get_bucket_file<'py>(
    py: Python<'py>,
    uri: PathBuf,
    name: &str,
    storage_options: Option<Vec<(String, String)>>,
) -> PyResult<Option<Bound<'py, PyBytes>>> {
    guarded("get_bucket_file", || {
        let bucket = bucket_of(uri, storage_options)?;
        let bytes = interruptible(py, |_| get_side_file(&bucket, name))?;
        Ok(bytes.map(|b| PyBytes::new(py, &b)))
    })
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(put_bucket_file, m)?)?;
    m.add_function(wrap_pyfunction!(get_bucket_file, m)?)?;
    m.add_function(wrap_pyfunction!(bucket_uri, m)?)?;
    m.add_function(wrap_pyfunction!(committed_manifest, m)?)?;
    m.add_function(wrap_pyfunction!(bucket_versions, m)?)?;
    m.add_function(wrap_pyfunction!(committed_file, m)?)
}
