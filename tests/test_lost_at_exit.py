"""Nothing lost at interpreter exit is reported as success.

A background checkpoint save that fails, or events that cannot be written,
once the program's own code is done make the process exit non-zero with a
message naming what was lost; the previous checkpoint stays loadable. A
failure the program already saw (it caught the exception) is not reported
twice, and a forked child does not inherit its parent's duty. Each case
runs in a fresh interpreter, on a real full filesystem where one can be
made (a tmpfs), otherwise through the test-only fault hook.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import textwrap

import pytest

from data_juicer_accel.utils.ckpt_utils import CheckpointManager
from tests.test_ckpt_crash import committed_generation, generation, op_record, tiny_fs  # noqa: F401 - a fixture


def run_script(script: str, *args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    env = dict(env or os.environ)
    env["PYTHONPATH"] = os.pathsep.join([os.getcwd(), os.environ.get("PYTHONPATH", "")])
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(script), *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
    )


FAILING_LAST_SAVE = """
    import os, sys
    from tests.test_ckpt_crash import generation, op_record
    from data_juicer_accel.utils.ckpt_utils import CheckpointManager
    ckpt_dir, how, fault_var = sys.argv[1], sys.argv[2], sys.argv[3]
    m = CheckpointManager(ckpt_dir, [], num_proc=2, background=True)
    m.op_record = op_record(1)
    m.save_ckpt(generation(1))
    m.wait()
    os.environ[fault_var] = "before_swap:eio"  # the commit of the next save fails
    m.op_record = op_record(2)
    m.save_ckpt(generation(2))
    if how == "fork":
        pid = os.fork()
        if pid == 0:
            sys.exit(0)  # the parent's save is not the child's to report
        print("child exit status", os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]), flush=True)
    if how == "reported":
        try:
            m.wait()
        except OSError as e:
            print("seen by the program:", e.strerror, flush=True)
    if how == "error":
        raise RuntimeError("the pipeline failed after the save")
    print("script done", flush=True)
"""


@pytest.mark.parametrize("how", ["normal", "error", "fork"])
def test_a_failed_last_background_save_makes_the_exit_fail_and_keeps_the_previous_checkpoint(tmp_path, fault_hook, how):
    ckpt_dir = str(tmp_path / "ckpt")
    proc = run_script(FAILING_LAST_SAVE, ckpt_dir, how, fault_hook)
    assert "script done" in proc.stdout or how == "error", proc.stderr
    assert proc.returncode == 1, (proc.stdout, proc.stderr)
    message = [line for line in proc.stderr.splitlines() if "checkpoint" in line and "lost" in line]
    assert message, proc.stderr
    assert os.path.join(ckpt_dir, "latest") in message[-1] and "Input/output error" in message[-1], message
    if how == "error":
        assert "the pipeline failed after the save" in proc.stderr  # the program's own error comes first
    if how == "fork":
        assert "child exit status 0" in proc.stdout
        assert len(message) == 1, proc.stderr  # the parent's line only
    assert committed_generation(ckpt_dir) == 1


def test_a_failure_the_program_saw_is_not_reported_again_at_exit(tmp_path, fault_hook):
    ckpt_dir = str(tmp_path / "ckpt")
    proc = run_script(FAILING_LAST_SAVE, ckpt_dir, "reported", fault_hook)
    assert "seen by the program: Input/output error" in proc.stdout, proc.stderr
    assert proc.returncode == 0, proc.stderr
    assert "lost" not in proc.stderr
    assert committed_generation(ckpt_dir) == 1


BIG_LAST_SAVE = """
    import os, sys
    import pyarrow as pa
    from tests.test_ckpt_crash import generation, op_record
    from data_juicer_accel.utils.ckpt_utils import CheckpointManager
    ckpt_dir = sys.argv[1]
    m = CheckpointManager(ckpt_dir, [], num_proc=2, background=True)
    m.op_record = op_record(1)
    m.save_ckpt(generation(1).slice(0, 100))
    m.wait()
    noise = pa.table({"noise": pa.array([os.urandom(256) for _ in range(40_000)], pa.binary())})  # 10 MB
    m.op_record = op_record(2)
    m.save_ckpt(noise)
    print("script done", flush=True)
"""


def test_a_last_background_save_into_a_full_disk_makes_the_exit_fail(tiny_fs):  # noqa: F811 - the fixture
    ckpt_dir = str(tiny_fs / "ckpt")
    proc = run_script(BIG_LAST_SAVE, ckpt_dir)
    assert "script done" in proc.stdout, proc.stderr
    assert proc.returncode == 1, proc.stderr
    message = [line for line in proc.stderr.splitlines() if "checkpoint" in line and "lost" in line]
    assert message and os.path.join(ckpt_dir, "latest") in message[-1], proc.stderr
    assert "No space left on device" in message[-1]
    again = CheckpointManager(ckpt_dir, op_record(1))
    assert again.ckpt_available and again.load_ckpt().equals(generation(1).slice(0, 100))


EVENTS_ON_A_FULL_DISK = """
    import os, sys, time
    from data_juicer_accel.core.executor.event_logging_mixin import Event, EventLogger, EventType
    work_dir = sys.argv[1]
    events = EventLogger(work_dir, job_id="job", work_dir=work_dir, flush_interval=3600)
    fd = os.open(os.path.join(work_dir, "filler"), os.O_WRONLY | os.O_CREAT)
    try:
        while os.write(fd, b"x" * 65536):
            pass
    except OSError:  # the disk is full
        pass
    for i in range(7):
        events.log_event(Event(event_type=EventType.OP_START, timestamp=time.time(), message=f"op {i}"))
    print("script done", flush=True)
