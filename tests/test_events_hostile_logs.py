"""Every reader of event logs survives any file, and answers as if the lines
it cannot read were not there: a valid log with hostile lines inserted at
random (seeded) positions reads exactly as the clean log, in every reader.
Also: a job that has logged nothing gets py-data-juicer 1.6.1's answers, which
the Ray executor's ``--resume`` relies on."""

from __future__ import annotations

import contextlib
import io
import json
import math
import os
import random
import subprocess
import sys
import types
from pathlib import Path

import pytest

reference = pytest.importorskip("data_juicer.core.executor.event_logging_mixin")
from data_juicer_accel.core.executor import event_logging_mixin as ours  # noqa: E402
from data_juicer_accel.tools import events as events_command  # noqa: E402

OLD_RUN = "events_20200101_000000.jsonl"


# --------------------------------------------------------------------------
# A valid log, and hostile lines


def _valid_log(rng: random.Random) -> list[bytes]:
    """Lines as a Data-Juicer job writes them (``json.dumps``), a few with raw
    UTF-8 text; sometimes a NaN duration (only Python reads that one)."""
    t = 1_700_000_000.0
    events: list[dict] = [{"event_type": "job_start", "timestamp": t, "message": "开始", "config": {"np": 2}}]
    for pid in range(rng.randint(1, 4)):
        t += 1
        events.append({"event_type": "partition_start", "timestamp": t, "partition_id": pid})
        for idx in range(rng.randint(0, 3)):
            t += 1
            op = {"partition_id": pid, "operation_name": f"op_{idx}", "operation_idx": idx}
            events.append({"event_type": "op_start", "timestamp": t, **op, "message": "算子开始"})
            if rng.random() < 0.8:
                events.append({"event_type": "op_complete", "timestamp": t + 0.5, **op})
        if rng.random() < 0.3:
            events.append({"event_type": "partition_failed", "timestamp": t + 0.6, "partition_id": pid})
        if rng.random() < 0.5:
            path = f"/ckpt/p{pid}"
            # "checkpoint_saved": the type 1.6.1's analysis looks for (and ours).
            events.append(
                {"event_type": "checkpoint_saved", "timestamp": t + 0.7, "metadata": {"checkpoint_path": path}}
            )
        if rng.random() < 0.7:
            success = rng.random() < 0.7
            duration = math.nan if rng.random() < 0.1 else 1.5
            meta = {"success": success, "duration_seconds": duration, "output_path": f"/out/{pid}"}
            if not success:
                meta["error"] = "失败: boom"
            events.append(
                {"event_type": "partition_complete", "timestamp": t + 0.8, "partition_id": pid, "metadata": meta}
            )
    if rng.random() < 0.5:
        events.append({"event_type": "job_complete", "timestamp": t + 2, "message": "完成"})
    return [json.dumps(e, ensure_ascii=rng.random() < 0.5).encode() for e in events]


def _garbage(rng: random.Random) -> bytes:
    body = bytes(rng.randrange(256) for _ in range(rng.randint(1, 300)))
    return b"\xff" + body.replace(b"\n", b"").replace(b"\r", b"")


def _invalid_utf8_event(rng: random.Random) -> bytes:
    """A job_complete whose Chinese message lost a byte: if read, it would change the answer."""
    line = json.dumps({"event_type": "job_complete", "timestamp": 1e10, "message": "任务完成"}, ensure_ascii=False)
    raw = line.encode()
    cut = raw.index("务".encode()) + rng.choice([1, 2])
    return raw[:cut] + raw[cut + 1 :]


def _non_object(rng: random.Random) -> bytes:
    return rng.choice(
        [b"5", b"-1.5e3", b'"job_complete"', b"[1, 2]", b'[{"event_type": "job_complete"}]', b"null", b"true"]
        + [b"false", b"NaN", b"-Infinity", b'{"event_type": "job_complete"} [1]', b'{"event_type": "job_complete",}']
    )


def _huge(rng: random.Random) -> bytes:
    return rng.choice(
        [
            b'{"event_type": "job_complete", "message": "' + b"x" * 1_000_000,  # never closed
            b'{"event_type": "job_complete", "n": ' + b"7" * rng.randint(4301, 20_000) + b"}",
            b"9" * 500_000,
        ]
    )


