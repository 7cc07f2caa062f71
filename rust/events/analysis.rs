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

use serde::de::{self, IgnoredAny, MapAccess, Visitor};
use serde::{Deserialize, Deserializer};
use serde_json::value::RawValue;
use std::borrow::Cow;
use std::collections::HashMap;
use std::io;
use std::path::Path;

use super::lines;

/// Event types counted as checkpoints: the reference looks for
/// `checkpoint_saved`, which nothing writes; `checkpoint_save` is what
/// `log_checkpoint_save` actually logs.
pub const CHECKPOINT_EVENT_TYPES: [&str; 2] = ["checkpoint_saved", "checkpoint_save"];

/// The fields of one event line the analysis reads, as raw JSON; `null` is
/// kept as `Some("null")` so that "missing" and "null" stay distinct, as in
/// Python. A key given twice keeps its last value, as `json.loads` does.
#[derive(Default)]
struct LineFields<'a> {
    event_type: Option<&'a RawValue>,
    timestamp: Option<&'a RawValue>,
    partition_id: Option<&'a RawValue>,
    operation_name: Option<&'a RawValue>,
    operation_idx: Option<&'a RawValue>,
    metadata: Option<&'a RawValue>,
}

impl<'a> Slots<'a> for LineFields<'a> {
    fn slot(&mut self, key: &str) -> Option<&mut Option<&'a RawValue>> {
        Some(match key {
            "event_type" => &mut self.event_type,
            "timestamp" => &mut self.timestamp,
            "partition_id" => &mut self.partition_id,
            "operation_name" => &mut self.operation_name,
            "operation_idx" => &mut self.operation_idx,
            "metadata" => &mut self.metadata,
            _ => return None,
        })
    }
}

#[derive(Default)]
struct MetadataFields<'a> {
    success: Option<&'a RawValue>,
    error: Option<&'a RawValue>,
    duration_seconds: Option<&'a RawValue>,
    output_path: Option<&'a RawValue>,
    checkpoint_path: Option<&'a RawValue>,
}

impl<'a> Slots<'a> for MetadataFields<'a> {
    fn slot(&mut self, key: &str) -> Option<&mut Option<&'a RawValue>> {
        Some(match key {
            "success" => &mut self.success,
            "error" => &mut self.error,
            "duration_seconds" => &mut self.duration_seconds,
            "output_path" => &mut self.output_path,
            "checkpoint_path" => &mut self.checkpoint_path,
            _ => return None,
        })
    }
}

/// An object key, borrowed from the line unless it has escapes
/// (`"event\u005ftype"` is `event_type` to `json.loads` too).
struct Key<'a>(Cow<'a, str>);

impl<'de> Deserialize<'de> for Key<'de> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct KeyVisitor;
        impl<'de> Visitor<'de> for KeyVisitor {
            type Value = Key<'de>;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("an object key")
            }
            fn visit_borrowed_str<E: de::Error>(self, key: &'de str) -> Result<Key<'de>, E> {
                Ok(Key(Cow::Borrowed(key)))
            }
            fn visit_str<E: de::Error>(self, key: &str) -> Result<Key<'de>, E> {
                Ok(Key(Cow::Owned(key.to_string())))
            }
        }
        deserializer.deserialize_str(KeyVisitor)
    }
}

/// Deserialises an object into `T`'s raw-value slots, last key winning;
/// keys `T` does not read are skipped without being built.
struct SlotsVisitor<T>(std::marker::PhantomData<T>);

/// A struct of raw-value slots, one per key the analysis reads.
trait Slots<'a>: Default {
    fn slot(&mut self, key: &str) -> Option<&mut Option<&'a RawValue>>;
}

impl<'de, T: Slots<'de>> Visitor<'de> for SlotsVisitor<T> {
    type Value = T;
    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a JSON object")
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<T, A::Error> {
        let mut fields = T::default();
        while let Some(Key(key)) = map.next_key::<Key<'de>>()? {
            match fields.slot(&key) {
                Some(slot) => *slot = Some(map.next_value::<&'de RawValue>()?),
                None => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        Ok(fields)
    }
}

impl<'de> Deserialize<'de> for LineFields<'de> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_map(SlotsVisitor(std::marker::PhantomData))
    }
}

impl<'de> Deserialize<'de> for MetadataFields<'de> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_map(SlotsVisitor(std::marker::PhantomData))
    }
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

/// A partition id as a dictionary key (`None` for `null`). Strings are
/// keyed by their value (`"\u0061"` is `"a"`), integers by their digits;
/// anything else by its text, which only matters for ids that never start a
/// partition (see [`Analysis::is_regular`]).
fn partition_key(value: &RawValue) -> Option<String> {
    let text = value.get();
    match text.as_bytes().first() {
        Some(b'n') => None,
        Some(b'"') if text.contains('\\') => serde_json::from_str::<String>(text)
            .ok()
            .map(|s| format!("s{s}")),
        Some(b'"') => Some(format!("s{}", &text[1..text.len() - 1])),
        _ => match text.parse::<i64>() {
            Ok(number) => Some(format!("v{number}")), // -0 is 0
            Err(_) => Some(format!("v{text}")),
        },
    }
}

