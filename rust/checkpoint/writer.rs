//! Parallel writer of zstd Arrow IPC stream shards.
//!
//! The caller's thread pulls record batches from the input (which may be a
//! stream of unknown length), slices them into chunks of about
//! `chunk_bytes` (zero-copy) and deals them round-robin to `threads` encoder
//! threads, which compress them into IPC messages. One writer thread takes the
//! messages back in the same round-robin order, so every shard holds a
//! contiguous run of rows in input order, as `datasets.load_from_disk`
//! expects, while compression runs on all cores. Channels are bounded, so
//! memory stays at a few chunks per thread whatever the dataset's size.
//!
//! One concern, the parallel write of one checkpoint's shards: planning the
//! chunks, the encoder threads, the writer thread and the shard files it fills
//! (hashed, written back early, renamed to their final names). Its length is
//! those three stages and their error paths.

use std::io::{self, Write};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender};
use std::thread::{self, ScopedJoinHandle};

use arrow_array::{Array, RecordBatch};
use arrow_ipc::writer::{
    write_message, DictionaryTracker, EncodedData, IpcDataGenerator, IpcWriteContext,
    IpcWriteOptions,
};
use arrow_ipc::CompressionType;
use arrow_schema::{ArrowError, DataType, SchemaRef};
use xxhash_rust::xxh3::Xxh3;

use super::error::{CheckpointError, IoContext, Result};
use super::shard_files::DirShards;
use super::{fault, memory};

/// Arrow IPC end-of-stream marker: continuation token, then a zero length.
const END_OF_STREAM: [u8; 8] = [0xFF, 0xFF, 0xFF, 0xFF, 0, 0, 0, 0];
/// Chunks in flight per encoder, each way.
const CHANNEL_DEPTH: usize = 2;
/// Bytes a shard may hold dirty in the page cache before their writeback is
/// started (like RocksDB's `bytes_per_sync`, whose advice is 1 MiB): the
/// disk then writes while later chunks compress, and the fsync at the end
/// only waits for the last chunk. A larger figure leaves a small shard (one
/// Ray block: ~14 MB compressed) to be written back at its fsync, with the
/// compressor idle (one run: 10 % less time writing 256 MB of Ray blocks).
const WRITEBACK_BYTES: u64 = 1 << 20;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    None,
    Zstd(i32),
}

#[derive(Debug, Clone)]
pub struct WriteOptions {
    pub compression: Compression,
    /// Encoder threads.
    pub threads: usize,
    /// Rows per shard when the total is known up front (HF's contiguous sharding).
    pub rows_per_shard: Option<u64>,
    /// Otherwise a shard is closed once it holds this many uncompressed bytes.
    pub max_shard_bytes: u64,
    /// Target uncompressed size of one compression unit (one IPC message).
    pub chunk_bytes: u64,
    /// Fsync every shard before returning. Off, the writeback of every
    /// shard is only started and the fsync is the caller's: a Ray commit
    /// fsyncs the shards its tasks wrote on the driver's node all at once.
    pub sync: bool,
}

impl Default for WriteOptions {
    fn default() -> Self {
        WriteOptions {
            compression: Compression::Zstd(1),
            threads: 2,
            rows_per_shard: None,
            max_shard_bytes: 500 << 20,
            chunk_bytes: 8 << 20,
            sync: true,
        }
    }
}

/// A finished shard file under its final name, fsynced unless
/// [`WriteOptions::sync`] was off.
#[derive(Debug, Clone)]
pub struct WrittenShard {
    pub file: String,
    pub rows: u64,
    pub bytes: u64,
    pub raw_bytes: u64,
    pub xxh3: u64,
}

struct Chunk {
    shard: usize,
    batch: RecordBatch,
    raw_bytes: u64,
}

struct EncodedChunk {
    shard: usize,
    rows: u64,
    raw_bytes: u64,
    dictionaries: Vec<EncodedData>,
    message: EncodedData,
}

type EncoderOutput = Result<EncodedChunk>;

pub fn ipc_options(compression: Compression) -> Result<IpcWriteOptions> {
    let options = IpcWriteOptions::default();
    let options = match compression {
        Compression::None => options,
        Compression::Zstd(level) => options
            .try_with_compression(Some(CompressionType::ZSTD))
            .and_then(|o| o.try_with_compression_level(Some(level)))
            .map_err(|e| CheckpointError::Input(format!("invalid zstd level {level}: {e}")))?,
    };
    Ok(options)
}

