//! Round trips through writer, commit and reader, and what they refuse.

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow_array::types::Int32Type;
use arrow_array::{ArrayRef, DictionaryArray, Int64Array, RecordBatch, StringArray};
use arrow_schema::{ArrowError, DataType, Field, Schema, SchemaRef};

use super::*;

pub(super) fn schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("text", DataType::Utf8, true),
        Field::new("n", DataType::Int64, false),
    ]))
}

pub(super) fn batch(start: i64, rows: i64) -> RecordBatch {
    let text: StringArray = (start..start + rows)
        .map(|i| Some(format!("document {i} ").repeat(8)))
        .collect();
    let n = Int64Array::from_iter_values(start..start + rows);
    RecordBatch::try_new(schema(), vec![Arc::new(text) as ArrayRef, Arc::new(n)]).unwrap()
}

fn batches(total: i64, per_batch: i64) -> Vec<RecordBatch> {
    (0..total)
        .step_by(per_batch as usize)
        .map(|s| batch(s, per_batch.min(total - s)))
        .collect()
}

/// Writes `input` as shards into `staging` and commits the result with its
/// manifest. The staging directory is removed if anything fails.
fn write_and_commit<I>(
    staging: Staging,
    schema: SchemaRef,
    input: I,
    request: &SaveRequest,
) -> Result<PathBuf>
where
    I: Iterator<Item = std::result::Result<RecordBatch, ArrowError>>,
{
    let shards = write_shards(staging.dir(), schema, input, &request.options)?;
    let manifest = manifest_for(request, &shards);
    staging.commit(manifest)
}

fn save(
    ckpt_dir: &Path,
    input: Vec<RecordBatch>,
    options: WriteOptions,
) -> Result<std::path::PathBuf> {
    let staging = Staging::create(ckpt_dir)?;
    let request = SaveRequest {
        kind: "arrow",
        options,
    };
    write_and_commit(staging, schema(), input.into_iter().map(Ok), &request)
}

fn load(latest: &Path) -> LoadedCheckpoint {
    read_checkpoint(latest, &ReadOptions::default())
        .unwrap()
        .expect("a manifest")
}

fn column_n(loaded: &LoadedCheckpoint) -> Vec<i64> {
    loaded
        .batches
        .iter()
        .flat_map(|b| {
            b.column(1)
                .as_any()
                .downcast_ref::<Int64Array>()
                .unwrap()
                .values()
                .to_vec()
        })
        .collect()
}

fn small_chunks(threads: usize) -> WriteOptions {
    WriteOptions {
        threads,
        chunk_bytes: 4096,
        ..Default::default()
    }
}

#[test]
fn round_trip_keeps_every_row_in_order_across_threads() {
    for threads in [1, 2, 5] {
        let dir = tempfile::tempdir().unwrap();
        let latest = save(dir.path(), batches(10_000, 777), small_chunks(threads)).unwrap();
        let loaded = load(&latest);
        assert_eq!(
            column_n(&loaded),
            (0..10_000).collect::<Vec<_>>(),
            "threads={threads}"
        );
        assert_eq!(loaded.manifest.num_rows, 10_000);
        assert!(loaded.batches.len() > 10, "chunks give parallel work units");
    }
}

#[test]
fn rows_per_shard_gives_contiguous_shards_named_like_datasets() {
    let dir = tempfile::tempdir().unwrap();
    let options = WriteOptions {
        rows_per_shard: Some(2500),
        ..small_chunks(2)
    };
    let latest = save(dir.path(), batches(10_000, 3000), options).unwrap();
    let loaded = load(&latest);
    let names: Vec<_> = loaded
        .manifest
        .shards
        .iter()
        .map(|s| s.file.as_str())
        .collect();
    assert_eq!(
        names,
        (0..4)
            .map(|i| format!("data-{i:05}-of-00004.arrow"))
            .collect::<Vec<_>>()
    );
    assert!(loaded.manifest.shards.iter().all(|s| s.rows == Some(2500)));
    // Each shard alone is a valid stream holding its own run of rows.
    let first = arrow_ipc::reader::StreamReader::try_new(
        fs::File::open(latest.join(names[1])).unwrap(),
        None,
    )
    .unwrap();
    let first_n: Vec<i64> = first
        .flat_map(|b| {
            b.unwrap()
                .column(1)
                .as_any()
                .downcast_ref::<Int64Array>()
                .unwrap()
                .values()
                .to_vec()
        })
        .collect();
    assert_eq!(first_n, (2500..5000).collect::<Vec<_>>());
}

#[test]
fn shards_close_by_size_when_rows_are_unknown() {
    let dir = tempfile::tempdir().unwrap();
    let options = WriteOptions {
        max_shard_bytes: 64 << 10,
        ..small_chunks(2)
    };
    let latest = save(dir.path(), batches(5_000, 500), options).unwrap();
    let loaded = load(&latest);
    assert!(loaded.manifest.shards.len() > 3);
    assert_eq!(column_n(&loaded), (0..5_000).collect::<Vec<_>>());
}

