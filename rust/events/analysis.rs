//! Resumption analysis of a JSONL event log in one pass.
//!
//! The reference (`EventLoggingMixin.analyze_resumption_state`) parses every
//! line into a Python dict and, for every `partition_start`, rescans all
//! partition and op events: quadratic in partitions × events. Here each line
//! is parsed once, keeping only the handful of fields the analysis reads (as
//! raw JSON, so values round-trip exactly), and folded into per-partition
//! aggregates; lines no reader reads (see [`super::lines`]) are skipped.
//! Large files are split at line boundaries and folded on several threads;
//! the partial results are merged in file order, so "the first maximum
//! wins" ties resolve as Python's `max()` resolves them.
//!
//! This file holds the fold (per-partition aggregates, the merge of chunks,
//! the driver); [`fields`] reads the analysed fields out of a line as
//! Python would, and `analysis/tests.rs` holds the tests.

use serde_json::value::RawValue;
use std::collections::HashMap;
use std::io;
use std::path::Path;

use super::lines;

mod fields;

use fields::{
    converts_exactly, event_type_of, is_exact_integer, is_plain_number, partition_key, raw,
    timestamp_value, LineFields, MetadataFields,
};
pub use fields::{raw_truthy, Raw};

/// Event types counted as checkpoints: the reference looks for
/// `checkpoint_saved`, which nothing writes; `checkpoint_save` is what
/// `log_checkpoint_save` actually logs.
pub const CHECKPOINT_EVENT_TYPES: [&str; 2] = ["checkpoint_saved", "checkpoint_save"];

/// Keeps the item with the greatest key, the first one on ties (Python's
/// `max(..., key=...)`).
fn offer<T>(slot: &mut Option<(f64, T)>, key: f64, item: impl FnOnce() -> T) {
    if slot.as_ref().is_none_or(|(best, _)| key > *best) {
        *slot = Some((key, item()));
    }
}

/// Same rule when merging a later chunk's winner into an earlier one.
fn merge_best<T>(earlier: &mut Option<(f64, T)>, later: Option<(f64, T)>) {
    if let Some((key, item)) = later {
        offer(earlier, key, || item);
    }
}

/// The latest `partition_complete` of a partition.
#[derive(Clone, Debug, Default)]
pub struct CompleteInfo {
    pub timestamp: Raw,
    /// `metadata["success"]`; `None` when the key (or metadata) is absent.
    pub success: Raw,
    pub error: Raw,
    pub duration_seconds: Raw,
    pub output_path: Raw,
}

impl CompleteInfo {
    pub fn is_success(&self) -> bool {
        self.success.as_deref().is_some_and(raw_truthy)
    }
}

/// The latest `op_start` of a partition.
#[derive(Clone, Debug, Default)]
pub struct OpStartInfo {
    pub name: Raw,
    pub idx: Raw,
    pub timestamp: Raw,
    pub timestamp_value: f64,
}

/// Everything the analysis needs about one partition id.
#[derive(Clone, Debug, Default)]
pub struct PartitionState {
    /// The id as first written by a `partition_start` (raw JSON).
    pub id: String,
    /// Position of the first `partition_start` (chunk, line): dict order.
    first_start: Option<(usize, u64)>,
    latest_start: Option<(f64, Raw)>,
    latest_complete: Option<(f64, CompleteInfo)>,
    pub failure_count: u64,
    last_op_start: Option<(f64, OpStartInfo)>,
    last_op_complete: Option<(f64, ())>,
}

impl PartitionState {
    /// `timestamp` of the latest `partition_start` (raw JSON).
    pub fn start_time(&self) -> Raw {
        self.latest_start.as_ref().and_then(|(_, ts)| ts.clone())
    }

    pub fn latest_complete(&self) -> Option<&CompleteInfo> {
        self.latest_complete.as_ref().map(|(_, info)| info)
    }

    pub fn last_op_start(&self) -> Option<&OpStartInfo> {
        self.last_op_start.as_ref().map(|(_, info)| info)
    }

    /// Whether an `op_complete` is newer than the latest `op_start`.
    pub fn last_op_completed(&self) -> bool {
        match (&self.last_op_complete, &self.last_op_start) {
            (Some((done, _)), Some((_, start))) => *done > start.timestamp_value,
            _ => false,
        }
    }

