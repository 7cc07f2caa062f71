//! Background saves: the caller hands over a snapshot and goes on.
//!
//! A [`Snapshot`] holds the record batches of the dataset (references to
//! their buffers: Arrow data is immutable, so nothing is copied), the rows an
//! indices mapping selects, and the small files of the checkpoint. One
//! thread per [`BackgroundWriter`] writes and commits snapshots through the
//! ordinary path ([`PendingSave`]: written, then committed atomically), so a crash
//! mid-save leaves the previous checkpoint or the new one.
//!
//! At most one snapshot is being written and one waits. A newer submit
//! replaces the waiting one: the newest always wins, and a superseded
//! snapshot is dropped (its buffers released) without being written. An
//! error is kept until a caller takes it, so no failure goes unreported.
//!
//! A caller that stops waiting (Ctrl-C) abandons what is not committed yet
//! ([`BackgroundWriter::abandon`]): the waiting snapshot is dropped and the
//! one being written stops at its next piece, before its commit, so the
//! previous checkpoint stays.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::Duration;

use arrow_array::{Array, RecordBatch, UInt64Array};
use arrow_schema::{ArrowError, SchemaRef};
use arrow_select::interleave::interleave_record_batch;
use serde_json::Value;

use super::bucket::Location;
use super::error::{CheckpointError, Result};
use super::save::PendingSave;
use super::{manifest_for, sizing, SaveRequest, WriteOptions};

/// Name of the HF state file whose `_data_files` list is filled in once the
/// shard names are known.
const STATE_FILE: &str = "state.json";
/// Rows gathered per step when an indices mapping selects the rows.
const GATHER_ROWS: usize = 65_536;

/// Everything one save needs, taken while the caller waits.
pub struct Snapshot {
    /// The checkpoint directory or bucket prefix.
    pub location: Location,
    pub schema: SchemaRef,
    pub batches: Vec<RecordBatch>,
    /// Row positions (into the concatenated batches) to save, in order;
    /// `None` saves every row.
    pub indices: Option<Vec<UInt64Array>>,
    /// Small files written beside the shards, in this order.
    pub files: Vec<(String, Vec<u8>)>,
    /// A `state.json` object without `_data_files`; the writer adds the list
    /// of shard files and writes it (keys sorted, indented like HF's).
    pub state_template: Option<Vec<u8>>,
    pub kind: String,
    pub options: WriteOptions,
    /// Fills `batches` and `indices` in the writer thread. Pulling a C
    /// stream of an in-memory table costs tens of microseconds per batch
    /// (~65 ms for a 1 GB table of 1,000-row batches); the stream holds
    /// references to the table, so the caller need not wait for it.
    pub deferred: Option<DeferredRows>,
    /// pyarrow's `Table.nbytes` of `batches`, counted as they were imported
    /// (see [`sizing::SizedStream`]); `None` when unknown.
    pub table_bytes: Option<u64>,
    /// `Some(num_proc)`: choose `options.rows_per_shard` in the writer
    /// thread as `datasets.save_to_disk(num_proc=...)` would for these rows
    /// (sizing a 1 GB table costs the caller ~10 ms in Python).
    pub size_like_datasets: Option<u64>,
    /// Who saves (the Python manager), named to another saver of this
    /// process that finds the directory's lock taken.
    pub holder: Option<String>,
}

/// What [`DeferredRows`] produces: a snapshot's batches, indices and
/// `table_bytes`.
pub type PulledRows = (Vec<RecordBatch>, Option<Vec<UInt64Array>>, Option<u64>);

/// Produces a snapshot's batches, indices and byte count, off the caller's thread.
pub type DeferredRows = Box<dyn FnOnce() -> Result<PulledRows> + Send>;

/// `Err(Cancelled)` once `cancel` is raised.
fn check_cancel(cancel: &AtomicBool) -> Result<()> {
    if cancel.load(Ordering::Relaxed) {
        return Err(CheckpointError::Cancelled);
    }
    Ok(())
}

