"""Reading a checkpoint back where the native reader does not: its small
metadata files, and a ``latest/`` that another writer (the original
Data-Juicer's ``datasets.save_to_disk``) wrote or saved over.

The native reader verifies and decompresses what this package wrote; here
the verified rows become a ``datasets.Dataset`` again, and a foreign
``latest/`` is checked (regular files inside the directory, none of our
compressed shards without their manifest) before ``datasets`` loads it.
"""

from __future__ import annotations

import errno
import json
import os
import stat
from typing import Any

import pyarrow as pa

from data_juicer_accel import _native
from data_juicer_accel.errors import CheckpointCorruptError
from data_juicer_accel.utils.ckpt_sources import _INFO_FILE, _STATE_FILE, _nested_dataset_class

#: Metadata files (state.json, the op record, ...) are a few KB; read no more.
_MAX_METADATA_BYTES = 64 << 20
_DATASETS_EXTRA = "pip install 'data-juicer-accel[datasets]'"


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
