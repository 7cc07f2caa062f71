"""Per-op checkpoints hold only the rows the executor passes from op to op,
whatever else runs ops in ``dj-process`` (py-data-juicer 1.6.1).

Several 1.6.1 options run ops (``OP.run``, ``Filter.compute_stats``) on other
datasets than the pipeline's: the insight miner analyzes a sample after every
op (through the analyzer), the probe fusion strategy and adaptive batch sizes
probe every op on a small batch before the loop, the monitor wraps each op's
run; and a user's op may run another op on a sample of its input. None of
these may become, or trigger, a checkpoint.

For each option: an uninterrupted run of the original Data-Juicer, and a
patched run with ``checkpoint.strategy: every_op`` killed (SIGKILL) inside
op 3 once the checkpoint of ops 1-2 is committed, then resumed. The resumed
run must skip ops 1-2 and export exactly what the uninterrupted run exports,
row for row and column for column (the stats are kept in the export).
With ``op_fusion``, 1.6.1 turns checkpoints off altogether, and so does the
patched run: the killed run leaves none and the restart starts over.

Op 3, ``dja_pause_mapper`` (a test op loaded through
``custom_operator_paths``), sleeps when the environment says so, but only on
a dataset that already carries stats: the pipeline's rows after op 2, never
the original rows that the probes run it on.

Torch and downloads are kept away as in test_integration_e2e.py.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import threading
from pathlib import Path

import pytest

from tests.conftest import require

require("data_juicer")

from tests.test_integration_e2e import TORCH_STAND_IN, _dj_env, dj_command, read_jsonl  # noqa: E402
from tests.test_integration_per_op_ckpt import recorded_ops, wait_for  # noqa: E402

RUN_TIMEOUT = 300
JOB = "job1"
OPS = [
    "whitespace_normalization_mapper",
    "text_length_filter",
    "dja_pause_mapper",
    "words_num_filter",
    "word_repetition_filter",
    "punctuation_normalization_mapper",
]
PAUSE_OP_INDEX = OPS.index("dja_pause_mapper")

TEST_OPS_MODULE = '''
import os
import time

from datasets import Dataset

from data_juicer.core.data import NestedDataset
from data_juicer.ops.base_op import OPERATORS, Mapper
from data_juicer.ops.filter.text_length_filter import TextLengthFilter
from data_juicer.utils.constant import Fields


@OPERATORS.register_module("dja_pause_mapper")
class DjaPauseMapper(Mapper):
    """Passes samples through. With ``peek_sample``, first runs a filter on
    5 rows of its input, as a user's op might. With DJA_TEST_HANG_MARKER set,
    on a dataset that carries stats, creates that file and sleeps in its map."""

    def __init__(self, peek_sample: bool = False, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.peek_sample = peek_sample
        self.pause = False

    def run(self, dataset, *, exporter=None, tracer=None):
        if self.peek_sample:
            # On a copy: a filter run on dataset.select(...) breaks this op's map in 1.6.1 itself.
            sample = NestedDataset(Dataset.from_list(dataset.select(range(min(5, len(dataset)))).to_list()))
            TextLengthFilter(min_len=1000, num_proc=1).run(sample)
        self.pause = bool(os.environ.get("DJA_TEST_HANG_MARKER")) and Fields.stats in dataset.column_names
        return super().run(dataset, exporter=exporter, tracer=tracer)

    def process_single(self, sample):
        if self.pause:
            with open(os.environ["DJA_TEST_HANG_MARKER"], "a"):
                pass
            time.sleep(3600)
        return sample
'''

#: The e2e tests' torch stand-in, plus the names ``datasets`` looks up when it
#: pickles an object once ``torch`` is imported (the insight miner's analyzer does).
TORCH = (
    TORCH_STAND_IN
    + "class Tensor: pass\nclass Generator: pass\nnn = _types.SimpleNamespace(Module=type('Module', (), {}))\n"
)

#: Each 1.6.1 option (configuration lines) that runs ops outside the loop's chain.
OPTIONS = {
    "insight_mining": "open_insight_mining: true\nauto_num: 40\n",
    "monitor": "open_monitor: true\n",
    "tracer": "open_tracer: true\ntrace_num: 3\n",
    "fusion_greedy": "op_fusion: true\nfusion_strategy: greedy\n",
    "fusion_probe": "op_fusion: true\nfusion_strategy: probe\n",
    "adaptive_batch_size": "adaptive_batch_size: true\n",
    "user_op_runs_an_op_on_a_sample": "",
}
#: 1.6.1 sets ``use_checkpoint`` to false with ``op_fusion`` ("not compatible with op fusion for
#: now"), patched or not: the killed run leaves no checkpoint and the restart starts over.
NO_CHECKPOINTS = {"fusion_greedy", "fusion_probe"}


def write_support(base: Path) -> dict[str, Path]:
    base.mkdir(parents=True, exist_ok=True)
    ops = base / "dja_pause_ops.py"
    ops.write_text(TEST_OPS_MODULE)
    stub = base / "torch_stand_in"
    (stub / "torch").mkdir(parents=True, exist_ok=True)
    (stub / "torch" / "__init__.py").write_text(TORCH)
    data = base / "data.jsonl"
    words = ["alpha", "beta", "gamma", "delta", "alpha", "zeta", "eta"]
    with open(data, "w") as f:
        for i in range(300):
            n = (i * 7) % 23 + 1
            text = " ".join(words[(i + k * 3) % len(words)] for k in range(n))
            f.write(json.dumps({"text": f"{i}:  {text}\t ，ok"}) + "\n")
    return {"ops": ops, "stub": stub, "data": data}


def write_config(root: Path, support: dict[str, Path], option: str) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    settings = OPTIONS[option]
    monitor = "" if "open_monitor" in settings else "open_monitor: false\n"
    peek = "true" if option == "user_op_runs_an_op_on_a_sample" else "false"
    cfg = root / "config.yaml"
    cfg.write_text(
        f"""project_name: dja-per-op-options
