//! Native calls that run without the GIL and never abort the process when
//! the interpreter exits meanwhile; and entry points that never let a Rust
//! panic reach Python.
//!
//! On CPython before 3.14, a thread that re-takes the GIL after
//! finalisation began is ended with `pthread_exit`. Its forced unwind
//! cannot cross the Rust frames above it, and the process aborts ("FATAL:
//! exception not rethrown"); a daemon thread inside a native call when the
//! main thread returns is enough. PyO3 parks such threads in
//! `PyGILState_Ensure`, not yet in the re-attach after `Python::detach`, so
//! [`detach`] re-takes the GIL itself and parks the thread forever instead
//! of unwinding, as CPython 3.14 does. The process then exits normally.

use std::any::Any;
use std::panic::{catch_unwind, resume_unwind, AssertUnwindSafe};

use pyo3::exceptions::PyRuntimeError;
use pyo3::ffi;
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyTuple};

mod raw {
    use pyo3::ffi::{PyObject, PyThreadState};

    extern "C-unwind" {
        /// `PyEval_RestoreThread`, declared so that the forced unwind of
        /// the `pthread_exit` inside it may enter Rust frames, whose
        /// cleanup then parks the thread.
        #[link_name = "PyEval_RestoreThread"]
        pub fn PyEval_RestoreThread_unwinding(tstate: *mut PyThreadState);

        /// `PyObject_Call`, declared so that the same forced unwind, out of
        /// Python code that re-took the GIL, may enter Rust frames.
        #[link_name = "PyObject_Call"]
        pub fn PyObject_Call_unwinding(
            callable: *mut PyObject,
            args: *mut PyObject,
            kwargs: *mut PyObject,
        ) -> *mut PyObject;
    }
}

/// Parks the thread forever when dropped: dropped only while the thread is
/// being unwound by `pthread_exit` during interpreter finalisation.
struct ParkForever;

impl Drop for ParkForever {
    fn drop(&mut self) {
        loop {
            std::thread::park();
        }
    }
}

/// `callable(*args, **kwargs)`. Python code may release and re-take the
/// GIL (I/O, a thread switch); if the interpreter is finalising by then,
/// CPython before 3.14 ends the thread with `pthread_exit`, whose forced
/// unwind would abort the process in PyO3's calls (declared not to unwind)
/// or at the first `catch_unwind`. Here the thread parks forever instead.
pub(crate) fn call_python<'py>(
    callable: &Bound<'py, PyAny>,
    args: &Bound<'py, PyTuple>,
    kwargs: Option<&Bound<'py, PyDict>>,
) -> PyResult<Bound<'py, PyAny>> {
    let kwargs = kwargs.map_or(std::ptr::null_mut(), |kwargs| kwargs.as_ptr());
    let park = ParkUnlessPanicking;
    // SAFETY: live objects of this thread, which holds the GIL (`'py`).
    let result = unsafe { raw::PyObject_Call_unwinding(callable.as_ptr(), args.as_ptr(), kwargs) };
    std::mem::forget(park);
    // SAFETY: `PyObject_Call` returns a new reference or null with an error set.
    unsafe { Bound::from_owned_ptr_or_err(callable.py(), result) }
}

/// Parks the thread forever when dropped by an unwind that is not a Rust
/// panic: the forced unwind of `pthread_exit`.
struct ParkUnlessPanicking;

impl Drop for ParkUnlessPanicking {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            drop(ParkForever);
        }
    }
}

/// Re-takes the GIL for `tstate`, or parks the thread forever when the
/// interpreter is finalising (rather than letting it unwind through Rust).
///
/// # Safety
///
/// `tstate` is what `PyEval_SaveThread` returned on this thread, and the
/// thread has not re-taken the GIL since.
unsafe fn reattach(tstate: *mut ffi::PyThreadState) {
    let park = ParkForever;
    // SAFETY: guaranteed by the caller; an unwind out of it runs `park`'s
    // drop, which never returns.
    unsafe { raw::PyEval_RestoreThread_unwinding(tstate) };
    std::mem::forget(park);
}

/// Runs `work` with the GIL released, like `Python::detach`, but a thread
/// that cannot get the GIL back because the interpreter is exiting parks
/// forever instead of aborting the process. A panic in `work` resumes
/// once the GIL is held again.
///
/// `work` must not touch Python objects (not even drop a `Py<T>`): PyO3
/// still counts this thread as attached while it runs.
pub(crate) fn detach<T, F>(_py: Python<'_>, work: F) -> T
where
    F: FnOnce() -> T + Send,
    T: Send,
{
    // SAFETY: `_py` proves this thread holds the GIL; it is re-taken below
    // by `reattach` before anything touches Python again.
    let tstate = unsafe { ffi::PyEval_SaveThread() };
    let outcome = catch_unwind(AssertUnwindSafe(work));
    // SAFETY: `tstate` was saved above on this thread.
    unsafe { reattach(tstate) };
    outcome.unwrap_or_else(|payload| resume_unwind(payload))
}

/// Runs the body of a native entry point; a panic inside it becomes a
/// `RuntimeError` naming `what`, never a `PanicException` (which derives
/// from `BaseException`, so `except Exception` would miss it).
pub(crate) fn guarded<T>(what: &str, body: impl FnOnce() -> PyResult<T>) -> PyResult<T> {
    catch_unwind(AssertUnwindSafe(body)).unwrap_or_else(|payload| Err(panic_error(what, &payload)))
}

/// The `RuntimeError` for a panic with `payload` inside `what`.
pub(crate) fn panic_error(what: &str, payload: &Box<dyn Any + Send>) -> PyErr {
    let message = match (
        payload.downcast_ref::<&str>(),
        payload.downcast_ref::<String>(),
    ) {
        (Some(text), _) => (*text).to_owned(),
        (_, Some(text)) => text.clone(),
        _ => "unknown panic".to_owned(),
    };
    PyRuntimeError::new_err(format!("internal error in {what}: {message}"))
}
