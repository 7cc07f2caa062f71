//! Checkpoints whose shards are written by several processes.
//!
//! A Ray checkpoint's rows live on the Ray workers, so each write task writes
//! the shards of its blocks itself, into the one staging directory that the
//! driver created with [`Staging::create`] (lock taken, leftovers of dead
//! saves cleared). Tasks name their shards with their own prefix. The driver
//! then commits with [`commit_shards`], through [`Staging::commit`]: the same
//! manifest-last, fsync, exchange and recovery as a single-process save.
//! A load finds the generation committed with [`committed_generation`];
//! its tasks read each shard with [`read_verified_shard`].
//!
//! In a bucket the same split holds with the bucket's commit
//! ([`super::bucket::publish`]): the driver's [`BucketStaging`] names the
//! generation, each task uploads its shards there under its own prefix
//! ([`write_bucket_shards`]), the driver publishes them as the next version
//! ([`commit_bucket_shards`]), and read tasks read one shard each
//! ([`read_bucket_shard`]).

use std::collections::{HashMap, HashSet};
use std::fs::{self, OpenOptions};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::thread;

use arrow_array::RecordBatch;
use arrow_schema::{ArrowError, SchemaRef};

use super::bucket::load::GenerationObjects;
use super::bucket::publish::{delete_generation_object, generation_listing, is_generation_name};
use super::bucket::upload::BucketShards;
use super::bucket::{Bucket, BucketStaging};
use super::commit::{interrupted_swap, Staging, LATEST};
use super::dirfd::CheckpointDir;
use super::error::{CheckpointError, IoContext, Result};
use super::fault;
use super::manifest::{is_safe_file_name, FileEntry, Manifest, MANIFEST_FILE};
use super::reader::{self, ReadOptions};
use super::writer::write_shards_to;
use super::{manifest_for, write_shards, SaveRequest, WriteOptions, WrittenShard};

/// Most shards fsynced at once by a commit.
const SYNC_THREADS: usize = 8;

/// Writes `input` with [`write_shards`] into a private hidden directory
/// inside `dir`, then moves each shard up to `dir` as
/// `{prefix}-data-NNNNN-of-NNNNN.arrow` (each shard fsynced, or left to
/// [`commit_shards`] with [`WriteOptions::sync`] off). Tasks writing into
/// the same `dir` at once must use different prefixes. On error the private
/// directory is removed and nothing is left under a final name.
pub fn write_prefixed_shards<I>(
    dir: &Path,
    prefix: &str,
    schema: SchemaRef,
    input: I,
    opts: &WriteOptions,
) -> Result<Vec<WrittenShard>>
where
    I: Iterator<Item = std::result::Result<RecordBatch, ArrowError>>,
{
    check_prefix(prefix)?;
    let private = dir.join(format!(".{prefix}.writing"));
    remove_any(&private)?;
    fs::create_dir(&private).at(&private)?;
    let result = write_shards(&private, schema, input, opts).and_then(|shards| {
        let mut moved = Vec::with_capacity(shards.len());
        for mut shard in shards {
            let name = format!("{prefix}-{}", shard.file);
            let to = dir.join(&name);
            fs::rename(private.join(&shard.file), &to).at(&to)?;
            shard.file = name;
            moved.push(shard);
        }
        // No fsync of `dir` here: the commit fsyncs the staging directory
        // once, after the manifest, which makes every task's renames durable.
        Ok(moved)
    });
    let _ = fs::remove_dir_all(&private);
    result
}

fn check_prefix(prefix: &str) -> Result<()> {
    if !is_safe_file_name(prefix) || prefix.len() > 200 || prefix == MANIFEST_FILE {
        return Err(CheckpointError::Input(format!(
            "shard prefix {prefix:?} must be one plain file-name component"
        )));
    }
    Ok(())
}

/// The names of the shards the write tasks reported: each a plain file
/// name, none the manifest's, none twice.
fn check_shard_names(shards: &[FileEntry]) -> Result<HashSet<&str>> {
    let mut names = HashSet::with_capacity(shards.len());
    for entry in shards {
        if !is_safe_file_name(&entry.file)
            || entry.file == MANIFEST_FILE
            || !names.insert(entry.file.as_str())
        {
            return Err(CheckpointError::Input(format!(
                "shard name {:?} is not a plain, unique file name",
                entry.file
            )));
        }
    }
    Ok(names)
}

