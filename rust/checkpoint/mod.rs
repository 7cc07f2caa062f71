//! Checkpoint core: zstd Arrow IPC shards, manifest, atomic commit.
