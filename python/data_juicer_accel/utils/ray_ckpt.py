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
  (size, xxh3, rows) first. The Rust core pins the generation it reads (hard
  links under ``.readers/``), so a save committed before the tasks run cannot
  take its shards away.

On disk, next to the reference's ``checkpoint_op_XXXX_partition_YYYY.parquet``::

    checkpoint_op_0003_partition_0000.accel/
        latest/
            accel_manifest.json                              written last
            000001-1f2e3d4c-b0000-data-00000-of-00001.arrow  task 1, block 0
            ...
        .latest.staging-<pid>-<n>/                           a save in flight
        .readers/<host>-<pid>-<n>/                           links a lazy load reads
        .accel.lock                                          held while saving

Checkpoints written by the reference are still found and loaded (a job
started before the switch resumes after it); when both formats exist for the
same op and partition, ours wins.

With ``ckpt_dir="s3://bucket/prefix"`` each checkpoint is a prefix
``checkpoint_op_XXXX_partition_YYYY.accel/`` with the bucket layout
(``versions/``, ``generations/``; see ``rust/checkpoint/bucket/publish.rs``):
the driver notes the newest version and names a generation, every write task
uploads its blocks' shards there under names of its own (a retried task uses
new ones), and the driver publishes all of them as the next version with one
create-only PUT of the manifest. Of two saves racing, the second raises
``CheckpointLockedError``; a failed save deletes what it uploaded and the
previous version stays. A load reads the newest manifest on the driver; its
read tasks read and verify one object each. A lazy load pins the version it
read (``readers/`` in the bucket, see ``rust/checkpoint/bucket/readers.rs``):
later saves keep its objects until the dataset is gone, or for 6 hours at most.

