//! Fault injection for the crash, disk-full and I/O-error tests.
//!
//! `DATA_JUICER_ACCEL_FAULT=<point>:<action>[:<path part>]` makes a save fail
//! at `point` (`shard_write`, `shard_sync`, `before_swap`, `after_swap`) with
//! `eio`, `enospc`, or `abort` (the process dies on the spot, as under
//! `kill -9`), optionally only where the path contains `<path part>`. Unset,
//! as in production, a check is one environment lookup per message or step.

use std::io;
use std::path::Path;

pub const ENV_VAR: &str = "DATA_JUICER_ACCEL_FAULT";

/// Returns the injected error for `point`, or aborts the process when asked to.
pub fn check(point: &str, path: &Path) -> io::Result<()> {
    let Ok(spec) = std::env::var(ENV_VAR) else {
        return Ok(());
    };
    let mut parts = spec.splitn(3, ':');
    let (at, action, only) = (parts.next(), parts.next().unwrap_or(""), parts.next());
    if at != Some(point) || only.is_some_and(|part| !path.to_string_lossy().contains(part)) {
        return Ok(());
    }
    match action {
        "eio" => Err(io::Error::from_raw_os_error(libc::EIO)),
        "enospc" => Err(io::Error::from_raw_os_error(libc::ENOSPC)),
        "abort" => std::process::abort(),
        _ => Ok(()),
    }
}
