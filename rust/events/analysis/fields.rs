//! The fields of an event line the analysis reads, taken from the line as
//! raw JSON text (values round-trip exactly), and what Python would make of
//! them: truthiness, timestamps, partition keys, event types.

use serde::de::{self, IgnoredAny, MapAccess, Visitor};
use serde::{Deserialize, Deserializer};
use serde_json::value::RawValue;
use std::borrow::Cow;

/// The fields of one event line the analysis reads, as raw JSON; `null` is
/// kept as `Some("null")` so that "missing" and "null" stay distinct, as in
/// Python. A key given twice keeps its last value, as `json.loads` does.
#[derive(Default)]
pub(super) struct LineFields<'a> {
    pub(super) event_type: Option<&'a RawValue>,
    pub(super) timestamp: Option<&'a RawValue>,
    pub(super) partition_id: Option<&'a RawValue>,
    pub(super) operation_name: Option<&'a RawValue>,
    pub(super) operation_idx: Option<&'a RawValue>,
    pub(super) metadata: Option<&'a RawValue>,
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
pub(super) struct MetadataFields<'a> {
    pub(super) success: Option<&'a RawValue>,
    pub(super) error: Option<&'a RawValue>,
    pub(super) duration_seconds: Option<&'a RawValue>,
    pub(super) output_path: Option<&'a RawValue>,
    pub(super) checkpoint_path: Option<&'a RawValue>,
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

pub(super) fn raw(value: Option<&RawValue>) -> Raw {
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
pub(super) fn timestamp_value(value: Option<&RawValue>) -> f64 {
    value
        .and_then(|v| v.get().parse::<f64>().ok())
        .unwrap_or(0.0)
}

/// A partition id as a dictionary key (`None` for `null`). Strings are
/// keyed by their value (`"\u0061"` is `"a"`), integers by their digits;
/// anything else by its text, which only matters for ids that never start a
/// partition (see [`Analysis::is_regular`]).
pub(super) fn partition_key(value: &RawValue) -> Option<String> {
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
pub(super) fn is_exact_integer(text: &str) -> bool {
    let digits = text.strip_prefix('-').unwrap_or(text);
    !digits.is_empty() && digits.len() <= 15 && digits.bytes().all(|b| b.is_ascii_digit())
}

/// Whether `text` is a number literal (a float, or an exact integer).
pub(super) fn is_plain_number(text: &str) -> bool {
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
pub(super) fn converts_exactly(value: Option<&RawValue>) -> bool {
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

pub(super) fn event_type_of<'a>(value: Option<&'a RawValue>) -> Option<Cow<'a, str>> {
    let text = value?.get();
    let inner = text.strip_prefix('"')?.strip_suffix('"')?;
    if inner.contains('\\') {
        serde_json::from_str::<String>(text).ok().map(Cow::Owned)
    } else {
        Some(Cow::Borrowed(inner))
    }
}