def _deep(rng: random.Random) -> bytes:
    depth = rng.randint(300, 3000)
    nested = b"[" * depth + b"]" * depth
    return rng.choice([b'{"event_type": "job_complete", "x": ' + nested + b"}", b"{" + b'"a":[' * 100_000])


def _partial(rng: random.Random) -> bytes:
    line = b'{"event_type": "job_complete", "timestamp": 99.5}'
    return line[: rng.randint(1, len(line) - 1)]


HOSTILE = [_garbage, _invalid_utf8_event, _non_object, _huge, _deep, _partial]


def _cut_last_line() -> bytes:
    """A line a kill cut inside a Chinese character (no newline after it)."""
    raw = json.dumps({"event_type": "job_complete", "timestamp": 1e10, "message": "完成"}, ensure_ascii=False).encode()
    return raw[: raw.index("成".encode()) + 2]


def _hostile_log(clean: list[bytes], rng: random.Random) -> bytes:
    lines = list(clean)
    for _ in range(rng.randint(1, 6)):
        lines.insert(rng.randint(0, len(lines)), rng.choice(HOSTILE)(rng))
    text = b"\n".join(lines) + b"\n"
    return text + _cut_last_line() if rng.random() < 0.5 else text


# --------------------------------------------------------------------------
# Every reader


class _Mixin(ours.EventLoggingMixin):
    def __init__(self, path: Path):
        self.event_logger = types.SimpleNamespace(jsonl_file=path)


class _MixinInPython(_Mixin):
    """A subclass overriding a helper: the analysis reads the file in Python."""

    def _determine_job_status(self, *args):
        return super()._determine_job_status(*args)


class _Reference(reference.EventLoggingMixin):
    def __init__(self, path: Path):
        self.event_logger = types.SimpleNamespace(jsonl_file=path)


def _comparable(result: dict) -> dict:
    result = json.loads(json.dumps(result, default=repr))
    # resume_after_operation: ours only (tests/test_integration_per_op_ckpt.py).
    for key in ("analysis_timestamp", "job_id", "work_dir", "events_file", "resume_after_operation"):
        result.pop(key, None)
    metrics = result.get("progress_metrics") or {}
    for key in ("current_time", "elapsed_time_seconds"):
        metrics.pop(key, None)
    return result


def _report(job: Path) -> dict:
    report = events_command.build_report(str(job))
    report["resumption"] = _comparable(report["resumption"])
    report["runs"] = [{k: v for k, v in run.items() if k != "events_file"} for run in report["runs"]]
    return _comparable(report)


def _followed(job: Path) -> list[str]:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        events_command._follow(str(job), timeout=0.0, interval=0.01, as_json=True)
    return out.getvalue().splitlines()


def _every_reader(job: Path, logs: Path) -> dict:
    path = job / OLD_RUN
    logger = ours.EventLogger(str(logs), job_id="job")
    try:
        return {
            "analysis": _comparable(_Mixin(path).analyze_resumption_state("job")),
            "analysis in Python": _comparable(_MixinInPython(path).analyze_resumption_state("job")),
            "check_job_completion": logger.check_job_completion(path),
            "find_latest_events_file": logger.find_latest_events_file(str(job)),
            "events command": _report(job),
            "events --follow": _followed(job),
        }
    finally:
        logger.close()


@pytest.mark.parametrize("seed", range(40))
def test_hostile_lines_read_as_if_removed(tmp_path, seed):
    rng = random.Random(seed)
    clean = _valid_log(rng)
    answers = []
    for name, text in (("clean", b"\n".join(clean) + b"\n"), ("hostile", _hostile_log(clean, rng))):
        job = tmp_path / name / "job"
        job.mkdir(parents=True)
        (job / OLD_RUN).write_bytes(text)
        answers.append(_every_reader(job, tmp_path / name / "logs"))
        if name == "clean":
            # And as the reference answers on the clean log.
            assert answers[0]["analysis"] == _comparable(_Reference(job / OLD_RUN).analyze_resumption_state("job"))
            ref_logger = reference.EventLogger(str(tmp_path / "ref_logs"), job_id="job")
            assert answers[0]["check_job_completion"] == ref_logger.check_job_completion(job / OLD_RUN)
    clean_answers, hostile_answers = answers
    for reader in ("find_latest_events_file",):
        assert hostile_answers[reader].name == clean_answers[reader].name == OLD_RUN
        del clean_answers[reader], hostile_answers[reader]
    assert hostile_answers == clean_answers


