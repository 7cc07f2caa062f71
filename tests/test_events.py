"""Tests of data_juicer_accel's event logging (issue 3).

Differential tests run the same calls through py-data-juicer 1.6.1 and
through this package; what differs by nature (timestamps, generated ids,
pids, thread ids) is normalised away. No timing assertions: where something
must happen "eventually" the tests poll with a generous limit.
"""

import collections
import dataclasses
import enum
import functools
import gc
import inspect
import json
import multiprocessing
import os
import pathlib
import random
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
import weakref
from types import SimpleNamespace

import pytest
from loguru import logger

import data_juicer_accel.core.executor.event_logging_mixin as accel
from data_juicer_accel.bench.events import load_reference
from tests.conftest import missing

VOLATILE_KEYS = {"timestamp", "event_id", "process_id", "thread_id"}


# py-data-juicer 1.6.1's module, loaded from its file: importing the
# ``data_juicer.core.executor`` package would run its lazy installers.
reference = load_reference()
if reference is None:
    missing("py-data-juicer 1.6.1")


def make_executor(module, work_dir, job_id="job-1", **event_logging):
    class Executor(module.EventLoggingMixin):
        def __init__(self):
            self.cfg = SimpleNamespace(
                job_id=job_id,
                event_logging={"enabled": True, **event_logging},
                config=os.path.join(work_dir, "my-pipeline.yaml"),
                project_name="proj",
            )
            self.work_dir = work_dir
            self.executor_type = "default"
            super().__init__()

    return Executor()


def scripted_job(executor, module):
    """One job exercising every logging method, including failures,
    checkpoints, DAG events and a restart."""
    ev = module.EventType
    config = {"dataset_path": "/data/in.jsonl", "executor_type": "default", "partition": {"size": 100}}
    executor.log_dag_build_start({"node_count": 3, "depth": 2, "operation_types": ["mapper", "filter"]})
    executor.log_dag_build_complete({"node_count": 3, "edge_count": 2, "parallel_groups_count": 1})
    executor.log_dag_execution_plan_saved("/w/plan.json", {"node_count": 3, "edge_count": 2})
    executor.log_job_start(config, 3)
    for p in range(3):
        executor.log_partition_start(p, {"partition_path": f"/w/p{p}", "file_size_bytes": 10 * p, "sample_count": 7})
        for idx, op in enumerate(["clean_mapper", "len_filter"]):
            executor.log_dag_node_ready(f"n{idx}", {"op_name": op, "op_type": "mapper", "execution_order": idx})
            executor.log_dag_node_start(f"n{idx}", {"op_name": op, "op_type": "mapper"})
            executor.log_op_start(p, op, idx, {"lang": "en", "ratio": 0.5, "tags": ("a", "b"), "n": None})
            if p == 2 and idx == 1:
                executor.log_op_failed(p, op, idx, "boom: bad row", 1, metadata={"extra": [1, 2.5]})
                executor.log_dag_node_failed(f"n{idx}", {"op_name": op}, "boom", 0.25)
                break
            executor.log_op_complete(p, op, idx, 0.125 * (idx + 1), f"/w/ckpt/p{p}_{idx}", 100, 90 - idx)
            executor.log_checkpoint_save(p, op, idx, f"/w/ckpt/p{p}_{idx}")
            executor.log_dag_node_complete(f"n{idx}", {"op_name": op}, 0.5)
        if p == 2:
            executor.log_partition_failed(p, "boom: bad row", 1)
            executor.log_partition_complete(p, 1.5, None, success=False, error="boom: bad row")
        else:
            executor.log_partition_complete(p, 1.25, f"/w/out/p{p}.jsonl")
    executor.log_dag_parallel_group_start("g0", {"node_count": 2, "node_ids": ["n0", "n1"], "op_types": ["m"]})
    executor.log_dag_parallel_group_complete("g0", {"node_count": 2, "completed_nodes": 2}, 0.75)
    executor.log_checkpoint_load(1, "len_filter", 1, "/w/ckpt/p1_1")
    executor.log_job_failed("partition 2 failed", 4.5)
    executor.log_job_restart("failure", 123.0, [2], 1, ["/w/ckpt/p2_0"])
    executor.log_partition_resume(2, 1, "/w/ckpt/p2_0", "failure")
    executor.log_dag_execution_plan_loaded("/w/plan.json", {"node_count": 3})
    executor._log_event(ev.PROCESSING_START, "custom", partition_id=5, stack_trace="tb", input_rows=3)
    executor.log_job_complete(9.75, "/w/out")


def normalise(value):
    """Replaces what differs between two runs of the same calls: epoch
    timestamps (any number above 1e9) and the volatile top-level keys."""
    if isinstance(value, dict):
        return {k: normalise(v) for k, v in value.items() if k not in VOLATILE_KEYS}
    if isinstance(value, (list, tuple)):
        return [normalise(v) for v in value]
    if isinstance(value, float) and value > 1e9:
        return "<time>"
    return value


