"""The default executor's checkpoint in an S3-compatible bucket, in a real
``data-juicer-accel dj-process`` (py-data-juicer 1.6.1) against moto's
S3-protocol server on loopback.

With ``use_checkpoint: true`` and ``checkpoint_dir: s3://bucket/prefix``
(Data-Juicer's key for its partitioned executor's checkpoints), the patched
``DefaultExecutor`` keeps its checkpoint in the bucket; without the key, in
``work_dir/ckpt`` as 1.6.1 does. Checked:

* a full run checkpointing in the bucket exports what an uninterrupted run
  of the original Data-Juicer, without checkpoints, exports; its last
  version in the bucket records every op, and nothing is written to
  ``work_dir/ckpt`` nor to a local directory named ``s3:``;
* a run with ``checkpoint.strategy: every_op`` (``checkpoint.background``
  true, and false) SIGKILLed inside op 3 once the checkpoint of ops 1-2 is
  published in the bucket, then run again with the same command: the second
  run skips ops 1-2 and exports exactly what the uninterrupted run exports;
* where ``checkpoint_dir`` puts the executor's manager (unset, a directory,
  a bucket with ``{job_id}``, another URI), without running a job;
* ``data-juicer-accel inspect s3://bucket/prefix`` describes the newest
  version (rows, shards, codec, op record), finds damage, never shows
  credentials.

The bucket's contents are read with boto3 (the test harness's client), not
with the code under test. Torch and downloads are kept away as in
test_integration_e2e.py; the hanging op and the kill are those of
test_integration_per_op_ckpt.py.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.conftest import require

require("data_juicer")

from tests.test_cli import cli  # noqa: E402
from tests.test_integration_e2e import _dj_env, dj_command, read_jsonl  # noqa: E402
from tests.test_integration_per_op_ckpt import wait_for, write_support  # noqa: E402

RUN_TIMEOUT = 300
JOB = "job1"
OPS = [
    "whitespace_normalization_mapper",
    "clean_email_mapper",
    "dja_hang_when_told_mapper",
    "text_length_filter",
    "words_num_filter",
]
HANG_OP_INDEX = OPS.index("dja_hang_when_told_mapper")
#: A key id and secret moto accepts, distinctive enough to search the output for.
SHOWN_NEVER = {"AWS_ACCESS_KEY_ID": "AKIDNEVERSHOWN0001", "AWS_SECRET_ACCESS_KEY": "secret-never-shown-7f3a"}


def write_config(root: Path, support: dict[str, Path], *, checkpoint_dir: str | None, checkpoint: str | None) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    cfg = root / "config.yaml"
    lines = [
        "project_name: dja-bucket",
        f"dataset_path: {support['data']}",
        f"export_path: {root}/unused/result.jsonl",
        f"work_dir: {root}/work",
        # Its own HF datasets cache: jobs on the same jsonl run at once, and
        # the reference run caches its maps there; they share nothing on disk.
        f"ds_cache_dir: {root}/hf_cache",
        # One process: on this busy machine, map workers of HF's pool were
        # seen dying now and then (in unpatched runs too), failing the job.
        "np: 1",
        f"use_checkpoint: {'true' if checkpoint_dir else 'false'}",
        "open_monitor: false",
        "skip_op_error: false",
        f"custom_operator_paths: ['{support['ops']}']",
    ]
    if checkpoint_dir:
        lines.append(f"checkpoint_dir: {checkpoint_dir}")
    if checkpoint:
        lines.append(f"checkpoint:\n{checkpoint}")
    cfg.write_text(
        "\n".join(lines)
        + """
process:
  - whitespace_normalization_mapper:
  - clean_email_mapper:
  - dja_hang_when_told_mapper:
  - text_length_filter:
      min_len: 20
  - words_num_filter:
      min_num: 5
