"""Ctrl-C is honoured wherever a caller waits for a checkpoint.

A real SIGINT lands while a save compresses at a high zstd level (where
one compression step of the default size takes many seconds): in a
foreground save, in ``wait()``, ``close()`` and ``load_ckpt()`` waiting for
a background save, and in the exit hook waiting for the last one. The
process ends with KeyboardInterrupt well within the bound (it does not
wait for the save), the exit hook says that it abandoned the save, and
the previous checkpoint stays loadable, with no staging leftovers.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from tests.test_ckpt_crash import committed_generation

#: A generous bound on an idle machine: the point is that the process does
#: not wait for the save (which takes minutes at these levels).
BOUND_SECONDS = 10


def bound_seconds() -> float:
    """``BOUND_SECONDS`` stretched by how oversubscribed the machine is: the
    interrupted compression step takes longer in proportion on busy cores."""
    return BOUND_SECONDS * max(1.0, os.getloadavg()[0] / (os.cpu_count() or 1))


SAVE_THEN_WAIT = """
    import sys
    import numpy as np
    import pyarrow as pa
    from tests.test_ckpt_crash import generation, op_record
    from data_juicer_accel.utils.ckpt_utils import CheckpointManager
    ckpt_dir, where, level = sys.argv[1], sys.argv[2], int(sys.argv[3])
    m = CheckpointManager(ckpt_dir, [], num_proc=2, zstd_level=level, background=where != "save")
    m.op_record = op_record(1)
    m.save_ckpt(generation(1))
    m.wait()
    # 24 MB of text with little redundancy: slow to compress at high levels.
    rng = np.random.default_rng(0)
    vocabulary = np.array(["".join(rng.choice(list("abcdefghijklmnopqrstuvwxyz"), 6)) for _ in range(20_000)])
    words = rng.choice(vocabulary, size=(60_000, 60))
    big = pa.table({"text": [" ".join(row) for row in words]})
    m.op_record = op_record(2)
    print("saving", flush=True)
    m.save_ckpt(big)
    if where == "wait":
        m.wait()
    elif where == "close":
        m.close()
    elif where == "load_ckpt":
        m.load_ckpt()
    # "exit": the program ends here and the exit hook waits for the save
    print("returned", flush=True)
"""


def wait_until_blocked(pid: int) -> None:
    """Until the main thread of ``pid`` waits in a futex (the exit hook's
    native wait) at two looks 50 ms apart: the program's own code is done."""
    futex = "202"  # x86_64
    seen = 0
    deadline = time.monotonic() + 120
    while seen < 2 and time.monotonic() < deadline:
        try:
            with open(f"/proc/{pid}/task/{pid}/syscall") as f:
                seen = seen + 1 if f.read().split(" ", 1)[0] == futex else 0
        except OSError:
            return
        time.sleep(0.05)


def staging_dirs(ckpt_dir: str) -> list:
    return [name for name in os.listdir(ckpt_dir) if name.startswith(".latest")] if os.path.isdir(ckpt_dir) else []


def interrupt_while_saving(tmp_path, where: str, level: int) -> tuple[subprocess.CompletedProcess, tuple[float, float]]:
    """Runs SAVE_THEN_WAIT, sends SIGINT once the big save is writing its
    staging directory; returns the outcome, and the seconds it took to end with the bound it had."""
    ckpt_dir = str(tmp_path / "ckpt")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([os.getcwd(), os.environ.get("PYTHONPATH", "")]))
    proc = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(SAVE_THEN_WAIT), ckpt_dir, where, str(level)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout.readline() == "saving\n"
        if where == "exit":
            assert proc.stdout.readline() == "returned\n"  # the program is done: exit hooks run
            wait_until_blocked(proc.pid)  # a Ctrl-C before that would interrupt the program's last line
        deadline = time.monotonic() + 120
        while not staging_dirs(ckpt_dir) and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.01)  # polls for the staging directory the save creates
        assert staging_dirs(ckpt_dir), "the save never started"
        proc.send_signal(signal.SIGINT)
        sent, bound = time.monotonic(), bound_seconds()
        out, err = proc.communicate(timeout=max(120, 2 * bound))
        took = time.monotonic() - sent
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    said = "saving\nreturned\n" if where == "exit" else "saving\n"
    return subprocess.CompletedProcess(proc.args, proc.returncode, said + out, err), (took, bound)


@pytest.mark.parametrize("level", [19, 22])
@pytest.mark.parametrize("where", ["save", "wait", "close", "load_ckpt"])
def test_ctrl_c_while_a_caller_waits_for_a_save_raises_at_once_and_keeps_the_previous_checkpoint(
    tmp_path, where, level
):
    outcome, (took, bound) = interrupt_while_saving(tmp_path, where, level)
    assert "returned" not in outcome.stdout
    assert outcome.stderr.rstrip().endswith("KeyboardInterrupt"), outcome.stderr[-3000:]
    assert outcome.returncode == -signal.SIGINT  # Python's own exit for an unhandled Ctrl-C
    assert took < bound, f"exited {took:.1f} s after Ctrl-C (bound {bound:.0f} s at this load)"
    assert "lost" not in outcome.stderr  # the caller saw the interruption itself
    assert committed_generation(str(tmp_path / "ckpt")) == 1
    assert staging_dirs(str(tmp_path / "ckpt")) == []


@pytest.mark.parametrize("level", [19, 22])
def test_ctrl_c_at_exit_abandons_the_last_save_says_so_and_exits_non_zero(tmp_path, level):
    outcome, (took, bound) = interrupt_while_saving(tmp_path, "exit", level)
    assert "returned" in outcome.stdout  # the program ended; the exit hook waited
    ckpt_ds_dir = os.path.join(str(tmp_path / "ckpt"), "latest")
    said = [line for line in outcome.stderr.splitlines() if "Ctrl-C" in line and ckpt_ds_dir in line]
    assert said and "abandoned" in said[-1] and "lost" in said[-1], outcome.stderr[-3000:]
    assert outcome.returncode == -signal.SIGINT
    assert took < bound, f"exited {took:.1f} s after Ctrl-C (bound {bound:.0f} s at this load)"
    assert committed_generation(str(tmp_path / "ckpt")) == 1
    assert staging_dirs(str(tmp_path / "ckpt")) == []
