//! Parallel reader of committed checkpoints.
//!
//! Each shard is read whole, its size and xxh3 checked against the manifest,
//! and split into its IPC messages (only the small flatbuffer headers are
//! parsed). The record-batch messages of all shards are then decompressed on
//! `threads` threads at once, so even a single-shard checkpoint loads on
//! every core. Sizes declared inside a message are checked against the
//! message and against a memory limit before anything is allocated for them.
//!
//! One concern, the verified parallel load; its tests take the second part
//! of the file.

use std::collections::HashMap;
use std::io::Cursor;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread;

use arrow_array::{ArrayRef, RecordBatch};
use arrow_buffer::Buffer;
use arrow_ipc::reader::{read_record_batch, StreamReader};
use arrow_ipc::{root_as_message, MessageHeader, MetadataVersion};
use arrow_schema::{Schema, SchemaRef};

use super::dirfd::CheckpointDir;
use super::error::{panic_message, CheckpointError, IoContext, Result};
use super::manifest::{checksum_hex, FileEntry, Manifest};
use super::memory::{address_space_limit, available_memory, failed_allocation_size};

#[derive(Debug, Clone)]
pub struct ReadOptions {
    /// Check every file's xxh3 against the manifest (sizes always are).
    pub verify: bool,
    pub threads: usize,
    /// Refuse a checkpoint whose messages declare more decompressed bytes;
    /// the memory the process may still use (see [`available_memory`]) is
    /// always a limit too.
    pub max_decoded_bytes: u64,
    /// Raised by the caller to stop a load early (Ctrl-C).
    pub cancel: Option<Arc<AtomicBool>>,
}

impl Default for ReadOptions {
    fn default() -> Self {
        ReadOptions {
            verify: true,
            threads: default_threads(),
            max_decoded_bytes: u64::MAX,
            cancel: None,
        }
    }
}

impl ReadOptions {
    fn cancelled(&self) -> Result<()> {
        match &self.cancel {
            Some(c) if c.load(Ordering::Relaxed) => Err(CheckpointError::Cancelled),
            _ => Ok(()),
        }
    }
}

pub fn default_threads() -> usize {
    thread::available_parallelism().map_or(1, |n| n.get())
}

pub struct LoadedCheckpoint {
    pub manifest: Manifest,
    pub schema: SchemaRef,
    pub batches: Vec<RecordBatch>,
    /// The manifest's other files (state.json, ...), verified, by name.
    pub files: HashMap<String, Vec<u8>>,
}

/// How often a load starts over because a save replaced `latest/` under it.
const GENERATION_RETRIES: usize = 20;

/// Reads the checkpoint in `dir`; `Ok(None)` when it has no manifest.
///
/// All files come from one open handle on `dir`, so they belong to one
/// generation. Should a save by another process swap in a new `latest/`
/// and delete the old one while it is being read, the load starts over on
/// the new one: it returns the old checkpoint or the new one, whole.
pub fn read_checkpoint(dir: &Path, opts: &ReadOptions) -> Result<Option<LoadedCheckpoint>> {
    let mut attempt = 0;
    loop {
        let Some(handle) = CheckpointDir::open(dir)? else {
            return Ok(None);
        };
        let result = read_generation(&handle, opts);
        let retry = match &result {
            Ok(Some(_)) | Err(CheckpointError::Cancelled) => false,
            Ok(None) | Err(_) => attempt < GENERATION_RETRIES && handle.replaced(),
        };
        if !retry {
            return result;
        }
        attempt += 1;
    }
}

fn read_generation(dir: &CheckpointDir, opts: &ReadOptions) -> Result<Option<LoadedCheckpoint>> {
    let Some(manifest) = Manifest::read_in(dir)? else {
        return Ok(None);
    };
    read_manifested(dir, manifest, opts).map(Some)
}

/// Where the files a manifest lists are read from: a checkpoint directory
/// (through its one handle), or a generation's objects in a bucket.
pub trait FileSource: Sync {
    /// How errors name `file`.
    fn locate(&self, file: &str) -> PathBuf;
    /// The whole of `entry`'s file, which must be `entry.bytes` long; never
    /// reads more than that.
    fn read_sized(&self, entry: &FileEntry, cancel: Option<&AtomicBool>) -> Result<Vec<u8>>;
}

