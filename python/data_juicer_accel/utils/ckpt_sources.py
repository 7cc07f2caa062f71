"""What a checkpoint save is given: Arrow data, and what ``datasets`` needs
to load it back (``state.json``, ``dataset_info.json``).

A source wraps what the caller passed to ``save_ckpt`` (a ``datasets.Dataset``
/ ``NestedDataset``, or Arrow data) and says how to stream it to the native
writer, how ``datasets.save_to_disk`` would shard it, and what a background
save may keep by reference. Errors raised by the caller's own stream reach
the caller with their own type.
"""

from __future__ import annotations

import contextlib
import importlib
import json
import math
import sys
import uuid
from collections.abc import Iterator
from typing import Any

import pyarrow as pa

from data_juicer_accel import _native

#: Same default as ``datasets`` (``config.MAX_SHARD_SIZE``); set in the Rust writer.
MAX_SHARD_BYTES = _native.DEFAULT_MAX_SHARD_BYTES
#: Uncompressed size of one compression unit handed to a worker thread.
CHUNK_BYTES = _native.DEFAULT_CHUNK_BYTES

_STATE_FILE = "state.json"
_INFO_FILE = "dataset_info.json"
_NESTED_MODULE = "data_juicer.core.data.dj_dataset"


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
            module = importlib.import_module(_NESTED_MODULE)
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

    @contextlib.contextmanager
    def raised_as_they_were(self) -> Iterator[None]:
        """Raises the stream's own exception in place of the native error
        it caused (which stays its ``__context__``)."""
        try:
            yield
        except BaseException:
            if self.error is not None:
                raise self.error  # noqa: B904 - the native error stays as its __context__
            raise


def _write_rows(writer: Any, source: Any, num_proc) -> int:
    data = source.stream()
    errors = _StreamErrors()
    if not isinstance(data, pa.Table):  # a table cannot fail; streams can
        data = errors.watch(data)
    with errors.raised_as_they_were():
        return writer.write_data(data, rows_per_shard=source.rows_per_shard(num_proc))


def _state_template(state_json: bytes) -> bytes:
    """``state.json`` without its shard list; the native writer adds it."""
    state = json.loads(state_json)
    state.pop("_data_files", None)
    return json.dumps(state).encode()
