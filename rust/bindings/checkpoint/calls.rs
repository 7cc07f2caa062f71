//! Running checkpoint work without the GIL: [`detached`] for short calls,
//! [`interruptible`] for long ones that must stop on Ctrl-C. A panic in the
//! work comes back as a Python exception, never across the boundary.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::time::Duration;

use arrow_array::RecordBatch;
use arrow_schema::ArrowError;
use pyo3::exceptions::PyRuntimeError;
use pyo3::prelude::*;

use super::bridge::to_py_err;
use crate::bindings::lifecycle::gil;
use crate::checkpoint::bucket::runtime::with_call_cancel;
use crate::checkpoint::{self, CheckpointError};

/// How often a long call looks for Ctrl-C.
pub const SIGNAL_POLL: Duration = Duration::from_millis(100);

/// Runs `f` on a worker thread without the GIL while this thread checks
/// for Ctrl-C. On one, `cancel` is raised, `f` is waited for (it stops at
/// its next piece of work) and the KeyboardInterrupt is raised.
pub fn interruptible<T: Send>(
    py: Python<'_>,
    f: impl FnOnce(Arc<AtomicBool>) -> checkpoint::Result<T> + Send,
) -> PyResult<T> {
    let cancel = Arc::new(AtomicBool::new(false));
    let (done, result) = mpsc::channel();
    // `f` runs on the worker, or here when no thread can be started (a
    // memory limit): then without Ctrl-C checks, but it runs.
    let f = std::sync::Mutex::new(Some(f));
    let run = |cancel: Arc<AtomicBool>| {
        let f = f.lock().ok().and_then(|mut f| f.take());
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| match f {
            // Requests to a bucket made by `f` on this thread give up on it too.
            Some(f) => with_call_cancel(&cancel.clone(), || f(cancel)),
            None => Err(CheckpointError::Internal(
                "the checkpoint work ran twice".into(),
            )),
        }))
        .unwrap_or_else(|payload| Err(CheckpointError::from_panic(payload)))
    };
    std::thread::scope(|scope| {
        let worker_cancel = cancel.clone();
        let spawned = std::thread::Builder::new()
            .name("dja-ckpt-call".into())
            .spawn_scoped(scope, || {
                let _ = done.send(run(worker_cancel));
            });
        if spawned.is_err() {
            return gil::detach(py, || run(cancel.clone())).map_err(to_py_err);
        }
        let mut interrupt: Option<PyErr> = None;
        let mut result = result;
        loop {
            // A Receiver is Send but not Sync: hand it over and back. The GIL
            // is re-taken through `gil::detach`, so a daemon thread here when
            // the interpreter exits is parked instead of aborting the process.
            let (received, back) =
                gil::detach(py, move || (result.recv_timeout(SIGNAL_POLL), result));
            result = back;
            match received {
                Ok(outcome) => {
                    return match interrupt {
                        Some(err) => Err(err),
                        None => outcome.map_err(to_py_err),
                    }
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    if interrupt.is_none() {
                        if let Err(err) = py.check_signals() {
                            cancel.store(true, Ordering::Relaxed);
                            interrupt = Some(err);
                        }
                    }
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    return Err(PyRuntimeError::new_err("checkpoint worker thread vanished"))
                }
            }
        }
    })
}

/// Ends a stream of batches early once `cancel` is raised.
pub struct Cancellable<I> {
    pub inner: I,
    pub cancel: Arc<AtomicBool>,
}

impl<I: Iterator<Item = Result<RecordBatch, ArrowError>>> Iterator for Cancellable<I> {
    type Item = Result<RecordBatch, ArrowError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.cancel.load(Ordering::Relaxed) {
            return Some(Err(ArrowError::ExternalError("interrupted".into())));
        }
        self.inner.next()
    }
}

/// Runs `f` without the GIL; a panic inside comes back as RuntimeError.
pub fn detached<T: Send>(
    py: Python<'_>,
    f: impl FnOnce() -> checkpoint::Result<T> + Send,
) -> PyResult<T> {
    gil::detach(py, || {
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(f))
            .unwrap_or_else(|payload| Err(CheckpointError::from_panic(payload)))
    })
    .map_err(to_py_err)
}