def read_lines(path):
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def event_dict(event):
    return {k: (v.value if hasattr(v, "value") and not isinstance(v, dict) else v) for k, v in vars(event).items()}


# ---------------------------------------------------------------------------
# 1. Drop-in API


def test_enum_and_event_match_the_reference():
    assert [(m.name, m.value) for m in accel.EventType] == [(m.name, m.value) for m in reference.EventType]
    ours = [(f.name, f.default, str(f.type)) for f in dataclasses.fields(accel.Event)]
    theirs = [(f.name, f.default, str(f.type)) for f in dataclasses.fields(reference.Event)]
    assert ours == theirs
    positional = accel.Event(accel.EventType.JOB_START, 1.0, "m", "id")
    assert (positional.event_type, positional.timestamp, positional.message, positional.event_id) == (
        accel.EventType.JOB_START,
        1.0,
        "m",
        "id",
    )


def test_public_methods_exist_with_reference_signatures():
    for cls_name in ("EventLogger", "EventLoggingMixin"):
        ours, theirs = getattr(accel, cls_name), getattr(reference, cls_name)
        for name, member in vars(theirs).items():
            if callable(member) and not name.startswith("__"):
                assert hasattr(ours, name), f"{cls_name}.{name} missing"
                ref_params = list(inspect.signature(getattr(theirs, name)).parameters)
                our_params = list(inspect.signature(getattr(ours, name)).parameters)
                assert our_params[: len(ref_params)] == ref_params, f"{cls_name}.{name}"
    import data_juicer_accel

    assert data_juicer_accel.EventLoggingMixin is accel.EventLoggingMixin


class only_loguru_sink:
    """``with only_loguru_sink(level, messages):`` -- loguru's sinks replaced by
    one collecting messages at ``level`` (None: no sink), restored after.

    pytest keeps loguru's default DEBUG sink on stderr, which sends every
    event down the verbose path; a job runs with INFO or WARNING instead."""

    def __init__(self, level, messages):
        self.level, self.messages = level, messages

    def __enter__(self):
        logger.remove()
        if self.level is not None:
            logger.add(lambda m: self.messages.append(m.record["message"]), level=self.level)

    def __exit__(self, *exc):
        logger.remove()
        logger.add(sys.stderr, level="DEBUG")


def run_scripted(module, work_dir, messages):
    sink = logger.add(lambda m: messages.append(m.record["message"]), level="INFO")
    try:
        executor = make_executor(module, work_dir)
        scripted_job(executor, module)
    finally:
        logger.remove(sink)
    return executor


# DEBUG: the default stderr sink stays (verbose path); INFO: one native
# call, the Event built for the loguru line; WARNING: one native call, the
# Event built only when ``events`` is read.
@pytest.mark.parametrize("min_level", ["DEBUG", "INFO", "WARNING"])
def test_scripted_job_matches_the_reference(tmp_path, min_level):
    ref_messages, our_messages = [], []
    if min_level == "DEBUG":
        ref = run_scripted(reference, str(tmp_path / "ref"), ref_messages)
        ours = run_scripted(accel, str(tmp_path / "ours"), our_messages)
    else:
        with only_loguru_sink(min_level, ref_messages):
            ref = make_executor(reference, str(tmp_path / "ref"))
            scripted_job(ref, reference)
        with only_loguru_sink(min_level, our_messages):
            ours = make_executor(accel, str(tmp_path / "ours"))
            scripted_job(ours, accel)
    ours.event_logger.flush()

    ref_lines, our_lines = read_lines(ref.event_logger.jsonl_file), read_lines(ours.event_logger.jsonl_file)
    assert len(our_lines) == len(ref_lines) > 40
    assert [normalise(x) for x in our_lines] == [normalise(x) for x in ref_lines]
    # Same keys in the same order, same value types (float stays float).
    for a, b in zip(our_lines, ref_lines, strict=True):
        assert list(a) == list(b)
        assert [type(v) for v in a.values()] == [type(v) for v in b.values()]

    ref_events = [normalise(event_dict(e)) for e in ref.event_logger.events]
    our_events = [normalise(event_dict(e)) for e in ours.event_logger.events]
    assert our_events == ref_events
    assert all(type(e) is accel.Event for e in ours.event_logger.events)
    assert [list(vars(e)) for e in ours.event_logger.events] == [list(vars(e)) for e in ref.event_logger.events]

    assert ours.generate_status_report() == ref.generate_status_report()
    for kwargs in ({}, {"partition_id": 1}, {"operation_name": "len_filter", "limit": 2}):
        got = [normalise(event_dict(e)) for e in ours.get_events(**kwargs)]
        want = [normalise(event_dict(e)) for e in ref.get_events(**kwargs)]
        assert got == want
    got = ours.get_events(event_type=accel.EventType.OP_START)
    want = ref.get_events(event_type=reference.EventType.OP_START)
    assert len(got) == len(want) == 6

    # The loguru INFO lines, times aside (the summary lines only exist here:
    # the reference never creates job_summary.json).
    strip_time = functools.partial(re.sub, r"TIME\[[^]]*\]", "TIME[]")
    ours_events_only = [strip_time(m) for m in our_messages if m.startswith(("EVENT[", "Event logging"))]
    assert ours_events_only == [strip_time(m) for m in ref_messages if m.startswith(("EVENT[", "Event logging"))]