    /// "completed", "failed" or "running", as the reference decides it.
    pub fn status(&self) -> &'static str {
        match self.latest_complete() {
            Some(info) if info.is_success() => "completed",
            Some(_) => "failed",
            None => "running",
        }
    }

    fn merge_later(&mut self, later: PartitionState) {
        if self.first_start.is_none() {
            self.first_start = later.first_start;
            if later.first_start.is_some() {
                self.id = later.id;
            }
        }
        merge_best(&mut self.latest_start, later.latest_start);
        merge_best(&mut self.latest_complete, later.latest_complete);
        self.failure_count += later.failure_count;
        merge_best(&mut self.last_op_start, later.last_op_start);
        merge_best(&mut self.last_op_complete, later.last_op_complete);
    }
}

/// The result of folding an event log: what `analyze_resumption_state`
/// derives its answer from.
#[derive(Clone, Debug, Default)]
pub struct Analysis {
    /// Lines that parsed as JSON objects.
    pub total_events: u64,
    pub has_job_complete: bool,
    pub has_job_failed: bool,
    pub partition_complete_count: u64,
    /// Every `partition_complete` has a truthy `success` or a non-null `error`.
    pub all_partition_completes_settled: bool,
    /// `timestamp` of the first `job_start` (outer `None`: no `job_start`).
    pub first_job_start: Option<Raw>,
    /// `metadata.checkpoint_path` of the latest checkpoint event.
    latest_checkpoint: Option<(f64, Raw)>,
    partitions: Vec<PartitionState>,
    index: HashMap<String, usize>,
    chunk: usize,
    /// A line only Python reads as the reference does: the caller must
    /// analyse the file in Python instead (the fold stopped there).
    irregular: bool,
}

impl Analysis {
    fn new(chunk: usize) -> Self {
        Analysis {
            all_partition_completes_settled: true,
            chunk,
            ..Analysis::default()
        }
    }

