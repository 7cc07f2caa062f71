"""Per-op checkpoints in a real ``data-juicer-accel dj-process`` (py-data-juicer 1.6.1).

The pipeline: five CPU-only ops from 1.6.1 plus ``dja_hang_when_told_mapper``,
a test op (loaded through ``custom_operator_paths``) that, when the
environment says so, leaves a marker file and sleeps inside its map, run by
HF map workers (``np: 2``). The test then SIGKILLs the main process, as the
OOM killer would, and kills the rest of its process group (the orphaned map
workers) so nothing keeps the test waiting. Every run writes to a log file,
never to a pipe an orphan could hold open.

Checked:

* the killed run left a checkpoint naming exactly the 3 ops before the
  hanging one, saved in the background while the op ran;
* the same command resumes after those 3 ops and exports exactly what an
  uninterrupted run of the original Data-Juicer exports; so does the original
  Data-Juicer, unpatched, from the same checkpoint;
* ``checkpoint_save`` events and ``data-juicer-accel events`` name the op the
  job resumes after;
* each strategy checkpoints after the ops it names; without a ``checkpoint``
  key, 1.6.1's single end-of-run save.

Torch and downloads are kept away as in test_integration_e2e.py.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

pytest.importorskip("data_juicer")

from tests.test_integration_e2e import (  # noqa: E402
    TORCH_STAND_IN,
    _dj_env,
    dj_command,
    events_of,
    op_names,
    read_jsonl,
)

RUN_TIMEOUT = 300
JOB = "job1"
OPS = [
    "whitespace_normalization_mapper",
    "clean_email_mapper",
    "text_length_filter",
    "dja_hang_when_told_mapper",
    "punctuation_normalization_mapper",
    "words_num_filter",
]
HANG_OP_INDEX = OPS.index("dja_hang_when_told_mapper")

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
    base.mkdir(parents=True, exist_ok=True)
    ops = base / "dja_hang_ops.py"
    ops.write_text(TEST_OPS_MODULE)
    stub = base / "torch_stand_in"
    (stub / "torch").mkdir(parents=True, exist_ok=True)
    (stub / "torch" / "__init__.py").write_text(TORCH_STAND_IN)
    data = base / "data.jsonl"
    words = ["alpha", "beta", "gamma", "delta", "epsilon", "zeta", "eta"]
    with open(data, "w") as f:
        for i in range(600):
            n = (i * 7) % 37 + 1
            text = " ".join(words[(i + k * 3) % len(words)] for k in range(n))
            if i % 7 == 0:
                text += f"   mail user{i}@example.com  now ，ok"
            f.write(json.dumps({"text": f"doc {i}:  {text}\t end"}) + "\n")
    return {"ops": ops, "stub": stub, "data": data}


def write_config(root: Path, support: dict[str, Path], checkpoint: str | None) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    cfg = root / "config.yaml"
    section = f"checkpoint:\n{checkpoint}\n" if checkpoint is not None else ""
    cfg.write_text(
        f"""project_name: dja-per-op
dataset_path: {support["data"]}
export_path: {root}/unused/result.jsonl
work_dir: {root}/work
np: 2
use_checkpoint: true
open_monitor: false
skip_op_error: false
custom_operator_paths: ['{support["ops"]}']
{section}process:
  - whitespace_normalization_mapper:
  - clean_email_mapper:
  - text_length_filter:
      min_len: 20
  - dja_hang_when_told_mapper:
  - punctuation_normalization_mapper:
  - words_num_filter:
      min_num: 5
