//! Publishing a save in a bucket, where nothing can be renamed.
//!
//! Under the checkpoint's prefix:
//!
//! ```text
//! versions/<20 digits>.json   one manifest per published version; the digits
//!                             are u64::MAX - version, so the newest lists first
//! generations/<id>/...        the shards and small files of one save
//! ```
//!
//! A save uploads its objects under a generation of its own, then publishes
//! version n + 1 (n: the newest when the save began) with a create-only PUT
//! (`If-None-Match: *`), the model of Lance and Delta: each version is an
//! immutable object, never a pointer moved in place. The manifest names its
//! generation and carries the checksums of every object, so a version is
//! whole from the moment it exists. Of two saves that began from the same
//! version exactly one creates the next; the other gets
//! [`CheckpointError::Raced`] and deletes its own objects.
//!
//! Old versions go only after a new one is published: the newest two stay
//! (a load that read the previous manifest a moment ago still finds its
//! objects), older ones are deleted manifest first, then their generation,
//! unless a lazy load pinned it (see [`super::readers`]).
//! Objects of a save that died before publishing belong to no version;
//! they are deleted once a day old, as a save still running may own them.

use std::io;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use futures_util::TryStreamExt;
use object_store::path::Path as Key;
use object_store::{ObjectStoreExt, PutMode, PutOptions, PutPayload};

use super::location::Bucket;
use super::readers::pinned_generations;
use super::runtime::{block_on, block_on_cleanup, store_error};
use super::upload::{object_key, BucketShards};
use crate::checkpoint::error::{CheckpointError, Result};
use crate::checkpoint::manifest::{checksum_hex, is_safe_file_name, FileEntry, Manifest};

pub const VERSIONS: &str = "versions";
pub const GENERATIONS: &str = "generations";
/// Objects of an unpublished generation are left alone this long.
const ORPHAN_AGE: Duration = Duration::from_secs(24 * 3600);
/// A manifest is a few KB per thousand shards; anything bigger is not ours.
pub const MAX_MANIFEST_BYTES: u64 = 64 << 20;

/// The key of version `version`'s manifest.
pub fn version_key(bucket: &Bucket, version: u64) -> Key {
    bucket.key(&format!("{VERSIONS}/{:020}.json", u64::MAX - version))
}

/// The version a manifest key names, `None` for any other key.
fn version_of(key: &Key) -> Option<u64> {
    let digits = key.filename()?.strip_suffix(".json")?;
    if digits.len() != 20 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits
        .parse::<u64>()
        .ok()
        .map(|inverted| u64::MAX - inverted)
}

/// Every published version, newest first.
pub fn versions(bucket: &Bucket) -> Result<Vec<u64>> {
    let prefix = bucket.key(VERSIONS);
    let listed: Vec<_> = block_on(bucket.store.list(Some(&prefix)).try_collect())?
        .map_err(|e| store_error(bucket.shown(&prefix), e))?;
    let mut versions: Vec<u64> = listed
        .iter()
        .filter_map(|m| version_of(&m.location))
        .collect();
    versions.sort_unstable_by(|a, b| b.cmp(a));
    Ok(versions)
}

/// A save being uploaded. Dropped without [`BucketStaging::commit`], it
/// deletes what it uploaded.
pub struct BucketStaging {
    bucket: Arc<Bucket>,
    /// `generations/<id>`, relative to the checkpoint's prefix.
    generation: String,
    /// The newest version when the save began.
    base: Option<u64>,
    files: Vec<FileEntry>,
    /// Set once the objects must stay: published, or perhaps published.
    keep: bool,
    /// A child forked during the save must not delete the parent's objects.
    owner_pid: u32,
}

impl BucketStaging {
    pub fn create(bucket: Arc<Bucket>) -> Result<BucketStaging> {
        let base = versions(&bucket)?.first().copied();
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        // The counter tells apart two saves of this process in one nanosecond.
        static SAVES: AtomicU64 = AtomicU64::new(0);
        let count = SAVES.fetch_add(1, Ordering::Relaxed);
        let generation = format!("{GENERATIONS}/{nanos:x}-{}-{count}", std::process::id());
        Ok(BucketStaging {
            bucket,
            generation,
            base,
            files: Vec::new(),
            keep: false,
            owner_pid: std::process::id(),
        })
    }

