"""The op record (``ckpt_op.json``): reading it, and refusing rows that come
with another record than the one the skip decision used.

The record lists the ops whose results the rows of ``latest/`` hold. The
manager compares it with the configured process list to decide which ops
to skip (``CheckpointManager.check_ops_to_skip``), and checks it again when
it loads the rows, in case another save replaced them meanwhile.
"""

from __future__ import annotations

import json

from loguru import logger

from data_juicer_accel.errors import CheckpointChangedError
from data_juicer_accel.utils.ckpt_load import _read_metadata_file

_OP_RECORD_FILE = "ckpt_op.json"


class NotAnOpRecord(ValueError):
    """The file is JSON, but not a list of op configs."""


def load_op_record(path: str, root: str) -> list:
    """The op record at ``path`` (a regular file inside ``root``). Raises
    ``NotAnOpRecord``, or ``OSError``/``ValueError``/``RecursionError`` when
    it cannot be read as JSON."""
    record = json.loads(_read_metadata_file(path, root=root))
    if not isinstance(record, list) or not all(isinstance(op, dict) and op for op in record):
        raise NotAnOpRecord(f"{path} is not a list of op configs")
    return record


def read_op_record(path: str, root: str) -> list | None:
    """The op record at ``path``, or None (with a warning) when it cannot be used.

    The reference raises on a damaged ``ckpt_op.json``; a damaged record
    only means the checkpoint cannot be trusted, so start afresh.
    """
    try:
        return load_op_record(path, root)
    except NotAnOpRecord:
        why = f"Checkpoint op record {path} is not a list of op configs."
    except (OSError, ValueError, RecursionError) as e:
        why = f"Cannot read checkpoint op record {path} ({e})."
    logger.warning(f"{why} All ops will be processed from the beginning.")
    return None


def _record_of(text: bytes | None) -> list | None:
    """A verified ``ckpt_op.json`` as a list, or None when there is none."""
    try:
        record = json.loads(text) if text is not None else None
    except (ValueError, RecursionError):
        return None
    return record if isinstance(record, list) else None


def check_record(expected: list | None, found: list | None, ckpt_ds_dir: str, holder: str) -> None:
    """The rows about to be returned come with the op record ``found``:
    it must be the one the skip decision (or the manager's last save)
    saw, ``expected``, or the caller would run ops twice, or skip some, on
    them. ``expected`` None: no decision to keep."""
    if expected is None or found == expected:
        return
    raise CheckpointChangedError(
        f"{ckpt_ds_dir} was replaced by another save: {holder} expects the rows after the op "
        f"record {_describe_record(expected, found)} (the one its skip decision used, or its last save wrote), "
        f"but the checkpoint there now holds the rows after the op record {_describe_record(found, expected)}. "
        "Loading them would run ops twice or skip some, so nothing was loaded; create the CheckpointManager "
        "(or the executor) again to decide from the checkpoint there now."
    )


def _describe_record(record: list | None, other: list | None) -> str:
    """Op names of ``record`` (its whole JSON when ``other`` has the same names)."""
    if record is None:
        return "(none: no ckpt_op.json)"
    names = [next(iter(op), "?") if isinstance(op, dict) else "?" for op in record]
    other_names = [next(iter(op), "?") if isinstance(op, dict) else "?" for op in other or []]
    if names == other_names:
        return json.dumps(record)[:2000]
    return f"{names} ({len(names)} ops)"
