//! Resumption analysis of a JSONL event log in one pass.
//!
//! The reference (`EventLoggingMixin.analyze_resumption_state`) parses every
//! line into a Python dict and, for every `partition_start`, rescans all
//! partition and op events: quadratic in partitions × events. Here each line
//! is parsed once, keeping only the handful of fields the analysis reads (as
//! raw JSON, so values round-trip exactly), and folded into per-partition
//! aggregates. Large files are split at line boundaries and folded on several
//! threads; the partial results are merged in file order, so "the first
//! maximum wins" ties resolve as Python's `max()` resolves them.

use serde::{Deserialize, Deserializer};
use serde_json::value::RawValue;
use std::borrow::Cow;
use std::collections::HashMap;
use std::io;
use std::path::Path;

/// Event types counted as checkpoints: the reference looks for
/// `checkpoint_saved`, which nothing writes; `checkpoint_save` is what
/// `log_checkpoint_save` actually logs.
pub const CHECKPOINT_EVENT_TYPES: [&str; 2] = ["checkpoint_saved", "checkpoint_save"];

fn some_raw<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<&'de RawValue>, D::Error> {
    <&RawValue>::deserialize(deserializer).map(Some)
}

/// The fields of one event line the analysis reads; `null` is kept as
/// `Some("null")` so that "missing" and "null" stay distinct, as in Python.
#[derive(Deserialize)]
struct LineFields<'a> {
    #[serde(default, borrow, deserialize_with = "some_raw")]
    event_type: Option<&'a RawValue>,
    #[serde(default, borrow, deserialize_with = "some_raw")]
    timestamp: Option<&'a RawValue>,
    #[serde(default, borrow, deserialize_with = "some_raw")]
    partition_id: Option<&'a RawValue>,
    #[serde(default, borrow, deserialize_with = "some_raw")]
    operation_name: Option<&'a RawValue>,
    #[serde(default, borrow, deserialize_with = "some_raw")]
    operation_idx: Option<&'a RawValue>,
    #[serde(default, borrow, deserialize_with = "some_raw")]
    metadata: Option<&'a RawValue>,
}

#[derive(Deserialize, Default)]
struct MetadataFields<'a> {
    #[serde(default, borrow, deserialize_with = "some_raw")]
    success: Option<&'a RawValue>,
    #[serde(default, borrow, deserialize_with = "some_raw")]
    error: Option<&'a RawValue>,
    #[serde(default, borrow, deserialize_with = "some_raw")]
    duration_seconds: Option<&'a RawValue>,
    #[serde(default, borrow, deserialize_with = "some_raw")]
    output_path: Option<&'a RawValue>,
    #[serde(default, borrow, deserialize_with = "some_raw")]
    checkpoint_path: Option<&'a RawValue>,
}

/// A JSON value kept as its source text (`None` where the key is absent).
pub type Raw = Option<String>;

fn raw(value: Option<&RawValue>) -> Raw {
    value.map(|v| v.get().to_string())
}

/// Python truthiness of a JSON value given as text.
pub fn raw_truthy(text: &str) -> bool {
    let text = text.trim();
    match text.as_bytes().first() {
        None => false,
        Some(b'n') | Some(b'f') => false, // null, false
        Some(b't') => true,
        Some(b'"') => text.len() > 2,
        Some(b'[') | Some(b'{') => text
            .get(1..text.len() - 1)
            .is_some_and(|inner| !inner.trim().is_empty()),
        Some(_) => text.parse::<f64>().map(|v| v != 0.0).unwrap_or(true),
    }
}

/// `x.get("timestamp", 0)` as a number for comparisons.
fn timestamp_value(value: Option<&RawValue>) -> f64 {
    value
        .and_then(|v| v.get().parse::<f64>().ok())
        .unwrap_or(0.0)
}

/// Partition ids as dictionary keys: Python treats `3` and `3.0` as one key.
fn partition_key(value: &RawValue) -> Option<String> {
    let text = value.get();
    if text == "null" {
        return None;
    }
    match text.parse::<f64>() {
        Ok(number) if number.fract() == 0.0 && number.abs() < 9.0e15 => {
            Some(format!("{}", number as i64))
        }
        _ => Some(text.to_string()),
    }
}

