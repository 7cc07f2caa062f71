"""Drop-in replacement for ``data_juicer.utils.ckpt_utils`` (py-data-juicer 1.6.1).

``CheckpointManager`` keeps the reference's constructor, attributes, methods,
decisions and log messages. What changes is underneath: the dataset is written
as zstd-compressed Arrow IPC stream shards by a Rust core, in parallel, with a
checksummed manifest, and committed atomically. ``latest/`` stays loadable by
``datasets.load_from_disk`` (hence by the original Data-Juicer), and a
``latest/`` written by the original Data-Juicer still loads here.

This module holds the manager and its decisions; the rest is beside it:
``ckpt_sources`` (what a save is given), ``ckpt_load`` (reading back what
the native reader does not), ``ckpt_op_record`` (``ckpt_op.json``),
``ckpt_background`` (``background=True``), ``ckpt_base`` (the base class,
shared with ``RayCheckpointManager`` from ``ray_ckpt``).
"""

from __future__ import annotations

import errno
import json
import os
from collections.abc import Callable
from typing import Any

import pyarrow as pa
from loguru import logger

from data_juicer_accel import _lifecycle, _native
from data_juicer_accel._lifecycle import in_flight
from data_juicer_accel.errors import CheckpointCorruptError
from data_juicer_accel.utils import ckpt_sources
from data_juicer_accel.utils.ckpt_background import _BackgroundSaves, queue_save
from data_juicer_accel.utils.ckpt_base import (
    DEFAULT_ZSTD_LEVEL,
    CheckpointManagerBase,
    CheckpointStrategy,
    bucket_uri,
    make_ckpt_dir,
)
from data_juicer_accel.utils.ckpt_load import _load_foreign_checkpoint, _replaced_by_another_writer, _to_hf_dataset
from data_juicer_accel.utils.ckpt_load import _read_metadata_file as _read_metadata_file  # re-exported
from data_juicer_accel.utils.ckpt_op_record import _OP_RECORD_FILE, _record_of, check_record, read_op_record
from data_juicer_accel.utils.ckpt_sources import _INFO_FILE, _STATE_FILE, _describe_source, _write_rows
from data_juicer_accel.utils.ckpt_sources import CHUNK_BYTES as CHUNK_BYTES  # re-exported
from data_juicer_accel.utils.ckpt_sources import MAX_SHARD_BYTES as MAX_SHARD_BYTES  # re-exported
from data_juicer_accel.utils.ray_ckpt import RayCheckpointManager  # Ray itself is imported lazily

__all__ = [
    "CheckpointManagerBase",
    "CheckpointManager",
    "CheckpointStrategy",
    "DEFAULT_ZSTD_LEVEL",
    "RayCheckpointManager",
]

#: What a checkpoint can hold, as recorded in its manifest.
_KINDS = ("arrow", "hf", "nested")


