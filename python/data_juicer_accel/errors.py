"""Exceptions raised by data-juicer-accel's checkpoints.

They are plain Python classes defined here (the native module raises these
very classes), so they pickle and cross process boundaries, e.g. from a
``multiprocessing`` worker, with their type intact. Also importable from
``data_juicer_accel`` itself.
"""

from __future__ import annotations

__all__ = ["CheckpointCorruptError", "CheckpointLockedError"]


class CheckpointCorruptError(ValueError):
    """A checkpoint file does not hold what its manifest promises (the message names the file).

    Loading never returns rows from such a checkpoint; the previous files are left as they are.
    """


class CheckpointLockedError(OSError):
    """Another process is saving into the same checkpoint directory."""
