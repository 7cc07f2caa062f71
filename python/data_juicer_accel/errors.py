"""Exceptions raised by data-juicer-accel's checkpoints.

They are plain Python classes defined here (the native module raises these
very classes), so they pickle and cross process boundaries, e.g. from a
``multiprocessing`` worker, with their type intact. Also importable from
``data_juicer_accel`` itself.
"""

from __future__ import annotations

__all__ = ["CheckpointChangedError", "CheckpointCorruptError", "CheckpointLockedError"]


class CheckpointCorruptError(ValueError):
    """A checkpoint file does not hold what its manifest promises (the message names the file).

    Loading never returns rows from such a checkpoint; the previous files are left as they are.
    """


class CheckpointLockedError(OSError):
    """Another saver holds the checkpoint directory's lock: another process, or another manager of
    this process (the message names it)."""


class CheckpointChangedError(RuntimeError):
    """The checkpoint was replaced, by another save, with one of another op record after the manager
    decided which ops to skip (the message names both records).

    Loading it would run ops twice or skip some, so nothing is loaded; a new manager (or executor)
    decides again from the checkpoint there now.
    """
