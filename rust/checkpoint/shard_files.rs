//! The shard files of a staging directory: the writer's target on a local
//! filesystem. Each shard is written through a buffer, its writeback
//! started as it grows, fsynced on a thread of its own once complete, and
//! renamed `data-NNNNN-of-NNNNN.arrow` when all are.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::thread::{self, JoinHandle};

use super::error::{CheckpointError, IoContext, Result};
use super::writer::{ShardTarget, WrittenShard, SHARD_BUFFER_BYTES};
use super::{fault, memory};

pub struct DirShards {
    dir: PathBuf,
    /// Fsync every shard (see [`super::WriteOptions::sync`]).
    sync: bool,
    syncs: Mutex<Vec<JoinHandle<Result<()>>>>,
}

impl DirShards {
    pub fn new(dir: &Path, sync: bool) -> DirShards {
        DirShards {
            dir: dir.to_path_buf(),
            sync,
            syncs: Mutex::new(Vec::new()),
        }
    }

    fn wait_for_syncs(&self) -> Result<()> {
        let handles = std::mem::take(&mut *self.syncs.lock().unwrap_or_else(|e| e.into_inner()));
        let mut first_error = Ok(());
        for handle in handles {
            let result = handle.join().map_err(CheckpointError::from_panic)?;
            if first_error.is_ok() {
                first_error = result;
            }
        }
        first_error
    }
}

impl ShardTarget for DirShards {
    type Out = BufWriter<File>;

    fn open(&self, index: usize) -> Result<(Self::Out, String)> {
        let path = self.dir.join(format!("part-{index:05}.arrow"));
        memory::ensure_room(SHARD_BUFFER_BYTES as u64, "the write buffer of a shard")?;
        let file = File::create(&path).at(&path)?;
        let name = path.to_string_lossy().into_owned();
        Ok((BufWriter::with_capacity(SHARD_BUFFER_BYTES, file), name))
    }

    fn progress(&self, out: &mut Self::Out, name: &str, from: u64) -> Result<()> {
        out.flush().at(name)?;
        start_writeback(out.get_ref(), from);
        Ok(())
    }

    fn close(&self, out: Self::Out, name: &str) -> Result<()> {
        let file = out
            .into_inner()
            .map_err(|e| CheckpointError::io(name, e.into_error()))?;
        if !self.sync {
            start_writeback(&file, 0);
            return Ok(());
        }
        let path = name.to_string();
        let spawned = file.try_clone().ok().and_then(|clone| {
            thread::Builder::new()
                .name("dja-ckpt-fsync".into())
                .spawn(move || sync(clone, &path))
                .ok()
        });
        match spawned {
            Some(handle) => {
                self.syncs
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .push(handle);
                Ok(())
            }
            None => sync(file, name), // no thread left: here, then
        }
    }

    fn finish(&self, shards: Vec<WrittenShard>) -> Result<Vec<WrittenShard>> {
        self.wait_for_syncs()?;
        rename_to_final_names(&self.dir, shards)
    }
}

impl Drop for DirShards {
    /// A failed save still waits for the fsyncs it started.
    fn drop(&mut self) {
        let _ = self.wait_for_syncs();
    }
}

/// Starts (does not wait for) the writeback of `file` from byte `from` to
/// its end. Only a hint to the kernel: a failure (a filesystem without it)
/// leaves the work to the fsync that makes the file durable.
fn start_writeback(file: &File, from: u64) {
    #[cfg(target_os = "linux")]
    {
        use std::os::unix::io::AsRawFd;
        // SAFETY: `fd` is an open file; a length of 0 means "to the end".
        let _ = unsafe {
            libc::sync_file_range(
                file.as_raw_fd(),
                from as libc::off64_t,
                0,
                libc::SYNC_FILE_RANGE_WRITE,
            )
        };
    }
    #[cfg(not(target_os = "linux"))]
    let _ = (file, from);
}

fn sync(file: File, path: &str) -> Result<()> {
    fault::check("shard_sync", Path::new(path)).at(path)?;
    file.sync_all().at(path)
}

fn rename_to_final_names(dir: &Path, shards: Vec<WrittenShard>) -> Result<Vec<WrittenShard>> {
    let count = shards.len();
    shards
        .into_iter()
        .enumerate()
        .map(|(index, mut shard)| {
            let name = format!("data-{index:05}-of-{count:05}.arrow");
            let to = dir.join(&name);
            std::fs::rename(&shard.file, &to).at(&to)?;
            shard.file = name;
            Ok(shard)
        })
        .collect()
}