#[test]
fn empty_input_gives_one_schema_only_shard() {
    let dir = tempfile::tempdir().unwrap();
    let latest = save(dir.path(), vec![], WriteOptions::default()).unwrap();
    let loaded = load(&latest);
    assert_eq!(loaded.manifest.shards.len(), 1);
    assert_eq!(loaded.manifest.num_rows, 0);
    assert_eq!(loaded.schema, schema());
}

#[test]
fn uncompressed_and_levels_round_trip() {
    for compression in [
        Compression::None,
        Compression::Zstd(-1),
        Compression::Zstd(9),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let options = WriteOptions {
            compression,
            ..small_chunks(2)
        };
        let latest = save(dir.path(), batches(1_000, 100), options).unwrap();
        assert_eq!(column_n(&load(&latest)).len(), 1_000);
    }
}

#[test]
fn dictionary_columns_round_trip() {
    let dict_schema: SchemaRef = Arc::new(Schema::new(vec![Field::new(
        "lang",
        DataType::Dictionary(Box::new(DataType::Int32), Box::new(DataType::Utf8)),
        false,
    )]));
    let make = |values: Vec<&str>| {
        let array: DictionaryArray<Int32Type> = values.into_iter().collect();
        RecordBatch::try_new(dict_schema.clone(), vec![Arc::new(array) as ArrayRef]).unwrap()
    };
    let input = vec![
        make(vec!["en", "zh", "en"]),
        make(vec!["fr", "fr"]),
        make(vec!["en"]),
    ];
    let dir = tempfile::tempdir().unwrap();
    let staging = Staging::create(dir.path()).unwrap();
    let request = SaveRequest {
        kind: "arrow",
        options: small_chunks(4),
    };
    let latest = write_and_commit(
        staging,
        dict_schema.clone(),
        input.clone().into_iter().map(Ok),
        &request,
    )
    .unwrap();
    let loaded = load(&latest);
    assert_eq!(loaded.batches, input);
}

#[test]
fn input_error_is_reported_and_nothing_is_committed() {
    let dir = tempfile::tempdir().unwrap();
    let staging = Staging::create(dir.path()).unwrap();
    let input = vec![
        Ok(batch(0, 10)),
        Err(ArrowError::ComputeError("upstream failed".into())),
    ];
    let request = SaveRequest {
        kind: "arrow",
        options: WriteOptions::default(),
    };
    let err = write_and_commit(staging, schema(), input.into_iter(), &request).unwrap_err();
    assert!(err.to_string().contains("upstream failed"), "{err}");
    assert_eq!(
        fs::read_dir(dir.path()).unwrap().count(),
        1,
        "only the lock file remains"
    );
}

#[test]
fn commit_replaces_latest_and_removes_the_old_one() {
    let dir = tempfile::tempdir().unwrap();
    save(dir.path(), batches(100, 10), WriteOptions::default()).unwrap();
    let latest = save(dir.path(), batches(7, 7), WriteOptions::default()).unwrap();
    assert_eq!(column_n(&load(&latest)), (0..7).collect::<Vec<_>>());
    let names: Vec<_> = fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names.len(), 2, "latest/ and the lock file: {names:?}");
}

#[test]
fn a_second_writer_is_refused_while_the_first_holds_the_lock() {
    let dir = tempfile::tempdir().unwrap();
    let first = Staging::create(dir.path()).unwrap();
    assert!(matches!(
        Staging::create(dir.path()),
        Err(CheckpointError::Locked { .. })
    ));
    drop(first);
    Staging::create(dir.path()).unwrap();
}

#[test]
fn a_second_writer_of_this_process_is_told_who_holds_the_lock() {
    let dir = tempfile::tempdir().unwrap();
    let first = Staging::create_for(dir.path(), Some("the first manager")).unwrap();
    match Staging::create_for(dir.path(), Some("the second manager")) {
        Err(err @ CheckpointError::Locked { .. }) => {
            let message = err.to_string();
            assert!(
                message.starts_with("the first manager, in this process, is saving"),
                "{message}"
            );
        }
        other => panic!("expected Locked, got {:?}", other.map(|_| ())),
    }
    drop(first);
    // Released and forgotten: the next holder is the one named.
    let second = Staging::create_for(dir.path(), Some("the second manager")).unwrap();
    let err = Staging::create(dir.path()).map(|_| ()).unwrap_err();
    assert!(err.to_string().starts_with("the second manager,"), "{err}");
    drop(second);
}

#[test]
fn leftovers_of_a_dead_save_are_removed_and_an_interrupted_fallback_is_undone() {
    let dir = tempfile::tempdir().unwrap();
    let latest = save(dir.path(), batches(10, 10), WriteOptions::default()).unwrap();
    fs::create_dir(dir.path().join(".latest.staging-1-2")).unwrap();
    // A save that died between the two renames of the non-atomic fallback.
    fs::rename(&latest, dir.path().join(".latest.old-1-3")).unwrap();
    drop(Staging::create(dir.path()).unwrap());
    assert_eq!(column_n(&load(&latest)).len(), 10);
    let hidden: Vec<_> = fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(".latest"))
        .collect();
    assert!(hidden.is_empty(), "{hidden:?}");
}