/// The largest compression unit to make at `compression`'s level. A unit
/// is compressed in one call nothing can interrupt, so a Ctrl-C (or a
/// failed input) waits for the units being compressed: each is sized to
/// take well under a second at the speeds zstd reached for text on a busy
/// 2-core machine (measured: 22 MB/s at level 3, 20 at 5, 7.6 at 9, 3.6 at
/// 10-12, 0.9-1.2 at 13-19, 0.4 at 22, where 8 MB took up to 20 s). A unit
/// is also zstd's window: at level 19, Zipf-distributed words compressed
/// 3.65x in 4 MB units, 3.15x in 512 KB ones, 2.98x in 256 KB ones.
fn max_chunk_bytes(compression: Compression) -> u64 {
    match compression {
        Compression::Zstd(level) if level >= 20 => 256 << 10,
        Compression::Zstd(13..=19) => 512 << 10,
        Compression::Zstd(10..=12) => 1 << 20,
        Compression::Zstd(7..=9) => 2 << 20,
        Compression::Zstd(4..=6) => 4 << 20,
        _ => u64::MAX,
    }
}

fn has_dictionary(schema: &SchemaRef) -> bool {
    fn walk(t: &DataType) -> bool {
        match t {
            DataType::Dictionary(_, _) => true,
            DataType::List(f) | DataType::LargeList(f) | DataType::FixedSizeList(f, _) => {
                walk(f.data_type())
            }
            DataType::ListView(f) | DataType::LargeListView(f) | DataType::Map(f, _) => {
                walk(f.data_type())
            }
            DataType::Struct(fs) => fs.iter().any(|f| walk(f.data_type())),
            DataType::Union(fs, _) => fs.iter().any(|(_, f)| walk(f.data_type())),
            DataType::RunEndEncoded(_, v) => walk(v.data_type()),
            _ => false,
        }
    }
    schema.fields().iter().any(|f| walk(f.data_type()))
}

/// Bytes the rows of `batch` occupy (a slice counts only its own rows).
fn batch_bytes(batch: &RecordBatch) -> u64 {
    batch
        .columns()
        .iter()
        .map(|c| {
            c.to_data()
                .get_slice_memory_size()
                .unwrap_or_else(|_| c.get_array_memory_size()) as u64
        })
        .sum()
}

/// Decides where each row goes: which shard, and in which chunk.
struct Planner {
    rows_per_shard: Option<u64>,
    max_shard_bytes: u64,
    chunk_bytes: u64,
    shard: usize,
    rows_in_shard: u64,
    bytes_in_shard: u64,
}

impl Planner {
    fn new(opts: &WriteOptions) -> Self {
        Planner {
            rows_per_shard: opts.rows_per_shard.filter(|&r| r > 0),
            max_shard_bytes: opts.max_shard_bytes.max(1),
            chunk_bytes: opts.chunk_bytes.max(1),
            shard: 0,
            rows_in_shard: 0,
            bytes_in_shard: 0,
        }
    }

    fn shard_is_full(&self) -> bool {
        match self.rows_per_shard {
            Some(limit) => self.rows_in_shard >= limit,
            None => self.rows_in_shard > 0 && self.bytes_in_shard >= self.max_shard_bytes,
        }
    }

    /// Slices `batch` (zero-copy) into chunks, none spanning two shards.
    fn split(&mut self, batch: &RecordBatch, mut emit: impl FnMut(Chunk) -> bool) -> bool {
        let rows = batch.num_rows() as u64;
        if rows == 0 {
            return true;
        }
        let total_bytes = batch_bytes(batch).max(1);
        let rows_per_chunk = (rows * self.chunk_bytes / total_bytes).clamp(1, rows);
        let mut offset = 0;
        while offset < rows {
            if self.shard_is_full() {
                self.shard += 1;
                self.rows_in_shard = 0;
                self.bytes_in_shard = 0;
            }
            let room = self
                .rows_per_shard
                .map_or(u64::MAX, |l| l - self.rows_in_shard);
            let len = rows_per_chunk.min(rows - offset).min(room);
            let raw_bytes = total_bytes * len / rows;
            let chunk = Chunk {
                shard: self.shard,
                batch: batch.slice(offset as usize, len as usize),
                raw_bytes,
            };
            self.rows_in_shard += len;
            self.bytes_in_shard += raw_bytes;
            offset += len;
            if !emit(chunk) {
                return false;
            }
        }
        true
    }
}

/// Writes all batches of `input` as shards into `dir`, named like HF's
/// `data-NNNNN-of-NNNNN.arrow`. Every shard is fsynced before this returns,
/// unless [`WriteOptions::sync`] is off.
/// An empty input gives one shard holding the schema alone.
pub fn write_shards<I>(
    dir: &Path,
    schema: SchemaRef,
    input: I,
    opts: &WriteOptions,
) -> Result<Vec<WrittenShard>>
where
    I: Iterator<Item = std::result::Result<RecordBatch, ArrowError>>,
{
    write_shards_cancellable(dir, schema, input, opts, &AtomicBool::new(false))
}

