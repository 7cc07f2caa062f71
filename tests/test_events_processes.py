"""Events in the process models Data-Juicer pipelines run in.

* Workers that end without exit hooks (``os._exit``, ``Pool.terminate``,
  the pool's context-manager exit, ``multiprocess`` pools, process pool
  executors) keep every event they logged: worker processes write through.
* Daemon threads inside a native call (save, load, log, flush) when the
  interpreter exits: the process exits normally, with every event whose
  logging call returned on disk.
* Ids generated in a forked child differ from the parent's.
* No Rust panic reaches Python; the reference's exception instead.
* ``flush_interval: 0`` writes each line before ``log_event`` returns, and the
  file exists from the logger's construction.

Each exit scenario runs 20 times. No timing assertions.
"""

import concurrent.futures
import json
import multiprocessing
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

import data_juicer_accel.core.executor.event_logging_mixin as accel
from data_juicer_accel.bench.events import load_reference

reference = load_reference()
MODULES = {"accel": accel, "reference": reference}
EVENTS_PER_TASK = 25
TASKS = 4  # 100 events in all

needs_fork = pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")


def module_named(name):
    module = MODULES[name]
    if module is None:
        pytest.skip("py-data-juicer 1.6.1 is not installed")
    return module


def event_ids_in(directory):
    ids = []
    for path in Path(directory).glob("events_*.jsonl"):
        for line in path.read_text().splitlines():
            if line.strip():
                ids.append(json.loads(line)["event_id"])
    return ids


def expected_ids():
    return sorted(f"e{task}-{i}" for task in range(TASKS) for i in range(EVENTS_PER_TASK))


# One logger per (module, directory) and process. Made in the parent before a
# fork pool starts, so fork workers use the parent's logger; spawn and
# forkserver workers make their own.
_LOGGERS = {}


def logger_for(module_name, directory):
    key = (module_name, directory)
    if key not in _LOGGERS:
        _LOGGERS[key] = module_named(module_name).EventLogger(directory, job_id="workers")
    return _LOGGERS[key]


def log_task(args):
    """Logs EVENTS_PER_TASK events; the worker is left running (no close)."""
    module_name, directory, task = args
    module = module_named(module_name)
    event_logger = logger_for(module_name, directory)
    for i in range(EVENTS_PER_TASK):
        event = module.Event(
            event_type=module.EventType.OP_START,
            timestamp=time.time(),
            message=f"task {task} event {i}",
            event_id=f"e{task}-{i}",
        )
        event_logger.log_event(event)
    return os.getpid()


def tasks_for(module_name, directory):
    return [(module_name, str(directory), task) for task in range(TASKS)]


def run_pool(kind, module_name, directory):
    """Runs the tasks in worker processes that end as `kind` ends them."""
    tasks = tasks_for(module_name, directory)
    if kind == "os_fork_os_exit":
        logger_for(module_name, str(directory))
        for task in tasks:
            pid = os.fork()
            if pid == 0:
                try:
                    log_task(task)
                finally:
                    os._exit(0)
            os.waitpid(pid, 0)
        return
    library, method, ending = kind.split(":")
    if method == "fork":
        logger_for(module_name, str(directory))
    if library == "executor":
        context = multiprocessing.get_context(method)
        with concurrent.futures.ProcessPoolExecutor(2, mp_context=context) as pool:
            list(pool.map(log_task, tasks))
        return
    mp = pytest.importorskip("multiprocess") if library == "multiprocess" else multiprocessing
    context = mp.get_context(method)
    if ending == "with":  # __exit__ terminates the workers
        with context.Pool(2) as pool:
            pool.map(log_task, tasks)
    elif ending == "terminate":
        pool = context.Pool(2)
        pool.map(log_task, tasks)
        pool.terminate()
        pool.join()
    else:
        pool = context.Pool(2)
        pool.map(log_task, tasks)
        pool.close()
        pool.join()


POOL_KINDS = [
    "os_fork_os_exit",
    "multiprocessing:fork:with",
    "multiprocessing:fork:terminate",
    "multiprocessing:fork:close",
    "multiprocessing:spawn:with",
    "multiprocessing:forkserver:terminate",
    "multiprocess:fork:with",
    "multiprocess:fork:close",
    "multiprocess:spawn:terminate",
    "executor:fork:shutdown",
    "executor:spawn:shutdown",
]


@needs_fork
@pytest.mark.parametrize("kind", POOL_KINDS)
@pytest.mark.parametrize("module_name", ["accel", "reference"])
def test_every_event_a_worker_logged_is_in_the_file(tmp_path, kind, module_name):
    if module_name == "reference" and "spawn" in kind or "forkserver" in kind and module_name == "reference":
        pytest.skip("the reference writes synchronously; its fork cases suffice")
    run_pool(kind, module_name, str(tmp_path))
    assert sorted(event_ids_in(tmp_path)) == expected_ids()


def test_a_worker_process_writes_through_and_the_main_process_buffers(tmp_path):
    assert accel._in_worker_process() is False
    context = multiprocessing.get_context("spawn")
    with context.Pool(1) as pool:
        assert pool.apply(accel._in_worker_process) is True


