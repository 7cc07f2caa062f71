//! Loading the newest version of a checkpoint in a bucket, with every check
//! of a directory load: each object's size before it is downloaded, its
//! xxh3 and its rows. A missing or damaged object is named in
//! [`CheckpointError::Corrupt`]; wrong rows are never returned.
//!
//! Should saves publish two newer versions and delete the one being read
//! meanwhile, the load starts over on the newest.

use std::path::PathBuf;
use std::sync::atomic::AtomicBool;

use object_store::ObjectStoreExt;

use super::location::Bucket;
use super::publish::{read_manifest, versions};
use super::runtime::{block_on, block_on_cancellable, store_error};
use super::upload::object_key;
use crate::checkpoint::error::{CheckpointError, Result};
use crate::checkpoint::manifest::{FileEntry, Manifest};
use crate::checkpoint::reader::{
    read_listed_file, read_manifested, FileSource, LoadedCheckpoint, ReadOptions,
};

/// How often a load starts over because saves removed what it was reading.
const VERSION_RETRIES: usize = 20;

/// The objects of one version.
pub struct GenerationObjects<'b> {
    bucket: &'b Bucket,
    generation: String,
}

impl<'b> GenerationObjects<'b> {
    pub fn of(bucket: &'b Bucket, manifest: &Manifest) -> Self {
        GenerationObjects {
            bucket,
            generation: manifest.generation.clone().unwrap_or_default(),
        }
    }
}

impl FileSource for GenerationObjects<'_> {
    fn locate(&self, file: &str) -> PathBuf {
        self.bucket
            .shown(&object_key(self.bucket, &self.generation, file))
    }

    fn read_sized(&self, entry: &FileEntry, cancel: Option<&AtomicBool>) -> Result<Vec<u8>> {
        let key = object_key(self.bucket, &self.generation, &entry.file);
        let shown = self.bucket.shown(&key);
        let got = block_on_cancellable(
            async {
                let result = self.bucket.store.get(&key).await?;
                if result.meta.size != entry.bytes {
                    return Ok(Err(result.meta.size));
                }
                result.bytes().await.map(Ok)
            },
            cancel,
        )?;
        match got {
            Ok(Ok(bytes)) if bytes.len() as u64 == entry.bytes => Ok(bytes.to_vec()),
            Ok(Ok(bytes)) => Err(size_mismatch(shown, bytes.len() as u64, entry.bytes)),
            Ok(Err(size)) => Err(size_mismatch(shown, size, entry.bytes)),
            Err(object_store::Error::NotFound { .. }) => Err(CheckpointError::corrupt(
                shown,
                "listed in the manifest, but the object is missing",
            )),
            Err(e) => Err(store_error(shown, e)),
        }
    }
}

fn size_mismatch(shown: PathBuf, size: u64, expected: u64) -> CheckpointError {
    CheckpointError::corrupt(
        shown,
        format!("object is {size} bytes, the manifest says {expected} (truncated or replaced)"),
    )
}

/// The newest version and its manifest; `None` when nothing was published.
pub fn newest_manifest(bucket: &Bucket) -> Result<Option<(u64, Manifest)>> {
    for version in versions(bucket)? {
        // Gone between the listing and the read: a save removed it; the
        // listing holds newer ones.
        if let Some(manifest) = read_manifest(bucket, version)? {
            return Ok(Some((version, manifest)));
        }
    }
    Ok(None)
}

/// The small file `name` of the newest version, verified; `Ok(None)` when
/// nothing was published or the version has no such file. Like a load, it
/// starts over when saves removed the version while it was read.
pub fn read_newest_file(
    bucket: &Bucket,
    name: &str,
    opts: &ReadOptions,
) -> Result<Option<Vec<u8>>> {
    let mut attempt = 0;
    loop {
        let Some((version, manifest)) = newest_manifest(bucket)? else {
            return Ok(None);
        };
        let source = GenerationObjects::of(bucket, &manifest);
        let result = read_listed_file(&source, &manifest, name, opts);
        if !superseded(bucket, version, &result, attempt)? {
            return result;
        }
        attempt += 1;
    }
}

/// A read of `version` failed because saves removed it meanwhile.
fn superseded<T>(
    bucket: &Bucket,
    version: u64,
    result: &Result<T>,
    attempt: usize,
) -> Result<bool> {
    Ok(matches!(result, Err(CheckpointError::Corrupt { .. }))
        && attempt < VERSION_RETRIES
        && read_manifest(bucket, version)?.is_none())
}

/// Reads the newest version; `Ok(None)` when nothing was published.
pub fn read_bucket_checkpoint(
    bucket: &Bucket,
    opts: &ReadOptions,
) -> Result<Option<LoadedCheckpoint>> {
    let mut attempt = 0;
    loop {
        let Some((version, manifest)) = newest_manifest(bucket)? else {
            return Ok(None);
        };
        let source = GenerationObjects::of(bucket, &manifest);
        let result = read_manifested(&source, manifest, opts);
        if !superseded(bucket, version, &result, attempt)? {
            return result.map(Some);
        }
        attempt += 1;
    }
}

impl<'b> GenerationObjects<'b> {
    /// The objects of `generation` (`generations/<id>`), as a Ray read task
    /// is told it by the driver that read the manifest.
    pub fn new(bucket: &'b Bucket, generation: &str) -> Self {
        GenerationObjects {
            bucket,
            generation: generation.to_string(),
        }
    }
}

/// The names of the prefixes directly under the bucket's prefix (the
/// checkpoints a Ray manager keeps side by side there).
pub fn child_prefixes(bucket: &Bucket) -> Result<Vec<String>> {
    let prefix = &bucket.uri.prefix;
    let prefix = (!prefix.as_ref().is_empty()).then_some(prefix);
    let listed = block_on(bucket.store.list_with_delimiter(prefix))?
        .map_err(|e| store_error(PathBuf::from(bucket.uri.shown()), e))?;
    Ok(listed
        .common_prefixes
        .iter()
        .filter_map(|p| p.filename().map(str::to_string))
        .collect())
}
