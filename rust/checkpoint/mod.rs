//! Checkpoint core: zstd Arrow IPC shards, manifest, atomic commit.
//! Pure Rust; the bindings module is its only door to Python.
//!
//! * [`writer`] writes shards; [`commit`] stages and swaps them in as
//!   `latest/`; [`manifest`] says what a checkpoint holds;
//! * [`dirfd`] reads through one directory handle; [`reader`] loads and
//!   verifies; [`probe`] reads a shard's first headers only;
//! * [`background`] saves on a thread of its own, from a [`snapshot`],
//!   sized by [`sizing`]; [`memory`] says what the process may still use;
//! * [`shards`] is a Ray save written by several processes, [`pin`] the
//!   generation a lazy Ray load keeps;
//! * [`save`] is one save or load wherever the checkpoint lives: a
//!   directory, or a bucket ([`bucket`], `s3://`), where [`shard_files`]
//!   and `bucket::upload` are the writer's two targets;
//! * [`error`] is the one error type; [`fault`] the crash tests' faults.

pub mod background;
pub mod bucket;
pub mod commit;
pub mod dirfd;
pub mod error;
pub mod fault;
pub mod manifest;
pub mod memory;
pub mod pin;
pub mod probe;
pub mod reader;
pub mod save;
pub mod shard_files;
pub mod shards;
pub mod sizing;
pub mod snapshot;
pub mod writer;

pub use commit::Staging;
pub use error::{CheckpointError, Result};
pub use manifest::{FileEntry, Manifest};
pub use reader::{read_checkpoint, LoadedCheckpoint, ReadOptions};
pub use writer::{write_shards, write_shards_cancellable, Compression, WriteOptions, WrittenShard};

/// What a caller needs to describe a save besides the data.
pub struct SaveRequest<'a> {
    pub kind: &'a str,
    pub options: WriteOptions,
}

/// The manifest of a save of `shards`; [`Staging::commit`] adds the
/// small files.
pub fn manifest_for(request: &SaveRequest, shards: &[WrittenShard]) -> Manifest {
    let (codec, level) = match request.options.compression {
        Compression::None => ("none", None),
        Compression::Zstd(level) => ("zstd", Some(level)),
    };
    Manifest {
        format: manifest::FORMAT_NAME.into(),
        format_version: manifest::FORMAT_VERSION,
        codec: codec.into(),
        level,
        kind: request.kind.into(),
        num_rows: shards.iter().map(|s| s.rows).sum(),
        shards: shards
            .iter()
            .map(|s| FileEntry {
                file: s.file.clone(),
                bytes: s.bytes,
                xxh3_64: manifest::checksum_hex(s.xxh3),
                rows: Some(s.rows),
                raw_bytes: Some(s.raw_bytes),
            })
            .collect(),
        files: Vec::new(),
        created_by: format!("data-juicer-accel {}", env!("CARGO_PKG_VERSION")),
        generation: None,
    }
}

#[cfg(test)]
mod tests;
