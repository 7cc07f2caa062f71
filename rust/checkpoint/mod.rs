//! Checkpoint core: zstd Arrow IPC shards, manifest, atomic commit.
//! Pure Rust; the bindings module is its only door to Python.

pub mod background;
pub mod commit;
pub mod dirfd;
pub mod error;
pub mod fault;
pub mod manifest;
pub mod memory;
pub mod reader;
pub mod shards;
pub mod sizing;
pub mod snapshot;
pub mod writer;

pub use commit::Staging;
pub use error::{CheckpointError, Result};
pub use manifest::{FileEntry, Manifest};
pub use reader::{read_checkpoint, LoadedCheckpoint, ReadOptions};
pub use writer::{write_shards, write_shards_cancellable, Compression, WriteOptions, WrittenShard};

use std::path::Path;

use arrow_array::RecordBatch;
use arrow_schema::{ArrowError, SchemaRef};

/// What a caller needs to describe a save besides the data.
pub struct SaveRequest<'a> {
    pub kind: &'a str,
    pub options: WriteOptions,
}

/// Writes `input` as shards into `staging` and commits the result with its
/// manifest. The staging directory is removed if anything fails.
pub fn write_and_commit<I>(
    staging: Staging,
    schema: SchemaRef,
    input: I,
    request: &SaveRequest,
) -> Result<std::path::PathBuf>
where
    I: Iterator<Item = std::result::Result<RecordBatch, ArrowError>>,
{
    let shards = write_shards(staging.dir(), schema, input, &request.options)?;
    let manifest = manifest_for(request, &shards);
    staging.commit(manifest)
}

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
    }
}

/// True when `dir` holds a manifest written by this package.
pub fn is_accel_checkpoint(dir: &Path) -> bool {
    dir.join(manifest::MANIFEST_FILE).is_file()
}

#[cfg(test)]
mod tests;