    /// Where the writer puts this save's shards; `cancel` gives up a
    /// request waiting on the server.
    pub fn target<'c>(&self, cancel: Option<&'c AtomicBool>) -> BucketShards<'c> {
        BucketShards::new(self.bucket.clone(), &self.generation, cancel)
    }

    /// `s3://bucket/prefix`.
    pub fn shown(&self) -> String {
        self.bucket.uri.shown()
    }

    /// Uploads a small file (state.json, ckpt_op.json, ...) of the save.
    pub fn add_file(&mut self, name: &str, bytes: &[u8]) -> Result<()> {
        let key = object_key(&self.bucket, &self.generation, name);
        put_small(&self.bucket, name, &key, bytes)?;
        self.files.push(FileEntry {
            file: name.to_string(),
            bytes: bytes.len() as u64,
            xxh3_64: checksum_hex(xxhash_rust::xxh3::xxh3_64(bytes)),
            rows: None,
            raw_bytes: None,
        });
        Ok(())
    }

    /// Publishes the next version; returns `s3://bucket/prefix`.
    pub fn commit(mut self, mut manifest: Manifest) -> Result<String> {
        manifest.files = std::mem::take(&mut self.files);
        manifest.generation = Some(self.generation.clone());
        let version = self.base.map_or(0, |v| v + 1);
        let key = version_key(&self.bucket, version);
        let text = Bytes::from(manifest.to_json().into_bytes());
        let create = PutOptions {
            mode: PutMode::Create,
            ..Default::default()
        };
        let put = block_on(
            self.bucket
                .store
                .put_opts(&key, text.clone().into(), create),
        );
        // Given up (Ctrl-C) while the server may have done it: keep the objects.
        let put = put.inspect_err(|_| self.keep = true)?;
        if let Err(e) = put {
            // Even "already exists" may be this PUT's own doing: the client
            // retries a PUT the server did before failing (a 500, a closed
            // connection), and the retry finds the key taken.
            self.settle_ambiguous_put(&key, &text, e)?;
        }
        self.keep = true;
        self.check_still_newest(version, &key)?;
        remove_old_versions(&self.bucket, version);
        Ok(self.shown())
    }

    /// A failed PUT may have been done by the server (a retry after a lost
    /// answer then finds the key taken): read the key back, and it is ours
    /// (the manifest names this save's generation) or not. If even that
    /// fails the objects stay, as they may be published.
    fn settle_ambiguous_put(
        &mut self,
        key: &Key,
        ours: &Bytes,
        error: object_store::Error,
    ) -> Result<()> {
        let shown = self.bucket.shown(key);
        let read_back = block_on(async { self.bucket.store.get(key).await?.bytes().await });
        // Given up (Ctrl-C) before the answer: the save may be published.
        let read_back = read_back.inspect_err(|_| self.keep = true)?;
        match read_back {
            Ok(found) if found == *ours => Ok(()),
            Ok(_) => Err(CheckpointError::Raced {
                location: self.shown(),
                detail: format!("{} was published by another writer", shown.display()),
            }),
            // Not done (or taken and since removed, as a newer version won).
            Err(object_store::Error::NotFound { .. }) => Err(store_error(shown, error)),
            Err(unreadable) => {
                self.keep = true;
                Err(CheckpointError::io(
                    shown,
                    io::Error::other(format!(
                        "{error}; reading it back failed too ({unreadable}), so this save may \
                         be published: its objects are kept"
                    )),
                ))
            }
        }
    }

    /// Versions deleted while this save ran may have let it create a version
    /// older than the newest: then another writer won after all.
    fn check_still_newest(&mut self, version: u64, key: &Key) -> Result<()> {
        let newest = versions(&self.bucket)?.first().copied();
        if newest.is_some_and(|n| n > version) {
            self.keep = false;
            block_on_cleanup(self.bucket.store.delete(key));
            return Err(CheckpointError::Raced {
                location: self.shown(),
                detail: format!(
                    "version {} is newer than this save's {version}",
                    newest.unwrap_or(0)
                ),
            });
        }
        Ok(())
    }
}

impl Drop for BucketStaging {
    fn drop(&mut self) {
        if !self.keep && self.owner_pid == std::process::id() {
            block_on_cleanup(delete_prefix_async(&self.bucket, &self.generation));
        }
    }
}

