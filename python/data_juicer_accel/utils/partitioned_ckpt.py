"""Data-Juicer 1.6.1's partitioned Ray executor with its checkpoints in a bucket.

``PartitionedRayExecutor`` hands ``checkpoint_dir`` to its
``RayCheckpointManager`` (ours, which keeps each checkpoint in the bucket when
it is ``s3://bucket/prefix``), but it also treats that directory as local in
three places, each wrapped here and changed only when the manager is in a
bucket:

* ``partitioning_info.json`` (the partitions' row boundaries and content
  hashes that ``--resume`` needs): 1.6.1 writes it with ``os.makedirs`` and
  ``open`` inside ``checkpoint_dir``, which would create a local ``s3:/...``
  directory. The native bucket client publishes whole checkpoints only (no
  single-object write), so this small file goes to the job's ``work_dir``
  instead, written atomically (temporary file, fsync, rename): the work
  directory is the one ``--resume <job_id>`` reopens, since it ends with the
  job id.
* ``_resume_job`` replaces the manager's directory with ``work_dir/checkpoints``
  when that exists; with a bucket the checkpoints are in the configured
  prefix, so the bucket is kept (``find_latest_checkpoint`` lists it).
* ``_clear_invalid_checkpoints`` (the input no longer matches the saved
  partitions) deletes the local directory; the bucket's checkpoints cannot be
  deleted from here, and loading them would export rows of the old input, so
  the run stops with an error naming the prefix instead.
"""

from __future__ import annotations

import os
import tempfile
from typing import Any

from loguru import logger

__all__ = [
    "PARTITIONING_INFO",
    "bucket_of",
    "keep_bucket_after_resume",
    "partitioning_info_path",
    "refuse_to_clear",
    "save_partitioning_info",
]

PARTITIONING_INFO = "partitioning_info.json"


def bucket_of(executor: Any) -> str | None:
    """``s3://bucket/prefix`` when the executor's checkpoint manager is in a bucket, else None."""
    manager = getattr(executor, "ckpt_manager", None)
    bucket = getattr(manager, "bucket", None)
    return bucket if isinstance(bucket, str) else None


def partitioning_info_path(executor: Any) -> str:
    """Where a bucket job keeps ``partitioning_info.json``: its (local) work directory."""
    return os.path.join(executor.work_dir, PARTITIONING_INFO)


def save_partitioning_info(executor: Any, info: Any) -> None:
    """Writes ``info`` (a ``PartitioningInfo``) to ``partitioning_info_path``, atomically:
    a run killed while writing leaves the previous file whole, never a truncated one."""
    import json

    path = partitioning_info_path(executor)
    directory = os.path.dirname(path)
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{PARTITIONING_INFO}.", dir=directory)
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(info.to_dict(), f, indent=2)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    logger.info(f"Saved partitioning info to {path} (the checkpoints are in {bucket_of(executor)})")


def keep_bucket_after_resume(executor: Any, ckpt_dir: str) -> None:
    """Undoes 1.6.1's switch to a local ``work_dir/checkpoints`` on resume:
    ``ckpt_dir`` is the manager's bucket prefix before ``_resume_job``."""
    manager = executor.ckpt_manager
    if manager.ckpt_dir != ckpt_dir:
        logger.info(f"Resuming from the checkpoints in {ckpt_dir}, not {manager.ckpt_dir}")
        manager.ckpt_dir = ckpt_dir


def refuse_to_clear(bucket: str) -> None:
    raise RuntimeError(
        f"the input no longer matches the partitions saved with the checkpoints in {bucket}; "
        "they cannot be cleared from here and would export rows of the old input. "
        "Use a new job id (checkpoint_dir: s3://bucket/prefix/{job_id}) or another prefix."
    )
