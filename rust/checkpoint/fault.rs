//! Fault injection for the crash, disk-full and I/O-error tests.
//!
//! `DATA_JUICER_ACCEL_FAULT=<point>:<action>` makes the save fail at `point`
//! (`shard_write`, `before_swap`, `after_swap`) with `eio`, `enospc`, or
//! `abort` (the process dies on the spot, as under `kill -9`). Unset, as in
//! production, a check is one environment lookup per shard or commit step.

use std::io;

pub const ENV_VAR: &str = "DATA_JUICER_ACCEL_FAULT";

/// Returns the injected error for `point`, or aborts the process when asked to.
pub fn check(point: &str) -> io::Result<()> {
    let Ok(spec) = std::env::var(ENV_VAR) else {
        return Ok(());
    };
    let Some((at, action)) = spec.split_once(':') else {
        return Ok(());
    };
    if at != point {
        return Ok(());
    }
    match action {
        "eio" => Err(io::Error::from_raw_os_error(libc::EIO)),
        "enospc" => Err(io::Error::from_raw_os_error(libc::ENOSPC)),
        "abort" => std::process::abort(),
        _ => Ok(()),
    }
}
