//! Interpreter exit waits for the native work of daemon threads.
//!
//! On CPython before 3.14, a thread that needs the GIL once finalisation
//! has begun is ended with `pthread_exit`. Its forced unwind aborts the
//! process when it crosses a frame that cannot unwind: PyO3's calls from
//! Rust into Python (`str()`, attribute reads, loguru), or pyarrow's C++
//! at the end of its `with nogil` sections (every Arrow import and
//! `read_all`). [`gil::detach`] covers the GIL re-taken by our own code;
//! this gate covers the rest.
//!
//! Native entry points and guarded Python blocks ([`InFlight`]) count
//! themselves in flight. An `atexit` hook ([`drain_native_calls`]) closes
//! the gate and waits, without the GIL, until none is left; a thread that
//! enters one afterwards (other than the exiting thread, which still runs
//! the other exit hooks) releases the GIL and parks forever, as CPython
//! 3.14 parks daemon threads. Finalisation then never meets a thread
//! inside our code or inside the pyarrow calls it makes.
//!
//! Entering and closing both happen with the GIL held, which orders them:
//! a thread either entered before the gate closed (and is waited for) or
//! sees it closed.
//!
//! The gate also keeps the process's exit duty: work that exit could not
//! make durable (a background checkpoint save, events) is reported where
//! it is found ([`fail_exit`]), and the process then ends non-zero even
//! when the program itself ended normally (see [`enforce_exit_status`]).
//!
//! [`gil::detach`]: super::gil::detach