    /// `"completed"`, `"failed"`, `"completed_with_failures"`, `"running"`
    /// or `"not_started"`, as `_determine_job_status` decides.
    pub fn job_status(&self) -> &'static str {
        if self.has_job_complete {
            "completed"
        } else if self.has_job_failed {
            "failed"
        } else if self.partition_complete_count > 0 {
            if self.all_partition_completes_settled {
                "completed_with_failures"
            } else {
                "running"
            }
        } else {
            "not_started"
        }
    }

    /// Whether a line needs Python to be read as the reference reads it
    /// (see [`Analysis::is_regular`] and [`Line::Irregular`]); the rest of
    /// this analysis is then incomplete.
    pub fn needs_reference_reading(&self) -> bool {
        self.irregular
    }

    /// Whether any checkpoint event was seen, and its `checkpoint_path`.
    pub fn latest_checkpoint(&self) -> Option<&Raw> {
        self.latest_checkpoint.as_ref().map(|(_, path)| path)
    }

    /// Partitions that have a `partition_start`, in the order of their first
    /// start (the reference's dict order).
    pub fn partitions(&self) -> Vec<&PartitionState> {
        let mut started: Vec<&PartitionState> = self
            .partitions
            .iter()
            .filter(|p| p.first_start.is_some())
            .collect();
        started.sort_by_key(|p| p.first_start);
        started
    }

    fn partition(&mut self, key: String, id: &RawValue) -> &mut PartitionState {
        let next = self.partitions.len();
        let slot = *self.index.entry(key).or_insert(next);
        if slot == next {
            self.partitions.push(PartitionState {
                id: id.get().to_string(),
                ..PartitionState::default()
            });
        }
        &mut self.partitions[slot]
    }

    /// Whether this pass reads the fields of an event of `event_type` as the
    /// reference's Python does. It does not for a partition id that is a
    /// boolean, a float or a huge integer (Python's `1 == True == 1.0`), or
    /// a list or object on a `partition_start` (the reference fails to key
    /// it); a timestamp that is not a number (Python's `max` fails to
    /// compare it, or compares it in ways an `f64` does not); metadata that
    /// is not an object (`.get` fails on it); values that do not convert
    /// exactly.
    fn is_regular(&self, event_type: &str, fields: &LineFields<'_>) -> bool {
        let id_ok = |starts: bool| match fields.partition_id.map(RawValue::get) {
            None | Some("null") => true,
            Some(id) if id.starts_with('"') => converts_exactly(fields.partition_id),
            Some(id) if id.starts_with(['[', '{']) => !starts,
            Some(id) => is_exact_integer(id),
        };
        let timestamp_ok = fields
            .timestamp
            .map(RawValue::get)
            .is_none_or(is_plain_number);
        let metadata = || match fields.metadata {
            None => Some(MetadataFields::default()),
            Some(m) if m.get().starts_with('{') => serde_json::from_str(m.get()).ok(),
            Some(_) => None,
        };
        match event_type {
            "job_start" => self.first_job_start.is_some() || converts_exactly(fields.timestamp),
            "partition_start" => id_ok(true) && timestamp_ok,
            "partition_failed" => id_ok(false),
            "op_complete" => id_ok(false) && timestamp_ok,
            "op_start" => {
                id_ok(false)
                    && timestamp_ok
                    && converts_exactly(fields.operation_name)
                    && converts_exactly(fields.operation_idx)
            }
            "partition_complete" => {
                id_ok(false)
                    && timestamp_ok
                    && metadata().is_some_and(|m| {
                        [m.success, m.error, m.duration_seconds, m.output_path]
                            .into_iter()
                            .all(converts_exactly)
                    })
            }
            other if CHECKPOINT_EVENT_TYPES.contains(&other) => {
                timestamp_ok && metadata().is_some_and(|m| converts_exactly(m.checkpoint_path))
            }
            _ => true,
        }
    }

    fn fold_line(&mut self, line_no: u64, fields: &LineFields<'_>) {
        self.total_events += 1;
        let Some(event_type) = event_type_of(fields.event_type) else {
            return;
        };
        if !self.is_regular(&event_type, fields) {
            self.irregular = true;
            return;
        }
        let ts = timestamp_value(fields.timestamp);
        let metadata = || -> MetadataFields<'_> {
            fields
                .metadata
                .and_then(|m| serde_json::from_str(m.get()).ok())
                .unwrap_or_default()
        };
        let partition = fields
            .partition_id
            .and_then(|id| Some((partition_key(id)?, id)));
        match event_type.as_ref() {
            "job_complete" => self.has_job_complete = true,
            "job_failed" => self.has_job_failed = true,
            "job_start" if self.first_job_start.is_none() => {
                self.first_job_start = Some(raw(fields.timestamp));
            }
            "partition_start" => {
                if let Some((key, id)) = partition {
                    let chunk = self.chunk;
                    let state = self.partition(key, id);
                    state.first_start.get_or_insert((chunk, line_no));
                    offer(&mut state.latest_start, ts, || raw(fields.timestamp));
                }
            }
            "partition_complete" => {
                let meta = metadata();
                self.partition_complete_count += 1;
                let settled = meta.success.is_some_and(|v| raw_truthy(v.get()))
                    || meta.error.is_some_and(|v| v.get() != "null");
                self.all_partition_completes_settled &= settled;
                if let Some((key, id)) = partition {
                    let info = || CompleteInfo {
                        timestamp: raw(fields.timestamp),
                        success: raw(meta.success),
                        error: raw(meta.error),
                        duration_seconds: raw(meta.duration_seconds),
                        output_path: raw(meta.output_path),
                    };
                    offer(&mut self.partition(key, id).latest_complete, ts, info);
                }
            }
            "partition_failed" => {
                if let Some((key, id)) = partition {
                    self.partition(key, id).failure_count += 1;
                }
            }
            "op_start" => {
                if let Some((key, id)) = partition {
                    let info = || OpStartInfo {
                        name: raw(fields.operation_name),
                        idx: raw(fields.operation_idx),
                        timestamp: raw(fields.timestamp),
                        timestamp_value: ts,
                    };
                    offer(&mut self.partition(key, id).last_op_start, ts, info);
                }
            }
            "op_complete" => {
                if let Some((key, id)) = partition {
                    offer(&mut self.partition(key, id).last_op_complete, ts, || ());
                }
            }
            other if CHECKPOINT_EVENT_TYPES.contains(&other) => {
                offer(&mut self.latest_checkpoint, ts, || {
                    raw(metadata().checkpoint_path)
                });
            }
            _ => {}
        }
    }

    fn merge_later(&mut self, later: Analysis) {
        self.irregular |= later.irregular;
        self.total_events += later.total_events;
        self.has_job_complete |= later.has_job_complete;
        self.has_job_failed |= later.has_job_failed;
        self.partition_complete_count += later.partition_complete_count;
        self.all_partition_completes_settled &= later.all_partition_completes_settled;
        if self.first_job_start.is_none() {
            self.first_job_start = later.first_job_start;
        }
        merge_best(&mut self.latest_checkpoint, later.latest_checkpoint);
        let later_index: HashMap<usize, String> =
            later.index.into_iter().map(|(k, v)| (v, k)).collect();
        for (slot, state) in later.partitions.into_iter().enumerate() {
            let key = later_index[&slot].clone();
            match self.index.get(&key) {
                Some(&mine) => self.partitions[mine].merge_later(state),
                None => {
                    self.index.insert(key, self.partitions.len());
                    self.partitions.push(state);
                }
            }
        }
    }
}