/// Whether `text` is an integer literal that Python and an `f64` read alike.
fn is_exact_integer(text: &str) -> bool {
    let digits = text.strip_prefix('-').unwrap_or(text);
    !digits.is_empty() && digits.len() <= 15 && digits.bytes().all(|b| b.is_ascii_digit())
}

/// Whether `text` is a number literal (a float, or an exact integer).
fn is_plain_number(text: &str) -> bool {
    is_exact_integer(text)
        || (text.bytes().any(|b| matches!(b, b'.' | b'e' | b'E')) && text.parse::<f64>().is_ok())
}

/// Nesting up to this depth converts to Python here (serde's own limit
/// is 128).
const MAX_CONVERTED_DEPTH: usize = 100;

/// Whether a value passed through to Python converts exactly: no integer
/// of more than 15 digits (read as a float on the way), no `\uD8xx`..
/// `\uDFxx` escape (a lone surrogate fails to convert), no nesting deeper
/// than [`MAX_CONVERTED_DEPTH`] (brackets inside strings count: a false
/// "no" only sends the log to Python).
fn converts_exactly(value: Option<&RawValue>) -> bool {
    let Some(text) = value.map(RawValue::get) else {
        return true;
    };
    let bytes = text.as_bytes();
    let (mut digits, mut depth) = (0, 0usize);
    for (i, byte) in bytes.iter().enumerate() {
        digits = if byte.is_ascii_digit() { digits + 1 } else { 0 };
        match byte {
            b'[' | b'{' => depth += 1,
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
        if digits > 15 || depth > MAX_CONVERTED_DEPTH {
            return false;
        }
        if *byte == b'u'
            && i > 0
            && bytes[i - 1] == b'\\'
            && matches!(bytes.get(i + 1), Some(b'd' | b'D'))
            && matches!(
                bytes.get(i + 2),
                Some(b'8'..=b'9' | b'a'..=b'f' | b'A'..=b'F')
            )
        {
            return false;
        }
    }
    true
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
        assert!(
            analysis.needs_reference_reading(),
            "NaN is Python's to read"
        );
        let log = log.replace("NaN", "1.5").replace("-Infinity", "2");
        let analysis = analyze_bytes(log.as_bytes());
        assert!(!analysis.needs_reference_reading());
        assert_eq!(analysis.total_events, 2);
        assert_eq!(analysis.first_job_start, Some(Some("1.5".to_string())));
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
    fn event_type_lookup_reads_as_check_job_completion() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("events.jsonl");
        let has = |text: &str| {
            std::fs::write(&path, text).unwrap();
            file_has_event_type(&path, "job_complete").unwrap()
        };
        assert_eq!(
            file_has_event_type(&path, "job_complete").unwrap(),
            Some(false)
        );
        assert_eq!(
            has("{\"event_type\": \"job_start\"}\n{\"event_type\": \"job_complete\""),
            Some(false)
        );
        assert_eq!(
            has("\n  \n{\"event_type\": \"job_complete\"}\n"),
            Some(true)
        );
        // Lines every reader skips do not end the reading.
        assert_eq!(
            has("oops\n[1]\n5\n{\"event_type\": \"job_complete\"}\n"),
            Some(true)
        );
        // The last of duplicate keys wins, escaped keys are keys.
        let dup = r#"{"event_type": "job_start", "event_type": "job_complete"}"#;
        assert_eq!(has(&format!("{dup}\n")), Some(true));
        let dup = r#"{"event_type": "job_complete", "event_type": "job_start"}"#;
        assert_eq!(has(&format!("{dup}\n")), Some(false));
        assert_eq!(
            has("{\"event\\u005ftype\": \"job_complete\"}\n"),
            Some(true)
        );
        // Skipped lines do not hide a later event.
        assert_eq!(has("[1]\n{\"event_type\": \"job_complete\"}\n"), Some(true));
        let deep = format!("{}{}\n", "[".repeat(1000), "]".repeat(1000));
        assert_eq!(has(&deep), Some(false));
        assert_eq!(
            has("{\"a\": 1}\r{\"event_type\": \"job_complete\"}\n"),
            Some(true)
        );
        // Only Python reads NaN as the reference does.
        assert_eq!(has("{\"x\": NaN}\n"), None);
        assert_eq!(
            has("{\"x\": NaN}\n{\"event_type\": \"job_complete\"}\n"),
            Some(true)
        );
    }

    #[test]
    fn duplicate_keys_keep_the_last_value() {
        let log = [
            r#"{"event_type": "job_start", "event_type": "partition_start", "partition_id": 7, "timestamp": 1}"#,
            r#"{"event_type": "partition_complete", "partition_id": 7, "timestamp": 2, "metadata": {"success": false, "success": true}, "metadata": {"success": true, "success": 1}}"#,
        ]
        .map(line)
        .concat();
        let analysis = analyze_bytes(log.as_bytes());
        assert!(!analysis.needs_reference_reading());
        assert_eq!(analysis.first_job_start, None);
        let partitions = analysis.partitions();
        assert_eq!(partitions.len(), 1);
        assert_eq!(partitions[0].status(), "completed");
        assert_eq!(
            partitions[0].latest_complete().unwrap().success.as_deref(),
            Some("1")
        );
    }

    /// Lines whose reading in the reference only Python reproduces (an
    /// exception, Python's equalities, deep nesting) are flagged, not
    /// guessed; ordinary oddities are read here.
    #[test]
    fn lines_only_python_reads_alike_are_flagged() {
        let flagged = |json: &str| analyze_bytes(line(json).as_bytes()).needs_reference_reading();
        for irregular in [
            r#"{"event_type": "partition_start", "partition_id": [1]}"#,
            r#"{"event_type": "partition_start", "partition_id": true}"#,
            r#"{"event_type": "op_start", "partition_id": 1.0}"#,
            r#"{"event_type": "op_start", "partition_id": 1, "timestamp": "soon"}"#,
            r#"{"event_type": "partition_complete", "metadata": null}"#,
            r#"{"event_type": "partition_complete", "metadata": {"duration_seconds": 12345678901234567890}}"#,
            r#"{"event_type": "checkpoint_save", "metadata": [1]}"#,
            r#"{"event_type": "job_start", "timestamp": NaN}"#,
        ] {
            assert!(flagged(irregular), "{irregular}");
        }
        // Deeper than is converted here, not deeper than every reader reads.
        let nested = |depth| format!("{}1{}", "[".repeat(depth), "]".repeat(depth));
        let deep = format!(
            r#"{{"event_type": "partition_complete", "partition_id": 1, "metadata": {{"output_path": {}}}}}"#,
            nested(200)
        );
        assert!(flagged(&deep));
        assert!(!flagged(&format!(
            r#"{{"event_type": "job_start", "x": {}}}"#,
            nested(200)
        )));
        for regular in [
            r#"{"event_type": "op_start", "partition_id": [1]}"#,
            r#"{"event_type": ["job_complete"]}"#,
            r#"{"event_type": "partition_start", "partition_id": "p", "timestamp": 1e3}"#,
            r#"{"event_type": "partition_complete", "partition_id": 1, "metadata": {"success": "yes"}}"#,
        ] {
            assert!(!flagged(regular), "{regular}");
        }
    }

    /// Lines no reader reads are skipped, the rest read as without them.
    #[test]
    fn unreadable_lines_are_skipped_as_if_removed() {
        let clean = sample_log();
        // Deeper than every reader reads, though serde alone would read it.
        let deep = format!(
            "{{\"event_type\": \"job_complete\", \"a\": {}1{}}}",
            "[".repeat(300),
            "]".repeat(300)
        );
        let big = format!(
            "{{\"event_type\": \"job_complete\", \"n\": {}}}",
            "7".repeat(5000)
        );
        let cut = "{\"event_type\": \"job_complete\", \"message\": \"\u{4e2d}\"}";
        let cut = &cut.as_bytes()[..cut.len() - 4];
        let hostile: [&[u8]; 9] = [
            b"\xff\xfe\x00garbage",
            b"{\"event_type\": \"job_complete\", \"m\": \"\xe4\xb8\"}",
            b"[1, 2]",
            b"\"text\"",
            b"null",
            b"not json",
            deep.as_bytes(),
            big.as_bytes(),
            cut,
        ];
        let expected = analyze_bytes(clean.as_bytes());
        let lines: Vec<&str> = clean.lines().collect();
        for (i, bad) in hostile.iter().enumerate() {
            let mut log = Vec::new();
            for (j, line) in lines.iter().enumerate() {
                if j == i % lines.len() {
                    log.extend_from_slice(bad);
                    log.push(b'\n');
                }
                log.extend_from_slice(line.as_bytes());
                log.push(b'\n');
            }
            log.extend_from_slice(bad); // and as a last line without a newline
            let got = analyze_bytes(&log);
            assert!(!got.needs_reference_reading(), "{i}");
            assert_eq!(got.total_events, expected.total_events, "{i}");
            assert_eq!(got.job_status(), expected.job_status(), "{i}");
            let ids = |a: &Analysis| {
                a.partitions()
                    .iter()
                    .map(|p| (p.id.clone(), p.status(), p.start_time()))
                    .collect::<Vec<_>>()
            };
            assert_eq!(ids(&got), ids(&expected), "{i}");
        }
    }

    #[test]
    fn partition_ids_are_keyed_as_python_keys_them() {
        let log = [
            r#"{"event_type": "partition_start", "timestamp": 1, "partition_id": "a"}"#,
            r#"{"event_type": "partition_failed", "timestamp": 2, "partition_id": "\u0061"}"#,
            r#"{"event_type": "partition_start", "timestamp": 1, "partition_id": 0}"#,
            r#"{"event_type": "partition_failed", "timestamp": 2, "partition_id": -0}"#,
        ]
        .map(line)
        .concat();
        let analysis = analyze_bytes(log.as_bytes());
        assert!(!analysis.needs_reference_reading());
        let counts: Vec<u64> = analysis
            .partitions()
            .iter()
            .map(|p| p.failure_count)
            .collect();
        assert_eq!(counts, [1, 1]);
    }
}
