"""A/B of the no-sink ``_log_event`` loop between two builds of the package, run alternately.

    python benches/ab_events.py DIR_A DIR_B [N] [ROUNDS] [THREADS]
    # default 1,000,000 events, 10 rounds, 1 thread

DIR_A and DIR_B each hold a built ``data_juicer_accel`` package directory,
e.g. copies of ``python/data_juicer_accel`` after ``pip install -e .`` at two
commits. Each round runs one fresh process per build (that directory first on
PYTHONPATH): 20,000 warm-up events, then N ``_log_event`` calls split over
THREADS threads, timed until every line is in the file, as the bench's "no INFO sink" case.
Prints the median us per event of each build and B/A per round.
"""

import os
import statistics
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))

ONE_RUN = """
import shutil, sys, tempfile
from loguru import logger
sys.path.insert(0, sys.argv[1])
import event_loop
from data_juicer_accel.bench import events as bench_events
build, n, threads = sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
assert event_loop.events.__file__.startswith(build), event_loop.events.__file__
logger.remove()
work_dir = tempfile.mkdtemp(prefix="dja-ab-")
try:
    executor = event_loop.Executor(work_dir)
    event_loop.loop(executor, 20_000)
    executor.event_logger.flush()
    seconds = bench_events.log_events(executor, n, threads, "_log_event", event_loop.events.EventType.OP_START)
    executor.event_logger.close()
finally:
    shutil.rmtree(work_dir, ignore_errors=True)
print(seconds / n * 1e6)
"""


def us_per_event(build: str, n: int, threads: int) -> float:
    env = dict(os.environ, PYTHONPATH=build)
    done = subprocess.run(
        [sys.executable, "-c", ONE_RUN, HERE, os.path.abspath(build), str(n), str(threads)],
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode:
        sys.exit(f"{build}: {done.stderr}")
    return float(done.stdout.split()[-1])


def main() -> None:
    if len(sys.argv) < 3:
        sys.exit(__doc__)
    builds = sys.argv[1:3]
    n = int(sys.argv[3]) if len(sys.argv) > 3 else 1_000_000
    rounds = int(sys.argv[4]) if len(sys.argv) > 4 else 10
    threads = int(sys.argv[5]) if len(sys.argv) > 5 else 1
    results = {build: [] for build in builds}
    for _ in range(rounds):
        for build in builds:
            results[build].append(us_per_event(build, n, threads))
    for build, times in results.items():
        print(f"{build}: median {statistics.median(times):.3f} us per event  ({' '.join(f'{t:.2f}' for t in times)})")
    a, b = (results[build] for build in builds)
    print("B/A per round:", " ".join(f"{y / x:.2f}" for x, y in zip(a, b, strict=True)))


if __name__ == "__main__":
    main()
