//! The generation a lazy load reads, pinned with hard links.
//!
//! A Ray load returns a dataset whose read tasks run later; a save committed
//! meanwhile replaces `latest/` and unlinks the files of the generation it
//! replaced. So a load hard-links the shards of the generation committed now
//! into a directory of its own, `ckpt_dir/.readers/<host>-<pid>-<random>/`,
//! and its tasks read them there: the load returns the old checkpoint or the
//! new one, whole. The manifest and every link come through one handle on
//! `latest/` (see [`committed_generation`]), so they are of one generation.
//!
//! The load reads `latest/` in place ([`InPlace`]) where links cannot be
//! made, when `.readers` is a symlink (links are made only inside the
//! checkpoint), or when saves replaced the generation during every attempt.
//! The load that made a pin removes it ([`unpin`]); the pins of dead
//! processes of this host go at the next load or save ([`remove_dead_pins`]).

use std::ffi::CStr;
use std::fmt;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use super::commit::LATEST;
use super::dirfd::CheckpointDir;
use super::error::{CheckpointError, Result};
use super::manifest::Manifest;
use super::shards::committed_generation;

/// Where loads keep their links, inside the checkpoint directory.
pub const READERS_DIR: &str = ".readers";
/// Saves committing faster than a load can link: read in place after this many tries.
const PIN_ATTEMPTS: usize = 5;

/// What a load reads: its pin, or `latest/` itself when `in_place` says why.
pub struct Pinned {
    pub dir: PathBuf,
    pub manifest: Manifest,
    pub in_place: Option<InPlace>,
}

/// Why a load reads `latest/` in place instead of a pin of its own.
#[derive(Debug)]
pub enum InPlace {
    /// `ckpt_dir/.readers` is a symlink.
    ReadersSymlink(PathBuf),
    /// The filesystem or the permissions allow no hard links here.
    NoHardLinks(PathBuf, io::Error),
    /// A save replaced the generation during each attempt to link it.
    KeptReplaced(PathBuf),
}

impl InPlace {
    /// Expected where the filesystem has no hard links; the others deserve a warning.
    pub fn is_expected(&self) -> bool {
        matches!(self, InPlace::NoHardLinks(..))
    }
}

impl fmt::Display for InPlace {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            InPlace::ReadersSymlink(readers) => write!(
                f,
                "{} is a symbolic link: reading {} in place",
                readers.display(),
                readers.with_file_name(LATEST).display()
            ),
            InPlace::NoHardLinks(ckpt_dir, error) => write!(
                f,
                "No hard links in {} ({error}): its shards are read in place",
                ckpt_dir.display()
            ),
            InPlace::KeptReplaced(ckpt_dir) => write!(
                f,
                "{} was saved again during each of {PIN_ATTEMPTS} tries to pin it: reading it in place",
                ckpt_dir.display()
            ),
        }
    }
}

/// Pins the generation committed in `ckpt_dir` for a load of this process
/// (first removing the pins of dead loaders). `None` when nothing is committed.
pub fn pin_generation(ckpt_dir: &Path) -> Result<Option<Pinned>> {
    let readers = ckpt_dir.join(READERS_DIR);
    if fs::symlink_metadata(&readers).is_ok_and(|m| m.file_type().is_symlink()) {
        return in_place(ckpt_dir, InPlace::ReadersSymlink(readers));
    }
    remove_dead_pins(ckpt_dir);
    for _ in 0..PIN_ATTEMPTS {
        let Some((latest, manifest)) = committed_generation(ckpt_dir)? else {
            return Ok(None);
        };
        let pin = readers.join(pin_name());
        match link_generation(&latest, &manifest, &pin) {
            Ok(()) => {
                return Ok(Some(Pinned {
                    dir: pin,
                    manifest,
                    in_place: None,
                }))
            }
            Err(e) => {
                let _ = fs::remove_dir_all(&pin);
                match e.raw_os_error() {
                    // A save replaced the generation while it was linked.
                    Some(libc::ENOENT) => continue,
                    Some(
                        libc::EPERM | libc::EXDEV | libc::EMLINK | libc::ENOTSUP | libc::EACCES,
                    ) => {
                        let why = InPlace::NoHardLinks(ckpt_dir.to_path_buf(), e);
                        return Ok(Some(Pinned {
                            dir: latest.path().to_path_buf(),
                            manifest,
                            in_place: Some(why),
                        }));
                    }
                    _ => return Err(CheckpointError::io(&pin, e)),
                }
            }
        }
    }
    in_place(ckpt_dir, InPlace::KeptReplaced(ckpt_dir.to_path_buf()))
}

/// The committed generation of `ckpt_dir`, read in place for `why`.
fn in_place(ckpt_dir: &Path, why: InPlace) -> Result<Option<Pinned>> {
    Ok(
        committed_generation(ckpt_dir)?.map(|(latest, manifest)| Pinned {
            dir: latest.path().to_path_buf(),
            manifest,
            in_place: Some(why),
        }),
    )
}

/// Hard-links every shard `manifest` lists from `latest` into the new
/// directory `pin`.
fn link_generation(latest: &CheckpointDir, manifest: &Manifest, pin: &Path) -> io::Result<()> {
    fs::create_dir_all(pin)?;
    for shard in &manifest.shards {
        latest.hard_link(&shard.file, &pin.join(&shard.file))?;
    }
    Ok(())
}

/// `<host>-<pid>-<12 hex digits>`: unique, and telling which process of
/// which host holds it.
fn pin_name() -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    let seed = format!(
        "{nanos}-{}-{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    );
    let random = xxhash_rust::xxh3::xxh3_64(seed.as_bytes()) & 0xffff_ffff_ffff;
    format!("{}-{}-{random:012x}", host_name(), std::process::id())
}

