"""Where a background ``save_ckpt`` of a large table spends the caller's time.

    python benches/stall_breakdown.py 1GB 5

Saves the bench corpus with ``CheckpointManager(background=True)`` ``ROUNDS``
times in each of three situations: right after the previous commit, after
0.3 s asleep, and after 0.3 s of Python busy work (as after an op). Each save
prints its total stall and the time of each step of ``_queue_save``
(``ckpt_utils``) and ``queue_save`` (``ckpt_background``).
"""

import os
import shutil
import statistics
import sys
import tempfile
import time

from data_juicer_accel.bench.corpus import default_corpus, parse_size
from data_juicer_accel.utils import ckpt_background, ckpt_sources, ckpt_utils
from data_juicer_accel.utils.ckpt_utils import CheckpointManager

steps: list[tuple[str, float]] = []


def timed(owner, name, label=None):
    function = getattr(owner, name)

    def wrapper(*args, **kwargs):
        start = time.perf_counter()
        try:
            return function(*args, **kwargs)
        finally:
            steps.append((label or name, time.perf_counter() - start))

    setattr(owner, name, wrapper)


class TimedWriter:
    """The native writer, its ``submit`` timed."""

    def __init__(self, writer):
        self.writer = writer
        timed(self, "submit", "native submit")

    def submit(self, *args, **kwargs):
        return self.writer.submit(*args, **kwargs)

    def __getattr__(self, name):
        return getattr(self.writer, name)


def busy(seconds):
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        pass


# Each step is timed where it is looked up when a save calls it.
for owner, name in (
    (ckpt_utils, "_describe_source"),
    (ckpt_utils, "make_ckpt_dir"),
    (ckpt_sources, "_background_sizing"),
    (ckpt_background, "_state_template"),
):
    timed(owner, name)

table = default_corpus(parse_size(sys.argv[1]))
rounds = int(sys.argv[2])
workdir = tempfile.mkdtemp(prefix="stall-breakdown-")
try:
    manager = CheckpointManager(os.path.join(workdir, "ckpt"), [], num_proc=2, background=True)
    manager.save_ckpt(table.slice(0, 10))
    manager.wait()
    saves = manager._background_saves
    saves.writer = TimedWriter(saves.writer)
    results: dict[str, list] = {}
    for _ in range(rounds):
        for case, before in (("after a commit", None), ("after 0.3 s asleep", time.sleep), ("after 0.3 s busy", busy)):
            if before is not None:
                before(0.3)
            steps.clear()
            start = time.perf_counter()
            manager.save_ckpt(table)
            results.setdefault(case, []).append((time.perf_counter() - start, list(steps)))
            manager.wait()
    saves.writer = saves.writer.writer
    manager.close()
finally:
    shutil.rmtree(workdir, ignore_errors=True)
for case, runs in results.items():
    print(f"{case}: median stall {statistics.median(total for total, _ in runs) * 1e3:.2f} ms")
    for total, parts in runs:
        print(f"    {total * 1e3:6.2f} ms:", ", ".join(f"{name} {seconds * 1e3:.2f}" for name, seconds in parts))