impl Snapshot {
    /// Writes the snapshot into a fresh staging directory and commits it,
    /// unless `cancel` is raised first: then it stops at its next piece of
    /// work (the staging directory removed) with `Err(Cancelled)`.
    pub fn write_and_commit(mut self, cancel: &AtomicBool) -> Result<String> {
        if let Some(pull) = self.deferred.take() {
            (self.batches, self.indices, self.table_bytes) = pull()?;
        }
        check_cancel(cancel)?;
        if let Some(num_proc) = self.size_like_datasets {
            self.options.rows_per_shard = self.rows_per_shard_like_datasets(num_proc)?;
        }
        let mut staging = PendingSave::create(&self.location, self.holder.as_deref())?;
        let rows = rows_of(&self.schema, &self.batches, self.indices.as_deref());
        let shards = staging.write_shards(self.schema.clone(), rows, &self.options, cancel)?;
        if let Some(template) = &self.state_template {
            let names: Vec<&str> = shards.iter().map(|s| s.file.as_str()).collect();
            staging.add_file(STATE_FILE, &state_json(template, &names)?)?;
        }
        for (name, bytes) in &self.files {
            staging.add_file(name, bytes)?;
        }
        let request = SaveRequest {
            kind: &self.kind,
            options: self.options.clone(),
        };
        check_cancel(cancel)?;
        staging.commit(manifest_for(&request, &shards))
    }
}

impl Snapshot {
    /// The rows per shard of `datasets.save_to_disk(num_proc=num_proc)`:
    /// the table's bytes scaled to the rows an indices mapping selects,
    /// as `datasets` estimates them.
    fn rows_per_shard_like_datasets(&self, num_proc: u64) -> Result<Option<u64>> {
        let total: u64 = self.batches.iter().map(|b| b.num_rows() as u64).sum();
        let visible = match &self.indices {
            Some(arrays) => arrays.iter().map(|a| a.len() as u64).sum(),
            None => total,
        };
        let table_bytes = self.table_bytes.ok_or_else(|| {
            CheckpointError::Input(format!(
                "cannot size shards of a table of schema {:?}",
                self.schema
            ))
        })?;
        let nbytes = (table_bytes as u128 * visible as u128 / total.max(1) as u128) as u64;
        Ok(sizing::datasets_rows_per_shard(
            nbytes,
            visible,
            num_proc,
            self.options.max_shard_bytes,
        ))
    }
}

type BatchResult = std::result::Result<RecordBatch, ArrowError>;

/// The rows to write: the batches themselves, or the rows `indices` picks
/// from them, gathered a step at a time so memory stays bounded.
fn rows_of<'a>(
    schema: &SchemaRef,
    batches: &'a [RecordBatch],
    indices: Option<&'a [UInt64Array]>,
) -> Box<dyn Iterator<Item = BatchResult> + 'a> {
    let Some(indices) = indices else {
        return Box::new(batches.iter().cloned().map(Ok));
    };
    let starts: Vec<u64> = batches
        .iter()
        .scan(0u64, |next, b| {
            let start = *next;
            *next += b.num_rows() as u64;
            Some(start)
        })
        .collect();
    let total: u64 = batches.iter().map(|b| b.num_rows() as u64).sum();
    let table_bytes: u64 = batches
        .iter()
        .map(|b| b.get_array_memory_size() as u64)
        .sum();
    let row_bytes = table_bytes / total.max(1) + 1;
    let schema = schema.clone();
    Box::new(
        indices
            .iter()
            .flat_map(|array| {
                (0..array.len())
                    .step_by(GATHER_ROWS)
                    .map(move |at| array.slice(at, GATHER_ROWS.min(array.len() - at)))
            })
            .map(move |step| {
                // interleave allocates infallibly: check the room first.
                let need = row_bytes
                    .saturating_mul(step.len() as u64)
                    .saturating_mul(2);
                super::memory::ensure_room(need, "gathering the rows an indices mapping selects")
                    .map_err(|e| ArrowError::ExternalError(Box::new(e)))?;
                gather(&schema, batches, &starts, total, &step)
            }),
    )
}

fn gather(
    schema: &SchemaRef,
    batches: &[RecordBatch],
    starts: &[u64],
    total: u64,
    step: &UInt64Array,
) -> BatchResult {
    if step.null_count() > 0 {
        return Err(ArrowError::InvalidArgumentError(
            "the indices mapping holds nulls".into(),
        ));
    }
    let mut picks = Vec::with_capacity(step.len());
    for &row in step.values() {
        if row >= total {
            return Err(ArrowError::InvalidArgumentError(format!(
                "the indices mapping selects row {row} of a table of {total} rows"
            )));
        }
        let batch = starts.partition_point(|&s| s <= row) - 1;
        picks.push((batch, (row - starts[batch]) as usize));
    }
    if picks.is_empty() {
        return Ok(RecordBatch::new_empty(schema.clone()));
    }
    let refs: Vec<&RecordBatch> = batches.iter().collect();
    interleave_record_batch(&refs, &picks)
}

