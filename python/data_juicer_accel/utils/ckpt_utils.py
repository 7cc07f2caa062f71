"""Drop-in replacement for ``data_juicer.utils.ckpt_utils`` (py-data-juicer 1.6.1).

``CheckpointManager`` keeps the reference's constructor, attributes, methods,
decisions and log messages. What changes is underneath: the dataset is written
as zstd-compressed Arrow IPC stream shards by a Rust core, in parallel, with a
checksummed manifest, and committed atomically. ``latest/`` stays loadable by
``datasets.load_from_disk`` (hence by the original Data-Juicer), and a
``latest/`` written by the original Data-Juicer still loads here.
"""

from __future__ import annotations

import atexit
import errno
import json
import math
import os
import stat
import sys
import threading
import uuid
import weakref
from collections.abc import Callable
from typing import Any

import pyarrow as pa
from loguru import logger

from data_juicer_accel import _native
from data_juicer_accel._exit import in_flight, say_at_exit
from data_juicer_accel._exit import in_worker_process as _in_worker_process
from data_juicer_accel.errors import CheckpointChangedError, CheckpointCorruptError
from data_juicer_accel.utils.ckpt_base import (
    DEFAULT_ZSTD_LEVEL,
    CheckpointManagerBase,
    CheckpointStrategy,
    make_ckpt_dir,
)
from data_juicer_accel.utils.ray_ckpt import RayCheckpointManager  # Ray itself is imported lazily

__all__ = [
    "CheckpointManagerBase",
    "CheckpointManager",
    "CheckpointStrategy",
    "DEFAULT_ZSTD_LEVEL",
    "RayCheckpointManager",
]

#: Same default as ``datasets`` (``config.MAX_SHARD_SIZE``); set in the Rust writer.
MAX_SHARD_BYTES = _native.DEFAULT_MAX_SHARD_BYTES
#: Uncompressed size of one compression unit handed to a worker thread.
CHUNK_BYTES = _native.DEFAULT_CHUNK_BYTES