use std::cell::Cell;
use std::ffi::{c_int, c_void};
use std::sync::atomic::{AtomicBool, AtomicI32, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use pyo3::exceptions::PyValueError;

use pyo3::ffi;
use pyo3::prelude::*;

use super::gil::detach;

/// Native calls and guarded blocks in flight, over all threads.
static IN_FLIGHT: AtomicUsize = AtomicUsize::new(0);
/// Set by the exit hook: from then on, entering parks the thread.
static CLOSED: AtomicBool = AtomicBool::new(false);

thread_local! {
    /// How many of `IN_FLIGHT` this thread holds (nested entries).
    static DEPTH: Cell<usize> = const { Cell::new(0) };
    /// Whether this thread closed the gate: it runs the remaining exit
    /// hooks, which may call native code.
    static CLOSED_THE_GATE: Cell<bool> = const { Cell::new(false) };
}

/// One entry in flight; leaving it (dropping it) counts it out.
pub(crate) struct Entered {
    /// Not `Send`: it is counted in this thread's `DEPTH`.
    _this_thread: std::marker::PhantomData<*const ()>,
}

impl Drop for Entered {
    fn drop(&mut self) {
        leave();
    }
}

/// Counts the calling thread in flight until the returned guard drops; once
/// the exit hook has closed the gate, parks the thread forever instead. A
/// nested entry never parks: the exit hook waits for the outer one to end.
///
/// Every change of `IN_FLIGHT` happens with the GIL held (`enter` takes
/// `py`; an `Entered` is not `Send`, so it is dropped on its own thread, with
/// the GIL, as `detach` re-takes it before returning or unwinding). The GIL
/// thus serialises the changes and orders them with `CLOSED` (taking and
/// releasing it is an acquire and a release), so a Relaxed load and store
/// do for each change, instead of a locked read-modify-write per call: the
/// exit hook, which reads the count without the GIL, only needs to see it
/// reach zero eventually.
pub(crate) fn enter(py: Python<'_>) -> Entered {
    if CLOSED.load(Ordering::Relaxed) && DEPTH.get() == 0 && !CLOSED_THE_GATE.get() {
        park_for_exit(py);
    }
    IN_FLIGHT.store(IN_FLIGHT.load(Ordering::Relaxed) + 1, Ordering::Relaxed);
    DEPTH.set(DEPTH.get() + 1);
    Entered {
        _this_thread: std::marker::PhantomData,
    }
}

/// With the GIL held, as every `Entered` is dropped (see [`enter`]).
fn leave() {
    DEPTH.set(DEPTH.get().saturating_sub(1));
    let count = IN_FLIGHT.load(Ordering::Relaxed);
    IN_FLIGHT.store(count.saturating_sub(1), Ordering::Relaxed);
}

/// Releases the GIL and never returns: the interpreter is exiting, and the
/// thread must not be inside native code when finalisation begins.
fn park_for_exit(_py: Python<'_>) -> ! {
    // SAFETY: `_py` proves the GIL is held by this thread; it is released
    // for good, and nothing here touches Python afterwards.
    unsafe { ffi::PyEval_SaveThread() };
    loop {
        std::thread::park();
    }
}

/// A forked child has only the forking thread: it holds what it held, and
/// none of its parent's exit duty. A `pthread_atfork` child handler
/// (registered by [`super::fork`]).
pub(super) extern "C" fn reset_in_forked_child() {
    IN_FLIGHT.store(DEPTH.get(), Ordering::SeqCst);
    CLOSED.store(false, Ordering::SeqCst);
    CLOSED_THE_GATE.set(false);
    EXIT_FAILURE.store(NO_FAILURE, Ordering::SeqCst);
}

/// `EXIT_FAILURE` when nothing was lost.
const NO_FAILURE: i32 = 0;
/// `EXIT_FAILURE` when a Ctrl-C made exit abandon work: the process ends as
/// CPython ends on an unhandled KeyboardInterrupt, killed by SIGINT.
const FAILED_BY_SIGINT: i32 = -1;
/// The exit status a loss imposes, as an uncaught exception's.
const FAILED: i32 = 1;

/// What the process must end with because exit lost something.
static EXIT_FAILURE: AtomicI32 = AtomicI32::new(NO_FAILURE);

/// Records that exit lost work (the caller has said what, on stderr): the
/// process will not end with status 0. `by_sigint`: a Ctrl-C abandoned it.
pub(crate) fn fail_exit(by_sigint: bool) {
    // A Ctrl-C outranks a failure: the process ends as interrupted.
    if by_sigint {
        EXIT_FAILURE.store(FAILED_BY_SIGINT, Ordering::SeqCst);
    } else {
        let (none, failed) = (NO_FAILURE, FAILED);
        let _ = EXIT_FAILURE.compare_exchange(none, failed, Ordering::SeqCst, Ordering::SeqCst);
    }
}

/// A glibc `on_exit` handler (registered by [`super`] at import): runs in
/// `exit()`, after the interpreter is finalised and after the C exit
/// handlers registered later (the event writers' last flush, which may
/// itself report a loss). A process that lost work and was about to
/// end with status 0 ends with status 1, or by SIGINT after a Ctrl-C; a
/// non-zero status (an uncaught exception, `sys.exit(3)`) is kept.
///
/// CPython offers no later hook that may set the status, and an exception
/// in an `atexit` callback is printed and ignored; so this handler ends
/// the process itself, once every C stream is flushed. The C exit handlers
/// registered before this module was imported are skipped then (as
/// `os._exit` skips them); Python's own shutdown has completed.
pub(super) extern "C" fn enforce_exit_status(status: c_int, _arg: *mut c_void) {
    let failure = EXIT_FAILURE.load(Ordering::SeqCst);
    if failure == NO_FAILURE || status != 0 {
        return;
    }
    // SAFETY: flushing every C stream and ending the process; nothing of
    // this process runs afterwards.
    unsafe {
        libc::fflush(std::ptr::null_mut());
        if failure == FAILED_BY_SIGINT {
            libc::signal(libc::SIGINT, libc::SIG_DFL);
            libc::raise(libc::SIGINT);
            libc::_exit(128 + libc::SIGINT);
        }
        libc::_exit(failure);
    }
}

/// `fail_exit(reason)`: exit lost work the caller has reported (on
/// stderr); the process will not end with status 0. `reason` is
/// `"failed"` (status 1, as an uncaught exception) or `"interrupted"` (a
/// Ctrl-C abandoned it: killed by SIGINT, as an unhandled KeyboardInterrupt).
#[pyfunction]
#[pyo3(name = "fail_exit")]
fn fail_exit_py(reason: &str) -> PyResult<()> {
    match reason {
        "failed" => fail_exit(false),
        "interrupted" => fail_exit(true),
        other => {
            return Err(PyValueError::new_err(format!(
                "fail_exit() takes 'failed' or 'interrupted', not {other:?}"
            )))
        }
    }
    Ok(())
}

/// A block that interpreter exit waits for: ``with InFlight(): ...``.
///
/// Used around Python code that calls pyarrow functions which release the
/// GIL; a daemon thread entering one after exit began parks forever.
#[pyclass(module = "data_juicer_accel._native", unsendable)]
pub struct InFlight {
    entered: Option<Entered>,
}

#[pymethods]
impl InFlight {
    #[new]
    fn new() -> Self {
        InFlight { entered: None }
    }

    fn __enter__(mut slf: PyRefMut<'_, Self>) -> PyRefMut<'_, Self> {
        if slf.entered.is_none() {
            let entered = enter(slf.py());
            slf.entered = Some(entered);
        }
        slf
    }

    #[pyo3(signature = (*_exc_info))]
    fn __exit__(&mut self, _exc_info: &Bound<'_, pyo3::types::PyTuple>) -> bool {
        self.entered = None;
        false
    }
}

/// How often a wait at exit looks for Ctrl-C.
const SIGNAL_POLL: Duration = Duration::from_millis(100);

/// Closes the gate and waits up to `timeout` seconds, without the GIL, for
/// the other threads' native calls and guarded blocks to end. Returns how
/// many are still in flight (0 once drained). Registered with `atexit`.
/// A Ctrl-C (any exception a signal handler raises) ends the wait: it is
/// raised, the gate staying closed.
#[pyfunction]
#[pyo3(signature = (timeout))]
pub fn drain_native_calls(py: Python<'_>, timeout: f64) -> PyResult<usize> {
    CLOSED_THE_GATE.set(true);
    CLOSED.store(true, Ordering::SeqCst);
    let own = DEPTH.get();
    // No deadline for a timeout too large (or NaN) to add to the clock.
    let deadline = Duration::try_from_secs_f64(timeout.max(0.0))
        .ok()
        .and_then(|wait| Instant::now().checked_add(wait));
    loop {
        let poll_until = Instant::now() + SIGNAL_POLL;
        let others = detach(py, || loop {
            let others = IN_FLIGHT.load(Ordering::SeqCst).saturating_sub(own);
            let now = Instant::now();
            if others == 0 || now >= poll_until || deadline.is_some_and(|d| now >= d) {
                return others;
            }
            std::thread::sleep(Duration::from_millis(1));
        });
        if others == 0 || deadline.is_some_and(|d| Instant::now() >= d) {
            return Ok(others);
        }
        py.check_signals()?;
    }
}

/// Adds the gate's Python face to the module; its process hooks are
/// installed by [`super::register`].
pub(super) fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<InFlight>()?;
    m.add_function(wrap_pyfunction!(drain_native_calls, m)?)?;
    m.add_function(wrap_pyfunction!(fail_exit_py, m)?)?;
    Ok(())
}
