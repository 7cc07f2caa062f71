//! The bucket commit protocol on an in-memory object store (the same
//! conditional-put semantics as S3); the Python tests run it against a real
//! S3-protocol server.

use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use object_store::memory::InMemory;
use object_store::ObjectStoreExt;

use super::load::read_bucket_checkpoint;
use super::location::{Bucket, BucketUri};
use super::publish::{version_key, versions, BucketStaging};
use super::runtime::block_on;
use crate::checkpoint::error::CheckpointError;
use crate::checkpoint::reader::ReadOptions;
use crate::checkpoint::tests::{batch, schema};
use crate::checkpoint::writer::{write_shards_to, WriteOptions};
use crate::checkpoint::{manifest_for, SaveRequest};

fn bucket() -> Arc<Bucket> {
    Arc::new(Bucket {
        uri: BucketUri::parse("s3://bkt/ck").unwrap().unwrap(),
        store: Arc::new(InMemory::new()),
    })
}

/// A staging holding `rows` rows starting at `start`, written, not committed.
fn staged(
    bucket: &Arc<Bucket>,
    start: i64,
    rows: i64,
) -> (BucketStaging, crate::checkpoint::Manifest) {
    let mut staging = BucketStaging::create(bucket.clone()).unwrap();
    let options = WriteOptions::default();
    let input = vec![Ok(batch(start, rows))].into_iter();
    let shards = write_shards_to(
        &staging.target(None),
        schema(),
        input,
        &options,
        &AtomicBool::new(false),
    )
    .unwrap();
    staging
        .add_file("ckpt_op.json", format!("[{start}]").as_bytes())
        .unwrap();
    let request = SaveRequest {
        kind: "arrow",
        options,
    };
    let manifest = manifest_for(&request, &shards);
    (staging, manifest)
}

fn keys(bucket: &Bucket, under: &str) -> Vec<String> {
    use futures_util::TryStreamExt;
    let prefix = bucket.key(under);
    let listed: Vec<_> = block_on(bucket.store.list(Some(&prefix)).try_collect())
        .unwrap()
        .unwrap();
    listed
        .into_iter()
        .map(|m| m.location.to_string())
        .collect::<Vec<String>>()
}

fn loaded_first_value(bucket: &Bucket) -> i64 {
    let loaded = read_bucket_checkpoint(bucket, &ReadOptions::default())
        .unwrap()
        .unwrap();
    let n = loaded.batches[0]
        .column(1)
        .as_any()
        .downcast_ref::<arrow_array::Int64Array>()
        .unwrap();
    n.value(0)
}

#[test]
fn a_committed_save_loads_whole_and_the_newest_two_versions_stay() {
    let bucket = bucket();
    assert!(read_bucket_checkpoint(&bucket, &ReadOptions::default())
        .unwrap()
        .is_none());
    for start in [10, 20, 30, 40] {
        let (staging, manifest) = staged(&bucket, start, 1000);
        staging.commit(manifest).unwrap();
        assert_eq!(loaded_first_value(&bucket), start);
    }
    assert_eq!(versions(&bucket).unwrap(), vec![3, 2]);
    let generations: std::collections::BTreeSet<String> = keys(&bucket, "generations")
        .iter()
        .map(|k| k.split('/').nth(2).unwrap().to_string())
        .collect();
    assert_eq!(generations.len(), 2, "{generations:?}");
}

#[test]
fn of_two_saves_from_the_same_version_the_second_loses_and_removes_its_objects() {
    let bucket = bucket();
    let (first, first_manifest) = staged(&bucket, 1, 100);
    let (second, second_manifest) = staged(&bucket, 2, 100);
    first.commit(first_manifest).unwrap();
    let err = second.commit(second_manifest).unwrap_err();
    assert!(matches!(err, CheckpointError::Raced { .. }), "{err}");
    // The winner's shard and ckpt_op.json; the loser's objects are gone.
    assert_eq!(keys(&bucket, "generations").len(), 2);
    assert_eq!(loaded_first_value(&bucket), 1);
}

