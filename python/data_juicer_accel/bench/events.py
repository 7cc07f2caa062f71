"""Job-event logging cases: this package against py-data-juicer 1.6.1.

Both are driven the way an executor drives them: an object mixing in
``EventLoggingMixin`` calls ``log_op_start(...)`` (which builds an ``Event``
through ``_log_event`` and hands it to ``EventLogger.log_event``). A rate
counts from the first call until every event is in the JSONL file (this
package's ``flush()`` is inside the timing) and the file is checked to hold
one line per event. Two loguru set-ups: no INFO sink (one WARNING sink on
stderr), and an INFO file sink added to it.
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import os
import sys
import threading
import time
from types import SimpleNamespace

ACCEL_MODULE = "data_juicer_accel.core.executor.event_logging_mixin"
REFERENCE_FILE = os.path.join("core", "executor", "event_logging_mixin.py")
SINKS = ("none", "info-file")
#: How an executor logs: the public ``log_op_start`` (builds its metadata in
#: Python, then calls ``_log_event``), and ``_log_event`` itself, which every
#: ``log_*`` method ends in.
CALLS = ("_log_event", "log_op_start")
NOT_AVAILABLE = "events module not available"


def load_accel():
    """This package's events module, or None (it may not be merged yet)."""
    try:
        return importlib.import_module(ACCEL_MODULE)
    except ImportError:
        return None


def load_reference():
    """py-data-juicer's event_logging_mixin, loaded from its file, or None.

    Importing it as ``data_juicer.core.executor...`` would run that package's
    ``__init__``, which imports the executors and, through Data-Juicer's lazy
    loader, may try to pip-install torch; the file itself needs only loguru.
    """
    spec = importlib.util.find_spec("data_juicer")
    if spec is None or not spec.submodule_search_locations:
        return None
    for base in spec.submodule_search_locations:
        path = os.path.join(base, REFERENCE_FILE)
        if os.path.exists(path):
            module_spec = importlib.util.spec_from_file_location("_dj_reference_event_logging_mixin", path)
            if module_spec is None or module_spec.loader is None:
                return None
            module = importlib.util.module_from_spec(module_spec)
            module_spec.loader.exec_module(module)
            return module
    return None


def implementations() -> dict:
    """{'accel': module or None, 'reference': module or None}."""
    return {"accel": load_accel(), "reference": load_reference()}


def make_executor(module, work_dir: str, job_id: str = "bench"):
    class BenchExecutor(module.EventLoggingMixin):
        def __init__(self):
            self.cfg = SimpleNamespace(job_id=job_id, event_logging={"enabled": True})
            self.work_dir = work_dir
            self.executor_type = "bench"
            super().__init__()

    return BenchExecutor()


def close_executor(executor) -> None:
    close = getattr(executor.event_logger, "close", None)
    if close is not None:
        close()


class loguru_sinks:
    """``with loguru_sinks('info-file', dir):`` -- the loguru set-up of a case."""

    def __init__(self, sink: str, work_dir: str):
        self.sink, self.work_dir = sink, work_dir

    def __enter__(self):
        from loguru import logger

        logger.remove()
        self.ids = [logger.add(sys.stderr, level="WARNING")]
        if self.sink == "info-file":
            self.ids.append(logger.add(os.path.join(self.work_dir, "info.log"), level="INFO"))
        return self

    def __exit__(self, *exc):
        from loguru import logger

        logger.remove()
        logger.add(sys.stderr, level="WARNING")


def count_lines(path) -> int:
    with open(path, "rb") as f:
        return sum(chunk.count(b"\n") for chunk in iter(lambda: f.read(1 << 20), b""))


def run_timed(threads: int, work, finish=None) -> float:
    """Seconds from releasing ``threads`` threads running ``work(t)`` at once
    until all have returned and ``finish()`` (if given) has run."""
    barrier = threading.Barrier(threads + 1)

    def body(t):
        barrier.wait()
        work(t)

    workers = [threading.Thread(target=body, args=(t,)) for t in range(threads)]
    for w in workers:
        w.start()
    barrier.wait()
    start = time.perf_counter()
    for w in workers:
        w.join()
    if finish is not None:
        finish()
    return time.perf_counter() - start


def log_events(executor, n_events: int, threads: int, call: str = "log_op_start", event_type=None) -> float:
    """Seconds to log ``n_events`` (split over ``threads`` threads) and have
    them all in the JSONL file."""
    per_thread = n_events // threads
    op_args = {"lang": "en", "min_score": 0.5}
    name = "language_id_score_filter"

    def work(t):
        if call == "log_op_start":
            log = executor.log_op_start
            for i in range(per_thread):
                log(t, name, i, op_args)
        else:
            log = executor._log_event
            for i in range(per_thread):
                log(
                    event_type,
                    f"Operation {name} (idx {i}) started",
                    partition_id=t,
                    operation_name=name,
                    operation_idx=i,
                    op_args=op_args,
                )

    return run_timed(threads, work, getattr(executor.event_logger, "flush", None))


def events_case(module, work_dir: str, n_events: int, threads: int, sink: str, call: str = "log_op_start") -> float:
    """Events per second of one case; checks the file holds every event."""
    os.makedirs(work_dir, exist_ok=True)
    with loguru_sinks(sink, work_dir):
        executor = make_executor(module, work_dir)
        try:
            n_events = n_events // threads * threads
            seconds = log_events(executor, n_events, threads, call, module.EventType.OP_START)
        finally:
            close_executor(executor)
        lines = count_lines(executor.event_logger.jsonl_file)
    if lines != n_events:
        raise AssertionError(f"{executor.event_logger.jsonl_file}: {lines} lines for {n_events} events")
    return n_events / seconds