impl FileSource for CheckpointDir {
    fn locate(&self, file: &str) -> PathBuf {
        self.path().join(file)
    }

    fn read_sized(&self, entry: &FileEntry, cancel: Option<&AtomicBool>) -> Result<Vec<u8>> {
        self.read_exact_size(&entry.file, entry.bytes, cancel)
    }
}

/// The small file `name` that `manifest` lists, read from `source` and
/// verified; `Ok(None)` when the manifest lists no such file.
pub fn read_listed_file(
    source: &impl FileSource,
    manifest: &Manifest,
    name: &str,
    opts: &ReadOptions,
) -> Result<Option<Vec<u8>>> {
    match manifest.files.iter().find(|entry| entry.file == name) {
        Some(entry) => read_verified(source, entry, opts).map(Some),
        None => Ok(None),
    }
}

/// Reads and verifies everything `manifest` lists from `source`.
pub fn read_manifested(
    source: &impl FileSource,
    manifest: Manifest,
    opts: &ReadOptions,
) -> Result<LoadedCheckpoint> {
    let mut files = HashMap::new();
    for entry in &manifest.files {
        let bytes = read_verified(source, entry, opts)?;
        files.insert(entry.file.clone(), bytes);
    }
    let (schema, batches) = read_shard_entries(source, &manifest.shards, opts)?;
    Ok(LoadedCheckpoint {
        manifest,
        schema,
        batches,
        files,
    })
}

/// Each shard must hold the rows its manifest entry says (the manifest's
/// total was checked against the entries when it was parsed).
pub fn check_rows_per_shard(
    dir: &Path,
    entries: &[FileEntry],
    decoded: &[Vec<RecordBatch>],
) -> Result<()> {
    for (entry, batches) in entries.iter().zip(decoded) {
        let rows: u64 = batches.iter().map(|b| b.num_rows() as u64).sum();
        if Some(rows) != entry.rows {
            return Err(CheckpointError::corrupt(
                dir.join(&entry.file),
                format!(
                    "shard holds {rows} rows, the manifest says {}",
                    entry.rows.unwrap_or_default()
                ),
            ));
        }
    }
    Ok(())
}

fn read_verified(
    source: &impl FileSource,
    entry: &FileEntry,
    opts: &ReadOptions,
) -> Result<Vec<u8>> {
    let bytes = source.read_sized(entry, opts.cancel.as_deref())?;
    if opts.verify {
        check_hash(&source.locate(&entry.file), &bytes, entry)?;
    }
    Ok(bytes)
}

/// Reads the one shard `entry` of `dir` with every check of a checkpoint
/// load: a regular file inside `dir`, read no further than its declared
/// size, its xxh3 (with `opts.verify`), the decompressed sizes it declares
/// against the memory the process may use, and its row count.
pub fn read_one_shard(
    source: &impl FileSource,
    entry: &FileEntry,
    opts: &ReadOptions,
) -> Result<(SchemaRef, Vec<RecordBatch>)> {
    read_shard_entries(source, std::slice::from_ref(entry), opts)
}

/// The rows of the shards `entries`, read from `source` and checked.
fn read_shard_entries(
    source: &impl FileSource,
    entries: &[FileEntry],
    opts: &ReadOptions,
) -> Result<(SchemaRef, Vec<RecordBatch>)> {
    let shards = read_shards(source, entries, opts)?;
    let place = source.locate("");
    let schema = common_schema(&place, entries, &shards)?;
    check_declared_sizes(&place, entries, &shards, opts.max_decoded_bytes)?;
    let decoded = decode_all(&place, entries, &shards, &schema, opts)?;
    check_rows_per_shard(&place, entries, &decoded)?;
    Ok((schema, decoded.into_iter().flatten().collect()))
}

