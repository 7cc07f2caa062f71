//! Errors of the checkpoint core. They carry the path they concern so that the
//! Python layer can raise an exception naming what and where.

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};

use arrow_schema::ArrowError;

#[derive(Debug)]
pub enum CheckpointError {
    /// An operating-system error on a named file or directory.
    Io { path: PathBuf, source: io::Error },
    /// A checkpoint file does not hold what the manifest promises.
    Corrupt { path: PathBuf, detail: String },
    /// The data handed in could not be read or encoded.
    Input(String),
    /// Another writer holds the checkpoint directory's lock: `holder`
    /// describes it when it is in this process, `None` for another process.
    Locked {
        path: PathBuf,
        holder: Option<String>,
    },
    /// Another writer published a checkpoint in the bucket at `location`
    /// while this save ran: this save was discarded.
    Raced { location: String, detail: String },
    /// Not enough memory for what a checkpoint needs once decoded.
    OutOfMemory {
        path: PathBuf,
        needed: u64,
        /// What the process may still use, and which limit says so.
        available: Option<(u64, String)>,
    },
    /// Not enough memory for `what` of a save (or to start a thread).
    NoMemory {
        what: String,
        needed: u64,
        available: Option<(u64, String)>,
    },
    /// The caller interrupted the operation (Ctrl-C).
    Cancelled,
    /// A bug in this crate (a caught panic); never the caller's fault.
    Internal(String),
}

pub type Result<T> = std::result::Result<T, CheckpointError>;

impl CheckpointError {
    pub fn io(path: impl AsRef<Path>, source: io::Error) -> Self {
        CheckpointError::Io {
            path: path.as_ref().to_path_buf(),
            source,
        }
    }

    pub fn corrupt(path: impl AsRef<Path>, detail: impl Into<String>) -> Self {
        CheckpointError::Corrupt {
            path: path.as_ref().to_path_buf(),
            detail: detail.into(),
        }
    }

    pub fn arrow_corrupt(path: impl AsRef<Path>, err: ArrowError) -> Self {
        Self::corrupt(path, format!("not a valid Arrow IPC stream: {err}"))
    }

    pub fn input(err: ArrowError) -> Self {
        CheckpointError::Input(format!(
            "the dataset could not be read as Arrow data: {err}"
        ))
    }

    /// Turns a panic payload (from a worker thread or `catch_unwind`) into an error.
    pub fn from_panic(payload: Box<dyn std::any::Any + Send>) -> Self {
        CheckpointError::Internal(panic_message(&payload))
    }
}

impl fmt::Display for CheckpointError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CheckpointError::Io { path, source } => write!(f, "{}: {source}", path.display()),
            CheckpointError::Corrupt { path, detail } => {
                write!(f, "corrupted checkpoint file {}: {detail}", path.display())
            }
            CheckpointError::Input(msg) => f.write_str(msg),
            CheckpointError::Locked { path, holder: None } => write!(
                f,
                "another process is saving a checkpoint into {} (its lock file is held)",
                path.display()
            ),
            CheckpointError::Locked {
                path,
                holder: Some(holder),
            } => write!(
                f,
                "{holder}, in this process, is saving a checkpoint into {} (it holds the lock \
                 file); wait for that save to end (wait() or close() of a background manager) \
                 or save into another directory",
                path.display()
            ),
            CheckpointError::Raced { location, detail } => write!(
                f,
                "another writer published a checkpoint in {location} while this save ran; \
                 this save was discarded and the other one is the checkpoint ({detail})"
            ),
            CheckpointError::OutOfMemory {
                path,
                needed,
                available,
            } => {
                write!(
                    f,
                    "loading {} needs {needed} bytes of memory",
                    path.display()
                )?;
                match available {
                    Some((bytes, limit)) => {
                        write!(f, ", but this process may use only {bytes} more ({limit})")
                    }
                    None => f.write_str(", and that much could not be allocated"),
                }
            }
            CheckpointError::NoMemory {
                what,
                needed,
                available,
            } => {
                write!(f, "not enough memory for {what} ({needed} bytes)")?;
                match available {
                    Some((bytes, limit)) => {
                        write!(f, ": this process may use only {bytes} more ({limit})")
                    }
                    None => Ok(()),
                }
            }
            CheckpointError::Cancelled => f.write_str("interrupted"),
            CheckpointError::Internal(msg) => {
                write!(
                    f,
                    "internal error in data_juicer_accel (please report): {msg}"
                )
            }
        }
    }
}

impl std::error::Error for CheckpointError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            CheckpointError::Io { source, .. } => Some(source),
            _ => None,
        }
    }
}

/// Attaches a path to `io::Result`s.
pub trait IoContext<T> {
    fn at(self, path: impl AsRef<Path>) -> Result<T>;
}

impl<T> IoContext<T> for io::Result<T> {
    fn at(self, path: impl AsRef<Path>) -> Result<T> {
        self.map_err(|e| CheckpointError::io(path, e))
    }
}

/// The text a panic was raised with.
pub fn panic_message(payload: &Box<dyn std::any::Any + Send>) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown panic".to_string())
}