class _NoLoggingCaller:
    """Takes ``_log_event`` calls and does nothing: the caller's own cost."""

    event_logger = None

    def _log_event(self, event_type, message, **kwargs):
        pass


def _without_logging(module, call: str):
    """An executor on which ``call`` runs with no logging behind it: for
    ``_log_event`` a no-op method; for ``log_op_start`` the module's own
    body (1.6.1's, the same in both packages) ending in a no-op ``_log_event``."""
    if call == "_log_event":
        return _NoLoggingCaller()

    class BodyOnly(module.EventLoggingMixin):
        event_logger = None

        def __init__(self):  # no event logger, no files
            pass

        def _log_event(self, event_type, message, **kwargs):
            pass

    return BodyOnly()


def interpreter_floor(module, n_events: int, threads: int, call: str) -> float:
    """Seconds per call of the bench's loop with the logging removed: what no
    event logger can go below, on one thread or shared by ``threads``."""
    n_events = n_events // threads * threads
    executor = _without_logging(module, call)
    return log_events(executor, n_events, threads, call, module.EventType.OP_START) / n_events


def loguru_info_floor(work_dir: str, n: int = 20_000, threads: int = 1) -> float:
    """Seconds per line of loguru ``logger.info`` calls of a typical event
    line with an INFO file sink, from ``threads`` threads at once: the least
    an event costs when INFO goes to a file."""
    from loguru import logger

    os.makedirs(work_dir, exist_ok=True)
    line = (
        "EVENT[op_start] | TIME[2026-11-28T21:00:00.000000] | PARTITION[1] | OP[language_id_score_filter] | "
        "OP_IDX[7] | MSG[Operation language_id_score_filter (idx 7) started on partition 1] | "
        'META[{"operation_class": "language_id_score_filter"}]'
    )
    per_thread = n // threads

    def work(_t):
        info = logger.info
        for _ in range(per_thread):
            info(line)

    with loguru_sinks("info-file", work_dir):
        return run_timed(threads, work) / (per_thread * threads)


# --------------------------------------------------------------------------
# analyze_resumption_state on a large log
# --------------------------------------------------------------------------


def write_event_log(path: str, n_events: int, partitions: int = 500, seed: int = 7) -> int:
    """A job's JSONL event log in the reference's format: partitions run
    their ops (op_start/op_complete, a checkpoint_save every 10 ops), most
    complete, ~2% fail and are retried, the last ones are still running.
    Returns the number of lines written."""
    import random

    rng = random.Random(seed)
    ops_per_partition = max(1, (n_events // partitions - 3) // 2)
    now = 1_764_000_000.0
    written = 0

    def line(f, event_type, message, **fields):
        nonlocal now, written
        now += 0.001
        record = {
            "event_type": event_type,
            "timestamp": now,
            "message": message,
            "event_id": f"{event_type}_{int(now)}_{rng.getrandbits(32):08x}",
            "job_id": "bench",
            **fields,
            "process_id": 4242,
            "thread_id": 140000000000000 + fields.get("partition_id", 0),
        }
        f.write(json.dumps(record) + "\n")
        written += 1

    with open(path, "w") as f:
        line(f, "job_start", "Job started", metadata={"total_partitions": partitions}, total_partitions=partitions)
        for p in range(partitions):
            if written >= n_events:
                break
            line(f, "partition_start", f"Partition {p} started", partition_id=p, metadata={"rows": 10000})
            for op in range(ops_per_partition):
                name = f"op_{op % 12}"
                line(
                    f,
                    "op_start",
                    f"Operation {name} (idx {op}) started on partition {p}",
                    partition_id=p,
                    operation_name=name,
                    operation_idx=op,
                    op_args={"lang": "en"},
                    metadata={"operation_idx": op, "operation_class": name},
                )
                line(
                    f,
                    "op_complete",
                    f"Operation {name} (idx {op}) completed on partition {p}",
                    partition_id=p,
                    operation_name=name,
                    operation_idx=op,
                    duration=0.5,
                    input_rows=10000,
                    output_rows=9900,
                    metadata={"duration": 0.5},
                )
                if op % 10 == 9:
                    line(
                        f,
                        "checkpoint_save",
                        f"Checkpoint saved for partition {p}",
                        partition_id=p,
                        checkpoint_path=f"/ckpt/p{p}_op{op}.parquet",
                        metadata={"checkpoint_path": f"/ckpt/p{p}_op{op}.parquet"},
                    )
            if p >= partitions - 3:
                continue  # still running
            success = rng.random() > 0.02
            if not success:
                line(f, "partition_failed", f"Partition {p} failed", partition_id=p, error_message="boom")
            line(
                f,
                "partition_complete",
                f"Partition {p} completed",
                partition_id=p,
                metadata={"success": success, "duration_seconds": 12.0, "error": None if success else "boom"},
            )
    return written


def analysis_case(module, work_dir: str, log_file: str) -> tuple[float, dict]:
    """Seconds ``analyze_resumption_state`` takes on ``log_file``, and its answer."""
    from loguru import logger

    logger.remove()
    logger.add(sys.stderr, level="WARNING")
    executor = make_executor(module, work_dir)
    try:
        executor.event_logger.jsonl_file = log_file
        start = time.perf_counter()
        result = executor.analyze_resumption_state("bench")
        return time.perf_counter() - start, result
    finally:
        close_executor(executor)


def analysis_summary(result: dict) -> dict:
    """The parts of an analysis both implementations must agree on (the
    reference misses checkpoint_save events, so the checkpoint is left out)."""
    return {
        "job_status": result.get("job_status"),
        "total_events": result.get("total_events"),
        "partitions": len(result.get("partition_states", {})),
        "partitions_to_retry": sorted(result.get("partitions_to_retry", [])),
        "partitions_to_skip": sorted(result.get("partitions_to_skip", [])),
    }
