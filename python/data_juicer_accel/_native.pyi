"""Type stubs for the native module ``data_juicer_accel._native`` (Rust, PyO3)."""

from collections.abc import Sequence
from os import PathLike
from pathlib import Path
from typing import Any, Literal, Protocol, final

from data_juicer_accel.errors import CheckpointCorruptError as CheckpointCorruptError
from data_juicer_accel.errors import CheckpointLockedError as CheckpointLockedError

__version__: str

class ArrowStreamExportable(Protocol):
    """Any object exporting the Arrow C stream interface (pyarrow, polars, duckdb, ...)."""

    def __arrow_c_stream__(self, requested_schema: object | None = None) -> object: ...

# ------------------------------------------------------------------ checkpoints

MANIFEST_FILE: str
FORMAT_VERSION: int

@final
class CheckpointWriter:
    """Writes one checkpoint into a staging directory beside ``latest/`` and commits it atomically.

    Takes the directory's lock and clears leftovers of interrupted saves on creation. Dropped or
    aborted without ``commit``, the staging directory is removed and the lock released.
    """

    def __new__(
        cls,
        ckpt_dir: str | Any,
        *,
        compression: str = "zstd",
        level: int = 1,
        threads: int = 1,
        chunk_bytes: int | None = None,
        max_shard_bytes: int | None = None,
        holder: str | None = None,
        storage_options: Sequence[tuple[str, str]] | None = None,
    ) -> CheckpointWriter:
        """``chunk_bytes`` and ``max_shard_bytes`` default to ``DEFAULT_CHUNK_BYTES`` and
        ``DEFAULT_MAX_SHARD_BYTES``. ``holder`` names this save to another saver of this process
        that finds the directory locked."""
    @property
    def staging_dir(self) -> str | None: ...
    def write_data(self, data: ArrowStreamExportable, *, rows_per_shard: int | None = None) -> int:
        """Streams ``data`` into zstd Arrow IPC shards (GIL released). Returns the rows written."""
    @property
    def shard_files(self) -> list[str]: ...
    def add_file(self, name: str, data: bytes) -> None:
        """Adds a small file (state.json, ckpt_op.json, ...) to the checkpoint, fsynced."""
    def commit(self, kind: str) -> str:
        """Writes the manifest and swaps the checkpoint in as ``latest/``. Returns its path."""
    def abort(self) -> None:
        """Removes the staging directory and releases the lock (no-op after ``commit``)."""

@final
class LoadedCheckpoint:
    """A verified checkpoint in memory; hands its table out once via ``__arrow_c_stream__``."""

    @property
    def manifest(self) -> str: ...
    @property
    def num_rows(self) -> int: ...
    def file(self, name: str) -> bytes | None: ...
    def __arrow_c_stream__(self, requested_schema: object | None = None) -> object: ...

def read_checkpoint(path: str | Any, *, verify: bool = True, threads: int | None = None) -> LoadedCheckpoint | None:
    """Loads the checkpoint in ``path`` (a ``latest/`` directory); None when it has no manifest."""

def read_committed(
    ckpt_dir: str | Any,
    *,
    verify: bool = True,
    threads: int | None = None,
    storage_options: Sequence[tuple[str, str]] | None = None,
) -> LoadedCheckpoint | None:
    """The committed checkpoint of ``ckpt_dir``: a directory's ``latest/``, or the newest version
    published in a bucket (``s3://bucket/prefix``); None when there is none."""

def bucket_uri(ckpt_dir: str | Any) -> str | None:
    """``s3://bucket/prefix`` when ``ckpt_dir`` names a bucket, None for a local path; ValueError for
    any other URI, or credentials written into one."""

def committed_file(
    ckpt_dir: str | Any, name: str, *, storage_options: Sequence[tuple[str, str]] | None = None
) -> bytes | None:
    """The small file ``name`` of the committed checkpoint of ``ckpt_dir``, verified against its
    manifest; None when there is none."""