def comparable_analysis(result):
    result = normalise(result)
    result.pop("analysis_timestamp")
    # Ours adds the op a default-executor checkpoint resumes after (None here);
    # the reference has no such key.
    result.pop("resume_after_operation", None)
    for key in ("elapsed_time_seconds", "current_time"):
        result["progress_metrics"].pop(key)
    return result


def test_resumption_analysis_matches_the_reference_with_the_checkpoint_fix(tmp_path):
    ours = make_executor(accel, str(tmp_path / "ours"))
    scripted_job(ours, accel)
    analysis = ours.analyze_resumption_state("job-1")
    # The reference reads "checkpoint_saved"; give it the same log spelled so.
    ref = make_executor(reference, str(tmp_path / "ref"))
    text = ours.event_logger.jsonl_file.read_text().replace('"checkpoint_save"', '"checkpoint_saved"')
    ref.event_logger.jsonl_file.write_text(text)
    assert comparable_analysis(analysis) == comparable_analysis(ref.analyze_resumption_state("job-1"))
    assert analysis["partition_states"][2]["status"] == "failed"
    assert analysis["resume_from_checkpoint"] is None or analysis["resume_from_checkpoint"].startswith("/w/ckpt")


def test_python_and_rust_analysis_agree_with_the_reference_on_random_logs(tmp_path):
    rng = random.Random(3)
    types = ["partition_start", "partition_complete", "partition_failed", "op_start", "op_complete"]
    types += ["checkpoint_saved", "job_start", "other"]
    for trial in range(20):
        path = tmp_path / f"events_{trial}.jsonl"
        with open(path, "w") as f:
            for _ in range(rng.randint(0, 300)):
                event = {"event_type": rng.choice(types), "timestamp": float(rng.randint(0, 40))}
                if rng.random() < 0.9:
                    event["partition_id"] = rng.randint(0, 8)
                if rng.random() < 0.1:
                    del event["timestamp"]
                event["operation_name"] = rng.choice(["a", "b", None])
                event["operation_idx"] = rng.randint(0, 3)
                meta = {}
                for key, choices in (
                    ("success", [True, False, None, 1, "", "yes"]),
                    ("error", [None, "e", {"x": 1}]),
                    ("duration_seconds", [1.5, 2]),
                    ("output_path", ["/o", None]),
                    ("checkpoint_path", ["/c", 3]),
                ):
                    if rng.random() < 0.6:
                        meta[key] = rng.choice(choices)
                if rng.random() < 0.8:
                    event["metadata"] = meta
                f.write(json.dumps(event) + "\n")
            if trial % 3 == 0:
                f.write('{"event_type": "job_complete", "timest')  # partial last line

        ref = make_executor(reference, str(tmp_path / f"ref{trial}"))
        ref.event_logger.jsonl_file = path
        want = comparable_analysis(ref.analyze_resumption_state("j"))

        ours = make_executor(accel, str(tmp_path / f"ours{trial}"))
        ours.event_logger.jsonl_file = path
        assert comparable_analysis(ours.analyze_resumption_state("j")) == want, trial

        class PythonPath(accel.EventLoggingMixin):
            def _determine_partition_state(self, *args):  # forces the Python path
                return super()._determine_partition_state(*args)

        python_path = make_executor(accel, str(tmp_path / f"py{trial}"))
        python_path.__class__ = type("P", (type(python_path), PythonPath), {})
        python_path.event_logger.jsonl_file = path
        assert not python_path._uses_reference_helpers()
        assert comparable_analysis(python_path.analyze_resumption_state("j")) == want, trial


# ---------------------------------------------------------------------------
# 2. Serialisation in Rust


class Color(enum.Enum):
    RED = "red"


class Level(enum.IntEnum):
    HIGH = 3


