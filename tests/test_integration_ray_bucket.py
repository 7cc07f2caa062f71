"""Data-Juicer 1.6.1's ``ray_partitioned`` executor, patched, with
``checkpoint.strategy: every_op`` and ``checkpoint_dir: s3://bucket/prefix``,
in real ``data-juicer-accel dj-process`` runs (a local Ray cluster each, 2
partitions) against moto's S3-protocol server on loopback. Runs, one after
another:

* an uninterrupted run without checkpoints: the export the others must match;
* an uninterrupted run checkpointing every op of every partition in the bucket;
* a run SIGKILLed (its whole process group) inside op 3 once at least one op
  checkpoint is published in the bucket, then resumed with 1.6.1's
  ``--resume <job_id>``: it must validate the saved partitions, load the
  bucket's checkpoints and export exactly what the uninterrupted runs export;
* a run killed the same way, then run again with ``--job_id`` on an input
  changed meanwhile: 1.6.1 would clear its checkpoint directory and start
  afresh; a bucket's checkpoints cannot be cleared from here, so the run must
  stop with an error naming them rather than load rows of the old input.

No run may write a local path that looks like a URI (``s3:``): the executor's
``partitioning_info.json`` goes into the bucket beside the checkpoints, so a
resume needs nothing of the killed run's machine. The bucket is
read with boto3 (the test harness's client), not with the code under test.
The Ray environment (test op on ``PYTHONPATH``, torch stand-in, retries of
runs Ray itself broke) is that of ``test_integration_ray_e2e``.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import warnings
from pathlib import Path

import pytest

from tests.conftest import require

require("data_juicer")
require("ray")

from tests.test_integration_e2e import JOB, _dj_env, dj_command, log_text  # noqa: E402
from tests.test_integration_per_op_ckpt import wait_for  # noqa: E402
from tests.test_integration_ray_e2e import (  # noqa: E402
    RAY_ATTEMPTS,
    RAY_BROKE_THE_RUN,
    RAY_RUN_TIMEOUT,
    exported_texts,
    restore_run_state,
    snapshot_run_state,
)

PARTITIONS = 2
OPS = ["whitespace_normalization_mapper", "clean_email_mapper", "dja_hang_when_told_mapper", "text_length_filter"]
HANG_OP_INDEX = OPS.index("dja_hang_when_told_mapper")
#: A published version of one op checkpoint of one partition (bucket layout of RayCheckpointManager).
PUBLISHED = re.compile(r"/checkpoint_op_(\d{4})_partition_(\d{4})\.accel/versions/")

TEST_OPS_MODULE = '''
import os
import time

from data_juicer.ops.base_op import OPERATORS, Mapper


@OPERATORS.register_module("dja_hang_when_told_mapper")
class DjaHangWhenToldMapper(Mapper):
    """Passes samples through; with DJA_TEST_HANG_MARKER set, creates that
    file and sleeps (the test kills the job meanwhile)."""

    def process_single(self, sample):
        marker = os.environ.get("DJA_TEST_HANG_MARKER")
        if marker:
            with open(marker, "a"):
                pass
            time.sleep(3600)
        return sample
'''


def write_support(base: Path) -> dict[str, Path]:
    """The test op module, the torch stand-in of the e2e tests and a 200-row jsonl."""
    from tests.test_integration_e2e import write_support_files

    support = write_support_files(base)
    ops = base / "dja_bucket_ops.py"
    ops.write_text(TEST_OPS_MODULE)
    return {**support, "ops": ops}


def write_config(root: Path, support: dict[str, Path], checkpoint_dir: str | None) -> Path:
    """The job's config, reading its own copy of the test data (``root/data.jsonl``)."""
    root.mkdir(parents=True)
    shutil.copy(support["data"], root / "data.jsonl")
    checkpoint = (
        f"checkpoint_dir: '{checkpoint_dir}'\ncheckpoint:\n  enabled: true\n  strategy: every_op\n"
        if checkpoint_dir
        else "checkpoint:\n  enabled: false\n"
    )
    cfg = root / "config.yaml"
    cfg.write_text(
        f"""project_name: dja-ray-bucket
dataset_path: {root}/data.jsonl
export_path: {root}/out/result.jsonl
work_dir: {root}/work
executor_type: ray_partitioned
ray_address: local
np: 2
open_monitor: false
skip_op_error: false
custom_operator_paths: ['{support["ops"]}']
partition:
  mode: manual
  num_of_partitions: {PARTITIONS}
{checkpoint}process:
  - whitespace_normalization_mapper:
  - clean_email_mapper:
  - dja_hang_when_told_mapper:
  - text_length_filter:
      min_len: 20
"""
    )
    return cfg