def committed_manifest(ckpt_dir: str | Any, *, storage_options: Sequence[tuple[str, str]] | None = None) -> str | None:
    """The manifest (JSON) of the committed checkpoint of ``ckpt_dir`` (a directory's ``latest/`` or a
    bucket's newest version), without reading the rows; None when there is none."""

def bucket_versions(ckpt_dir: str | Any, *, storage_options: Sequence[tuple[str, str]] | None = None) -> list[int]:
    """The versions published in the bucket ``ckpt_dir``, newest first."""

def put_bucket_file(
    uri: str | Any, name: str, data: bytes, *, storage_options: Sequence[tuple[str, str]] | None = None
) -> None:
    """Puts the small file ``name`` under the bucket prefix ``uri``, beside the checkpoint's versions, in one PUT."""

def get_bucket_file(
    uri: str | Any, name: str, *, storage_options: Sequence[tuple[str, str]] | None = None
) -> bytes | None:
    """The small file ``name`` under the bucket prefix ``uri``; None when there is none."""

def read_manifest(path: str | Any) -> str | None:
    """The validated manifest of the checkpoint in ``path`` as JSON text, or None."""

def compressed_shard(path: str | Any, names: list[str]) -> tuple[str, str] | None:
    """The first of ``names`` in the directory ``path`` that is an Arrow IPC stream with compressed
    batches, as ``(name, codec)``; None when none is. Reads message headers only."""

def xxh3_64_hex(data: bytes) -> str:
    """The xxh3-64 of ``data`` as the manifest writes it (16 lower-case hex digits)."""

# ------------------------------------------------------------------ background saves

@final
class BackgroundCheckpointWriter:
    """One native thread committing the newest submitted checkpoint: at most one save is written
    and one waits; a newer ``submit`` replaces the waiting one. A failure is kept until raised."""

    def __new__(cls) -> BackgroundCheckpointWriter: ...
    def submit(
        self,
        ckpt_dir: str | Any,
        data: ArrowStreamExportable,
        *,
        kind: str,
        files: list[tuple[str, bytes]],
        state_template: bytes | None = None,
        indices: ArrowStreamExportable | None = None,
        compression: str = "zstd",
        level: int = 1,
        threads: int = 1,
        chunk_bytes: int = 8388608,
        max_shard_bytes: int = 524288000,
        rows_per_shard: int | None = None,
        size_like_datasets: int | None = None,
        holder: str | None = None,
        immutable: bool = False,
        storage_options: Sequence[tuple[str, str]] | None = None,
    ) -> int:
        """Takes a snapshot of ``data`` (and of the rows the one-uint64-column table
        ``indices`` selects) and queues its save into ``ckpt_dir``. Returns its sequence number.
        Raises the failure of an earlier save not yet reported, queuing nothing.
        ``size_like_datasets=num_proc``: the writer thread picks ``rows_per_shard`` as
        ``datasets.save_to_disk(num_proc=num_proc)`` would. ``immutable=True`` (HF datasets'
        tables): references only, the stream read by the writer thread; otherwise the stream is
        read before this returns and every buffer not provably pyarrow's own memory is copied."""
    def wait(self) -> None:
        """Blocks (GIL released) until every submitted save is committed or failed; raises the
        first failure not yet reported. A Ctrl-C abandons the saves not committed yet (the
        previous checkpoint stays) and is raised."""
    def close(self) -> None:
        """``wait()``, then stops the writer thread."""
    def abandon(self, timeout: float) -> bool:
        """Abandons the saves not committed yet; waits up to ``timeout`` seconds for the one being
        written to stop. Returns whether a save was abandoned."""
    def wait_for_commit(self, timeout: float) -> bool:
        """Blocks (GIL released) up to ``timeout`` seconds until a commit not yet taken exists;
        False on timeout, once the writer is closed or a save was abandoned."""
    @property
    def abandoned(self) -> int:
        """Saves abandoned so far (by an interrupted ``wait``, or ``abandon``)."""
    def take_committed(self) -> list[int]:
        """Sequence numbers committed since the last call, in commit order."""
    @property
    def progress(self) -> tuple[int, int, int, bool]:
        """(submitted, committed, superseded, busy)."""