Ray is imported lazily: this module imports without it.
"""

from __future__ import annotations

import functools
import json
import os
import re
import sys
import uuid
import weakref
from collections.abc import Iterable
from typing import Any

import pyarrow as pa
from loguru import logger

from data_juicer_accel import _native
from data_juicer_accel.utils.ckpt_base import DEFAULT_ZSTD_LEVEL, CheckpointManagerBase, CheckpointStrategy, bucket_uri

__all__ = ["RayCheckpointManager", "ACCEL_SUFFIX", "REFERENCE_SUFFIX"]

#: Suffix of our checkpoint directories; the reference writes ``.parquet``.
ACCEL_SUFFIX = ".accel"
REFERENCE_SUFFIX = ".parquet"
#: Manifest ``kind`` of a Ray checkpoint.
RAY_KIND = "ray"
#: Where loads keep hard links to the shards they read (see ``_pin_generation``).
READERS = _native.READERS_DIR

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


def _native_options(options: dict[str, Any]) -> list[tuple[str, str]]:
    """``storage_options`` as the native client takes them (booleans as ``true``/``false``)."""
    return [(str(k), str(v).lower() if isinstance(v, bool) else str(v)) for k, v in options.items()]


@functools.cache
def _datasink_class():
    from ray.data import Datasink
    from ray.data.block import BlockAccessor

    class AccelShardDatasink(Datasink):
        """Every write task writes its blocks as shard files into the staging
        directory, or uploads them into the save's generation in a bucket
        (Rust writer, GIL released), and returns their manifest entries; the
        driver commits them in ``on_write_complete``."""

        def __init__(self, staging: Any, level: int, storage_options: list[tuple[str, str]] | None = None):
            import ray

            self._staging = staging  # _native.ShardStaging or BucketShardStaging: stays on the driver
            in_bucket = isinstance(staging, _native.BucketShardStaging)
            self.staging_dir: str | None = None if in_bucket else staging.dir
            #: (``s3://bucket/prefix``, ``generations/<id>``) of a save in a bucket.
            self.generation: tuple[str, str] | None = (staging.uri, staging.generation) if in_bucket else None
            self._storage_options = storage_options  # may hold credentials: never in a repr
            self.level = level
            # Tasks on the driver's machine leave the fsync of their shards to
            # the commit, which waits for all of them at once.
            self.driver_node: str = ray.get_runtime_context().get_node_id()
            self.schema: pa.Schema | None = None
            self.committed = False

        def __getstate__(self) -> dict[str, Any]:
            # Write tasks get the directory's path, never the driver's lock.
            return {k: v for k, v in self.__dict__.items() if k != "_staging"}

        def __repr__(self) -> str:
            where = self.staging_dir if self.generation is None else "/".join(self.generation)
            return f"AccelShardDatasink({where!r})"

        def _write(self, table: pa.Table, prefix: str, threads: int = 1, sync: bool = True) -> list[dict[str, Any]]:
            if self.generation is not None:
                uri, generation = self.generation
                return _native.write_bucket_shard_files(
                    uri,
                    generation,
                    table,
                    prefix=prefix,
                    storage_options=self._storage_options,
                    level=self.level,
                    threads=threads,
                )
            assert self.staging_dir is not None
            return _native.write_shard_files(
                self.staging_dir, table, prefix=prefix, level=self.level, threads=threads, sync=sync
            )

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
                written = self._write(table, f"{task}-b{b:04d}", threads, sync)
                entries.extend(dict(e, order=(ctx.task_idx, b, i)) for i, e in enumerate(written))
            if not entries and empty is not None:  # keep the schema of an all-empty task
                written = self._write(empty, f"{task}-empty")
                entries.extend(dict(e, order=(ctx.task_idx, 0, i)) for i, e in enumerate(written))
            return entries

        def on_write_complete(self, write_result) -> None:
            entries = [e for returned in write_result.write_returns for e in (returned or [])]
            entries.sort(key=lambda e: tuple(e["order"]))
            if not entries:  # no block at all: one schema-only shard keeps the schema
                schema = self.schema if self.schema is not None else pa.schema([])
                entries = self._write(schema.empty_table(), "empty")
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


def _read_bucket_shards(
    uri: str, generation: str, entries: list[dict[str, Any]], verify: bool, options: list[tuple[str, str]] | None
) -> Iterable[pa.Table]:
    for e in entries:
        loaded = _native.read_bucket_shard(
            uri,
            generation,
            file=e["file"],
            bytes=e["bytes"],
            xxh3_64=e["xxh3_64"],
            rows=e["rows"],
            storage_options=options,
            verify=verify,
        )
        yield pa.RecordBatchReader.from_stream(loaded).read_all()


def _datasource(directory: str, manifest: dict[str, Any], verify: bool):
    # The schema message of the first shard (a few hundred bytes; the data is
    # verified when the read tasks decode it): keeps the schema of 0 rows.
    schema = pa.schema(_native.read_shard_schema(os.path.join(directory, manifest["shards"][0]["file"])))
    return _shard_datasource(
        manifest,
        schema,
        lambda group: _read_shards(directory, group, verify),
        lambda e: os.path.join(directory, e["file"]),
    )


def _bucket_datasource(uri: str, manifest: dict[str, Any], verify: bool, options: list[tuple[str, str]] | None):
    generation = manifest["generation"]
    # No schema up front: it would cost a request to the bucket; the read
    # tasks' tables carry it (a checkpoint of 0 rows still has one shard).
    return _shard_datasource(
        manifest,
        None,
        lambda group: _read_bucket_shards(uri, generation, group, verify, options),
        lambda e: f"{uri}/{generation}/{e['file']}",
    )


def _shard_datasource(manifest: dict[str, Any], schema: pa.Schema | None, read_group, locate):
    from ray.data.block import BlockMetadata
    from ray.data.datasource import Datasource, ReadTask

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
                    input_files=[locate(e) for e in group],
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
                tasks.append(ReadTask(lambda group=group: read_group(group), metadata, **extra))  # type: ignore[misc]
            return tasks

        def get_name(self) -> str:
            return "AccelCheckpoint"

    return AccelShardDatasource()


# ------------------------------------------------- one generation per load


def _pin_generation(path: str) -> tuple[str, dict[str, Any], bool] | None:
    """The directory and manifest a lazy Ray load reads, and whether that
    directory is a pin of the load's own: hard links to the shards of the
    generation committed now, which a later save cannot take from read tasks
    that run after it (see ``_native.pin_generation``). Otherwise ``latest/``
    is read in place, logged with why. None when nothing is committed."""
    pinned = _native.pin_generation(path)
    if pinned is None:
        return None
    directory, manifest, in_place = pinned
    if in_place is not None:
        level, why = in_place
        logger.log(level, why)
    return directory, json.loads(manifest), in_place is None


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
        *,
        storage_options: dict[str, Any] | None = None,
    ):
        """
        Initialize Ray checkpoint manager.

        :param ckpt_dir: Directory to save and load checkpoints
        :param checkpoint_enabled: Whether checkpointing is enabled
        :param checkpoint_strategy: Strategy for when to create checkpoints
        :param checkpoint_n_ops: Number of operations between checkpoints (for EVERY_N_OPS strategy)
        :param checkpoint_op_names: List of operation names to checkpoint (for MANUAL strategy)
        :param event_logger: Optional event logger for checkpoint events
        :param storage_options: options of the bucket client when ``ckpt_dir``
            is ``s3://bucket/prefix`` (``endpoint_url``, ``aws_access_key_id``,
            ...); they go to the Ray tasks, whose ``AWS_*`` variables they
            override
        """
        #: ``s3://bucket/prefix`` for checkpoints in a bucket, else None.
        self.bucket = bucket_uri(ckpt_dir)
        if storage_options and self.bucket is None:
            raise ValueError(f"storage_options apply to checkpoints in a bucket (s3://...), not to {ckpt_dir!r}")
        self._storage_options = _native_options(dict(storage_options or {}))
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

    def _checkpoint_path(self, filename: str) -> str:
        """Where the checkpoint ``filename`` is: a path, or ``s3://bucket/prefix/filename``."""
        if self.bucket is not None:
            return f"{self.bucket.rstrip('/')}/{filename}"
        return os.path.join(self.ckpt_dir, filename)

    def checkpoint_exists(self, checkpoint_path: str) -> bool:
        """True if ``checkpoint_path`` exists; in a bucket, if it has a published version."""
        if bucket_uri(checkpoint_path) is not None:
            return self._committed_manifest(checkpoint_path) is not None
        return super().checkpoint_exists(checkpoint_path)

    def _committed_manifest(self, path: str) -> dict[str, Any] | None:
        """The manifest of our checkpoint at ``path`` (its ``latest/``, or the
        newest version in a bucket), or None if uncommitted or unreadable."""
        if self.bucket is not None:
            try:
                text = _native.read_bucket_manifest(path, storage_options=self._storage_options)
            except (OSError, ValueError) as e:
                logger.warning(f"Ignoring checkpoint {path}: {e}")
                return None
            return None if text is None else json.loads(text)
        if not os.path.isdir(path):
            return None
        try:
            text = _native.read_committed_manifest(path)
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
        checkpoint_path = self._checkpoint_path(self.resolve_checkpoint_filename(op_idx, partition_id))

        # Extract ray.data.Dataset if it's wrapped in RayDataset
        ray_data = dataset.data if hasattr(dataset, "data") else dataset

        sink = self._datasink(checkpoint_path)
        staging = sink._staging
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

    def _datasink(self, checkpoint_path: str) -> Any:
        """The datasink of one save, holding the driver's staging."""
        if self.bucket is not None:
            # Notes the newest version; the tasks upload into a new generation.
            options = self._storage_options
            in_bucket = _native.BucketShardStaging(checkpoint_path, storage_options=options)
            return _datasink_class()(in_bucket, self.zstd_level, options)
        # Ray workers do not run in our working directory.
        checkpoint_dir = os.path.abspath(checkpoint_path)
        # Takes the checkpoint's lock and clears what a dead save left behind.
        staging = _native.ShardStaging(checkpoint_dir, holder=self._lock_holder())
        _native.remove_dead_pins(checkpoint_dir)
        return _datasink_class()(staging, self.zstd_level)

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
        accel_path = self._checkpoint_path(self.resolve_checkpoint_filename(op_idx, partition_id))
        parquet_path = os.path.join(self.ckpt_dir, self.resolve_reference_checkpoint_filename(op_idx, partition_id))
        manifest = self._committed_manifest(accel_path)
        if manifest is not None:
            checkpoint_path = accel_path
        elif self.bucket is None and os.path.exists(parquet_path):
            checkpoint_path = parquet_path
        else:
            return None

        try:
            import ray

            if manifest is not None:
                if manifest.get("kind") != RAY_KIND:
                    raise _native.CheckpointCorruptError(f"{accel_path}: kind {manifest.get('kind')!r} is not 'ray'")
                ray_dataset = self._read_dataset(accel_path, manifest)
                if ray_dataset is None:
                    return None
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

    def _read_dataset(self, accel_path: str, manifest: dict[str, Any]) -> Any | None:
        """The lazy ``ray.data.Dataset`` of our committed checkpoint at
        ``accel_path``; None if it is gone meanwhile."""
        import ray

        if self.bucket is not None:
            # Pinned: later saves keep its objects until the dataset is gone.
            in_bucket = _native.pin_bucket_version(accel_path, storage_options=self._storage_options)
            if in_bucket is None:
                return None
            pin, manifest_json = in_bucket
            manifest = json.loads(manifest_json)
            source = _bucket_datasource(accel_path, manifest, self.verify_on_load, self._storage_options)
            weakref.finalize(
                source,
                _native.unpin_bucket_version,
                accel_path,
                pin,
                os.getpid(),
                storage_options=self._storage_options,
            )
        else:
            pinned = _pin_generation(accel_path)
            if pinned is None:
                return None
            directory, manifest, linked = pinned
            source = _datasource(os.path.abspath(directory), manifest, self.verify_on_load)
            if linked:
                # Ray's plan of every dataset derived from this one holds the source.
                weakref.finalize(source, _native.unpin_generation, directory, os.getpid())
        # One block per shard, the blocks the saved dataset had. Left to
        # itself, Ray asks for ~200 and cuts each shard's table into small
        # blocks, whose bookkeeping took most of a load's time.
        return ray.data.read_datasource(source, override_num_blocks=len(manifest["shards"]))

    def _checkpoint_names(self) -> list[str]:
        """The names under ``ckpt_dir``: a directory's entries, or the prefixes of a bucket."""
        if self.bucket is not None:
            return _native.list_bucket_prefixes(self.bucket, storage_options=self._storage_options)
        if not os.path.exists(self.ckpt_dir):
            return []
        return os.listdir(self.ckpt_dir)

    def find_latest_checkpoint(self, partition_id: int = 0) -> tuple[int, str, str] | None:
        """
        Find the latest checkpoint for a partition: our committed checkpoints
        and the reference's parquet ones; ours wins a tie.

        :param partition_id: Partition ID
        :return: Tuple of (op_idx, op_name, checkpoint_path) or None if no checkpoint found
        """
        wanted = f"{partition_id:04d}"
        best: tuple[int, int, str] | None = None  # (op_idx, ours first, path)
        for filename in self._checkpoint_names():
            match = _NAME_RE.match(filename)
            if match is None or match.group(2) != wanted:
                continue
            op_idx, path = int(match.group(1)), self._checkpoint_path(filename)
            ours = match.group(3) == ACCEL_SUFFIX
            if not ours and self.bucket is not None:
                continue  # the reference's parquet checkpoints are found in directories only
            if ours and self._committed_manifest(path) is None:
                continue  # a checkpoint without its committed manifest does not exist
            key = (op_idx, int(ours), path)
            if best is None or key[:2] > best[:2]:
                best = key
        if best is None:
            return None
        # For backward compatibility, we'll use a generic op_name
        return best[0], f"op_{best[0]:04d}", best[2]