fn corrupt_checkpoint() -> (tempfile::TempDir, std::path::PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let latest = save(dir.path(), batches(2_000, 500), small_chunks(2)).unwrap();
    (dir, latest)
}

fn first_shard(latest: &Path) -> std::path::PathBuf {
    latest.join(&load(latest).manifest.shards[0].file)
}

#[test]
fn flipped_bytes_are_caught_by_the_checksum() {
    let (_dir, latest) = corrupt_checkpoint();
    let shard = first_shard(&latest);
    let mut bytes = fs::read(&shard).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x55;
    fs::write(&shard, bytes).unwrap();
    let err = read_checkpoint(&latest, &ReadOptions::default())
        .err()
        .unwrap();
    assert!(
        matches!(err, CheckpointError::Corrupt { ref path, .. } if *path == shard),
        "{err}"
    );
    assert!(err.to_string().contains("xxh3 checksum"), "{err}");
}

#[test]
fn every_truncation_is_an_error_never_a_panic() {
    let (_dir, latest) = corrupt_checkpoint();
    let shard = first_shard(&latest);
    let original = fs::read(&shard).unwrap();
    let mut manifest = load(&latest).manifest;
    let unverified = ReadOptions {
        verify: false,
        ..Default::default()
    };
    for cut in (0..original.len()).step_by(97) {
        fs::write(&shard, &original[..cut]).unwrap();
        // Make the manifest agree on the size so the parser itself is tested.
        manifest.shards[0].bytes = cut as u64;
        fs::write(latest.join(manifest::MANIFEST_FILE), manifest.to_json()).unwrap();
        let err = read_checkpoint(&latest, &unverified)
            .err()
            .expect("a truncated shard must not load");
        assert!(
            matches!(err, CheckpointError::Corrupt { .. }),
            "cut at {cut}: {err}"
        );
    }
}

#[test]
fn declared_decompressed_sizes_beyond_the_limit_are_refused_before_allocating() {
    let (_dir, latest) = corrupt_checkpoint();
    let tight = ReadOptions {
        max_decoded_bytes: 10_000,
        ..Default::default()
    };
    let err = read_checkpoint(&latest, &tight).err().unwrap();
    assert!(
        matches!(err, CheckpointError::OutOfMemory { needed, .. } if needed > 10_000),
        "{err}"
    );
}

#[test]
fn injected_faults_leave_the_previous_checkpoint() {
    // Tests share the process environment: the spec names this test's directory.
    let dir = tempfile::tempdir().unwrap();
    let only_here = dir
        .path()
        .file_name()
        .unwrap()
        .to_string_lossy()
        .into_owned();
    save(dir.path(), batches(50, 10), WriteOptions::default()).unwrap();
    for point in ["shard_write", "shard_sync", "before_swap"] {
        std::env::set_var(fault::ENV_VAR, format!("{point}:enospc:{only_here}"));
        let err = save(dir.path(), batches(5, 5), WriteOptions::default()).unwrap_err();
        std::env::remove_var(fault::ENV_VAR);
        assert!(matches!(err, CheckpointError::Io { .. }), "{point}: {err}");
        assert_eq!(
            column_n(&load(&dir.path().join("latest"))).len(),
            50,
            "{point}"
        );
    }
}

#[test]
fn a_shard_that_makes_arrow_assert_is_reported_as_corrupt() {
    // Found by the `shard` fuzz target: arrow-buffer's alignment assertion.
    let bytes = include_bytes!("testdata/misaligned_buffer.arrow").to_vec();
    let path = Path::new("misaligned_buffer.arrow");
    let err = reader::decode_shard_bytes(path, bytes, 1 << 30).unwrap_err();
    assert!(matches!(err, CheckpointError::Corrupt { .. }), "{err}");
    assert!(
        err.to_string().contains("arrow could not decode it"),
        "{err}"
    );
}

#[test]
fn a_cancelled_write_stops_at_the_next_unit_with_cancelled() {
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    let dir = tempfile::tempdir().unwrap();
    let cancel = AtomicBool::new(false);
    let pulled = AtomicUsize::new(0);
    // The input raises the flag as it hands out its third batch (as Ctrl-C
    // would meanwhile); nothing after it is pulled.
    let input = batches(100_000, 1_000).into_iter().map(|b| {
        if pulled.fetch_add(1, Ordering::Relaxed) == 2 {
            cancel.store(true, Ordering::Relaxed);
        }
        Ok(b)
    });
    let options = WriteOptions {
        compression: Compression::Zstd(19),
        ..WriteOptions::default()
    };
    let err = write_shards_cancellable(dir.path(), schema(), input, &options, &cancel).unwrap_err();
    assert!(matches!(err, CheckpointError::Cancelled), "{err}");
    assert_eq!(pulled.load(Ordering::Relaxed), 3);
}