def test_values_are_serialised_like_json_dumps_or_as_str(tmp_path):
    executor = make_executor(accel, str(tmp_path))
    metadata = {
        "f": [0.1, 1e16, 1e-5, -0.0, float("nan"), float("inf"), 2**70, True, None],
        "s": 'é\u2028\U0001f600"\\\n\x7f',
        1: "int key",
        2.5: "float key",
        None: "none key",
        False: "bool key",
        "enum": Color.RED,
        "intenum": Level.HIGH,
        "tuple": (1, (2,)),
        "set": {1},
        "obj": pathlib.PurePosixPath("/x/y"),
        (1, 2): "tuple key",
    }
    executor._log_event(accel.EventType.OP_START, "m", metadata=metadata)
    executor.event_logger.flush()
    line = executor.event_logger.jsonl_file.read_text().splitlines()[0]
    parsed = json.loads(line)["metadata"]
    jsonable = dict(metadata)
    jsonable.update({"enum": "red", "set": "{1}", "obj": "/x/y"})
    del jsonable[(1, 2)]
    expected = json.loads(json.dumps(jsonable))
    expected["(1, 2)"] = "tuple key"
    assert json.dumps(parsed, sort_keys=True) == json.dumps(expected, sort_keys=True)
    # Byte-identical to json.dumps where json.dumps can serialise.
    plain = {"a": [1.5, "ü", None, {"b": float("-inf")}], "c": 10**20}
    executor._log_event(accel.EventType.OP_START, "m", metadata=plain)
    executor.event_logger.flush()
    line = executor.event_logger.jsonl_file.read_text().splitlines()[1]
    assert json.dumps(plain) in line


def test_a_self_referencing_value_does_not_crash(tmp_path):
    executor = make_executor(accel, str(tmp_path))
    loop = {}
    loop["self"] = loop
    executor._log_event(accel.EventType.OP_START, "m", metadata=loop)
    executor.event_logger.flush()
    assert "self" in read_lines(executor.event_logger.jsonl_file)[0]["metadata"]


def test_event_objects_and_overrides_take_the_reference_path(tmp_path):
    executor = make_executor(accel, str(tmp_path))
    seen = []

    class Recording(accel.EventLogger):
        def log_event(self, event):
            seen.append(event)
            super().log_event(event)

    executor.event_logger = Recording(str(tmp_path / "logs"), job_id="job-1", work_dir=str(tmp_path))
    executor.log_op_start(0, "op", 1, {})
    assert len(seen) == 1 and isinstance(seen[0], accel.Event) and seen[0].job_id == "job-1"
    with pytest.raises(TypeError):
        executor._log_event(accel.EventType.OP_START, "m", not_a_field=1)
    with pytest.raises(TypeError):
        executor._log_event(accel.EventType.OP_START, "m", timestamp=1.0)
    event = accel.Event(accel.EventType.OP_COMPLETE, 5.0, "direct", partition_id=4)
    executor.event_logger.log_event(event)
    assert executor.event_logger.events[-1] is event
    executor.event_logger.flush()
    last = read_lines(executor.event_logger.jsonl_file)[-1]
    assert last == {
        "event_type": "op_complete",
        "timestamp": 5.0,
        "message": "direct",
        "job_id": "job-1",
        "partition_id": 4,
    }


def _log_event_calls(ev):
    """Call shapes ``_log_event`` takes, and ones that raise ``TypeError``."""
    taken = [
        lambda ex: ex._log_event(ev.OP_START, "positional", partition_id=1, op_args={"k": [1, 2.5]}),
        lambda ex: ex._log_event(event_type=ev.OP_START, message="keywords", operation_idx=2),
        lambda ex: ex._log_event(ev.OP_START, message="mixed"),
        lambda ex: type(ex)._log_event(ex, ev.OP_COMPLETE, "through the class", duration=0.5),
        lambda ex: ex._log_event(ev.OP_START, "given id", event_id="my-id", job_id="overwritten"),
        lambda ex: ex._log_event(ev.OP_START, "none values left out", partition_id=None, event_id=None),
    ]
    refused = [
        lambda ex: ex._log_event(ev.OP_START),
        lambda ex: ex._log_event(ev.OP_START, "m", "one too many"),
        lambda ex: ex._log_event(ev.OP_START, "m", message="twice"),
        lambda ex: ex._log_event(ev.OP_START, "m", not_a_field=1),
        lambda ex: ex._log_event(ev.OP_START, "m", timestamp=1.0),
        lambda ex: ex._log_event(),
    ]
    return taken, refused


# With no DEBUG sink, ``_log_event`` is a method of C; what its fast path
# does not take goes to the Python method with the arguments as given.
@pytest.mark.parametrize("min_level", [None, "INFO", "WARNING"])
def test_log_event_takes_and_refuses_what_the_reference_does(tmp_path, min_level):
    outcomes = {}
    for module in (reference, accel):
        messages = []
        with only_loguru_sink(min_level, messages):
            executor = make_executor(module, str(tmp_path / module.__name__))
            taken, refused = _log_event_calls(module.EventType)
            returned = [call(executor) for call in taken]
            errors = []
            for call in refused:
                with pytest.raises(TypeError) as error:
                    call(executor)
                errors.append(str(error.value).replace(module.__name__, "<module>"))
        if module is accel:
            executor.event_logger.flush()
        lines = read_lines(executor.event_logger.jsonl_file)[-len(taken) :]
        assert [line.get("event_id") for line in lines if line["message"] == "given id"] == ["my-id"]
        events = [normalise(event_dict(e)) for e in executor.event_logger.events]
        event_lines = [m for m in messages if m.startswith("EVENT[")]
        outcomes[module] = returned, errors, [normalise(x) for x in lines], events[-len(taken) :], len(event_lines)
    assert outcomes[accel] == outcomes[reference]
    if accel._FAST_PATH is not None:
        assert not inspect.isfunction(accel.EventLoggingMixin._log_event)