def job_env(support: dict[str, Path], s3: dict[str, str]) -> dict[str, str]:
    """The e2e tests' environment, the bucket's AWS_* variables (Ray's workers
    inherit them from the driver that starts the cluster), the test op importable."""
    env = {**_dj_env(support, fail=False), **s3}
    env.pop("DJA_TEST_HANG_MARKER", None)
    env["PYTHONPATH"] = os.pathsep.join([str(support["ops"].parent), env["PYTHONPATH"]])
    return env


def command(cfg: Path, *job: str) -> list[str]:
    return [*dj_command("acc"), "--config", str(cfg), *job]


def run(cfg: Path, log: Path, env: dict[str, str], *job: str) -> int:
    """One run to its end; one Ray broke (see test_integration_ray_e2e) runs again."""
    root = cfg.parent
    before = snapshot_run_state(root)
    for attempt in range(1, RAY_ATTEMPTS + 1):
        with open(log, "w") as out:
            rc = subprocess.run(
                command(cfg, *job), env=env, cwd=root, stdout=out, stderr=subprocess.STDOUT, timeout=RAY_RUN_TIMEOUT
            ).returncode
        text = log.read_text(errors="replace")
        if rc == 0 or attempt == RAY_ATTEMPTS or not any(message in text for message in RAY_BROKE_THE_RUN):
            break
        log.rename(log.with_suffix(f".ray-broke-{attempt}"))
        restore_run_state(root, before)
        warnings.warn(f"Ray broke run {log} (attempt {attempt}); running it again", stacklevel=2)
    shutil.rmtree(before)
    return rc


def published(server, bucket: str, prefix: str) -> list[tuple[int, int]]:
    """(op, partition) of every checkpoint with a version published under ``prefix``."""
    found = {PUBLISHED.search("/" + key) for key in server.list_keys(bucket, f"{prefix}/")}
    return sorted((int(m.group(1)), int(m.group(2))) for m in found if m is not None)