fn check_hash(path: &Path, bytes: &[u8], entry: &FileEntry) -> Result<()> {
    let hash = checksum_hex(xxhash_rust::xxh3::xxh3_64(bytes));
    if hash != entry.xxh3_64 {
        return Err(CheckpointError::corrupt(
            path,
            format!(
                "xxh3 checksum is {hash}, the manifest says {}",
                entry.xxh3_64
            ),
        ));
    }
    Ok(())
}

/// One record-batch message: its flatbuffer header and its body, in `data`.
struct BatchMessage {
    header: Range<usize>,
    body: Range<usize>,
}

struct ShardMessages {
    data: Buffer,
    schema: Schema,
    version: MetadataVersion,
    batches: Vec<BatchMessage>,
    /// Dictionary messages: decoded in order by arrow's StreamReader, but
    /// their declared sizes are checked like the batches'.
    dictionaries: Vec<BatchMessage>,
}

fn read_shards(
    source: &impl FileSource,
    entries: &[FileEntry],
    opts: &ReadOptions,
) -> Result<Vec<ShardMessages>> {
    parallel_map(entries.len(), load_threads(opts), |i| {
        opts.cancelled()?;
        let bytes = read_verified(source, &entries[i], opts)?;
        split_messages(&source.locate(&entries[i].file), Buffer::from_vec(bytes))
    })
}

fn read_u32(data: &[u8], at: usize) -> Option<u32> {
    data.get(at..at + 4)
        .map(|b| u32::from_le_bytes(b.try_into().expect("4 bytes")))
}

/// Walks the IPC stream format: [0xFFFFFFFF] <u32 len> <header> <body> ... <0>.
fn split_messages(path: &Path, data: Buffer) -> Result<ShardMessages> {
    let bad = |detail: String| CheckpointError::corrupt(path, detail);
    let bytes = data.as_slice();
    let (mut pos, mut schema, mut version) = (0usize, None, MetadataVersion::V5);
    let mut batches = Vec::new();
    let mut dictionaries = Vec::new();
    loop {
        let mut len = read_u32(bytes, pos)
            .ok_or_else(|| bad(format!("stream ends without an end marker at byte {pos}")))?;
        pos += 4;
        if len == 0xFFFF_FFFF {
            len = read_u32(bytes, pos)
                .ok_or_else(|| bad(format!("stream cut inside a message prefix at byte {pos}")))?;
            pos += 4;
        }
        if len == 0 {
            break;
        }
        let header = pos..pos
            .checked_add(len as usize)
            .filter(|&e| e <= bytes.len())
            .ok_or_else(|| {
                bad(format!(
                    "message header at byte {pos} runs past the end of the file"
                ))
            })?;
        let message = root_as_message(&bytes[header.clone()])
            .map_err(|e| bad(format!("invalid message header at byte {pos}: {e}")))?;
        let body_len = usize::try_from(message.bodyLength())
            .map_err(|_| bad(format!("negative body length at byte {pos}")))?;
        let body = header.end
            ..header
                .end
                .checked_add(body_len)
                .filter(|&e| e <= bytes.len())
                .ok_or_else(|| {
                    bad(format!(
                        "message body at byte {} runs past the end of the file",
                        header.end
                    ))
                })?;
        pos = body.end;
        match message.header_type() {
            MessageHeader::Schema if schema.is_none() => {
                let fb = message
                    .header_as_schema()
                    .ok_or_else(|| bad("unreadable schema".into()))?;
                schema = Some(
                    arrow_ipc::convert::try_fb_to_schema(fb)
                        .map_err(|e| bad(format!("invalid schema: {e}")))?,
                );
                version = message.version();
            }
            MessageHeader::RecordBatch if schema.is_some() => {
                batches.push(BatchMessage { header, body })
            }
            MessageHeader::DictionaryBatch if schema.is_some() => {
                dictionaries.push(BatchMessage { header, body })
            }
            other => {
                return Err(bad(format!(
                    "unexpected {other:?} message at byte {}",
                    header.start
                )))
            }
        }
    }
    if pos != bytes.len() {
        return Err(bad(format!(
            "{} bytes after the end-of-stream marker",
            bytes.len() - pos
        )));
    }
    let schema = schema.ok_or_else(|| bad("no schema message".into()))?;
    Ok(ShardMessages {
        data,
        schema,
        version,
        batches,
        dictionaries,
    })
}