# ------------------------------------------------------------------ Ray shard files

#: Default uncompressed size of one compression unit (one IPC message).
DEFAULT_CHUNK_BYTES: int
#: Default uncompressed size at which a shard file is closed.
DEFAULT_MAX_SHARD_BYTES: int
#: Whether this build honours ``DATA_JUICER_ACCEL_FAULT`` (test builds only).
FAULT_INJECTION: bool

@final
class ShardStaging:
    """The staging directory of one checkpoint whose shards other processes write.

    Takes the lock of ``ckpt_dir`` and clears leftovers of interrupted saves on creation.
    ``commit`` makes the shards reported by the writers the checkpoint ``ckpt_dir/latest``,
    with the same commit as ``CheckpointWriter``. Dropped or aborted without ``commit``, the
    staging directory is removed and the lock released.
    """

    def __new__(cls, ckpt_dir: str | Any, *, holder: str | None = None) -> ShardStaging: ...
    @property
    def dir(self) -> str | None: ...
    def commit(
        self, shards: list[dict[str, Any]], *, kind: str = "ray", compression: str = "zstd", level: int = 1
    ) -> str:
        """Removes unreported files, fsyncs the reported shards, writes the manifest last and swaps in
        ``latest/``. Returns its path."""
    def abort(self) -> None:
        """Removes the staging directory and releases the lock (no-op after ``commit``)."""

def write_shard_files(
    dir: str | Any,
    data: ArrowStreamExportable,
    *,
    prefix: str,
    compression: str = "zstd",
    level: int = 1,
    threads: int = 1,
    chunk_bytes: int | None = None,
    max_shard_bytes: int | None = None,
    sync: bool = True,
) -> list[dict[str, Any]]:
    """Writes ``data`` as ``{prefix}-data-NNNNN-of-NNNNN.arrow`` shards into the existing ``dir``
    (fsynced; with ``sync=False`` only their writeback is started, and ``ShardStaging.commit``
    fsyncs them; GIL released; no lock, manifest or commit). Returns one manifest entry per shard:
    ``file``, ``bytes``, ``xxh3_64``, ``rows``, ``raw_bytes``."""

def read_shard_file(path: str | Any, *, bytes: int, xxh3_64: str, rows: int, verify: bool = True) -> LoadedCheckpoint:
    """Reads one shard file verified against its manifest entry, as a checkpoint load does (a regular
    file inside its directory, reads bounded by ``bytes``, xxh3, memory, ``rows``); ``manifest`` is
    that entry as JSON."""

@final
class ShardSchema:
    """The schema of a shard, for ``pyarrow.schema()``."""

    def __arrow_c_schema__(self) -> object: ...

def read_shard_schema(path: str | Any) -> ShardSchema:
    """The schema at the start of the shard file ``path``, read only if it is a regular file inside
    its directory (never a symlink out of it, nor a FIFO); only its first message is read.
    ``CheckpointCorruptError`` when it is no such file or does not start with a schema."""

# ------------------------------------------------------------------ Ray loads: pinned generations

#: Where lazy Ray loads keep hard links to the shards they read, inside the checkpoint directory.
READERS_DIR: str

@final
class BucketShardStaging:
    """One Ray checkpoint save in the bucket prefix ``uri`` (``s3://bucket/prefix``), held by the
    driver: notes the newest version and names the generation the write tasks upload into.
    ``commit`` publishes their shards as the next version; dropped or aborted without a commit,
    the generation is deleted."""

    def __new__(cls, uri: str, *, storage_options: list[tuple[str, str]] | None = None) -> BucketShardStaging: ...
    @property
    def uri(self) -> str: ...
    @property
    def generation(self) -> str: ...
    def commit(
        self, shards: list[dict[str, Any]], *, kind: str = "ray", compression: str = "zstd", level: int = 1
    ) -> str:
        """Deletes unreported objects of the generation, checks each reported one's size, and publishes
        the manifest as the next version (``CheckpointLockedError`` if another save did first).
        Returns the URI."""
    def abort(self) -> None:
        """Deletes what was uploaded for this save (no-op after ``commit``)."""

