//! The process lifecycle of the native module: what happens at a fork and at
//! exit, and every C-level hook that makes it so. Each `pthread_atfork`,
//! `atexit` and `on_exit` registration of the package is here, made once,
//! when `_native` is imported ([`register`]); the cores (`crate::events`,
//! `crate::checkpoint`) keep the handlers that do the work and register
//! nothing themselves.
//!
//! * [`exit_gate`]: native calls in flight, the wait for them at exit, and
//!   the exit status a loss imposes;
//! * [`gil`]: the GIL re-taken while the interpreter finalises (and the
//!   panic boundary of every entry point);
//! * [`live_writers`]: the event writers flushed once more by C `exit()`;
//! * [`fork`]: the `pthread_atfork` handlers.
//!
//! # Fork
//!
//! A child has only the forking thread. In `fork()` itself (Python's
//! `os.fork` or any C library's), the [`fork`] handlers reset the exit gate
//! to what that thread holds (and drop the parent's exit duty), refresh the
//! cached pid, and point the child's copies of checkpoint lock descriptors
//! at /dev/null (the prepare handler makes a fork wait while a lock is being
//! taken). Python's `os.register_at_fork` hooks then, only for forks Python
//! makes: `_exit` marks the process a worker (events written through,
//! background saves made in the foreground: such a process may end by
//! `os._exit`), each event logger starts a fresh flush thread, and the
//! parent's background savers are forgotten (their threads did not survive;
//! the writers stay alive, never joined). A fork Python did not see is
//! caught later: a sink whose writer belongs to another pid opens its own,
//! and event ids reseed from the new pid.
//!
//! # Exit
//!
//! In this order, at a normal interpreter exit:
//!
//! 1. Python joins non-daemon threads, then runs its `atexit` hooks, last
//!    registered first: background savers are closed (their last requested
//!    save committed; a Ctrl-C abandons it), every event logger is flushed,
//!    and last `_exit`'s hook ([`exit_gate::drain_native_calls`]) closes the
//!    gate and waits, without the GIL, up to 60 s for daemon threads'
//!    native calls and `InFlight` blocks. A hook that finds work lost says
//!    so on stderr and calls [`exit_gate::fail_exit`].
//! 2. The interpreter finalises. Daemon threads are still running: one
//!    entering a native call now parks forever (the gate is closed); one
//!    inside [`gil::detach`] or [`gil::call_python`] that needs the GIL back
//!    parks forever instead of being unwound by CPython's `pthread_exit`,
//!    which would abort the process in Rust or pyarrow frames. Parked
//!    threads die with the process; nobody waits for them.
//! 3. C `exit()` runs its handlers, last registered first: those of
//!    libraries loaded after `_native`, then [`live_writers`]'s flush of
//!    every writer this process owns (lines daemon threads logged after
//!    step 1; the flush threads hold no Python object and still run), then
//!    [`exit_gate::enforce_exit_status`], which, when a loss was recorded
//!    and the status is 0, ends the process with status 1 (by SIGINT after a
//!    Ctrl-C), skipping the handlers registered before `_native`. A non-zero
//!    status the program set is kept.
//!
//! Who waits for what: the savers' hook waits for the background writer
//! threads; the loggers' hook and the C flush wait for the event flush
//! threads; the gate waits for daemon threads inside native code; nothing
//! waits for a parked thread. A process ending by `os._exit` or a signal
//! runs none of this, which is why workers write through.

pub(crate) mod exit_gate;
mod fork;
pub(crate) mod gil;
pub(crate) mod live_writers;

use std::ffi::{c_int, c_void};
use std::sync::Once;

use pyo3::prelude::*;

extern "C" {
    /// glibc's `on_exit`: like `atexit`, and the handler is given the
    /// status passed to `exit()`.
    fn on_exit(handler: extern "C" fn(c_int, *mut c_void), arg: *mut c_void) -> c_int;
}

/// Installs the process hooks (once per process) and adds the exit gate's
/// Python face to the module.
pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    static HOOKS: Once = Once::new();
    HOOKS.call_once(|| {
        fork::register_handlers();
        register_exit_handlers();
    });
    exit_gate::register(m)
}

/// C exit handlers run last registered first: the status is enforced after
/// the writers' last flush, since a loss that flush reports must count.
fn register_exit_handlers() {
    // SAFETY: plain functions without captured state; neither touches
    // Python, which is finalised by the time they run.
    unsafe {
        on_exit(exit_gate::enforce_exit_status, std::ptr::null_mut());
        libc::atexit(live_writers::flush_all_at_exit);
    }
}
