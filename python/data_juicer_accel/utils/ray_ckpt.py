"""Drop-in ``RayCheckpointManager`` (``data_juicer.utils.ckpt_utils``, py-data-juicer 1.6.1).

Same constructor, methods, strategies, decisions and ``_log_event`` calls as
the reference. What changes is the format and how it is written:

* ``save_checkpoint`` writes the Ray dataset's blocks where they live, through
  a Ray Data datasink: each write task turns its blocks into zstd Arrow IPC
  shards with the Rust writer (GIL released), into one hidden staging
  directory per save. The driver then commits it with the same Rust code as
  ``CheckpointManager``: checksummed manifest written last, fsync, atomic
  exchange with ``latest/``, and recovery of a save that died mid-commit. A
  checkpoint without its committed manifest does not exist (the reference
  takes a half-written parquet directory for a checkpoint).
* ``load_checkpoint`` returns a lazy ``ray.data.Dataset`` whose read tasks
  decode the shards on the workers, each shard checked against the manifest
  (size, xxh3, rows) first.

On disk, next to the reference's ``checkpoint_op_XXXX_partition_YYYY.parquet``::

    checkpoint_op_0003_partition_0000.accel/
        latest/
            accel_manifest.json                              written last
            000001-1f2e3d4c-b0000-data-00000-of-00001.arrow  task 1, block 0
            ...
        .latest.staging-<pid>-<n>/                           a save in flight
        .accel.lock                                          held while saving

Checkpoints written by the reference are still found and loaded (a job
started before the switch resumes after it); when both formats exist for the
same op and partition, ours wins.

Ray is imported lazily: this module imports without it.
"""

from __future__ import annotations

import errno
import functools
import json
import os
import re
import shutil
import socket
import stat
import sys
import uuid
import weakref
from collections.abc import Iterable
from typing import Any

import pyarrow as pa
from loguru import logger

from data_juicer_accel import _native
from data_juicer_accel.utils.ckpt_base import DEFAULT_ZSTD_LEVEL, CheckpointManagerBase, CheckpointStrategy

__all__ = ["RayCheckpointManager", "ACCEL_SUFFIX", "REFERENCE_SUFFIX"]

#: Suffix of our checkpoint directories; the reference writes ``.parquet``.
ACCEL_SUFFIX = ".accel"
REFERENCE_SUFFIX = ".parquet"
#: Manifest ``kind`` of a Ray checkpoint.
RAY_KIND = "ray"
#: The committed checkpoint inside a ``.accel`` directory.
LATEST = "latest"
#: Where loads keep hard links to the shards they read (see ``_pin_generation``).
READERS = ".readers"
#: Saves committing faster than a load can link: read in place after this many tries.
_PIN_ATTEMPTS = 5
#: What a save killed between the two renames of the non-atomic fallback
#: (filesystems without ``RENAME_EXCHANGE``) leaves in place of ``latest/``.
_INTERRUPTED_PREFIX = ".latest.old-"

_NAME_RE = re.compile(r"^checkpoint_op_(\d+)_partition_(\d+)(\.accel|\.parquet)$")


def _event_type():
    """The ``EventType`` enum of the caller's event logger: the reference's
    when its event module is loaded (a reference executor), ours otherwise.
    Never imports ``data_juicer`` (whose lazy loader may install packages)."""
    reference = sys.modules.get("data_juicer.core.executor.event_logging_mixin")
    if reference is not None and hasattr(reference, "EventType"):
        return reference.EventType
    from data_juicer_accel.core.executor.event_logging_mixin import EventType

    return EventType


def _interrupted(path: str) -> bool:
    """True when a save into ``path`` died between the fallback's two renames."""
    return any(name.startswith(_INTERRUPTED_PREFIX) for name in os.listdir(path))


# ---------------------------------------------------------------- Ray Data glue


def _granted_cpus() -> int:
    """Encoder threads of a write task: the CPUs Ray granted it (one, unless
    ``write_ray_remote_args`` asks for more), so that write tasks running
    side by side never compress on more threads than the cluster has CPUs."""
    import ray

    return max(1, int(ray.get_runtime_context().get_assigned_resources().get("CPU", 1)))