/// Commits the shards the write tasks reported (in row order) as the
/// checkpoint of `staging`. Anything else in the staging directory (what
/// failed or retried task attempts left) is removed first; a reported shard
/// that is missing or has another size fails the commit, and the previous
/// checkpoint stays. Every reported shard is fsynced before the manifest is
/// written: tasks on this machine leave that to the commit.
pub fn commit_shards(
    staging: Staging,
    request: &SaveRequest,
    shards: Vec<FileEntry>,
) -> Result<PathBuf> {
    let dir = staging.dir().to_path_buf();
    let names = check_shard_names(&shards)?;
    for entry in &shards {
        let path = dir.join(&entry.file);
        let meta = fs::symlink_metadata(&path).at(&path)?;
        if !meta.is_file() || meta.len() != entry.bytes {
            return Err(CheckpointError::Input(format!(
                "shard {} is not the regular file of {} bytes its write task reported",
                path.display(),
                entry.bytes
            )));
        }
    }
    for found in fs::read_dir(&dir).at(&dir)? {
        let found = found.at(&dir)?;
        if !names.contains(found.file_name().to_string_lossy().as_ref()) {
            remove_any(&found.path())?;
        }
    }
    sync_shards(&dir, &shards)?;
    let mut manifest = manifest_for(request, &[]);
    manifest.num_rows = shards.iter().filter_map(|s| s.rows).sum();
    manifest.shards = shards;
    staging.commit(manifest)
}

/// Fsyncs the shards in `dir`, on up to [`SYNC_THREADS`] threads: the tasks
/// started their writeback, so this waits once for all of them, where an
/// fsync in each task held up every task in turn. An fsync reaches the file
/// whichever descriptor it goes through; shards written on other machines
/// were fsynced by their tasks, and this finds them clean.
fn sync_shards(dir: &Path, shards: &[FileEntry]) -> Result<()> {
    let threads = shards.len().clamp(1, SYNC_THREADS);
    thread::scope(|scope| {
        let handles: Vec<_> = (0..threads)
            .map(|first| {
                scope.spawn(move || -> Result<()> {
                    for entry in shards.iter().skip(first).step_by(threads) {
                        let path = dir.join(&entry.file);
                        let file = OpenOptions::new()
                            .read(true)
                            .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_CLOEXEC)
                            .open(&path)
                            .at(&path)?;
                        fault::check("shard_sync", &path).at(&path)?;
                        file.sync_all().at(&path)?;
                    }
                    Ok(())
                })
            })
            .collect();
        handles
            .into_iter()
            .try_for_each(|h| h.join().map_err(CheckpointError::from_panic)?)
    })
}

/// Brings back the checkpoint in `ckpt_dir` if a save died between the two
/// renames of the non-atomic fallback, and clears other leftovers. Does
/// nothing (and says so) while another process is saving there.
pub fn recover(ckpt_dir: &Path) -> Result<bool> {
    match Staging::create(ckpt_dir) {
        Ok(staging) => {
            drop(staging); // its creation ran the recovery; it removes itself
            Ok(true)
        }
        Err(CheckpointError::Locked { .. }) => Ok(false),
        Err(e) => Err(e),
    }
}

/// The committed generation of `ckpt_dir`: its `latest/`, opened once, and
/// the manifest read through that handle (so both are of one generation).
/// A checkpoint a save killed mid-fallback left aside is brought back
/// first. `None` when nothing is committed.
pub fn committed_generation(ckpt_dir: &Path) -> Result<Option<(CheckpointDir, Manifest)>> {
    if interrupted_swap(ckpt_dir)? {
        recover(ckpt_dir)?;
    }
    let latest = ckpt_dir.join(LATEST);
    if !latest.is_dir() {
        return Ok(None);
    }
    let Some(dir) = CheckpointDir::open(&latest)? else {
        return Ok(None);
    };
    Ok(Manifest::read_in(&dir)?.map(|manifest| (dir, manifest)))
}