def test_an_override_of_log_event_reaches_the_method_through_super(tmp_path):
    seen = []

    class Overriding(accel.EventLoggingMixin):
        def __init__(self):
            self.cfg = SimpleNamespace(job_id="job-1", event_logging={"enabled": True})
            self.work_dir = str(tmp_path)
            self.executor_type = "default"
            super().__init__()

        def _log_event(self, event_type, message, **kwargs):
            seen.append((event_type, message, kwargs))
            super()._log_event(event_type, message, **kwargs)

    with only_loguru_sink("WARNING", []):
        executor = Overriding()
        executor.log_op_start(0, "op", 1, {"lang": "en"})
    executor.event_logger.flush()
    assert [(t, kwargs["operation_name"]) for t, _, kwargs in seen] == [(accel.EventType.OP_START, "op")]
    (line,) = [x for x in read_lines(executor.event_logger.jsonl_file) if x["event_type"] == "op_start"]
    assert (line["operation_name"], line["operation_idx"], line["job_id"]) == ("op", 1, "job-1")


def test_events_keep_the_newest_in_order_as_one_set_of_objects(tmp_path):
    executor = make_executor(accel, str(tmp_path))
    with only_loguru_sink(None, []):
        for i in range(10_050):
            executor._log_event(accel.EventType.OP_START, f"m{i}", operation_idx=i)
            if i == 10_020:  # an Event object between fast-path ones
                executor.event_logger.log_event(accel.Event(accel.EventType.OP_COMPLETE, 1.0, "object"))
    events = executor.event_logger.events
    assert events.maxlen == 10_000 and len(events) == 10_000
    messages = [e.message for e in events]
    assert messages[0] == "m51" and messages[-1] == "m10049"
    assert messages[messages.index("m10020") + 1] == "object"
    assert all(type(e) is accel.Event for e in events)
    assert [list(vars(e)) for e in events][0] == [f.name for f in dataclasses.fields(accel.Event)]
    # Read twice: the same objects, and changes to them stay.
    events[-1].status = "seen"
    assert executor.event_logger.events[-1] is events[-1]
    assert executor.get_events(limit=1)[0].status == "seen"

    # A replaced deque receives what is logged next, with its own maxlen.
    executor.event_logger.events = collections.deque(maxlen=3)
    with only_loguru_sink(None, []):
        for i in range(5):
            executor._log_event(accel.EventType.OP_COMPLETE, f"n{i}")
    assert [e.message for e in executor.event_logger.events] == ["n2", "n3", "n4"]
    assert events[-1].message == "m10049"  # the old deque was left alone
    executor.event_logger.flush()
    assert len(read_lines(executor.event_logger.jsonl_file)) == 10_050 + 1 + 5


def test_events_survive_a_failed_read(tmp_path):
    executor = make_executor(accel, str(tmp_path))
    with only_loguru_sink(None, []):
        for i in range(3):
            executor._log_event(accel.EventType.OP_START, f"m{i}")
    with pytest.raises(AttributeError):
        executor.event_logger._sink.move_events_into(object())  # no extend(): nothing may be lost
    with only_loguru_sink(None, []):
        executor._log_event(accel.EventType.OP_START, "m3")
    assert [e.message for e in executor.event_logger.events][-4:] == ["m0", "m1", "m2", "m3"]
    executor.event_logger.close()


def test_a_subclass_may_set_events_before_and_after_init(tmp_path):
    class Early(accel.EventLogger):
        def __init__(self, *args, **kwargs):
            self.events = collections.deque(maxlen=5)  # overwritten by __init__, as in 1.6.1
            super().__init__(*args, **kwargs)
            self.events = collections.deque(maxlen=2)

    event_logger = Early(str(tmp_path))
    for i in range(3):
        event_logger.log_event(accel.Event(accel.EventType.OP_START, float(i), f"m{i}"))
    assert [e.message for e in event_logger.events] == ["m1", "m2"]
    event_logger.close()


def test_a_cycle_through_logged_values_is_collected(tmp_path):
    executor = make_executor(accel, str(tmp_path))

    class Args(dict):
        pass

    args = Args(lang="en")
    args["executor"] = executor  # executor -> logger -> sink -> args -> executor
    with only_loguru_sink(None, []):
        executor._log_event(accel.EventType.OP_START, "m", op_args=args)
    executor.event_logger.flush()
    collected = weakref.ref(args)
    del executor, args
    gc.collect()
    assert collected() is None