/// One line of the log, as this pass reads it.
enum Line<'a> {
    /// A JSON object (see [`lines::classify`]), its read fields (the last
    /// of duplicate keys).
    Event(LineFields<'a>),
    /// A blank line, or one every reader skips ([`lines::LogLine::Unreadable`]).
    Skipped,
    /// An object only Python reads as the reference does (`NaN`,
    /// `Infinity`, lone surrogates serde refuses).
    Irregular,
}

fn read_line(line: &[u8]) -> Line<'_> {
    let Some(text) = lines::stripped(line) else {
        return Line::Skipped;
    };
    if lines::serde_suffices(text) {
        if let Ok(fields) = serde_json::from_str::<LineFields<'_>>(text) {
            return Line::Event(fields);
        }
    }
    if !lines::is_object(text) {
        return Line::Skipped; // blank, or unreadable to every reader
    }
    serde_json::from_str::<LineFields<'_>>(text).map_or(Line::Irregular, Line::Event)
}

/// Calls `visit` with each line of `bytes` every reader reads, in order,
/// until it returns false.
fn for_each_line(bytes: &[u8], mut visit: impl FnMut(u64, Line<'_>) -> bool) {
    for (line_no, line) in lines::split(bytes).enumerate() {
        let line = read_line(line);
        if !matches!(line, Line::Skipped) && !visit(line_no as u64, line) {
            return;
        }
    }
}

/// Splits `bytes` into about `parts` pieces, each ending at a newline.
fn split_at_lines(bytes: &[u8], parts: usize) -> Vec<&[u8]> {
    let mut pieces = Vec::with_capacity(parts);
    let mut rest = bytes;
    for remaining in (1..parts).rev() {
        let target = rest.len() / (remaining + 1);
        match rest[target..].iter().position(|b| *b == b'\n') {
            Some(offset) => {
                let (head, tail) = rest.split_at(target + offset + 1);
                pieces.push(head);
                rest = tail;
            }
            None => break,
        }
    }
    pieces.push(rest);
    pieces
}

fn analyze_chunk(chunk: usize, bytes: &[u8]) -> Analysis {
    let mut analysis = Analysis::new(chunk);
    for_each_line(bytes, |line_no, line| {
        match line {
            Line::Event(fields) => analysis.fold_line(line_no, &fields),
            Line::Irregular => analysis.irregular = true,
            Line::Skipped => {}
        }
        !analysis.irregular
    });
    analysis
}

/// Folds a whole event log, on several threads when it is large.
pub fn analyze_bytes(bytes: &[u8]) -> Analysis {
    const MIN_BYTES_PER_THREAD: usize = 4 << 20;
    let threads = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .min(8);
    let parts = threads.min(bytes.len() / MIN_BYTES_PER_THREAD).max(1);
    let chunks = split_at_lines(bytes, parts);
    if chunks.len() == 1 {
        return analyze_chunk(0, bytes);
    }
    let mut results: Vec<Analysis> = std::thread::scope(|scope| {
        let handles: Vec<_> = chunks
            .iter()
            .enumerate()
            .map(|(i, chunk)| scope.spawn(move || analyze_chunk(i, chunk)))
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().unwrap_or_else(|_| Analysis::new(0)))
            .collect()
    });
    let mut merged = results.remove(0);
    for later in results {
        merged.merge_later(later);
    }
    merged
}

/// Reads and folds the event log at `path`.
pub fn analyze_file(path: &Path) -> io::Result<Analysis> {
    Ok(analyze_bytes(&std::fs::read(path)?))
}

/// Whether the log at `path` holds an event of type `event_type` (lines
/// every reader skips are skipped). `None` when only an object Python must
/// read could hold it (see [`Line::Irregular`]); a missing file holds none.
pub fn file_has_event_type(path: &Path, event_type: &str) -> io::Result<Option<bool>> {
    let bytes = match std::fs::read(path) {
        Ok(bytes) => bytes,
        Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(Some(false)),
        Err(err) => return Err(err),
    };
    let (mut found, mut irregular) = (false, false);
    for_each_line(&bytes, |_, line| {
        match line {
            Line::Event(fields) => {
                found = event_type_of(fields.event_type).as_deref() == Some(event_type);
            }
            Line::Irregular => irregular = true,
            Line::Skipped => {}
        }
        !found
    });
    Ok(if found || !irregular {
        Some(found)
    } else {
        None
    })
}

#[cfg(test)]
mod tests;