/// Reads the shard `entry` of the checkpoint directory `dir` with every
/// check of a checkpoint load (see [`reader::read_one_shard`]): a regular
/// file inside `dir`, never a symlink out of it, read no further than the
/// manifest's size, its xxh3 (with `verify`), its declared decompressed
/// sizes against the memory the process may use, and its row count.
pub fn read_verified_shard(
    dir: &Path,
    entry: &FileEntry,
    verify: bool,
) -> Result<(SchemaRef, Vec<RecordBatch>)> {
    if !is_safe_file_name(&entry.file) || entry.file == MANIFEST_FILE {
        return Err(CheckpointError::Input(format!(
            "shard name {:?} is not a plain file name",
            entry.file
        )));
    }
    let handle = CheckpointDir::open(dir)?
        .ok_or_else(|| CheckpointError::io(dir, std::io::Error::from_raw_os_error(libc::ENOENT)))?;
    let opts = ReadOptions {
        verify,
        // A Ray read task has one CPU: Ray runs the tasks in parallel.
        threads: 1,
        ..ReadOptions::default()
    };
    reader::read_one_shard(&handle, entry, &opts)
}

/// Uploads `input` as shards `{prefix}-part-NNNNN.arrow` into `generation`
/// (`generations/<id>`, created by the driver's [`BucketStaging`]). Tasks
/// uploading into one generation at once must use different prefixes; a
/// failed upload is aborted, and shards this call completed before it
/// failed are strays that [`commit_bucket_shards`] removes.
pub fn write_bucket_shards<I>(
    bucket: Arc<Bucket>,
    generation: &str,
    prefix: &str,
    schema: SchemaRef,
    input: I,
    opts: &WriteOptions,
) -> Result<Vec<WrittenShard>>
where
    I: Iterator<Item = std::result::Result<RecordBatch, ArrowError>>,
{
    check_prefix(prefix)?;
    check_generation(&bucket, generation)?;
    let target = BucketShards::new(bucket, generation, None).with_name_prefix(prefix);
    write_shards_to(&target, schema, input, opts, &AtomicBool::new(false))
}

/// Publishes the shards the write tasks reported (in row order) as the
/// next version of `staging`'s checkpoint. Each must be an object of its
/// generation with the size its task reported; other objects there (what
/// failed or retried attempts uploaded) are deleted first. Returns
/// `s3://bucket/prefix`; a save that lost the race to another is
/// [`CheckpointError::Raced`], and the previous version stays.
pub fn commit_bucket_shards(
    staging: BucketStaging,
    request: &SaveRequest,
    shards: Vec<FileEntry>,
) -> Result<String> {
    let names = check_shard_names(&shards)?;
    let (bucket, generation) = (staging.bucket().clone(), staging.generation().to_string());
    let listed: HashMap<String, u64> = generation_listing(&bucket, &generation)?
        .into_iter()
        .collect();
    for entry in &shards {
        if listed.get(&entry.file) != Some(&entry.bytes) {
            let source = GenerationObjects::new(&bucket, &generation);
            return Err(CheckpointError::Input(format!(
                "shard {} is not the object of {} bytes its write task reported",
                super::reader::FileSource::locate(&source, &entry.file).display(),
                entry.bytes
            )));
        }
    }
    for stray in listed.keys().filter(|name| !names.contains(name.as_str())) {
        // Best effort: a stray left here goes with its generation.
        let _ = delete_generation_object(&bucket, &generation, stray);
    }
    let mut manifest = manifest_for(request, &[]);
    manifest.num_rows = shards.iter().filter_map(|s| s.rows).sum();
    manifest.shards = shards;
    staging.commit(manifest)
}

/// Reads the shard `entry` of `generation` with every check of a bucket
/// load: the object's size before it is downloaded, its xxh3 (with
/// `verify`), the decompressed sizes it declares against the memory the
/// process may use, and its rows. A damaged or missing object is named by
/// its `s3://` key in [`CheckpointError::Corrupt`].
pub fn read_bucket_shard(
    bucket: &Bucket,
    generation: &str,
    entry: &FileEntry,
    verify: bool,
) -> Result<(SchemaRef, Vec<RecordBatch>)> {
    check_shard_names(std::slice::from_ref(entry))?;
    check_generation(bucket, generation)?;
    let opts = ReadOptions {
        verify,
        threads: 1,
        ..ReadOptions::default()
    };
    reader::read_one_shard(&GenerationObjects::new(bucket, generation), entry, &opts)
}

fn check_generation(bucket: &Bucket, generation: &str) -> Result<()> {
    if is_generation_name(generation) {
        return Ok(());
    }
    Err(CheckpointError::Input(format!(
        "{generation:?} names no generation of the checkpoint {}",
        bucket.uri.shown()
    )))
}