def test_generated_event_ids_follow_the_reference_pattern(tmp_path):
    executor = make_executor(accel, str(tmp_path))
    executor._log_event(accel.EventType.OP_START, "m")
    executor._log_event(accel.EventType.OP_START, "m", event_id=None)
    ids = [e.event_id for e in executor.event_logger.events]
    assert all(re.fullmatch(r"op_start_\d+_[0-9a-f]{8}", i) for i in ids) and ids[0] != ids[1]
    assert executor.event_logger.events[0].process_id == os.getpid()
    assert executor.event_logger.events[0].thread_id == threading.get_ident()


# ---------------------------------------------------------------------------
# 3. Durability


def wait_for(predicate, limit=60.0):
    deadline = time.monotonic() + limit
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached")
        time.sleep(0.01)


def test_job_level_events_are_on_disk_when_the_call_returns(tmp_path):
    executor = make_executor(accel, str(tmp_path), flush_interval=3600)
    executor.log_op_start(0, "op", 0, {})
    executor.log_job_start({}, 1)
    lines = read_lines(executor.event_logger.jsonl_file)
    assert [line["event_type"] for line in lines] == ["op_start", "job_start"]


def test_lines_reach_the_disk_within_the_flush_interval(tmp_path):
    executor = make_executor(accel, str(tmp_path), flush_interval=0.05)
    executor.log_op_start(0, "op", 0, {})
    wait_for(lambda: read_lines(executor.event_logger.jsonl_file))
    assert read_lines(executor.event_logger.jsonl_file)[0]["event_type"] == "op_start"


@pytest.mark.parametrize("flush_interval", [-1, float("nan"), float("inf"), 86_401, 1e300, -0.0001])
def test_a_flush_interval_out_of_range_is_a_value_error(tmp_path, flush_interval):
    with pytest.raises(ValueError, match="flush_interval must be 0 .* or a positive number of seconds, at most 86400"):
        accel.EventLogger(str(tmp_path), flush_interval=flush_interval)


def test_a_flush_interval_of_a_day_is_accepted(tmp_path):
    event_logger = accel.EventLogger(str(tmp_path), flush_interval=86_400)
    event_logger.log_event(accel.Event(accel.EventType.OP_START, time.time(), "kept"))
    event_logger.flush()
    assert read_lines(event_logger.jsonl_file)[0]["message"] == "kept"
    event_logger.close()


def test_readers_see_every_event_logged_before_them(tmp_path):
    executor = make_executor(accel, str(tmp_path), flush_interval=3600)
    executor._log_event(accel.EventType.JOB_COMPLETE, "done")  # durable anyway
    executor.log_partition_start(0, {})
    assert executor.event_logger.check_job_completion(executor.event_logger.jsonl_file)
    assert executor.analyze_resumption_state("job-1")["total_events"] == 2


# DEBUG: the Python method; None: the native one.
@pytest.mark.parametrize("min_level", ["DEBUG", None])
def test_write_errors_surface_as_oserror_naming_the_file(tmp_path, min_level):
    work_dir = tmp_path / "job"
    executor = make_executor(accel, str(work_dir), flush_interval=3600)
    executor.log_op_start(0, "op", 0, {})
    shutil.rmtree(work_dir)
    with pytest.raises(OSError) as raised:
        executor.event_logger.flush()
    assert "events_" in str(raised.value)
    with only_loguru_sink(min_level, []), pytest.raises(OSError):
        executor.log_op_start(0, "op", 1, {})
    work_dir.mkdir()
    executor.event_logger.flush()  # the kept event is written on retry
    assert [line["operation_idx"] for line in read_lines(executor.event_logger.jsonl_file)] == [0]


def test_a_collected_logger_flushes(tmp_path):
    executor = make_executor(accel, str(tmp_path), flush_interval=3600)
    executor.log_op_start(0, "op", 0, {})
    path = executor.event_logger.jsonl_file
    del executor
    gc.collect()
    assert len(read_lines(path)) == 1


@pytest.mark.parametrize("min_level", ["DEBUG", None])
def test_close_flushes_and_refuses_later_events(tmp_path, min_level):
    executor = make_executor(accel, str(tmp_path), flush_interval=3600)
    executor.log_op_start(0, "op", 0, {})
    executor.event_logger.close()
    assert len(read_lines(executor.event_logger.jsonl_file)) == 1
    with only_loguru_sink(min_level, []), pytest.raises(ValueError, match="closed"):
        executor.log_op_start(0, "op", 1, {})


def test_a_small_queue_blocks_producers_and_loses_nothing(tmp_path):
    executor = make_executor(accel, str(tmp_path), queue_size=4)
    for i in range(2000):
        executor._log_event(accel.EventType.OP_START, "m", operation_idx=i)
    executor.event_logger.flush()
    assert [line["operation_idx"] for line in read_lines(executor.event_logger.jsonl_file)] == list(range(2000))


# ---------------------------------------------------------------------------
# 3/4. Threads and processes