fn host_name() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: the buffer is writable for its whole length.
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    let name = CStr::from_bytes_until_nul(&buf).ok().filter(|_| rc == 0);
    name.map_or_else(
        || "localhost".to_string(),
        |n| n.to_string_lossy().into_owned(),
    )
}

/// Removes a load's links, and `.readers/` once no load uses it (a load
/// creating its pin meanwhile finds its parent gone and creates it again).
/// With `owner`, only in that process: a forked child exiting leaves its
/// parent's pins alone.
pub fn unpin(pin: &Path, owner: Option<u32>) {
    if owner.is_some_and(|owner| owner != std::process::id()) {
        return;
    }
    let _ = fs::remove_dir_all(pin);
    if let Some(readers) = pin.parent() {
        let _ = fs::remove_dir(readers);
    }
}

/// Removes the pins of loads by processes of this host that are gone
/// (killed before their datasets were collected). A symlinked `.readers`
/// is left alone: nothing outside the checkpoint is removed.
pub fn remove_dead_pins(ckpt_dir: &Path) {
    let readers = ckpt_dir.join(READERS_DIR);
    if !fs::symlink_metadata(&readers).is_ok_and(|m| m.is_dir()) {
        return;
    }
    let Ok(entries) = fs::read_dir(&readers) else {
        return;
    };
    let prefix = format!("{}-", host_name());
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let pid = name
            .strip_prefix(&prefix)
            .and_then(|rest| rest.split('-').next())
            .filter(|pid| !pid.is_empty() && pid.bytes().all(|b| b.is_ascii_digit()))
            .and_then(|pid| pid.parse::<libc::pid_t>().ok());
        if pid.is_some_and(|pid| !process_alive(pid)) {
            unpin(&entry.path(), None);
        }
    }
}

fn process_alive(pid: libc::pid_t) -> bool {
    // SAFETY: signal 0 only checks that the process exists.
    let rc = unsafe { libc::kill(pid, 0) };
    rc == 0 || io::Error::last_os_error().raw_os_error() != Some(libc::ESRCH)
}

#[cfg(test)]
mod tests {
    use super::super::tests::{batch, schema};
    use super::super::{manifest_for, write_shards, SaveRequest, Staging, WriteOptions};
    use super::*;

    /// Commits a checkpoint of `rows` rows into `ckpt_dir`.
    fn commit_rows(ckpt_dir: &Path, rows: i64) -> Manifest {
        let staging = Staging::create(ckpt_dir).unwrap();
        let request = SaveRequest {
            kind: "ray",
            options: WriteOptions::default(),
        };
        let input = std::iter::once(Ok(batch(0, rows)));
        let shards = write_shards(staging.dir(), schema(), input, &request.options).unwrap();
        let manifest = manifest_for(&request, &shards);
        staging.commit(manifest.clone()).unwrap();
        Manifest::read(&ckpt_dir.join(LATEST)).unwrap().unwrap()
    }

    fn dead_pid() -> u32 {
        let mut child = std::process::Command::new("true").spawn().unwrap();
        child.wait().unwrap();
        child.id()
    }

    #[test]
    fn a_pin_keeps_its_generation_through_a_resave_until_unpinned() {
        let tmp = tempfile::tempdir().unwrap();
        assert!(pin_generation(tmp.path()).unwrap().is_none());
        let first = commit_rows(tmp.path(), 10);
        let pinned = pin_generation(tmp.path()).unwrap().unwrap();
        assert!(pinned.in_place.is_none());
        assert_eq!(pinned.manifest.shards, first.shards);
        commit_rows(tmp.path(), 20);
        for shard in &first.shards {
            let linked = fs::metadata(pinned.dir.join(&shard.file)).unwrap();
            assert_eq!(linked.len(), shard.bytes);
        }
        unpin(&pinned.dir, Some(std::process::id()));
        assert!(!tmp.path().join(READERS_DIR).exists());
    }

    #[test]
    fn dead_pins_go_and_a_symlinked_readers_is_neither_followed_nor_emptied() {
        let tmp = tempfile::tempdir().unwrap();
        commit_rows(tmp.path(), 10);
        let dead = format!("{}-{}-0123456789ab", host_name(), dead_pid());
        let readers = tmp.path().join(READERS_DIR);
        fs::create_dir_all(readers.join(&dead)).unwrap();
        remove_dead_pins(tmp.path());
        assert!(!readers.exists());

        let outside = tmp.path().join("outside");
        fs::create_dir_all(outside.join(&dead)).unwrap();
        std::os::unix::fs::symlink(&outside, &readers).unwrap();
        remove_dead_pins(tmp.path());
        let pinned = pin_generation(tmp.path()).unwrap().unwrap();
        assert!(matches!(pinned.in_place, Some(InPlace::ReadersSymlink(_))));
        assert_eq!(pinned.dir, tmp.path().join(LATEST));
        assert_eq!(
            fs::read_dir(&outside).unwrap().count(),
            1,
            "nothing outside the checkpoint is linked or removed"
        );
    }

    #[test]
    fn pin_names_carry_host_and_pid_and_differ() {
        let (a, b) = (pin_name(), pin_name());
        assert_ne!(a, b);
        assert!(a.starts_with(&format!("{}-{}-", host_name(), std::process::id())));
    }

    #[test]
    fn a_dead_process_is_told_from_a_live_one() {
        assert!(process_alive(std::process::id() as libc::pid_t));
        assert!(!process_alive(dead_pid() as libc::pid_t));
    }
}