# --- ids across fork ---------------------------------------------------------


def make_executor(work_dir, **event_logging):
    class Executor(accel.EventLoggingMixin):
        def __init__(self):
            self.cfg = SimpleNamespace(job_id="ids", event_logging={"enabled": True, **event_logging})
            self.work_dir = work_dir
            self.executor_type = "default"
            super().__init__()

    return Executor()


@needs_fork
def test_a_forked_child_generates_ids_of_its_own(tmp_path):
    executor = make_executor(str(tmp_path), flush_interval=3600)
    executor._log_event(accel.EventType.OP_START, "seeds the generator")
    pid = os.fork()
    if pid == 0:
        try:
            for _ in range(50):
                executor._log_event(accel.EventType.OP_START, "child")
        finally:
            os._exit(0)
    os.waitpid(pid, 0)
    for _ in range(50):
        executor._log_event(accel.EventType.OP_START, "parent")
    executor.event_logger.flush()
    lines = [json.loads(line) for line in executor.event_logger.jsonl_file.read_text().splitlines()]
    child = {line["event_id"] for line in lines if line["message"] == "child"}
    parent = {line["event_id"] for line in lines if line["message"] == "parent"}
    assert len(child) == len(parent) == 50
    assert not child & parent


# --- no panic into Python ------------------------------------------------------


class MutatesWhenPrinted:
    def __init__(self, target):
        self.target = target

    def __str__(self):
        for i in range(100):
            self.target[f"added_{i}"] = i
        return "mutated"


@pytest.mark.parametrize("module_name", ["accel", "reference"])
@pytest.mark.parametrize("path", ["log_event", "_log_event"])
@pytest.mark.parametrize("plain_items_first", [False, True])
def test_a_value_that_mutates_the_dict_being_logged_is_a_type_error(tmp_path, module_name, path, plain_items_first):
    module = module_named(module_name)
    metadata = {"lang": "en", "min_score": 0.5, "n": 3, "ok": True, "none": None} if plain_items_first else {}
    metadata["value"] = MutatesWhenPrinted(metadata)
    if path == "log_event":
        event_logger = module.EventLogger(str(tmp_path), job_id="j")
        event = module.Event(
            event_type=module.EventType.OP_START, timestamp=time.time(), message="m", metadata=metadata
        )
        with pytest.raises(TypeError):
            event_logger.log_event(event)
    else:
        executor = make_reference_or_accel_executor(module, str(tmp_path))
        with pytest.raises(TypeError):
            executor._log_event(module.EventType.OP_START, "m", metadata=metadata)


def make_reference_or_accel_executor(module, work_dir):
    class Executor(module.EventLoggingMixin):
        def __init__(self):
            self.cfg = SimpleNamespace(job_id="j", event_logging={"enabled": True})
            self.work_dir = work_dir
            self.executor_type = "default"
            super().__init__()

    return Executor()


# --- write-through -------------------------------------------------------------


def test_the_file_exists_from_the_loggers_construction(tmp_path):
    event_logger = accel.EventLogger(str(tmp_path), job_id="j")
    assert event_logger.jsonl_file.exists()
    assert event_logger.jsonl_file.read_text() == ""


@pytest.mark.parametrize("how", ["cfg", "argument"])
def test_flush_interval_zero_writes_each_line_before_log_event_returns(tmp_path, how):
    if how == "cfg":
        executor = make_executor(str(tmp_path), flush_interval=0)
        event_logger = executor.event_logger
        log = lambda i: executor.log_op_start(0, f"op{i}", i, {})  # noqa: E731
    else:
        event_logger = accel.EventLogger(str(tmp_path), job_id="j", flush_interval=0)

        def log(i):
            event = accel.Event(event_type=accel.EventType.OP_START, timestamp=time.time(), message=f"op{i}")
            event_logger.log_event(event)

    for i in range(20):
        log(i)
        assert len(event_logger.jsonl_file.read_text().splitlines()) == i + 1


def test_the_buffered_default_keeps_lines_in_memory_until_a_flush(tmp_path):
    event_logger = accel.EventLogger(str(tmp_path), job_id="j", flush_interval=3600)
    event_logger.log_event(accel.Event(event_type=accel.EventType.OP_START, timestamp=time.time(), message="m"))
    assert event_logger.jsonl_file.read_text() == ""
    event_logger.flush()
    assert len(event_logger.jsonl_file.read_text().splitlines()) == 1


# --- daemon threads at exit ----------------------------------------------------

EXIT_PRELUDE = """
import os, sys, threading, time
import pyarrow as pa
work_dir = sys.argv[1]
progress = os.open(os.path.join(work_dir, "progress"), os.O_WRONLY | os.O_CREAT | os.O_APPEND)

def returned(event_id):
    # Recorded only once the logging call returned: that event must be on disk.
    os.write(progress, f"{event_id}\\n".encode())

def next_id(i):
    return f"{threading.get_ident()}-{i}"

def log(event_logger, event_id):
    from data_juicer_accel.core.executor.event_logging_mixin import Event, EventType
    event = Event(event_type=EventType.OP_START, timestamp=time.time(), message="m", event_id=event_id)
    event_logger.log_event(event)
"""