"""
    )
    return cfg


def command(kind: str, cfg: Path, export: Path) -> list[str]:
    return [*dj_command(kind), "--config", str(cfg), "--job_id", JOB, "--export_path", str(export)]


def job_env(support: dict[str, Path], s3: dict[str, str], root: Path) -> dict[str, str]:
    """The environment of a job in ``root``: HF's caches (modules, datasets)
    of its own, as its config's ``ds_cache_dir``, since jobs run at once."""
    return {**_dj_env(support, fail=False), **s3, "HF_HOME": str(root / "hf_home")}


def run(kind: str, cfg: Path, export: Path, log: Path, env: dict[str, str]) -> int:
    with open(log, "w") as out:
        return subprocess.run(
            command(kind, cfg, export),
            env=env,
            cwd=cfg.parent,
            stdout=out,
            stderr=subprocess.STDOUT,
            timeout=RUN_TIMEOUT,
        ).returncode


def published_ops(server, bucket: str, prefix: str) -> list[str]:
    """The ops recorded by the newest version published under ``prefix``
    (keys of newer versions sort first); [] when there is none yet."""
    from botocore.exceptions import ClientError

    versions = server.list_keys(bucket, f"{prefix}/versions/")
    if not versions:
        return []
    try:
        manifest = json.loads(server.get(bucket, versions[0]))
        record = json.loads(server.get(bucket, f"{prefix}/{manifest['generation']}/ckpt_op.json"))
    except ClientError:  # removed by a newer save between the listing and the read
        return []
    return [next(iter(op)) for op in record]


def uri_named_paths(root: Path) -> list[Path]:
    """Local paths with a component that looks like a URI scheme (``s3:``)."""
    return [p for p in root.rglob("*") if any(part.endswith(":") for part in p.relative_to(root).parts)]


