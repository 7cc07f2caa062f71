"""Event logs are read as the reference (py-data-juicer 1.6.1) reads them,
except that no file stops a reader: lines no reader can read (garbage, text
that is not UTF-8, a line cut inside a character, JSON that is not an object,
integers ``json.loads`` refuses, nesting deeper than 256) are skipped, and so
are events the analysis cannot use. Where the reference answers, the answer
is the reference's; where it raises, it is the reference's answer on the log
without those lines."""

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
CUT_CHINESE = '{"event_type": "job_complete", "timestamp": 9, "message": "完成"}'.encode()[:-4]

#: name -> (lines of the log, indices of the lines the answer ignores).
CASES: dict[str, tuple[list, set[int]]] = {
    "duplicate keys": (
        [
            '{"event_type": "job_start", "timestamp": 1, "event_type": "job_complete"}',
            '{"event_type": "partition_start", "partition_id": 1, "partition_id": 2, "timestamp": 1}',
            '{"event_type": "partition_complete", "partition_id": 2, "metadata": {"success": false}, '
            '"metadata": {"success": true}, "timestamp": 2}',
        ],
        set(),
    ),
    "list partition id on a start": ([START % "[1]", DONE % "[1]", START % "2"], {0, 1}),
    "list partition id on an op only": ([START % "1", OP % "[1]", OP % "1"], set()),
    "bool and float ids": ([START % "1", DONE % "true", OP % "1.0", START % "2.0", DONE % "2"], set()),
    "string timestamp": (
        [START % "1", '{"event_type": "partition_start", "timestamp": "x", "partition_id": 1}'],
        {1},
    ),
    "null metadata": (
        [START % "1", '{"event_type": "partition_complete", "partition_id": 1, "metadata": null}'],
        {1},
    ),
    "list metadata on a checkpoint": (['{"event_type": "checkpoint_saved", "metadata": [1]}'], {0}),
    "string job_start timestamp": ([START % "1", '{"event_type": "job_start", "timestamp": "soon"}'], {1}),
    "non-object lines": (
        [START % "1", "[1, 2]", "5", '"text"', "null", "true", "NaN", JOB_COMPLETE],
        {1, 2, 3, 4, 5, 6},
    ),
    "NaN timestamps": (
        [
            '{"event_type": "partition_start", "timestamp": NaN, "partition_id": 1}',
            '{"event_type": "partition_start", "timestamp": 5, "partition_id": 1}',
        ],
        set(),
    ),
    "nested 1000 deep": ([START % "1", '{"x": ' + "[" * 1000 + "]" * 1000 + "}", JOB_COMPLETE], {1}),
    "nested 300 deep": ([START % "1", '{"event_type": "job_complete", "x": ' + "[" * 300 + "]" * 300 + "}"], {1}),
    "nested 200 deep": ([START % "1", '{"event_type": "job_complete", "x": ' + "[" * 200 + "]" * 200 + "}"], set()),
    "huge integer": (
        [
            START % "1",
            '{"event_type": "partition_complete", "partition_id": 1, "timestamp": 2, '
            '"metadata": {"success": true, "duration_seconds": 123456789012345678901234567890}}',
        ],
        set(),
    ),
    "integer json.loads refuses": (
        [START % "1", '{"event_type": "job_complete", "n": ' + "7" * 5000 + "}"],
        {1},
    ),
    "escaped keys and ids": ([START % '"a"', DONE % '"\\u0061"', '{"event\\u005ftype": "job_complete"}'], set()),
    "broken line before the end": ([START % "1", "{oops", JOB_COMPLETE], {1}),
    "binary garbage": ([START % "1", b"\xff\xfe\x00\x01garbage\x80", JOB_COMPLETE], {1}),
    "invalid UTF-8 inside an event": (
        [START % "1", b'{"event_type": "job_complete", "message": "\xe5\xae"}', DONE % "1"],
        {1},
    ),
    "a character cut at the end of the last line": ([START % "1", DONE % "1", CUT_CHINESE], {2}),
    "plain": ([START % "1", OP % "1", DONE % "1", JOB_COMPLETE], set()),
}


#: Cases where the reference reads a line every reader here skips: nesting
#: deeper than 256 levels (Python reads it only while its stack allows).
DEEPER_THAN_READ = {"nested 300 deep"}


def _log_bytes(lines) -> bytes:
    """The lines, one a line; a last line that is bytes ends without a newline
    when it is a cut character (a kill mid-write)."""
    out = b""
    for line in lines:
        out += line if isinstance(line, bytes) else line.encode()
        if line is not CUT_CHINESE:
            out += b"\n"
    return out


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
    """The reference's analysis, ours, and ours through its Python reading
    (a subclass overriding a helper does not get the Rust pass)."""
    logger = types.SimpleNamespace(jsonl_file=path)

    class Reference(reference.EventLoggingMixin):
        def __init__(self):
            self.event_logger = logger

    class Ours(ours.EventLoggingMixin):
        def __init__(self):
            self.event_logger = logger

    class OursInPython(Ours):
        def _determine_job_status(self, *args):
            return super()._determine_job_status(*args)

    return Reference(), Ours(), OursInPython()


