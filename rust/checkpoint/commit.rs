//! Staging and atomic commit of a checkpoint directory.
//!
//! A save writes everything into a fresh hidden sibling of `latest/`, fsyncs
//! it, then swaps it with `latest/` in one `renameat2(RENAME_EXCHANGE)`: at
//! any crash point `latest/` is the previous checkpoint or the new one, never
//! a mix. No file of the previous checkpoint is rewritten (a reader may have
//! it memory-mapped); its directory is unlinked after the swap.
//!
//! `ckpt_dir/ckpt_op.json` becomes a symlink to `latest/ckpt_op.json`, so the
//! same exchange swaps the op record with the rows it describes, and callers
//! that open `ckpt_op.json` (the original Data-Juicer too) read through it.

use std::cell::UnsafeCell;
use std::ffi::CString;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{symlink, MetadataExt, OpenOptionsExt};
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicI32, AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use super::dirfd::read_bounded;
use super::error::{CheckpointError, IoContext, Result};
use super::fault;
use super::manifest::{checksum_hex, FileEntry, Manifest, MANIFEST_FILE};

pub const LATEST: &str = "latest";
pub const OP_RECORD: &str = "ckpt_op.json";
const LOCK_FILE: &str = ".accel.lock";
const STAGING_PREFIX: &str = ".latest.staging-";
const OLD_PREFIX: &str = ".latest.old-";
const LINK_PREFIX: &str = ".ckpt_op.json.link-";
/// An op record of the original Data-Juicer is a few KB; copy no more.
const MAX_OP_RECORD_BYTES: u64 = 64 << 20;

/// A checkpoint being written. Dropped without `commit`, it removes itself.
pub struct Staging {
    ckpt_dir: PathBuf,
    dir: PathBuf,
    files: Vec<FileEntry>,
    _lock: DirLock,
    committed: bool,
    /// A child forked during the save must not remove the parent's files.
    owner_pid: u32,
}

impl Staging {
    /// Creates `ckpt_dir` if needed, takes its lock, clears what an
    /// interrupted save left behind, and makes a fresh staging directory.
    pub fn create(ckpt_dir: &Path) -> Result<Staging> {
        Self::create_for(ckpt_dir, None)
    }

    /// [`Staging::create`] on behalf of `holder` (e.g. the Python manager
    /// saving): another saver of this process that finds the lock taken is
    /// told who holds it.
    pub fn create_for(ckpt_dir: &Path, holder: Option<&str>) -> Result<Staging> {
        fs::create_dir_all(ckpt_dir).at(ckpt_dir)?;
        let lock = DirLock::acquire(ckpt_dir, holder)?;
        remove_leftovers(ckpt_dir)?;
        let dir = ckpt_dir.join(format!(
            "{STAGING_PREFIX}{}-{}",
            std::process::id(),
            unique()
        ));
        fs::create_dir(&dir).at(&dir)?;
        Ok(Staging {
            ckpt_dir: ckpt_dir.to_path_buf(),
            dir,
            files: Vec::new(),
            _lock: lock,
            committed: false,
            owner_pid: std::process::id(),
        })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Writes a small file (state.json, ckpt_op.json, ...) into the staging
    /// directory, fsynced, and lists it in the manifest.
    pub fn add_file(&mut self, name: &str, bytes: &[u8]) -> Result<()> {
        if !super::manifest::is_safe_file_name(name) || name == MANIFEST_FILE {
            return Err(CheckpointError::Input(format!(
                "{name:?} is not a valid checkpoint file name"
            )));
        }
        let path = self.dir.join(name);
        write_synced(&path, bytes)?;
        self.files.retain(|f| f.file != name);
        self.files.push(FileEntry {
            file: name.to_string(),
            bytes: bytes.len() as u64,
            xxh3_64: checksum_hex(xxhash_rust::xxh3::xxh3_64(bytes)),
            rows: None,
            raw_bytes: None,
        });
        Ok(())
    }

    /// Writes the manifest last, then swaps the staging directory in as
    /// `latest/`. Returns the path of `latest/`.
    pub fn commit(mut self, mut manifest: Manifest) -> Result<PathBuf> {
        manifest.files = std::mem::take(&mut self.files);
        write_synced(&self.dir.join(MANIFEST_FILE), manifest.to_json().as_bytes())?;
        sync_dir(&self.dir)?;
        let latest = self.ckpt_dir.join(LATEST);
        if manifest.files.iter().any(|f| f.file == OP_RECORD) {
            link_op_record(&self.ckpt_dir, &latest)?;
        }
        fault::check("before_swap", &latest).at(&latest)?;
        let target = swap_target(&self.ckpt_dir)?;
        let previous = swap_in(&self.dir, &target)?;
        self.committed = true;
        fault::check("after_swap", &latest).at(&latest)?;
        sync_dir(&self.ckpt_dir)?;
        if let Some(old) = previous {
            // Readers that mapped old shards keep them until they unmap.
            fs::remove_dir_all(&old).at(&old)?;
        }
        Ok(latest)
    }
}

impl Drop for Staging {
    fn drop(&mut self) {
        if !self.committed && self.owner_pid == std::process::id() {
            let _ = fs::remove_dir_all(&self.dir);
        }
    }
}

fn unique() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos())
}

