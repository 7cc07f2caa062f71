"""End to end with the real py-data-juicer 1.6.1: ``dj-process`` runs, patched and not.

Every Data-Juicer invocation is its own subprocess (patched and unpatched runs
share no module state), with a timeout. The pipeline is a small jsonl through
cheap text ops plus ``dja_fail_when_told_mapper``, an op registered by this
test (through Data-Juicer's ``custom_operator_paths``) that raises when the
environment says so, ending the first run midway.

Two families of runs, each in its own work root (the op record names the job's
work_dir, so a checkpoint resumes only at the path it was written for):

* reference family: unpatched run fails at the test op -> snapshot -> resumed
  unpatched (ref/ref) and, from the snapshot, resumed patched (acc/ref);
* accelerated family: patched run fails -> snapshot -> resumed patched
  (acc/acc) and, from the snapshot, resumed unpatched (ref/acc);

plus one uninterrupted unpatched run, whose export every resumed run must
reproduce row for row.

Keeping Data-Juicer from downloading anything (see ``_dj_env``):

* every op's ``run()`` ends in ``data_juicer.utils.model_utils.free_models()``,
  which calls ``torch.cuda.empty_cache()`` through a ``LazyLoader("torch")``:
  without torch the loader pip-installs it (a multi-GB CUDA build from PyPI).
  No small CPU torch exists on PyPI, so the runs get a 3-line stand-in
  ``torch`` package on ``PYTHONPATH`` providing only ``torch.cuda``. It has no
  distribution metadata, so Data-Juicer's ``_is_package_available("torch")``
  still answers False and nothing else takes the torch path; ``USE_TORCH=0``
  keeps ``datasets`` from treating it as torch.
* importing ``data_juicer.core`` evaluates ``@ray.remote`` (``core/tracer/
  ray_tracer.py``) through ``LazyLoader("ray")``, which pip-installs ray when
  it is missing. ray is installed here; should it not be, ``PIP_NO_INDEX=1``
  and ``UV_OFFLINE=1`` make any install attempt fail at once instead of
  downloading, and ``test_nothing_was_installed`` fails.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from tests.conftest import require

require("data_juicer")

from data_juicer_accel import _native  # noqa: E402
from data_juicer_accel.bench.dj_jobs import REFERENCE_MAIN, TORCH_STAND_IN  # noqa: E402

RUN_TIMEOUT = 300
JOB = "job1"
OPS = ["whitespace_normalization_mapper", "clean_email_mapper", "dja_fail_when_told_mapper"]
ALL_OPS = [*OPS, "text_length_filter", "words_num_filter"]

TEST_OPS_MODULE = '''
import os

from data_juicer.ops.base_op import OPERATORS, Mapper


@OPERATORS.register_module("dja_fail_when_told_mapper")
class DjaFailWhenToldMapper(Mapper):
    """Passes samples through; raises when DJA_TEST_FAIL_OP is set."""

    def process_single(self, sample):
        if os.environ.get("DJA_TEST_FAIL_OP"):
            raise RuntimeError("dja_fail_when_told_mapper: failing as told")
        return sample
'''


def write_support_files(base: Path) -> dict[str, Path]:
    """The test op module, the torch stand-in and a 200-row jsonl."""
    base.mkdir(parents=True, exist_ok=True)
    ops = base / "dja_test_ops.py"
    ops.write_text(TEST_OPS_MODULE)
    stub = base / "torch_stand_in"
    (stub / "torch").mkdir(parents=True, exist_ok=True)
    (stub / "torch" / "__init__.py").write_text(TORCH_STAND_IN)
    data = base / "data.jsonl"
    words = ["alpha", "beta", "gamma", "delta", "epsilon", "zeta"]
    with open(data, "w") as f:
        for i in range(200):
            n = (i * 7) % 31 + 1
            text = " ".join(words[(i + k * 3) % len(words)] for k in range(n))
            if i % 7 == 0:
                text += f"   mail user{i}@example.com  now"
            f.write(json.dumps({"text": f"doc {i}:  {text}\t end"}) + "\n")
    return {"ops": ops, "stub": stub, "data": data}


def write_config(root: Path, support: dict[str, Path]) -> Path:
    cfg = root / "config.yaml"
    cfg.write_text(
        f"""project_name: dja-e2e
dataset_path: {support["data"]}
export_path: {root}/unused/result.jsonl
work_dir: {root}/work
np: 1
use_checkpoint: true
open_monitor: false
skip_op_error: false
custom_operator_paths: ['{support["ops"]}']
process:
  - whitespace_normalization_mapper:
  - clean_email_mapper:
  - dja_fail_when_told_mapper:
  - text_length_filter:
      min_len: 20
  - words_num_filter:
      min_num: 5
