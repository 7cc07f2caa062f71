//! Every `OSError` the event bindings raise is built here.

use std::path::Path;

use pyo3::exceptions::{PyMemoryError, PyOSError, PyValueError};
use pyo3::PyErr;

use crate::events::writer::{PushError, WriteError};

/// The one place events build an `OSError`: `OSError(errno, message,
/// path)` when the system gave an errno, else `OSError(message)` with the
/// path in the message.
pub(super) fn new_os_error(errno: Option<i32>, message: String, path: &Path) -> PyErr {
    match errno {
        Some(errno) => PyOSError::new_err((errno, message, path.display().to_string())),
        None => PyOSError::new_err(format!("{message}: {}", path.display())),
    }
}

/// A failed write of the flush thread.
pub(super) fn os_error(error: &WriteError) -> PyErr {
    match error.errno {
        Some(errno) => new_os_error(
            Some(errno),
            format!("writing events: {}", error.message),
            &error.path,
        ),
        None => PyOSError::new_err(error.to_string()),
    }
}

/// A failed file operation: `action` (e.g. "reading") on `path`.
pub(super) fn io_os_error(action: &str, path: &Path, error: &std::io::Error) -> PyErr {
    if error.kind() == std::io::ErrorKind::OutOfMemory {
        return PyMemoryError::new_err(format!("{action} {}: {error}", path.display()));
    }
    new_os_error(
        error.raw_os_error(),
        format!("{action} {}: {error}", path.display()),
        path,
    )
}

pub(super) fn push_error(error: PushError, path: &std::path::Path) -> PyErr {
    match error {
        PushError::Failed(error) => os_error(&error),
        PushError::Closed => {
            PyValueError::new_err(format!("event logger for {} is closed", path.display()))
        }
        PushError::Full(_) => new_os_error(None, "event buffers full".to_string(), path),
    }
}
