//! Pins of lazy loads in a bucket. A load whose reads come later (Ray's read
//! tasks) puts `readers/<generation id>/<pid>-<nanos>-<n>` before it hands
//! the manifest out; a save's clean-up keeps every generation with a pin
//! younger than [`PIN_LEASE`], and deletes older pins (their loaders died
//! without unpinning, or outlived the lease).
//!
//! No lock orders the two, so each side checks after the other's step: a
//! save deletes a version's manifest first and lists the pins after; a load
//! pins first and checks the manifest is still there after. Either the save
//! sees the pin and keeps the objects, or the load sees the manifest gone
//! and pins the newest version instead.

use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures_util::TryStreamExt;
use object_store::{ObjectStoreExt, PutPayload};

use super::load::newest_manifest;
use super::location::Bucket;
use super::publish::{read_manifest, GENERATIONS};
use super::runtime::{block_on, block_on_cleanup, store_error};
use crate::checkpoint::error::{CheckpointError, Result};
use crate::checkpoint::manifest::Manifest;

pub const READERS: &str = "readers";
/// How long a pin keeps its generation: a lazy load read later than this
/// may find its objects gone (and says which).
pub const PIN_LEASE: Duration = Duration::from_secs(6 * 3600);
/// How often a load starts over because saves removed the version it pinned.
const PIN_RETRIES: usize = 20;

/// Pins the newest version; returns the pin's name and the manifest, or
/// `None` when nothing is published.
pub fn pin_newest(bucket: &Bucket) -> Result<Option<(String, Manifest)>> {
    for _ in 0..PIN_RETRIES {
        let Some((version, manifest)) = newest_manifest(bucket)? else {
            return Ok(None);
        };
        let pin = pin_name(&manifest)?;
        let key = bucket.key(&pin);
        block_on(bucket.store.put(&key, PutPayload::new()))?
            .map_err(|e| store_error(bucket.shown(&key), e))?;
        if read_manifest(bucket, version)?.is_some() {
            return Ok(Some((pin, manifest)));
        }
        unpin(bucket, &pin); // removed before the pin was seen: take the newest
    }
    Err(CheckpointError::Input(format!(
        "{}: saves replaced the newest version {PIN_RETRIES} times while a load pinned it",
        bucket.uri.shown()
    )))
}

fn pin_name(manifest: &Manifest) -> Result<String> {
    static PINS: AtomicU64 = AtomicU64::new(0);
    let generation = manifest.generation.as_deref().unwrap_or_default();
    let id = generation
        .strip_prefix(&format!("{GENERATIONS}/"))
        .ok_or_else(|| {
            CheckpointError::Input(format!("manifest names no generation ({generation:?})"))
        })?;
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    let count = PINS.fetch_add(1, Ordering::Relaxed);
    Ok(format!(
        "{READERS}/{id}/{}-{nanos:x}-{count}",
        std::process::id()
    ))
}

/// Removes a pin; best effort and bounded (a pin left expires).
pub fn unpin(bucket: &Bucket, pin: &str) {
    if pin.starts_with(&format!("{READERS}/")) {
        block_on_cleanup(bucket.store.delete(&bucket.key(pin)));
    }
}

/// The generations (`generations/<id>`) that fresh pins hold; stale pins
/// are deleted on the way.
pub fn pinned_generations(bucket: &Bucket) -> Result<HashSet<String>> {
    let prefix = bucket.key(READERS);
    let listed: Vec<_> = block_on(bucket.store.list(Some(&prefix)).try_collect())?
        .map_err(|e| store_error(bucket.shown(&prefix), e))?;
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let cutoff = now.saturating_sub(PIN_LEASE.as_secs()) as i64;
    let mut pinned = HashSet::new();
    for meta in listed {
        let parts: Vec<&str> = meta.location.as_ref().rsplitn(3, '/').collect();
        let [_, id, _] = parts[..] else { continue };
        if meta.last_modified.timestamp() < cutoff {
            block_on_cleanup(bucket.store.delete(&meta.location));
        } else {
            pinned.insert(format!("{GENERATIONS}/{id}"));
        }
    }
    Ok(pinned)
}