fn common_schema(dir: &Path, entries: &[FileEntry], shards: &[ShardMessages]) -> Result<SchemaRef> {
    let first = &shards[0].schema;
    for (entry, shard) in entries.iter().zip(shards).skip(1) {
        if shard.schema != *first {
            return Err(CheckpointError::corrupt(
                dir.join(&entry.file),
                "its schema differs from the first shard's",
            ));
        }
    }
    Ok(Arc::new(first.clone()))
}

/// Compressed IPC buffers start with their decompressed length (i64, -1 when
/// stored raw). A hostile file can declare terabytes there; check before
/// arrow allocates.
fn check_declared_sizes(
    dir: &Path,
    entries: &[FileEntry],
    shards: &[ShardMessages],
    limit: u64,
) -> Result<()> {
    let mut total: u64 = 0;
    for (entry, shard) in entries.iter().zip(shards) {
        total = total.saturating_add(declared_bytes(&dir.join(&entry.file), shard)?);
    }
    let total = total.saturating_add(working_memory(total));
    let available = match available_memory() {
        Some((bytes, source)) if bytes < limit => Some((bytes, source)),
        _ if limit < u64::MAX => Some((limit, "the limit the caller set".to_string())),
        other => other,
    };
    match available {
        Some((bytes, source)) if total > bytes => Err(CheckpointError::OutOfMemory {
            path: dir.to_path_buf(),
            needed: total,
            available: Some((bytes, source)),
        }),
        _ => Ok(()),
    }
}

/// Memory a load needs beyond its decoded buffers: array structures, the
/// decompressors, and the caller's objects around them. Rust aborts the
/// process when a small allocation fails, so a load that would leave less
/// than this to spare is refused up front, as a `MemoryError`.
fn working_memory(decoded: u64) -> u64 {
    const FIXED: u64 = 16 << 20;
    FIXED.saturating_add(decoded / 32)
}

/// Bytes the messages of one shard will take once decoded, from their headers.
fn declared_bytes(path: &Path, shard: &ShardMessages) -> Result<u64> {
    let bad = |detail: String| CheckpointError::corrupt(path, detail);
    let bytes = shard.data.as_slice();
    let mut total: u64 = 0;
    for message in shard.batches.iter().chain(&shard.dictionaries) {
        let header =
            root_as_message(&bytes[message.header.clone()]).map_err(|e| bad(e.to_string()))?;
        let batch = header
            .header_as_record_batch()
            .or_else(|| header.header_as_dictionary_batch().and_then(|d| d.data()))
            .ok_or_else(|| bad("record batch header missing".into()))?;
        let body = &bytes[message.body.clone()];
        let compressed = batch.compression().is_some();
        for buffer in batch.buffers().into_iter().flatten() {
            let (offset, length) = (buffer.offset(), buffer.length());
            let inside = offset >= 0
                && length >= 0
                && offset
                    .checked_add(length)
                    .is_some_and(|end| end as usize <= body.len());
            if !inside {
                return Err(bad(format!(
                    "a buffer at offset {offset} (length {length}) lies outside its message body of {} bytes",
                    body.len()
                )));
            }
            let declared = match (compressed, length) {
                (false, _) | (true, 0) => length as u64,
                (true, 1..=7) => {
                    return Err(bad(
                        "a compressed buffer is shorter than its length prefix".into()
                    ))
                }
                (true, _) => {
                    let start = offset as usize;
                    let prefix =
                        i64::from_le_bytes(body[start..start + 8].try_into().expect("8 bytes"));
                    // -1: stored raw after the prefix.
                    if prefix == -1 {
                        length as u64 - 8
                    } else {
                        u64::try_from(prefix).unwrap_or(u64::MAX)
                    }
                }
            };
            total = total.saturating_add(declared);
        }
    }
    Ok(total)
}