class CheckpointManager(CheckpointManagerBase):
    """
    This class is used to save the latest version of dataset to checkpoint
    directory or load it from checkpoint directory, a bit like cache management
    Rerun the same config will reload the checkpoint and skip ops before it.

    If any args of operator in process list is changed, all ops will be
    rerun from the beginning.
    """

    def __init__(
        self,
        ckpt_dir,
        original_process_list,
        num_proc=1,
        *,
        zstd_level: int = DEFAULT_ZSTD_LEVEL,
        verify_on_load: bool = True,
        background: bool = False,
        storage_options: dict[str, Any] | None = None,
    ):
        """
        Initialization method.

        :param ckpt_dir: path to save and load checkpoint
        :param original_process_list: process list in config
        :param num_proc: number of worker threads when saving dataset
        :param zstd_level: zstd level of the checkpoint shards
        :param verify_on_load: check every file's checksum when loading
        :param background: ``save_ckpt`` returns once it has taken a
            zero-copy snapshot; a native thread compresses and commits it
            (see ``wait``)
        :param storage_options: options of the bucket client when
            ``ckpt_dir`` is ``s3://bucket/prefix`` (``endpoint_url``,
            ``aws_access_key_id``, ``region``, ``allow_http``, ...); they
            override the ``AWS_*`` environment variables
        """
        super().__init__(ckpt_dir)
        #: ``s3://bucket/prefix`` for a checkpoint in a bucket, else None.
        self.bucket = bucket_uri(ckpt_dir)
        if storage_options and self.bucket is None:
            raise ValueError(f"storage_options apply to a checkpoint in a bucket (s3://...), not to {ckpt_dir!r}")
        self.storage_options = dict(storage_options or {})
        if self.bucket is None:
            self.ckpt_ds_dir = os.path.join(self.ckpt_dir, "latest")
            self.ckpt_op_record = os.path.join(self.ckpt_dir, _OP_RECORD_FILE)
        else:  # the newest version published there is the checkpoint, its op record inside it
            self.ckpt_ds_dir = self.bucket
            self.ckpt_op_record = f"{self.bucket}/{_OP_RECORD_FILE}"
        self.process_list = original_process_list
        self.num_proc = num_proc
        self.op_record: list = []
        self.zstd_level = zstd_level
        self.verify_on_load = verify_on_load
        self.background = background
        #: Called as ``on_commit(path, ops_done)`` on the caller's thread once a
        #: checkpoint holding the first ``ops_done`` ops of the record is committed.
        self.on_commit: Callable[[str, int], Any] | None = None
        self._background_saves: _BackgroundSaves | None = None
        #: The op record the rows of ``latest/`` must come with for a load to
        #: return them: the one the skip decision used, then the one of this
        #: manager's last save. None: no decision to keep (load what is there).
        self._expected_record: list | None = None

        self.ckpt_available = self.check_ckpt()

    def get_left_process_list(self):
        """
        Get left process list of ops for processing dataset, when checkpoint is
        available, remove some ops from process list, otherwise keep it
        unchanged.

        :return: process list of left ops
        """
        return self.process_list

    def check_ckpt(self):
        """
        Check if checkpoint is available.

        :return: True when checkpoint is available, else False
        """
        if self.bucket is not None:
            return self.check_ops_to_skip()
        if (
            os.path.exists(self.ckpt_ds_dir)
            and os.path.isdir(self.ckpt_ds_dir)
            and os.path.exists(self.ckpt_op_record)
            and os.path.isfile(self.ckpt_op_record)
            and self.check_ops_to_skip()
        ):
            return True
        else:
            make_ckpt_dir(self.ckpt_dir)
            return False

    def record(self, op_cfg: dict):
        """Save op name and args to op record, which is used to compare with
        the process list from config to decide if a checkpoint is available."""
        self.op_record.append(op_cfg)

    def check_ops_to_skip(self):
        """
        Check which ops need to be skipped in the process list.

        If op record list from checkpoint are the same as the prefix
        part of process list, then skip these ops and start processing
        from the checkpoint. Otherwise, process the original dataset
        from scratch.

        :return: whether to skip some ops or not
        """
        self._expected_record = None
        record = self._read_op_record()
        if record is None:
            self.op_record = []
            return False
        self.op_record = record

        # check whether the op records are exactly the same
        # with prefix of process list
        # 1. same: remove these ops from process list
        # 2. different: cleanup op record, and keep process list unchanged
        recorded_op_num = len(self.op_record)
        process_op_num = len(self.process_list)
        if process_op_num < recorded_op_num:
            logger.warning(
                f"Current config ops ({process_op_num}) are fewer than "
                f"checkpoint ops ({recorded_op_num}). Cannot reuse checkpoint;"
                f" all ops will be processed from the beginning."
            )
            self.op_record = []
            return False

        prefix_process = self.process_list[:recorded_op_num]
        all_the_same = True
        dif1, dif2 = None, None

        for record_op, config_op in zip(self.op_record, prefix_process, strict=False):
            if record_op != config_op:
                all_the_same = False
                dif1, dif2 = record_op, config_op
                break
        if all_the_same:
            for op in self.op_record:
                op_name = list(op.keys())[0]
                logger.info(f"Skip op [{op_name}].")
            self.process_list = self.process_list[recorded_op_num:]
            self._expected_record = list(self.op_record)
            return True
        else:
            logger.warning(
                f"Processed ops of checkpoint are different from "
                f"current configs: checkpoint-{dif1} vs. config-"
                f"{dif2}. All ops will be processed from the "
                f"beginning."
            )
            self.op_record = []
            return False

    def _read_op_record(self) -> list | None:
        """The op record, or None (with a warning) when it cannot be used."""
        if self.bucket is None:
            return read_op_record(self.ckpt_op_record, root=self.ckpt_dir)
        try:
            text = _native.committed_file(self.ckpt_dir, _OP_RECORD_FILE, storage_options=self._storage_options())
        except CheckpointCorruptError as e:
            logger.warning(
                f"Cannot read checkpoint op record in {self.bucket} ({e}). All ops will be processed "
                "from the beginning."
            )
            return None
        return _record_of(text)

    def _storage_options(self) -> list[tuple[str, str]]:
        """``storage_options`` as the native client takes them (booleans as ``true``/``false``)."""
        return [(str(k), str(v).lower() if isinstance(v, bool) else str(v)) for k, v in self.storage_options.items()]

    def save_ckpt(self, ds):
        """
        Save dataset to checkpoint directory and dump processed ops list.
        Alias for save_checkpoint for backward compatibility.

        :param ds: input dataset to save
        """
        return self._save(ds, "save_ckpt")

    def save_checkpoint(self, ds, **kwargs):  # type: ignore[override]  # the reference's signature
        """
        Save dataset to checkpoint directory and dump processed ops list.

        The rows and the op record are committed together, atomically: a crash
        at any point leaves the previous checkpoint or this one, never a mix.
        An empty dataset is saved as an empty checkpoint (its schema kept).

        :param ds: a ``datasets.Dataset`` / ``NestedDataset`` (indices mapping
            honoured), ``pyarrow.Table``, ``pyarrow.RecordBatchReader``, or any
            object exposing ``__arrow_c_stream__``
        :param kwargs: Additional arguments (not used, kept for interface compatibility)
        :return: Path to checkpoint directory
        """
        return self._save(ds, "save_checkpoint")

    def _save(self, ds, method: str) -> str:
        if self.background:
            if not (_lifecycle.exit_started() or _lifecycle.in_worker_process()):
                return self._save_in_background(ds, method)
            # No exit hook would wait for a background writer: exit began (a
            # daemon thread saving), or this process may end by os._exit (a
            # forked child, a multiprocessing worker). Save here instead.
            self.close()
        with in_flight():  # pyarrow and native calls: exit waits for them
            rows, shard_files = self._save_now(ds, method)
        logger.debug(f"Saved checkpoint of {rows} rows in {len(shard_files)} shard(s) to {self.ckpt_ds_dir}")
        if self.on_commit is not None:
            self.on_commit(self.ckpt_ds_dir, len(self.op_record))
        return self.ckpt_ds_dir

    def _save_now(self, ds, method: str) -> tuple[int, list]:
        source = _describe_source(ds, f"{type(self).__name__}.{method}()")
        op_record = json.dumps(self.op_record).encode()  # fails before anything is written
        make_ckpt_dir(self.ckpt_dir)
        writer = _native.CheckpointWriter(
            self.ckpt_dir,
            level=self.zstd_level,
            threads=max(1, int(self.num_proc or 1)),
            chunk_bytes=ckpt_sources.CHUNK_BYTES,
            max_shard_bytes=ckpt_sources.MAX_SHARD_BYTES,
            holder=self._lock_holder(),
            storage_options=self._storage_options(),
        )
        try:
            rows = _write_rows(writer, source, self.num_proc)
            shard_files = writer.shard_files
            writer.add_file(_STATE_FILE, source.state_json(shard_files))
            writer.add_file(_INFO_FILE, source.info_json())
            writer.add_file(_OP_RECORD_FILE, op_record)
            writer.commit(source.kind)
        finally:
            writer.abort()  # no-op after a commit; removes the staging dir otherwise
        self._expected_record = json.loads(op_record)
        return rows, shard_files

    def load_ckpt(self):
        """
        Load dataset from a checkpoint file.
        Alias for load_checkpoint for backward compatibility.

        :return: a dataset stored in checkpoint file.
        """
        return self.load_checkpoint()

    def load_checkpoint(self, **kwargs):
        """
        Load dataset from a checkpoint file.

        Returns the kind that was saved: ``NestedDataset`` (when Data-Juicer is
        importable), ``datasets.Dataset``, or ``pyarrow.Table``. A checkpoint
        written by the original Data-Juicer loads through ``datasets``.

        :param kwargs: Additional arguments (not used, kept for interface compatibility)
        :return: a dataset stored in checkpoint file.
        """
        self.wait()  # a background save in flight is the newest checkpoint
        with in_flight():  # pyarrow and native calls: exit waits for them
            return self._load_now()

    def _load_now(self):
        if self.bucket is not None:
            return self._load_from_bucket()
        try:
            loaded = _native.read_checkpoint(self.ckpt_ds_dir, verify=self.verify_on_load)
            if loaded is not None:
                self._check_record(_record_of(loaded.file(_OP_RECORD_FILE)))
        except CheckpointCorruptError as damage:
            if not _replaced_by_another_writer(self.ckpt_ds_dir):
                raise
            logger.warning(
                f"{self.ckpt_ds_dir} was saved again by another writer (e.g. the original Data-Juicer) after "
                f"data-juicer-accel saved it: its {_STATE_FILE} is not the one committed with the manifest "
                f"({damage}); loading it through datasets."
            )
            loaded = None
        if loaded is None:
            dataset = _load_foreign_checkpoint(self.ckpt_ds_dir)
            # Another writer saves the rows first, then the record: read after.
            self._check_record(self._read_op_record() if self._expected_record is not None else None)
            return dataset
        return self._dataset_of(loaded)

    def _load_from_bucket(self):
        loaded = _native.read_committed(
            self.ckpt_dir, verify=self.verify_on_load, storage_options=self._storage_options()
        )
        if loaded is None:
            raise FileNotFoundError(errno.ENOENT, "no checkpoint was published in this bucket prefix", self.bucket)
        self._check_record(_record_of(loaded.file(_OP_RECORD_FILE)))
        return self._dataset_of(loaded)

    def _dataset_of(self, loaded):
        """The dataset a verified native load holds, of the kind that was saved."""
        kind = json.loads(loaded.manifest)["kind"]
        if kind not in _KINDS:
            manifest_path = os.path.join(self.ckpt_ds_dir, _native.MANIFEST_FILE)
            raise CheckpointCorruptError(f"corrupted checkpoint file {manifest_path}: unknown kind {kind!r}")
        table = pa.RecordBatchReader.from_stream(loaded).read_all()
        if kind == "arrow":
            return table
        return _to_hf_dataset(table, loaded, self.ckpt_ds_dir, nested=(kind == "nested"))

    def _check_record(self, found: list | None) -> None:
        """Refuses rows that come with another op record than the one the
        skip decision (or this manager's last save) saw."""
        check_record(self._expected_record, found, self.ckpt_ds_dir, self._lock_holder())

    # ------------------------------------------------------------------
    # Background saves (``background=True``).
    # ------------------------------------------------------------------

    def wait(self):
        """Block until every background save requested so far is committed.

        Raises the failure of a background save not yet reported (it is
        logged too). Does nothing for a foreground manager. A Ctrl-C while
        waiting abandons the saves not committed yet (the previous checkpoint
        stays) and raises ``KeyboardInterrupt``.
        """
        if self._background_saves is not None:
            self._background_saves.wait()

    def close(self):
        """``wait()``, then stop the background writer thread. A later save
        starts a new one."""
        saves, self._background_saves = self._background_saves, None
        if saves is not None:
            saves.close()

    def _save_in_background(self, ds, method: str):
        """Snapshot ``ds`` and the op record, queue the save, return."""
        with in_flight():  # pyarrow and native calls: exit waits for them
            return self._queue_save(ds, method)

    def _queue_save(self, ds, method: str):
        source = _describe_source(ds, f"{type(self).__name__}.{method}()")
        op_record = json.dumps(self.op_record).encode()  # fails before anything is queued
        make_ckpt_dir(self.ckpt_dir)
        queue_save(self, source, op_record)
        return self.ckpt_ds_dir