def _on_node(node_id: str) -> bool:
    """True in a Ray task running on the node ``node_id``."""
    import ray

    return ray.get_runtime_context().get_node_id() == node_id


@functools.cache
def _datasink_class():
    from ray.data import Datasink
    from ray.data.block import BlockAccessor

    class AccelShardDatasink(Datasink):
        """Every write task writes its blocks as shard files into the staging
        directory (Rust writer, GIL released) and returns their manifest
        entries; the driver commits them in ``on_write_complete``."""

        def __init__(self, staging: Any, level: int):
            import ray

            self._staging = staging  # _native.ShardStaging: stays on the driver
            self.staging_dir: str = staging.dir
            self.level = level
            # Tasks on the driver's machine leave the fsync of their shards to
            # the commit, which waits for all of them at once.
            self.driver_node: str = ray.get_runtime_context().get_node_id()
            self.schema: pa.Schema | None = None
            self.committed = False

        def __getstate__(self) -> dict[str, Any]:
            # Write tasks get the directory's path, never the driver's lock.
            return {k: v for k, v in self.__dict__.items() if k != "_staging"}

        def on_write_start(self, schema=None) -> None:
            if isinstance(schema, pa.Schema):
                self.schema = schema

        def write(self, blocks: Iterable[Any], ctx) -> list[dict[str, Any]]:
            task = f"{ctx.task_idx:06d}-{uuid.uuid4().hex[:8]}"  # a retried task writes new names
            threads = _granted_cpus()
            sync = not _on_node(self.driver_node)
            entries: list[dict[str, Any]] = []
            empty: pa.Table | None = None
            for b, block in enumerate(blocks):
                table = BlockAccessor.for_block(block).to_arrow()
                if table.num_rows == 0:
                    empty = empty or table
                    continue
                written = _native.write_shard_files(
                    self.staging_dir, table, prefix=f"{task}-b{b:04d}", level=self.level, threads=threads, sync=sync
                )
                entries.extend(dict(e, order=(ctx.task_idx, b, i)) for i, e in enumerate(written))
            if not entries and empty is not None:  # keep the schema of an all-empty task
                written = _native.write_shard_files(self.staging_dir, empty, prefix=f"{task}-empty", level=self.level)
                entries.extend(dict(e, order=(ctx.task_idx, 0, i)) for i, e in enumerate(written))
            return entries

        def on_write_complete(self, write_result) -> None:
            entries = [e for returned in write_result.write_returns for e in (returned or [])]
            entries.sort(key=lambda e: tuple(e["order"]))
            if not entries:  # no block at all: one schema-only shard keeps the schema
                schema = self.schema if self.schema is not None else pa.schema([])
                entries = _native.write_shard_files(
                    self.staging_dir, schema.empty_table(), prefix="empty", level=self.level
                )
            self._staging.commit(entries, kind=RAY_KIND, level=self.level)
            self.committed = True

        def on_write_failed(self, error: Exception) -> None:
            self._staging.abort()

    return AccelShardDatasink


def _read_shards(directory: str, entries: list[dict[str, Any]], verify: bool) -> Iterable[pa.Table]:
    for e in entries:
        loaded = _native.read_shard_file(
            os.path.join(directory, e["file"]),
            bytes=e["bytes"],
            xxh3_64=e["xxh3_64"],
            rows=e["rows"],
            verify=verify,
        )
        yield pa.RecordBatchReader.from_stream(loaded).read_all()


