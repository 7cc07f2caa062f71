"""What ``CheckpointManager`` and ``RayCheckpointManager`` share: the
reference's ``CheckpointManagerBase`` and ``CheckpointStrategy``
(``data_juicer.utils.ckpt_utils``, py-data-juicer 1.6.1), and the zstd level.
Both managers import from here; ``ckpt_utils`` re-exports everything."""

from __future__ import annotations

import errno
import os
import sys
from abc import ABC, abstractmethod
from enum import Enum
from typing import Any

__all__ = ["CheckpointManagerBase", "CheckpointStrategy", "DEFAULT_ZSTD_LEVEL", "bucket_uri"]

#: zstd level of the shards. Level 1 saves as fast as level -1 and compresses
#: Data-Juicer-shaped text about 3x (the README's benchmark); level 3 costs a
#: third of the speed for 13 % smaller files (docs/design.md, section 8).
DEFAULT_ZSTD_LEVEL = 1


def bucket_uri(ckpt_dir: str) -> str | None:
    """``s3://bucket/prefix`` when ``ckpt_dir`` names a bucket, None for a
    local path. Any other URI (``gs://``, ``file://``, ...) raises
    ``ValueError``: ``os.makedirs("gs://bkt/ck")`` would quietly create
    ``./gs:/bkt/ck`` on the local disk. Credentials written into a URI are
    refused too, and never shown."""
    from data_juicer_accel import _native

    return _native.bucket_uri(os.fspath(ckpt_dir))


def refuse_uri(ckpt_dir: str, who: str) -> None:
    """Raises ``ValueError`` for a URI given to ``who``, which keeps
    checkpoints on a local or mounted filesystem only."""
    uri = bucket_uri(ckpt_dir)
    if uri is not None:
        raise ValueError(
            f"checkpoint directory {uri!r} is a URI (s3://), and {who} keeps checkpoints on a local or mounted "
            "filesystem only: give a directory path (for example a mount of the bucket)"
        )


def make_ckpt_dir(ckpt_dir: str) -> None:
    """Creates ``ckpt_dir``; a path that exists but is no directory is named in
    a ``NotADirectoryError`` (``os.makedirs`` would say ``FileExistsError``),
    and a URI other than ``s3://`` in a ``ValueError`` (see ``bucket_uri``).
    A bucket needs nothing made."""
    if bucket_uri(ckpt_dir) is not None:
        return
    if os.path.exists(ckpt_dir) and not os.path.isdir(ckpt_dir):
        raise NotADirectoryError(errno.ENOTDIR, "the checkpoint directory is not a directory", ckpt_dir)
    os.makedirs(ckpt_dir, exist_ok=True)


_PACKAGE_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _caller_outside_package() -> str:
    """``file:line`` of the innermost caller outside data-juicer-accel
    (e.g. Data-Juicer's executor creating the manager)."""
    frame = sys._getframe(1)
    while frame.f_back is not None and os.path.abspath(frame.f_code.co_filename).startswith(_PACKAGE_DIR + os.sep):
        frame = frame.f_back
    return f"{frame.f_code.co_filename}:{frame.f_lineno}"


class CheckpointManagerBase(ABC):
    """
    Base class for checkpoint managers.

    Provides common functionality for managing checkpoint directories and
    defines the interface that checkpoint managers should implement.
    """

    def __init__(self, ckpt_dir: str):
        """
        Initialize base checkpoint manager.

        :param ckpt_dir: Directory to save and load checkpoints
        """
        self.ckpt_dir = ckpt_dir
        self._created_at = _caller_outside_package()
        # Ensure checkpoint directory exists
        make_ckpt_dir(self.ckpt_dir)

    def _lock_holder(self) -> str:
        """How a save of this manager is named to another saver of this
        process that finds the directory locked."""
        created_at = getattr(self, "_created_at", "an unknown place")  # a subclass may skip our __init__
        return f"{type(self).__name__}({self.ckpt_dir!r}) at {id(self):#x}, created at {created_at}"

    @abstractmethod
    def save_checkpoint(self, dataset: Any, **kwargs) -> str:
        """
        Save a dataset checkpoint.

        :param dataset: Dataset to save
        :param kwargs: Additional arguments specific to the implementation
        :return: Path to saved checkpoint
        """

    @abstractmethod
    def load_checkpoint(self, **kwargs) -> Any | None:
        """
        Load a dataset checkpoint.

        :param kwargs: Arguments specific to the implementation (e.g., op_idx, partition_id)
        :return: Loaded dataset or None if checkpoint doesn't exist
        """

    def checkpoint_exists(self, checkpoint_path: str) -> bool:
        """
        Check if a checkpoint file/directory exists.

        :param checkpoint_path: Path to checkpoint
        :return: True if checkpoint exists, False otherwise
        """
        return os.path.exists(checkpoint_path)


class CheckpointStrategy(Enum):
    """Checkpoint strategies for controlling when to create checkpoints."""

    EVERY_OP = "every_op"  # Checkpoint after every operation
    EVERY_N_OPS = "every_n_ops"  # Checkpoint after every N operations
    MANUAL = "manual"  # Checkpoint only after specified operations
    DISABLED = "disabled"  # Disable checkpointing entirely
