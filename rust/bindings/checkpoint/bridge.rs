//! What every checkpoint binding shares at the boundary: the mapping of
//! [`CheckpointError`] to Python exceptions, and the Arrow C stream
//! interface (`__arrow_c_stream__`) through which tables come in and go
//! out without a copy, and the schema capsule (`__arrow_c_schema__`).

use std::ffi::CStr;

use arrow_array::ffi_stream::{FFI_ArrowArrayStream, RecordBatchStreamReader};
use arrow_array::RecordBatchReader;
use arrow_schema::ffi::FFI_ArrowSchema;
use arrow_schema::Schema;
use pyo3::exceptions::{
    PyKeyboardInterrupt, PyMemoryError, PyOSError, PyRuntimeError, PyTypeError, PyValueError,
};
use pyo3::prelude::*;
use pyo3::types::PyCapsule;

use crate::checkpoint::CheckpointError;

// Defined in Python (data_juicer_accel/errors.py) so that they pickle.
pyo3::import_exception!(data_juicer_accel.errors, CheckpointCorruptError);
pyo3::import_exception!(data_juicer_accel.errors, CheckpointLockedError);

/// The capsule names the Arrow PyCapsule interface gives a C stream and a C schema.
const STREAM_CAPSULE: &CStr = c"arrow_array_stream";
const SCHEMA_CAPSULE: &CStr = c"arrow_schema";

/// The Python exception for `err`, naming the file it concerns.
pub fn to_py_err(err: CheckpointError) -> PyErr {
    match err {
        CheckpointError::Io { path, source } => {
            let filename = path.to_string_lossy().into_owned();
            match source.raw_os_error() {
                // OSError(errno, strerror, filename) picks the subclass
                // (FileNotFoundError, PermissionError, ...) as Python does.
                Some(errno) => {
                    let strerror = std::io::Error::from_raw_os_error(errno).to_string();
                    let strerror = strerror
                        .split(" (os error")
                        .next()
                        .unwrap_or_default()
                        .to_string();
                    PyOSError::new_err((errno, strerror, filename))
                }
                None => PyOSError::new_err(format!("{filename}: {source}")),
            }
        }
        e @ CheckpointError::Corrupt { .. } => CheckpointCorruptError::new_err(e.to_string()),
        e @ (CheckpointError::Locked { .. } | CheckpointError::Raced { .. }) => {
            CheckpointLockedError::new_err(e.to_string())
        }
        e @ CheckpointError::Input(_) => PyValueError::new_err(e.to_string()),
        e @ (CheckpointError::OutOfMemory { .. } | CheckpointError::NoMemory { .. }) => {
            PyMemoryError::new_err(e.to_string())
        }
        CheckpointError::Cancelled => PyKeyboardInterrupt::new_err(()),
        e @ CheckpointError::Internal(_) => PyRuntimeError::new_err(e.to_string()),
    }
}

/// Takes ownership of the C stream behind `data.__arrow_c_stream__()`.
pub fn import_stream(data: &Bound<'_, PyAny>) -> PyResult<RecordBatchStreamReader> {
    RecordBatchStreamReader::try_new(import_raw_stream(data)?)
        .map_err(|e| PyValueError::new_err(format!("invalid Arrow C stream: {e}")))
}

/// The C stream behind `data.__arrow_c_stream__()`, not yet imported.
pub fn import_raw_stream(data: &Bound<'_, PyAny>) -> PyResult<FFI_ArrowArrayStream> {
    if !data.hasattr("__arrow_c_stream__")? {
        return Err(PyTypeError::new_err(format!(
            "expected an object exporting the Arrow C stream interface (__arrow_c_stream__), got {}",
            data.get_type().name()?
        )));
    }
    let capsule = data.call_method0("__arrow_c_stream__")?;
    let capsule = capsule
        .cast::<PyCapsule>()
        .map_err(|_| PyTypeError::new_err("__arrow_c_stream__() did not return a PyCapsule"))?;
    let pointer = capsule
        .pointer_checked(Some(STREAM_CAPSULE))?
        .cast::<FFI_ArrowArrayStream>();
    // SAFETY: the capsule holds a valid FFI_ArrowArrayStream (checked by
    // name). We move it out and leave a released one behind, so the
    // capsule's destructor does not release the stream we now own.
    Ok(unsafe { std::ptr::replace(pointer.as_ptr(), FFI_ArrowArrayStream::empty()) })
}

/// `reader` as the capsule `__arrow_c_stream__()` returns.
pub fn export_stream<'py>(
    py: Python<'py>,
    reader: Box<dyn RecordBatchReader + Send>,
) -> PyResult<Bound<'py, PyCapsule>> {
    PyCapsule::new(
        py,
        FFI_ArrowArrayStream::new(reader),
        Some(STREAM_CAPSULE.to_owned()),
    )
}

/// `schema` as the capsule `__arrow_c_schema__()` returns.
pub fn export_schema<'py>(py: Python<'py>, schema: &Schema) -> PyResult<Bound<'py, PyCapsule>> {
    let schema = FFI_ArrowSchema::try_from(schema)
        .map_err(|e| PyValueError::new_err(format!("schema cannot be exported: {e}")))?;
    PyCapsule::new(py, schema, Some(SCHEMA_CAPSULE.to_owned()))
}

pub fn register_exceptions(m: &Bound<'_, PyModule>) -> PyResult<()> {
    let py = m.py();
    m.add(
        "CheckpointCorruptError",
        py.get_type::<CheckpointCorruptError>(),
    )?;
    m.add(
        "CheckpointLockedError",
        py.get_type::<CheckpointLockedError>(),
    )
}