fn event_type_of<'a>(value: Option<&'a RawValue>) -> Option<Cow<'a, str>> {
    let text = value?.get();
    let inner = text.strip_prefix('"')?.strip_suffix('"')?;
    if inner.contains('\\') {
        serde_json::from_str::<String>(text).ok().map(Cow::Owned)
    } else {
        Some(Cow::Borrowed(inner))
    }
}

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

    fn fold_line(&mut self, line_no: u64, fields: &LineFields<'_>) {
        self.total_events += 1;
        let Some(event_type) = event_type_of(fields.event_type) else {
            return;
        };
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

/// Calls `visit` with each line of `bytes` that parses as a JSON object,
/// as Python's `json.loads(line.strip())` would accept it. Blank and broken
/// lines (such as a partial last line left by a killed writer) are skipped;
/// `NaN`/`Infinity` (which `json.dumps` writes) are read as `null`.
fn for_each_event(bytes: &[u8], mut visit: impl FnMut(u64, &LineFields<'_>)) {
    // Validating UTF-8 once for the whole chunk lets serde_json skip it per
    // string (a sizeable share of the parse); an invalid chunk falls back to
    // per-line validation, which then drops only the broken lines.
    let text = std::str::from_utf8(bytes).ok();
    let mut offset = 0;
    for (line_no, line) in bytes.split(|b| *b == b'\n').enumerate() {
        let start = offset;
        offset += line.len() + 1;
        let trimmed = line.trim_ascii();
        if trimmed.first() != Some(&b'{') {
            continue;
        }
        let parsed = match text {
            Some(text) => {
                let lead = line.len() - line.trim_ascii_start().len();
                serde_json::from_str::<LineFields<'_>>(
                    &text[start + lead..start + lead + trimmed.len()],
                )
            }
            None => serde_json::from_slice::<LineFields<'_>>(trimmed),
        };
        match parsed {
            Ok(fields) => visit(line_no as u64, &fields),
            Err(_) => {
                if let Some(cleaned) = replace_non_finite(trimmed) {
                    if let Ok(fields) = serde_json::from_slice::<LineFields<'_>>(&cleaned) {
                        visit(line_no as u64, &fields);
                    }
                }
            }
        }
    }
}