"""
    )
    return cfg


def _dj_env(support: dict[str, Path], fail: bool) -> dict[str, str]:
    env = dict(os.environ)
    env.pop("DJA_TEST_FAIL_OP", None)
    env.update(
        PYTHONPATH=os.pathsep.join(filter(None, [str(support["stub"]), env.get("PYTHONPATH")])),
        USE_TORCH="0",
        PIP_NO_INDEX="1",
        UV_OFFLINE="1",
        PIP_DISABLE_PIP_VERSION_CHECK="1",
        OMP_NUM_THREADS="1",
    )
    if fail:
        env["DJA_TEST_FAIL_OP"] = "1"
    return env


def dj_command(kind: str) -> list[str]:
    """``acc``: ``python -m data_juicer_accel dj-process``; ``ref``: Data-Juicer's
    own entry point, unpatched."""
    if kind == "acc":
        return [sys.executable, "-m", "data_juicer_accel", "dj-process"]
    return [sys.executable, "-c", REFERENCE_MAIN]


def run_dj(
    kind: str, cfg: Path, export: Path, log: Path, support: dict[str, Path], fail: bool = False
) -> subprocess.CompletedProcess:
    """One dj-process (see ``dj_command``)."""
    cmd = [*dj_command(kind), "--config", str(cfg), "--job_id", JOB, "--export_path", str(export)]
    with open(log, "w") as out:
        return subprocess.run(
            cmd,
            env=_dj_env(support, fail),
            cwd=cfg.parent,
            stdout=out,
            stderr=subprocess.STDOUT,
            timeout=RUN_TIMEOUT,
        )


def _keep(root: Path, name: str) -> Path:
    """Move the job dir aside under ``name`` (the next run needs the path)."""
    dest = root / name
    shutil.move(str(root / "work" / JOB), dest)
    return dest


def _family(writer: str, other: str, root: Path, support, results: dict) -> None:
    cfg = write_config(root, support)
    out = {"root": root, "config": cfg}
    out["fail"] = run_dj(writer, cfg, root / "out_fail" / "result.jsonl", root / "fail.log", support, fail=True)
    snapshot = root / "snapshot"
    shutil.copytree(root / "work" / JOB, snapshot)
    out["fail_dir"] = snapshot
    # Same writer resumes.
    out["same"] = run_dj(writer, cfg, root / "out_same" / "result.jsonl", root / "same.log", support)
    out["same_dir"] = _keep(root, "after_same")
    # The other one resumes the same checkpoint, at the same path.
    shutil.copytree(snapshot, root / "work" / JOB)
    out["cross"] = run_dj(other, cfg, root / "out_cross" / "result.jsonl", root / "cross.log", support)
    out["cross_dir"] = _keep(root, "after_cross")
    results[writer] = out


@pytest.fixture(scope="module")
def e2e(tmp_path_factory):
    base = tmp_path_factory.mktemp("dj_e2e")
    support = write_support_files(base / "support")
    results: dict = {}
    errors: list = []
    started = time.monotonic()

    def guarded(fn, *args):
        try:
            fn(*args)
        except BaseException as e:  # reported in the main thread
            errors.append(e)

    def baseline():
        root = base / "full"
        root.mkdir()
        cfg = write_config(root, support)
        results["full"] = {
            "proc": run_dj("ref", cfg, root / "out" / "result.jsonl", root / "full.log", support),
            "export": root / "out" / "result.jsonl",
            "root": root,
        }

    def ref_thread():
        baseline()
        (base / "ref").mkdir()
        _family("ref", "acc", base / "ref", support, results)

    def acc_thread():
        (base / "acc").mkdir()
        _family("acc", "ref", base / "acc", support, results)

    # Two threads, each a sequence of subprocesses (the machine has 2 cores).
    threads = [threading.Thread(target=guarded, args=(f,)) for f in (ref_thread, acc_thread)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
    results["base"] = base
    results["seconds"] = time.monotonic() - started
    print(f"\nend-to-end runs took {results['seconds']:.1f}s")
    return results


# --------------------------------------------------------------------------


def read_jsonl(path: Path) -> list:
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def op_names(ckpt_dir: Path) -> list[str]:
    with open(ckpt_dir / "ckpt_op.json") as f:
        return [next(iter(op)) for op in json.load(f)]


def events_of(job_dir: Path) -> list[list[dict]]:
    """The events of each run of the job, oldest run first."""
    files = sorted(job_dir.glob("events_*.jsonl"), key=lambda p: p.name)
    return [read_jsonl(p) for p in files]


def normalized(events: list[dict], root: Path) -> list[str]:
    """What must agree between runs: everything but times, ids and the work root."""
    out = []
    for e in events:
        e = {k: v for k, v in e.items() if k not in ("timestamp", "event_id", "process_id", "thread_id", "duration")}
        text = json.dumps(e, sort_keys=True).replace(str(root), "<ROOT>")
        out.append(re.sub(r"-?\d+\.\d+(e-?\d+)?", "<NUM>", text))
    return out


def log_text(root: Path, name: str) -> str:
    return (root / f"{name}.log").read_text(errors="replace")


def assert_resumed_after_two_ops(job_dir: Path, events: list[dict], log: str) -> None:
    # The resumed run planned only the 3 ops left (job_start's total_partitions
    # is the number of ops the executor loaded), and said it skipped the 2 done.
    job_start = next(e for e in events if e["event_type"] == "job_start")
    assert job_start["total_partitions"] == 3
    assert "Skip op [whitespace_normalization_mapper]" in log
    assert "Skip op [clean_email_mapper]" in log
    assert "Loading dataset from checkpoint" in log
    assert op_names(job_dir / "ckpt") == ALL_OPS


# --------------------------------------------------------------------------


def test_baseline_uninterrupted_reference_run(e2e):
    assert e2e["full"]["proc"].returncode == 0, log_text(e2e["full"]["root"], "full")
    rows = read_jsonl(e2e["full"]["export"])
    assert 100 < len(rows) < 200  # the filters dropped some rows
    assert not any("@example.com" in r["text"] for r in rows)


@pytest.mark.parametrize("writer", ["acc", "ref"])
def test_first_run_ends_at_the_failing_op_with_a_checkpoint_of_the_ops_before(e2e, writer):
    fam = e2e[writer]
    assert fam["fail"].returncode != 0
    assert "dja_fail_when_told_mapper: failing as told" in log_text(fam["root"], "fail")
    ckpt = fam["fail_dir"] / "ckpt"
    assert op_names(ckpt) == OPS[:2]
    manifest = _native.read_manifest(str(ckpt / "latest"))
    if writer == "acc":
        assert manifest is not None and json.loads(manifest)["num_rows"] == 200
        assert _native.read_checkpoint(str(ckpt / "latest"), verify=True).num_rows == 200
    else:
        assert manifest is None  # a datasets save_to_disk checkpoint
        assert (ckpt / "latest" / "state.json").exists()


def test_patched_resume_skips_finished_ops_and_exports_what_reference_exports(e2e):
    fam = e2e["acc"]
    assert fam["same"].returncode == 0, log_text(fam["root"], "same")
    assert read_jsonl(fam["root"] / "out_same" / "result.jsonl") == read_jsonl(e2e["full"]["export"])
    runs = events_of(fam["same_dir"])
    assert len(runs) == 2
    assert_resumed_after_two_ops(fam["same_dir"], runs[1], log_text(fam["root"], "same"))


def test_patched_checkpoint_directory_is_ours(e2e):
    latest = e2e["acc"]["same_dir"] / "ckpt" / "latest"
    manifest = json.loads(_native.read_manifest(str(latest)))
    assert manifest["codec"] == "zstd"
    assert manifest["num_rows"] == len(read_jsonl(e2e["full"]["export"]))
    assert _native.read_checkpoint(str(latest), verify=True) is not None
    # and the event log is the drop-in's: it writes job_summary.json, 1.6.1 never does
    assert (e2e["acc"]["same_dir"] / "job_summary.json").exists()
    assert not (e2e["ref"]["same_dir"] / "job_summary.json").exists()


def test_patched_events_are_the_events_the_reference_logs(e2e):
    acc, ref = e2e["acc"], e2e["ref"]
    assert ref["same"].returncode == 0, log_text(ref["root"], "same")
    acc_runs, ref_runs = events_of(acc["same_dir"]), events_of(ref["same_dir"])
    assert [[e["event_type"] for e in run] for run in acc_runs] == [["job_start"], ["job_start", "job_complete"]]
    assert [[e["event_type"] for e in run] for run in ref_runs] == [["job_start"], ["job_start", "job_complete"]]
    for acc_run, ref_run in zip(acc_runs, ref_runs, strict=True):
        assert normalized(acc_run, acc["root"]) == normalized(ref_run, ref["root"])


def test_reference_checkpoint_resumes_under_the_patch(e2e):
    fam = e2e["ref"]  # written by unpatched Data-Juicer, resumed patched
    assert fam["cross"].returncode == 0, log_text(fam["root"], "cross")
    assert read_jsonl(fam["root"] / "out_cross" / "result.jsonl") == read_jsonl(e2e["full"]["export"])
    assert_resumed_after_two_ops(fam["cross_dir"], events_of(fam["cross_dir"])[-1], log_text(fam["root"], "cross"))
    # The patched run's own checkpoint at the end replaced it with ours.
    assert _native.read_manifest(str(fam["cross_dir"] / "ckpt" / "latest")) is not None


def test_our_checkpoint_resumes_under_unpatched_data_juicer(e2e):
    fam = e2e["acc"]  # written patched, resumed by unpatched Data-Juicer (datasets.load_from_disk)
    assert fam["cross"].returncode == 0, log_text(fam["root"], "cross")
    assert read_jsonl(fam["root"] / "out_cross" / "result.jsonl") == read_jsonl(e2e["full"]["export"])
    assert_resumed_after_two_ops(fam["cross_dir"], events_of(fam["cross_dir"])[-1], log_text(fam["root"], "cross"))
    # save_to_disk rewrote latest/ in place: datasets loads the new rows.
    datasets = require("datasets")
    assert len(datasets.load_from_disk(str(fam["cross_dir"] / "ckpt" / "latest"))) == len(
        read_jsonl(e2e["full"]["export"])
    )


def test_checkpoint_rewritten_by_unpatched_data_juicer_loads_under_the_patch_again(e2e):
    from data_juicer_accel.utils.ckpt_utils import CheckpointManager

    ckpt = e2e["acc"]["cross_dir"] / "ckpt"
    with open(ckpt / "ckpt_op.json") as f:
        record = json.load(f)
    manager = CheckpointManager(str(ckpt), record)
    assert manager.ckpt_available
    assert len(manager.load_ckpt()) == len(read_jsonl(e2e["full"]["export"]))


def test_nothing_was_installed(e2e):
    logs = sorted(e2e["base"].rglob("*.log"))
    assert len(logs) == 7
    for log in logs:
        text = log.read_text(errors="replace")
        assert "not found, installing" not in text and "Installing " not in text, log


# --------------------------------------------------------------------------
# The CLI on these real jobs


def cli(*args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, PIP_NO_INDEX="1", UV_OFFLINE="1", USE_TORCH="0")
    return subprocess.run(
        [sys.executable, "-m", "data_juicer_accel", *args], capture_output=True, text=True, env=env, timeout=120
    )


def test_cli_inspect_checkpoint_of_failed_run_with_config(e2e):
    fam = e2e["acc"]
    # The snapshot lives at another path; a copy at the job's path is what --config resolves against.
    job_dir = fam["root"] / "work" / JOB
    shutil.copytree(fam["fail_dir"], job_dir)
    try:
        proc = cli("inspect", str(job_dir / "ckpt"), "--config", str(fam["config"]), "--verify", "--json")
    finally:
        shutil.rmtree(job_dir)
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert report["writer"] == "data-juicer-accel"
    assert report["num_rows"] == 200
    assert [op["name"] for op in report["ops_recorded"]] == OPS[:2]
    assert report["verify"]["ok"] is True
    assert report["config"]["checkpoint_usable"] is True
    assert report["config"]["would_skip"] == OPS[:2]
    assert report["config"]["would_run"] == ALL_OPS[2:]


def test_cli_inspect_reference_checkpoint_says_so(e2e):
    proc = cli("inspect", str(e2e["ref"]["fail_dir"] / "ckpt"), "--json")
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert report["writer"].startswith("data-juicer (")
    assert report["num_rows"] == 200
    assert [op["name"] for op in report["ops_recorded"]] == OPS[:2]
    text = cli("inspect", str(e2e["ref"]["fail_dir"] / "ckpt")).stdout
    assert "written by the original Data-Juicer" in text


def test_cli_events_on_a_resumed_job(e2e):
    job_dir = e2e["acc"]["same_dir"]
    proc = cli("events", str(job_dir), "--json")
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert report["job_id"] == JOB
    assert report["job_status"] == "completed"
    assert [run["ended"] for run in report["runs"]] == [None, "job_complete"]
    assert report["event_counts"] == {"job_complete": 1, "job_start": 1}
    assert report["resumption"]["can_resume"] is False
    text = cli("events", str(job_dir)).stdout
    assert "EVENT LOGGING STATUS REPORT" in text and "Resumption plan" in text
