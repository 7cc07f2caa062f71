"""Smoke test of an installed wheel, with nothing but its declared dependencies.

Run from outside the source tree (so that the installed package is the one
imported): a checkpoint saved and resumed through ``CheckpointManager``, job
events written through ``EventLogger``, and the ``data-juicer-accel inspect``
and ``data-juicer-accel events`` commands on what was written.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time

import pyarrow as pa

import data_juicer_accel
from data_juicer_accel.core.executor.event_logging_mixin import Event, EventLogger, EventType
from data_juicer_accel.utils.ckpt_utils import CheckpointManager

PROCESS_LIST = [{"whitespace_normalization_mapper": {}}, {"text_length_filter": {"min_len": 5}}]


def command(*args: str) -> dict:
    """Run ``data-juicer-accel ARGS --json`` as a user would; its JSON output."""
    proc = subprocess.run(["data-juicer-accel", *args, "--json"], capture_output=True, text=True, check=False)
    assert proc.returncode == 0, f"data-juicer-accel {' '.join(args)} exited {proc.returncode}: {proc.stderr}"
    return json.loads(proc.stdout)


def check_checkpoint(work_dir: str) -> None:
    ckpt_dir = os.path.join(work_dir, "ckpt")
    table = pa.table({"text": [f"sample {i}" for i in range(1000)], "n": list(range(1000))})
    manager = CheckpointManager(ckpt_dir, PROCESS_LIST, num_proc=2)
    assert not manager.ckpt_available
    manager.record(PROCESS_LIST[0])
    manager.save_ckpt(table)

    resumed = CheckpointManager(ckpt_dir, PROCESS_LIST, num_proc=2)
    assert resumed.ckpt_available, "a saved checkpoint is not found again"
    assert resumed.get_left_process_list() == PROCESS_LIST[1:]
    assert resumed.load_ckpt().equals(table)

    report = command("inspect", ckpt_dir, "--verify")
    assert not report["damaged"], report["problems"]
    assert report["num_rows"] == table.num_rows and report["verify"]["ok"], report
    assert [op["name"] for op in report["ops_recorded"]] == ["whitespace_normalization_mapper"], report
    print(f"checkpoint: saved, resumed and verified in {ckpt_dir}")


def check_events(work_dir: str) -> None:
    job_dir = os.path.join(work_dir, "job-1")
    events = EventLogger(os.path.join(job_dir, "logs"), job_id="job-1", work_dir=job_dir)
    events.log_event(Event(EventType.JOB_START, time.time(), "job started", total_partitions=1))
    events.log_event(Event(EventType.OP_START, time.time(), "op started", operation_name="text_length_filter"))
    events.log_event(Event(EventType.JOB_COMPLETE, time.time(), "job done", job_duration=0.1))
    events.close()
    with open(events.jsonl_file) as f:
        logged = [json.loads(line)["event_type"] for line in f]
    assert logged == ["job_start", "op_start", "job_complete"], logged

    report = command("events", job_dir)
    assert report["job_status"] == "completed", report
    assert report["event_counts"] == {"job_start": 1, "op_start": 1, "job_complete": 1}, report
    print(f"events: {len(logged)} written and reported from {events.jsonl_file}")


def main() -> int:
    print(f"data_juicer_accel {data_juicer_accel.__version__} from {os.path.dirname(data_juicer_accel.__file__)}")
    with tempfile.TemporaryDirectory() as work_dir:
        check_checkpoint(work_dir)
        check_events(work_dir)
    print("wheel smoke test passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
