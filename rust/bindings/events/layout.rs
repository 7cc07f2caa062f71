//! `EventLayout`: the `Event` dataclass as a sink sees it: its fields in
//! declaration order, who provides each value on the fast path, and how an
//! `Event` object is built from the values without running `__init__`.

use pyo3::intern;
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyString, PyType};

use super::made::Made;
use crate::events::json::write_str;

/// Who provides a field's value on the fast path.
#[derive(Clone, Copy, PartialEq)]
pub(super) enum Role {
    /// The caller's keyword argument, or None.
    Plain,
    /// The caller's, or generated when absent or None.
    EventId,
    /// Always the logger's job id.
    JobId,
    // Made by the call itself; a keyword of that name is a TypeError.
    EventType,
    Timestamp,
    Message,
    ProcessId,
    ThreadId,
}

impl Role {
    fn of(field: &str) -> Role {
        match field {
            "event_id" => Role::EventId,
            "job_id" => Role::JobId,
            "event_type" => Role::EventType,
            "timestamp" => Role::Timestamp,
            "message" => Role::Message,
            "process_id" => Role::ProcessId,
            "thread_id" => Role::ThreadId,
            _ => Role::Plain,
        }
    }
}

/// The `Event` class of one sink and its fields.
pub(super) struct EventLayout {
    event_class: Py<PyType>,
    object_new: Py<PyAny>,
    /// `Event`'s field names in declaration order.
    fields: Vec<Py<PyString>>,
    /// `"name": ` per field, as the line spells it.
    pub(super) member_prefixes: Vec<Vec<u8>>,
    pub(super) roles: Vec<Role>,
    /// `{field: None for field in fields}`, copied for each event's `__dict__`.
    none_fields: Py<PyDict>,
}

impl EventLayout {
    pub(super) fn new(
        py: Python<'_>,
        event_class: Bound<'_, PyType>,
        fields: Vec<Bound<'_, PyString>>,
    ) -> PyResult<Self> {
        let object_new = py
            .get_type::<PyAny>()
            .getattr(intern!(py, "__new__"))?
            .unbind();
        let field_names = fields
            .iter()
            .map(|f| f.to_str().map(str::to_owned))
            .collect::<PyResult<Vec<_>>>()?;
        let none_fields = PyDict::new(py);
        let mut interned = Vec::with_capacity(field_names.len());
        for name in &field_names {
            let key = PyString::intern(py, name);
            none_fields.set_item(&key, py.None())?;
            interned.push(key.unbind());
        }
        Ok(EventLayout {
            event_class: event_class.unbind(),
            object_new,
            roles: field_names.iter().map(|name| Role::of(name)).collect(),
            member_prefixes: field_names.iter().map(|name| member_prefix(name)).collect(),
            fields: interned,
            none_fields: none_fields.unbind(),
        })
    }

    /// The caller's keyword values by field, `None` left out; or `None`
    /// when a name is one `Event()` rejects or one the call makes itself.
    pub(super) fn caller_values<'py>(
        &self,
        py: Python<'py>,
        keywords: impl Iterator<Item = (Bound<'py, PyAny>, Bound<'py, PyAny>)>,
    ) -> Option<Vec<Option<Py<PyAny>>>> {
        let mut values: Vec<Option<Py<PyAny>>> = Vec::with_capacity(self.roles.len());
        values.resize_with(self.roles.len(), || None);
        for (key, value) in keywords {
            let index = self.field_index(py, &key)?;
            match self.roles[index] {
                Role::Plain | Role::EventId if !value.is_none() => {
                    values[index] = Some(value.unbind())
                }
                Role::Plain | Role::EventId => {}
                Role::JobId => {} // overwritten by log_event in the reference
                _computed => return None,
            }
        }
        Some(values)
    }

    fn field_index(&self, py: Python<'_>, key: &Bound<'_, PyAny>) -> Option<usize> {
        // Keyword names are usually the interned strings themselves.
        if let Some(index) = self.fields.iter().position(|f| f.bind(py).is(key)) {
            return Some(index);
        }
        let key = key.cast::<PyString>().ok()?.to_str().ok()?;
        self.fields
            .iter()
            .position(|f| f.bind(py).to_str().is_ok_and(|name| name == key))
    }

    /// Every field's value, in declaration order: the caller's and those
    /// `made` by the call.
    pub(super) fn field_values(
        &self,
        py: Python<'_>,
        values: &[Option<Py<PyAny>>],
        made: &Made,
    ) -> PyResult<Vec<Option<Py<PyAny>>>> {
        values
            .iter()
            .zip(&self.roles)
            .map(|(value, &role)| match value {
                Some(value) => Ok(Some(value.clone_ref(py))),
                None => Ok(made.value(py, role)?.map(Bound::unbind)),
            })
            .collect()
    }

    /// An `Event` whose `__dict__` is `{field: value}` for every field, in
    /// declaration order, as `Event(...)` would make it.
    pub(super) fn build_event<'py>(
        &self,
        py: Python<'py>,
        values: impl IntoIterator<Item = Option<Py<PyAny>>>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let dict = self.none_fields.bind(py).copy()?;
        for (field, value) in self.fields.iter().zip(values) {
            if let Some(value) = value {
                dict.set_item(field.bind(py), value)?;
            }
        }
        let event = self
            .object_new
            .bind(py)
            .call1((self.event_class.bind(py),))?;
        event.setattr(intern!(py, "__dict__"), dict)?;
        Ok(event)
    }
}

/// `"name": `, as `json.dumps` writes a member's key.
fn member_prefix(name: &str) -> Vec<u8> {
    let mut prefix = Vec::with_capacity(name.len() + 4);
    write_str(&mut prefix, name);
    prefix.extend_from_slice(b": ");
    prefix
}
