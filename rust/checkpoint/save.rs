//! One save and one load, wherever the checkpoint lives: in a directory
//! (a staging directory swapped in, [`super::commit`]) or in a bucket (a
//! generation published as a new version, [`super::bucket::publish`]).
//! Callers (the Python manager's writer, background saves) see one API.

use std::path::Path;
use std::sync::atomic::AtomicBool;

use arrow_array::RecordBatch;
use arrow_schema::{ArrowError, SchemaRef};

use super::bucket::{load, BucketStaging, Location};
use super::error::Result;
use super::manifest::Manifest;
use super::reader::{self, LoadedCheckpoint, ReadOptions};
use super::writer::{write_shards_to, WriteOptions, WrittenShard};
use super::{write_shards_cancellable, Staging};

/// A save being written; dropped without [`PendingSave::commit`], it
/// removes what it wrote and the previous checkpoint stays.
pub enum PendingSave {
    Dir(Staging),
    Bucket(BucketStaging),
}

impl PendingSave {
    /// A directory's lock is taken here (`holder` names the saver to
    /// another saver of this process); a bucket notes its newest version.
    pub fn create(location: &Location, holder: Option<&str>) -> Result<PendingSave> {
        Ok(match location {
            Location::Dir(dir) => PendingSave::Dir(Staging::create_for(dir, holder)?),
            Location::Bucket(bucket) => PendingSave::Bucket(BucketStaging::create(bucket.clone())?),
        })
    }

    /// The staging directory of a directory save.
    pub fn staging_dir(&self) -> Option<&Path> {
        match self {
            PendingSave::Dir(staging) => Some(staging.dir()),
            PendingSave::Bucket(_) => None,
        }
    }

    /// Streams `input` into shards (see [`write_shards_cancellable`]).
    pub fn write_shards<I>(
        &mut self,
        schema: SchemaRef,
        input: I,
        opts: &WriteOptions,
        cancel: &AtomicBool,
    ) -> Result<Vec<WrittenShard>>
    where
        I: Iterator<Item = std::result::Result<RecordBatch, ArrowError>>,
    {
        match self {
            PendingSave::Dir(staging) => {
                write_shards_cancellable(staging.dir(), schema, input, opts, cancel)
            }
            PendingSave::Bucket(staging) => {
                write_shards_to(&staging.target(Some(cancel)), schema, input, opts, cancel)
            }
        }
    }

    pub fn add_file(&mut self, name: &str, bytes: &[u8]) -> Result<()> {
        match self {
            PendingSave::Dir(staging) => staging.add_file(name, bytes),
            PendingSave::Bucket(staging) => staging.add_file(name, bytes),
        }
    }

    /// Commits; returns where the checkpoint now is (`latest/`, or the URI).
    pub fn commit(self, manifest: Manifest) -> Result<String> {
        match self {
            PendingSave::Dir(staging) => {
                Ok(staging.commit(manifest)?.to_string_lossy().into_owned())
            }
            PendingSave::Bucket(staging) => staging.commit(manifest),
        }
    }
}

/// Loads the committed checkpoint: `latest/` of a directory, or the newest
/// version in a bucket. `Ok(None)` when there is none.
pub fn read_location(location: &Location, opts: &ReadOptions) -> Result<Option<LoadedCheckpoint>> {
    match location {
        Location::Dir(dir) => reader::read_checkpoint(&dir.join(super::commit::LATEST), opts),
        Location::Bucket(bucket) => load::read_bucket_checkpoint(bucket, opts),
    }
}

/// The small file `name` (e.g. `ckpt_op.json`) of the committed checkpoint,
/// verified against its manifest; `Ok(None)` when there is no checkpoint
/// or it has no such file.
pub fn read_committed_file(location: &Location, name: &str) -> Result<Option<Vec<u8>>> {
    let opts = ReadOptions::default();
    match location {
        Location::Dir(dir) => {
            let latest = dir.join(super::commit::LATEST);
            let Some(handle) = super::dirfd::CheckpointDir::open(&latest)? else {
                return Ok(None);
            };
            let Some(manifest) = Manifest::read_in(&handle)? else {
                return Ok(None);
            };
            reader::read_listed_file(&handle, &manifest, name, &opts)
        }
        Location::Bucket(bucket) => load::read_newest_file(bucket, name, &opts),
    }
}

/// The manifest of the committed checkpoint (a directory's `latest/`, or
/// the newest version in a bucket), without reading what it lists.
pub fn read_committed_manifest(location: &Location) -> Result<Option<Manifest>> {
    match location {
        Location::Dir(dir) => Manifest::read(&dir.join(super::commit::LATEST)),
        Location::Bucket(bucket) => Ok(load::newest_manifest(bucket)?.map(|(_, m)| m)),
    }
}