# The executor way: the C method `_log_event`, not EventLogger.log_event.
EXECUTOR_LOOP = """
from types import SimpleNamespace
from data_juicer_accel.core.executor.event_logging_mixin import EventLoggingMixin, EventType
class Executor(EventLoggingMixin):
    def __init__(self):
        self.cfg = SimpleNamespace(job_id="exit", event_logging={"enabled": True})
        self.work_dir = work_dir
        self.executor_type = "default"
        super().__init__()
executor = Executor()
def work():
    i = 0
    while True:
        executor._log_event(EventType.OP_START, "m", event_id=next_id(i))
        returned(next_id(i))
        i += 1
"""

# The EventLogger way; OPTIONS: more arguments of its constructor.
LOGGER_LOOP = """
from data_juicer_accel.core.executor.event_logging_mixin import EventLogger
event_logger = EventLogger(work_dir, job_id="exit"OPTIONS)
def work():
    i = 0
    while True:
        log(event_logger, next_id(i))
        returned(next_id(i))
        i += 1
"""

EXIT_SCENARIOS = {
    "log_buffered": LOGGER_LOOP.replace("OPTIONS", ""),
    "log_write_through": LOGGER_LOOP.replace("OPTIONS", ", flush_interval=0"),
    # loguru's default DEBUG sink: every call goes on to the Python method.
    "log_executor": EXECUTOR_LOOP,
    "log_executor_fast_path": "from loguru import logger\nlogger.remove()  # no DEBUG sink: calls stay in Rust\n"
    + EXECUTOR_LOOP,
    "small_queue_and_flush": """
from data_juicer_accel.core.executor.event_logging_mixin import EventLogger
event_logger = EventLogger(work_dir, job_id="exit", queue_size=2)
def work():
    i = 0
    while True:
        log(event_logger, next_id(i))
        returned(next_id(i))
        event_logger.flush()
        i += 1
""",
    "save": """
from data_juicer_accel.utils.ckpt_utils import CheckpointManager
table = pa.table({"text": ["x" * 1000] * 20000})
def work():
    # One checkpoint directory per thread: a directory takes one writer at a time.
    ckpt_dir = os.path.join(work_dir, f"ckpt-{threading.get_ident()}")
    manager = CheckpointManager(ckpt_dir, [{"op": {}}])
    while True:
        manager.save_ckpt(table)
""",
    "load": """
from data_juicer_accel.utils.ckpt_utils import CheckpointManager
table = pa.table({"text": ["x" * 1000] * 20000})
CheckpointManager(os.path.join(work_dir, "ckpt"), [{"op": {}}]).save_ckpt(table)
def work():
    manager = CheckpointManager(os.path.join(work_dir, "ckpt"), [{"op": {}}])
    while True:
        manager.load_ckpt()
""",
}

EXIT_EPILOGUE = """
for _ in range(2):
    threading.Thread(target=work, daemon=True).start()
time.sleep(float(sys.argv[2]))
"""

EXIT_RUNS = 20


def run_exit_scenario(script, work_dir, run):
    # Vary how long the main thread lives, so the exit meets the daemon
    # threads at different points of their calls.
    lifetime = 0.05 + 0.02 * (run % 10)
    return subprocess.run(
        [sys.executable, str(script), str(work_dir), str(lifetime)],
        capture_output=True,
        text=True,
        timeout=300,
    )


@pytest.mark.parametrize("scenario", sorted(EXIT_SCENARIOS))
def test_daemon_threads_in_native_calls_do_not_abort_the_exit(tmp_path, scenario):
    script = tmp_path / "scenario.py"
    script.write_text(EXIT_PRELUDE + textwrap.dedent(EXIT_SCENARIOS[scenario]) + EXIT_EPILOGUE)
    work_dirs = [tmp_path / f"run{run}" for run in range(EXIT_RUNS)]
    for work_dir in work_dirs:
        work_dir.mkdir()
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        results = list(pool.map(run_exit_scenario, [script] * EXIT_RUNS, work_dirs, range(EXIT_RUNS)))
    for work_dir, result in zip(work_dirs, results, strict=True):
        assert result.returncode == 0, (work_dir, result.returncode, result.stderr[-2000:])
        assert "FATAL" not in result.stderr and "panicked" not in result.stderr, result.stderr[-2000:]
        assert "Traceback" not in result.stderr, result.stderr[-2000:]
        # The exit hook waited for every native call, none stayed stuck.
        assert "still running" not in result.stderr, result.stderr[-2000:]
        progress = (work_dir / "progress").read_text().split() if (work_dir / "progress").exists() else []
        if scenario.startswith("log") or scenario.startswith("small"):
            on_disk = set(event_ids_in(work_dir))
            assert set(progress) <= on_disk, sorted(set(progress) - on_disk)[:10]