fn write_synced(path: &Path, bytes: &[u8]) -> Result<()> {
    let mut file = File::create(path).at(path)?;
    file.write_all(bytes).at(path)?;
    file.sync_all().at(path)
}

pub fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir).and_then(|d| d.sync_all()).at(dir)
}

/// Where the new checkpoint goes: `ckpt_dir/latest`, or, when `latest` is a
/// symlink to a directory inside `ckpt_dir` (the original Data-Juicer saves
/// through one), that directory, so the link keeps working.
fn swap_target(ckpt_dir: &Path) -> Result<PathBuf> {
    let latest = ckpt_dir.join(LATEST);
    match fs::symlink_metadata(&latest) {
        Ok(meta) if meta.file_type().is_symlink() => {}
        _ => return Ok(latest),
    }
    let root = fs::canonicalize(ckpt_dir).at(ckpt_dir)?;
    let target = fs::canonicalize(&latest).at(&latest)?;
    if target == root || !target.starts_with(&root) {
        return Err(CheckpointError::io(
            &latest,
            io::Error::other(format!(
                "is a symbolic link to {}, outside the checkpoint directory {}",
                target.display(),
                root.display()
            )),
        ));
    }
    Ok(target)
}

/// Puts `staging` at `latest`. Returns where the previous `latest/` now is.
fn swap_in(staging: &Path, latest: &Path) -> Result<Option<PathBuf>> {
    match fs::symlink_metadata(latest) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            fs::rename(staging, latest).at(latest)?;
            return Ok(None);
        }
        Err(e) => return Err(CheckpointError::io(latest, e)),
        Ok(meta) if !meta.is_dir() => {
            return Err(CheckpointError::io(
                latest,
                io::Error::other("exists and is not a directory"),
            ));
        }
        Ok(_) => {}
    }
    match fault::check("exchange", latest).and_then(|()| exchange(staging, latest)) {
        Ok(()) => Ok(Some(staging.to_path_buf())),
        Err(e)
            if matches!(
                e.raw_os_error(),
                Some(libc::EINVAL | libc::ENOSYS | libc::ENOTSUP)
            ) =>
        {
            // No atomic exchange on this filesystem: move the old one aside
            // first; `remove_leftovers` puts it back if we die in between.
            let old =
                staging.with_file_name(format!("{OLD_PREFIX}{}-{}", std::process::id(), unique()));
            fs::rename(latest, &old).at(latest)?;
            fault::check("between_renames", latest).at(latest)?;
            fs::rename(staging, latest).at(latest)?;
            Ok(Some(old))
        }
        Err(e) => Err(CheckpointError::io(latest, e)),
    }
}

