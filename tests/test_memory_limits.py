"""Under a memory limit, a save (foreground or background), a load and
``EventLogger()`` either work or raise ``MemoryError``/``OSError``: never a
signal death (Rust aborts on an allocation it did not ask to handle) and
never a hang (a panicking thread left its peers waiting).

Each trial is one subprocess that sets ``RLIMIT_AS`` to what it already
uses plus a step, stepping across the point where the work starts to fit
(threads that cannot start, buffers that cannot be allocated, then enough)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

TRIAL = textwrap.dedent(
    """
    import gc, os, resource, sys
    import pyarrow as pa
    from data_juicer_accel.utils.ckpt_utils import CheckpointManager
    from data_juicer_accel.core.executor.event_logging_mixin import EventLogger

    path, extra, work = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    table = pa.table({"text": pa.array([f"a{i:07d}" * 64 for i in range(20_000)])})
    if path == "load":
        CheckpointManager(work, [], num_proc=2).save_ckpt(table)
    data = table
    if path == "background save of a filtered dataset":  # rows gathered by the writer thread
        import datasets
        data = datasets.Dataset(datasets.table.InMemoryTable(table)).select(range(0, 20_000, 2))
        table = data.flatten_indices().data.table
    m = CheckpointManager(work, [], num_proc=2, background=path.startswith("background"))
    gc.collect()
    with open("/proc/self/statm") as f:
        used = int(f.read().split()[0]) * resource.getpagesize()
    resource.setrlimit(resource.RLIMIT_AS, (used + extra, resource.RLIM_INFINITY))
    try:
        if path == "load":
            assert m.load_ckpt().num_rows == 20_000
        elif path == "EventLogger()":
            EventLogger(os.path.join(work, "events"), job_id="j").close()
        else:
            m.save_ckpt(data)
            m.wait()
        outcome = "ok"
    except (MemoryError, OSError) as e:
        outcome = type(e).__name__
    finally:
        resource.setrlimit(resource.RLIMIT_AS, (resource.RLIM_INFINITY, resource.RLIM_INFINITY))
    if "save" in path and outcome == "ok":
        loaded = CheckpointManager(work, []).load_ckpt()
        assert (loaded if isinstance(loaded, pa.Table) else loaded.data.table).equals(table)
    m.close()
    print("OUTCOME", outcome)
    """
)

#: (path, the largest step in MiB, the step in MiB): up to well past the need
#: (about 11 MiB for EventLogger(), 20 to 34 MiB for the rest).
PATHS = [
    ("EventLogger()", 24, 1),
    ("foreground save", 64, 3),
    ("background save", 64, 3),
    ("background save of a filtered dataset", 64, 4),
    ("load", 64, 4),
]


def _trial(path: str, extra_mib: int, work: str) -> str:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([os.getcwd(), os.environ.get("PYTHONPATH", "")]))
    env.pop("RUST_BACKTRACE", None)  # printing a backtrace allocates too
    try:
        proc = subprocess.run(
            [sys.executable, "-c", TRIAL, path, str(extra_mib << 20), work],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
    except subprocess.TimeoutExpired:
        return "hang"
    outcome = [line.split()[1] for line in proc.stdout.splitlines() if line.startswith("OUTCOME ")]
    if proc.returncode != 0 or not outcome:
        return f"rc {proc.returncode}: {proc.stderr[-400:]}"
    return outcome[0]


@pytest.mark.parametrize(("path", "top", "step"), PATHS, ids=[p[0] for p in PATHS])
def test_every_memory_limit_across_the_need_works_or_raises_memory_error(tmp_path, path, top, step):
    outcomes = {}
    for extra in range(0, top + 1, step):
        work = tmp_path / f"limit-{extra}"
        outcomes[extra] = _trial(path, extra, str(work))
    allowed = {"ok", "MemoryError", "OSError", "BlockingIOError"}
    assert set(outcomes.values()) <= allowed, outcomes
    assert "ok" in outcomes.values() and outcomes[0] != "ok", f"the steps must cross the need: {outcomes}"
