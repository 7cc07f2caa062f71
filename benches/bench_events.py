"""Events per second: py-data-juicer 1.6.1 vs data_juicer_accel.

Same loguru set-up for both: every handler removed, one WARNING sink (no
INFO sink). Run: python benches/bench_events.py [--events N] [--threads T]
"""

import argparse
import importlib.util
import os
import sys
import tempfile
import threading
import time
from types import SimpleNamespace

from loguru import logger

REFERENCE_FILE = "data_juicer/core/executor/event_logging_mixin.py"


def load_reference():
    """The reference module, loaded from its file so that importing the
    data_juicer.core.executor package (and its lazy installs) is avoided."""
    for base in sys.path:
        path = os.path.join(base, REFERENCE_FILE)
        if os.path.exists(path):
            spec = importlib.util.spec_from_file_location("dj_reference_event_logging", path)
            module = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(module)
            return module
    raise SystemExit("py-data-juicer 1.6.1 is not installed")


def make_executor(mixin_cls, work_dir):
    class Executor(mixin_cls):
        def __init__(self):
            self.cfg = SimpleNamespace(job_id="bench", event_logging={"enabled": True})
            self.work_dir = work_dir
            self.executor_type = "bench"
            super().__init__()

    return Executor()


def run(executor, events, threads, call):
    per_thread = events // threads

    def work(t):
        for i in range(per_thread):
            call(executor, t, i)

    workers = [threading.Thread(target=work, args=(t,)) for t in range(threads)]
    start = time.perf_counter()
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    flush = getattr(executor.event_logger, "flush", None)
    if flush:
        flush()
    return per_thread * threads / (time.perf_counter() - start)


CALLS = {
    "_log_event": lambda ex, t, i: ex._log_event(ex.EventType.OP_START, "op started", partition_id=t, operation_idx=i),
    "log_op_start": lambda ex, t, i: ex.log_op_start(t, "clean_op", i, {"lang": "en", "min": 0.5}),
}


def analysis_bench(reference, accel, n_events, work_dir):
    """Time analyze_resumption_state on a log of n_events lines written by us."""
    executor = make_executor(accel.EventLoggingMixin, os.path.join(work_dir, "analysis"))
    partitions = 1000
    for i in range(n_events):
        p = i % partitions
        executor.log_op_start(p, "clean_op", i // partitions, {"lang": "en"})
    executor.event_logger.flush()
    start = time.perf_counter()
    executor.analyze_resumption_state("bench")
    ours = time.perf_counter() - start
    ref_executor = make_executor(reference.EventLoggingMixin, os.path.join(work_dir, "analysis_ref"))
    ref_executor.event_logger.jsonl_file = executor.event_logger.jsonl_file
    start = time.perf_counter()
    ref_executor.analyze_resumption_state("bench")
    return ours, time.perf_counter() - start


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--analysis-events", type=int, default=0)
    args = parser.parse_args()
    logger.remove()
    logger.add(sys.stderr, level="WARNING")
    reference = load_reference()
    import data_juicer_accel.core.executor.event_logging_mixin as accel

    with tempfile.TemporaryDirectory() as work_dir:
        for name, call in CALLS.items():
            for threads in (1, 4):
                rates = {}
                for label, module in (("reference", reference), ("accel", accel)):
                    executor = make_executor(
                        module.EventLoggingMixin, os.path.join(work_dir, f"{label}_{name}_{threads}")
                    )
                    executor.EventType = module.EventType
                    n = args.events if label == "accel" else max(args.events // 10, 1000)
                    rates[label] = run(executor, n, threads, call)
                print(
                    f"{name:13s} threads={threads}: reference {rates['reference']:>10,.0f} ev/s, "
                    f"accel {rates['accel']:>10,.0f} ev/s, x{rates['accel'] / rates['reference']:.1f}"
                )
        if args.analysis_events:
            ours, ref = analysis_bench(reference, accel, args.analysis_events, work_dir)
            print(
                f"analyze_resumption_state, {args.analysis_events:,} events: reference {ref:.2f}s, "
                f"accel {ours:.3f}s, x{ref / ours:.0f}"
            )


if __name__ == "__main__":
    main()
