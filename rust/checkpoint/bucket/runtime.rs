//! The async runtime the bucket client runs on, and how its errors become
//! the checkpoint's.
//!
//! One small multi-thread runtime per process, made at the first use. A
//! forked child cannot use its parent's (the worker threads did not follow
//! the fork): it makes its own, and leaves the parent's alone, as dropping it
//! would wait for threads that do not exist.

use std::cell::RefCell;
use std::future::Future;
use std::io;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::runtime::{Builder, Handle, Runtime};

use crate::checkpoint::error::{CheckpointError, Result};
use crate::checkpoint::memory;

/// Network waits, not computation: two threads keep many requests in flight.
const WORKER_THREADS: usize = 2;

static RUNTIME: Mutex<Option<(u32, &'static Runtime)>> = Mutex::new(None);

/// The runtime of this process, made if needed.
pub fn handle() -> Result<Handle> {
    let mut slot = RUNTIME.lock().unwrap_or_else(|e| e.into_inner());
    let pid = std::process::id();
    if let Some((owner, runtime)) = *slot {
        if owner == pid {
            return Ok(runtime.handle().clone());
        }
    }
    install_tls_provider();
    let runtime = Builder::new_multi_thread()
        .worker_threads(WORKER_THREADS)
        .thread_name("dja-bucket")
        .enable_all()
        .build()
        // Only its threads can fail to start: the process is out of memory.
        .map_err(|e| memory::thread_error("the object-store client's threads", e))?;
    // Lives as long as the process; a parent's, after a fork, is leaked.
    let runtime: &'static Runtime = Box::leak(Box::new(runtime));
    *slot = Some((pid, runtime));
    Ok(runtime.handle().clone())
}

thread_local! {
    /// The cancel flag of the call this thread runs for Python (see
    /// [`with_call_cancel`]): every request it waits for gives up on it.
    static CALL_CANCEL: RefCell<Option<Arc<AtomicBool>>> = const { RefCell::new(None) };
}

/// Runs `work` with `cancel` as the flag every [`block_on`] of this thread
/// gives up on: a Ctrl-C stops a call waiting on a stalled server.
pub fn with_call_cancel<T>(cancel: &Arc<AtomicBool>, work: impl FnOnce() -> T) -> T {
    let previous = CALL_CANCEL.with(|slot| slot.replace(Some(cancel.clone())));
    let result = work();
    CALL_CANCEL.with(|slot| *slot.borrow_mut() = previous);
    result
}

/// Runs `future` to its end on the runtime, from a thread outside it;
/// `Err(Cancelled)` once the call's cancel flag is raised.
pub fn block_on<F: Future>(future: F) -> Result<F::Output> {
    let cancel = CALL_CANCEL.with(|slot| slot.borrow().clone());
    block_on_cancellable(future, cancel.as_deref())
}

/// How long a clean-up (an abort, a delete) may wait on the server; past
/// that its objects are left to the next save's clean-up.
const CLEANUP_WAIT: Duration = Duration::from_secs(10);

/// Runs a clean-up after a failure or a cancel: not cancellable, as it
/// runs after one, but bounded. `None` when it did not finish in time.
pub fn block_on_cleanup<F: Future>(future: F) -> Option<F::Output> {
    let handle = handle().ok()?;
    handle.block_on(async { tokio::time::timeout(CLEANUP_WAIT, future).await.ok() })
}

/// rustls needs a process-wide crypto provider: ring, which builds without
/// a C toolchain (aws-lc, rustls' default, needs one and doubles the wheel).
/// One the process installed first is kept.
pub fn install_tls_provider() {
    // Deprecated for lacking post-quantum key exchange, which S3 endpoints
    // do not require.
    #[allow(deprecated)]
    let provider = rustls::crypto::ring::default_provider();
    let _ = provider.install_default();
}

/// How often a request waited for looks for a cancel (Ctrl-C).
const CANCEL_POLL: Duration = Duration::from_millis(100);

/// [`block_on`], which gives up with `Err(Cancelled)` once `cancel` is
/// raised: a stalled server (the client retries for minutes) must not make
/// Ctrl-C wait. The request is dropped; an upload it belonged to is aborted
/// by its owner.
pub fn block_on_cancellable<F: Future>(
    future: F,
    cancel: Option<&AtomicBool>,
) -> Result<F::Output> {
    let Some(cancel) = cancel else {
        return Ok(handle()?.block_on(future));
    };
    handle()?.block_on(async {
        tokio::pin!(future);
        loop {
            if cancel.load(Ordering::Relaxed) {
                return Err(CheckpointError::Cancelled);
            }
            if let Ok(output) = tokio::time::timeout(CANCEL_POLL, &mut future).await {
                return Ok(output);
            }
        }
    })
}

/// An object-store error on `shown` (an `s3://` name) as the checkpoint's:
/// a conflicting write is a lost race, anything else an I/O error.
pub fn store_error(shown: PathBuf, error: object_store::Error) -> CheckpointError {
    use object_store::Error as E;
    let kind = match &error {
        E::NotFound { .. } => io::ErrorKind::NotFound,
        E::PermissionDenied { .. } | E::Unauthenticated { .. } => io::ErrorKind::PermissionDenied,
        E::AlreadyExists { .. } | E::Precondition { .. } => {
            return CheckpointError::Raced {
                location: shown.display().to_string(),
                detail: error.to_string(),
            }
        }
        _ => io::ErrorKind::Other,
    };
    CheckpointError::io(shown, io::Error::new(kind, error.to_string()))
}