def _first_schema(path: str) -> pa.Schema:
    """The schema message at the start of the shard ``path``, read only if it
    is a regular file (not a symlink out of the checkpoint, not a FIFO)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as e:
        if e.errno == errno.ELOOP:
            raise _native.CheckpointCorruptError(f"{path}: a symbolic link; shards must be regular files") from None
        raise
    with os.fdopen(fd, "rb") as f:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise _native.CheckpointCorruptError(f"{path}: not a regular file")
        return pa.ipc.open_stream(f).schema


def _datasource(directory: str, manifest: dict[str, Any], verify: bool):
    from ray.data.block import BlockMetadata
    from ray.data.datasource import Datasource, ReadTask

    # The schema message of the first shard (a few hundred bytes; the data is
    # verified when the read tasks decode it): keeps the schema of 0 rows.
    schema = _first_schema(os.path.join(directory, manifest["shards"][0]["file"]))

    class AccelShardDatasource(Datasource):
        """Read tasks over contiguous runs of the manifest's shards."""

        def estimate_inmemory_data_size(self) -> int | None:
            return sum(e.get("raw_bytes") or e["bytes"] for e in manifest["shards"])

        def get_read_tasks(self, parallelism: int, per_task_row_limit=None, data_context=None) -> list:
            shards = manifest["shards"]
            n = max(1, min(int(parallelism), len(shards)))
            tasks = []
            for t in range(n):
                group = shards[t * len(shards) // n : (t + 1) * len(shards) // n]
                if not group:
                    continue
                meta = dict(
                    num_rows=sum(e["rows"] for e in group),
                    size_bytes=sum(e.get("raw_bytes") or e["bytes"] for e in group),
                    input_files=[os.path.join(directory, e["file"]) for e in group],
                    exec_stats=None,
                )
                try:
                    metadata = BlockMetadata(**meta)
                    extra = {"schema": schema}
                except TypeError:  # Ray < 2.47: the schema is part of the metadata
                    metadata = BlockMetadata(schema=schema, **meta)  # type: ignore[call-arg]
                    extra = {}
                if per_task_row_limit is not None:
                    extra["per_task_row_limit"] = per_task_row_limit
                tasks.append(ReadTask(lambda group=group: _read_shards(directory, group, verify), metadata, **extra))  # type: ignore[misc]
            return tasks

        def get_name(self) -> str:
            return "AccelCheckpoint"

    return AccelShardDatasource()


# ------------------------------------------------- one generation per load


def _plain_file_name(name: str) -> bool:
    return name not in ("", ".", "..") and "/" not in name and "\0" not in name


def _remove_dead_pins(path: str) -> None:
    """Removes the pins of loads by processes of this host that are gone
    (killed before their datasets were collected)."""
    readers = os.path.join(path, READERS)
    prefix = f"{socket.gethostname()}-"
    try:
        names = os.listdir(readers)
    except OSError:
        return
    for name in names:
        pid = name[len(prefix) :].split("-", 1)[0] if name.startswith(prefix) else ""
        if pid.isdigit() and not _process_alive(int(pid)):
            _unpin(os.path.join(readers, name))


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _unpin(pin: str, owner: int | None = None) -> None:
    """Removes a load's links, and ``.readers/`` once no load uses it (a load
    creating its pin meanwhile finds its parent gone and links again). With
    ``owner``, only in that process: a forked child exiting leaves its
    parent's pins alone."""
    if owner is not None and owner != os.getpid():
        return
    shutil.rmtree(pin, ignore_errors=True)
    try:
        os.rmdir(os.path.dirname(pin))
    except OSError:
        pass


def _link_shards(latest: str, pin: str, manifest: dict[str, Any]) -> None:
    os.makedirs(pin)
    for entry in manifest["shards"]:
        name = entry.get("file") if isinstance(entry, dict) else None
        if not isinstance(name, str) or not _plain_file_name(name):
            raise _native.CheckpointCorruptError(f"{latest}: shard name {name!r} is not a plain file name")
        # A symlink is linked as itself, so the reader still refuses it.
        os.link(os.path.join(latest, name), os.path.join(pin, name), follow_symlinks=False)


def _pin_generation(path: str, committed_manifest) -> tuple[str, dict[str, Any]] | None:
    """The directory and manifest a lazy Ray load reads: hard links to the
    shards of the generation committed now, in a directory of the load's
    own under ``path/.readers/``. A later save replaces ``latest/`` but
    cannot take these files from read tasks that run after it, so a load
    returns the old checkpoint or the new one, whole. Linking again when a
    save commits meanwhile; read in place where there are no hard links.
    None when nothing is committed."""
    latest = os.path.join(path, LATEST)
    if os.path.islink(os.path.join(path, READERS)):  # links are made only inside the checkpoint
        logger.warning(f"{os.path.join(path, READERS)} is a symbolic link: reading {latest} in place")
        manifest = committed_manifest(path)
        return None if manifest is None else (latest, manifest)
    _remove_dead_pins(path)
    for _ in range(_PIN_ATTEMPTS):
        manifest = committed_manifest(path)
        if manifest is None:
            return None
        pin = os.path.join(path, READERS, f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:12]}")
        try:
            _link_shards(latest, pin, manifest)
        except FileNotFoundError:  # a save replaced the generation while we linked
            shutil.rmtree(pin, ignore_errors=True)
            continue
        except OSError as e:
            shutil.rmtree(pin, ignore_errors=True)
            if e.errno in (errno.EPERM, errno.EXDEV, errno.EMLINK, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EACCES):
                logger.debug(f"No hard links in {path} ({e}): its shards are read in place")
                return latest, manifest
            raise
        except BaseException:
            shutil.rmtree(pin, ignore_errors=True)
            raise
        if committed_manifest(path) == manifest:
            return pin, manifest
        shutil.rmtree(pin, ignore_errors=True)
    logger.warning(f"{path} was saved again during each of {_PIN_ATTEMPTS} tries to pin it: reading it in place")
    manifest = committed_manifest(path)
    return None if manifest is None else (latest, manifest)