/// Removes a file or a directory tree; absent is fine.
fn remove_any(path: &Path) -> Result<()> {
    let removed = match fs::symlink_metadata(path) {
        Ok(meta) if meta.is_dir() => fs::remove_dir_all(path),
        Ok(_) => fs::remove_file(path),
        Err(e) => Err(e),
    };
    match removed {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(CheckpointError::io(path, e)),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use arrow_array::Int64Array;

    use super::super::manifest::checksum_hex;
    use super::super::tests::{batch, schema};
    use super::super::Compression;
    use super::*;

    fn options(max_shard_bytes: u64) -> WriteOptions {
        WriteOptions {
            compression: Compression::Zstd(1),
            threads: 2,
            rows_per_shard: None,
            max_shard_bytes,
            chunk_bytes: 16 << 10,
            sync: true,
        }
    }

    fn entry(s: &WrittenShard) -> FileEntry {
        FileEntry {
            file: s.file.clone(),
            bytes: s.bytes,
            xxh3_64: checksum_hex(s.xxh3),
            rows: Some(s.rows),
            raw_bytes: Some(s.raw_bytes),
        }
    }

    fn names(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }

    fn column_n(batches: &[RecordBatch]) -> Vec<i64> {
        batches
            .iter()
            .flat_map(|b| {
                let col = b.column(1).as_any().downcast_ref::<Int64Array>().unwrap();
                col.values().to_vec()
            })
            .collect()
    }

    fn request() -> SaveRequest<'static> {
        SaveRequest {
            kind: "ray",
            options: WriteOptions::default(),
        }
    }

    #[test]
    fn two_tasks_share_a_staging_directory_and_commit_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let staging = Staging::create(dir.path()).unwrap();
        let a = (0..4).map(|i| Ok(batch(i * 500, 500)));
        let b = (4..6).map(|i| Ok(batch(i * 500, 500)));
        let sa = write_prefixed_shards(staging.dir(), "t00000-x", schema(), a, &options(64 << 10))
            .unwrap();
        let sb = write_prefixed_shards(staging.dir(), "t00001-y", schema(), b, &options(u64::MAX))
            .unwrap();
        assert!(sa.len() > 1, "the byte limit splits task a into shards");
        assert_eq!(sb.len(), 1);
        assert!(sa.iter().all(|s| s.file.starts_with("t00000-x-data-")));
        // A failed attempt of some task left a shard and its private directory.
        fs::write(
            staging.dir().join("t00002-z-data-00000-of-00001.arrow"),
            b"x",
        )
        .unwrap();
        fs::create_dir(staging.dir().join(".t00002-z.writing")).unwrap();

        let entries: Vec<FileEntry> = sa.iter().chain(&sb).map(entry).collect();
        let latest = commit_shards(staging, &request(), entries.clone()).unwrap();
        let mut expected: Vec<String> = entries.iter().map(|e| e.file.clone()).collect();
        expected.push(MANIFEST_FILE.into());
        expected.sort();
        assert_eq!(names(&latest), expected, "strays removed, manifest added");
        let loaded = reader::read_checkpoint(&latest, &Default::default())
            .unwrap()
            .unwrap();
        assert_eq!(loaded.manifest.kind, "ray");
        assert_eq!(loaded.manifest.num_rows, 3000);
        let mut n = Vec::new();
        for e in &entries {
            let (_, batches) = read_verified_shard(&latest, e, true).unwrap();
            n.extend(column_n(&batches));
        }
        assert_eq!(n, (0..3000).collect::<Vec<i64>>(), "task then shard order");
        assert_eq!(column_n(&loaded.batches), n);
    }

    #[test]
    fn shards_written_without_fsync_are_committed_whole() {
        let dir = tempfile::tempdir().unwrap();
        let staging = Staging::create(dir.path()).unwrap();
        let unsynced = WriteOptions {
            sync: false,
            ..options(64 << 10)
        };
        let input = (0..4).map(|i| Ok(batch(i * 500, 500)));
        let written =
            write_prefixed_shards(staging.dir(), "t00000-x", schema(), input, &unsynced).unwrap();
        assert!(written.len() > 1);
        let entries: Vec<FileEntry> = written.iter().map(entry).collect();
        let latest = commit_shards(staging, &request(), entries.clone()).unwrap();
        let mut n = Vec::new();
        for e in &entries {
            let (_, batches) = read_verified_shard(&latest, e, true).unwrap();
            n.extend(column_n(&batches));
        }
        assert_eq!(n, (0..2000).collect::<Vec<i64>>());
    }

    #[test]
    fn a_missing_or_resized_shard_fails_the_commit_and_keeps_the_previous_one() {
        let dir = tempfile::tempdir().unwrap();
        let staging = Staging::create(dir.path()).unwrap();
        let first = write_prefixed_shards(
            staging.dir(),
            "t0",
            schema(),
            std::iter::once(Ok(batch(0, 100))),
            &options(u64::MAX),
        )
        .unwrap();
        let latest = commit_shards(staging, &request(), first.iter().map(entry).collect()).unwrap();
        for damage in ["missing", "resized"] {
            let staging = Staging::create(dir.path()).unwrap();
            let shards = write_prefixed_shards(
                staging.dir(),
                "t1",
                schema(),
                std::iter::once(Ok(batch(0, 7))),
                &options(u64::MAX),
            )
            .unwrap();
            let path = staging.dir().join(&shards[0].file);
            if damage == "missing" {
                fs::remove_file(&path).unwrap();
            } else {
                fs::write(&path, b"short").unwrap();
            }
            let err =
                commit_shards(staging, &request(), shards.iter().map(entry).collect()).unwrap_err();
            assert!(err.to_string().contains(&shards[0].file), "{damage}: {err}");
            let loaded = reader::read_checkpoint(&latest, &Default::default())
                .unwrap()
                .unwrap();
            assert_eq!(loaded.manifest.num_rows, 100, "{damage}");
        }
        assert_eq!(
            names(dir.path()),
            [".accel.lock", "latest"],
            "no staging left"
        );
    }

    #[test]
    fn recover_undoes_an_interrupted_fallback_unless_a_save_is_running() {
        let dir = tempfile::tempdir().unwrap();
        let staging = Staging::create(dir.path()).unwrap();
        let shards = write_prefixed_shards(
            staging.dir(),
            "t0",
            schema(),
            std::iter::once(Ok(batch(0, 10))),
            &options(u64::MAX),
        )
        .unwrap();
        let latest =
            commit_shards(staging, &request(), shards.iter().map(entry).collect()).unwrap();
        let held = Staging::create(dir.path()).unwrap();
        assert!(
            !recover(dir.path()).unwrap(),
            "a running save is left alone"
        );
        drop(held);
        // What a driver killed between the fallback's two renames leaves.
        fs::rename(&latest, dir.path().join(".latest.old-1-2")).unwrap();
        fs::create_dir(dir.path().join(".latest.staging-1-3")).unwrap();
        assert!(recover(dir.path()).unwrap());
        assert!(reader::read_checkpoint(&latest, &Default::default())
            .unwrap()
            .is_some());
        assert_eq!(names(dir.path()), [".accel.lock", "latest"]);
    }

    #[test]
    fn empty_input_gives_one_schema_only_shard() {
        let dir = tempfile::tempdir().unwrap();
        let empty = std::iter::empty();
        let shards =
            write_prefixed_shards(dir.path(), "empty", schema(), empty, &options(1 << 20)).unwrap();
        assert_eq!(shards.len(), 1);
        assert_eq!(shards[0].rows, 0);
        let (schema_read, batches) =
            read_verified_shard(dir.path(), &entry(&shards[0]), true).unwrap();
        assert_eq!(schema_read.fields(), schema().fields());
        assert!(batches.iter().all(|b| b.num_rows() == 0));
    }

    #[test]
    fn refuses_unsafe_prefixes() {
        let dir = tempfile::tempdir().unwrap();
        for bad in ["", "../up", "a/b", ".hidden", MANIFEST_FILE] {
            let empty = std::iter::empty();
            let err =
                write_prefixed_shards(dir.path(), bad, schema(), empty, &options(1)).unwrap_err();
            assert!(matches!(err, CheckpointError::Input(_)), "{bad}: {err}");
        }
        assert!(names(dir.path()).is_empty());
    }

    #[test]
    fn failed_input_leaves_nothing_under_a_final_name() {
        let dir = tempfile::tempdir().unwrap();
        let input = vec![
            Ok(batch(0, 100)),
            Err(ArrowError::ComputeError("worker lost its input".into())),
        ];
        let err = write_prefixed_shards(
            dir.path(),
            "t1",
            schema(),
            input.into_iter(),
            &options(1 << 20),
        )
        .unwrap_err();
        assert!(err.to_string().contains("worker lost its input"), "{err}");
        assert!(names(dir.path()).is_empty(), "{:?}", names(dir.path()));
    }

    #[test]
    fn a_shard_symlinked_outside_the_directory_is_refused() {
        let outside = tempfile::tempdir().unwrap();
        let input = std::iter::once(Ok(batch(0, 50)));
        let shards =
            write_prefixed_shards(outside.path(), "t", schema(), input, &options(u64::MAX))
                .unwrap();
        let dir = tempfile::tempdir().unwrap();
        let good = entry(&shards[0]);
        std::os::unix::fs::symlink(outside.path().join(&good.file), dir.path().join(&good.file))
            .unwrap();
        let err = read_verified_shard(dir.path(), &good, true).unwrap_err();
        assert!(matches!(err, CheckpointError::Corrupt { .. }), "{err}");
        assert!(err.to_string().contains("symbolic link"), "{err}");
        let mut up = good.clone();
        up.file = format!("../{}", good.file);
        let err = read_verified_shard(dir.path(), &up, true).unwrap_err();
        assert!(matches!(err, CheckpointError::Input(_)), "{err}");
    }

    #[test]
    fn detects_damage_against_the_entry() {
        let dir = tempfile::tempdir().unwrap();
        let input = std::iter::once(Ok(batch(0, 200)));
        let shards =
            write_prefixed_shards(dir.path(), "t", schema(), input, &options(u64::MAX)).unwrap();
        let path = dir.path().join(&shards[0].file);
        let good = entry(&shards[0]);
        let mut wrong_rows = good.clone();
        wrong_rows.rows = Some(199);
        let err = read_verified_shard(dir.path(), &wrong_rows, true).unwrap_err();
        assert!(err.to_string().contains("199"), "{err}");
        let mut bytes = fs::read(&path).unwrap();
        let middle = bytes.len() / 2;
        bytes[middle] ^= 0x55;
        fs::write(&path, &bytes).unwrap();
        let err = read_verified_shard(dir.path(), &good, true).unwrap_err();
        assert!(matches!(err, CheckpointError::Corrupt { .. }), "{err}");
        assert!(err.to_string().contains("xxh3"), "{err}");
        fs::write(&path, &bytes[..middle]).unwrap();
        let err = read_verified_shard(dir.path(), &good, true).unwrap_err();
        assert!(err.to_string().contains("truncated"), "{err}");
    }

    mod bucket {
        use object_store::memory::InMemory;
        use object_store::{ObjectStoreExt, PutPayload};

        use super::super::super::bucket::load::read_bucket_checkpoint;
        use super::super::super::bucket::runtime::block_on;
        use super::super::super::bucket::BucketUri;
        use super::*;

        fn bucket() -> Arc<Bucket> {
            Arc::new(Bucket {
                uri: BucketUri::parse("s3://bkt/ck/checkpoint_op_0000_partition_0000.accel")
                    .unwrap()
                    .unwrap(),
                store: Arc::new(InMemory::new()),
            })
        }

        /// What one write task uploads: `blocks` batches of 500 rows from `first`.
        fn task(
            bucket: &Arc<Bucket>,
            generation: &str,
            prefix: &str,
            first: i64,
        ) -> Vec<FileEntry> {
            let input = (first..first + 2).map(|i| Ok(batch(i * 500, 500)));
            write_bucket_shards(
                bucket.clone(),
                generation,
                prefix,
                schema(),
                input,
                &options(64 << 10),
            )
            .unwrap()
            .iter()
            .map(entry)
            .collect()
        }

        #[test]
        fn tasks_upload_into_one_generation_and_the_driver_publishes_them_in_order() {
            let bucket = bucket();
            let staging = BucketStaging::create(bucket.clone()).unwrap();
            let generation = staging.generation().to_string();
            let mut entries = task(&bucket, &generation, "000000-aa", 0);
            entries.extend(task(&bucket, &generation, "000001-bb", 2));
            assert!(entries.len() > 2, "the byte limit splits each task's rows");
            assert!(entries[0].file.starts_with("000000-aa-part-"));
            // A failed attempt of another task left an object behind.
            let stray = task(&bucket, &generation, "000002-cc", 9);
            let uri = commit_bucket_shards(staging, &request(), entries.clone()).unwrap();
            assert_eq!(uri, "s3://bkt/ck/checkpoint_op_0000_partition_0000.accel");
            let listed: Vec<String> = generation_listing(&bucket, &generation)
                .unwrap()
                .into_iter()
                .map(|(name, _)| name)
                .collect();
            assert!(
                !listed.contains(&stray[0].file),
                "strays removed: {listed:?}"
            );
            let loaded = read_bucket_checkpoint(&bucket, &Default::default())
                .unwrap()
                .unwrap();
            assert_eq!(loaded.manifest.kind, "ray");
            assert_eq!(column_n(&loaded.batches), (0..2000).collect::<Vec<i64>>());
            let mut n = Vec::new();
            for e in &entries {
                n.extend(column_n(
                    &read_bucket_shard(&bucket, &generation, e, true).unwrap().1,
                ));
            }
            assert_eq!(n, (0..2000).collect::<Vec<i64>>(), "task then shard order");
        }

        #[test]
        fn a_missing_object_fails_the_commit_and_a_damaged_one_is_named_by_its_key() {
            let bucket = bucket();
            let staging = BucketStaging::create(bucket.clone()).unwrap();
            let generation = staging.generation().to_string();
            let entries = task(&bucket, &generation, "t0", 0);
            let mut missing = entries.clone();
            missing[0].file = "t9-part-00000.arrow".into();
            let err = commit_bucket_shards(staging, &request(), missing).unwrap_err();
            assert!(err.to_string().contains("t9-part-00000.arrow"), "{err}");
            assert!(versions(&bucket).is_empty(), "nothing published");

            let staging = BucketStaging::create(bucket.clone()).unwrap();
            let generation = staging.generation().to_string();
            let entries = task(&bucket, &generation, "t0", 0);
            commit_bucket_shards(staging, &request(), entries.clone()).unwrap();
            let key = bucket.key(&format!("{generation}/{}", entries[0].file));
            let mut bytes = block_on(async { bucket.store.get(&key).await.unwrap().bytes().await })
                .unwrap()
                .unwrap()
                .to_vec();
            let middle = bytes.len() / 2;
            bytes[middle] ^= 0x55;
            block_on(bucket.store.put(&key, PutPayload::from(bytes)))
                .unwrap()
                .unwrap();
            let err = read_bucket_shard(&bucket, &generation, &entries[0], true).unwrap_err();
            assert!(matches!(err, CheckpointError::Corrupt { .. }), "{err}");
            assert!(
                err.to_string().contains(&format!("s3://bkt/{key}")),
                "{err}"
            );
        }

        #[test]
        fn of_two_ray_saves_from_one_version_the_second_is_raced() {
            let bucket = bucket();
            let first = BucketStaging::create(bucket.clone()).unwrap();
            let second = BucketStaging::create(bucket.clone()).unwrap();
            let a = task(&bucket, first.generation(), "a", 0);
            let b = task(&bucket, second.generation(), "b", 4);
            commit_bucket_shards(first, &request(), a).unwrap();
            let err = commit_bucket_shards(second, &request(), b).unwrap_err();
            assert!(matches!(err, CheckpointError::Raced { .. }), "{err}");
            let loaded = read_bucket_checkpoint(&bucket, &Default::default())
                .unwrap()
                .unwrap();
            assert_eq!(column_n(&loaded.batches)[0], 0, "the first save stays");
        }

        #[test]
        fn tasks_are_held_to_a_generation_and_a_plain_prefix() {
            let bucket = bucket();
            for generation in ["versions", "generations/../x", "generations/", "other/x"] {
                let input = std::iter::empty();
                let err = write_bucket_shards(
                    bucket.clone(),
                    generation,
                    "t",
                    schema(),
                    input,
                    &options(1),
                )
                .unwrap_err();
                assert!(
                    matches!(err, CheckpointError::Input(_)),
                    "{generation}: {err}"
                );
            }
            let input = std::iter::empty();
            let err = write_bucket_shards(
                bucket.clone(),
                "generations/x",
                "../t",
                schema(),
                input,
                &options(1),
            )
            .unwrap_err();
            assert!(matches!(err, CheckpointError::Input(_)), "{err}");
        }

        fn versions(bucket: &Bucket) -> Vec<u64> {
            super::super::super::bucket::publish::versions(bucket).unwrap()
        }
    }
}
