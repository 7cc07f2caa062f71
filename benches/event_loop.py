"""The bench's ``_log_event`` loop on its own, for profilers, and its breakdown.

    python benches/event_loop.py [N]            # N events (default 1,000,000), no loguru sink
    N=30000 valgrind --tool=callgrind python benches/event_loop.py 30000   # instructions per event:
                                                # (run with N) - (run with 0), divided by N
    python benches/event_loop.py --breakdown    # timeit: the whole call, the native call, log_fields

Loguru has no sink, as in the bench's "no INFO sink" case (a DEBUG sink would
send every event down the verbose Python path).
"""

import shutil
import sys
import tempfile
import timeit
from types import SimpleNamespace

from loguru import logger

from data_juicer_accel.core.executor import event_logging_mixin as events

OP = "language_id_score_filter"
OP_ARGS = {"lang": "en", "min_score": 0.5}


class Executor(events.EventLoggingMixin):
    def __init__(self, work_dir: str):
        self.cfg = SimpleNamespace(job_id="bench", event_logging={"enabled": True})
        self.work_dir = work_dir
        self.executor_type = "bench"
        super().__init__()


def loop(executor: Executor, n: int) -> None:
    log, event_type = executor._log_event, events.EventType.OP_START
    for i in range(n):
        message = f"Operation {OP} (idx {i}) started"
        log(event_type, message, partition_id=1, operation_name=OP, operation_idx=i, op_args=OP_ARGS)


def breakdown(executor: Executor, n: int = 300_000) -> None:
    event_type, message = events.EventType.OP_START, f"Operation {OP} (idx 3) started"
    kwargs = dict(partition_id=1, operation_name=OP, operation_idx=3, op_args=OP_ARGS)
    sink = executor.event_logger._sink
    cases = {
        "executor._log_event(...), the caller's f-string included": lambda: executor._log_event(
            event_type, f"Operation {OP} (idx {n}) started", **kwargs
        ),
        "the native call alone (_FAST_PATH.log)": lambda: events._FAST_PATH.log(executor, event_type, message, kwargs),
        "EventSink.log_fields alone": lambda: sink.log_fields(event_type, message, kwargs, "bench", False),
    }
    for label, call in cases.items():
        best = min(timeit.repeat(call, number=n, repeat=5)) / n
        print(f"{label:60s} {best * 1e6:.3f} us")


def main() -> None:
    logger.remove()
    work_dir = tempfile.mkdtemp(prefix="dja-event-loop-")
    try:
        executor = Executor(work_dir)
        if "--breakdown" in sys.argv[1:]:
            breakdown(executor)
        else:
            loop(executor, int(sys.argv[1]) if len(sys.argv) > 1 else 1_000_000)
        executor.event_logger.close()
    finally:  # a million events are ~330 MB
        shutil.rmtree(work_dir, ignore_errors=True)


if __name__ == "__main__":
    main()