"""


def test_events_that_cannot_be_written_at_exit_make_the_exit_fail_and_say_how_many(tiny_fs):  # noqa: F811
    proc = run_script(EVENTS_ON_A_FULL_DISK, str(tiny_fs))
    assert "script done" in proc.stdout, proc.stderr
    assert proc.returncode == 1, proc.stderr
    (events_file,) = [name for name in os.listdir(tiny_fs) if name.startswith("events_")]
    lost = [line for line in proc.stderr.splitlines() if re.search(r"\b7 events\b.*\blost\b", line)]
    assert lost and os.path.join(str(tiny_fs), events_file) in lost[-1], proc.stderr
    assert "No space left on device" in lost[-1]


def test_a_failed_background_write_of_events_is_raised_to_the_caller(tiny_fs):  # noqa: F811
    """As 1.6.1 raises OSError from ``log_event`` on a full disk, ``flush()``
    and the next ``log_event`` raise it once the flush thread failed."""
    import time

    from data_juicer_accel.core.executor.event_logging_mixin import Event, EventLogger, EventType

    events = EventLogger(str(tiny_fs), job_id="job", work_dir=str(tiny_fs), flush_interval=3600)
    filler = os.open(tiny_fs / "filler", os.O_WRONLY | os.O_CREAT)
    try:
        while os.write(filler, b"x" * 65536):
            pass
    except OSError:
        pass
    events.log_event(Event(event_type=EventType.OP_START, timestamp=time.time(), message="queued"))
    with pytest.raises(OSError, match="No space left on device"):
        events.flush()
    with pytest.raises(OSError, match="No space left on device"):
        events.log_event(Event(event_type=EventType.OP_START, timestamp=time.time(), message="refused"))
    os.close(filler)
    os.unlink(tiny_fs / "filler")  # room again: the queued event is written, nothing lost
    events.flush()
    events.close()
    with open(events.jsonl_file) as f:
        assert [line for line in f if '"queued"' in line]


def slow_table(k: int):
    """About 1 MB of text with little redundancy: seconds to save at zstd 19."""
    import numpy as np
    import pyarrow as pa

    rng = np.random.default_rng(k)
    vocabulary = np.array(["".join(rng.choice(list("abcdefghijklmnopqrstuvwxyz"), 6)) for _ in range(5_000)])
    return pa.table({"text": [" ".join(row) for row in rng.choice(vocabulary, size=(2_500, 60))]})


LATE_SAVES = """
    import atexit, os, sys, threading, time
    # Importing the manager registers the package's exit handler (importing
    # the bare package loads nothing).
    from data_juicer_accel.utils.ckpt_utils import CheckpointManager
    # Another library's exit hook, run before the package's handler: a
    # daemon thread keeps saving meanwhile, and after the handler closed
    # the background writers.
    atexit.register(time.sleep, 1.0)
    from tests.test_ckpt_crash import op_record
    from tests.test_lost_at_exit import slow_table
    root = sys.argv[1]
    two_saved = threading.Event()
    def keep_saving():
        for k in range(1, 100_000):
            m = CheckpointManager(os.path.join(root, str(k)), [], background=True, zstd_level=19)
            m.op_record = op_record(k)
            m.save_ckpt(slow_table(k))
            print("saved", k, flush=True)
            if k == 2:
                two_saved.set()
    threading.Thread(target=keep_saving, daemon=True).start()
    two_saved.wait()
"""


def test_a_daemon_thread_saving_after_the_exit_hook_loses_nothing_it_was_told_was_saved(tmp_path):
    """Saves a daemon thread requests once the exit hook has closed the
    background writers are made before ``save_ckpt`` returns (exit waits
    for them), not left to a writer nobody waits for."""
    root = str(tmp_path / "ckpts")
    proc = run_script(LATE_SAVES, root)
    assert proc.returncode == 0, proc.stderr
    said = [int(line.split()[1]) for line in proc.stdout.splitlines() if line.startswith("saved ")]
    assert said and said[-1] > 2, proc.stdout
    for k in said:
        m = CheckpointManager(os.path.join(root, str(k)), op_record(k))
        assert m.ckpt_available, f"save {k} was said to be saved and is not"
        assert m.load_ckpt().equals(slow_table(k))


def _save_in_a_worker(ckpt_dir: str) -> None:
    m = CheckpointManager(ckpt_dir, [], num_proc=2, background=True)
    m.op_record = op_record(1)
    m.save_ckpt(generation(1))  # the worker returns at once and ends by os._exit


@pytest.mark.parametrize("start_method", ["fork", "spawn"])
def test_a_background_save_in_a_multiprocessing_worker_is_committed_before_it_returns(tmp_path, start_method):
    """A worker may end without exit hooks (``os._exit`` after a fork-started
    ``Process``, ``Pool.terminate``): there a background save is made before
    ``save_ckpt`` returns."""
    import multiprocessing

    ckpt_dir = str(tmp_path / "ckpt")
    worker = multiprocessing.get_context(start_method).Process(target=_save_in_a_worker, args=(ckpt_dir,))
    worker.start()
    worker.join(timeout=120)
    assert worker.exitcode == 0
    assert committed_generation(ckpt_dir) == 1
