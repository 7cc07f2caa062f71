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
use tokio::io::AsyncWriteExt;
use tokio::runtime::Handle;

use super::location::Bucket;
use super::runtime;
use crate::checkpoint::error::{IoContext, Result};
use crate::checkpoint::memory;
use crate::checkpoint::writer::{ShardTarget, WrittenShard};

/// Bytes of one uploaded part (S3 wants at least 5 MiB but the last).
const PART_BYTES: usize = 16 << 20;
/// Parts of one shard in flight at once.
const PARTS_IN_FLIGHT: usize = 4;

pub struct BucketShards {
    bucket: Arc<Bucket>,
    /// `generations/<id>`: where this save's objects go.
    generation: String,
    /// Put before each shard's name: the write tasks of one Ray save upload
    /// into one generation, each under names of its own.
    name_prefix: String,
}

impl BucketShards {
    pub fn new(bucket: Arc<Bucket>, generation: &str) -> BucketShards {
        BucketShards {
            bucket,
            generation: generation.to_string(),
            name_prefix: String::new(),
        }
    }

    /// Shards named `{prefix}-part-NNNNN.arrow`.
    pub fn with_name_prefix(mut self, prefix: &str) -> BucketShards {
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

impl ShardTarget for BucketShards {
    type Out = ShardUpload;

    fn open(&self, index: usize) -> Result<(ShardUpload, String)> {
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
            handle: runtime::handle()?,
            shown: shown.clone(),
        };
        Ok((upload, shown))
    }

    fn progress(&self, _out: &mut ShardUpload, _name: &str, _from: u64) -> Result<()> {
        Ok(()) // parts go up as they fill; a full pipeline waits in `write`
    }

    fn close(&self, mut out: ShardUpload, name: &str) -> Result<()> {
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
pub struct ShardUpload {
    /// `None` once completed (or its completion failed, which aborts it).
    writer: Option<BufWriter>,
    handle: Handle,
    shown: String,
}

impl ShardUpload {
    fn complete(&mut self) -> io::Result<()> {
        let Some(mut writer) = self.writer.take() else {
            return Ok(());
        };
        // A failed completion aborts the multipart upload itself.
        self.handle.block_on(writer.shutdown())
    }
}

impl Write for ShardUpload {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let writer = self.writer.as_mut().ok_or_else(|| {
            io::Error::other(format!("{}: the upload is already complete", self.shown))
        })?;
        self.handle.block_on(writer.write_all(buf))?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(()) // parts are sent when full, the rest at completion
    }
}

impl Drop for ShardUpload {
    /// A shard not completed (the save failed) aborts its multipart upload.
    fn drop(&mut self) {
        if let Some(mut writer) = self.writer.take() {
            let _ = self.handle.block_on(writer.abort());
        }
    }
}

/// The key of `name` in `generation`.
pub fn object_key(bucket: &Bucket, generation: &str, name: &str) -> Key {
    bucket.key(&format!("{generation}/{name}"))
}