# ---------------------------------------------------------------- the manager


class RayCheckpointManager(CheckpointManagerBase):
    """
    Checkpoint manager for Ray Data with per-partition checkpointing support.

    Same API and decisions as ``data_juicer.utils.ckpt_utils.RayCheckpointManager``;
    checkpoints are zstd Arrow IPC shards written by the Ray workers and
    committed by the driver with a manifest (see the module docstring).
    """

    #: ``ray_remote_args`` of the write tasks (e.g. ``{"max_retries": 0}``).
    write_ray_remote_args: dict[str, Any] | None = None
    #: Check every shard's size, xxh3 and row count when it is read.
    verify_on_load: bool = True

    def __init__(
        self,
        ckpt_dir: str,
        checkpoint_enabled: bool = True,
        checkpoint_strategy: CheckpointStrategy = CheckpointStrategy.EVERY_OP,
        checkpoint_n_ops: int = 1,
        checkpoint_op_names: list[str] | None = None,
        event_logger=None,
    ):
        """
        Initialize Ray checkpoint manager.

        :param ckpt_dir: Directory to save and load checkpoints
        :param checkpoint_enabled: Whether checkpointing is enabled
        :param checkpoint_strategy: Strategy for when to create checkpoints
        :param checkpoint_n_ops: Number of operations between checkpoints (for EVERY_N_OPS strategy)
        :param checkpoint_op_names: List of operation names to checkpoint (for MANUAL strategy)
        :param event_logger: Optional event logger for checkpoint events
        """
        super().__init__(ckpt_dir)
        self.checkpoint_enabled = checkpoint_enabled
        self.checkpoint_strategy = checkpoint_strategy
        self.checkpoint_n_ops = checkpoint_n_ops
        self.checkpoint_op_names = set(checkpoint_op_names or [])
        self.event_logger = event_logger
        self.zstd_level = DEFAULT_ZSTD_LEVEL

        # If strategy is DISABLED, disable checkpointing regardless of enabled flag
        if self.checkpoint_strategy == CheckpointStrategy.DISABLED:
            self.checkpoint_enabled = False

    # -------------------------------------------------------------- names

    def resolve_checkpoint_filename(self, op_idx: int, partition_id: int) -> str:
        """Resolve checkpoint filename using consistent format (ours: ``.accel``)."""
        return f"checkpoint_op_{op_idx:04d}_partition_{partition_id:04d}{ACCEL_SUFFIX}"

    def resolve_reference_checkpoint_filename(self, op_idx: int, partition_id: int) -> str:
        """The name the reference gives the same checkpoint (``.parquet``)."""
        return f"checkpoint_op_{op_idx:04d}_partition_{partition_id:04d}{REFERENCE_SUFFIX}"

    def _committed_manifest(self, path: str) -> dict[str, Any] | None:
        """The manifest of our checkpoint at ``path`` (its ``latest/``), or
        None if uncommitted or unreadable."""
        if not os.path.isdir(path):
            return None
        latest = os.path.join(path, LATEST)
        try:
            if not os.path.lexists(latest) and _interrupted(path):
                _native.recover_checkpoint_dir(path)
            text = _native.read_manifest(latest) if os.path.isdir(latest) else None
        except (OSError, ValueError) as e:
            logger.warning(f"Ignoring checkpoint {path}: {e}")
            return None
        return None if text is None else json.loads(text)

    # -------------------------------------------------------------- strategy

    def should_checkpoint(self, op_idx: int, op_name: str) -> bool:
        """Determine if checkpoint should be created based on configuration strategy."""
        if not self.checkpoint_enabled:
            return False

        if self.checkpoint_strategy == CheckpointStrategy.EVERY_OP:
            return True
        elif self.checkpoint_strategy == CheckpointStrategy.EVERY_N_OPS:
            return (op_idx + 1) % self.checkpoint_n_ops == 0
        elif self.checkpoint_strategy == CheckpointStrategy.MANUAL:
            return op_name in self.checkpoint_op_names
        elif self.checkpoint_strategy == CheckpointStrategy.DISABLED:
            return False
        else:
            logger.warning(f"Unknown checkpoint strategy: {self.checkpoint_strategy}, defaulting to every_op")
            return True

    def group_operations_for_checkpointing(self, ops: list[Any]) -> list[tuple[int, int, list[Any]]]:
        """
        Group operations based on checkpoint strategy.

        :param ops: List of operations
        :return: List of (start_idx, end_idx, group_ops) tuples
        """
        groups = []
        current_start = 0

        for i, op in enumerate(ops):
            op_name = getattr(op, "_name", f"op_{i}")
            if self.should_checkpoint(i, op_name):
                # This operation should trigger a checkpoint
                groups.append((current_start, i + 1, ops[current_start : i + 1]))
                current_start = i + 1

        # Add remaining operations as the last group
        if current_start < len(ops):
            groups.append((current_start, len(ops), ops[current_start:]))

        return groups

    # -------------------------------------------------------------- save / load

    def save_checkpoint(  # type: ignore[override]  # the reference's signature
        self,
        dataset: Any,  # RayDataset or ray.data.Dataset
        op_idx: int,
        op_name: str | None = None,
        partition_id: int = 0,
        cfg: Any | None = None,
    ) -> str:
        """
        Save dataset checkpoint: shards written by the Ray workers, manifest
        committed last by the driver.

        :param dataset: RayDataset or ray.data.Dataset to save
        :param op_idx: Operation index
        :param op_name: Operation name (optional)
        :param partition_id: Partition ID
        :param cfg: Optional config for RayDataset wrapper
        :return: Path to saved checkpoint
        """
        checkpoint_filename = self.resolve_checkpoint_filename(op_idx, partition_id)
        checkpoint_path = os.path.join(self.ckpt_dir, checkpoint_filename)
        # Ray workers do not run in our working directory.
        checkpoint_dir = os.path.abspath(checkpoint_path)

        # Extract ray.data.Dataset if it's wrapped in RayDataset
        ray_data = dataset.data if hasattr(dataset, "data") else dataset

        # Takes the checkpoint's lock and clears what a dead save left behind.
        staging = _native.ShardStaging(checkpoint_dir, holder=self._lock_holder())
        _remove_dead_pins(checkpoint_dir)
        sink = _datasink_class()(staging, self.zstd_level)
        try:
            ray_data.write_datasink(sink, ray_remote_args=dict(self.write_ray_remote_args or {}))
        finally:
            staging.abort()  # after a commit: nothing to do; otherwise nothing of it may stay
        if not sink.committed:
            raise RuntimeError(f"checkpoint {checkpoint_path} was not committed")

        # Log checkpoint save event if event logger is available
        if self.event_logger and hasattr(self.event_logger, "_log_event"):
            self.event_logger._log_event(
                event_type=_event_type().CHECKPOINT_SAVE,
                message=f"Saved checkpoint after operation {op_idx}: {op_name}",
                partition_id=partition_id,
                operation_name=op_name,
                operation_idx=op_idx,
                metadata={"checkpoint_path": checkpoint_path},
            )

        logger.info(f"Saved checkpoint: {checkpoint_path}")
        return checkpoint_path

    def load_checkpoint(  # type: ignore[override]  # the reference's signature
        self,
        op_idx: int,
        op_name: str | None = None,
        partition_id: int = 0,
        cfg: Any | None = None,
    ) -> Any | None:  # Returns RayDataset, ray.data.Dataset or None
        """
        Load a dataset checkpoint: ours (committed) if present, else the
        reference's parquet directory. The shards are read, and verified, by
        Ray read tasks on the workers when the dataset executes.

        :param op_idx: Operation index
        :param op_name: Operation name (optional)
        :param partition_id: Partition ID
        :param cfg: Optional config for RayDataset wrapper
        :return: RayDataset (with ``cfg``), ray.data.Dataset, or None if the checkpoint doesn't exist
        """
        accel_path = os.path.join(self.ckpt_dir, self.resolve_checkpoint_filename(op_idx, partition_id))
        parquet_path = os.path.join(self.ckpt_dir, self.resolve_reference_checkpoint_filename(op_idx, partition_id))
        manifest = self._committed_manifest(accel_path)
        if manifest is not None:
            checkpoint_path = accel_path
        elif os.path.exists(parquet_path):
            checkpoint_path = parquet_path
        else:
            return None

        try:
            import ray

            if manifest is not None:
                if manifest.get("kind") != RAY_KIND:
                    raise _native.CheckpointCorruptError(f"{accel_path}: kind {manifest.get('kind')!r} is not 'ray'")
                pinned = _pin_generation(accel_path, self._committed_manifest)
                if pinned is None:
                    return None
                directory, manifest = pinned
                source = _datasource(os.path.abspath(directory), manifest, self.verify_on_load)
                if directory != os.path.join(accel_path, LATEST):
                    # Ray's plan of every dataset derived from this one holds the source.
                    weakref.finalize(source, _unpin, directory, os.getpid())
                # One block per shard, the blocks the saved dataset had. Left to
                # itself, Ray asks for ~200 and cuts each shard's table into small
                # blocks, whose bookkeeping took most of a load's time.
                ray_dataset = ray.data.read_datasource(source, override_num_blocks=len(manifest["shards"]))
            else:
                ray_dataset = ray.data.read_parquet(parquet_path)

            # Log checkpoint load event if event logger is available
            if self.event_logger and hasattr(self.event_logger, "_log_event"):
                self.event_logger._log_event(
                    event_type=_event_type().CHECKPOINT_LOAD,
                    message=f"Loaded checkpoint from operation {op_idx}",
                    partition_id=partition_id,
                    operation_name=op_name or f"op_{op_idx:04d}",
                    operation_idx=op_idx,
                    metadata={"checkpoint_path": checkpoint_path},
                )

            # Wrap in RayDataset if cfg is provided
            if cfg is not None:
                from data_juicer.core.data.ray_dataset import RayDataset

                return RayDataset(ray_dataset, cfg=cfg)
            else:
                return ray_dataset

        except Exception as e:
            logger.warning(f"Failed to load checkpoint {checkpoint_path}: {e}")
        return None

    def find_latest_checkpoint(self, partition_id: int = 0) -> tuple[int, str, str] | None:
        """
        Find the latest checkpoint for a partition: our committed checkpoints
        and the reference's parquet ones; ours wins a tie.

        :param partition_id: Partition ID
        :return: Tuple of (op_idx, op_name, checkpoint_path) or None if no checkpoint found
        """
        if not os.path.exists(self.ckpt_dir):
            return None

        wanted = f"{partition_id:04d}"
        best: tuple[int, int, str] | None = None  # (op_idx, ours first, path)
        for filename in os.listdir(self.ckpt_dir):
            match = _NAME_RE.match(filename)
            if match is None or match.group(2) != wanted:
                continue
            op_idx, path = int(match.group(1)), os.path.join(self.ckpt_dir, filename)
            ours = match.group(3) == ACCEL_SUFFIX
            if ours and self._committed_manifest(path) is None:
                continue  # a checkpoint without its committed manifest does not exist
            key = (op_idx, int(ours), path)
            if best is None or key[:2] > best[:2]:
                best = key
        if best is None:
            return None
        # For backward compatibility, we'll use a generic op_name
        return best[0], f"op_{best[0]:04d}", best[2]
