//! `EventLoggingMixin._log_event` as a method of C.
//!
//! Written in Python, each `self._log_event(event_type, message, **kwargs)`
//! paid for a frame, a `**kwargs` dict and a second call into Rust. As a
//! method descriptor over a `METH_FASTCALL | METH_KEYWORDS` function, the
//! call reaches Rust directly with its arguments in the interpreter's own
//! array, and the keywords are read from there. Every call the fast path
//! declines (see [`LogEventFastPath`]) goes to the Python method with the
//! arguments as given, so behaviour and errors stay the reference's.

use std::ffi::CStr;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::ptr;
use std::sync::atomic::{AtomicPtr, Ordering};

use pyo3::exceptions::PyRuntimeError;
use pyo3::ffi;
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyTuple};

use super::events::{Caller, LogEventFastPath, Logged};
use super::lifecycle::exit_gate;
use super::lifecycle::gil::{call_python, guarded, panic_error};

/// What the method hands on to Python.
struct Installed {
    fast_path: Py<LogEventFastPath>,
    /// The Python `_log_event`, for every call the fast path declines.
    python_method: Py<PyAny>,
    /// `(executor, event)`: sends the INFO line of an event to loguru.
    log_info_line: Py<PyAny>,
}

/// The latest [`Installed`]. Replaced ones are leaked (one per import of
/// the Python module), so a call in progress never loses its reference.
/// The C function cannot tell which descriptor it was called through: after
/// a second import (`importlib.reload`), instances of the first module's
/// classes are declined by the new fast path (their logger's `log_event` is
/// not the new module's) and take the new Python method, which works on them.
static INSTALLED: AtomicPtr<Installed> = AtomicPtr::new(ptr::null_mut());

const NAME: &CStr = c"_log_event";
/// `__text_signature__` (before `--`), so that `inspect.signature` gives the
/// reference's parameter names, then the docstring.
const DOC: &CStr = c"_log_event($self, event_type, message, **kwargs)\n--\n\n\
Log an event if event logging is enabled.";

/// A method descriptor for `EventLoggingMixin._log_event`: the fast path,
/// then `python_method` for whatever it declines, and `log_info_line` for
/// events an INFO sink wants.
#[pyfunction]
pub fn log_event_method<'py>(
    py: Python<'py>,
    fast_path: Py<LogEventFastPath>,
    python_method: Py<PyAny>,
    log_info_line: Py<PyAny>,
) -> PyResult<Bound<'py, PyAny>> {
    guarded("log_event_method", || {
        let installed = Box::new(Installed {
            fast_path,
            python_method,
            log_info_line,
        });
        INSTALLED.store(Box::into_raw(installed), Ordering::Release);
        // CPython keeps a pointer to the definition for the descriptor's life.
        let definition = Box::leak(Box::new(ffi::PyMethodDef {
            ml_name: NAME.as_ptr(),
            ml_meth: ffi::PyMethodDefPointer {
                PyCFunctionFastWithKeywords: log_event,
            },
            ml_flags: ffi::METH_FASTCALL | ffi::METH_KEYWORDS,
            ml_doc: DOC.as_ptr(),
        }));
        // SAFETY: `definition` lives forever. The descriptor is declared on
        // `object`, so that any executor (whatever classes it mixes in) passes
        // the descriptor's type check on `self`.
        unsafe {
            let descriptor =
                ffi::PyDescr_NewMethod(ptr::addr_of_mut!(ffi::PyBaseObject_Type), definition);
            Bound::from_owned_ptr_or_err(py, descriptor)
        }
    })
}