/// [`write_shards`], which stops with `Err(Cancelled)` once `cancel` is
/// raised: at the next compression unit (see [`max_chunk_bytes`]), the
/// units being compressed finished and those queued dropped.
pub fn write_shards_cancellable<I>(
    dir: &Path,
    schema: SchemaRef,
    input: I,
    opts: &WriteOptions,
    cancel: &AtomicBool,
) -> Result<Vec<WrittenShard>>
where
    I: Iterator<Item = std::result::Result<RecordBatch, ArrowError>>,
{
    let target = DirShards::new(dir, opts.sync);
    write_shards_to(&target, schema, input, opts, cancel)
}

/// [`write_shards_cancellable`] into any [`ShardTarget`].
pub fn write_shards_to<T, I>(
    target: &T,
    schema: SchemaRef,
    input: I,
    opts: &WriteOptions,
    cancel: &AtomicBool,
) -> Result<Vec<WrittenShard>>
where
    T: ShardTarget,
    I: Iterator<Item = std::result::Result<RecordBatch, ArrowError>>,
{
    let ipc = ipc_options(opts.compression)?;
    let mut opts = opts.clone();
    opts.chunk_bytes = opts.chunk_bytes.min(max_chunk_bytes(opts.compression));
    if has_dictionary(&schema) {
        // Dictionary ids and deltas are per stream: one encoder, one shard.
        opts.threads = 1;
        opts.rows_per_shard = None;
        opts.max_shard_bytes = u64::MAX;
    }
    let threads = affordable_encoders(opts.threads.max(1), &opts);
    // Raised when the input fails: encoders drop the chunks still queued
    // instead of compressing them for nothing (as they do on `cancel`).
    let stop = AtomicBool::new(false);

    let shards = thread::scope(|s| -> Result<Vec<WrittenShard>> {
        let mut inputs = Vec::with_capacity(threads);
        let mut outputs = Vec::with_capacity(threads);
        let mut encoders = Vec::with_capacity(threads);
        for _ in 0..threads {
            let (chunk_tx, chunk_rx) = sync_channel::<Chunk>(CHANNEL_DEPTH);
            let (out_tx, out_rx) = sync_channel::<EncoderOutput>(CHANNEL_DEPTH);
            let (schema, ipc, stops) = (schema.clone(), ipc.clone(), [&stop, cancel]);
            let level = zstd_level(opts.compression);
            let spawned = thread::Builder::new()
                .name("dja-ckpt-encode".into())
                .spawn_scoped(s, move || {
                    encode_loop(&schema, &ipc, chunk_rx, out_tx, threads, level, stops)
                });
            match spawned {
                Ok(handle) => encoders.push(handle),
                // Fewer encoders than asked for: slower, not wrong.
                Err(_) if !encoders.is_empty() => break,
                Err(e) => return Err(memory::thread_error("a checkpoint encoder thread", e)),
            }
            inputs.push(chunk_tx);
            outputs.push(out_rx);
        }
        let writer = {
            let (schema, ipc) = (schema.clone(), ipc.clone());
            thread::Builder::new()
                .name("dja-ckpt-shards".into())
                .spawn_scoped(s, move || write_loop(target, &schema, &ipc, outputs))
                .map_err(|e| memory::thread_error("the checkpoint shard writer thread", e))?
        };

        let produced = produce(input, &mut Planner::new(&opts), &inputs, cancel);
        if produced.is_err() {
            stop.store(true, Ordering::Relaxed);
        }
        drop(inputs); // lets encoders, then the writer, run dry and stop
        let written = join(writer);
        for encoder in encoders {
            join(encoder)?;
        }
        // An input error explains a short write better than the writer's view.
        produced?;
        written
    })?;
    target.finish(shards)
}

/// Bytes an open shard buffers before writing (its `BufWriter`).
pub const SHARD_BUFFER_BYTES: usize = 1 << 20;

/// The zstd level, 0 for no compression.
fn zstd_level(compression: Compression) -> i32 {
    match compression {
        Compression::Zstd(level) => level,
        Compression::None => 0,
    }
}

/// Memory one encoder needs for a chunk of `raw_bytes`: the IPC body and
/// zstd's output bound, each about the chunk's size, and zstd's context
/// (its size grows with the level: windows and tables).
fn chunk_need(raw_bytes: u64, level: i32) -> u64 {
    let context: u64 = match level {
        0 => 0,
        ..=3 => 8 << 20,
        4..=9 => 32 << 20,
        _ => 160 << 20,
    };
    2 * raw_bytes + context + (1 << 20)
}

