//! `EventKinds`: what the fast path needs of each `EventType` member (its
//! name, its JSON, whether it is durable), worked out once per member and
//! read by every logging call without a lock.
//!
//! The table is a fixed array of `OnceLock` slots filled front to back and
//! never emptied while the sink lives: a lookup reads the filled slots (one
//! acquire load each) and compares addresses. Only the first sight of a
//! member writes a slot; two threads racing for one slot both move on, the
//! loser to the next.

use std::ops::Deref;
use std::sync::OnceLock;

use pyo3::prelude::*;
use pyo3::types::PyString;

use super::json_encoder::{encode, enum_type, enum_value};

/// Job-level events are fsynced before the logging call returns.
pub(super) const DURABLE_EVENT_TYPES: [&str; 4] =
    ["job_start", "job_complete", "job_failed", "job_restart"];

/// Event types remembered per sink; `EventType` has 26 members.
const MAX_EVENT_KINDS: usize = 64;

/// An event type as the fast path writes it, worked out once per member
/// rather than once per event (an `isinstance` and an attribute lookup).
pub(super) struct EventKind {
    /// The member itself, held so that its address stays its identity.
    member: Py<PyAny>,
    /// `str(member.value)`: the prefix of generated event ids.
    pub(super) name: String,
    /// `member.value` as JSON.
    pub(super) json: Vec<u8>,
    /// A job-level event, fsynced before the call returns.
    pub(super) durable: bool,
}

impl EventKind {
    fn of(py: Python<'_>, event_type: &Bound<'_, PyAny>) -> PyResult<Self> {
        let value = enum_value(py, event_type)?;
        let name = match value.cast::<PyString>() {
            Ok(text) => text.to_str()?.to_owned(),
            Err(_) => value.str()?.to_str()?.to_owned(),
        };
        let mut json = Vec::new();
        encode(py, &mut json, &value, 0)?;
        Ok(EventKind {
            member: event_type.clone().unbind(),
            durable: value.is_instance_of::<PyString>()
                && DURABLE_EVENT_TYPES.contains(&name.as_str()),
            name,
            json,
        })
    }

    fn is(&self, event_type: &Bound<'_, PyAny>) -> bool {
        self.member.as_ptr() == event_type.as_ptr()
    }
}

/// The kind of one call: the cached one, or one worked out for this call.
pub(super) enum KindOf<'a> {
    Cached(&'a EventKind),
    Uncached(EventKind),
}

impl Deref for KindOf<'_> {
    type Target = EventKind;

    fn deref(&self) -> &EventKind {
        match self {
            KindOf::Cached(kind) => kind,
            KindOf::Uncached(kind) => kind,
        }
    }
}

/// The kinds of the enum members a sink has logged.
pub(super) struct EventKinds {
    slots: [OnceLock<EventKind>; MAX_EVENT_KINDS],
}

impl EventKinds {
    pub(super) fn new() -> Self {
        EventKinds {
            slots: std::array::from_fn(|_| OnceLock::new()),
        }
    }

    /// The [`EventKind`] of `event_type`, worked out on first sight. Only
    /// enum members are cached: other values may be mutable.
    pub(super) fn of<'a>(
        &'a self,
        py: Python<'_>,
        event_type: &Bound<'_, PyAny>,
    ) -> PyResult<KindOf<'a>> {
        if let Some(kind) = self.find(event_type) {
            return Ok(KindOf::Cached(kind));
        }
        let kind = EventKind::of(py, event_type)?;
        if !event_type.is_instance(enum_type(py)?)? {
            return Ok(KindOf::Uncached(kind));
        }
        match self.insert(kind) {
            Some(cached) => Ok(KindOf::Cached(cached)),
            None => Ok(KindOf::Uncached(EventKind::of(py, event_type)?)),
        }
    }

    fn find(&self, event_type: &Bound<'_, PyAny>) -> Option<&EventKind> {
        self.slots
            .iter()
            .map_while(OnceLock::get)
            .find(|kind| kind.is(event_type))
    }

    /// Caches `kind` in the first free slot and returns the cached one
    /// (another thread's, if it cached the member meanwhile); `None` when
    /// the table is full.
    fn insert(&self, mut kind: EventKind) -> Option<&EventKind> {
        let member = kind.member.as_ptr();
        for slot in &self.slots {
            match slot.set(kind) {
                Ok(()) => return slot.get(),
                Err(refused) => kind = refused,
            }
            let cached = slot.get().filter(|cached| cached.member.as_ptr() == member);
            if cached.is_some() {
                return cached;
            }
        }
        None
    }
}