# --------------------------------------------------------------------------
# One reader at a time, and what 1.6.1 does


def test_analysis_of_a_log_cut_inside_a_chinese_character(tmp_path):
    """1.6.1 raises UnicodeDecodeError: the job could not resume."""
    path = tmp_path / "events_1.jsonl"
    start = json.dumps({"event_type": "partition_start", "timestamp": 1, "partition_id": 0}).encode()
    path.write_bytes(start + b"\n" + _cut_last_line())
    with pytest.raises(UnicodeDecodeError):
        _Reference(path).analyze_resumption_state("job")
    got = _Mixin(path).analyze_resumption_state("job")
    path.write_bytes(start + b"\n")
    assert _comparable(got) == _comparable(_Reference(path).analyze_resumption_state("job"))
    assert got["job_status"] == "not_started" and got["total_events"] == 1


@pytest.mark.parametrize("bad", [b"\xff\xfegarbage", b"[1, 2]", b"null", b"{oops", b"[" * 100_000])
def test_check_job_completion_reads_past_lines_it_skips(tmp_path, bad):
    path = tmp_path / "events_1.jsonl"
    path.write_bytes(bad + b'\n{"event_type": "job_complete", "timestamp": 2}\n')
    logger = ours.EventLogger(str(tmp_path / "logs"), job_id="job")
    try:
        assert logger.check_job_completion(path) is True
    finally:
        logger.close()


