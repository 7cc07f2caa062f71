"""Data-Juicer 1.6.1's partitioned Ray executor with its checkpoints in a bucket.

``PartitionedRayExecutor`` hands ``checkpoint_dir`` to its
``RayCheckpointManager`` (ours, which keeps each checkpoint in the bucket when
it is ``s3://bucket/prefix``), but it also treats that directory as local in
three places, each wrapped here and changed only when the manager is in a
bucket:

* ``partitioning_info.json`` (the partitions' row boundaries and content
  hashes that ``--resume`` needs): 1.6.1 writes and reads it with
  ``os.makedirs`` and ``open`` inside ``checkpoint_dir``, which would create
  a local ``s3:/...`` directory. It goes into the bucket instead, beside the
  checkpoints (one PUT: a reader sees the old file or the new one), so that
  a job resumes from the bucket alone, on another machine too.
* ``_resume_job`` replaces the manager's directory with ``work_dir/checkpoints``
  when that exists; with a bucket the checkpoints are in the configured
  prefix, so the bucket is kept (``find_latest_checkpoint`` lists it).
* ``_clear_invalid_checkpoints`` (the input no longer matches the saved
  partitions) deletes the local directory; the bucket's checkpoints cannot be
  deleted from here, and loading them would export rows of the old input, so
  the run stops with an error naming the prefix instead.
"""

from __future__ import annotations

import json
from typing import Any

from loguru import logger

__all__ = [
    "PARTITIONING_INFO",
    "bucket_of",
    "keep_bucket_after_resume",
    "load_partitioning_info",
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
    """Where a bucket job keeps ``partitioning_info.json``: beside its checkpoints."""
    return f"{bucket_of(executor)}/{PARTITIONING_INFO}"


def save_partitioning_info(executor: Any, info: Any) -> None:
    """Puts ``info`` (a ``PartitioningInfo``) into the bucket, in one PUT."""
    from data_juicer_accel import _native

    bucket = bucket_of(executor)
    data = json.dumps(info.to_dict(), indent=2).encode()
    _native.put_bucket_file(bucket, PARTITIONING_INFO, data, storage_options=_options(executor))
    logger.info(f"Saved partitioning info to {bucket}/{PARTITIONING_INFO}")


def load_partitioning_info(executor: Any, info_class: Any) -> Any | None:
    """The ``PartitioningInfo`` saved in the bucket; None (with a warning) when
    there is none or it cannot be read, as 1.6.1 answers for a local file."""
    from data_juicer_accel import _native

    where = partitioning_info_path(executor)
    try:
        data = _native.get_bucket_file(bucket_of(executor), PARTITIONING_INFO, storage_options=_options(executor))
        return None if data is None else info_class.from_dict(json.loads(data))
    except Exception as e:  # 1.6.1 logs any failure and answers None
        logger.warning(f"Failed to load partitioning info from {where}: {e}")
        return None


def _options(executor: Any) -> list[tuple[str, str]]:
    return executor.ckpt_manager._storage_options or []


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