def _check_job_completion(cls, path: Path, tmp_path: Path):
    """``check_job_completion`` of a real ``EventLogger`` of ``cls``'s module."""
    logger = cls(str(tmp_path / f"logs_{cls.__module__.split('.')[0]}"), job_id="job")
    try:
        return _outcome(lambda: logger.check_job_completion(path))
    finally:
        getattr(logger, "close", lambda: None)()


def _answers(path: Path, tmp_path: Path) -> dict:
    ref, acc, acc_py = _analyses(path)
    analysis = [_outcome(lambda a=a: a.analyze_resumption_state("job")) for a in (ref, acc, acc_py)]
    return {
        "reference analysis": (analysis[0][0], _comparable(analysis[0][1])),
        "analysis": (analysis[1][0], _comparable(analysis[1][1])),
        "analysis in Python": (analysis[2][0], _comparable(analysis[2][1])),
        "reference check_job_completion": _check_job_completion(reference.EventLogger, path, tmp_path),
        "check_job_completion": _check_job_completion(ours.EventLogger, path, tmp_path),
    }


@pytest.mark.parametrize("name", sorted(CASES))
def test_readers_answer_as_the_reference_does_without_the_lines_they_skip(tmp_path, name):
    lines, ignored = CASES[name]
    path = tmp_path / "events_1.jsonl"
    path.write_bytes(_log_bytes(lines))
    got = _answers(path, tmp_path / "a")
    path.write_bytes(_log_bytes([line for i, line in enumerate(lines) if i not in ignored]))
    clean = _answers(path, tmp_path / "b")

    expected = clean["reference analysis"]
    assert expected[0] == "ok", expected
    assert got["analysis"] == expected
    assert got["analysis in Python"] == expected
    assert got["check_job_completion"] == clean["reference check_job_completion"]
    # Where the reference answers, it is the same answer (check_job_completion
    # of the reference stops at the first line that is not JSON).
    if got["reference analysis"][0] == "ok" and name not in DEEPER_THAN_READ:
        assert got["analysis"] == got["reference analysis"]
    if not ignored:
        assert got["check_job_completion"] == got["reference check_job_completion"]


@pytest.mark.parametrize(
    ("name", "error"),
    [
        ("a character cut at the end of the last line", UnicodeDecodeError),
        ("binary garbage", UnicodeDecodeError),
        ("non-object lines", AttributeError),
        ("nested 1000 deep", RecursionError),
    ],
)
def test_the_reference_raises_where_ours_skips(tmp_path, name, error):
    """The defects: 1.6.1 raises UnicodeDecodeError on a character cut at the
    end (a job that cannot resume), and on garbage, non-objects, deep nesting."""
    path = tmp_path / "events_1.jsonl"
    path.write_bytes(_log_bytes(CASES[name][0]))
    ref, acc, _ = _analyses(path)
    with pytest.raises(error):
        ref.analyze_resumption_state("job")
    assert acc.analyze_resumption_state("job")["total_events"] == len(CASES[name][0]) - len(CASES[name][1])


def test_a_duplicate_key_does_not_drop_the_line(tmp_path):
    path = tmp_path / "events_1.jsonl"
    path.write_text('{"event_type": "job_start", "event_type": "job_complete", "timestamp": 1}\n')
    assert _check_job_completion(reference.EventLogger, path, tmp_path) == ("ok", True)
    assert _check_job_completion(ours.EventLogger, path, tmp_path) == ("ok", True)
    assert _analyses(path)[1].analyze_resumption_state("job")["job_status"] == "completed"


@pytest.mark.parametrize(
    "name", ["list partition id on a start", "nested 1000 deep", "non-object lines", "binary garbage"]
)
def test_events_command_reports_a_log_with_lines_it_skips(tmp_path, name):
    lines, ignored = CASES[name]
    reports = []
    for kept in (lines, [line for i, line in enumerate(lines) if i not in ignored]):
        job = tmp_path / f"job{len(reports)}"
        job.mkdir()
        (job / "events_1.jsonl").write_bytes(_log_bytes(kept))
        done = subprocess.run(
            [sys.executable, "-m", "data_juicer_accel.cli", "events", str(job), "--json"],
            capture_output=True,
            text=True,
        )
        assert done.returncode == 0, done
        assert "Traceback" not in done.stderr
        report = json.loads(done.stdout)
        for moving in ("work_dir", "events_file", "job_id"):
            report.pop(moving)
            report["resumption"].pop(moving, None)
        report["runs"] = [{k: v for k, v in run.items() if k != "events_file"} for run in report["runs"]]
        reports.append(report)
    assert _comparable(reports[0].pop("resumption")) == _comparable(reports[1].pop("resumption"))
    if name != "list partition id on a start":  # readable lines, counted; only the analysis leaves them out
        assert reports[0] == reports[1]
