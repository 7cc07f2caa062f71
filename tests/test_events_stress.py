"""Events under stress: many threads, SIGKILL at random moments, a full disk."""

from __future__ import annotations

import json
import random
import signal
import subprocess
import sys
import textwrap
import threading
import time

import pytest

import data_juicer_accel.core.executor.event_logging_mixin as accel
from tests.test_ckpt_crash import tiny_fs  # noqa: F401 - fixture
from tests.test_events import assert_threads_keep_every_event_in_order, make_executor, only_loguru_sink, read_lines


def test_eight_threads_of_100k_events_lose_nothing_and_keep_order(tmp_path):
    # No loguru sink, as in a job logging at INFO: every event takes the
    # native path into the buffers, which is what is under stress here.
    with only_loguru_sink(None, []):
        assert_threads_keep_every_event_in_order(tmp_path, threads=8, per_thread=100_000)


BATCHES = textwrap.dedent(
    """
    import sys, time
    from types import SimpleNamespace
    from data_juicer_accel import EventLoggingMixin, EventType

    class Executor(EventLoggingMixin):
        def __init__(self, work_dir, interval):
            self.cfg = SimpleNamespace(job_id="k", event_logging={"flush_interval": interval})
            self.work_dir = work_dir
            self.executor_type = "default"
            super().__init__()

    interval = float(sys.argv[2])
    executor = Executor(sys.argv[1], interval)
    print(executor.event_logger.jsonl_file, flush=True)
    for batch in range(10**6):
        for i in range(200):
            executor._log_event(EventType.OP_START, "x" * (i % 50), partition_id=batch, operation_idx=i)
        print("done", batch, flush=True)
        time.sleep(interval * 50)   # the batch is now far older than the flush interval
    """
)


def test_sigkill_loses_only_events_newer_than_the_flush_interval(tmp_path):
    rng = random.Random(7)
    # Margins are wide (50 flush intervals) so a starved flush thread on a
    # busy machine is not mistaken for a lost event.
    for trial in range(8):
        child = subprocess.Popen(
            [sys.executable, "-c", BATCHES, str(tmp_path / f"t{trial}"), "0.02"], stdout=subprocess.PIPE, text=True
        )
        path = child.stdout.readline().strip()
        deadline = time.monotonic() + rng.uniform(0.05, 2.5)
        done = -1
        while time.monotonic() < deadline:
            line = child.stdout.readline()
            if line.startswith("done"):
                done = int(line.split()[1])
        child.send_signal(signal.SIGKILL)
        child.wait()
        with open(path) as f:
            text = f.read()
        lines = text.split("\n")
        events = [json.loads(line) for line in lines[:-1]]  # every complete line parses
        if lines[-1]:
            with pytest.raises(json.JSONDecodeError):
                json.loads(lines[-1])  # only the very last may be partial
        # Batches finished before the one reported last were followed by a
        # sleep of 10 flush intervals: all on disk.
        complete = [(e["partition_id"], e["operation_idx"]) for e in events]
        expected = [(b, i) for b in range(max(done, 0)) for i in range(200)]
        assert complete[: len(expected)] == expected, f"trial {trial}"
        # Readers skip a partial last line.
        reader = make_executor(accel, str(tmp_path / f"r{trial}"))
        assert reader.event_logger.check_job_completion(path) is False


def test_full_disk_while_flushing_raises_and_keeps_events_queued(tiny_fs):  # noqa: F811
    work_dir = tiny_fs / "job"
    executor = make_executor(accel, str(work_dir), flush_interval=3600)
    filler = tiny_fs / "filler"
    with open(filler, "wb", buffering=0) as f:  # fill the disk
        try:
            while True:
                f.write(b"\0" * 4096)
        except OSError:
            pass
    for i in range(500):
        executor._log_event(accel.EventType.OP_START, "m" * 100, operation_idx=i)
    with pytest.raises(OSError, match="No space left on device") as info:
        executor.event_logger.flush()
    assert "events_" in str(info.value)
    filler.unlink()  # space again: the queued events are written on retry
    executor.event_logger.flush()
    assert [e["operation_idx"] for e in read_lines(executor.event_logger.jsonl_file)] == list(range(500))


def test_threads_through_a_tiny_queue_lose_nothing_and_keep_order(tmp_path):
    """A queue of 4 events a buffer: producers keep finding it full and wait
    for the flush thread to make room; every event still lands, in order."""
    executor = make_executor(accel, str(tmp_path), queue_size=4, flush_interval=0.001)
    threads, per_thread = 6, 5_000

    def work(t):
        for i in range(per_thread):
            executor._log_event(accel.EventType.OP_START, "m" * (i % 40), partition_id=t, operation_idx=i)

    workers = [threading.Thread(target=work, args=(t,)) for t in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    executor.event_logger.flush()
    seen = {t: [] for t in range(threads)}
    for event in read_lines(executor.event_logger.jsonl_file):
        seen[event["partition_id"]].append(event["operation_idx"])
    assert seen == {t: list(range(per_thread)) for t in range(threads)}


def test_events_larger_than_the_buffer_are_written_in_order(tmp_path):
    """An event line longer than a whole buffer (megabytes of metadata) is
    written after the events logged before it and before the ones after."""
    executor = make_executor(accel, str(tmp_path))
    big = "b" * (5 << 20)

    def work(t):
        for i in range(30):
            message = big if i % 10 == 5 else "small"
            executor._log_event(accel.EventType.OP_START, message, partition_id=t, operation_idx=i)

    workers = [threading.Thread(target=work, args=(t,)) for t in range(3)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    executor.event_logger.flush()
    seen = {t: [] for t in range(3)}
    for event in read_lines(executor.event_logger.jsonl_file):
        assert event["message"] in ("small", big)
        seen[event["partition_id"]].append(event["operation_idx"])
    assert seen == {t: list(range(30)) for t in range(3)}