def test_events_follow_prints_the_events_and_skips_the_rest(tmp_path):
    job = tmp_path / "job"
    job.mkdir()
    lines = [
        b'{"event_type": "job_start", "timestamp": 1}',
        b"\xff\xfe garbage",
        b"[1]",
        b'{"event_type": "job_complete", "message": "\xe5\xae"}',
        b'{"event_type": "job_complete", "timestamp": 2}',
    ]
    (job / OLD_RUN).write_bytes(b"\n".join(lines) + b"\n")
    done = subprocess.run(
        [sys.executable, "-m", "data_juicer_accel.cli", "events", str(job), "--follow", "--json", "--timeout", "60"],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done
    printed = [json.loads(line) for line in done.stdout.splitlines()]
    assert printed == [{"event_type": "job_start", "timestamp": 1}, {"event_type": "job_complete", "timestamp": 2}]


# --------------------------------------------------------------------------
# A job that has logged nothing


def test_a_job_that_logged_nothing_gets_the_reference_answers(tmp_path):
    answers = []
    for module in (reference, ours):
        work = tmp_path / module.__name__.split(".")[0]
        logger = module.EventLogger(str(work / "logs"), job_id="job", work_dir=str(work))

        class Mixin(module.EventLoggingMixin):
            def __init__(self, event_logger):
                self.event_logger = event_logger

        answers.append(
            (
                Mixin(logger).analyze_resumption_state("job"),
                logger.find_latest_events_file(str(work)),
                {"error": f"Events file not found: {logger.jsonl_file}"},
            )
        )
        getattr(logger, "close", lambda: None)()
    for analysis, latest, expected in answers:
        assert analysis == expected
        assert latest is None


def test_the_latest_events_file_is_the_latest_run_that_logged(tmp_path):
    """A new run's file exists from construction; until it holds an event,
    the latest file is the previous run's (as in 1.6.1, where it does not exist)."""
    (tmp_path / OLD_RUN).write_text('{"event_type": "job_start", "timestamp": 1}\n')
    logger = ours.EventLogger(str(tmp_path / "logs"), job_id="job", work_dir=str(tmp_path), flush_interval=3600)
    try:
        assert logger.jsonl_file.exists()
        assert logger.find_latest_events_file(str(tmp_path)) == tmp_path / OLD_RUN
        logger.log_event(ours.Event(ours.EventType.OP_START, 2.0, "queued, not written yet"))
        # Its own queued events count: they are written first.
        assert logger.find_latest_events_file(str(tmp_path)) == logger.jsonl_file
    finally:
        logger.close()


# --------------------------------------------------------------------------
# The Ray executor's --resume path (py-data-juicer 1.6.1's own code)

_RAY_RESUME = """
import argparse, json, sys, types
from data_juicer_accel.patch import patch_data_juicer
assert patch_data_juicer()
from data_juicer.core.executor.ray_executor_partitioned import PartitionedRayExecutor
from data_juicer_accel.core.executor.event_logging_mixin import EventLogger

work_dir, job_id = sys.argv[1:]
# A PartitionedRayExecutor as far as _resume_job needs it: its real event
# logging, set up by the patched mixin (no Ray cluster needed).
executor = object.__new__(PartitionedRayExecutor)
executor.cfg = argparse.Namespace(job_id=job_id, event_logging={}, _same_yaml_config=True)
executor.work_dir = work_dir
executor.executor_type = "ray_partitioned"
executor.ckpt_manager = types.SimpleNamespace(ckpt_dir="fresh")
executor._setup_event_logging()
assert isinstance(executor.event_logger, EventLogger)
answer = {
    "work_dir_found": executor._find_work_directory(job_id),
    "resume": executor._resume_job(job_id),
    "ckpt_dir": executor.ckpt_manager.ckpt_dir,
    "own_file": executor.event_logger.jsonl_file.name,
}
executor.event_logger.close()
print(json.dumps(answer))
"""


def _ray_resume(work: Path, job_id: str) -> dict:
    """py-data-juicer 1.6.1's ``PartitionedRayExecutor._resume_job`` (what
    ``--resume`` runs) under the patch, in a fresh interpreter (the patch
    changes Data-Juicer for the whole process)."""
    done = subprocess.run(
        [sys.executable, "-c", _RAY_RESUME, str(work), job_id], capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.splitlines()[-1])


def test_ray_resume_finds_a_completed_job_past_hostile_lines(tmp_path):
    work = tmp_path / "job42"
    work.mkdir()
    (work / OLD_RUN).write_bytes(
        b'{"event_type": "job_start", "timestamp": 1}\n\xff\xfe\x00garbage\n[1]\n'
        + b'{"event_type": "job_complete", "timestamp": 2}\n'
        + _cut_last_line()
    )
    assert _ray_resume(work, "job42")["resume"] == "completed"


def test_ray_resume_resumes_an_unfinished_job_from_its_checkpoints(tmp_path):
    """The previous run's file is read, not the new run's (empty) one."""
    work = tmp_path / "job42"
    (work / "checkpoints").mkdir(parents=True)
    (work / OLD_RUN).write_bytes(b'{"event_type": "job_start", "timestamp": 1}\n\xe4\xb8\n')
    answer = _ray_resume(work, "job42")
    assert answer["resume"] == "resuming"
    assert answer["ckpt_dir"] == str(work / "checkpoints")


def test_ray_resume_of_a_completed_job_is_not_hidden_by_the_new_runs_file(tmp_path):
    work = tmp_path / "job42"
    work.mkdir()
    (work / OLD_RUN).write_text('{"event_type": "job_complete", "timestamp": 2}\n')
    assert _ray_resume(work, "job42")["resume"] == "completed"


def test_ray_resume_of_a_job_that_never_logged_fails_as_in_the_reference(tmp_path):
    """No events in the job's directory: 1.6.1 finds no work directory."""
    work = tmp_path / "job42"
    answer = _ray_resume(work, "job42")
    assert answer["work_dir_found"] is None
    assert answer["resume"] == "failed"
    assert sorted(os.listdir(work)) == sorted(["logs", answer["own_file"]])


# --------------------------------------------------------------------------
# The line reader agrees with json.loads


def _loads_object(line: str) -> bool:
    try:
        return isinstance(json.loads(line.strip()), dict)
    except ValueError:
        return False


def test_a_line_is_read_exactly_when_json_loads_returns_an_object():
    """Random short lines over a JSON alphabet (seeded): the Rust reader reads
    a line if and only if ``json.loads`` returns a dict for it."""
    from data_juicer_accel import _native

    alphabet = ["{", "}", "[", "]", ",", ":", " ", '"k"', '"', "\\", "\\u00e9", "\\ud800", "\\x", "1", "0", "-"]
    alphabet += [
        ".5",
        ".",
        "e9",
        "E-2",
        "+",
        "null",
        "true",
        "NaN",
        "Infinity",
        "\t",
        "\x01",
        "中",
        "x",
        "\x0b",
        "\ufeff",
    ]
    rng = random.Random(1)
    read = 0
    for _ in range(30_000):
        line = "{" + "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 10))) + rng.choice(["}", ""])
        got = _native.event_lines(line.encode()) == [line.strip()]
        assert got == _loads_object(line), repr(line)
        read += got
    assert read > 100, read
