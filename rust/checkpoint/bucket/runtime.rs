//! The async runtime the bucket client runs on, and how its errors become
//! the checkpoint's.
//!
//! One small multi-thread runtime per process, made at the first use. A
//! forked child cannot use its parent's (the worker threads did not follow
//! the fork): it makes its own, and leaves the parent's alone, as dropping it
//! would wait for threads that do not exist.

use std::future::Future;
use std::io;
use std::path::PathBuf;
use std::sync::Mutex;

use tokio::runtime::{Builder, Handle, Runtime};

use crate::checkpoint::error::{CheckpointError, Result};

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
        .map_err(|e| {
            CheckpointError::Input(format!("cannot start the object-store client: {e}"))
        })?;
    // Lives as long as the process; a parent's, after a fork, is leaked.
    let runtime: &'static Runtime = Box::leak(Box::new(runtime));
    *slot = Some((pid, runtime));
    Ok(runtime.handle().clone())
}

/// Runs `future` to its end on the runtime, from a thread outside it.
pub fn block_on<F: Future>(future: F) -> Result<F::Output> {
    Ok(handle()?.block_on(future))
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
