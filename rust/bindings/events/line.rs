//! The JSON line of one event, byte for byte as the reference's
//! `json.dumps` writes it, serialised in the calling thread into a buffer
//! the writer lends (`EventWriter::line_buffer`).

use pyo3::intern;
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyString};

use super::json_encoder::{encode, enum_value, write_member, StableItems};
use super::kinds::{EventKind, DURABLE_EVENT_TYPES};
use super::layout::{EventLayout, Role};
use super::made::Made;

/// The line of a fast-path event: fields in declaration order, `None` left
/// out as the reference does.
pub(super) fn fields_line(
    py: Python<'_>,
    mut line: Vec<u8>,
    layout: &EventLayout,
    values: &[Option<Py<PyAny>>],
    made: &Made,
    kind: &EventKind,
) -> PyResult<Vec<u8>> {
    line.push(b'{');
    for (index, (value, &role)) in values.iter().zip(&layout.roles).enumerate() {
        let value = value.as_ref().map(|v| v.bind(py));
        let made_here = made.has(role);
        if role != Role::EventType && !made_here && value.is_none_or(|v| v.is_none()) {
            continue;
        }
        if line.len() > 1 {
            line.extend_from_slice(b", ");
        }
        line.extend_from_slice(&layout.member_prefixes[index]);
        if role == Role::EventType {
            line.extend_from_slice(&kind.json);
        } else if made_here {
            made.write(&mut line, role);
        } else if let Some(value) = value {
            encode(py, &mut line, value, 0)?;
        }
    }
    line.extend_from_slice(b"}\n");
    Ok(line)
}

/// The line of an `Event` object: the non-`None` entries of its
/// `__dict__`, enums as their value; and whether it is a job-level event.
pub(super) fn object_line(
    py: Python<'_>,
    mut line: Vec<u8>,
    event: &Bound<'_, PyAny>,
) -> PyResult<(Vec<u8>, bool)> {
    let dict = event.getattr(intern!(py, "__dict__"))?;
    let dict = dict.cast::<PyDict>()?;
    line.push(b'{');
    let mut first = true;
    let mut durable = false;
    let items = StableItems::of(dict);
    for item in items.list.iter() {
        let (key, value) = item.extract::<(Bound<'_, PyAny>, Bound<'_, PyAny>)>()?;
        if value.is_none() {
            continue;
        }
        let key = key.str()?;
        let key = key.to_str()?;
        if key == "event_type" {
            let type_value = enum_value(py, &value)?;
            if let Ok(name) = type_value.cast::<PyString>() {
                durable = DURABLE_EVENT_TYPES.contains(&name.to_str()?);
            }
        }
        write_member(py, &mut line, &mut first, key, &value)?;
        items.check_unchanged()?;
    }
    line.extend_from_slice(b"}\n");
    Ok((line, durable))
}