def write_bucket_shard_files(
    uri: str,
    generation: str,
    data: ArrowStreamExportable,
    *,
    prefix: str,
    storage_options: list[tuple[str, str]] | None = None,
    compression: str = "zstd",
    level: int = 1,
    threads: int = 1,
    chunk_bytes: int | None = None,
    max_shard_bytes: int | None = None,
) -> list[dict[str, Any]]:
    """Uploads ``data`` as the shards ``{prefix}-part-NNNNN.arrow`` of ``generation`` in the bucket
    prefix ``uri`` (GIL released). Returns one manifest entry per shard, as ``write_shard_files``."""

def read_bucket_shard(
    uri: str,
    generation: str,
    *,
    file: str,
    bytes: int,
    xxh3_64: str,
    rows: int,
    storage_options: list[tuple[str, str]] | None = None,
    verify: bool = True,
) -> LoadedCheckpoint:
    """Reads the shard ``file`` of ``generation`` in the bucket prefix ``uri``, verified against its
    manifest entry; a damaged or missing object raises ``CheckpointCorruptError`` naming its key."""

def pin_bucket_version(uri: str, *, storage_options: Sequence[tuple[str, str]] | None = None) -> tuple[str, str] | None:
    """Pins the newest version of the bucket checkpoint ``uri`` for a lazy load: ``(pin, manifest JSON)``,
    or None when nothing is published. Saves keep the pinned objects until unpinned (or 6 hours)."""

def unpin_bucket_version(
    uri: str, pin: str, owner: int, *, storage_options: Sequence[tuple[str, str]] | None = None
) -> None:
    """Removes a pin of ``pin_bucket_version``, unless this process is a fork of ``owner``."""

def read_bucket_manifest(uri: str, *, storage_options: list[tuple[str, str]] | None = None) -> str | None:
    """The manifest (JSON, naming its ``generation``) of the newest version published in the bucket
    prefix ``uri``; None when none was."""

def list_bucket_prefixes(uri: str, *, storage_options: list[tuple[str, str]] | None = None) -> list[str]:
    """The names of the prefixes directly under the bucket prefix ``uri``."""

def read_committed_manifest(ckpt_dir: str | Any) -> str | None:
    """The validated manifest (JSON) committed in ``ckpt_dir/latest``, after bringing back a
    checkpoint a save killed mid-fallback left aside; None when nothing is committed."""

def pin_generation(ckpt_dir: str | Any) -> tuple[str, str, tuple[str, str] | None] | None:
    """Pins the generation committed in ``ckpt_dir`` for a lazy load: ``(directory, manifest JSON,
    in_place)``; None when nothing is committed. ``directory`` holds hard links to its shards (a
    later save cannot take them), to release with ``unpin_generation``, unless ``in_place`` is
    ``(log level, why)``: then it is ``latest/`` itself (no hard links, a symlinked
    ``READERS_DIR``, or saves replacing the generation during every attempt)."""

def unpin_generation(pin: str | Any, owner: int | None = None) -> None:
    """Removes the pin ``pin`` (and ``READERS_DIR`` once empty); with ``owner``, only in the process
    of that pid, so a forked child leaves its parent's pins alone."""

def remove_dead_pins(ckpt_dir: str | Any) -> None:
    """Removes the pins of loads by processes of this host that are gone."""

# ------------------------------------------------------------------ events