"""
    )
    return cfg


def command(kind: str, cfg: Path, export: Path) -> list[str]:
    return [*dj_command(kind), "--config", str(cfg), "--job_id", JOB, "--export_path", str(export)]


def run(kind: str, cfg: Path, export: Path, log: Path, support) -> int:
    with open(log, "w") as out:
        return subprocess.run(
            command(kind, cfg, export),
            env=_dj_env(support, fail=False),
            cwd=cfg.parent,
            stdout=out,
            stderr=subprocess.STDOUT,
            timeout=RUN_TIMEOUT,
        ).returncode


def wait_for(predicate, what: str, proc: subprocess.Popen, timeout: float = RUN_TIMEOUT) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert proc.poll() is None, f"the job ended (rc {proc.returncode}) before {what}"
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


def recorded_ops(ckpt_dir: Path) -> list[str]:
    try:
        return op_names(ckpt_dir)
    except (OSError, ValueError):
        return []


def logged_save_of(job_dir: Path, op_idx: int) -> bool:
    for path in job_dir.glob("events_*.jsonl"):
        for line in path.read_text(errors="replace").splitlines():
            try:
                event = json.loads(line)
            except ValueError:
                continue  # a line being written
            if event.get("event_type") == "checkpoint_save" and event.get("operation_idx") == op_idx:
                return True
    return False


def run_killed_inside_the_hanging_op(cfg: Path, export: Path, log: Path, support) -> None:
    """Starts the job, waits until the hanging op runs in a map worker and the
    checkpoint of the ops before it is committed, then SIGKILLs the main
    process and, after it, the orphaned workers."""
    marker = cfg.parent / "hanging.marker"
    env = dict(_dj_env(support, fail=False), DJA_TEST_HANG_MARKER=str(marker))
    ckpt = cfg.parent / "work" / JOB / "ckpt"
    with open(log, "w") as out:
        proc = subprocess.Popen(
            command("acc", cfg, export),
            env=env,
            cwd=cfg.parent,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            wait_for(marker.exists, "the hanging op", proc)
            wait_for(lambda: recorded_ops(ckpt) == OPS[:HANG_OP_INDEX], "the checkpoint before it", proc)
            # Its checkpoint_save event is logged from the writer's commit watcher.
            wait_for(lambda: logged_save_of(ckpt.parent, HANG_OP_INDEX - 1), "its checkpoint_save event", proc)
            proc.send_signal(signal.SIGKILL)  # the main process only, as the OOM killer does
            proc.wait(timeout=60)
        finally:
            try:
                os.killpg(proc.pid, signal.SIGKILL)  # the map workers it left behind
            except ProcessLookupError:
                pass
            proc.wait(timeout=60)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    base = tmp_path_factory.mktemp("per_op")
    support = write_support(base / "support")
    out: dict = {"base": base}
    errors: list = []

    def guarded(fn):
        try:
            fn()
        except BaseException as e:  # reported in the main thread
            errors.append(e)

    def reference_and_strategies():
        root = base / "reference"
        cfg = write_config(root, support, None)
        out["reference_rc"] = run("ref", cfg, root / "out" / "result.jsonl", root / "run.log", support)
        out["reference_export"] = root / "out" / "result.jsonl"
        for name, section in STRATEGY_CASES.items():
            root = base / name
            cfg = write_config(root, support, section)
            out[name] = {"rc": run("acc", cfg, root / "out.jsonl", root / "run.log", support), "root": root}

    def kill_and_resume():
        # The op record names the job's work_dir: every run of this family uses
        # the same config and path (and no key unpatched Data-Juicer rejects).
        root = base / "killed"
        cfg = write_config(root, support, "  strategy: every_op")
        job = root / "work" / JOB
        run_killed_inside_the_hanging_op(cfg, root / "out_killed.jsonl", root / "killed.log", support)
        out["killed_dir"] = root / "after_kill"
        shutil.copytree(job, out["killed_dir"])
        out["events_cli"] = subprocess.run(
            [sys.executable, "-m", "data_juicer_accel", "events", str(job), "--json"],
            capture_output=True,
            text=True,
            timeout=RUN_TIMEOUT,
        )
        out["resume_rc"] = run("acc", cfg, root / "out_resumed.jsonl", root / "resumed.log", support)
        out["resumed_dir"] = root / "after_resume"
        shutil.move(str(job), out["resumed_dir"])
        # The original Data-Juicer, unpatched, from the same checkpoint.
        shutil.copytree(out["killed_dir"], job)
        out["ref_resume_rc"] = run("ref", cfg, root / "out_ref.jsonl", root / "ref_resumed.log", support)
        out["killed_root"] = root

    threads = [threading.Thread(target=guarded, args=(f,)) for f in (reference_and_strategies, kill_and_resume)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
    return out


STRATEGY_CASES = {
    "no_key": None,
    "every_op_foreground": "  strategy: every_op\n  background: false",
    "every_2_ops": "  strategy: every_n_ops\n  n_ops: 2",
    "manual": "  strategy: manual\n  op_names: [clean_email_mapper, punctuation_normalization_mapper]",
    "disabled": "  strategy: disabled",
}
#: ops done at each checkpoint_save event: per-op saves, then the end-of-run save.
EXPECTED_SAVES = {
    "no_key": [],
    "every_op_foreground": [1, 2, 3, 4, 5, 6],
    "every_2_ops": [2, 4, 6],
    "manual": [2, 5, 6],
    "disabled": [],
}


def checkpoint_saves(job_dir: Path) -> list[dict]:
    return [e for run in events_of(job_dir) for e in run if e["event_type"] == "checkpoint_save"]


def test_the_reference_run_completes(runs):
    assert runs["reference_rc"] == 0
    rows = read_jsonl(runs["reference_export"])
    assert 100 < len(rows) < 600


def test_killed_run_left_the_checkpoint_of_the_ops_before_the_hanging_one(runs):
    assert op_names(runs["killed_dir"] / "ckpt") == OPS[:HANG_OP_INDEX]
    log = (runs["killed_root"] / "killed.log").read_text(errors="replace")
    assert "Checkpoint after op 3 [text_length_filter]" in log
    saves = checkpoint_saves(runs["killed_dir"])
    assert saves and saves[-1]["operation_idx"] == HANG_OP_INDEX - 1
    assert saves[-1]["operation_name"] == "text_length_filter"


def test_events_show_the_op_the_job_resumes_after(runs):
    cli = runs["events_cli"]
    assert cli.returncode == 0, cli.stderr
    resumption = json.loads(cli.stdout)["resumption"]
    assert resumption["resume_after_operation"] == {
        "operation_name": "text_length_filter",
        "operation_idx": HANG_OP_INDEX - 1,
        "ops_done": HANG_OP_INDEX,
    }


def test_restart_skips_the_finished_ops_and_exports_what_an_uninterrupted_run_exports(runs):
    root = runs["killed_root"]
    assert runs["resume_rc"] == 0, (root / "resumed.log").read_text(errors="replace")[-3000:]
    log = (root / "resumed.log").read_text(errors="replace")
    for name in OPS[:HANG_OP_INDEX]:
        assert f"Skip op [{name}]" in log
    assert "Loading dataset from checkpoint" in log
    assert read_jsonl(root / "out_resumed.jsonl") == read_jsonl(runs["reference_export"])
    assert op_names(runs["resumed_dir"] / "ckpt") == OPS


def test_unpatched_data_juicer_resumes_from_the_per_op_checkpoint(runs):
    root = runs["killed_root"]
    log = (root / "ref_resumed.log").read_text(errors="replace")
    assert runs["ref_resume_rc"] == 0, log[-3000:]
    for name in OPS[:HANG_OP_INDEX]:
        assert f"Skip op [{name}]" in log
    assert read_jsonl(root / "out_ref.jsonl") == read_jsonl(runs["reference_export"])


@pytest.mark.parametrize("case", list(STRATEGY_CASES))
def test_each_strategy_checkpoints_after_the_ops_it_names(runs, case):
    result = runs[case]
    job = result["root"] / "work" / JOB
    log = (result["root"] / "run.log").read_text(errors="replace")
    assert result["rc"] == 0, log[-3000:]
    assert read_jsonl(result["root"] / "out.jsonl") == read_jsonl(runs["reference_export"])
    assert op_names(job / "ckpt") == OPS  # the end-of-run save, as in 1.6.1
    expected = EXPECTED_SAVES[case]
    requested = [n for n in range(1, len(OPS) + 1) if f"Checkpoint after op {n} [" in log]
    assert requested == expected[:-1]  # per-op saves; the last one is the end-of-run save
    saves = [e["operation_idx"] + 1 for e in checkpoint_saves(job)]
    if "background: false" in (STRATEGY_CASES[case] or ""):
        assert saves == expected
    else:
        # A background save still waiting when the next is requested is
        # superseded and never committed: the events name the committed ones.
        assert saves == sorted(set(saves)) and set(saves) <= set(expected)
        assert saves[-1:] == expected[-1:]