/// `template` with `_data_files` set to `shard_files`, as HF writes it.
fn state_json(template: &[u8], shard_files: &[&str]) -> Result<Vec<u8>> {
    let mut state: serde_json::Map<String, Value> =
        serde_json::from_slice(template).map_err(|e| {
            CheckpointError::Input(format!("state.json template is not a JSON object: {e}"))
        })?;
    let files = shard_files
        .iter()
        .map(|name| serde_json::json!({ "filename": name }))
        .collect();
    state.insert("_data_files".into(), Value::Array(files));
    serde_json::to_vec_pretty(&state).map_err(|e| CheckpointError::Internal(e.to_string()))
}

/// What the writer thread and its callers share.
#[derive(Default)]
struct State {
    /// The next snapshot to write, with its sequence number.
    pending: Option<(u64, Snapshot)>,
    /// Sequence number of the snapshot being written.
    writing: Option<u64>,
    /// Sequence number of the last snapshot committed.
    committed: u64,
    /// Sequence numbers committed since the last `take_committed`.
    newly_committed: Vec<u64>,
    /// Snapshots dropped because a newer one replaced them.
    superseded: u64,
    /// The first failure not yet reported, with its sequence number.
    error: Option<(u64, CheckpointError)>,
    next_seq: u64,
    closing: bool,
    /// Calls of `abandon` so far (they wake `wait_for_commit`).
    abandons: u64,
    /// Saves given up by `abandon` so far.
    abandoned: u64,
}

struct Shared {
    state: Mutex<State>,
    changed: Condvar,
    /// Raised by `abandon`: the snapshot being written stops. Lowered by the
    /// writer thread once that write has ended.
    cancel: AtomicBool,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock cannot leave `State` half-changed
        // (every update is a plain assignment), so a poisoned lock is usable.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Counters of a writer, for callers and tests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Progress {
    pub submitted: u64,
    pub committed: u64,
    pub superseded: u64,
    pub busy: bool,
}

/// One writer thread and the single slot of its waiting snapshot.
///
/// A forked child inherits a copy of this object but not the thread (and
/// maybe a copy of a lock the thread held): there, `wait` refuses, and
/// `close` and drop leave the copy alone instead of waiting forever.
pub struct BackgroundWriter {
    shared: Arc<Shared>,
    thread: Mutex<Option<JoinHandle<()>>>,
    owner_pid: u32,
}

impl BackgroundWriter {
    pub fn start() -> Result<Self> {
        let shared = Arc::new(Shared {
            state: Mutex::new(State::default()),
            changed: Condvar::new(),
            cancel: AtomicBool::new(false),
        });
        let worker = shared.clone();
        let thread = std::thread::Builder::new()
            .name("dja-ckpt-writer".into())
            .spawn(move || write_loop(&worker))
            .map_err(|e| super::memory::thread_error("the checkpoint writer thread", e))?;
        Ok(BackgroundWriter {
            shared,
            thread: Mutex::new(Some(thread)),
            owner_pid: std::process::id(),
        })
    }

    /// Queues `snapshot`, replacing a snapshot still waiting. Returns its
    /// sequence number. Fails (and queues nothing) when an earlier save
    /// failed and nobody has taken that error yet.
    pub fn submit(&self, snapshot: Snapshot) -> Result<u64> {
        if !self.in_owner_process() {
            return Err(CheckpointError::Input(
                "this background checkpoint writer belongs to the parent process (forked child)"
                    .into(),
            ));
        }
        let mut state = self.shared.lock();
        if let Some((_, err)) = state.error.take() {
            return Err(err);
        }
        if state.closing {
            return Err(CheckpointError::Input(
                "the background checkpoint writer is closed".into(),
            ));
        }
        state.next_seq += 1;
        let seq = state.next_seq;
        if state.pending.replace((seq, snapshot)).is_some() {
            state.superseded += 1;
        }
        self.shared.changed.notify_all();
        Ok(seq)
    }

    /// Blocks until nothing is written or waiting; returns the first failure
    /// since the last call, if any.
    pub fn wait(&self) -> Result<()> {
        loop {
            if let Some(result) = self.wait_for(Duration::from_secs(3600)) {
                return result;
            }
        }
    }

