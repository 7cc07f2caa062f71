"""The data-juicer-accel command line: inspect, events, exit codes, --json, --follow.

Commands run as subprocesses (``python -m data_juicer_accel``), as a user or a
script would run them. Checkpoints come from the drop-in's CheckpointManager
and from the reference's (py-data-juicer 1.6.1, unpatched); jobs' events from
the drop-in's EventLoggingMixin. Checks on real dj-process jobs are in
test_integration_e2e.py.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from data_juicer_accel.core.executor.event_logging_mixin import EventLoggingMixin
from data_juicer_accel.utils.ckpt_utils import CheckpointManager
from tests.conftest import require, text_table

OPS = [{"first_mapper": {"a": 1}}, {"second_filter": {"b": 2}}]


def cli(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    env = dict(os.environ, PIP_NO_INDEX="1", UV_OFFLINE="1", USE_TORCH="0")
    return subprocess.run(
        [sys.executable, "-m", "data_juicer_accel", *args], capture_output=True, text=True, env=env, timeout=timeout
    )


@pytest.fixture
def our_ckpt(tmp_path) -> Path:
    """A job dir ``<tmp>/work/job7`` whose ckpt/ the drop-in wrote: 2 ops, 2000 rows, 2 shards."""
    ckpt = tmp_path / "work" / "job7" / "ckpt"
    manager = CheckpointManager(str(ckpt), OPS, num_proc=2)
    for op in OPS:
        manager.record(op)
    manager.save_ckpt(text_table(2000))
    return ckpt


@pytest.fixture
def ref_ckpt(tmp_path) -> Path:
    """A ckpt/ written by the reference CheckpointManager (datasets save_to_disk)."""
    ckpt_utils = require("data_juicer.utils.ckpt_utils")
    datasets = require("datasets")
    ckpt = tmp_path / "ref" / "ckpt"
    manager = ckpt_utils.CheckpointManager(str(ckpt), OPS, num_proc=1)
    manager.record(OPS[0])
    manager.save_ckpt(datasets.Dataset.from_dict({"text": [f"row {i}" for i in range(37)]}))
    return ckpt


# --------------------------------------------------------------------------
# top level


def test_help_lists_the_subcommands():
    proc = cli("--help")
    assert proc.returncode == 0
    for name in ("inspect", "events", "dj-process"):
        assert name in proc.stdout
    assert cli().returncode == 2


#: The console script next to this interpreter, as a user runs it.
CONSOLE_SCRIPT = Path(sys.executable).with_name("data-juicer-accel")


@pytest.mark.parametrize("delay", [0.0, 0.05, 0.15, 0.3, 0.7])
def test_ctrl_c_while_the_command_is_still_importing(tmp_path, delay):
    """A Ctrl-C ``delay`` seconds after the command line's module is imported
    (the interpreter's own start-up, before any of this package's code runs,
    is Python's), while the bench is still importing what it runs: one line,
    exit 130, no traceback, nothing left in the temp dir."""
    if not CONSOLE_SCRIPT.exists():
        pytest.skip(f"no console script at {CONSOLE_SCRIPT}")
    tmpdir = tmp_path / "tmp"
    tmpdir.mkdir()
    # Python reports each import as it completes: the moment this package's
    # command line module is in place is seen on stderr, not guessed.
    env = dict(os.environ, TMPDIR=str(tmpdir), PYTHONPROFILEIMPORTTIME="1", PIP_NO_INDEX="1")
    proc = subprocess.Popen(
        [str(CONSOLE_SCRIPT), "bench", "--size", "40MB", "--rounds", "1"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        start_new_session=True,
    )
    try:
        assert proc.stderr is not None
        err = []
        for line in proc.stderr:
            err.append(line)
            if re.search(r"\|\s+data_juicer_accel\.cli$", line.rstrip()):  # indented: the console module imports it
                break
        time.sleep(delay)  # not a synchronisation: the moment of the Ctrl-C is what varies
        os.killpg(proc.pid, signal.SIGINT)
        out, rest = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    said = [line.strip() for line in [*err, *rest.splitlines()] if not line.startswith("import time:")]
    assert "Traceback" not in rest and "KeyboardInterrupt" not in rest, rest
    assert proc.returncode == 130, rest
    assert said and said[-1] == "data-juicer-accel: interrupted; nothing left behind", rest
    assert all(line.startswith(("expected:", "temporary disk:", "[")) for line in said[:-1]), rest
    assert out == "" and list(tmpdir.iterdir()) == []


# --------------------------------------------------------------------------
# inspect


def test_inspect_our_checkpoint_json(our_ckpt):
    proc = cli("inspect", str(our_ckpt), "--json")
    assert proc.returncode == 0, proc.stderr
    r = json.loads(proc.stdout)
    assert r["writer"] == "data-juicer-accel"
    assert r["format_version"] == 1
    assert r["kind"] == "arrow" and r["codec"] == "zstd"
    assert r["num_rows"] == 2000 == sum(s["rows"] for s in r["shards"])
    assert r["total_bytes"] == sum(s["bytes"] for s in r["shards"])
    assert r["raw_bytes"] == sum(s["raw_bytes"] for s in r["shards"])
    assert r["compression_ratio"] == pytest.approx(r["raw_bytes"] / r["total_bytes"])
    assert r["compression_ratio"] > 1
    assert [op["name"] for op in r["ops_recorded"]] == ["first_mapper", "second_filter"]
    assert r["ops_recorded"][0]["args"] == {"a": 1}
    assert r["damaged"] is False and r["problems"] == []
    for shard in r["shards"]:
        assert os.path.getsize(our_ckpt / "latest" / shard["file"]) == shard["bytes"]


def test_inspect_table_output(our_ckpt):
    proc = cli("inspect", str(our_ckpt))
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    for needle in ("written by:", "data-juicer-accel", "rows:", "2000", "compression ratio:", "Shards:", "xxh3-64"):
        assert needle in out, needle
    assert "first_mapper" in out and "second_filter" in out


@pytest.mark.parametrize("form", ["ckpt", "latest", "job"])
def test_inspect_accepts_ckpt_dir_latest_or_job_dir(our_ckpt, form):
    path = {"ckpt": our_ckpt, "latest": our_ckpt / "latest", "job": our_ckpt.parent}[form]
    proc = cli("inspect", str(path), "--json")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["ckpt_dir"] == str(our_ckpt)


def test_inspect_verify_ok(our_ckpt):
    proc = cli("inspect", str(our_ckpt), "--verify", "--json")
    assert proc.returncode == 0, proc.stderr
    r = json.loads(proc.stdout)
    assert r["verify"]["ok"] is True and r["verify"]["rows"] == 2000


def test_inspect_verify_finds_a_flipped_byte(our_ckpt):
    manifest = json.loads((our_ckpt / "latest" / "accel_manifest.json").read_text())
    shard = our_ckpt / "latest" / manifest["shards"][1]["file"]
    data = bytearray(shard.read_bytes())
    data[len(data) // 2] ^= 0x40
    shard.write_bytes(bytes(data))

    assert cli("inspect", str(our_ckpt)).returncode == 0  # same size: only checksums can tell
    proc = cli("inspect", str(our_ckpt), "--verify")
    assert proc.returncode == 1
    assert "Verify: FAILED" in proc.stdout and shard.name in proc.stdout
    r = json.loads(cli("inspect", str(our_ckpt), "--verify", "--json").stdout)
    assert r["damaged"] is True and r["verify"]["ok"] is False and shard.name in r["verify"]["error"]


def test_inspect_truncated_or_missing_shard_is_damaged_without_verify(our_ckpt):
    manifest = json.loads((our_ckpt / "latest" / "accel_manifest.json").read_text())
    first, second = (our_ckpt / "latest" / s["file"] for s in manifest["shards"])
    with open(first, "r+b") as f:
        f.truncate(100)
    second.unlink()
    proc = cli("inspect", str(our_ckpt), "--json")
    assert proc.returncode == 1
    problems = json.loads(proc.stdout)["problems"]
    assert any(first.name in p and "manifest says" in p for p in problems)
    assert any(second.name in p and "missing" in p for p in problems)
    assert "DAMAGED" in cli("inspect", str(our_ckpt)).stdout


def test_inspect_unreadable_manifest_is_damaged(our_ckpt):
    (our_ckpt / "latest" / "accel_manifest.json").write_text("{not json")
    proc = cli("inspect", str(our_ckpt), "--json")
    assert proc.returncode == 1
    assert json.loads(proc.stdout)["damaged"] is True


def test_inspect_reference_checkpoint(ref_ckpt):
    proc = cli("inspect", str(ref_ckpt), "--json")
    assert proc.returncode == 0, proc.stderr
    r = json.loads(proc.stdout)
    assert r["writer"] == "data-juicer (datasets save_to_disk)"
    assert r["format_version"] is None
    assert r["num_rows"] == 37
    assert [op["name"] for op in r["ops_recorded"]] == ["first_mapper"]
    assert r["shards"][0]["file"].startswith("data-")
    out = cli("inspect", str(ref_ckpt), "--verify").stdout
    assert "written by the original Data-Juicer" in out and "Verify: OK" in out


def test_inspect_missing_and_foreign_directories(tmp_path):
    proc = cli("inspect", str(tmp_path / "nope"))
    assert proc.returncode == 2 and "no such directory" in proc.stderr
    (tmp_path / "somedir").mkdir()
    (tmp_path / "somedir" / "notes.txt").write_text("hello")
    proc = cli("inspect", str(tmp_path / "somedir"))
    assert proc.returncode == 2 and "not a Data-Juicer checkpoint directory" in proc.stderr
    proc = cli("inspect", str(tmp_path / "somedir"), "--json")
    assert proc.returncode == 2 and json.loads(proc.stdout)["exit_code"] == 2
    (tmp_path / "odd" / "latest").mkdir(parents=True)  # a latest/ with neither manifest nor state.json
    proc = cli("inspect", str(tmp_path / "odd"))
    assert proc.returncode == 2 and "neither a data-juicer-accel checkpoint" in proc.stderr


def test_inspect_config_that_does_not_match_the_record(our_ckpt, tmp_path):
    require("data_juicer")
    cfg = tmp_path / "other.yaml"
    cfg.write_text(
        f"""dataset_path: {tmp_path}/data.jsonl
export_path: {tmp_path}/out/result.jsonl
work_dir: {tmp_path}/work
process:
  - whitespace_normalization_mapper:
  - words_num_filter:
      min_num: 5
"""
    )
    proc = cli("inspect", str(our_ckpt), "--config", str(cfg), "--json")
    assert proc.returncode == 0, proc.stderr
    c = json.loads(proc.stdout)["config"]
    assert c["job_id"] == "job7"
    assert c["checkpoint_usable"] is False
    assert c["would_skip"] == []
    assert c["would_run"] == ["whitespace_normalization_mapper", "words_num_filter"]
    assert "different" in c["reason"]
    assert not (tmp_path / "out").exists()  # inspecting wrote nothing


# --------------------------------------------------------------------------
# events


class _Job(EventLoggingMixin):
    executor_type = "test"

    def __init__(self, work_dir: Path, job_id: str):
        from types import SimpleNamespace

        self.cfg = SimpleNamespace(job_id=job_id, config=["cfg.yaml"], event_logging={})
        self.work_dir = str(work_dir)
        EventLoggingMixin.__init__(self)


def make_partitioned_job(work_dir: Path, finish: bool) -> _Job:
    job = _Job(work_dir, work_dir.name)
    job._create_job_summary()
    job.log_job_start({"dataset_path": "x.jsonl"}, 3)
    for pid in range(3):
        job.log_partition_start(pid, {"rows": 10})
        job.log_op_start(pid, "clean_email_mapper", 0, {})
        job.log_op_complete(pid, "clean_email_mapper", 0, 0.5, None, 10, 10)
    job.log_checkpoint_save(0, "clean_email_mapper", 0, str(work_dir / "ckpt" / "p0"))
    job.log_partition_complete(0, 1.5, str(work_dir / "out" / "p0"))
    job.log_partition_complete(1, 1.0, None, success=False, error="boom")
    if finish:
        job.log_job_complete(3.0, str(work_dir / "out"))
    job.event_logger.close()
    return job


def test_events_report_of_a_partitioned_job(tmp_path):
    work = tmp_path / "job-p"
    make_partitioned_job(work, finish=False)
    proc = cli("events", str(work), "--json")
    assert proc.returncode == 0, proc.stderr
    r = json.loads(proc.stdout)
    assert r["job_id"] == "job-p"
    assert r["job_status"] == "completed_with_failures"  # the reference rule: a partition ended in failure
    assert r["event_counts"]["partition_start"] == 3 and r["event_counts"]["op_complete"] == 3
    res = r["resumption"]
    assert res["can_resume"] is True
    assert res["partitions_to_retry"] == [1]
    assert res["partitions_to_skip"] == [0]
    states = {int(k): v for k, v in res["partition_states"].items()}
    assert states[0]["status"] == "completed" and states[1]["status"] == "failed" and states[2]["status"] == "running"
    assert r["job_summary"]["resumption_command"] == "dj-process --config cfg.yaml --job_id job-p"
    assert len(r["runs"]) == 1 and r["runs"][0]["ended"] is None

    out = cli("events", str(work)).stdout
    for needle in (
        "status:",
        "completed_with_failures",
        "EVENT LOGGING STATUS REPORT",
        "Resumption plan:",
        "Partitions (3):",
        "boom",
    ):
        assert needle in out, needle
    assert "resume with: dj-process --config cfg.yaml --job_id job-p" in out


def test_events_finds_the_single_job_under_a_work_root(tmp_path):
    make_partitioned_job(tmp_path / "root" / "jobA", finish=True)
    r = json.loads(cli("events", str(tmp_path / "root"), "--json").stdout)
    assert r["job_id"] == "jobA" and r["job_status"] == "completed"
    make_partitioned_job(tmp_path / "root" / "jobB", finish=True)
    proc = cli("events", str(tmp_path / "root"))
    assert proc.returncode == 2 and "holds 2 jobs" in proc.stderr and "jobB" in proc.stderr


def test_events_missing_or_empty_directory(tmp_path):
    proc = cli("events", str(tmp_path / "nope"))
    assert proc.returncode == 2 and "no such directory" in proc.stderr
    proc = cli("events", str(tmp_path), "--json")
    assert proc.returncode == 2 and "no Data-Juicer job events" in proc.stderr
    assert json.loads(proc.stdout)["exit_code"] == 2


def test_events_does_not_write_to_the_job(tmp_path):
    work = tmp_path / "job-ro"
    make_partitioned_job(work, finish=True)
    before = {p: p.stat().st_mtime_ns for p in work.rglob("*")}
    assert cli("events", str(work)).returncode == 0
    assert {p: p.stat().st_mtime_ns for p in work.rglob("*")} == before


def _line(event_type: str, message: str, **extra) -> bytes:
    return (
        json.dumps({"event_type": event_type, "timestamp": time.time(), "message": message, **extra}) + "\n"
    ).encode()


def test_follow_tails_a_running_job_until_it_completes(tmp_path):
    work = tmp_path / "job-f"
    work.mkdir()
    events = work / "events_20260101_000000.jsonl"
    events.write_bytes(_line("job_start", "Job started"))
    follower = subprocess.Popen(
        [sys.executable, "-m", "data_juicer_accel", "events", str(work), "--follow", "--timeout", "120"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert "job_start" in follower.stdout.readline()  # it has read the file: now append as a job would
        with open(events, "ab") as f:
            f.write(_line("op_start", "op one", operation_name="clean_email_mapper"))
            f.flush()
            half = _line("op_complete", "op one done", operation_name="clean_email_mapper")
            f.write(half[:20])  # a partial line: not printed until complete
            f.flush()
        assert "op=clean_email_mapper  op one" in follower.stdout.readline()
        with open(events, "ab") as f:
            f.write(half[20:])
            f.write(_line("job_complete", "Job completed successfully"))
        out, err = follower.communicate(timeout=120)
    finally:
        if follower.poll() is None:
            follower.kill()
    assert follower.returncode == 0, err
    lines = out.splitlines()
    assert [ln.split("  ")[1] for ln in lines] == ["op_complete", "job_complete"]
    assert "op one done" in lines[0]


def test_follow_switches_to_a_new_run_and_reports_failure(tmp_path):
    work = tmp_path / "job-g"
    work.mkdir()
    old = work / "events_20260101_000000.jsonl"
    old.write_bytes(_line("job_start", "first run"))
    new = work / "events_20260101_000100.jsonl"
    new.write_bytes(_line("job_start", "second run") + _line("job_failed", "boom"))
    os.utime(old, (1, 1))  # the older run is older
    proc = cli("events", str(work), "--follow", "--timeout", "60", "--json")
    assert proc.returncode == 1
    assert [json.loads(ln)["message"] for ln in proc.stdout.splitlines()] == ["second run", "boom"]


def test_follow_timeout_and_missing_dir(tmp_path):
    work = tmp_path / "job-h"
    work.mkdir()
    (work / "events_20260101_000000.jsonl").write_bytes(_line("job_start", "Job started"))
    proc = cli("events", str(work), "--follow", "--timeout", "0.5")
    assert proc.returncode == 124
    assert "job_start" in proc.stdout and "no job_complete/job_failed" in proc.stderr
    assert cli("events", str(tmp_path / "nope"), "--follow").returncode == 2


def test_dj_process_wrapper_passes_arguments_to_data_juicer():
    require("data_juicer")
    proc = cli("dj-process", "--help", timeout=180)
    assert proc.returncode == 0, proc.stderr
    assert "--config" in proc.stdout and "--use_checkpoint" in proc.stdout


def _documented_checkpoint_yaml() -> list[str]:
    """The ```yaml blocks of README.md and docs/usage.md that set ``checkpoint:`` keys."""
    import re

    root = Path(__file__).resolve().parent.parent
    blocks = []
    for doc in ("README.md", "docs/usage.md"):
        text = (root / doc).read_text()
        blocks += [b for b in re.findall(r"```yaml\n(.*?)```", text, re.S) if "checkpoint:" in b]
    assert blocks, "no per-op checkpoint YAML in README.md or docs/usage.md"
    return blocks


def test_inspect_config_accepts_the_documented_per_op_checkpoint_keys(our_ckpt, tmp_path):
    """``checkpoint.background`` is this package's key: inspect reads a config
    as ``data-juicer-accel dj-process`` does, patched."""
    require("data_juicer")
    for i, block in enumerate(_documented_checkpoint_yaml()):
        cfg = tmp_path / f"documented-{i}.yaml"
        cfg.write_text(
            f"dataset_path: {tmp_path}/data.jsonl\nwork_dir: {tmp_path}/work\n{block}"
            "process:\n  - whitespace_normalization_mapper:\n"
        )
        proc = cli("inspect", str(our_ckpt), "--config", str(cfg), "--json")
        assert proc.returncode == 0, f"{block}\n{proc.stderr}"
        assert json.loads(proc.stdout)["config"]["would_run"] == ["whitespace_normalization_mapper"]


def test_inspect_config_with_an_unknown_key_is_one_line_naming_it(our_ckpt, tmp_path):
    require("data_juicer")
    cfg = tmp_path / "typo.yaml"
    cfg.write_text(f"dataset_path: x.jsonl\nwork_dir: {tmp_path}/work\ncheckpoint:\n  backgruond: true\n")
    proc = cli("inspect", str(our_ckpt), "--config", str(cfg))
    assert proc.returncode == 2
    assert proc.stderr.splitlines() == [
        f"data-juicer-accel: cannot load config {cfg}: Option 'checkpoint.backgruond' is not accepted "
        "(the accepted options: data-juicer-accel dj-process --help)"
    ]


def test_a_closed_stdout_ends_quietly_with_141(tmp_path):
    """``events --json | head -1``: the reader goes away while the command
    writes; it ends with no BrokenPipeError and the code a command killed by
    SIGPIPE gets (128 + 13), as ``yes | head`` does."""
    work = tmp_path / "job-pipe"
    work.mkdir()
    lines = [_line("job_start", "Job started")]
    lines += [_line("op_start", f"op {i}", operation_name="clean_email_mapper") for i in range(20_000)]
    (work / "events_20260101_000000.jsonl").write_bytes(b"".join([*lines, _line("job_complete", "done")]))
    proc = subprocess.Popen(
        [sys.executable, "-m", "data_juicer_accel", "events", str(work), "--follow", "--json"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert "job_start" in proc.stdout.readline()
    proc.stdout.close()  # more than a pipe buffer is still to come
    err = proc.stderr.read()
    assert proc.wait(120) == 141
    assert err == ""