/// Decodes one shard file's bytes on the calling thread, with every check a
/// checkpoint load makes but the checksum (the fuzzers' entry point).
pub fn decode_shard_bytes(
    path: &Path,
    bytes: Vec<u8>,
    max_decoded_bytes: u64,
) -> Result<(SchemaRef, Vec<RecordBatch>)> {
    let shard = split_messages(path, Buffer::from_vec(bytes))?;
    let declared = declared_bytes(path, &shard)?;
    if declared > max_decoded_bytes {
        return Err(CheckpointError::corrupt(
            path,
            "declares more bytes than allowed; refusing to allocate",
        ));
    }
    let schema = Arc::new(shard.schema.clone());
    let batches = if shard.dictionaries.is_empty() {
        shard
            .batches
            .iter()
            .map(|m| decode_message(path, &shard, m, &schema))
            .collect::<Result<_>>()?
    } else {
        decode_with_stream_reader(path, &shard)?
    };
    Ok((schema, batches))
}

/// Decodes every record-batch message of every shard, in parallel; the
/// batches of each shard in order.
fn decode_all(
    dir: &Path,
    entries: &[FileEntry],
    shards: &[ShardMessages],
    schema: &SchemaRef,
    opts: &ReadOptions,
) -> Result<Vec<Vec<RecordBatch>>> {
    // A task is a message, or a whole dictionary-encoded shard.
    let mut tasks: Vec<(usize, Option<usize>)> = Vec::new();
    for (s, shard) in shards.iter().enumerate() {
        if !shard.dictionaries.is_empty() {
            tasks.push((s, None));
        } else {
            tasks.extend((0..shard.batches.len()).map(|m| (s, Some(m))));
        }
    }
    let decoded = parallel_map(tasks.len(), load_threads(opts), |t| {
        opts.cancelled()?;
        let (s, message) = tasks[t];
        let path = dir.join(&entries[s].file);
        super::fault::check("decode", &path).at(&path)?;
        let shard = &shards[s];
        match message {
            Some(m) => decode_message(&path, shard, &shard.batches[m], schema).map(|b| vec![b]),
            None => decode_with_stream_reader(&path, shard),
        }
    })?;
    let mut per_shard: Vec<Vec<RecordBatch>> = shards.iter().map(|_| Vec::new()).collect();
    for ((s, _), batches) in tasks.into_iter().zip(decoded) {
        per_shard[s].extend(batches);
    }
    Ok(per_shard)
}

fn decode_message(
    path: &Path,
    shard: &ShardMessages,
    message: &BatchMessage,
    schema: &SchemaRef,
) -> Result<RecordBatch> {
    let header = root_as_message(&shard.data.as_slice()[message.header.clone()])
        .map_err(|e| CheckpointError::corrupt(path, e.to_string()))?;
    let batch = header
        .header_as_record_batch()
        .ok_or_else(|| CheckpointError::corrupt(path, "record batch header missing"))?;
    let body = shard
        .data
        .slice_with_length(message.body.start, message.body.len());
    let no_dictionaries: HashMap<i64, ArrayRef> = HashMap::new();
    decoding_arrow(path, || {
        read_record_batch(
            &body,
            batch,
            schema.clone(),
            &no_dictionaries,
            None,
            &shard.version,
        )
    })
}

fn decode_with_stream_reader(path: &Path, shard: &ShardMessages) -> Result<Vec<RecordBatch>> {
    decoding_arrow(path, || {
        StreamReader::try_new(Cursor::new(shard.data.as_slice()), None)?.collect()
    })
}

/// Runs an arrow decoder on checkpoint bytes. arrow-rs asserts on some
/// malformed input (a misaligned buffer, found by fuzzing) instead of
/// returning an error: for us that is a damaged file, so both become
/// `Corrupt` naming it, never a crash or an "internal error".
fn decoding_arrow<T>(
    path: &Path,
    decode: impl FnOnce() -> std::result::Result<T, arrow_schema::ArrowError>,
) -> Result<T> {
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(decode)) {
        Ok(Err(e)) => Err(match failed_allocation_size(&e.to_string()) {
            // Out of memory is not damage: say how much was needed.
            Some(needed) => CheckpointError::OutOfMemory {
                path: path.to_path_buf(),
                needed,
                available: None,
            },
            None => CheckpointError::arrow_corrupt(path, e),
        }),
        Ok(Ok(decoded)) => Ok(decoded),
        Err(panic) => Err(CheckpointError::corrupt(
            path,
            format!("arrow could not decode it: {}", panic_message(&panic)),
        )),
    }
}