/// Deletes every object under `relative` (a generation).
fn delete_prefix(bucket: &Bucket, relative: &str) -> Result<()> {
    let prefix = bucket.key(relative);
    block_on(delete_prefix_async(bucket, relative))?
        .map_err(|e| store_error(bucket.shown(&prefix), e))
}

async fn delete_prefix_async(bucket: &Bucket, relative: &str) -> object_store::Result<()> {
    let prefix = bucket.key(relative);
    let listed: Vec<_> = bucket.store.list(Some(&prefix)).try_collect().await?;
    for meta in listed {
        bucket.store.delete(&meta.location).await?;
    }
    Ok(())
}

/// Reads version `version`'s manifest; `Ok(None)` when it is gone.
pub fn read_manifest(bucket: &Bucket, version: u64) -> Result<Option<Manifest>> {
    let key = version_key(bucket, version);
    let Some(text) = get_small(bucket, &key)? else {
        return Ok(None);
    };
    let shown = bucket.shown(&key);
    let manifest =
        Manifest::parse(&text).map_err(|detail| CheckpointError::corrupt(&shown, detail))?;
    check_generation(&manifest).map_err(|detail| CheckpointError::corrupt(&shown, detail))?;
    Ok(Some(manifest))
}

/// The object `key`, at most 64 MiB (a manifest, a small file); `Ok(None)`
/// when there is none.
fn get_small(bucket: &Bucket, key: &Key) -> Result<Option<Bytes>> {
    let got = block_on(async {
        let result = bucket.store.get(key).await?;
        if result.meta.size > MAX_MANIFEST_BYTES {
            return Ok(None);
        }
        result.bytes().await.map(Some)
    })?;
    match got {
        Ok(Some(bytes)) => Ok(Some(bytes)),
        Ok(None) => Err(CheckpointError::corrupt(
            bucket.shown(key),
            "larger than 64 MiB",
        )),
        Err(object_store::Error::NotFound { .. }) => Ok(None),
        Err(e) => Err(store_error(bucket.shown(key), e)),
    }
}

/// Puts the small object `key` in one PUT, its name checked first.
fn put_small(bucket: &Bucket, name: &str, key: &Key, bytes: &[u8]) -> Result<()> {
    if !is_safe_file_name(name) {
        return Err(CheckpointError::Input(format!(
            "{name:?} is not a plain file name"
        )));
    }
    let payload = PutPayload::from(Bytes::copy_from_slice(bytes));
    block_on(bucket.store.put(key, payload))?.map_err(|e| store_error(bucket.shown(key), e))?;
    Ok(())
}

/// A bucket manifest names a generation of this checkpoint, and nothing else.
fn check_generation(manifest: &Manifest) -> std::result::Result<(), String> {
    let name = manifest
        .generation
        .as_deref()
        .and_then(|g| g.strip_prefix(&format!("{GENERATIONS}/")));
    match name {
        Some(id) if is_safe_file_name(id) => Ok(()),
        _ => Err(format!(
            "names no generation of this checkpoint ({:?})",
            manifest.generation
        )),
    }
}

/// Keeps `newest` and the version before it; deletes older versions, then
/// their generations, then generations of dead saves. Best effort: what a
/// failure leaves is removed by a later save.
fn remove_old_versions(bucket: &Bucket, newest: u64) {
    let (Ok(all), Ok(pinned)) = (versions(bucket), pinned_generations(bucket)) else {
        return;
    };
    let mut kept = Vec::new();
    let mut unlisted = Vec::new();
    let mut all_kept_known = true;
    for version in all {
        let manifest = read_manifest(bucket, version);
        all_kept_known &= manifest.is_ok();
        let generation = manifest.ok().flatten().and_then(|m| m.generation);
        let is_pinned = generation.as_ref().is_some_and(|g| pinned.contains(g));
        if version + 1 >= newest || is_pinned {
            kept.extend(generation); // a pinned version stays whole until unpinned
        } else if block_on(bucket.store.delete(&version_key(bucket, version))).is_ok() {
            unlisted.extend(generation);
        }
    }
    // Listed again after the manifests went (see `readers`): a load that
    // pinned one of them meanwhile keeps its objects; one pinning later
    // finds its manifest gone and pins the newest instead.
    let Ok(pinned) = pinned_generations(bucket) else {
        return;
    };
    for generation in unlisted.iter().filter(|g| !pinned.contains(*g)) {
        let _ = delete_prefix(bucket, generation);
    }
    // A kept version whose manifest could not be read names a generation
    // that must not be taken for a dead save's.
    if all_kept_known {
        kept.extend(pinned);
        remove_dead_generations(bucket, &kept);
    }
}