/// `line` with the `NaN`, `Infinity` and `-Infinity` tokens outside strings
/// replaced by `null`, or `None` when it has none.
fn replace_non_finite(line: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(line.len());
    let (mut in_string, mut escaped, mut changed) = (false, false, false);
    let mut i = 0;
    while i < line.len() {
        let byte = line[i];
        if in_string {
            out.push(byte);
            match (escaped, byte) {
                (true, _) => escaped = false,
                (false, b'\\') => escaped = true,
                (false, b'"') => in_string = false,
                _ => {}
            }
            i += 1;
            continue;
        }
        let token = [&b"-Infinity"[..], b"Infinity", b"NaN"]
            .into_iter()
            .find(|t| line[i..].starts_with(t));
        if let Some(token) = token {
            out.extend_from_slice(b"null");
            i += token.len();
            changed = true;
            continue;
        }
        in_string = byte == b'"';
        out.push(byte);
        i += 1;
    }
    changed.then_some(out)
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
    for_each_event(bytes, |line_no, fields| analysis.fold_line(line_no, fields));
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

/// Whether the log at `path` holds an event of type `event_type` (broken
/// lines skipped). A missing file holds none.
pub fn file_has_event_type(path: &Path, event_type: &str) -> io::Result<bool> {
    let bytes = match std::fs::read(path) {
        Ok(bytes) => bytes,
        Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(false),
        Err(err) => return Err(err),
    };
    let mut found = false;
    for_each_event(&bytes, |_, fields| {
        found |= fields
            .event_type
            .is_some_and(|t| event_type_of(Some(t)).as_deref() == Some(event_type));
    });
    Ok(found)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(json: &str) -> String {
        format!("{json}\n")
    }

    fn sample_log() -> String {
        [
            r#"{"event_type": "job_start", "timestamp": 1.0}"#,
            r#"{"event_type": "partition_start", "timestamp": 2.0, "partition_id": 0}"#,
            r#"{"event_type": "partition_start", "timestamp": 2.5, "partition_id": 1}"#,
            r#"{"event_type": "op_start", "timestamp": 3.0, "partition_id": 0, "operation_name": "a", "operation_idx": 0}"#,
            r#"{"event_type": "op_complete", "timestamp": 4.0, "partition_id": 0}"#,
            r#"{"event_type": "partition_complete", "timestamp": 5.0, "partition_id": 0, "metadata": {"success": true, "duration_seconds": 3.0, "output_path": "/o/0"}}"#,
            r#"{"event_type": "partition_failed", "timestamp": 5.5, "partition_id": 1}"#,
            r#"{"event_type": "partition_complete", "timestamp": 6.0, "partition_id": 1, "metadata": {"success": false, "error": "boom"}}"#,
            r#"{"event_type": "checkpoint_save", "timestamp": 7.0, "partition_id": 1, "metadata": {"checkpoint_path": "/c/1"}}"#,
            r#"{"event_type": "partition_start", "timestamp": 8.0, "partition_id": 0}"#,
        ]
        .iter()
        .map(|l| line(l))
        .collect()
    }

    #[test]
    fn folds_partitions_like_the_reference() {
        let analysis = analyze_bytes(sample_log().as_bytes());
        assert_eq!(analysis.total_events, 10);
        assert_eq!(analysis.job_status(), "completed_with_failures");
        assert_eq!(analysis.first_job_start, Some(Some("1.0".to_string())));
        assert_eq!(
            analysis.latest_checkpoint(),
            Some(&Some("\"/c/1\"".to_string()))
        );
        let partitions = analysis.partitions();
        assert_eq!(
            partitions.iter().map(|p| p.id.as_str()).collect::<Vec<_>>(),
            ["0", "1"]
        );
        let first = partitions[0];
        assert_eq!(first.status(), "completed");
        assert_eq!(first.start_time().as_deref(), Some("8.0"));
        assert!(first.last_op_completed());
        assert_eq!(
            first.last_op_start().unwrap().name.as_deref(),
            Some("\"a\"")
        );
        let second = partitions[1];
        assert_eq!(second.status(), "failed");
        assert_eq!(second.failure_count, 1);
        assert_eq!(
            second.latest_complete().unwrap().error.as_deref(),
            Some("\"boom\"")
        );
    }

    #[test]
    fn chunked_folding_equals_one_pass() {
        let log = sample_log().repeat(50);
        let whole = analyze_chunk(0, log.as_bytes());
        for parts in 2..6 {
            let chunks = split_at_lines(log.as_bytes(), parts);
            assert_eq!(chunks.concat(), log.as_bytes());
            let mut merged = analyze_chunk(0, chunks[0]);
            for (i, chunk) in chunks.iter().enumerate().skip(1) {
                merged.merge_later(analyze_chunk(i, chunk));
            }
            assert_eq!(merged.total_events, whole.total_events);
            let ids = |a: &Analysis| {
                a.partitions()
                    .iter()
                    .map(|p| (p.id.clone(), p.start_time()))
                    .collect::<Vec<_>>()
            };
            assert_eq!(ids(&merged), ids(&whole));
        }
    }

    #[test]
    fn ties_keep_the_first_maximum() {
        let log = [
            r#"{"event_type": "partition_start", "timestamp": 1, "partition_id": 3}"#,
            r#"{"event_type": "op_start", "timestamp": 2, "partition_id": 3, "operation_name": "first"}"#,
            r#"{"event_type": "op_start", "timestamp": 2, "partition_id": 3.0, "operation_name": "second"}"#,
        ]
        .map(line)
        .concat();
        let analysis = analyze_bytes(log.as_bytes());
        let op = analysis.partitions()[0]
            .last_op_start()
            .unwrap()
            .name
            .clone();
        assert_eq!(op.as_deref(), Some("\"first\""));
    }

    #[test]
    fn broken_and_partial_lines_are_skipped() {
        let log = format!(
            "{}\n\nnot json\n{}\n{{\"event_type\": \"job_comp",
            r#"{"event_type": "job_start", "timestamp": NaN, "metadata": {"x": -Infinity, "s": "NaN"}}"#,
            r#"{"event_type": "op_start"}"#
        );
        let analysis = analyze_bytes(log.as_bytes());
        assert_eq!(analysis.total_events, 2);
        assert_eq!(analysis.first_job_start, Some(Some("null".to_string())));
        assert!(!analysis.has_job_complete);
        assert_eq!(analysis.job_status(), "not_started");
    }

    #[test]
    fn truthiness_follows_python() {
        for falsy in ["null", "false", "0", "0.0", "\"\"", "[]", "{ }", "-0"] {
            assert!(!raw_truthy(falsy), "{falsy}");
        }
        for truthy in ["true", "1", "0.5", "\"x\"", "[0]", "{\"a\": 1}"] {
            assert!(raw_truthy(truthy), "{truthy}");
        }
    }

    #[test]
    fn event_type_lookup_reads_whole_lines_only() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("events.jsonl");
        assert!(!file_has_event_type(&path, "job_complete").unwrap());
        std::fs::write(
            &path,
            "{\"event_type\": \"job_start\"}\n{\"event_type\": \"job_complete\"",
        )
        .unwrap();
        assert!(!file_has_event_type(&path, "job_complete").unwrap());
        std::fs::write(&path, "{\"event_type\": \"job_complete\"}\n").unwrap();
        assert!(file_has_event_type(&path, "job_complete").unwrap());
    }
}