#[test]
fn a_save_whose_version_was_removed_meanwhile_does_not_become_an_old_version() {
    let bucket = bucket();
    let (slow, slow_manifest) = staged(&bucket, 1, 10); // began before any version
    for start in [2, 3, 4] {
        let (staging, manifest) = staged(&bucket, start, 10);
        staging.commit(manifest).unwrap(); // versions 0, 1, 2; 0 is removed
    }
    let err = slow.commit(slow_manifest).unwrap_err();
    assert!(matches!(err, CheckpointError::Raced { .. }), "{err}");
    assert_eq!(versions(&bucket).unwrap(), vec![2, 1]);
    assert_eq!(loaded_first_value(&bucket), 4);
}

#[test]
fn a_dropped_save_removes_its_objects() {
    let bucket = bucket();
    let (staging, _) = staged(&bucket, 1, 100);
    assert!(!keys(&bucket, "generations").is_empty());
    drop(staging);
    assert!(keys(&bucket, "generations").is_empty());
    assert!(versions(&bucket).unwrap().is_empty());
}

#[test]
fn a_damaged_or_missing_object_is_named_never_read() {
    let bucket = bucket();
    let (staging, manifest) = staged(&bucket, 1, 1000);
    staging.commit(manifest).unwrap();
    let shard = keys(&bucket, "generations")
        .into_iter()
        .find(|k| k.ends_with(".arrow"))
        .unwrap();
    let key = object_store::path::Path::from(shard.as_str());
    let mut bytes = block_on(async { bucket.store.get(&key).await?.bytes().await })
        .unwrap()
        .unwrap()
        .to_vec();
    bytes[100] ^= 1;
    block_on(bucket.store.put(&key, bytes.into()))
        .unwrap()
        .unwrap();
    let err = read_bucket_checkpoint(&bucket, &ReadOptions::default())
        .err()
        .unwrap();
    assert!(
        matches!(err, CheckpointError::Corrupt { .. }) && err.to_string().contains(&shard),
        "{err}"
    );

    block_on(bucket.store.delete(&key)).unwrap().unwrap();
    let err = read_bucket_checkpoint(&bucket, &ReadOptions::default())
        .err()
        .unwrap();
    assert!(err.to_string().contains("object is missing"), "{err}");
}

#[test]
fn a_manifest_naming_another_prefix_is_refused() {
    let bucket = bucket();
    let (staging, manifest) = staged(&bucket, 1, 10);
    staging.commit(manifest).unwrap();
    let key = version_key(&bucket, 0);
    let text = block_on(async { bucket.store.get(&key).await?.bytes().await })
        .unwrap()
        .unwrap();
    let text = String::from_utf8(text.to_vec()).unwrap();
    let evil = text.replacen("\"generations/", "\"../../other/", 1);
    block_on(bucket.store.put(&key, evil.into_bytes().into()))
        .unwrap()
        .unwrap();
    let err = read_bucket_checkpoint(&bucket, &ReadOptions::default())
        .err()
        .unwrap();
    assert!(
        err.to_string()
            .contains("names no generation of this checkpoint"),
        "{err}"
    );
}

#[test]
fn a_pinned_version_stays_whole_through_saves_until_unpinned() {
    use super::readers::{pin_newest, unpin};
    let bucket = bucket();
    let (staging, manifest) = staged(&bucket, 1, 100);
    staging.commit(manifest).unwrap();
    let (pin, pinned) = pin_newest(&bucket).unwrap().unwrap();
    for start in [2, 3, 4] {
        let (staging, manifest) = staged(&bucket, start, 100);
        staging.commit(manifest).unwrap();
    }
    assert_eq!(
        versions(&bucket).unwrap(),
        vec![3, 2, 0],
        "the pinned version 0 stays"
    );
    let source = super::load::GenerationObjects::of(&bucket, &pinned);
    let loaded =
        crate::checkpoint::reader::read_manifested(&source, pinned, &ReadOptions::default());
    assert_eq!(loaded.unwrap().manifest.num_rows, 100);
    unpin(&bucket, &pin);
    let (staging, manifest) = staged(&bucket, 5, 100);
    staging.commit(manifest).unwrap();
    assert_eq!(versions(&bucket).unwrap(), vec![4, 3]);
    assert!(keys(&bucket, "readers").is_empty());
}
