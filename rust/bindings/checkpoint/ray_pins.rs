//! Ray loads on the driver: the committed manifest of a checkpoint
//! directory, and the pin that keeps a lazy load's generation readable
//! (see `checkpoint::pin`); in a bucket, the newest manifest and the
//! checkpoints kept under a prefix.

use std::path::PathBuf;

use pyo3::prelude::*;

use super::calls::detached;
use crate::bindings::lifecycle::gil::{self, guarded};
use crate::checkpoint::bucket::load::{child_prefixes, newest_manifest};
use crate::checkpoint::bucket::readers;
use crate::checkpoint::pin::{self, READERS_DIR};
use crate::checkpoint::shards::committed_generation;

use super::ray_shards::open_bucket;

/// The validated manifest, as JSON, of the checkpoint committed in
/// `ckpt_dir` (its `latest/`), after bringing back one a save killed
/// mid-fallback left aside; None when nothing is committed.
#[pyfunction]
fn read_committed_manifest(py: Python<'_>, ckpt_dir: PathBuf) -> PyResult<Option<String>> {
    guarded("read_committed_manifest", || {
        let generation = detached(py, || committed_generation(&ckpt_dir))?;
        Ok(generation.map(|(_, manifest)| manifest.to_json()))
    })
}

/// Pins the generation committed in `ckpt_dir` for a lazy load:
/// `(directory, manifest JSON, in_place)`, None when nothing is committed.
/// `directory` holds hard links to its shards, to release with
/// `unpin_generation`, unless `in_place` is `(log level, why)`: then it is
/// `latest/` itself.
#[pyfunction]
#[allow(clippy::type_complexity)]
fn pin_generation(
    py: Python<'_>,
    ckpt_dir: PathBuf,
) -> PyResult<Option<(String, String, Option<(&'static str, String)>)>> {
    guarded("pin_generation", || {
        let pinned = detached(py, || pin::pin_generation(&ckpt_dir))?;
        Ok(pinned.map(|p| {
            let in_place = p.in_place.map(|why| {
                let level = if why.is_expected() {
                    "DEBUG"
                } else {
                    "WARNING"
                };
                (level, why.to_string())
            });
            let dir = p.dir.to_string_lossy().into_owned();
            (dir, p.manifest.to_json(), in_place)
        }))
    })
}

/// Removes the pin `pin` (and `.readers/` once empty); with `owner`, only
/// in the process of that pid, so a forked child leaves its parent's pins.
#[pyfunction]
#[pyo3(signature = (pin, owner=None))]
fn unpin_generation(py: Python<'_>, pin: PathBuf, owner: Option<u32>) {
    gil::detach(py, || pin::unpin(&pin, owner))
}

/// Removes the pins of loads by processes of this host that are gone.
#[pyfunction]
fn remove_dead_pins(py: Python<'_>, ckpt_dir: PathBuf) {
    gil::detach(py, || pin::remove_dead_pins(&ckpt_dir))
}

/// The manifest, as JSON, of the newest version published in the bucket
/// prefix `uri` (it names its `generation`); None when none was.
#[pyfunction]
#[pyo3(signature = (uri, *, storage_options=None))]
fn read_bucket_manifest(
    py: Python<'_>,
    uri: &str,
    storage_options: Option<Vec<(String, String)>>,
) -> PyResult<Option<String>> {
    guarded("read_bucket_manifest", || {
        let bucket = open_bucket(uri, storage_options)?;
        let newest = detached(py, || newest_manifest(&bucket))?;
        Ok(newest.map(|(_, manifest)| manifest.to_json()))
    })
}

/// Pins the newest version of the bucket checkpoint `uri` for a lazy load:
/// `(pin, manifest JSON)`, or `None` when nothing is published. Saves keep
/// the pinned objects until [`unpin_bucket_version`] (or the pin's lease ends).
#[pyfunction]
#[pyo3(signature = (uri, *, storage_options=None))]
fn pin_bucket_version(
    py: Python<'_>,
    uri: &str,
    storage_options: Option<Vec<(String, String)>>,
) -> PyResult<Option<(String, String)>> {
    guarded("pin_bucket_version", || {
        let bucket = open_bucket(uri, storage_options)?;
        let pinned = detached(py, || readers::pin_newest(&bucket))?;
        Ok(pinned.map(|(pin, manifest)| (pin, manifest.to_json())))
    })
}

/// Removes a pin of [`pin_bucket_version`], unless this process is a fork
/// of the `owner` that took it.
#[pyfunction]
#[pyo3(signature = (uri, pin, owner, *, storage_options=None))]
fn unpin_bucket_version(
    py: Python<'_>,
    uri: &str,
    pin: &str,
    owner: u32,
    storage_options: Option<Vec<(String, String)>>,
) {
    if owner != std::process::id() {
        return;
    }
    // Best effort at any time, exit included: a pin left behind expires.
    let _ = guarded("unpin_bucket_version", || {
        let bucket = open_bucket(uri, storage_options)?;
        gil::detach(py, || readers::unpin(&bucket, pin));
        Ok(())
    });
}

/// The names of the prefixes directly under the bucket prefix `uri`.
#[pyfunction]
#[pyo3(signature = (uri, *, storage_options=None))]
fn list_bucket_prefixes(
    py: Python<'_>,
    uri: &str,
    storage_options: Option<Vec<(String, String)>>,
) -> PyResult<Vec<String>> {
    guarded("list_bucket_prefixes", || {
        let bucket = open_bucket(uri, storage_options)?;
        detached(py, || child_prefixes(&bucket))
    })
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add("READERS_DIR", READERS_DIR)?;
    m.add_function(wrap_pyfunction!(read_bucket_manifest, m)?)?;
    m.add_function(wrap_pyfunction!(pin_bucket_version, m)?)?;
    m.add_function(wrap_pyfunction!(unpin_bucket_version, m)?)?;
    m.add_function(wrap_pyfunction!(list_bucket_prefixes, m)?)?;
    m.add_function(wrap_pyfunction!(read_committed_manifest, m)?)?;
    m.add_function(wrap_pyfunction!(pin_generation, m)?)?;
    m.add_function(wrap_pyfunction!(unpin_generation, m)?)?;
    m.add_function(wrap_pyfunction!(remove_dead_pins, m)?)
}