/// Generations no kept version names and nobody wrote to for a day.
fn remove_dead_generations(bucket: &Bucket, kept: &[String]) {
    let prefix = bucket.key(GENERATIONS);
    let Ok(Ok(listed)) = block_on(bucket.store.list_with_delimiter(Some(&prefix))) else {
        return;
    };
    for dir in listed.common_prefixes {
        let Some(id) = dir.filename() else { continue };
        let generation = format!("{GENERATIONS}/{id}");
        if kept.contains(&generation) || !idle_for(bucket, &dir, ORPHAN_AGE) {
            continue;
        }
        let _ = delete_prefix(bucket, &generation);
    }
}

/// No object under `prefix` was written in the last `age`.
fn idle_for(bucket: &Bucket, prefix: &Key, age: Duration) -> bool {
    let Ok(Ok(listed)) = block_on(bucket.store.list(Some(prefix)).try_collect::<Vec<_>>()) else {
        return false;
    };
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let cutoff = now.saturating_sub(age.as_secs()) as i64;
    listed
        .iter()
        .all(|meta| meta.last_modified.timestamp() < cutoff)
}

impl BucketStaging {
    /// `generations/<id>`: where this save's objects go, the objects that
    /// other processes (Ray write tasks) upload for it included.
    pub fn generation(&self) -> &str {
        &self.generation
    }

    pub fn bucket(&self) -> &Arc<Bucket> {
        &self.bucket
    }
}

/// `generations/<id>`, and nothing else: what a write task is told to
/// upload into must stay under the checkpoint's generations.
pub fn is_generation_name(generation: &str) -> bool {
    generation
        .strip_prefix(&format!("{GENERATIONS}/"))
        .is_some_and(is_safe_file_name)
}

/// The objects under `generation`: each name relative to it, and its size.
pub fn generation_listing(bucket: &Bucket, generation: &str) -> Result<Vec<(String, u64)>> {
    let prefix = bucket.key(generation);
    let listed: Vec<_> = block_on(bucket.store.list(Some(&prefix)).try_collect())?
        .map_err(|e| store_error(bucket.shown(&prefix), e))?;
    Ok(listed
        .into_iter()
        .filter_map(|meta| {
            let name = meta.location.prefix_match(&prefix)?;
            let parts: Vec<_> = name.map(|p| p.as_ref().to_string()).collect();
            (parts.len() == 1).then(|| (parts[0].clone(), meta.size))
        })
        .collect())
}

/// Deletes the object `name` of `generation` (absent is fine).
pub fn delete_generation_object(bucket: &Bucket, generation: &str, name: &str) -> Result<()> {
    let key = object_key(bucket, generation, name);
    match block_on(bucket.store.delete(&key))? {
        Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
        Err(e) => Err(store_error(bucket.shown(&key), e)),
    }
}

/// Puts the small file `name` directly under the checkpoint's prefix, in one
/// PUT (atomic: a reader sees the old object or the new one). For what a
/// caller keeps beside the versions (the partitioned executor's
/// `partitioning_info.json`), not part of any checkpoint.
pub fn put_side_file(bucket: &Bucket, name: &str, bytes: &[u8]) -> Result<()> {
    put_small(bucket, name, &bucket.key(name), bytes)
}

/// Reads a file of [`put_side_file`]; `Ok(None)` when there is none. At
/// most 64 MiB: it is a small file.
pub fn get_side_file(bucket: &Bucket, name: &str) -> Result<Option<Vec<u8>>> {
    if !is_safe_file_name(name) {
        return Err(CheckpointError::Input(format!(
            "{name:?} is not a plain file name"
        )));
    }
    Ok(get_small(bucket, &bucket.key(name))?.map(|bytes| bytes.to_vec()))
}
