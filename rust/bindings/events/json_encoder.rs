//! Python values written as JSON, as `json.dumps` writes them.

use pyo3::exceptions::PyTypeError;
use pyo3::intern;
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyBool, PyDict, PyFloat, PyInt, PyList, PyString, PyTuple, PyType};

use crate::events::json::{write_f64, write_i64, write_str};

/// Containers nested deeper than this are written as `str(value)`, which
/// also ends self-referencing structures (where `json.dumps` raises).
const MAX_DEPTH: usize = 200;

static ENUM_TYPE: PyOnceLock<Py<PyType>> = PyOnceLock::new();
static JSON_DUMPS: PyOnceLock<Py<PyAny>> = PyOnceLock::new();

pub(super) fn enum_type(py: Python<'_>) -> PyResult<&Bound<'_, PyType>> {
    ENUM_TYPE.import(py, "enum", "Enum")
}

/// `value.value` for an `Enum` member, else `value`. Members keep it in
/// `_value_`, an instance attribute; `.value` is a slower Python property.
pub(super) fn enum_value<'py>(
    py: Python<'py>,
    value: &Bound<'py, PyAny>,
) -> PyResult<Bound<'py, PyAny>> {
    if value.is_instance(enum_type(py)?)? {
        match value.getattr(intern!(py, "_value_")) {
            Ok(inner) => Ok(inner),
            Err(_) => value.getattr(intern!(py, "value")),
        }
    } else {
        Ok(value.clone())
    }
}

pub(super) fn write_member(
    py: Python<'_>,
    out: &mut Vec<u8>,
    first: &mut bool,
    key: &str,
    value: &Bound<'_, PyAny>,
) -> PyResult<()> {
    if !*first {
        out.extend_from_slice(b", ");
    }
    *first = false;
    write_str(out, key);
    out.extend_from_slice(b": ");
    encode(py, out, value, 0)
}

/// A dict's items, listed before any of them is written: writing a value
/// may run its `__str__`, which may change the dict.
pub(super) struct StableItems<'a, 'py> {
    dict: &'a Bound<'py, PyDict>,
    pub(super) list: Bound<'py, PyList>,
}

impl<'a, 'py> StableItems<'a, 'py> {
    pub(super) fn of(dict: &'a Bound<'py, PyDict>) -> Self {
        StableItems {
            dict,
            list: dict.items(),
        }
    }

    /// A `TypeError` once the dict changed size: only a value that is not
    /// JSON (one whose `str()` is written) can change it, and the reference
    /// raises `TypeError` for such a value.
    pub(super) fn check_unchanged(&self) -> PyResult<()> {
        if self.dict.len() == self.list.len() {
            return Ok(());
        }
        Err(PyTypeError::new_err(
            "a value being written as JSON changed the dictionary holding it",
        ))
    }
}

/// Writes `value` as `json.dumps` would; where `json.dumps` raises
/// (sets, custom objects, non-string keys it cannot convert, cycles) the
/// value's `str()` is written instead. Enums are written as their value.
pub(super) fn encode(
    py: Python<'_>,
    out: &mut Vec<u8>,
    value: &Bound<'_, PyAny>,
    depth: usize,
) -> PyResult<()> {
    // The order of checks follows the C encoder of the json module.
    if let Ok(text) = value.cast::<PyString>() {
        return encode_str(py, out, text);
    }
    if value.is_none() {
        out.extend_from_slice(b"null");
    } else if let Ok(flag) = value.cast::<PyBool>() {
        out.extend_from_slice(if flag.is_true() { b"true" } else { b"false" });
    } else if let Ok(int) = value.cast::<PyInt>() {
        encode_int(py, out, int)?;
    } else if let Ok(float) = value.cast::<PyFloat>() {
        write_f64(out, float.value());
    } else if depth >= MAX_DEPTH {
        encode_str(py, out, &value.str()?)?;
    } else if let Ok(list) = value.cast::<PyList>() {
        encode_items(py, out, list.iter(), depth)?;
    } else if let Ok(tuple) = value.cast::<PyTuple>() {
        encode_items(py, out, tuple.iter(), depth)?;
    } else if let Ok(dict) = value.cast::<PyDict>() {
        out.push(b'{');
        encode_dict(py, out, dict, depth)?;
        out.push(b'}');
    } else if value.is_instance(enum_type(py)?)? {
        encode(py, out, &enum_value(py, value)?, depth + 1)?;
    } else {
        encode_str(py, out, &value.str()?)?;
    }
    Ok(())
}