_STATE_FILE = "state.json"
_INFO_FILE = "dataset_info.json"
_OP_RECORD_FILE = "ckpt_op.json"
_NESTED_MODULE = "data_juicer.core.data.dj_dataset"
#: What a checkpoint can hold, as recorded in its manifest.
_KINDS = ("arrow", "hf", "nested")
#: Metadata files (state.json, the op record, ...) are a few KB; read no more.
_MAX_METADATA_BYTES = 64 << 20
_DATASETS_EXTRA = "pip install 'data-juicer-accel[datasets]'"


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
        """
        super().__init__(ckpt_dir)
        self.ckpt_ds_dir = os.path.join(self.ckpt_dir, "latest")
        self.ckpt_op_record = os.path.join(self.ckpt_dir, _OP_RECORD_FILE)
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
        self.op_record = self._read_op_record()
        if self.op_record is None:
            self.op_record = []
            return False

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
        """The op record, or None (with a warning) when it cannot be used.

        The reference raises on a damaged ``ckpt_op.json``; a damaged record
        only means the checkpoint cannot be trusted, so start afresh.
        """
        try:
            record = json.loads(_read_metadata_file(self.ckpt_op_record, root=self.ckpt_dir))
        except (OSError, ValueError, RecursionError) as e:
            logger.warning(
                f"Cannot read checkpoint op record {self.ckpt_op_record} ({e}). "
                f"All ops will be processed from the beginning."
            )
            return None
        if not isinstance(record, list) or not all(isinstance(op, dict) and op for op in record):
            logger.warning(
                f"Checkpoint op record {self.ckpt_op_record} is not a list of op configs. "
                f"All ops will be processed from the beginning."
            )
            return None
        return record

    def save_ckpt(self, ds):
        """
        Save dataset to checkpoint directory and dump processed ops list.
        Alias for save_checkpoint for backward compatibility.

        :param ds: input dataset to save
        """
        return self._save(ds, "save_ckpt")

    def save_checkpoint(self, ds, **kwargs):
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
            if not (_exit_hook_started or _in_worker_process()):
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
            chunk_bytes=CHUNK_BYTES,
            max_shard_bytes=MAX_SHARD_BYTES,
            holder=self._lock_holder(),
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
        kind = json.loads(loaded.manifest)["kind"]
        if kind not in _KINDS:
            manifest_path = os.path.join(self.ckpt_ds_dir, _native.MANIFEST_FILE)
            raise CheckpointCorruptError(f"corrupted checkpoint file {manifest_path}: unknown kind {kind!r}")
        table = pa.RecordBatchReader.from_stream(loaded).read_all()
        if kind == "arrow":
            return table
        return _to_hf_dataset(table, loaded, self.ckpt_ds_dir, nested=(kind == "nested"))

    def _check_record(self, found: list | None) -> None:
        """The rows about to be returned come with the op record ``found``:
        it must be the one the skip decision (or this manager's last save)
        saw, or the caller would run ops twice, or skip some, on them."""
        expected = self._expected_record
        if expected is None or found == expected:
            return
        raise CheckpointChangedError(
            f"{self.ckpt_ds_dir} was replaced by another save: {self._lock_holder()} expects the rows after the op "
            f"record {_describe_record(expected, found)} (the one its skip decision used, or its last save wrote), "
            f"but the checkpoint there now holds the rows after the op record {_describe_record(found, expected)}. "
            "Loading them would run ops twice or skip some, so nothing was loaded; create the CheckpointManager "
            "(or the executor) again to decide from the checkpoint there now."
        )

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
        if self._background_saves is None or not self._background_saves.usable():
            self._background_saves = _BackgroundSaves(self)
        data, indices = source.snapshot_parts()
        errors = _StreamErrors()
        if not source.immutable and not isinstance(data, pa.Table):  # a table cannot fail; streams can
            data = errors.watch(data)
        try:
            self._background_saves.submit(
                data,
                indices=indices,
                immutable=source.immutable,
                **self._submit_options(source, op_record),
            )
        except BaseException:
            if errors.error is not None:
                raise errors.error  # noqa: B904 - the native error stays as its __context__
            raise
        return self.ckpt_ds_dir

    def _submit_options(self, source, op_record: bytes) -> dict:
        return dict(
            kind=source.kind,
            files=[(_INFO_FILE, source.info_json()), (_OP_RECORD_FILE, op_record)],
            state_template=_state_template(source.state_json([])),
            level=self.zstd_level,
            threads=max(1, int(self.num_proc or 1)),
            chunk_bytes=CHUNK_BYTES,
            max_shard_bytes=MAX_SHARD_BYTES,
            **source.background_sizing(self.num_proc),
            ops_done=len(self.op_record),
            record=json.loads(op_record),
            holder=self._lock_holder(),
        )


# --------------------------------------------------------------------------
# What a save is given: Arrow data plus what datasets needs to load it back.
# --------------------------------------------------------------------------


_NATIVELY_SIZED_LEAVES = (
    pa.types.is_null,
    pa.types.is_boolean,
    pa.types.is_integer,
    pa.types.is_floating,
    pa.types.is_decimal,
    pa.types.is_date,
    pa.types.is_time,
    pa.types.is_timestamp,
    pa.types.is_duration,
    pa.types.is_string,
    pa.types.is_large_string,
    pa.types.is_binary,
    pa.types.is_large_binary,
    pa.types.is_fixed_size_binary,
)


def _sized_natively(data_type: pa.DataType) -> bool:
    """Whether the native writer counts the bytes of ``data_type`` exactly
    as ``Table.nbytes`` does (so it shards exactly like a foreground save)."""
    if pa.types.is_list(data_type) or pa.types.is_large_list(data_type):
        return _sized_natively(data_type.value_type)
    if pa.types.is_struct(data_type):
        return all(_sized_natively(field.type) for field in data_type)
    return any(is_type(data_type) for is_type in _NATIVELY_SIZED_LEAVES)


def _background_sizing(table: pa.Table, rows_per_shard, num_proc) -> dict:
    """How a background save sizes its shards: in the writer thread when it
    can count the bytes as pyarrow does, else here. The caller touches no
    chunk: after a pause, reaching each of the hundreds of chunks of a large
    table again costs milliseconds. (The writer counts the batches the C
    stream yields; where columns are chunked differently these are cut
    across chunks, and the count may differ from ``Table.nbytes`` by a few
    bitmap bytes, which can change the number of shards only for a table
    within those bytes of a multiple of the shard size.)"""
    if all(_sized_natively(field.type) for field in table.schema):
        return {"size_like_datasets": max(1, int(num_proc or 1))}
    return {"rows_per_shard": rows_per_shard(num_proc)}


def _num_shards(nbytes: int, num_rows: int, num_proc) -> int:
    """The number of shards ``datasets.save_to_disk`` would choose."""
    num_shards = max(int(nbytes / MAX_SHARD_BYTES) + 1, int(num_proc or 1))
    return max(1, min(num_rows, num_shards))


class _ArrowSource:
    """A pyarrow Table, RecordBatchReader or ``__arrow_c_stream__`` object."""

    kind = "arrow"
    #: Its memory may change after a save returns (numpy arrays, mapped
    #: files) and its stream may call back into Python: a background save
    #: reads it at once and copies what is not pyarrow's own memory.
    immutable = False

    def __init__(self, data: Any):
        self.data = data
        self.table = data if isinstance(data, pa.Table) else None

    def stream(self) -> Any:
        return self.data

    def snapshot_parts(self) -> tuple[Any, Any]:
        """(data, indices) for a background save: no indices mapping here."""
        return self.data, None

    def rows_per_shard(self, num_proc) -> int | None:
        if self.table is None or self.table.num_rows == 0:
            return None  # a stream of unknown length: shards close by size
        shards = _num_shards(self.table.nbytes, self.table.num_rows, num_proc)
        return math.ceil(self.table.num_rows / shards)

    def background_sizing(self, num_proc) -> dict:
        if self.table is None:
            return {}  # a stream of unknown length: shards close by size
        return _background_sizing(self.table, self.rows_per_shard, num_proc)

    def state_json(self, shard_files: list) -> bytes:
        state: dict[str, Any] = {
            "_data_files": [{"filename": name} for name in shard_files],
            "_fingerprint": uuid.uuid4().hex[:16],
            "_format_columns": None,
            "_format_kwargs": {},
            "_format_type": None,
            "_output_all_columns": False,
            "_split": None,
        }
        return json.dumps(state, indent=2, sort_keys=True).encode()

    def info_json(self) -> bytes:
        # No features: datasets.load_from_disk infers them from the Arrow
        # schema, and importing datasets here would cost half a second.
        return b"{}"


class _HFSource:
    """A ``datasets.Dataset`` (or Data-Juicer ``NestedDataset``)."""

    #: datasets never writes a table's buffers, nor a cache file in place
    #: (it writes a new file and renames it): a background save keeps
    #: references and reads the table in its own thread.
    immutable = True

    def __init__(self, ds: Any, nested: bool):
        self.ds = ds
        self.kind = "nested" if nested else "hf"
        self.table = ds.data.table
        self.num_rows = len(ds)

    @property
    def nbytes(self) -> int:
        """Bytes of the visible rows, as datasets estimates them."""
        return self.table.nbytes * self.num_rows // max(self.table.num_rows, 1)

    def stream(self) -> Any:
        indices = getattr(self.ds, "_indices", None)
        if indices is None:
            return self.table  # zero-copy: Rust reads the table's own buffers
        return _gathered_rows(self.table, indices.column(0))

    def snapshot_parts(self) -> tuple[Any, Any]:
        """(table, indices) for a background save; the writer thread gathers
        the rows the mapping selects, so the caller copies nothing."""
        indices = getattr(self.ds, "_indices", None)
        if indices is None:
            return self.table, None
        return self.table, pa.table({"indices": indices.column(0)})

    def rows_per_shard(self, num_proc) -> int | None:
        if self.num_rows == 0:
            return None
        return math.ceil(self.num_rows / _num_shards(self.nbytes, self.num_rows, num_proc))

    def background_sizing(self, num_proc) -> dict:
        return _background_sizing(self.table, self.rows_per_shard, num_proc)

    def state_json(self, shard_files: list) -> bytes:
        ds = self.ds
        state = {
            "_fingerprint": ds._fingerprint,
            "_format_columns": ds._format_columns,
            "_format_kwargs": ds._format_kwargs,
            "_format_type": ds._format_type,
            "_output_all_columns": ds._output_all_columns,
            "_split": str(ds.split) if ds.split is not None else ds.split,
            "_data_files": [{"filename": name} for name in shard_files],
        }
        return json.dumps(state, indent=2, sort_keys=True).encode()

    def info_json(self) -> bytes:
        from datasets.utils.py_utils import asdict

        info = asdict(self.ds._info)
        return json.dumps({k: info[k] for k in sorted(info)}, indent=2).encode()


def _gathered_rows(table: pa.Table, indices: pa.ChunkedArray) -> pa.RecordBatchReader:
    """The rows an indices mapping makes visible, gathered a chunk at a time
    so memory stays bounded (the gather itself is the one copy a mapping
    needs; ``save_to_disk`` makes the same one)."""
    row_bytes = max(1, table.nbytes // max(table.num_rows, 1))
    step = max(1, CHUNK_BYTES * 4 // row_bytes)

    def batches():
        for start in range(0, len(indices), step):
            yield from table.take(indices.slice(start, step)).to_batches()

    return pa.RecordBatchReader.from_batches(table.schema, batches())


def _nested_dataset_class():
    """Data-Juicer's NestedDataset when Data-Juicer is importable, else None."""
    module = sys.modules.get(_NESTED_MODULE)
    if module is None:
        try:
            from data_juicer.core.data import dj_dataset as module
        except Exception:  # noqa: BLE001 - not installed, or broken: plain datasets then
            return None
    return getattr(module, "NestedDataset", None)


def _describe_source(ds: Any, method: str):
    datasets_module = sys.modules.get("datasets")
    if datasets_module is not None and isinstance(ds, datasets_module.Dataset):
        # Only a NestedDataset's own module can have made one: no import needed.
        nested_module = sys.modules.get(_NESTED_MODULE)
        nested = nested_module is not None and isinstance(ds, nested_module.NestedDataset)
        return _HFSource(ds, nested)
    if isinstance(ds, (pa.Table, pa.RecordBatchReader)) or hasattr(ds, "__arrow_c_stream__"):
        return _ArrowSource(ds)
    raise TypeError(
        f"{method} expects a datasets.Dataset / NestedDataset, "
        "a pyarrow.Table, a pyarrow.RecordBatchReader, or an object with __arrow_c_stream__ "
        f"(polars, duckdb, ...); got {type(ds).__module__}.{type(ds).__qualname__}"
    )


# --------------------------------------------------------------------------
# Loading back.
# --------------------------------------------------------------------------


def _record_of(text: bytes | None) -> list | None:
    """A verified ``ckpt_op.json`` as a list, or None when there is none."""
    try:
        record = json.loads(text) if text is not None else None
    except (ValueError, RecursionError):
        return None
    return record if isinstance(record, list) else None


def _describe_record(record: list | None, other: list | None) -> str:
    """Op names of ``record`` (its whole JSON when ``other`` has the same names)."""
    if record is None:
        return "(none: no ckpt_op.json)"
    names = [next(iter(op), "?") if isinstance(op, dict) else "?" for op in record]
    other_names = [next(iter(op), "?") if isinstance(op, dict) else "?" for op in other or []]
    if names == other_names:
        return json.dumps(record)[:2000]
    return f"{names} ({len(names)} ops)"


def _import_datasets(why: str):
    try:
        import datasets
    except ImportError as e:
        raise ImportError(f"{why} needs the `datasets` package: {_DATASETS_EXTRA}") from e
    return datasets


def _to_hf_dataset(table: pa.Table, loaded: Any, path: str, nested: bool):
    """Rebuilds the Dataset as ``datasets.Dataset.load_from_disk`` would."""
    _import_datasets(f"loading the datasets.Dataset checkpoint in {path}")
    from datasets import Dataset, DatasetInfo, Split
    from datasets.table import InMemoryTable

    state = _parse_metadata(loaded, path, _STATE_FILE, _state_from_dict)
    info = _parse_metadata(loaded, path, _INFO_FILE, DatasetInfo.from_dict)
    split = Split(state["_split"]) if state["_split"] is not None else None
    try:
        ds = Dataset(arrow_table=InMemoryTable(table), info=info, split=split, fingerprint=state["_fingerprint"])
        ds = ds.with_format(
            type=state["_format_type"],
            format_kwargs=state["_format_kwargs"],
            columns=state["_format_columns"],
            output_all_columns=state["_output_all_columns"],
        )
    except (ValueError, KeyError, TypeError, AttributeError) as e:
        file = os.path.join(path, _STATE_FILE)
        raise CheckpointCorruptError(f"corrupted checkpoint file {file}: {type(e).__name__}: {e}") from e
    nested_cls = _nested_dataset_class() if nested else None
    return nested_cls(ds) if nested_cls is not None else ds


_STATE_KEYS = ("_fingerprint", "_format_columns", "_format_kwargs", "_format_type", "_output_all_columns", "_split")


def _state_from_dict(state: Any) -> dict:
    if not isinstance(state, dict):
        raise TypeError(f"expected a JSON object, got {type(state).__name__}")
    missing = [key for key in _STATE_KEYS if key not in state]
    if missing:
        raise KeyError(f"missing keys {missing}")
    if not isinstance(state["_format_kwargs"], dict):
        raise TypeError("_format_kwargs is not an object")
    if state["_split"] is not None and not isinstance(state["_split"], str):
        raise TypeError("_split is not a string")
    return state


def _parse_metadata(loaded: Any, path: str, name: str, build):
    """``build(json)`` of a verified metadata file; whatever is wrong with
    it is ``CheckpointCorruptError`` naming the file."""
    file = os.path.join(path, name)
    text = loaded.file(name)
    if text is None:
        raise CheckpointCorruptError(f"corrupted checkpoint file {file}: not listed in the manifest")
    try:
        return build(json.loads(text))
    except (ValueError, KeyError, TypeError, AttributeError, RecursionError) as e:
        raise CheckpointCorruptError(f"corrupted checkpoint file {file}: {type(e).__name__}: {e}") from e


def _inside(path: str, root: str) -> bool:
    real, real_root = os.path.realpath(path), os.path.realpath(root)
    return os.path.commonpath([real, real_root]) == real_root and real != real_root


def _read_metadata_file(path: str, root: str) -> bytes:
    """A small checkpoint file, read only if it is a regular file inside
    ``root`` (a symlink may lead there; nothing else), at most 64 MiB."""
    if not _inside(path, root):
        raise OSError(errno.EPERM, f"leads outside the checkpoint directory {root}", path)
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    with os.fdopen(fd, "rb") as f:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise OSError(errno.EINVAL, "not a regular file", path)
        data = f.read(_MAX_METADATA_BYTES + 1)
    if len(data) > _MAX_METADATA_BYTES:
        raise OSError(errno.EFBIG, "larger than 64 MiB", path)
    return data


def _replaced_by_another_writer(path: str) -> bool:
    """Whether another writer (``datasets.save_to_disk``, i.e. the original
    Data-Juicer) saved into our ``latest/`` after we committed it.

    Such a save writes a new, well-formed ``state.json`` and rewrites every
    data file it lists. Anything short of that (a damaged ``state.json``, a
    damaged shard beside the committed ``state.json``) is damage, not another
    writer. Only content counts: a copy made in name order gives the
    manifest an older mtime than the rest.
    """
    try:
        manifest = json.loads(_native.read_manifest(path) or "null")
        committed = {entry["file"]: entry for entry in manifest["files"]}[_STATE_FILE]
        current = _read_metadata_file(os.path.join(path, _STATE_FILE), root=path)
        if _native.xxh3_64_hex(current) == committed["xxh3_64"]:
            return False
        state = _state_from_dict(json.loads(current))
        listed = [entry["filename"] for entry in state["_data_files"]]
        our_sizes = {entry["file"]: entry["bytes"] for entry in manifest["shards"]}
        # A listed file still the size we wrote it is ours, not rewritten.
        kept = [name for name in listed if our_sizes.get(name) == os.lstat(os.path.join(path, name)).st_size]
    except (OSError, ValueError, KeyError, TypeError, RecursionError):
        return False
    return bool(listed) and not kept


def _check_foreign_files(path: str) -> list[str]:
    """Files ``datasets.load_from_disk`` will open must be regular files in
    ``path``; returns the names of its data files."""
    state_path = os.path.join(path, _STATE_FILE)
    try:
        state = json.loads(_read_metadata_file(state_path, root=path))
        names = [entry["filename"] for entry in state["_data_files"]]
    except (OSError, ValueError, KeyError, TypeError, RecursionError) as e:
        raise CheckpointCorruptError(f"corrupted checkpoint file {state_path}: {type(e).__name__}: {e}") from e
    for name in [_INFO_FILE, *names]:
        file = os.path.join(path, name) if isinstance(name, str) else repr(name)
        plain = isinstance(name, str) and name not in ("", ".", "..") and os.sep not in name and "\0" not in name
        st = os.lstat(file) if plain and os.path.lexists(file) else None
        if st is None or not stat.S_ISREG(st.st_mode):
            raise CheckpointCorruptError(
                f"corrupted checkpoint file {state_path}: it lists {file}, which is not a regular file inside {path}"
            )
    return names


def _refuse_our_shards(path: str, names: list[str]) -> None:
    """Shards this package wrote are loaded only with their manifest: through
    ``datasets`` nothing checks them, and a flipped byte loads wrong rows.
    ``datasets`` never compresses the Arrow IPC it writes; we always do."""
    ours = _native.compressed_shard(path, names)
    if ours is None:
        return
    name, codec = ours
    manifest = os.path.join(path, _native.MANIFEST_FILE)
    why = (
        f"its manifest {manifest} is missing"
        if not os.path.lexists(manifest)
        else f"its {_STATE_FILE} is not the one committed with its manifest {manifest}"
    )
    raise CheckpointCorruptError(
        f"corrupted checkpoint {path}: data-juicer-accel wrote it (its shard {os.path.join(path, name)} is "
        f"{codec}-compressed Arrow IPC, which datasets never writes), but {why}, so its rows cannot be verified "
        f"and it is not loaded. Restore {_native.MANIFEST_FILE}, or remove {path} to process from the beginning."
    )


def _load_foreign_checkpoint(path: str):
    """A ``latest/`` written by the original Data-Juicer (or saved over by it)."""
    if not os.path.isdir(path):
        raise FileNotFoundError(2, "No checkpoint found", path)
    if os.path.islink(path) and not _inside(path, os.path.dirname(path) or "."):
        raise CheckpointCorruptError(f"{path} is a symbolic link leading outside its checkpoint directory")
    _refuse_our_shards(path, _check_foreign_files(path))
    nested_cls = _nested_dataset_class()
    if nested_cls is not None:
        return nested_cls.load_from_disk(path)
    datasets = _import_datasets(f"{path} holds a checkpoint written by the original Data-Juicer; loading it")
    return datasets.load_from_disk(path)


# --------------------------------------------------------------------------
# Saving: errors of the caller's stream reach the caller as they were.
# --------------------------------------------------------------------------


class _StreamErrors:
    """Passes a stream's batches through, keeping any exception it raises,
    so that it reaches the caller with its own type (the C stream interface
    only carries a message)."""

    def __init__(self) -> None:
        self.error: BaseException | None = None

    def watch(self, data: Any) -> pa.RecordBatchReader:
        reader = data if isinstance(data, pa.RecordBatchReader) else pa.RecordBatchReader.from_stream(data)

        def batches():
            try:
                yield from reader
            except BaseException as e:  # noqa: BLE001 - re-raised in the caller's thread
                self.error = e
                raise

        return pa.RecordBatchReader.from_batches(reader.schema, batches())


def _write_rows(writer: Any, source: Any, num_proc) -> int:
    data = source.stream()
    errors = _StreamErrors()
    if not isinstance(data, pa.Table):  # a table cannot fail; streams can
        data = errors.watch(data)
    try:
        return writer.write_data(data, rows_per_shard=source.rows_per_shard(num_proc))
    except BaseException:
        if errors.error is not None:
            raise errors.error  # noqa: B904 - the native error stays as its __context__
        raise


# --------------------------------------------------------------------------
# Background saves.
# --------------------------------------------------------------------------


def _state_template(state_json: bytes) -> bytes:
    """``state.json`` without its shard list; the native writer adds it."""
    state = json.loads(state_json)
    state.pop("_data_files", None)
    return json.dumps(state).encode()


class _BackgroundSaves:
    """The native writer thread of one ``CheckpointManager(background=True)``.

    Tracks which submitted saves are committed, to call the manager's
    ``on_commit`` for them as soon as they are: from a watcher thread, or
    from the caller's thread when it waits (in commit order, once each; a
    lock serialises the two). Every instance alive at
    interpreter exit is closed by an ``atexit`` hook, so the process exits
    only once the last requested checkpoint is durable; a save that failed
    unseen, or that a Ctrl-C abandons there, is lost: said on stderr, and
    the process exits non-zero (see ``_close_background_saves_at_exit``).
    In a forked child the writer thread does not exist: the child's copy is
    never waited on nor freed (see ``_forget_in_child``).
    """

    def __init__(self, manager: CheckpointManager):
        self.manager = manager
        self.ckpt_dir = manager.ckpt_dir
        self.writer = _native.BackgroundCheckpointWriter()
        self.pid = os.getpid()
        self.ops_done_by_seq: dict[int, int] = {}
        #: The op record of each save not yet committed; a commit makes it
        #: what the manager's loads expect.
        self.records_by_seq: dict[int, list] = {}
        self.reporting = threading.Lock()
        self.closed = False
        # A daemon thread, joined by close() (hence by the atexit hook) before
        # interpreter finalization, so it is never inside native code then.
        self.watcher = threading.Thread(target=self._watch_commits, name="dja-ckpt-commits", daemon=True)
        try:
            self.watcher.start()
        except RuntimeError as e:  # "can't start new thread": out of memory or threads
            self.closed = True
            self.writer.close()
            raise MemoryError(f"cannot start the checkpoint commit watcher thread for {self.ckpt_dir}: {e}") from e
        _LIVE_BACKGROUND_SAVES.add(self)

    def owned(self) -> bool:
        """Whether the writer thread is this process's (not a forked parent's)."""
        return self.writer is not None and self.pid == os.getpid()

    def usable(self) -> bool:
        """Whether saves may still be queued here."""
        return self.owned() and not self.closed

    def abandoned(self) -> int:
        """Saves abandoned so far (an interrupted wait abandons them)."""
        return self.writer.abandoned if self.owned() else 0

    def abandon(self, timeout: float) -> bool:
        """Gives up the saves not committed yet; whether there was one."""
        return self.owned() and self.writer.abandon(timeout)

    def submit(self, data, *, ops_done: int, record: list, **options) -> None:
        with self.reporting:  # the watcher must not see the commit before its ops_done
            try:
                seq = self.writer.submit(self.ckpt_dir, data, **options)
            except Exception as e:
                self._log_failure(e)
                raise
            self.ops_done_by_seq[seq] = ops_done
            self.records_by_seq[seq] = record
        self._report_commits()

    def wait(self) -> None:
        if not self.owned():
            return
        try:
            self.writer.wait()
        except Exception as e:
            self._log_failure(e)
            raise
        finally:
            self._report_commits()

    def close(self) -> None:
        if not self.owned():
            return
        _LIVE_BACKGROUND_SAVES.discard(self)
        self.closed = True
        try:
            self.writer.close()
        except Exception as e:
            self._log_failure(e)
            raise
        finally:
            if self.watcher is not threading.current_thread():
                self.watcher.join()
            self._report_commits()

    def _watch_commits(self) -> None:
        while not self.closed:
            if self.writer is None:
                return
            if self.writer.wait_for_commit(1.0):
                self._report_commits()

    def _report_commits(self) -> None:
        """``on_commit`` for every save committed since the last report."""
        with self.reporting:
            writer = self.writer
            committed = writer.take_committed() if writer is not None else []
            if not committed:
                return
            callback = self.manager.on_commit
            for seq in committed:
                ops_done = self.ops_done_by_seq.pop(seq, None)
                record = self.records_by_seq.pop(seq, None)
                if record is not None:
                    self.manager._expected_record = record
                if callback is not None and ops_done is not None:
                    try:
                        callback(self.manager.ckpt_ds_dir, ops_done)
                    except Exception as e:  # noqa: BLE001 - a callback must not hide a commit from the others
                        logger.error(f"on_commit callback for {self.manager.ckpt_ds_dir} failed: {e}")
            # Saves are committed in order: one older than a commit was superseded.
            self.ops_done_by_seq = {seq: n for seq, n in self.ops_done_by_seq.items() if seq > committed[-1]}
            self.records_by_seq = {seq: r for seq, r in self.records_by_seq.items() if seq > committed[-1]}

    def _log_failure(self, error: Exception) -> None:
        logger.error(f"Background checkpoint save into {self.ckpt_dir} failed: {error}")


_LIVE_BACKGROUND_SAVES: weakref.WeakSet = weakref.WeakSet()
#: Writers inherited by a forked child: their thread did not survive the
#: fork, so they are kept alive (never joined, never freed) in the child.
_ORPHANED_IN_CHILD: list = []


#: Seconds the exit hook gives an abandoned save to stop and remove its staging directory.
_ABANDON_WAIT_SECONDS = 5.0
#: Set when the exit hook starts: later background saves are made in the caller's thread.
_exit_hook_started = False


def _close_background_saves_at_exit() -> None:
    """Waits for the last save of every background writer. One that failed
    without the program seeing it, or that a Ctrl-C abandons here, is lost:
    that is said on stderr and the process exits non-zero, as after an
    uncaught exception (by SIGINT after a Ctrl-C)."""
    global _exit_hook_started
    _exit_hook_started = True
    remaining = list(_LIVE_BACKGROUND_SAVES)
    while remaining:
        saves = remaining.pop(0)
        # A writer a daemon thread started while this hook ran is closed too.
        remaining += [later for later in _LIVE_BACKGROUND_SAVES if later not in remaining and later is not saves]
        abandoned_before = saves.abandoned()
        try:
            saves.close()
        except KeyboardInterrupt:
            interrupted = [saves] if saves.abandoned() > abandoned_before else []
            _abandon_at_exit(interrupted + [other for other in remaining if other.abandon(_ABANDON_WAIT_SECONDS)])
            return
        except Exception as e:  # noqa: BLE001 - logged by close(); close every other one too
            say_at_exit(
                f"the checkpoint {saves.manager.ckpt_ds_dir} was lost at interpreter exit: its background "
                f"save failed: {e}. The previous checkpoint is kept."
            )
            _native.fail_exit("failed")


def _abandon_at_exit(lost: list) -> None:
    """After a Ctrl-C in the exit hook: names the saves it abandoned; the
    process ends by SIGINT, as on an unhandled KeyboardInterrupt."""
    for saves in lost:
        say_at_exit(
            f"Ctrl-C at interpreter exit: abandoned the background save of the checkpoint "
            f"{saves.manager.ckpt_ds_dir}; it is lost, the previous checkpoint is kept."
        )
    _native.fail_exit("interrupted")


def _forget_in_child() -> None:
    for saves in list(_LIVE_BACKGROUND_SAVES):
        _ORPHANED_IN_CHILD.append(saves.writer)
        saves.writer = None
    _LIVE_BACKGROUND_SAVES.clear()


atexit.register(_close_background_saves_at_exit)
os.register_at_fork(after_in_child=_forget_in_child)