def run_killed_inside_the_hanging_op(cfg: Path, log: Path, env: dict[str, str], is_published) -> None:
    """Starts the job, waits until the hanging op runs and an op checkpoint is
    published in the bucket, then SIGKILLs the job's whole process group."""
    marker = cfg.parent / "hanging.marker"
    with open(log, "w") as out:
        proc = subprocess.Popen(
            command(cfg, "--job_id", JOB),
            env={**env, "DJA_TEST_HANG_MARKER": str(marker)},
            cwd=cfg.parent,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            wait_for(marker.exists, "the hanging op", proc, timeout=RAY_RUN_TIMEOUT)
            wait_for(is_published, "an op checkpoint in the bucket", proc, timeout=RAY_RUN_TIMEOUT)
        finally:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            proc.wait(timeout=60)


def uri_named_paths(root: Path) -> list[Path]:
    """Local paths with a component that looks like a URI scheme (``s3:``)."""
    return [p for p in root.rglob("*") if any(part.endswith(":") for part in p.relative_to(root).parts)]


def checkpoint_loads(root: Path) -> list[dict]:
    events = []
    for path in sorted((root / "work" / JOB).glob("events_*.jsonl")):
        with open(path) as f:
            events += [json.loads(line) for line in f if line.strip()]
    return [e for e in events if e["event_type"] == "checkpoint_load"]


@pytest.fixture(scope="module")
def bucket(s3_server):
    name = s3_server.new_bucket()
    yield name
    s3_server.remove_bucket(name)


@pytest.fixture(scope="module")
def runs(tmp_path_factory, s3_server, bucket):
    base = tmp_path_factory.mktemp("dj_ray_bucket")
    support = write_support(base / "support")
    env = job_env(support, s3_server.env())
    out: dict = {"base": base}

    root = base / "plain"
    out["plain"] = {"root": root, "rc": run(write_config(root, support, None), root / "run.log", env, "--job_id", JOB)}

    root = base / "full"
    cfg = write_config(root, support, f"s3://{bucket}/full/{{job_id}}")
    out["full"] = {"root": root, "rc": run(cfg, root / "run.log", env, "--job_id", JOB)}
    out["full"]["published"] = published(s3_server, bucket, f"full/{JOB}")
    out["full"]["keys"] = s3_server.list_keys(bucket, f"full/{JOB}/")

    def killed(name: str) -> tuple[Path, dict]:
        root, prefix = base / name, f"{name}/{JOB}"
        cfg = write_config(root, support, f"s3://{bucket}/{name}/{{job_id}}")
        is_published = lambda: bool(published(s3_server, bucket, prefix))  # noqa: E731
        run_killed_inside_the_hanging_op(cfg, root / "killed.log", env, is_published)
        out[name] = {"root": root, "prefix": prefix, "after_kill": published(s3_server, bucket, prefix)}
        return cfg, out[name]

    cfg, result = killed("killed")
    result["resume_rc"] = run(cfg, result["root"] / "resume.log", env, "--resume", JOB)
    result["after_resume"] = published(s3_server, bucket, result["prefix"])

    # The same job run again on an input that changed since its checkpoints were saved.
    cfg, result = killed("changed")
    data = result["root"] / "data.jsonl"
    data.write_text(data.read_text().replace("alpha", "omega"))
    result["rerun_rc"] = run(cfg, result["root"] / "rerun.log", env, "--job_id", JOB)
    result["after_rerun"] = published(s3_server, bucket, result["prefix"])
    yield out
    shutil.rmtree(base, ignore_errors=True)


def every_checkpoint() -> list[tuple[int, int]]:
    return [(op, p) for op in range(len(OPS)) for p in range(PARTITIONS)]


def test_a_run_without_checkpoints_exports_rows(runs):
    plain = runs["plain"]
    assert plain["rc"] == 0, log_text(plain["root"], "run")[-6000:]
    texts = exported_texts(plain["root"])
    assert 100 < len(texts) < 200
    assert not any("@example.com" in t for t in texts)


def test_an_uninterrupted_run_checkpoints_in_the_bucket_and_exports_the_same(runs):
    full = runs["full"]
    log = log_text(full["root"], "run")
    assert full["rc"] == 0, log[-6000:]
    assert full["published"] == every_checkpoint()
    assert exported_texts(full["root"]) == exported_texts(runs["plain"]["root"])
    assert f"full/{JOB}/partitioning_info.json" in full["keys"]
    assert not (full["root"] / "work" / JOB / "partitioning_info.json").exists()
    assert not (full["root"] / "work" / JOB / "checkpoints").exists()
    assert uri_named_paths(full["root"]) == []


def test_a_killed_run_resumes_from_the_bucket_and_exports_the_same(runs):
    killed = runs["killed"]
    root = killed["root"]
    assert killed["after_kill"], log_text(root, "killed")[-6000:]
    assert all(op < HANG_OP_INDEX for op, _ in killed["after_kill"])
    resumed = log_text(root, "resume")
    assert killed["resume_rc"] == 0, resumed[-6000:]
    assert "Saved partition hashes validated successfully" in resumed
    loads = checkpoint_loads(root)
    assert sorted(e["partition_id"] for e in loads) == sorted({p for _, p in killed["after_kill"]})
    assert all(e["metadata"]["checkpoint_path"].startswith("s3://") for e in loads)
    assert killed["after_resume"] == every_checkpoint()
    assert exported_texts(root) == exported_texts(runs["plain"]["root"])
    assert uri_named_paths(root) == []


def test_a_rerun_on_a_changed_input_refuses_the_bucket_checkpoints_of_the_old_one(runs):
    """1.6.1 clears the checkpoint directory when the input no longer matches
    the saved partitions; a bucket's cannot be cleared from here, so the run
    stops (loading them would export rows of the old input)."""
    changed = runs["changed"]
    root = changed["root"]
    assert changed["after_kill"], log_text(root, "killed")[-6000:]
    rerun = log_text(root, "rerun")
    assert changed["rerun_rc"] != 0, rerun[-6000:]
    assert "Partition validation FAILED" in rerun
    assert "the input no longer matches the partitions saved with the checkpoints in s3://" in rerun
    assert changed["after_rerun"] == changed["after_kill"]
    assert checkpoint_loads(root) == []
    assert not (root / "out" / "result.jsonl").exists()
    assert uri_named_paths(root) == []
