//! How much memory this process may still use: the tightest of its cgroup's
//! limit, its address-space limit (`RLIMIT_AS`) and the system's
//! `MemAvailable`. A load checks the sizes a checkpoint declares against it
//! before allocating, so an honest checkpoint that does not fit is a clear
//! `MemoryError` rather than a killed process.

use std::fs;
use std::path::Path;

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

/// The tightest headroom of this process's memory cgroups.
fn cgroup_headroom() -> Option<(u64, String)> {
    let own = fs::read_to_string("/proc/self/cgroup").ok()?;
    cgroup_headroom_in(
        &own,
        Path::new("/sys/fs/cgroup"),
        Path::new("/sys/fs/cgroup/memory"),
    )
}

/// The tightest `limit - usage` over the cgroups named in `own` (the text
/// of /proc/self/cgroup) and each of their ancestors up to the mount root:
/// `memory.max - memory.current` for cgroup v2 (the `0::` line, under
/// `v2_root`), `memory.limit_in_bytes - memory.usage_in_bytes` for the v1
/// memory controller (the line whose controller list names `memory`, under
/// `v1_root`). A v1 child's own limit does not show its parents' limits,
/// hence the walk up. v1 usage counts reclaimable page cache too, so this
/// underestimates the headroom there: that errs towards a `MemoryError`
/// rather than an OOM kill. A cgroup directory that is not visible (another
/// mount namespace) is skipped; its ancestors are still read.
fn cgroup_headroom_in(own: &str, v2_root: &Path, v1_root: &Path) -> Option<(u64, String)> {
    let mut best: Option<(u64, String)> = None;
    for line in own.lines() {
        let mut fields = line.splitn(3, ':');
        let (Some(_), Some(controllers), Some(rel)) = (fields.next(), fields.next(), fields.next())
        else {
            continue;
        };
        let (root, limit_file, usage_file) = if controllers.is_empty() {
            (v2_root, "memory.max", "memory.current")
        } else if controllers.split(',').any(|c| c == "memory") {
            (v1_root, "memory.limit_in_bytes", "memory.usage_in_bytes")
        } else {
            continue;
        };
        let mut dir = root.join(rel.trim_start_matches('/'));
        loop {
            let limit = dir.join(limit_file);
            if let (Some(max), Some(used)) = (read_u64(&limit), read_u64(&dir.join(usage_file))) {
                let free = max.saturating_sub(used);
                if best.as_ref().is_none_or(|(b, _)| free < *b) {
                    best = Some((free, format!("cgroup limit {}", limit.display())));
                }
            }
            if dir.as_path() == root || !dir.pop() || !dir.starts_with(root) {
                break;
            }
        }
    }
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

    fn write_cgroup(dir: &Path, files: [(&str, &str); 2]) {
        fs::create_dir_all(dir).unwrap();
        for (name, value) in files {
            fs::write(dir.join(name), value).unwrap();
        }
    }

    #[test]
    fn follows_the_v1_memory_controller_line_and_its_ancestors() {
        let tmp = tempfile::tempdir().unwrap();
        let v1 = tmp.path().join("memory");
        let v1_files = |limit, usage| {
            [
                ("memory.limit_in_bytes", limit),
                ("memory.usage_in_bytes", usage),
            ]
        };
        write_cgroup(&v1, v1_files("9223372036854771712", "5000000000"));
        write_cgroup(&v1.join("outer"), v1_files("1000000", "400000"));
        write_cgroup(
            &v1.join("outer/job"),
            v1_files("9223372036854771712", "300000"),
        );
        let own = "5:devices:/\n4:cpu,memory:/outer/job\n0::/\n";
        let (free, name) = cgroup_headroom_in(own, &tmp.path().join("v2"), &v1).unwrap();
        assert_eq!(free, 600_000, "the parent's limit binds: {name}");
        assert!(name.ends_with("outer/memory.limit_in_bytes"), "{name}");
        write_cgroup(&v1.join("outer/job"), v1_files("500000", "300000"));
        assert_eq!(
            cgroup_headroom_in(own, &tmp.path().join("v2"), &v1)
                .unwrap()
                .0,
            200_000
        );
        // The root alone counts when the process's own directory is not visible.
        let hidden = "4:memory:/elsewhere/job\n";
        write_cgroup(&v1, v1_files("6000000000", "5000000000"));
        assert_eq!(
            cgroup_headroom_in(hidden, &tmp.path().join("v2"), &v1)
                .unwrap()
                .0,
            1_000_000_000
        );
        assert_eq!(
            cgroup_headroom_in("4:cpu:/outer/job\n", &tmp.path().join("v2"), &v1),
            None
        );
    }

    #[test]
    fn follows_the_v2_line_and_its_ancestors() {
        let tmp = tempfile::tempdir().unwrap();
        let v2 = tmp.path().join("unified");
        let v2_files = |max, current| [("memory.max", max), ("memory.current", current)];
        write_cgroup(&v2.join("a"), v2_files("800000", "100000"));
        write_cgroup(&v2.join("a/b"), v2_files("max", "50000"));
        let (free, _) = cgroup_headroom_in("0::/a/b\n", &v2, &tmp.path().join("v1")).unwrap();
        assert_eq!(free, 700_000);
    }
}