#[cfg(any(target_os = "linux", target_os = "android"))]
fn exchange(a: &Path, b: &Path) -> io::Result<()> {
    let (ca, cb) = (cstring(a)?, cstring(b)?);
    // SAFETY: both are valid NUL-terminated paths.
    let rc = unsafe {
        libc::renameat2(
            libc::AT_FDCWD,
            ca.as_ptr(),
            libc::AT_FDCWD,
            cb.as_ptr(),
            libc::RENAME_EXCHANGE,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

#[cfg(not(any(target_os = "linux", target_os = "android")))]
fn exchange(_a: &Path, _b: &Path) -> io::Result<()> {
    Err(io::Error::from_raw_os_error(libc::ENOTSUP))
}

fn cstring(p: &Path) -> io::Result<CString> {
    CString::new(p.as_os_str().as_bytes()).map_err(|_| io::Error::other("path contains a NUL byte"))
}

/// Makes `ckpt_dir/ckpt_op.json` a symlink to `latest/ckpt_op.json`.
///
/// Done before the swap. When the current record is a plain file (a
/// checkpoint of the original Data-Juicer), a copy of it first goes into the
/// current `latest/` (a new file there, nothing rewritten), so the link
/// shows the same record until the swap changes both at once.
fn link_op_record(ckpt_dir: &Path, latest: &Path) -> Result<()> {
    let record = ckpt_dir.join(OP_RECORD);
    let target = Path::new(LATEST).join(OP_RECORD);
    if fs::read_link(&record).is_ok_and(|t| t == target) {
        return Ok(());
    }
    let inner = latest.join(OP_RECORD);
    let record_is_regular = fs::symlink_metadata(&record).is_ok_and(|m| m.file_type().is_file());
    if record_is_regular && latest.is_dir() && !inner.exists() {
        let file = File::open(&record).at(&record)?;
        let bytes = read_bounded(file, MAX_OP_RECORD_BYTES, None).at(&record)?;
        write_synced(&inner, &bytes)?;
        sync_dir(latest)?;
    }
    let link = ckpt_dir.join(format!("{LINK_PREFIX}{}-{}", std::process::id(), unique()));
    symlink(&target, &link).at(&link)?;
    fs::rename(&link, &record).at(&record)?;
    sync_dir(ckpt_dir)
}

/// Whether a save into `ckpt_dir` died between the two renames of the
/// non-atomic fallback: no `latest/`, the previous one still set aside.
/// [`Staging::create`] brings it back.
pub fn interrupted_swap(ckpt_dir: &Path) -> Result<bool> {
    if fs::symlink_metadata(ckpt_dir.join(LATEST)).is_ok() {
        return Ok(false);
    }
    for entry in fs::read_dir(ckpt_dir).at(ckpt_dir)? {
        let name = entry.at(ckpt_dir)?.file_name();
        if name.to_string_lossy().starts_with(OLD_PREFIX) {
            return Ok(true);
        }
    }
    Ok(false)
}

/// Removes staging directories and links of interrupted saves; if a save
/// died between the two renames of the non-atomic fallback, restores the
/// previous `latest/`. Runs under the directory lock.
fn remove_leftovers(ckpt_dir: &Path) -> Result<()> {
    let latest = swap_target(ckpt_dir)?;
    for entry in fs::read_dir(ckpt_dir).at(ckpt_dir)? {
        let path = entry.at(ckpt_dir)?.path();
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        if name.starts_with(OLD_PREFIX) && !latest.exists() {
            fs::rename(&path, &latest).at(&latest)?;
        } else if name.starts_with(STAGING_PREFIX) || name.starts_with(OLD_PREFIX) {
            fs::remove_dir_all(&path).at(&path)?;
        } else if name.starts_with(LINK_PREFIX) {
            fs::remove_file(&path).at(&path)?;
        }
    }
    Ok(())
}

/// An exclusive `flock` on `ckpt_dir/.accel.lock`, released when dropped or
/// when the process dies. A second saver gets `CheckpointError::Locked`.
///
/// A `flock` belongs to the open file, which a forked child shares: a child
/// forked during a save would keep the lock after the parent's save ended.
/// So the child's copy of the descriptor is pointed at /dev/null right after
/// a fork (see [`release_locks_in_child`]).
struct DirLock {
    _file: File,
    slot: Option<usize>,
    /// Its entry in [`LOCK_HOLDERS`].
    token: u64,
}

impl DirLock {
    fn acquire(ckpt_dir: &Path, holder: Option<&str>) -> Result<DirLock> {
        // From `open` until the descriptor is remembered, a fork would give
        // the child an unremembered share of the lock: no fork in between.
        let _no_fork = NoForkWhileLocking::enter();
        let path = ckpt_dir.join(LOCK_FILE);
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_CLOEXEC)
            .open(&path)
            .map_err(|e| lock_open_error(&path, e))?;
        let is_regular = file.metadata().at(&path)?.file_type().is_file();
        if !is_regular {
            return Err(CheckpointError::io(
                &path,
                io::Error::other("the lock file is not a regular file"),
            ));
        }
        // SAFETY: flock on a file descriptor we own.
        if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
            let err = io::Error::last_os_error();
            return Err(if err.raw_os_error() == Some(libc::EWOULDBLOCK) {
                CheckpointError::Locked {
                    path: ckpt_dir.to_path_buf(),
                    holder: file_id(&file).and_then(holder_in_this_process),
                }
            } else {
                CheckpointError::io(&path, err)
            });
        }
        fault::check("lock_taken", &path).at(&path)?;
        let slot = remember_held_lock(file.as_raw_fd());
        let token = remember_holder(&file, holder);
        Ok(DirLock {
            _file: file,
            slot,
            token,
        })
    }
}

impl Drop for DirLock {
    fn drop(&mut self) {
        // Unlock before forgetting the descriptor: a child forked after that
        // point shares an unlocked file, which holds nothing.
        // SAFETY: flock on the descriptor this lock owns.
        unsafe { libc::flock(self._file.as_raw_fd(), libc::LOCK_UN) };
        if let Some(slot) = self.slot {
            HELD_LOCKS[slot].store(-1, Ordering::SeqCst);
        }
        let _ = fault::check("lock_released", Path::new(LOCK_FILE)); // before the close
        forget_holder(self.token);
    }
}

/// Who holds each lock this process took: (pid, lock file's device and
/// inode, token, description). Touched only under [`NoForkWhileLocking`],
/// so a fork never copies it locked; entries copied into a child carry the
/// parent's pid and are ignored there.
type Holders = Vec<(u32, (u64, u64), u64, String)>;
static LOCK_HOLDERS: std::sync::Mutex<Holders> = std::sync::Mutex::new(Vec::new());
static NEXT_TOKEN: AtomicU64 = AtomicU64::new(1);

fn file_id(file: &File) -> Option<(u64, u64)> {
    let meta = file.metadata().ok()?;
    Some((meta.dev(), meta.ino()))
}

fn remember_holder(file: &File, holder: Option<&str>) -> u64 {
    let token = NEXT_TOKEN.fetch_add(1, Ordering::Relaxed);
    let description = match (holder, std::thread::current().name()) {
        (Some(holder), _) => holder.to_string(),
        (None, Some(thread)) => format!("a checkpoint writer on thread {thread:?}"),
        (None, None) => "a checkpoint writer".to_string(),
    };
    if let Some(id) = file_id(file) {
        let mut holders = LOCK_HOLDERS.lock().unwrap_or_else(|e| e.into_inner());
        holders.push((std::process::id(), id, token, description));
    }
    token
}

/// The holder of the lock file `id` when it is a lock of this process
/// (the newest entry: an older one may be a lock being released).
fn holder_in_this_process(id: (u64, u64)) -> Option<String> {
    let pid = std::process::id();
    let holders = LOCK_HOLDERS.lock().unwrap_or_else(|e| e.into_inner());
    holders
        .iter()
        .rev()
        .find(|(p, i, _, _)| *p == pid && *i == id)
        .map(|(_, _, _, description)| description.clone())
}

fn forget_holder(token: u64) {
    let _no_fork = NoForkWhileLocking::enter();
    let mut holders = LOCK_HOLDERS.lock().unwrap_or_else(|e| e.into_inner());
    holders.retain(|(_, _, t, _)| *t != token);
}

fn lock_open_error(path: &Path, err: io::Error) -> CheckpointError {
    if err.raw_os_error() == Some(libc::ELOOP) {
        CheckpointError::io(
            path,
            io::Error::other("is a symbolic link; the lock file is never followed through one"),
        )
    } else {
        CheckpointError::io(path, err)
    }
}

/// Descriptors of the locks this process holds; lock-free, because the
/// fork handler may not take a mutex another thread held at the fork.
static HELD_LOCKS: [AtomicI32; 64] = [const { AtomicI32::new(-1) }; 64];

fn remember_held_lock(fd: libc::c_int) -> Option<usize> {
    HELD_LOCKS.iter().position(|slot| {
        slot.compare_exchange(-1, fd, Ordering::SeqCst, Ordering::SeqCst)
            .is_ok()
    })
}

/// Held by a thread taking a lock and by a thread forking, so that a fork
/// never happens between the `open` of a lock file and the remembering of
/// its descriptor. A pthread mutex, because the fork handlers lock and
/// unlock it in different callbacks.
static FORK_GUARD: SyncMutex = SyncMutex(UnsafeCell::new(libc::PTHREAD_MUTEX_INITIALIZER));

struct SyncMutex(UnsafeCell<libc::pthread_mutex_t>);
// SAFETY: a pthread mutex is made to be shared between threads.
unsafe impl Sync for SyncMutex {}

struct NoForkWhileLocking;

impl NoForkWhileLocking {
    fn enter() -> NoForkWhileLocking {
        lock_fork_guard();
        NoForkWhileLocking
    }
}

impl Drop for NoForkWhileLocking {
    fn drop(&mut self) {
        unlock_fork_guard();
    }
}

/// The `pthread_atfork` prepare handler the process registers (the
/// bindings do at import), with [`unlock_fork_guard`] for the parent and
/// [`release_locks_in_child`] for the child: a fork waits until a lock
/// being taken is remembered. Crate-private: called at any other moment,
/// the parent and child handlers would unlock a mutex another thread holds.
pub(crate) extern "C" fn lock_fork_guard() {
    // SAFETY: FORK_GUARD is a valid, statically initialised mutex.
    unsafe { libc::pthread_mutex_lock(FORK_GUARD.0.get()) };
}

pub(crate) extern "C" fn unlock_fork_guard() {
    // SAFETY: called only by the thread that locked it (or, in a forked
    // child, by the copy of the thread that locked it before the fork).
    unsafe { libc::pthread_mutex_unlock(FORK_GUARD.0.get()) };
}

/// In a freshly forked child: releases the fork guard the forking thread
/// took, then points every inherited lock descriptor at /dev/null, which
/// drops the child's share of the locked file (unlocking it would unlock
/// the parent too). The descriptor number stays valid, so the child closing
/// it later harms nothing.
pub(crate) extern "C" fn release_locks_in_child() {
    unlock_fork_guard();
    for slot in &HELD_LOCKS {
        let fd = slot.swap(-1, Ordering::SeqCst);
        if fd < 0 {
            continue;
        }
        // SAFETY: open, dup3 and close are async-signal-safe.
        unsafe {
            let null = libc::open(c"/dev/null".as_ptr(), libc::O_RDONLY | libc::O_CLOEXEC);
            if null >= 0 {
                libc::dup3(null, fd, libc::O_CLOEXEC);
                libc::close(null);
            }
        }
    }
}
