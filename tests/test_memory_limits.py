"""Under a memory limit, a save (foreground or background), a load and
``EventLogger()`` either work or raise ``MemoryError``/``OSError``: never a
signal death (Rust aborts on an allocation it did not ask to handle) and
never a hang (a panicking thread left its peers waiting).

Each trial is one subprocess that sets ``RLIMIT_AS`` to what it already
uses plus a step, stepping across the point where the work starts to fit
(threads that cannot start, buffers that cannot be allocated, then enough).

The same holds under a cgroup memory limit (v1 or v2): there the kernel
OOM-kills (SIGKILL) rather than failing an allocation, so the process must
read its own cgroup's headroom, not the root's."""

from __future__ import annotations

import os
import pathlib
import subprocess
import sys
import textwrap
from collections.abc import Callable, Iterator

import pytest

TRIAL = textwrap.dedent(
    """
    import gc, os, resource, sys
    import pyarrow as pa
    from data_juicer_accel.utils.ckpt_utils import CheckpointManager
    from data_juicer_accel.core.executor.event_logging_mixin import EventLogger

    path, extra, work, cgroup = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
    v1 = os.path.exists(os.path.join(cgroup, "memory.limit_in_bytes"))
    limit_file = os.path.join(cgroup, "memory.limit_in_bytes" if v1 else "memory.max")


    def limit_memory():
        if not cgroup:
            with open("/proc/self/statm") as f:
                used = int(f.read().split()[0]) * resource.getpagesize()
            resource.setrlimit(resource.RLIMIT_AS, (used + extra, resource.RLIM_INFINITY))
            return
        # Pages touched so far stay charged to the original cgroup (v1 moves no
        # charge; v2 never does): the limit covers what the operation adds.
        with open(os.path.join(cgroup, "cgroup.procs"), "w") as f:
            f.write(str(os.getpid()))
        with open(os.path.join(cgroup, "memory.usage_in_bytes" if v1 else "memory.current")) as f:
            used = int(f.read())
        with open(limit_file, "w") as f:
            f.write(str(used + extra))


    def unlimit_memory():
        resource.setrlimit(resource.RLIMIT_AS, (resource.RLIM_INFINITY, resource.RLIM_INFINITY))
        if cgroup:
            with open(limit_file, "w") as f:
                f.write("-1" if v1 else "max")


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
    limit_memory()
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
        unlimit_memory()
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


def _trial(path: str, extra_mib: int, work: str, cgroup: str = "") -> str:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([os.getcwd(), os.environ.get("PYTHONPATH", "")]))
    env.pop("RUST_BACKTRACE", None)  # printing a backtrace allocates too
    try:
        proc = subprocess.run(
            [sys.executable, "-c", TRIAL, path, str(extra_mib << 20), work, cgroup],
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


def _own_memory_cgroup() -> pathlib.Path | None:
    """This process's memory cgroup directory, where a child can be made:
    the v1 memory controller's, else the v2 one's if memory is delegated
    there (this test does not change what the system delegates)."""
    lines = pathlib.Path("/proc/self/cgroup").read_text().splitlines()
    for line in lines:
        _, controllers, rel = line.split(":", 2)
        if "memory" in controllers.split(","):
            return pathlib.Path("/sys/fs/cgroup/memory") / rel.lstrip("/")
    v2 = [line[3:].lstrip("/") for line in lines if line.startswith("0::")]
    mounts = [m.split()[1] for m in pathlib.Path("/proc/self/mounts").read_text().splitlines() if " cgroup2 " in m]
    for own in (pathlib.Path(mount) / rel for mount in mounts for rel in v2):
        control = own / "cgroup.subtree_control"
        if control.exists() and "memory" in control.read_text().split():
            return own
    return None


def _remove_cgroup(cgroup: pathlib.Path, parent: pathlib.Path) -> None:
    for pid in (cgroup / "cgroup.procs").read_text().split():
        (parent / "cgroup.procs").write_text(pid)
    cgroup.rmdir()


@pytest.fixture
def memory_cgroup_parent() -> pathlib.Path:
    own = _own_memory_cgroup()
    if own is None or not own.is_dir() or os.geteuid() != 0:
        pytest.skip(f"no memory cgroup of this process to make a child in ({own}, uid {os.geteuid()})")
    try:
        probe = own / f"dj-accel-probe-{os.getpid()}"
        probe.mkdir()
        probe.rmdir()
    except OSError as e:
        pytest.skip(f"cannot create a memory cgroup under {own}: {e}")
    return own


@pytest.fixture
def make_cgroup(memory_cgroup_parent: pathlib.Path) -> Iterator[Callable[[str], pathlib.Path]]:
    made: list[pathlib.Path] = []

    def make(name: str) -> pathlib.Path:
        cgroup = memory_cgroup_parent / f"dj-accel-{os.getpid()}-{name}"
        cgroup.mkdir()
        made.append(cgroup)
        return cgroup

    yield make
    for cgroup in made:
        if cgroup.exists():
            _remove_cgroup(cgroup, memory_cgroup_parent)


#: (path, first, last and step of the cgroup limit above what the cgroup
#: holds at the move, in MiB). The sweep starts at 1 MiB: at 0 the first page
#: anything touches (the interpreter, loguru, pyarrow) exceeds the limit, and a
#: background save was seen OOM-killed there before it reached a check of ours.
#: The checks ask for the buffers' full size, so the work starts to fit at
#: about 14 to 20 MiB for saves and 28 MiB for the load, although the pages
#: it really faults in are fewer (the saves stream through small buffers).
#: EventLogger() touches almost no new page (its threads' stacks are reserved,
#: not touched), so it works even at the lowest step.
CGROUP_PATHS = [
    ("EventLogger()", 1, 4, 1),
    ("foreground save", 1, 41, 2),
    ("background save", 1, 41, 2),
    ("background save of a filtered dataset", 1, 41, 2),
    ("load", 1, 49, 4),
]


@pytest.mark.parametrize(("path", "first", "top", "step"), CGROUP_PATHS, ids=[p[0] for p in CGROUP_PATHS])
def test_every_cgroup_memory_limit_across_the_need_works_or_raises_memory_error(
    tmp_path, make_cgroup, path, first, top, step
):
    """Each trial builds its data in its own cgroup, moves into a fresh child
    cgroup and works there; an OOM kill shows as rc -9."""
    outcomes = {}
    for extra in range(first, top + 1, step):
        cgroup = make_cgroup(f"{extra}")
        outcomes[extra] = _trial(path, extra, str(tmp_path / f"limit-{extra}"), str(cgroup))
        _remove_cgroup(cgroup, cgroup.parent)
    print(path, outcomes)  # shown with -rP
    allowed = {"ok", "MemoryError", "OSError", "BlockingIOError"}
    assert set(outcomes.values()) <= allowed, outcomes
    assert "ok" in outcomes.values(), outcomes
    if path != "EventLogger()":
        assert outcomes[first] != "ok", f"the steps must cross the need: {outcomes}"
