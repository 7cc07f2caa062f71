//! The Rust analysis of a JSONL log, as the Python values the reference's
//! `analyze_resumption_state` computes.

use std::path::PathBuf;

use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::{PyBool, PyDict, PyFloat, PyList, PyString};

use crate::bindings::lifecycle::gil::{detach, guarded};
use crate::events::analysis::{self, Analysis, PartitionState, Raw};
use crate::events::lines;

use super::errors::io_os_error;

/// Parses raw JSON (kept by the analysis) into the Python value
/// `json.loads` would give; `None` (absent) becomes `default`.
fn raw_to_py<'py>(
    py: Python<'py>,
    raw: &Raw,
    default: Bound<'py, PyAny>,
) -> PyResult<Bound<'py, PyAny>> {
    match raw {
        None => Ok(default),
        Some(text) => {
            let value: serde_json::Value =
                serde_json::from_str(text).map_err(|e| PyValueError::new_err(e.to_string()))?;
            json_to_py(py, &value)
        }
    }
}

fn json_to_py<'py>(py: Python<'py>, value: &serde_json::Value) -> PyResult<Bound<'py, PyAny>> {
    use serde_json::Value;
    Ok(match value {
        Value::Null => py.None().into_bound(py),
        Value::Bool(flag) => PyBool::new(py, *flag).to_owned().into_any(),
        Value::Number(number) => {
            if let Some(int) = number.as_i64() {
                int.into_pyobject(py)?.into_any()
            } else if let Some(int) = number.as_u64() {
                int.into_pyobject(py)?.into_any()
            } else {
                PyFloat::new(py, number.as_f64().unwrap_or(f64::NAN)).into_any()
            }
        }
        Value::String(text) => PyString::new(py, text).into_any(),
        Value::Array(items) => {
            let list = PyList::empty(py);
            for item in items {
                list.append(json_to_py(py, item)?)?;
            }
            list.into_any()
        }
        Value::Object(map) => {
            let dict = PyDict::new(py);
            for (key, item) in map {
                dict.set_item(key, json_to_py(py, item)?)?;
            }
            dict.into_any()
        }
    })
}

/// One entry of the reference's `partition_states`.
fn partition_state_to_py<'py>(
    py: Python<'py>,
    state: &PartitionState,
) -> PyResult<Bound<'py, PyDict>> {
    let none = || py.None().into_bound(py);
    let dict = PyDict::new(py);
    let id = raw_to_py(py, &Some(state.id.clone()), none())?;
    let complete = state.latest_complete();
    // `latest_complete and metadata.get("success", False)`: None without a
    // completion, else the raw success value.
    let success = match complete {
        None => none(),
        Some(info) => raw_to_py(
            py,
            &info.success,
            PyBool::new(py, false).to_owned().into_any(),
        )?,
    };
    let from_complete = |pick: fn(&analysis::CompleteInfo) -> &Raw| -> PyResult<Bound<'py, PyAny>> {
        complete.map_or(Ok(none()), |info| raw_to_py(py, pick(info), none()))
    };
    let error = match complete {
        Some(info) if !info.is_success() => raw_to_py(py, &info.error, none())?,
        _ => none(),
    };
    let current_operation = match state.last_op_start() {
        None => none(),
        Some(op) => {
            let op_dict = PyDict::new(py);
            op_dict.set_item("name", raw_to_py(py, &op.name, none())?)?;
            op_dict.set_item("idx", raw_to_py(py, &op.idx, none())?)?;
            op_dict.set_item("started_at", raw_to_py(py, &op.timestamp, none())?)?;
            op_dict.set_item("completed", state.last_op_completed())?;
            op_dict.into_any()
        }
    };
    dict.set_item("partition_id", id)?;
    dict.set_item("status", state.status())?;
    dict.set_item("start_time", raw_to_py(py, &state.start_time(), none())?)?;
    dict.set_item("completion_time", from_complete(|info| &info.timestamp)?)?;
    dict.set_item("duration", from_complete(|info| &info.duration_seconds)?)?;
    dict.set_item("success", success)?;
    dict.set_item("error", error)?;
    dict.set_item("current_operation", current_operation)?;
    dict.set_item("retry_count", state.failure_count)?;
    dict.set_item("output_path", from_complete(|info| &info.output_path)?)?;
    Ok(dict)
}

