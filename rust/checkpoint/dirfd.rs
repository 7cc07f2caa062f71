//! Reading a checkpoint directory through one open handle.
//!
//! Every file is opened relative to a directory file descriptor, without
//! following symlinks, and only when it is a regular file: a FIFO, a device
//! or a symlink leaving the directory is refused before it is opened, so a
//! hostile directory can neither make a load hang nor read outside it. All
//! files of one load come from the same directory inode, so a save that
//! swaps `latest/` meanwhile cannot mix two generations.

use std::ffi::CString;
use std::fs::{self, File};
use std::io::{self, Read};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

use super::error::{CheckpointError, IoContext, Result};

/// Reads are done in pieces this big, checking for cancellation in between.
const READ_PIECE: usize = 8 << 20;

/// An open checkpoint directory (`latest/`).
pub struct CheckpointDir {
    fd: OwnedFd,
    path: PathBuf,
}

impl CheckpointDir {
    /// Opens `path` as a directory; `Ok(None)` when it does not exist.
    ///
    /// `path` may be a symlink (the original Data-Juicer saves through one)
    /// when its target lies inside the directory that holds `path`.
    pub fn open(path: &Path) -> Result<Option<CheckpointDir>> {
        let target = match fs::symlink_metadata(path) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(CheckpointError::io(path, e)),
            Ok(meta) if meta.file_type().is_symlink() => resolve_inside_parent(path)?,
            Ok(_) => path.to_path_buf(),
        };
        let flags = libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC;
        match open_at(libc::AT_FDCWD, &target, flags) {
            Ok(fd) => Ok(Some(CheckpointDir {
                fd,
                path: path.to_path_buf(),
            })),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(CheckpointError::io(path, e)),
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Whether `path` now names another directory than the one opened (a
    /// save committed a new generation meanwhile).
    pub fn replaced(&self) -> bool {
        let ours = match fstat(self.fd.as_raw_fd()) {
            Ok(st) => (st.st_dev, st.st_ino),
            Err(_) => return true,
        };
        match fs::metadata(&self.path) {
            Ok(now) => (now.dev(), now.ino()) != (ours.0 as u64, ours.1 as u64),
            Err(_) => true,
        }
    }

    /// Opens the regular file `name` in this directory; `Ok(None)` when it
    /// does not exist. Anything but a regular file is `Corrupt`.
    pub fn open_regular(&self, name: &str) -> Result<Option<(File, u64)>> {
        let path = self.path.join(name);
        let cname = cstring(Path::new(name)).at(&path)?;
        // SAFETY: `libc::stat` is plain integers, for which all zeroes is valid.
        let mut st: libc::stat = unsafe { std::mem::zeroed() };
        // SAFETY: valid fd, NUL-terminated name, `st` is writable.
        let rc = unsafe {
            libc::fstatat(
                self.fd.as_raw_fd(),
                cname.as_ptr(),
                &mut st,
                libc::AT_SYMLINK_NOFOLLOW,
            )
        };
        if rc != 0 {
            let err = io::Error::last_os_error();
            return match err.kind() {
                io::ErrorKind::NotFound => Ok(None),
                _ => Err(CheckpointError::io(&path, err)),
            };
        }
        not_regular(&path, st.st_mode)?;
        // O_NONBLOCK: should the name become a FIFO after the check above,
        // the open returns at once and the fstat below refuses it.
        let flags = libc::O_RDONLY | libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_CLOEXEC;
        let fd = match open_at(self.fd.as_raw_fd(), Path::new(name), flags) {
            Ok(fd) => fd,
            Err(e) if e.raw_os_error() == Some(libc::ELOOP) => {
                return Err(symlink_refused(&path));
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(CheckpointError::io(&path, e)),
        };
        let st = fstat(fd.as_raw_fd()).at(&path)?;
        not_regular(&path, st.st_mode)?;
        Ok(Some((File::from(fd), st.st_size as u64)))
    }

    /// Makes `to` a hard link to the file `name` of this directory. A
    /// symlink is linked as itself (never followed), so a reader of `to`
    /// still refuses it.
    pub fn hard_link(&self, name: &str, to: &Path) -> io::Result<()> {
        let (from, to) = (cstring(Path::new(name))?, cstring(to)?);
        // SAFETY: valid fd, NUL-terminated names; flags 0 follows no symlink.
        let rc = unsafe {
            libc::linkat(
                self.fd.as_raw_fd(),
                from.as_ptr(),
                libc::AT_FDCWD,
                to.as_ptr(),
                0,
            )
        };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// Reads the regular file `name`, which must hold exactly `expected`
    /// bytes; never reads more than that.
    pub fn read_exact_size(
        &self,
        name: &str,
        expected: u64,
        cancel: Option<&AtomicBool>,
    ) -> Result<Vec<u8>> {
        let path = self.path.join(name);
        // The manifest lists it: missing, it is damage, not a caller's wrong path.
        let (file, size) = self.open_regular(name)?.ok_or_else(|| {
            CheckpointError::corrupt(&path, "listed in the manifest, but the file is missing")
        })?;
        if size != expected {
            return Err(CheckpointError::corrupt(
                &path,
                format!(
                    "file is {size} bytes, the manifest says {expected} (truncated or replaced)"
                ),
            ));
        }
        let bytes = read_bounded(file, expected, cancel).map_err(|e| match e.kind() {
            // Not enough memory for the file is not an I/O error: say how much.
            io::ErrorKind::OutOfMemory => CheckpointError::OutOfMemory {
                path: path.clone(),
                needed: expected,
                available: None,
            },
            _ => CheckpointError::io(&path, e),
        })?;
        if bytes.len() as u64 != expected {
            return Err(CheckpointError::corrupt(
                &path,
                format!(
                    "file changed size while being read ({} bytes, the manifest says {expected})",
                    bytes.len()
                ),
            ));
        }
        Ok(bytes)
    }
}

/// Reads at most `limit` bytes of `file`, in pieces, stopping early when
/// `cancel` is raised.
pub fn read_bounded(file: File, limit: u64, cancel: Option<&AtomicBool>) -> io::Result<Vec<u8>> {
    let size = file.metadata()?.len();
    let capacity = usize::try_from(limit.min(size)).map_err(|_| io::ErrorKind::OutOfMemory)?;
    let mut bytes = Vec::new();
    bytes
        .try_reserve_exact(capacity)
        .map_err(|_| io::Error::new(io::ErrorKind::OutOfMemory, "could not allocate"))?;
    let mut reader = file.take(limit);
    loop {
        if cancel.is_some_and(|c| c.load(Ordering::Relaxed)) {
            return Err(io::ErrorKind::Interrupted.into());
        }
        let before = bytes.len();
        (&mut reader)
            .take(READ_PIECE as u64)
            .read_to_end(&mut bytes)?;
        if bytes.len() == before {
            return Ok(bytes);
        }
    }
}

fn not_regular(path: &Path, mode: libc::mode_t) -> Result<()> {
    let kind = match mode & libc::S_IFMT {
        libc::S_IFREG => return Ok(()),
        libc::S_IFLNK => return Err(symlink_refused(path)),
        libc::S_IFIFO => "a FIFO",
        libc::S_IFCHR | libc::S_IFBLK => "a device",
        libc::S_IFSOCK => "a socket",
        libc::S_IFDIR => "a directory",
        _ => "not a regular file",
    };
    Err(CheckpointError::corrupt(
        path,
        format!("it is {kind}; checkpoint files must be regular files"),
    ))
}

fn symlink_refused(path: &Path) -> CheckpointError {
    CheckpointError::corrupt(
        path,
        "it is a symbolic link; checkpoint files must be regular files inside the checkpoint directory",
    )
}

/// The target of the symlink `path`, which must be a directory inside the
/// directory holding `path`.
fn resolve_inside_parent(path: &Path) -> Result<PathBuf> {
    let parent = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let root = fs::canonicalize(parent).at(parent)?;
    let target = match fs::canonicalize(path) {
        Ok(t) => t,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(path.to_path_buf()),
        Err(e) => return Err(CheckpointError::io(path, e)),
    };
    if target == root || !target.starts_with(&root) {
        return Err(CheckpointError::corrupt(
            path,
            format!(
                "it is a symbolic link to {}, outside {}",
                target.display(),
                root.display()
            ),
        ));
    }
    Ok(target)
}

fn cstring(p: &Path) -> io::Result<CString> {
    CString::new(p.as_os_str().as_bytes()).map_err(|_| io::Error::other("path contains a NUL byte"))
}

fn open_at(dir: libc::c_int, path: &Path, flags: libc::c_int) -> io::Result<OwnedFd> {
    let c = cstring(path)?;
    // SAFETY: NUL-terminated path; the returned fd is ours.
    let fd = unsafe { libc::openat(dir, c.as_ptr(), flags) };
    if fd < 0 {
        Err(io::Error::last_os_error())
    } else {
        // SAFETY: a fresh descriptor nobody else owns.
        Ok(unsafe { OwnedFd::from_raw_fd(fd) })
    }
}

fn fstat(fd: libc::c_int) -> io::Result<libc::stat> {
    // SAFETY: `libc::stat` is plain integers, for which all zeroes is valid.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: valid fd, writable `st`.
    if unsafe { libc::fstat(fd, &mut st) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(st)
}
