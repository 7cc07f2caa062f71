"""A patched ``DefaultExecutor.run()`` with per-op checkpoints leaves nothing
of its run behind, whether it returns or raises: no writer or watcher thread,
no reference to the executor.

Twenty runs in one interpreter (a subprocess, so Data-Juicer's state and the
torch stand-in stay out of the test process): per-op checkpoints saved in the
background, every other run failing in its third op. After each run the
script drops the executor, collects garbage and records whether the executor
is still alive and which threads the process has, Python's and native ones
(``/proc/self/task``).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from tests.conftest import require

require("data_juicer")

from tests.test_integration_e2e import _dj_env  # noqa: E402
from tests.test_per_op_ckpt_options import TORCH  # noqa: E402

RUNS = 20

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

SCRIPT = """
import gc, json, os, sys, threading, traceback, weakref

from data_juicer_accel import patch_data_juicer

assert patch_data_juicer()
from data_juicer.config import init_configs
from data_juicer.core.executor.default_executor import DefaultExecutor

config, root, runs = sys.argv[1], sys.argv[2], int(sys.argv[3])
sys.path.insert(0, root)
import dja_fail_ops  # registers the test op (custom_operator_paths loads a module once only)


def threads():
    python = {t.ident: t.name for t in threading.enumerate()}
    return python, len(os.listdir("/proc/self/task"))


def one_run(i, fail):
    os.environ.pop("DJA_TEST_FAIL_OP", None)
    if fail:
        os.environ["DJA_TEST_FAIL_OP"] = "1"
    # Data-Juicer starts a log writer thread per init_configs(): taken before.
    cfg = init_configs(["--config", config, "--job_id", f"run{i}", "--export_path", f"{root}/out{i}/result.jsonl"])
    before = threads()
    executor = DefaultExecutor(cfg)
    alive = weakref.ref(executor)
    manager = weakref.ref(executor.ckpt_manager)
    try:
        executor.run()
        outcome = "returned"
    except Exception as e:
        outcome = f"raised {type(e).__name__}: {e}"
        traceback.print_exc()
    del executor
    gc.collect()
    python, native = threads()
    return {
        "outcome": outcome,
        "saves": sorted(os.listdir(os.path.join(cfg.work_dir, "ckpt"))),
        "executor_alive": alive() is not None,
        "manager_alive": manager() is not None,
        "new_threads": sorted(name for ident, name in python.items() if ident not in before[0]),
        "native_threads": [before[1], native],
    }


results = [one_run(i, fail=i % 2 == 1) for i in range(runs)]
with open(os.path.join(root, "results.json"), "w") as f:
    json.dump(results, f)
"""


def write_support(base: Path) -> dict[str, Path]:
    ops = base / "dja_fail_ops.py"
    ops.write_text(TEST_OPS_MODULE)
    stub = base / "torch_stand_in"
    (stub / "torch").mkdir(parents=True)
    (stub / "torch" / "__init__.py").write_text(TORCH)
    data = base / "data.jsonl"
    with open(data, "w") as f:
        for i in range(200):
            f.write(json.dumps({"text": f"doc {i}: " + " ".join(["word"] * (i % 17 + 1))}) + "\n")
    cfg = base / "config.yaml"
    cfg.write_text(
        f"""project_name: dja-leaks
dataset_path: {data}
work_dir: {base}/work
ds_cache_dir: {base}/hf_cache
np: 1
use_checkpoint: true
open_monitor: false
skip_op_error: false
checkpoint:
  strategy: every_op
process:
  - whitespace_normalization_mapper:
  - text_length_filter:
      min_len: 10
  - dja_fail_when_told_mapper:
  - words_num_filter:
      min_num: 2
"""
    )
    return {"ops": ops, "stub": stub, "data": data, "config": cfg}


def test_twenty_runs_in_one_process_leave_no_thread_and_no_executor_behind(tmp_path):
    support = write_support(tmp_path)
    proc = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(support["config"]), str(tmp_path), str(RUNS)],
        env=_dj_env(support, fail=False),
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    results = json.loads((tmp_path / "results.json").read_text())
    assert len(results) == RUNS
    for i, run in enumerate(results):
        expected = "raised RuntimeError" if i % 2 else "returned"
        assert run["outcome"].startswith(expected), (i, run)
        assert run["executor_alive"] is False, (i, run)
        assert run["manager_alive"] is False, (i, run)
        assert "latest" in run["saves"], (i, run)
        # tqdm's monitor thread is started once per process, by the first progress bar.
        assert [t for t in run["new_threads"] if t != "tqdm_monitor"] == [], (i, run)
    # No native thread piles up either (pools that Arrow or datasets start
    # once, at the first runs, are there before the later runs start).
    assert [after - before for before, after in (r["native_threads"] for r in results[2:])] == [0] * (RUNS - 2)