/// The C function behind the descriptor. CPython calls it holding the GIL,
/// with `args[..nargs]` the positional arguments after `self` and, when
/// `kwnames` is a tuple, the keyword values after them.
unsafe extern "C" fn log_event(
    executor: *mut ffi::PyObject,
    args: *const *mut ffi::PyObject,
    nargs: ffi::Py_ssize_t,
    kwnames: *mut ffi::PyObject,
) -> *mut ffi::PyObject {
    let outcome = catch_unwind(AssertUnwindSafe(|| {
        Python::attach(|py| {
            // SAFETY: the arguments are CPython's, valid for this call.
            let result = catch_unwind(AssertUnwindSafe(|| unsafe {
                call(py, executor, args, nargs, kwnames)
            }))
            .unwrap_or_else(|payload| Err(panic_error("_log_event", &payload)));
            match result {
                Ok(value) => value.into_ptr(),
                Err(error) => {
                    error.restore(py);
                    ptr::null_mut()
                }
            }
        })
    }));
    outcome.unwrap_or_else(|payload| {
        // SAFETY: CPython called this function with the GIL held.
        let py = unsafe { Python::assume_attached() };
        panic_error("_log_event", &payload).restore(py);
        ptr::null_mut()
    })
}

/// # Safety
///
/// As for [`log_event`]: `executor` and the `nargs` + `len(kwnames)`
/// pointers at `args` are live objects, `kwnames` is null or a tuple.
unsafe fn call<'py>(
    py: Python<'py>,
    executor: *mut ffi::PyObject,
    args: *const *mut ffi::PyObject,
    nargs: ffi::Py_ssize_t,
    kwnames: *mut ffi::PyObject,
) -> PyResult<Bound<'py, PyAny>> {
    let _in_flight = exit_gate::enter(py);
    // SAFETY: set before the descriptor exists; never freed.
    let Some(installed) = (unsafe { INSTALLED.load(Ordering::Acquire).as_ref() }) else {
        return Err(PyRuntimeError::new_err(
            "_log_event called before it was set up",
        ));
    };
    // SAFETY: CPython passes `self` as a live object (the caller's contract).
    let executor = unsafe { Bound::from_borrowed_ptr(py, executor) };
    let keyword_names = match kwnames.is_null() {
        true => None,
        // SAFETY: a non-null `kwnames` is a live tuple of the keyword names.
        false => Some(unsafe { Bound::from_borrowed_ptr(py, kwnames) }.cast_into::<PyTuple>()?),
    };
    let positional_count = usize::try_from(nargs).unwrap_or(0);
    let count = positional_count + keyword_names.as_ref().map_or(0, |names| names.len());
    let arguments = match count {
        0 => &[][..],
        // SAFETY: `args` holds the positional then the keyword values,
        // `count` pointers in all, alive for this call.
        _ => unsafe { std::slice::from_raw_parts(args, count) },
    };
    let (positional, keyword_values) = arguments.split_at(positional_count);
    // SAFETY: every pointer in `arguments` is a live object, borrowed
    // from the caller for this call.
    let bind = |arg: &*mut ffi::PyObject| unsafe { Bound::from_borrowed_ptr(py, *arg) };
    let keywords = || {
        let names = keyword_names.iter().flat_map(|names| names.iter());
        names.zip(keyword_values.iter().map(bind))
    };

    if let [event_type, message] = positional {
        let fast_path = installed.fast_path.get();
        let logged = fast_path.log_keywords(
            py,
            &executor,
            bind(event_type),
            bind(message),
            keywords(),
            Caller::CMethod,
        )?;
        match logged {
            Logged::Queued => return Ok(py.None().into_bound(py)),
            Logged::Built(event) => {
                let line_args = PyTuple::new(py, [executor, event])?;
                call_python(installed.log_info_line.bind(py), &line_args, None)?;
                return Ok(py.None().into_bound(py));
            }
            Logged::Declined => {}
        }
    }
    let mut method_args = vec![executor];
    method_args.extend(positional.iter().map(bind));
    let kwargs = match keyword_names {
        None => None,
        Some(_) => {
            let kwargs = PyDict::new(py);
            for (name, value) in keywords() {
                kwargs.set_item(name, value)?;
            }
            Some(kwargs)
        }
    };
    let method_args = PyTuple::new(py, method_args)?;
    call_python(
        installed.python_method.bind(py),
        &method_args,
        kwargs.as_ref(),
    )
}
