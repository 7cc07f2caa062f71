//! The writer's target in a bucket: each shard streamed to one object under
//! its generation's prefix, in parts uploaded while the next chunks
//! compress. A shard smaller than a part is one PUT; a larger one a
//! multipart upload, aborted when the save fails, so that no part is left
//! pending on the server (a killed process leaves its parts to the bucket's
//! lifecycle rule for incomplete uploads).

use std::io::{self, Write};
use std::sync::Arc;

use object_store::buffered::BufWriter;
use object_store::path::Path as Key;
use std::sync::atomic::AtomicBool;
use tokio::io::AsyncWriteExt;

use super::location::Bucket;
use super::runtime;
use crate::checkpoint::error::{CheckpointError, IoContext, Result};
use crate::checkpoint::memory;
use crate::checkpoint::writer::{ShardTarget, WrittenShard};

/// Bytes of one uploaded part (S3 wants at least 5 MiB but the last).
const PART_BYTES: usize = 16 << 20;
/// Parts of one shard in flight at once.
const PARTS_IN_FLIGHT: usize = 4;

pub struct BucketShards<'c> {
    bucket: Arc<Bucket>,
    /// `generations/<id>`: where this save's objects go.
    generation: String,
    /// Raised by Ctrl-C: a request waiting on the server is given up.
    cancel: Option<&'c AtomicBool>,
    /// Put before each shard's name: the write tasks of one Ray save upload
    /// into one generation, each under names of its own.
    name_prefix: String,
}

impl<'c> BucketShards<'c> {
    pub fn new(bucket: Arc<Bucket>, generation: &str, cancel: Option<&'c AtomicBool>) -> Self {
        BucketShards {
            bucket,
            generation: generation.to_string(),
            cancel,
            name_prefix: String::new(),
        }
    }

    /// Shards named `{prefix}-part-NNNNN.arrow`.
    pub fn with_name_prefix(mut self, prefix: &str) -> Self {
        self.name_prefix = format!("{prefix}-");
        self
    }

    fn name(&self, index: usize) -> String {
        format!("{}{}", self.name_prefix, shard_name(index))
    }
}

/// The name a shard keeps: the layout in a bucket need not be the one
/// `datasets.load_from_disk` reads, so nothing is renamed.
pub fn shard_name(index: usize) -> String {
    format!("part-{index:05}.arrow")
}

impl<'c> ShardTarget for BucketShards<'c> {
    type Out = ShardUpload<'c>;

    fn open(&self, index: usize) -> Result<(ShardUpload<'c>, String)> {
        memory::ensure_room(
            (PART_BYTES * (PARTS_IN_FLIGHT + 1)) as u64,
            "the upload buffers of a shard",
        )?;
        let key = self
            .bucket
            .key(&format!("{}/{}", self.generation, self.name(index)));
        let shown = self.bucket.shown(&key).display().to_string();
        let writer = BufWriter::with_capacity(self.bucket.store.clone(), key.clone(), PART_BYTES)
            .with_max_concurrency(PARTS_IN_FLIGHT);
        let upload = ShardUpload {
            writer: Some(writer),
            cancel: self.cancel,
            shown: shown.clone(),
        };
        Ok((upload, shown))
    }

    fn progress(&self, _out: &mut ShardUpload<'c>, _name: &str, _from: u64) -> Result<()> {
        Ok(()) // parts go up as they fill; a full pipeline waits in `write`
    }

    fn close(&self, mut out: ShardUpload<'c>, name: &str) -> Result<()> {
        out.complete().at(name)
    }

    fn finish(&self, shards: Vec<WrittenShard>) -> Result<Vec<WrittenShard>> {
        Ok(shards
            .into_iter()
            .enumerate()
            .map(|(index, mut shard)| {
                shard.file = self.name(index);
                shard
            })
            .collect())
    }
}

/// One shard's upload, written to from the writer thread.
pub struct ShardUpload<'c> {
    /// `None` once completed (or its completion failed, which aborts it).
    writer: Option<BufWriter>,
    cancel: Option<&'c AtomicBool>,
    shown: String,
}

impl ShardUpload<'_> {
    fn complete(&mut self) -> io::Result<()> {
        let Some(mut writer) = self.writer.take() else {
            return Ok(());
        };
        // A failed completion aborts the multipart upload itself.
        let completed = runtime::block_on_cancellable(writer.shutdown(), self.cancel);
        match completed {
            Ok(result) => result,
            Err(e) => {
                // Given up (Ctrl-C) before the upload completed: abort it.
                runtime::block_on_cleanup(writer.abort());
                Err(given_up(&self.shown, e))
            }
        }
    }
}

/// A request given up as an `io::Error`; not `Interrupted`, which
/// `write_all` would retry.
fn given_up(shown: &str, error: CheckpointError) -> io::Error {
    io::Error::other(format!("{shown}: {error}"))
}

impl Write for ShardUpload<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let writer = self.writer.as_mut().ok_or_else(|| {
            io::Error::other(format!("{}: the upload is already complete", self.shown))
        })?;
        runtime::block_on_cancellable(writer.write_all(buf), self.cancel)
            .map_err(|e| given_up(&self.shown, e))??;
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(()) // parts are sent when full, the rest at completion
    }
}

impl Drop for ShardUpload<'_> {
    /// A shard not completed (the save failed) aborts its multipart upload.
    fn drop(&mut self) {
        if let Some(mut writer) = self.writer.take() {
            runtime::block_on_cleanup(writer.abort());
        }
    }
}

/// The key of `name` in `generation`.
pub fn object_key(bucket: &Bucket, generation: &str, name: &str) -> Key {
    bucket.key(&format!("{generation}/{name}"))
}