dataset_path: {support["data"]}
export_path: {root}/unused/result.jsonl
work_dir: {root}/work
ds_cache_dir: {root}/hf_cache
np: 1
use_checkpoint: true
skip_op_error: false
keep_stats_in_res_ds: true
custom_operator_paths: ['{support["ops"]}']
checkpoint:
  strategy: every_op
{monitor}{settings}process:
  - whitespace_normalization_mapper:
  - text_length_filter:
      min_len: 20
  - dja_pause_mapper:
      peek_sample: {peek}
  - words_num_filter:
      min_num: 5
  - word_repetition_filter:
      rep_len: 2
      max_ratio: 0.6
  - punctuation_normalization_mapper:
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
            start_new_session=True,
        ).returncode


def run_killed_inside_op_3(cfg: Path, export: Path, log: Path, support, checkpointed: bool) -> None:
    """Starts the job, waits until op 3 runs and (if ``checkpointed``) the
    checkpoint of ops 1-2 is committed, then SIGKILLs the main process, as the OOM killer would, and
    after it the rest of its process group (monitor, tracer lock manager)."""
    marker = cfg.parent / "pause.marker"
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
            wait_for(marker.exists, "op 3", proc)
            if checkpointed:
                wait_for(lambda: recorded_ops(ckpt) == OPS[:PAUSE_OP_INDEX], "the checkpoint of ops 1-2", proc)
            proc.send_signal(signal.SIGKILL)
            proc.wait(timeout=60)
        finally:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            proc.wait(timeout=60)


def columns(rows: list[dict]) -> list[list[str]]:
    """The columns of each row, the stats' own included."""
    return [sorted(row) + sorted(row.get("__dj__stats__") or {}) for row in rows]


@pytest.fixture(scope="module")
def support(tmp_path_factory) -> dict[str, Path]:
    return write_support(tmp_path_factory.mktemp("per_op_options_support"))


@pytest.mark.parametrize("option", list(OPTIONS))
def test_killed_after_op_2_and_resumed_exports_what_an_uninterrupted_run_exports(tmp_path, support, option):
    reference: dict = {}

    def uninterrupted() -> None:
        root = tmp_path / "reference"
        cfg = write_config(root, support, option)
        reference["rc"] = run("ref", cfg, root / "out.jsonl", root / "run.log", support)

    # The original Data-Juicer, uninterrupted, while the patched job runs.
    thread = threading.Thread(target=uninterrupted)
    thread.start()
    try:
        root = tmp_path / "killed"
        cfg = write_config(root, support, option)
        checkpointed = option not in NO_CHECKPOINTS
        run_killed_inside_op_3(cfg, root / "out_killed.jsonl", root / "killed.log", support, checkpointed)
        ckpt = root / "work" / JOB / "ckpt"
        killed_ckpt_ops = recorded_ops(ckpt)
        killed_log = (root / "killed.log").read_text(errors="replace")
        resume_rc = run("acc", cfg, root / "out.jsonl", root / "resumed.log", support)
    finally:
        thread.join()

    ref_log = (tmp_path / "reference" / "run.log").read_text(errors="replace")
    assert reference["rc"] == 0, ref_log[-3000:]
    expected = read_jsonl(tmp_path / "reference" / "out.jsonl")
    assert 50 < len(expected) < 300

    log = (root / "resumed.log").read_text(errors="replace")
    assert resume_rc == 0, log[-3000:]
    if checkpointed:
        # One checkpoint per op of the pipeline, none for what else ran ops.
        for n, name in enumerate(OPS[:PAUSE_OP_INDEX], start=1):
            assert killed_log.count(f"Checkpoint after op {n} [{name}]") == 1, killed_log[-3000:]
        assert killed_ckpt_ops == OPS[:PAUSE_OP_INDEX]
        assert "Loading dataset from checkpoint" in log
        for name in OPS[:PAUSE_OP_INDEX]:
            assert f"Skip op [{name}]" in log
    else:
        assert "Checkpoint after op" not in killed_log
        assert killed_ckpt_ops == []
        assert "Loading dataset from dataset builder" in log
    got = read_jsonl(root / "out.jsonl")
    assert columns(got) == columns(expected)
    assert len(got) == len(expected)
    assert got == expected  # row for row
