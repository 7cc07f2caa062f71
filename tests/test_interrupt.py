"""Ctrl-C on every subcommand: one line, exit code 130, nothing left behind.

Each command runs as a real subprocess in its own session, as a terminal runs
it; the test waits until the command is busy (its first output, or Data-Juicer
at work) and then sends SIGINT to the whole process group, as Ctrl-C does, so
that pool workers get it too. The command's TMPDIR is a directory of the
test's own, which must be empty afterwards, and no process of the group may
be left. The seconds from the signal to the exit are printed (``pytest -s``).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import weakref
from collections.abc import Callable
from pathlib import Path

import pytest

from data_juicer_accel.utils.ckpt_utils import CheckpointManager
from tests.conftest import require, text_table

MESSAGE = "data-juicer-accel: interrupted; nothing left behind"
#: Generous: the requirement is about 2 s; this only says "it does not hang".
BOUND_SECONDS = 15.0


class Command:
    """A subprocess whose stdout and stderr lines are collected as they come."""

    def __init__(self, args: list[str], tmp: Path, env: dict[str, str] | None = None, cwd: Path | None = None):
        # Short and under /tmp whatever the test's own path: a pool's Manager
        # listens on TMPDIR/pymp-*/listener-*, and a Unix socket path over 107
        # bytes cannot be bound (the Manager then dies at start).
        self.tmpdir = Path(tempfile.mkdtemp(prefix="dja-cmd-", dir="/tmp"))
        weakref.finalize(self, shutil.rmtree, self.tmpdir, True)
        env = dict(env or os.environ, TMPDIR=str(self.tmpdir), PIP_NO_INDEX="1", UV_OFFLINE="1", USE_TORCH="0")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "data_juicer_accel", *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
            cwd=cwd,
            start_new_session=True,
        )
        self.out: list[str] = []
        self.err: list[str] = []
        self.changed = threading.Condition()
        self.readers = [
            threading.Thread(target=self._read, args=(self.proc.stdout, self.out), daemon=True),
            threading.Thread(target=self._read, args=(self.proc.stderr, self.err), daemon=True),
        ]
        for reader in self.readers:
            reader.start()

    def _read(self, stream, into: list[str]) -> None:
        for line in stream:
            with self.changed:
                into.append(line)
                self.changed.notify_all()
        with self.changed:  # the end of the stream: the command ended, wake the waiters
            self.changed.notify_all()

    def wait_for(self, ready: Callable[[], bool], timeout: float = 600) -> None:
        with self.changed:
            if not self.changed.wait_for(lambda: ready() or self.proc.poll() is not None, timeout):
                raise AssertionError(f"not ready after {timeout} s; stderr: {''.join(self.err)[-3000:]}")
        assert self.proc.poll() is None, f"ended before it was interrupted: {''.join(self.err)[-3000:]}"

    def interrupt(self) -> tuple[float, list[str]]:
        """Ctrl-C: SIGINT to the process group. The seconds until the command
        exited and the stderr lines written after the signal."""
        with self.changed:
            before = len(self.err)
        start = time.monotonic()
        os.killpg(self.proc.pid, signal.SIGINT)
        try:
            self.proc.wait(BOUND_SECONDS)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
            raise AssertionError(f"still running {BOUND_SECONDS} s after Ctrl-C: {''.join(self.err)[-3000:]}") from None
        seconds = time.monotonic() - start
        for reader in self.readers:
            reader.join(30)
        print(f"\n{self.proc.args[3]}: exited {seconds:.2f} s after Ctrl-C")
        return seconds, self.err[before:]

    def assert_nothing_left(self) -> None:
        deadline = time.monotonic() + 30  # the group's last processes end on their own
        while _group_alive(self.proc.pid) and time.monotonic() < deadline:
            time.sleep(0.1)
        left = _group_processes(self.proc.pid)
        assert not _group_alive(self.proc.pid), f"processes of the command outlived it: {left}"
        assert list(self.tmpdir.iterdir()) == [], f"temporary files left behind: {sorted(self.tmpdir.rglob('*'))}"


def _group_processes(pgid: int) -> list[str]:
    """The command lines of the processes left in process group ``pgid``."""
    found = []
    for entry in os.listdir("/proc"):
        try:
            if entry.isdigit() and os.getpgid(int(entry)) == pgid:
                with open(f"/proc/{entry}/cmdline", "rb") as f:
                    cmdline = f.read().replace(b"\0", b" ").decode(errors="replace")
                found.append(f"{entry}: {cmdline[:200]}")
        except (OSError, ProcessLookupError):
            continue
    return found


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


def _assert_one_line(after: list[str], allowed_before: tuple[str, ...] = ()) -> None:
    """The lines written after the signal: at most the progress of the moment,
    then the one line, and no traceback."""
    text = "".join(after)
    assert "Traceback" not in text and "KeyboardInterrupt" not in text, text
    lines = [ln.strip() for ln in after if ln.strip() and not ln.startswith(allowed_before)]
    assert lines == [MESSAGE], text


def _guard_installed(pid: int) -> bool:
    """The CLI blocks SIGINT (alone: native libraries block every signal for
    a moment when they start a thread) in its main thread once its Ctrl-C
    handling is in place."""
    try:
        with open(f"/proc/{pid}/task/{pid}/status") as f:
            blocked = next(line for line in f if line.startswith("SigBlk:"))
    except (OSError, StopIteration):
        return False
    mask = int(blocked.split()[1], 16)
    return bool(mask & (1 << (signal.SIGINT - 1))) and not mask & (1 << (signal.SIGTERM - 1))


# --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("only", "phase"),
    [("checkpoints", "py-data-juicer"), ("checkpoints", "generating"), ("events", "events round")],
)
def test_ctrl_c_during_bench(tmp_path, only, phase):
    """Also in the Data-Juicer phase, whose save_to_disk runs a spawn pool
    and a Manager process: it once hung in Pool.terminate."""
    if phase == "py-data-juicer":
        require("data_juicer")
    cmd = Command(["bench", "--only", only, "--size", "40MB", "--rounds", "1", "--small-rounds", "1"], tmp_path)
    cmd.wait_for(lambda: any(phase in line for line in cmd.err))
    seconds, after = cmd.interrupt()
    assert cmd.proc.returncode == 130, "".join(cmd.err)
    _assert_one_line(after, allowed_before=("[",))
    assert cmd.out == []  # no report of an interrupted run
    cmd.assert_nothing_left()


def test_ctrl_c_during_events_follow(tmp_path):
    work = tmp_path / "job"
    work.mkdir()
    (work / "events_20260101_000000.jsonl").write_text(
        '{"event_type": "job_start", "timestamp": 1.0, "message": "Job started"}\n'
    )
    cmd = Command(["events", str(work), "--follow", "--timeout", "600"], tmp_path)
    cmd.wait_for(lambda: any("job_start" in line for line in cmd.out))
    seconds, after = cmd.interrupt()
    assert cmd.proc.returncode == 130
    _assert_one_line(after)
    cmd.assert_nothing_left()


def test_ctrl_c_during_inspect_config(tmp_path):
    """inspect --config loads the config with Data-Juicer (seconds of imports)."""
    require("data_juicer")
    ckpt = tmp_path / "work" / "job" / "ckpt"
    ops = [{"clean_email_mapper": {}}]
    manager = CheckpointManager(str(ckpt), ops, num_proc=1)
    manager.record(ops[0])
    manager.save_ckpt(text_table(100))
    config = tmp_path / "config.yaml"
    config.write_text(f"dataset_path: x.jsonl\nwork_dir: {tmp_path / 'work'}\nprocess:\n  - clean_email_mapper:\n")
    cmd = Command(["inspect", str(ckpt), "--config", str(config)], tmp_path)
    with cmd.changed:  # polled: nothing is printed before the report
        while not _guard_installed(cmd.proc.pid) and cmd.proc.poll() is None:
            cmd.changed.wait(0.01)
    cmd.wait_for(lambda: True)
    seconds, after = cmd.interrupt()
    assert cmd.proc.returncode == 130, "".join(cmd.err)
    _assert_one_line(after)
    cmd.assert_nothing_left()


def test_ctrl_c_during_dj_process(tmp_path):
    """A real Data-Juicer job, np 2 (a pool of workers), interrupted while it
    runs its ops."""
    require("data_juicer")
    from data_juicer_accel.bench.dj_jobs import job_env, write_corpus_jsonl, write_job_config

    data = tmp_path / "data.jsonl"
    write_corpus_jsonl(30 * 10**6, str(data))
    config = write_job_config(str(tmp_path), "interrupt", str(data), 2, "use_checkpoint: true\n")
    env = job_env(str(tmp_path))
    cmd = Command(["dj-process", "--config", config], tmp_path, env=env, cwd=tmp_path)
    cmd.wait_for(lambda: any("OP [" in line or "Processing" in line for line in cmd.err + cmd.out))
    seconds, after = cmd.interrupt()
    assert cmd.proc.returncode == 130, "".join(cmd.err)
    text = "".join(after)
    assert "Traceback" not in text and "KeyboardInterrupt" not in text, text
    assert [ln.strip() for ln in after if "interrupted" in ln] == [MESSAGE], text
    assert after[-1].strip() == MESSAGE, text
    cmd.assert_nothing_left()
    # The job's events were written out, whole lines only.
    logs = list((tmp_path / "work").rglob("events_*.jsonl"))
    assert logs, "no event log"
    events = [json.loads(line) for log in logs for line in log.read_text().splitlines()]
    assert "job_start" in {e["event_type"] for e in events}