def assert_threads_keep_every_event_in_order(tmp_path, threads: int, per_thread: int):
    """`threads` threads log `per_thread` events each; all must be on disk,
    each thread's in the order it logged them."""
    executor = make_executor(accel, str(tmp_path))

    def work(t):
        for i in range(per_thread):
            executor._log_event(accel.EventType.OP_START, "m", partition_id=t, operation_idx=i)

    workers = [threading.Thread(target=work, args=(t,)) for t in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    executor.event_logger.flush()
    seen = {t: [] for t in range(threads)}
    with open(executor.event_logger.jsonl_file) as f:
        for line in f:
            event = json.loads(line)
            seen[event["partition_id"]].append(event["operation_idx"])
    for t in range(threads):
        assert seen[t] == list(range(per_thread)), f"thread {t}"


def test_eight_threads_keep_every_event_in_order(tmp_path):
    assert_threads_keep_every_event_in_order(tmp_path, threads=8, per_thread=10_000)


CHILD_SCRIPT = """
import sys, os, time
from types import SimpleNamespace
from data_juicer_accel import EventLoggingMixin, EventType

class Executor(EventLoggingMixin):
    def __init__(self, work_dir):
        self.cfg = SimpleNamespace(job_id="child", event_logging={"flush_interval": float(sys.argv[3])})
        self.work_dir = work_dir
        self.executor_type = "default"
        super().__init__()

executor = Executor(sys.argv[1])
mode = sys.argv[2]
for i in range(1000):
    executor._log_event(EventType.OP_START, "m", operation_idx=i)
if mode == "exit":
    sys.exit(0)  # no flush(): atexit must write everything
path = executor.event_logger.jsonl_file
while not (path.exists() and path.read_text().count("\\n") == 1000):
    time.sleep(0.01)
print(path, flush=True)
i = 1000
while True:  # until SIGKILLed
    executor._log_event(EventType.OP_START, "m" * (i % 300), operation_idx=i)
    i += 1
"""


def run_child(tmp_path, mode, flush_interval):
    script = tmp_path / "child.py"
    script.write_text(CHILD_SCRIPT)
    return subprocess.Popen(
        [sys.executable, str(script), str(tmp_path / "job"), mode, str(flush_interval)],
        stdout=subprocess.PIPE,
        text=True,
    )


def test_a_process_exiting_without_flush_leaves_every_event(tmp_path):
    child = run_child(tmp_path, "exit", 3600)
    assert child.wait(timeout=120) == 0
    (path,) = (tmp_path / "job").glob("events_*.jsonl")
    assert [line["operation_idx"] for line in read_lines(path)] == list(range(1000))


def test_a_sigkilled_logger_leaves_whole_lines_and_readers_skip_a_partial_one(tmp_path):
    child = run_child(tmp_path, "kill", 0.02)
    path = pathlib.Path(child.stdout.readline().strip())
    time.sleep(0.2)
    child.send_signal(signal.SIGKILL)
    child.wait(timeout=60)
    text = path.read_text()
    assert text.endswith("\n")  # whole lines only (one write per batch)
    lines = [json.loads(line) for line in text.splitlines()]
    assert [line["operation_idx"] for line in lines] == list(range(len(lines)))
    assert len(lines) >= 1000
    with open(path, "a") as f:
        f.write('{"event_type": "job_complete", "tim')  # a torn last line
    executor = make_executor(accel, str(tmp_path / "reader"))
    assert not executor.event_logger.check_job_completion(path)
    executor.event_logger.jsonl_file = path
    assert executor.analyze_resumption_state("child")["total_events"] == len(lines)


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_a_forked_child_logs_with_its_own_thread_and_nothing_twice(tmp_path):
    executor = make_executor(accel, str(tmp_path), flush_interval=3600)
    for i in range(50):
        executor._log_event(accel.EventType.OP_START, "parent", operation_idx=i)
    pid = os.fork()
    if pid == 0:  # child
        code = 0
        try:
            for i in range(50, 80):
                executor._log_event(accel.EventType.OP_START, "child", operation_idx=i)
            executor.event_logger.flush()
        except BaseException:
            code = 1
        os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    executor.event_logger.flush()
    lines = read_lines(executor.event_logger.jsonl_file)
    parent = [line["operation_idx"] for line in lines if line["message"] == "parent"]
    child = [line for line in lines if line["message"] == "child"]
    assert parent == list(range(50))
    assert [line["operation_idx"] for line in child] == list(range(50, 80))
    assert {line["process_id"] for line in child} == {pid}


def _mp_child(work_dir):
    executor = make_executor(accel, work_dir, job_id="mp", flush_interval=3600)
    executor.log_op_start(1, "op", 1, {})  # no flush: the worker's exit hook must write it


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_a_multiprocessing_fork_worker_flushes_at_exit(tmp_path):
    ctx = multiprocessing.get_context("fork")
    worker = ctx.Process(target=_mp_child, args=(str(tmp_path),))
    worker.start()
    worker.join(timeout=120)
    assert worker.exitcode == 0
    (path,) = tmp_path.glob("events_*.jsonl")
    assert [line["event_type"] for line in read_lines(path)] == ["op_start"]


# ---------------------------------------------------------------------------
# 5. Compatible fixes


def test_job_summary_is_created_at_start_and_updated_at_the_end(tmp_path):
    root = tmp_path / "jobs"
    executor = make_executor(accel, str(root / "job-1"))
    executor.log_job_start({"dataset_path": "x"}, 1)
    summary = executor._load_job_summary()
    assert summary["job_id"] == "job-1" and summary["status"] == "running"
    assert summary["config_name"] == "my-pipeline"
    assert "job-1" in summary["resumption_command"]
    jobs = accel.EventLogger.list_available_jobs(str(root))
    assert [job["job_id"] for job in jobs] == ["job-1"]
    executor.log_job_complete(1.0)
    assert executor._load_job_summary()["status"] == "completed"


def test_a_summary_without_resumption_command_does_not_raise(tmp_path):
    executor = make_executor(accel, str(tmp_path))
    (tmp_path / "job_summary.json").write_text(json.dumps({"job_id": "job-1", "start_time": 1.0}))
    executor.log_job_failed("bad", 1.0)
    assert executor._load_job_summary()["status"] == "failed"


def test_checkpoint_save_events_are_recognised(tmp_path):
    executor = make_executor(accel, str(tmp_path))
    executor.log_partition_start(0, {})
    executor.log_checkpoint_save(0, "op", 0, "/ckpt/0")
    result = executor.analyze_resumption_state("job-1")
    assert result["can_resume"] and result["resume_from_checkpoint"] == "/ckpt/0"


def test_disabled_event_logging(tmp_path):
    executor = make_executor(accel, str(tmp_path), enabled=False)
    assert executor.event_logger is None
    executor.log_op_start(0, "op", 0, {})
    assert executor.get_events() == [] and executor.generate_status_report() == "Event logging is disabled."


# ---------------------------------------------------------------------------
# 6. Analysis at scale


@pytest.mark.slow
def test_a_million_event_log_is_analysed(tmp_path):
    path = tmp_path / "events_big.jsonl"
    op_line = '{{"event_type": "op_start", "timestamp": {}.5, "partition_id": {}, "operation_name": "op"}}\n'
    start_line = '{{"event_type": "partition_start", "timestamp": {}.0, "partition_id": {}}}\n'
    with open(path, "w") as f:
        for i in range(1_000_000):
            if i % 100 == 0:
                f.write(start_line.format(i, i % 5000))
            f.write(op_line.format(i, i % 5000))
    executor = make_executor(accel, str(tmp_path / "x"))
    executor.event_logger.jsonl_file = path
    result = executor.analyze_resumption_state("j")
    assert result["total_events"] == 1_010_000
    assert len(result["partition_states"]) == 50  # starts only for ids that are multiples of 100


def test_random_floats_parse_back_to_the_same_floats(tmp_path):
    # Digits follow repr(); where two shortest forms round-trip (rare), Rust
    # may pick the other one: the parsed float is the same either way.
    rng = random.Random(7)
    values = [rng.uniform(-1e6, 1e6) for _ in range(300)]
    values += [10.0 ** rng.randint(-320, 308) * rng.random() for _ in range(300)]
    values += [float(rng.randint(-(2**60), 2**60)) for _ in range(100)] + [5e-324, 1e-4, 9.999e15, 1e16]
    executor = make_executor(accel, str(tmp_path))
    executor._log_event(accel.EventType.OP_START, "m", metadata={"v": values})
    executor.event_logger.flush()
    written = read_lines(executor.event_logger.jsonl_file)[0]["metadata"]["v"]
    assert all(type(w) is float and w == v for w, v in zip(written, values, strict=True))
    text = executor.event_logger.jsonl_file.read_text()
    same_digits = sum(json.dumps(v) in text for v in values)
    assert same_digits >= len(values) - 5


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_processes_appending_to_one_file_never_split_a_line(tmp_path):
    executor = make_executor(accel, str(tmp_path), flush_interval=0.01)
    executor.log_partition_start(0, {})
    executor.event_logger.flush()
    children = []
    for child in range(4):
        pid = os.fork()
        if pid == 0:
            code = 0
            try:
                for i in range(200):  # lines far over PIPE_BUF, several per batch
                    executor._log_event(accel.EventType.OP_START, str(child) * 20_000, operation_idx=i)
                executor.event_logger.flush()
            except BaseException:
                code = 1
            os._exit(code)
        children.append(pid)
    for pid in children:
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
    lines = read_lines(executor.event_logger.jsonl_file)  # raises on a torn line
    by_child = {}
    for line in lines[1:]:
        by_child.setdefault(line["message"][0], []).append(line["operation_idx"])
    assert by_child == {str(c): list(range(200)) for c in range(4)}