fn analysis_to_py<'py>(py: Python<'py>, analysis: &Analysis) -> PyResult<Bound<'py, PyDict>> {
    let none = || py.None().into_bound(py);
    let states = PyDict::new(py);
    for state in analysis.partitions() {
        let state = partition_state_to_py(py, state)?;
        states.set_item(state.get_item("partition_id")?.unwrap_or_else(none), state)?;
    }
    let result = PyDict::new(py);
    result.set_item("total_events", analysis.total_events)?;
    result.set_item("job_status", analysis.job_status())?;
    result.set_item(
        "needs_reference_reading",
        analysis.needs_reference_reading(),
    )?;
    result.set_item("partition_states", states)?;
    // The latest checkpoint event as the reference sees it, reduced to the
    // one field it reads: `[]` or `[{"metadata": {"checkpoint_path": p}}]`.
    let checkpoints = PyList::empty(py);
    if let Some(path) = analysis.latest_checkpoint() {
        let event = PyDict::new(py);
        if path.is_some() {
            let metadata = PyDict::new(py);
            metadata.set_item("checkpoint_path", raw_to_py(py, path, none())?)?;
            event.set_item("metadata", metadata)?;
        }
        checkpoints.append(event)?;
    }
    result.set_item("checkpoints", checkpoints)?;
    // `[]` or the first job_start reduced to its timestamp.
    let job_starts = PyList::empty(py);
    if let Some(timestamp) = &analysis.first_job_start {
        let event = PyDict::new(py);
        event.set_item("event_type", "job_start")?;
        if timestamp.is_some() {
            event.set_item("timestamp", raw_to_py(py, timestamp, none())?)?;
        }
        job_starts.append(event)?;
    }
    result.set_item("job_start_events", job_starts)?;
    Ok(result)
}

/// Folds the JSONL log at `path` (in Rust, without the GIL) into what
/// `analyze_resumption_state` needs: `total_events`, `job_status`,
/// `partition_states` (as the reference computes them), `checkpoints`
/// (the latest checkpoint event, reduced) and `job_start_events` (the
/// first, reduced).
#[pyfunction]
pub(super) fn analyze_events_file<'py>(
    py: Python<'py>,
    path: PathBuf,
) -> PyResult<Bound<'py, PyDict>> {
    guarded("analyze_events_file", || {
        let analysis = detach(py, || analysis::analyze_file(&path))
            .map_err(|e| io_os_error("reading events from", &path, &e))?;
        analysis_to_py(py, &analysis)
    })
}

/// Whether the log at `path` holds an event of type `event_type`
/// (unreadable lines skipped); `None` when only Python can tell.
#[pyfunction]
pub(super) fn events_file_has_type(
    py: Python<'_>,
    path: PathBuf,
    event_type: String,
) -> PyResult<Option<bool>> {
    guarded("events_file_has_type", || {
        detach(py, || analysis::file_has_event_type(&path, &event_type))
            .map_err(|e| io_os_error("reading events from", &path, &e))
    })
}

/// The lines of `bytes` every reader reads (JSON objects; see
/// `events::lines`), stripped, in order.
fn readable_lines<'py>(py: Python<'py>, bytes: &[u8]) -> PyResult<Bound<'py, PyList>> {
    let list = PyList::empty(py);
    for line in lines::objects(bytes) {
        list.append(PyString::new(py, line))?;
    }
    Ok(list)
}

/// The lines of the log at `path` that every reader reads: each is a JSON
/// object `json.loads` returns; binary garbage, text that is not UTF-8,
/// JSON that is not an object, over-long integers and nesting deeper than
/// 256 levels are skipped.
#[pyfunction]
pub(super) fn read_event_lines<'py>(
    py: Python<'py>,
    path: PathBuf,
) -> PyResult<Bound<'py, PyList>> {
    guarded("read_event_lines", || {
        let bytes = detach(py, || std::fs::read(&path))
            .map_err(|e| io_os_error("reading events from", &path, &e))?;
        readable_lines(py, &bytes)
    })
}

/// `read_event_lines` over bytes already read (a followed log's new lines).
#[pyfunction]
pub(super) fn event_lines<'py>(py: Python<'py>, data: &[u8]) -> PyResult<Bound<'py, PyList>> {
    guarded("event_lines", || readable_lines(py, data))
}