    /// [`wait`](Self::wait) for at most `timeout`: `None` when saves are
    /// still being written or waiting then (so that a caller can look for
    /// Ctrl-C between the calls).
    pub fn wait_for(&self, timeout: Duration) -> Option<Result<()>> {
        if !self.in_owner_process() {
            return Some(Err(CheckpointError::Input(
                "this background checkpoint writer belongs to the parent process (forked child)"
                    .into(),
            )));
        }
        let state = self.shared.lock();
        let (mut state, _) = self
            .shared
            .changed
            .wait_timeout_while(state, timeout, |s| {
                s.pending.is_some() || s.writing.is_some()
            })
            .unwrap_or_else(|p| p.into_inner());
        if state.pending.is_some() || state.writing.is_some() {
            return None;
        }
        Some(match state.error.take() {
            Some((_, err)) => Err(err),
            None => Ok(()),
        })
    }

    /// Gives up the saves not committed yet: drops the waiting snapshot and
    /// makes the one being written stop at its next piece of work, before
    /// its commit (its staging directory is removed). Waits up to `timeout`
    /// for that write to end. Returns whether a save was abandoned. A save
    /// already committing completes; it is reported as committed.
    pub fn abandon(&self, timeout: Duration) -> bool {
        if !self.in_owner_process() {
            return false;
        }
        let mut state = self.shared.lock();
        let dropped = state.pending.take().is_some();
        let writing = state.writing.is_some();
        if writing {
            self.shared.cancel.store(true, Ordering::Relaxed);
        }
        state.abandons += 1;
        state.abandoned += u64::from(dropped) + u64::from(writing);
        self.shared.changed.notify_all();
        let _ = self
            .shared
            .changed
            .wait_timeout_while(state, timeout, |s| s.writing.is_some())
            .unwrap_or_else(|p| p.into_inner());
        dropped || writing
    }

    /// Sequence numbers of the snapshots committed since the last call, in
    /// commit order (a superseded snapshot is never among them).
    pub fn take_committed(&self) -> Vec<u64> {
        std::mem::take(&mut self.shared.lock().newly_committed)
    }

    /// Blocks up to `timeout` until a commit not yet taken exists; returns
    /// whether one does (false on timeout, or once the writer is closed).
    pub fn wait_for_commit(&self, timeout: std::time::Duration) -> bool {
        if !self.in_owner_process() {
            return false;
        }
        let state = self.shared.lock();
        let abandons = state.abandons;
        let (state, _) = self
            .shared
            .changed
            .wait_timeout_while(state, timeout, |s| {
                s.newly_committed.is_empty() && !s.closing && s.abandons == abandons
            })
            .unwrap_or_else(|p| p.into_inner());
        !state.newly_committed.is_empty()
    }

    fn in_owner_process(&self) -> bool {
        std::process::id() == self.owner_pid
    }

    pub fn progress(&self) -> Progress {
        let state = self.shared.lock();
        Progress {
            submitted: state.next_seq,
            committed: state.committed,
            superseded: state.superseded,
            busy: state.pending.is_some() || state.writing.is_some(),
        }
    }

    /// Saves given up by [`abandon`](Self::abandon) so far.
    pub fn abandoned(&self) -> u64 {
        self.shared.lock().abandoned
    }

    /// Waits for the last snapshot, stops the thread; returns the failure
    /// not yet reported, if any. Later calls do nothing.
    pub fn close(&self) -> Result<()> {
        if !self.in_owner_process() {
            // Detach from the parent's thread handle; its state stays leaked.
            let thread = self.thread.lock().unwrap_or_else(|p| p.into_inner()).take();
            std::mem::forget(thread);
            return Ok(());
        }
        let result = self.wait();
        self.shared.lock().closing = true;
        self.shared.changed.notify_all();
        let thread = self.thread.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(thread) = thread {
            thread.join().map_err(CheckpointError::from_panic)?;
        }
        result
    }
}

impl Drop for BackgroundWriter {
    fn drop(&mut self) {
        // Owners call close() and report its error; here only the thread stops.
        let _ = self.close();
    }
}

