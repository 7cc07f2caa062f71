//! How much memory this process may still use: the tightest of its cgroup's
//! limit, its address-space limit (`RLIMIT_AS`) and the system's
//! `MemAvailable`. A load checks the sizes a checkpoint declares against it
//! before allocating, so an honest checkpoint that does not fit is a clear
//! `MemoryError` rather than a killed process.

use std::fs;
use std::path::{Path, PathBuf};

use super::error::{CheckpointError, Result};

/// Address space a thread of this crate reserves for its stack (Rust's
/// default, 2 MiB) plus its guard page, rounded up.
pub const THREAD_BYTES: u64 = 3 << 20;

/// Fails with a clear out-of-memory error, before anything is allocated,
/// when `bytes` more would not fit: beyond the tightest limit of
/// [`available_memory`], or not allocatable now (a probe reserves the
/// address space, touches no page, and frees it). Rust aborts the process
/// on a failed allocation it did not ask to handle, and the encoders of
/// arrow and the IPC writer allocate that way: this check keeps a save
/// under a memory limit from getting that far.
pub fn ensure_room(bytes: u64, what: &str) -> Result<()> {
    let available = available_memory();
    let fits_limit = available.as_ref().is_none_or(|(free, _)| bytes <= *free);
    let mut probe: Vec<u8> = Vec::new();
    if fits_limit
        && usize::try_from(bytes)
            .ok()
            .is_some_and(|n| probe.try_reserve_exact(n).is_ok())
    {
        return Ok(());
    }
    Err(CheckpointError::NoMemory {
        what: what.to_string(),
        needed: bytes,
        available,
    })
}

/// The error for a thread that could not be started: the system had no
/// memory (or no thread) left for it.
pub fn thread_error(what: &str, error: std::io::Error) -> CheckpointError {
    CheckpointError::NoMemory {
        what: format!("starting {what} ({error})"),
        needed: THREAD_BYTES,
        available: available_memory(),
    }
}

/// Bytes this process may still allocate, and which limit says so; `None`
/// when no limit could be read.
pub fn available_memory() -> Option<(u64, String)> {
    [cgroup_headroom(), address_space_headroom(), mem_available()]
        .into_iter()
        .flatten()
        .min_by_key(|(bytes, _)| *bytes)
}

fn read_u64(path: &Path) -> Option<u64> {
    fs::read_to_string(path).ok()?.trim().parse().ok()
}

/// `memory.max - memory.current` of this process's cgroup (v2) and of each
/// of its ancestors, or the v1 memory controller's limit minus usage.
fn cgroup_headroom() -> Option<(u64, String)> {
    let own = fs::read_to_string("/proc/self/cgroup").ok()?;
    let mut best: Option<(u64, String)> = None;
    let mut consider = |limit: Option<u64>, used: Option<u64>, name: String| {
        if let (Some(limit), Some(used)) = (limit, used) {
            let free = limit.saturating_sub(used);
            if best.as_ref().is_none_or(|(b, _)| free < *b) {
                best = Some((free, name));
            }
        }
    };
    for line in own.lines() {
        if let Some(rel) = line.strip_prefix("0::") {
            let mut dir = PathBuf::from("/sys/fs/cgroup").join(rel.trim_start_matches('/'));
            loop {
                consider(
                    read_u64(&dir.join("memory.max")),
                    read_u64(&dir.join("memory.current")),
                    format!("cgroup limit {}", dir.join("memory.max").display()),
                );
                if !dir.pop() || !dir.starts_with("/sys/fs/cgroup") {
                    break;
                }
            }
        }
    }
    let v1 = Path::new("/sys/fs/cgroup/memory");
    consider(
        read_u64(&v1.join("memory.limit_in_bytes")),
        read_u64(&v1.join("memory.usage_in_bytes")),
        "cgroup memory.limit_in_bytes".into(),
    );
    best
}

/// The process's address-space limit (`RLIMIT_AS`), if it has one.
pub fn address_space_limit() -> Option<u64> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into `limit`.
    if unsafe { libc::getrlimit(libc::RLIMIT_AS, &mut limit) } != 0
        || limit.rlim_cur == libc::RLIM_INFINITY
    {
        return None;
    }
    Some(limit.rlim_cur)
}

/// `RLIMIT_AS` minus the address space already mapped.
fn address_space_headroom() -> Option<(u64, String)> {
    let limit = address_space_limit()?;
    let pages: u64 = fs::read_to_string("/proc/self/statm")
        .ok()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()?;
    // SAFETY: sysconf has no preconditions.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) }.max(1) as u64;
    let used = pages.saturating_mul(page);
    Some((
        limit.saturating_sub(used),
        format!("RLIMIT_AS of {limit} bytes"),
    ))
}

/// `MemAvailable` of /proc/meminfo.
fn mem_available() -> Option<(u64, String)> {
    let info = fs::read_to_string("/proc/meminfo").ok()?;
    let line = info.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some((kib * 1024, "MemAvailable of the system".into()))
}

/// The byte count in an allocation failure's message ("could not allocate a
/// buffer of N bytes"), as the zstd crate reports it through arrow.
pub fn failed_allocation_size(message: &str) -> Option<u64> {
    let rest = &message[message.find("could not allocate")?..];
    rest.split(|c: char| !c.is_ascii_digit())
        .find(|s| !s.is_empty())?
        .parse()
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn some_limit_is_known_on_linux() {
        let (bytes, limit) = available_memory().expect("MemAvailable at least");
        assert!(bytes > 0, "{limit}");
    }

    #[test]
    fn reads_the_size_of_a_failed_allocation() {
        assert_eq!(
            failed_allocation_size("Io error: could not allocate a buffer of 5000000000 bytes"),
            Some(5_000_000_000)
        );
        assert_eq!(failed_allocation_size("checksum mismatch"), None);
    }
}
