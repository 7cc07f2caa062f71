"""Event logs are read as the reference (py-data-juicer 1.6.1) reads them:
the same files through both analyses give the same result, or the same
exception, and the ``events`` command turns a file it cannot read into a
one-line message."""

from __future__ import annotations

import json
import subprocess
import sys
import types
from pathlib import Path

import pytest

reference = pytest.importorskip("data_juicer.core.executor.event_logging_mixin")
from data_juicer_accel.core.executor import event_logging_mixin as ours  # noqa: E402

START = '{"event_type": "partition_start", "timestamp": 1, "partition_id": %s}'
DONE = '{"event_type": "partition_complete", "timestamp": 2, "partition_id": %s, "metadata": {"success": true}}'
OP = '{"event_type": "op_start", "timestamp": 3, "partition_id": %s, "operation_name": "op"}'
JOB_COMPLETE = '{"event_type": "job_complete", "timestamp": 9}'

CASES = {
    "duplicate keys": [
        '{"event_type": "job_start", "timestamp": 1, "event_type": "job_complete"}',
        '{"event_type": "partition_start", "partition_id": 1, "partition_id": 2, "timestamp": 1}',
        '{"event_type": "partition_complete", "partition_id": 2, "metadata": {"success": false}, '
        '"metadata": {"success": true}, "timestamp": 2}',
    ],
    "list partition id on a start": [START % "[1]", DONE % "[1]"],
    "list partition id on an op only": [START % "1", OP % "[1]", OP % "1"],
    "bool and float ids": [START % "1", DONE % "true", OP % "1.0", START % "2.0", DONE % "2"],
    "string timestamp": [START % "1", '{"event_type": "partition_start", "timestamp": "x", "partition_id": 1}'],
    "null metadata": [START % "1", '{"event_type": "partition_complete", "partition_id": 1, "metadata": null}'],
    "list metadata on a checkpoint": ['{"event_type": "checkpoint_saved", "metadata": [1]}'],
    "non-object line": [START % "1", "[1, 2]"],
    "NaN timestamps": [
        '{"event_type": "partition_start", "timestamp": NaN, "partition_id": 1}',
        '{"event_type": "partition_start", "timestamp": 5, "partition_id": 1}',
    ],
    "nested 1000 deep": [START % "1", '{"x": ' + "[" * 1000 + "]" * 1000 + "}"],
    "nested 500 deep": [START % "1", '{"event_type": "job_complete", "x": ' + "[" * 500 + "]" * 500 + "}"],
    "huge integer": [
        START % "1",
        '{"event_type": "partition_complete", "partition_id": 1, "timestamp": 2, '
        '"metadata": {"success": true, "duration_seconds": 123456789012345678901234567890}}',
    ],
    "escaped keys and ids": [START % '"a"', DONE % '"\\u0061"', '{"event\\u005ftype": "job_complete"}'],
    "broken line before the end": [START % "1", "{oops", JOB_COMPLETE],
    "plain": [START % "1", OP % "1", DONE % "1", JOB_COMPLETE],
}


def _outcome(fn):
    try:
        return ("ok", fn())
    except Exception as e:  # the reference's exception is part of its result
        return ("raises", type(e))


def _comparable(result):
    if not isinstance(result, dict):
        return result
    result = dict(result)
    result.pop("analysis_timestamp", None)
    # Our addition (the op a default-executor checkpoint holds), not in the
    # reference; tests/test_integration_per_op_ckpt.py checks it.
    result.pop("resume_after_operation", None)
    metrics = dict(result.pop("progress_metrics", {}))
    for moving in ("current_time", "elapsed_time_seconds"):
        metrics.pop(moving, None)
    result["progress_metrics"] = metrics
    return json.loads(json.dumps(result, default=repr))


def _analyses(path: Path):
    logger = types.SimpleNamespace(jsonl_file=path)

    class Reference(reference.EventLoggingMixin):
        def __init__(self):
            self.event_logger = logger

    class Ours(ours.EventLoggingMixin):
        def __init__(self):
            self.event_logger = logger

    return Reference(), Ours()


def _loggers(tmp_path: Path):
    """A reference and a package ``EventLogger``, each in its own directory."""
    return (
        reference.EventLogger(str(tmp_path / "ref_logs"), job_id="job"),
        ours.EventLogger(str(tmp_path / "our_logs"), job_id="job"),
    )


@pytest.mark.parametrize("name", sorted(CASES))
def test_analysis_matches_the_reference(tmp_path, name):
    path = tmp_path / "events_1.jsonl"
    path.write_text("\n".join(CASES[name]) + "\n")
    ref, acc = _analyses(path)
    kind, expected = _outcome(lambda: ref.analyze_resumption_state("job"))
    got_kind, got = _outcome(lambda: acc.analyze_resumption_state("job"))
    assert got_kind == kind, (got, expected)
    if kind == "ok":
        assert _comparable(got) == _comparable(expected)
    else:
        assert got is expected
    ref_logger, our_logger = _loggers(path.parent)
    expected = _outcome(lambda: ref_logger.check_job_completion(path))
    assert _outcome(lambda: our_logger.check_job_completion(path)) == expected
    our_logger.close()


def test_a_duplicate_key_does_not_drop_the_line(tmp_path):
    path = tmp_path / "events_1.jsonl"
    path.write_text('{"event_type": "job_start", "event_type": "job_complete", "timestamp": 1}\n')
    ref_logger, our_logger = _loggers(tmp_path)
    assert ref_logger.check_job_completion(path) is True
    assert our_logger.check_job_completion(path) is True
    our_logger.close()
    assert _analyses(path)[1].analyze_resumption_state("job")["job_status"] == "completed"


@pytest.mark.parametrize("name", ["list partition id on a start", "nested 1000 deep", "non-object line"])
def test_events_command_prints_one_line_and_exits_1(tmp_path, name):
    job = tmp_path / "job"
    job.mkdir()
    (job / "events_1.jsonl").write_text("\n".join(CASES[name]) + "\n")
    done = subprocess.run(
        [sys.executable, "-m", "data_juicer_accel.cli", "events", str(job)], capture_output=True, text=True
    )
    assert done.returncode == 1, done
    assert "Traceback" not in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert "events_1.jsonl" in done.stderr