/// How many of `wanted` encoders the memory left can carry, each with its
/// stack and a full chunk; at least one (whose chunks are checked anyway).
fn affordable_encoders(wanted: usize, opts: &WriteOptions) -> usize {
    let Some((free, _)) = memory::available_memory() else {
        return wanted;
    };
    let writer = memory::THREAD_BYTES + SHARD_BUFFER_BYTES as u64;
    let encoder = memory::THREAD_BYTES + chunk_need(opts.chunk_bytes, zstd_level(opts.compression));
    let fits = free.saturating_sub(writer) / encoder.max(1);
    (fits as usize).clamp(1, wanted)
}

fn join<T>(handle: ScopedJoinHandle<'_, Result<T>>) -> Result<T> {
    handle.join().map_err(CheckpointError::from_panic)?
}

/// Pulls the input on the calling thread and deals chunks round-robin,
/// until `cancel` is raised.
fn produce<I>(
    input: I,
    planner: &mut Planner,
    encoders: &[SyncSender<Chunk>],
    cancel: &AtomicBool,
) -> Result<()>
where
    I: Iterator<Item = std::result::Result<RecordBatch, ArrowError>>,
{
    let mut next = 0usize;
    for batch in input {
        if cancel.load(Ordering::Relaxed) {
            return Err(CheckpointError::Cancelled);
        }
        let batch = batch.map_err(input_error)?;
        let delivered = planner.split(&batch, |chunk| {
            let sent = !cancel.load(Ordering::Relaxed) && encoders[next].send(chunk).is_ok();
            next = (next + 1) % encoders.len();
            sent
        });
        if cancel.load(Ordering::Relaxed) {
            return Err(CheckpointError::Cancelled);
        }
        if !delivered {
            // The writer stopped on an error; it reports it.
            return Ok(());
        }
    }
    Ok(())
}

fn encode_loop(
    schema: &SchemaRef,
    ipc: &IpcWriteOptions,
    chunks: Receiver<Chunk>,
    out: SyncSender<EncoderOutput>,
    encoders: usize,
    level: i32,
    stops: [&AtomicBool; 2],
) -> Result<()> {
    let generator = IpcDataGenerator::default();
    let mut tracker = DictionaryTracker::new(false);
    // Registers dictionary ids in the order the writer's schema message uses.
    let _ = generator.schema_to_bytes_with_dictionary_tracker(schema, &mut tracker, ipc);
    let mut context = IpcWriteContext::default();
    for chunk in chunks {
        if stops.iter().any(|stop| stop.load(Ordering::Relaxed)) {
            break;
        }
        // Every encoder may be at this point at once: room for all of them.
        let need = chunk_need(chunk.raw_bytes, level).saturating_mul(encoders as u64);
        if let Err(e) = memory::ensure_room(need, "compressing checkpoint chunks") {
            let _ = out.send(Err(e));
            break;
        }
        let encoded = generator
            .encode(&chunk.batch, &mut tracker, ipc, &mut context)
            .map(|(dictionaries, message)| EncodedChunk {
                shard: chunk.shard,
                rows: chunk.batch.num_rows() as u64,
                raw_bytes: chunk.raw_bytes,
                dictionaries,
                message,
            })
            .map_err(encoder_error);
        let failed = encoded.is_err();
        if out.send(encoded).is_err() || failed {
            break;
        }
    }
    Ok(())
}

fn write_loop<T: ShardTarget>(
    target: &T,
    schema: &SchemaRef,
    ipc: &IpcWriteOptions,
    encoders: Vec<Receiver<EncoderOutput>>,
) -> Result<Vec<WrittenShard>> {
    let mut done = Vec::new();
    let mut current: Option<OpenShard<T>> = None;
    for seq in 0.. {
        let Ok(encoded) = encoders[seq % encoders.len()].recv() else {
            break; // every chunk is written
        };
        let encoded = encoded?;
        if current.as_ref().map(|s| s.index) != Some(encoded.shard) {
            if let Some(shard) = current.take() {
                done.push(shard.finish()?);
            }
            current = Some(OpenShard::create(target, encoded.shard, schema, ipc)?);
        }
        current
            .as_mut()
            .expect("opened above")
            .write(encoded, ipc)?;
    }
    let last = match current {
        Some(shard) => shard,
        None => OpenShard::create(target, 0, schema, ipc)?, // empty dataset: schema only
    };
    done.push(last.finish()?);
    Ok(done)
}

