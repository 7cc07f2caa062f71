"""Why four threads log slower than one: the bench's no-sink ``_log_event``
case, with and without the threads held on one core.

    python benches/thread_scaling.py [N] [ROUNDS]     # default 300,000 events, 10 rounds

Each round runs, interleaved, 1 and 4 threads of the bench loop (this
package, no INFO sink) in three placements:

* ``free``: as the bench runs it, the OS places every thread;
* ``logging threads on cpu 0``: the four Python threads pinned to one core,
  the flush thread free;
* ``flush thread on cpu 1``: only the flush thread pinned.

and the same loop with the logging removed (the bench's no-logging floor),
free and pinned. It prints the median us per event and the 4t/1t rate per
placement. Pinning is a diagnostic, Linux only: the package never pins the
caller's threads. A 4t/1t rate near 1.0 once the Python threads share one
core means the loss comes from the GIL moving between cores at each switch
interval (``sys.getswitchinterval()``), not from the work done per event.
"""

import os
import shutil
import statistics
import sys
import tempfile

from data_juicer_accel.bench import events as bench_events

OP = "language_id_score_filter"
OP_ARGS = {"lang": "en", "min_score": 0.5}
PLACEMENTS = ("free", "logging threads on cpu 0", "flush thread on cpu 1")


def flush_thread_id() -> int:
    for tid in os.listdir("/proc/self/task"):
        with open(f"/proc/self/task/{tid}/comm") as comm:
            if comm.read().strip() == "dj-events-flush":
                return int(tid)
    raise RuntimeError("no dj-events-flush thread in this process")


def logging_loop(log, event_type, per_thread: int, pin: bool):
    def work(t):
        if pin:
            os.sched_setaffinity(0, {0})
        for i in range(per_thread):
            message = f"Operation {OP} (idx {i}) started"
            log(event_type, message, partition_id=t, operation_name=OP, operation_idx=i, op_args=OP_ARGS)

    return work


def us_per_event(module, placement: str, threads: int, n: int) -> float:
    """One run of the bench's no-sink case; checks every line is in the file."""
    event_type = module.EventType.OP_START
    per_thread = n // threads
    work_dir = tempfile.mkdtemp(prefix="dja-scaling-")
    with bench_events.loguru_sinks("none", work_dir):
        executor = bench_events.make_executor(module, work_dir)
        executor._log_event(event_type, "starts the flush thread")
        executor.event_logger.flush()
        if placement == "flush thread on cpu 1":
            os.sched_setaffinity(flush_thread_id(), {1})
        work = logging_loop(executor._log_event, event_type, per_thread, placement == "logging threads on cpu 0")
        seconds = bench_events.run_timed(threads, work, executor.event_logger.flush)
        bench_events.close_executor(executor)
    path = executor.event_logger.jsonl_file
    lines = bench_events.count_lines(path)
    shutil.rmtree(work_dir, ignore_errors=True)
    if lines != per_thread * threads + 1:
        raise AssertionError(f"{path}: {lines} lines for {per_thread * threads + 1} events")
    return seconds / (per_thread * threads) * 1e6


def floor_us_per_event(module, pin: bool, threads: int, n: int) -> float:
    """The same loop calling a no-op ``_log_event``."""
    per_thread = n // threads
    caller = bench_events._without_logging(module, "_log_event")
    work = logging_loop(caller._log_event, module.EventType.OP_START, per_thread, pin)
    return bench_events.run_timed(threads, work) / (per_thread * threads) * 1e6


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 300_000
    rounds = int(sys.argv[2]) if len(sys.argv) > 2 else 10
    if os.cpu_count() < 2 or not hasattr(os, "sched_setaffinity"):
        sys.exit("needs Linux and two cores")
    module = bench_events.load_accel()
    results = {}
    for _ in range(rounds):
        for threads in (1, 4):
            for placement in PLACEMENTS:
                results.setdefault((placement, threads), []).append(us_per_event(module, placement, threads, n))
            for pin in (False, True):
                label = "no logging, " + ("threads on cpu 0" if pin else "free")
                results.setdefault((label, threads), []).append(floor_us_per_event(module, pin, threads, n))
    interval_ms = sys.getswitchinterval() * 1e3
    print(f"{n:,} events per run, {rounds} rounds, median us per event; switch interval {interval_ms:g} ms")
    for label in dict.fromkeys(label for label, _ in results):
        one, four = statistics.median(results[(label, 1)]), statistics.median(results[(label, 4)])
        per_round = " ".join(f"{a / b:.2f}" for a, b in zip(results[(label, 1)], results[(label, 4)], strict=True))
        print(f"{label:34s} 1t {one:6.3f}  4t {four:6.3f}  4t/1t rate {one / four:5.3f}   rounds: {per_round}")


if __name__ == "__main__":
    main()