@final
class EventSink:
    """The native half of one EventLogger: two bounded buffers that callers
    fill with atomics (no lock), a flush thread writing them to the JSONL file, and the
    Event builder of the fast path."""

    def __new__(
        cls,
        path: str | PathLike[str],
        event_class: type,
        fields: list[str],
        flush_interval: float = 0.1,
        queue_size: int = 65536,
        events_maxlen: int | None = None,
        write_through: bool = False,
    ) -> EventSink:
        """Create the file at ``path`` and start its flush thread. With
        ``write_through`` or ``flush_interval=0`` each logging call has its line
        in the file before it returns (as in a forked child, always)."""
    def log_fields(
        self,
        event_type: Any,
        message: Any,
        kwargs: dict[str, Any] | None,
        job_id: Any,
        return_event: bool,
    ) -> Any | None:
        """Make the event's fields, queue its line and keep it for ``events``; return
        the Event (built now) if ``return_event`` else True; ``None`` (nothing
        done) when ``kwargs`` holds a name ``Event()`` rejects."""
    def log_event(self, event: Any, job_id: Any) -> None:
        """Set ``event.job_id``, keep the event for ``events`` and queue its line."""
    def move_events_into(self, events: Any) -> None:
        """Append the events logged since the last call to ``events``, in order,
        building the Event objects left as fields; callers serialise calls."""
    def set_events_maxlen(self, maxlen: int | None) -> None:
        """How many events ``events`` keeps; older fields are dropped unbuilt."""
    def flush(self, fsync: bool = False) -> None:
        """Write every queued line (and fsync); raises OSError if a write failed."""
    def close(self) -> None:
        """Flush, fsync and stop the flush thread; later events raise ValueError."""
    def _after_fork_in_child(self) -> None: ...
    @property
    def batches_written(self) -> int: ...
    @property
    def path(self) -> Path: ...

@final
class LogEventFastPath:
    """Which ``EventLoggingMixin._log_event`` calls go straight to the sink:
    those of an executor whose EventLogger is the package's (its ``log_event``
    not replaced). ``log_event_method`` runs it first, and declines every call
    while a sink takes DEBUG; ``log`` is the Python method's way in."""

    def __new__(cls, loguru_core: Any, package_log_event: Any) -> LogEventFastPath: ...
    def log(self, executor: Any, event_type: Any, message: Any, kwargs: dict[str, Any] | None) -> Any | None:
        """Log the event at any loguru level; return True, or the Event when an
        INFO sink wants its line; ``None`` (nothing done) when the event must be
        built in Python."""

def log_event_method(fast_path: LogEventFastPath, python_method: Any, log_info_line: Any) -> Any:
    """A method descriptor for ``EventLoggingMixin._log_event``: the fast path
    in one C call, ``python_method`` for every call it declines, and
    ``log_info_line(executor, event)`` for events an INFO sink wants."""

def analyze_events_file(path: str | PathLike[str]) -> dict[str, Any]:
    """Fold a JSONL event log into ``total_events``, ``job_status``,
    ``partition_states``, ``checkpoints`` and ``job_start_events``;
    ``needs_reference_reading`` when a line only Python reads as the reference does."""

def events_file_has_type(path: str | PathLike[str], event_type: str) -> bool | None:
    """Whether the log holds an event of ``event_type`` (unreadable lines
    skipped); ``None`` when only Python can tell."""

def read_event_lines(path: str | PathLike[str]) -> list[str]:
    """The lines of the log every reader reads, stripped: JSON objects
    ``json.loads`` returns, nested at most 256 deep. Lines that are not
    UTF-8 or not such an object are skipped."""

def event_lines(data: bytes) -> list[str]:
    """``read_event_lines`` over bytes already read."""

@final
class InFlight:
    """``with InFlight(): ...``: interpreter exit waits for the block; a
    thread entering one after exit began parks forever."""

    def __init__(self) -> None: ...
    def __enter__(self) -> InFlight: ...
    def __exit__(self, *_exc_info: object) -> bool: ...

def drain_native_calls(timeout: float) -> int:
    """Closes the exit gate and waits up to ``timeout`` seconds for other
    threads' native calls to end; returns how many are still running.
    A Ctrl-C ends the wait and is raised."""

def fail_exit(reason: Literal["failed", "interrupted"]) -> None:
    """Exit lost work the caller has reported: the process will not end
    with status 0 (``"failed"``: status 1; ``"interrupted"``: killed by
    SIGINT, as on an unhandled KeyboardInterrupt). A forked child does not
    inherit this."""