/// A failure of the input: one of ours passed through the stream (out of
/// memory gathering rows) keeps its kind; anything else is bad input.
fn input_error(error: ArrowError) -> CheckpointError {
    match error {
        ArrowError::ExternalError(inner) => match inner.downcast::<CheckpointError>() {
            Ok(ours) => *ours,
            Err(other) => CheckpointError::input(ArrowError::ExternalError(other)),
        },
        other => CheckpointError::input(other),
    }
}

/// An encoder's failure: an allocation zstd reported failed, or input the
/// IPC encoder refused.
fn encoder_error(error: ArrowError) -> CheckpointError {
    let message = error.to_string();
    match memory::failed_allocation_size(&message) {
        Some(needed) => CheckpointError::NoMemory {
            what: format!("compressing a checkpoint chunk ({message})"),
            needed,
            available: memory::available_memory(),
        },
        None => CheckpointError::input(error),
    }
}

/// Counts and hashes every byte on its way to the target.
struct HashingWriter<W: Write> {
    inner: W,
    hasher: Xxh3,
    bytes: u64,
}

impl<W: Write> Write for HashingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.bytes += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// Where the writer thread puts shards: the files of a staging directory
/// ([`super::shard_files::DirShards`]) or multipart uploads to a bucket
/// ([`super::bucket::upload::BucketShards`]).
pub trait ShardTarget: Sync {
    /// The bytes of one open shard.
    type Out: Write + Send;
    /// Starts shard `index`; also gives the name it is known by until
    /// [`ShardTarget::finish`] (errors use it).
    fn open(&self, index: usize) -> Result<(Self::Out, String)>;
    /// Every [`WRITEBACK_BYTES`] of a shard: bytes from `from` on are written.
    fn progress(&self, out: &mut Self::Out, name: &str, from: u64) -> Result<()>;
    /// The shard is complete: make it durable, or start to.
    fn close(&self, out: Self::Out, name: &str) -> Result<()>;
    /// Waits for what `close` started; gives the shards their final names.
    fn finish(&self, shards: Vec<WrittenShard>) -> Result<Vec<WrittenShard>>;
}

struct OpenShard<'t, T: ShardTarget> {
    target: &'t T,
    index: usize,
    name: String,
    out: HashingWriter<T::Out>,
    rows: u64,
    raw_bytes: u64,
    /// Bytes reported to [`ShardTarget::progress`].
    reported: u64,
}

impl<'t, T: ShardTarget> OpenShard<'t, T> {
    fn create(
        target: &'t T,
        index: usize,
        schema: &SchemaRef,
        ipc: &IpcWriteOptions,
    ) -> Result<Self> {
        let (out, name) = target.open(index)?;
        let mut shard = OpenShard {
            target,
            index,
            name,
            out: HashingWriter {
                inner: out,
                hasher: Xxh3::new(),
                bytes: 0,
            },
            rows: 0,
            raw_bytes: 0,
            reported: 0,
        };
        let header = IpcDataGenerator::default().schema_to_bytes_with_dictionary_tracker(
            schema,
            &mut DictionaryTracker::new(false),
            ipc,
        );
        shard.put(header, ipc)?;
        Ok(shard)
    }

    fn put(&mut self, message: EncodedData, ipc: &IpcWriteOptions) -> Result<()> {
        fault::check("shard_write", Path::new(&self.name)).at(&self.name)?;
        write_message(&mut self.out, message, ipc).map_err(|e| match e {
            ArrowError::IoError(_, source) => CheckpointError::io(&self.name, source),
            other => CheckpointError::Input(other.to_string()),
        })?;
        Ok(())
    }

    fn write(&mut self, chunk: EncodedChunk, ipc: &IpcWriteOptions) -> Result<()> {
        for dictionary in chunk.dictionaries {
            self.put(dictionary, ipc)?;
        }
        self.put(chunk.message, ipc)?;
        self.rows += chunk.rows;
        self.raw_bytes += chunk.raw_bytes;
        if self.out.bytes - self.reported >= WRITEBACK_BYTES {
            self.target
                .progress(&mut self.out.inner, &self.name, self.reported)?;
            self.reported = self.out.bytes;
        }
        Ok(())
    }

    fn finish(mut self) -> Result<WrittenShard> {
        self.out.write_all(&END_OF_STREAM).at(&self.name)?;
        let shard = WrittenShard {
            file: self.name.clone(),
            rows: self.rows,
            bytes: self.out.bytes,
            raw_bytes: self.raw_bytes,
            xxh3: self.out.hasher.digest(),
        };
        self.target.close(self.out.inner, &self.name)?;
        Ok(shard)
    }
}