fn write_loop(shared: &Shared) {
    loop {
        let (seq, snapshot) = {
            let mut state = shared.lock();
            loop {
                if let Some(next) = state.pending.take() {
                    state.writing = Some(next.0);
                    break next;
                }
                if state.closing {
                    return;
                }
                state = shared
                    .changed
                    .wait(state)
                    .unwrap_or_else(|p| p.into_inner());
            }
        };
        let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            snapshot.write_and_commit(&shared.cancel)
        }))
        .unwrap_or_else(|payload| Err(CheckpointError::from_panic(payload)));
        let mut state = shared.lock();
        state.writing = None;
        // Raised (under this lock) only while this write ran: it was abandoned.
        let abandoned = shared.cancel.swap(false, Ordering::Relaxed);
        match outcome {
            Ok(_) => {
                state.committed = seq;
                state.newly_committed.push(seq);
            }
            // The caller that abandoned it was told (KeyboardInterrupt).
            Err(_) if abandoned => {}
            Err(err) => {
                if state.error.is_none() {
                    state.error = Some((seq, err));
                }
            }
        }
        shared.changed.notify_all();
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use arrow_array::{Int64Array, StringArray};
    use arrow_schema::{DataType, Field, Schema};

    use super::*;
    use crate::checkpoint::reader::{read_checkpoint, ReadOptions};

    fn schema() -> SchemaRef {
        Arc::new(Schema::new(vec![
            Field::new("id", DataType::Int64, false),
            Field::new("text", DataType::Utf8, false),
        ]))
    }

    fn batch(start: i64, rows: i64) -> RecordBatch {
        let ids: Vec<i64> = (start..start + rows).collect();
        let texts: Vec<String> = ids.iter().map(|i| format!("row {i}")).collect();
        RecordBatch::try_new(
            schema(),
            vec![
                Arc::new(Int64Array::from(ids)),
                Arc::new(StringArray::from(texts)),
            ],
        )
        .unwrap()
    }

    fn snapshot(dir: &std::path::Path, batches: Vec<RecordBatch>, tag: &str) -> Snapshot {
        Snapshot {
            location: Location::Dir(dir.to_path_buf()),
            schema: schema(),
            batches,
            indices: None,
            files: vec![("ckpt_op.json".into(), tag.as_bytes().to_vec())],
            state_template: Some(br#"{"_split": null}"#.to_vec()),
            kind: "arrow".into(),
            options: WriteOptions::default(),
            deferred: None,
            table_bytes: None,
            size_like_datasets: None,
            holder: None,
        }
    }

    fn saved_ids(dir: &std::path::Path) -> Vec<i64> {
        let loaded = read_checkpoint(&dir.join("latest"), &ReadOptions::default())
            .unwrap()
            .unwrap();
        loaded
            .batches
            .iter()
            .flat_map(|b| {
                let ids = b.column(0).as_any().downcast_ref::<Int64Array>().unwrap();
                ids.values().to_vec()
            })
            .collect()
    }

    #[test]
    fn writes_gathered_rows_and_fills_in_the_state_file() {
        let dir = tempfile::tempdir().unwrap();
        let mut snap = snapshot(dir.path(), vec![batch(0, 10), batch(10, 10)], "[]");
        snap.indices = Some(vec![
            UInt64Array::from(vec![15, 2, 19]),
            UInt64Array::from(vec![0]),
        ]);
        let writer = BackgroundWriter::start().unwrap();
        writer.submit(snap).unwrap();
        writer.close().unwrap();
        assert_eq!(saved_ids(dir.path()), vec![15, 2, 19, 0]);
        let state: Value =
            serde_json::from_slice(&std::fs::read(dir.path().join("latest/state.json")).unwrap())
                .unwrap();
        assert_eq!(
            state["_data_files"][0]["filename"],
            "data-00000-of-00001.arrow"
        );
        assert_eq!(state["_split"], Value::Null);
    }

    #[test]
    fn the_newest_snapshot_wins() {
        let dir = tempfile::tempdir().unwrap();
        let writer = BackgroundWriter::start().unwrap();
        for i in 0..20 {
            writer
                .submit(snapshot(
                    dir.path(),
                    vec![batch(i, 1000)],
                    &format!("[{i}]"),
                ))
                .unwrap();
        }
        writer.wait().unwrap();
        let progress = writer.progress();
        assert_eq!(progress.committed, 20);
        assert!(!progress.busy);
        let committed = writer.take_committed();
        assert_eq!(committed.last(), Some(&20));
        assert_eq!(committed.len() as u64 + progress.superseded, 20);
        assert!(writer.take_committed().is_empty());
        assert_eq!(saved_ids(dir.path())[0], 19);
        assert_eq!(
            std::fs::read(dir.path().join("ckpt_op.json")).unwrap(),
            b"[19]"
        );
    }

    #[test]
    fn a_failure_is_reported_once_and_keeps_the_previous_checkpoint() {
        let dir = tempfile::tempdir().unwrap();
        let writer = BackgroundWriter::start().unwrap();
        writer
            .submit(snapshot(dir.path(), vec![batch(0, 5)], "[0]"))
            .unwrap();
        writer.wait().unwrap();
        let mut bad = snapshot(dir.path(), vec![batch(0, 5)], "[1]");
        bad.indices = Some(vec![UInt64Array::from(vec![7])]);
        writer.submit(bad).unwrap();
        let err = writer.wait().unwrap_err();
        assert!(err.to_string().contains("selects row 7"), "{err}");
        writer.wait().unwrap();
        assert_eq!(saved_ids(dir.path()), vec![0, 1, 2, 3, 4]);
        assert_eq!(
            std::fs::read(dir.path().join("ckpt_op.json")).unwrap(),
            b"[0]"
        );
    }

    #[test]
    fn an_unreported_failure_refuses_the_next_submit() {
        let dir = tempfile::tempdir().unwrap();
        let writer = BackgroundWriter::start().unwrap();
        let mut bad = snapshot(dir.path(), vec![batch(0, 5)], "[1]");
        bad.state_template = Some(b"[1]".to_vec());
        writer.submit(bad).unwrap();
        while writer.progress().busy {
            std::thread::yield_now();
        }
        let err = writer
            .submit(snapshot(dir.path(), vec![batch(0, 5)], "[2]"))
            .unwrap_err();
        assert!(err.to_string().contains("state.json"), "{err}");
        writer
            .submit(snapshot(dir.path(), vec![batch(0, 5)], "[2]"))
            .unwrap();
        writer.wait().unwrap();
        assert_eq!(
            std::fs::read(dir.path().join("ckpt_op.json")).unwrap(),
            b"[2]"
        );
    }

    #[test]
    fn an_abandoned_save_stops_before_its_commit_and_is_not_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let writer = BackgroundWriter::start().unwrap();
        writer
            .submit(snapshot(dir.path(), vec![batch(0, 5)], "[0]"))
            .unwrap();
        writer.wait().unwrap();
        // Slow to compress: many units at level 19, so the abandon lands mid-write.
        let mut slow = snapshot(
            dir.path(),
            (0..40).map(|i| batch(i * 5000, 5000)).collect(),
            "[1]",
        );
        slow.options.compression = crate::checkpoint::Compression::Zstd(19);
        writer.submit(slow).unwrap();
        assert!(writer.abandon(Duration::from_secs(600)));
        assert!(!writer.progress().busy);
        assert_eq!(writer.abandoned(), 1);
        writer.wait().unwrap(); // abandoned, not failed
        assert_eq!(saved_ids(dir.path()), vec![0, 1, 2, 3, 4]);
        assert_eq!(
            std::fs::read(dir.path().join("ckpt_op.json")).unwrap(),
            b"[0]"
        );
        let leftovers: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .filter_map(|e| e.ok())
            .filter(|e| e.file_name().to_string_lossy().starts_with(".latest"))
            .collect();
        assert!(leftovers.is_empty(), "{leftovers:?}");
        assert!(!writer.abandon(Duration::from_secs(1))); // nothing left to abandon
        writer
            .submit(snapshot(dir.path(), vec![batch(7, 2)], "[2]"))
            .unwrap();
        writer.close().unwrap();
        assert_eq!(saved_ids(dir.path()), vec![7, 8]);
    }

    #[test]
    fn wait_for_returns_none_while_a_save_is_still_running() {
        let dir = tempfile::tempdir().unwrap();
        let writer = BackgroundWriter::start().unwrap();
        let mut slow = snapshot(
            dir.path(),
            (0..40).map(|i| batch(i * 5000, 5000)).collect(),
            "[1]",
        );
        slow.options.compression = crate::checkpoint::Compression::Zstd(19);
        writer.submit(slow).unwrap();
        assert!(writer.wait_for(Duration::ZERO).is_none());
        writer.wait_for(Duration::from_secs(600)).unwrap().unwrap();
        assert_eq!(saved_ids(dir.path()).len(), 200_000);
    }
}