def run_killed_inside_the_hanging_op(
    cfg: Path, export: Path, log: Path, env: dict[str, str], published: Callable[[], list[str]]
) -> None:
    """Starts the job, waits until the hanging op runs and the checkpoint of
    the ops before it is published in the bucket, then SIGKILLs the main
    process and, after it, anything left in its process group."""
    marker = cfg.parent / "hanging.marker"
    with open(log, "w") as out:
        proc = subprocess.Popen(
            command("acc", cfg, export),
            env={**env, "DJA_TEST_HANG_MARKER": str(marker)},
            cwd=cfg.parent,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            wait_for(marker.exists, "the hanging op", proc)
            wait_for(lambda: published() == OPS[:HANG_OP_INDEX], "the checkpoint before it in the bucket", proc)
            proc.send_signal(signal.SIGKILL)  # the main process only, as the OOM killer does
            proc.wait(timeout=60)
        finally:
            try:
                os.killpg(proc.pid, signal.SIGKILL)  # any child it left behind
            except ProcessLookupError:
                pass
            proc.wait(timeout=60)


KILL_CASES = {
    "background": "  strategy: every_op\n  background: true",
    "foreground": "  strategy: every_op\n  background: false",
}


@pytest.fixture(scope="module")
def bucket(s3_server):
    name = s3_server.new_bucket()
    yield name
    s3_server.remove_bucket(name)


@pytest.fixture(scope="module")
def runs(tmp_path_factory, s3_server, bucket):
    base = tmp_path_factory.mktemp("bucket_jobs")
    support = write_support(base / "support")
    s3 = s3_server.env()
    out: dict = {"base": base}
    errors: list = []

    def guarded(fn, *args):
        try:
            fn(*args)
        except BaseException as e:  # reported in the main thread
            errors.append(e)

    def reference_and_full():
        root = base / "reference"
        cfg = write_config(root, support, checkpoint_dir=None, checkpoint=None)
        out["reference_rc"] = run("ref", cfg, root / "out.jsonl", root / "run.log", job_env(support, s3, root))
        out["reference_export"] = root / "out.jsonl"
        root = base / "full"
        cfg = write_config(root, support, checkpoint_dir=f"s3://{bucket}/full", checkpoint=None)
        rc = run("acc", cfg, root / "out.jsonl", root / "run.log", job_env(support, s3, root))
        out["full"] = {"root": root, "rc": rc}
        out["full"]["published"] = published_ops(s3_server, bucket, "full")

    def kill_and_resume(case: str):
        root = base / f"killed_{case}"
        prefix = f"killed_{case}"
        cfg = write_config(root, support, checkpoint_dir=f"s3://{bucket}/{prefix}", checkpoint=KILL_CASES[case])
        env = job_env(support, s3, root)
        result: dict = {"root": root}
        run_killed_inside_the_hanging_op(
            cfg, root / "out_killed.jsonl", root / "killed.log", env, lambda: published_ops(s3_server, bucket, prefix)
        )
        result["after_kill"] = published_ops(s3_server, bucket, prefix)
        result["resume_rc"] = run("acc", cfg, root / "out_resumed.jsonl", root / "resumed.log", env)
        result["after_resume"] = published_ops(s3_server, bucket, prefix)
        out[case] = result

    threads = [threading.Thread(target=guarded, args=(reference_and_full,))]
    threads += [threading.Thread(target=guarded, args=(kill_and_resume, case)) for case in KILL_CASES]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
    return out


def log_of(path: Path) -> str:
    return path.read_text(errors="replace")


def test_the_reference_run_completes(runs):
    assert runs["reference_rc"] == 0
    rows = read_jsonl(runs["reference_export"])
    assert 100 < len(rows) < 600


def test_a_full_run_checkpoints_in_the_bucket_and_exports_what_a_run_without_checkpoints_exports(runs):
    full = runs["full"]
    log = log_of(full["root"] / "run.log")
    assert full["rc"] == 0, log[-3000:]
    assert read_jsonl(full["root"] / "out.jsonl") == read_jsonl(runs["reference_export"])
    assert "Preparing checkpoint manager in s3://" in log
    assert full["published"] == OPS  # 1.6.1's end-of-run save, in the bucket
    assert not (full["root"] / "work" / JOB / "ckpt").exists()
    assert uri_named_paths(full["root"]) == []


@pytest.mark.parametrize("case", list(KILL_CASES))
def test_a_killed_run_resumes_from_the_bucket_and_exports_what_an_uninterrupted_run_exports(runs, case):
    result = runs[case]
    root = result["root"]
    killed = log_of(root / "killed.log")
    assert "Checkpoint after op 2 [clean_email_mapper]" in killed
    assert result["after_kill"] == OPS[:HANG_OP_INDEX]
    resumed = log_of(root / "resumed.log")
    assert result["resume_rc"] == 0, resumed[-3000:]
    for name in OPS[:HANG_OP_INDEX]:
        assert f"Skip op [{name}]" in resumed
    for name in OPS[HANG_OP_INDEX:]:
        assert f"Skip op [{name}]" not in resumed
    assert "Loading dataset from checkpoint" in resumed
    assert read_jsonl(root / "out_resumed.jsonl") == read_jsonl(runs["reference_export"])
    assert result["after_resume"] == OPS
    assert not (root / "work" / JOB / "ckpt").exists()
    assert uri_named_paths(root) == []


def test_inspect_describes_the_job_checkpoint_in_the_bucket(runs, bucket, s3_env):
    export_rows = len(read_jsonl(runs["full"]["root"] / "out.jsonl"))
    proc = cli("inspect", f"s3://{bucket}/full", "--verify", "--json")
    assert proc.returncode == 0, proc.stderr
    r = json.loads(proc.stdout)
    assert r["ckpt_dir"] == f"s3://{bucket}/full"
    assert r["writer"] == "data-juicer-accel" and r["kind"] == "nested" and r["codec"] == "zstd"
    assert r["num_rows"] == export_rows == sum(s["rows"] for s in r["shards"])
    assert [op["name"] for op in r["ops_recorded"]] == OPS
    assert r["verify"] == {"ok": True, "checked": r["verify"]["checked"], "rows": export_rows}
    assert r["damaged"] is False and r["problems"] == []

    cfg = runs["full"]["root"] / "config.yaml"
    proc = cli("inspect", f"s3://{bucket}/full", "--config", str(cfg), "--job-id", JOB)
    assert proc.returncode == 0, proc.stderr
    assert f"would skip ({len(OPS)}): {', '.join(OPS)}" in proc.stdout
    proc = cli("inspect", f"s3://{bucket}/full", "--config", str(cfg))
    assert proc.returncode == 2 and "--config needs --job-id" in proc.stderr


# --------------------------------------------------------------------------
# Where the executor's manager lives (the executor is built, no job runs).

PLACES_SCRIPT = """
import json, sys
from data_juicer_accel.patch import patch_data_juicer
patch_data_juicer()
from data_juicer.config import init_configs
from data_juicer.core.executor.default_executor import DefaultExecutor
cfg = init_configs(["--config", sys.argv[1], "--job_id", "job1"])
out = open(sys.argv[2], "w")  # Data-Juicer's logger takes over stdout
try:
    executor = DefaultExecutor(cfg)
except ValueError as e:
    json.dump({"error": str(e)}, out)
else:
    manager = executor.ckpt_manager
    json.dump({
        "ckpt_dir": None if manager is None else manager.ckpt_dir,
        "bucket": None if manager is None else manager.bucket,
        "executor_ckpt_dir": getattr(executor, "ckpt_dir", None),
        "use_checkpoint": cfg.use_checkpoint,
    }, out)
out.close()
"""


def manager_place(tmp_path: Path, support: dict[str, Path], extra: str, s3: dict[str, str]) -> dict:
    cfg = tmp_path / "config.yaml"
    cfg.write_text(
        f"""dataset_path: {support["data"]}
export_path: {tmp_path}/out/result.jsonl
work_dir: {tmp_path}/work
{extra}
process:
  - whitespace_normalization_mapper:
"""
    )
    env = {**_dj_env(support, fail=False), **s3}
    answer = tmp_path / "place.json"
    proc = subprocess.run(
        [sys.executable, "-c", PLACES_SCRIPT, str(cfg), str(answer)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        errors="replace",  # the output is for a failure message only; never fail on its bytes
        timeout=RUN_TIMEOUT,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(answer.read_text())


@pytest.fixture(scope="module")
def support(tmp_path_factory):
    return write_support(tmp_path_factory.mktemp("bucket_support"))


def test_without_checkpoint_dir_the_checkpoint_stays_in_work_dir_ckpt(tmp_path, support, s3_server):
    place = manager_place(tmp_path, support, "use_checkpoint: true", s3_server.env())
    assert place["ckpt_dir"] == place["executor_ckpt_dir"] == str(tmp_path / "work" / JOB / "ckpt")
    assert place["bucket"] is None


def test_checkpoint_dir_as_a_directory(tmp_path, support, s3_server):
    place = manager_place(tmp_path, support, f"use_checkpoint: true\ncheckpoint_dir: {tmp_path}/elsewhere", {})
    assert place["ckpt_dir"] == place["executor_ckpt_dir"] == str(tmp_path / "elsewhere")
    assert place["use_checkpoint"] is True
    assert (tmp_path / "elsewhere").is_dir() and not (tmp_path / "work" / JOB / "ckpt").exists()


def test_checkpoint_dir_written_as_data_juicers_default_is_taken(tmp_path, support, s3_server):
    """The parser fills an unset key with ``work_dir/checkpoints``: written
    by the user, the same value is theirs."""
    default = tmp_path / "work" / JOB / "checkpoints"
    place = manager_place(tmp_path, support, f"use_checkpoint: true\ncheckpoint_dir: {default}", {})
    assert place["ckpt_dir"] == str(default)
    assert not (tmp_path / "work" / JOB / "ckpt").exists()


def test_checkpoint_dir_in_a_bucket_with_the_job_id(tmp_path, support, s3_server, bucket):
    extra = f"use_checkpoint: true\ncheckpoint_dir: s3://{bucket}/jobs/{{job_id}}"
    place = manager_place(tmp_path, support, extra, s3_server.env())
    assert place["ckpt_dir"] == place["bucket"] == f"s3://{bucket}/jobs/{JOB}"
    assert not (tmp_path / "work" / JOB / "ckpt").exists() and uri_named_paths(tmp_path) == []


def test_checkpoint_dir_without_use_checkpoint_makes_no_manager(tmp_path, support, s3_server, bucket):
    place = manager_place(tmp_path, support, f"checkpoint_dir: s3://{bucket}/unused", s3_server.env())
    assert place["ckpt_dir"] is None and place["executor_ckpt_dir"] is None
    assert s3_server.list_keys(bucket, "unused/") == []


def test_checkpoint_dir_of_another_scheme_is_refused(tmp_path, support, s3_server):
    place = manager_place(tmp_path, support, "use_checkpoint: true\ncheckpoint_dir: gs://bkt/ck", {})
    assert "gs://... is not supported" in place["error"]
    assert uri_named_paths(tmp_path) == []


# --------------------------------------------------------------------------
# inspect on checkpoints this process saves in a bucket.


@pytest.fixture
def saved(s3_bucket, s3_env, monkeypatch):
    """``s3://<bucket>/ck``, where CheckpointManager saved 2 ops' 1500 rows,
    with credentials the output is searched for."""
    from data_juicer_accel.utils.ckpt_utils import CheckpointManager
    from tests.conftest import text_table

    for name, value in SHOWN_NEVER.items():
        monkeypatch.setenv(name, value)
    ops = [{"first_mapper": {"a": 1}}, {"second_filter": {"b": 2}}]
    manager = CheckpointManager(f"s3://{s3_bucket}/ck", ops, num_proc=2)
    for op in ops:
        manager.record(op)
    manager.save_ckpt(text_table(1500))
    return f"s3://{s3_bucket}/ck"


def assert_no_credentials(proc: subprocess.CompletedProcess) -> None:
    for value in SHOWN_NEVER.values():
        assert value not in proc.stdout + proc.stderr


def test_inspect_a_bucket_table_output(saved):
    proc = cli("inspect", saved)
    assert proc.returncode == 0, proc.stderr
    for needle in ("written by:", "data-juicer-accel", "rows:", "1500", "size in bucket:", "generation:", "Shards:"):
        assert needle in proc.stdout, needle
    assert "first_mapper" in proc.stdout and "second_filter" in proc.stdout
    assert_no_credentials(proc)


def test_inspect_a_bucket_finds_a_flipped_byte(saved, s3_server, s3_bucket):
    shard = next(k for k in s3_server.list_keys(s3_bucket, "ck/generations/") if k.endswith(".arrow"))
    s3_server.flip_byte(s3_bucket, shard, -200)
    proc = cli("inspect", saved, "--verify", "--json")
    assert proc.returncode == 1, proc.stderr
    r = json.loads(proc.stdout)
    assert r["damaged"] is True and r["verify"]["ok"] is False
    assert os.path.basename(shard) in r["verify"]["error"]
    assert "\n" not in r["verify"]["error"]
    assert_no_credentials(proc)


def test_inspect_a_prefix_with_nothing_published(saved, s3_bucket):
    proc = cli("inspect", f"s3://{s3_bucket}/nothing-here")
    assert proc.returncode == 2
    assert proc.stderr.strip() == (
        f"data-juicer-accel: s3://{s3_bucket}/nothing-here: no checkpoint published there "
        f"(no manifest under s3://{s3_bucket}/nothing-here/versions/)"
    )


def test_inspect_a_missing_bucket_says_so_on_one_line(saved):
    proc = cli("inspect", "s3://no-such-bucket-dja/ck")
    assert proc.returncode == 2
    assert len(proc.stderr.strip().splitlines()) == 1
    assert "s3://no-such-bucket-dja/ck: cannot read the checkpoint" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert_no_credentials(proc)
