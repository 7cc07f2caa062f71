//! Fault injection for the crash, disk-full and I/O-error tests.
//!
//! `DATA_JUICER_ACCEL_FAULT=<point>:<action>[:<path part>][,...]` makes a save fail
//! at `point` (`shard_write`, `shard_sync`, `before_swap`, `exchange`,
//! `between_renames`, `after_swap`) with `eio`, `enospc`, `einval` (at
//! `exchange`: a filesystem without `RENAME_EXCHANGE`, so the non-atomic
//! fallback runs) or `abort` (the process dies on the spot, as under
//! `kill -9`), optionally only where the path contains `<path part>`.
//! `decode:slow` makes a load sleep 100 ms before each record batch it
//! decodes (a long load, for the Ctrl-C test); `lock_taken:slow` and
//! `lock_released:slow` widen the moments a fork could catch the lock of a
//! checkpoint directory half taken or half released.
//!
//! Compiled in only for the crate's own tests and with the `fault-injection`
//! feature (the Python test build); elsewhere `check` is an empty inline
//! function, so no environment variable can make a production process fail.

use std::io;
use std::path::Path;

pub const ENV_VAR: &str = "DATA_JUICER_ACCEL_FAULT";

/// True when this build honours [`ENV_VAR`].
pub const ENABLED: bool = cfg!(any(test, feature = "fault-injection"));

/// Returns the injected error for `point`, or aborts the process when asked to.
#[cfg(any(test, feature = "fault-injection"))]
pub fn check(point: &str, path: &Path) -> io::Result<()> {
    let Ok(specs) = std::env::var(ENV_VAR) else {
        return Ok(());
    };
    for spec in specs.split(',') {
        let mut parts = spec.splitn(3, ':');
        let (at, action, only) = (parts.next(), parts.next().unwrap_or(""), parts.next());
        if at == Some(point) && only.is_none_or(|part| path.to_string_lossy().contains(part)) {
            return act(action);
        }
    }
    Ok(())
}

#[cfg(any(test, feature = "fault-injection"))]
fn act(action: &str) -> io::Result<()> {
    match action {
        "eio" => Err(io::Error::from_raw_os_error(libc::EIO)),
        "enospc" => Err(io::Error::from_raw_os_error(libc::ENOSPC)),
        "einval" => Err(io::Error::from_raw_os_error(libc::EINVAL)),
        "abort" => std::process::abort(),
        "slow" => {
            std::thread::sleep(std::time::Duration::from_millis(100));
            Ok(())
        }
        _ => Ok(()),
    }
}

/// Release builds: no fault can be injected.
#[cfg(not(any(test, feature = "fault-injection")))]
#[inline(always)]
pub fn check(_point: &str, _path: &Path) -> io::Result<()> {
    Ok(())
}