/// A dict's items, without the braces. Leading plain items (a string key,
/// a JSON scalar value) are written straight from the dict: writing them
/// runs no Python code, so nothing can change the dict meanwhile, and no
/// list of items is built (most event dicts, such as `op_args`, are all
/// plain). From the first other item on, the rest come from
/// [`StableItems`], as `json.dumps` iterates a list of the items, because
/// writing such a value may run its `__str__`, which may change the dict.
fn encode_dict(
    py: Python<'_>,
    out: &mut Vec<u8>,
    dict: &Bound<'_, PyDict>,
    depth: usize,
) -> PyResult<()> {
    let mut written = 0;
    for (key, item) in dict.iter() {
        let Some(key) = plain_str(&key) else { break };
        let before = out.len();
        if written > 0 {
            out.extend_from_slice(b", ");
        }
        write_str(out, key);
        out.extend_from_slice(b": ");
        if !write_plain_scalar(out, &item) {
            out.truncate(before);
            break;
        }
        written += 1;
    }
    if written == dict.len() {
        return Ok(());
    }
    // No Python code ran yet (a failed conversion above only made an
    // exception object): the items are still the ones just iterated.
    let items = StableItems::of(dict);
    for (i, item) in items.list.iter().enumerate().skip(written) {
        let (key, item) = item.extract::<(Bound<'_, PyAny>, Bound<'_, PyAny>)>()?;
        if i > 0 {
            out.extend_from_slice(b", ");
        }
        encode_key(py, out, &key)?;
        out.extend_from_slice(b": ");
        encode(py, out, &item, depth + 1)?;
        items.check_unchanged()?;
    }
    Ok(())
}

/// The UTF-8 of a string (subclasses included) that has one; `None` for
/// other objects and for strings with lone surrogates (which [`encode_str`]
/// hands to `json.dumps`, Python code).
fn plain_str<'a>(value: &'a Bound<'_, PyAny>) -> Option<&'a str> {
    value.cast::<PyString>().ok()?.to_str().ok()
}

/// Writes `value` as [`encode`] would and returns `true` when it is a JSON
/// scalar that needs no Python code (a string with a UTF-8 form, `None`, a
/// bool, an int that fits `i64`, a float); otherwise writes nothing and
/// returns `false`.
fn write_plain_scalar(out: &mut Vec<u8>, value: &Bound<'_, PyAny>) -> bool {
    if let Some(text) = plain_str(value) {
        write_str(out, text);
    } else if value.is_instance_of::<PyString>() {
        return false;
    } else if value.is_none() {
        out.extend_from_slice(b"null");
    } else if let Ok(flag) = value.cast::<PyBool>() {
        out.extend_from_slice(if flag.is_true() { b"true" } else { b"false" });
    } else if let Ok(int) = value.cast::<PyInt>() {
        let Ok(small) = int.extract::<i64>() else {
            return false;
        };
        write_i64(out, small);
    } else if let Ok(float) = value.cast::<PyFloat>() {
        write_f64(out, float.value());
    } else {
        return false;
    }
    true
}

fn encode_items<'py>(
    py: Python<'py>,
    out: &mut Vec<u8>,
    items: impl Iterator<Item = Bound<'py, PyAny>>,
    depth: usize,
) -> PyResult<()> {
    out.push(b'[');
    for (i, item) in items.enumerate() {
        if i > 0 {
            out.extend_from_slice(b", ");
        }
        encode(py, out, &item, depth + 1)?;
    }
    out.push(b']');
    Ok(())
}

/// Dictionary keys as `json.dumps` converts them.
fn encode_key(py: Python<'_>, out: &mut Vec<u8>, key: &Bound<'_, PyAny>) -> PyResult<()> {
    if let Ok(text) = key.cast::<PyString>() {
        return encode_str(py, out, text);
    }
    let text = if let Ok(float) = key.cast::<PyFloat>() {
        let mut digits = Vec::new();
        write_f64(&mut digits, float.value());
        String::from_utf8_lossy(&digits).into_owned()
    } else if key.is_none() {
        "null".to_string()
    } else if let Ok(flag) = key.cast::<PyBool>() {
        flag.is_true().to_string()
    } else if let Ok(int) = key.cast::<PyInt>() {
        let mut digits = Vec::new();
        encode_int(py, &mut digits, int)?;
        String::from_utf8_lossy(&digits).into_owned()
    } else {
        key.str()?.to_str()?.to_owned()
    };
    write_str(out, &text);
    Ok(())
}

/// `int.__repr__` (not the subclass's repr: `IntEnum` members are numbers).
fn encode_int(py: Python<'_>, out: &mut Vec<u8>, int: &Bound<'_, PyInt>) -> PyResult<()> {
    if let Ok(small) = int.extract::<i64>() {
        write_i64(out, small);
    } else {
        let repr = py
            .get_type::<PyInt>()
            .getattr(intern!(py, "__repr__"))?
            .call1((int,))?;
        out.extend_from_slice(repr.cast::<PyString>()?.to_str()?.as_bytes());
    }
    Ok(())
}

fn encode_str(py: Python<'_>, out: &mut Vec<u8>, text: &Bound<'_, PyString>) -> PyResult<()> {
    match text.to_str() {
        Ok(text) => write_str(out, text),
        Err(_) => {
            // Lone surrogates have no UTF-8 form; json.dumps escapes them.
            let dumps = JSON_DUMPS.get_or_try_init(py, || {
                PyResult::Ok(py.import("json")?.getattr("dumps")?.unbind())
            })?;
            let quoted = dumps.bind(py).call1((text,))?;
            out.extend_from_slice(quoted.cast::<PyString>()?.to_str()?.as_bytes());
        }
    }
    Ok(())
}