/// Threads a load runs on. Under an address-space limit (`RLIMIT_AS`) only
/// the calling one: a new thread maps a stack and, at its first allocation,
/// maybe a 64 MiB malloc arena, which can take the room the size check
/// counted on; a small allocation failing after that aborts the process.
fn load_threads(opts: &ReadOptions) -> usize {
    if address_space_limit().is_some() {
        1
    } else {
        opts.threads
    }
}

/// Runs `f(0..n)` on up to `threads` threads (on the calling thread alone
/// for one); results in index order. A panic in `f` comes back as an error,
/// not an abort of the caller.
pub fn parallel_map<T, F>(n: usize, threads: usize, f: F) -> Result<Vec<T>>
where
    T: Send,
    F: Fn(usize) -> Result<T> + Sync,
{
    let workers = threads.clamp(1, n.max(1));
    if workers == 1 {
        return std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| (0..n).map(&f).collect()))
            .unwrap_or_else(|panic| Err(CheckpointError::from_panic(panic)));
    }
    let next = AtomicUsize::new(0);
    let mut results: Vec<(usize, T)> = thread::scope(|s| {
        let handles: Vec<_> = (0..workers)
            .map(|_| {
                s.spawn(|| -> Result<Vec<(usize, T)>> {
                    let mut mine = Vec::new();
                    loop {
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        if i >= n {
                            return Ok(mine);
                        }
                        match f(i) {
                            Ok(v) => mine.push((i, v)),
                            Err(e) => {
                                next.store(n, Ordering::Relaxed); // stop the others early
                                return Err(e);
                            }
                        }
                    }
                })
            })
            .collect();
        let mut all = Vec::with_capacity(n);
        let mut first_error = None;
        for h in handles {
            match h
                .join()
                .map_err(CheckpointError::from_panic)
                .and_then(|r| r)
            {
                Ok(part) => all.extend(part),
                Err(e) => first_error = first_error.or(Some(e)),
            }
        }
        match first_error {
            Some(e) => Err(e),
            None => Ok(all),
        }
    })?;
    results.sort_unstable_by_key(|(i, _)| *i);
    Ok(results.into_iter().map(|(_, v)| v).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The machine's memory: no honest checkpoint decompresses to more.
    fn physical_memory() -> u64 {
        // SAFETY: sysconf has no preconditions.
        let (pages, page) = unsafe {
            (
                libc::sysconf(libc::_SC_PHYS_PAGES),
                libc::sysconf(libc::_SC_PAGESIZE),
            )
        };
        if pages > 0 && page > 0 {
            pages as u64 * page as u64
        } else {
            u64::MAX
        }
    }

    /// A shard whose first compressed buffer claims to inflate to 1 TiB.
    fn bomb() -> Vec<u8> {
        let mut bytes = include_bytes!("../../fuzz/seeds/shard/zstd_text.arrow").to_vec();
        let shard = split_messages(Path::new("seed"), Buffer::from_vec(bytes.clone())).unwrap();
        let message = &shard.batches[0];
        let header = root_as_message(&bytes[message.header.clone()]).unwrap();
        let batch = header.header_as_record_batch().unwrap();
        assert!(
            batch.compression().is_some(),
            "the seed must be zstd-compressed"
        );
        let buffer = batch
            .buffers()
            .unwrap()
            .iter()
            .find(|b| b.length() >= 8)
            .unwrap();
        let at = message.body.start + buffer.offset() as usize;
        bytes[at..at + 8].copy_from_slice(&(1i64 << 40).to_le_bytes());
        bytes
    }

    #[test]
    fn a_decompression_bomb_is_refused_before_allocating() {
        let err =
            decode_shard_bytes(Path::new("bomb.arrow"), bomb(), physical_memory()).unwrap_err();
        assert!(matches!(err, CheckpointError::Corrupt { .. }), "{err}");
        assert!(err.to_string().contains("refusing to allocate"), "{err}");
    }
}
