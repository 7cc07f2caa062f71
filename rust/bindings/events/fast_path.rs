//! `LogEventFastPath`: which `EventLoggingMixin._log_event` calls go
//! straight to the executor's sink, and the sink call when they do. This
//! is the only place the rule is written: the C method asks
//! [`LogEventFastPath::log_keywords`], the Python method asks `log`.

use pyo3::intern;
use pyo3::prelude::*;
use pyo3::types::PyDict;

use super::sink::{EventSink, Logged};
use crate::bindings::lifecycle::gil::guarded;

/// loguru's numeric levels: below these, `_log_event` writes DEBUG lines
/// or an INFO line of its own.
const DEBUG_LEVEL: f64 = 10.0;
const INFO_LEVEL: f64 = 20.0;

/// `EventLoggingMixin._log_event` through the executor's sink, for an
/// executor whose `EventLogger` is the package's own (its `log_event` not
/// replaced). Everything else, and every error, is left to the Python
/// method, which behaves as the reference.
#[pyclass(frozen, module = "data_juicer_accel._native")]
pub struct LogEventFastPath {
    /// loguru's `logger._core`, whose `min_level` is the lowest level any
    /// sink accepts (`inf` with none); `None` or any object without it
    /// means "every level".
    loguru_core: Py<PyAny>,
    /// `EventLogger.log_event` as defined by the package.
    package_log_event: Py<PyAny>,
}

#[pymethods]
impl LogEventFastPath {
    #[new]
    fn new(loguru_core: Py<PyAny>, package_log_event: Py<PyAny>) -> Self {
        LogEventFastPath {
            loguru_core,
            package_log_event,
        }
    }

    /// For the Python `_log_event` (which has written its DEBUG lines):
    /// logs `executor._log_event(event_type, message, **kwargs)` through the
    /// sink and returns `True`, or the `Event` when an INFO sink wants its
    /// line. Returns `None`, having done nothing, when the event must be
    /// built in Python (not the package's logger, a keyword `Event()`
    /// rejects).
    fn log<'py>(
        &self,
        py: Python<'py>,
        executor: Bound<'py, PyAny>,
        event_type: Bound<'py, PyAny>,
        message: Bound<'py, PyAny>,
        kwargs: Option<Bound<'py, PyDict>>,
    ) -> PyResult<Option<Bound<'py, PyAny>>> {
        guarded("LogEventFastPath.log", || {
            let keywords = kwargs.iter().flat_map(|kwargs| kwargs.iter());
            self.log_keywords(
                py,
                &executor,
                event_type,
                message,
                keywords,
                Caller::PythonMethod,
            )
            .map(|logged| logged.into_python(py))
        })
    }
}

/// Who asks the fast path: the C method sends every call, the Python
/// method only the calls the C method declined.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Caller {
    CMethod,
    PythonMethod,
}

impl LogEventFastPath {
    /// [`log`](Self::log) with the keyword arguments as `(name, value)`
    /// pairs. The C method's calls are declined whole while a sink takes
    /// DEBUG or loguru's level cannot be read: the Python method writes the
    /// reference's DEBUG lines, then asks again.
    pub(crate) fn log_keywords<'py>(
        &self,
        py: Python<'py>,
        executor: &Bound<'py, PyAny>,
        event_type: Bound<'py, PyAny>,
        message: Bound<'py, PyAny>,
        keywords: impl Iterator<Item = (Bound<'py, PyAny>, Bound<'py, PyAny>)>,
        caller: Caller,
    ) -> PyResult<Logged<'py>> {
        let min_level = self.min_log_level(py);
        let debug_sink = min_level.is_none_or(|level| level <= DEBUG_LEVEL);
        if caller == Caller::CMethod && debug_sink {
            return Ok(Logged::Declined);
        }
        let wants_event = min_level.is_none_or(|level| level <= INFO_LEVEL);
        let Some((sink, job_id)) = self.package_logger_of(py, executor) else {
            return Ok(Logged::Declined);
        };
        sink.get()
            .log_keywords(py, event_type, message, keywords, job_id, wants_event)
    }

    fn min_log_level(&self, py: Python<'_>) -> Option<f64> {
        let level = self
            .loguru_core
            .bind(py)
            .getattr(intern!(py, "min_level"))
            .ok()?;
        level.extract::<f64>().ok()
    }

    /// The sink and job id of `executor.event_logger` when it is a package
    /// `EventLogger` whose `log_event` is the package's.
    fn package_logger_of<'py>(
        &self,
        py: Python<'py>,
        executor: &Bound<'py, PyAny>,
    ) -> Option<(Bound<'py, EventSink>, Bound<'py, PyAny>)> {
        let event_logger = executor.getattr(intern!(py, "event_logger")).ok()?;
        let log_event = event_logger
            .get_type()
            .getattr(intern!(py, "log_event"))
            .ok()?;
        if !log_event.is(self.package_log_event.bind(py)) {
            return None;
        }
        let instance_dict = event_logger.getattr(intern!(py, "__dict__")).ok()?;
        let instance_dict = instance_dict.cast::<PyDict>().ok()?;
        if instance_dict.contains(intern!(py, "log_event")).ok()? {
            return None;
        }
        let sink = instance_dict.get_item(intern!(py, "_sink")).ok()??;
        let sink = sink.cast_into::<EventSink>().ok()?;
        let job_id = instance_dict.get_item(intern!(py, "job_id")).ok()??;
        Some((sink, job_id))
    }
}
