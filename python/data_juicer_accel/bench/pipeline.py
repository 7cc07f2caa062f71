"""``data-juicer-accel bench --only pipeline``: what per-op checkpoints cost a
real Data-Juicer pipeline.

Six CPU ops of py-data-juicer 1.6.1 that need no model run over the bench
corpus's text (written once as jsonl) with ``np: 2``, each case in its own
process, cases interleaved round by round after one untimed warm-up run:

- ``none``: no checkpoints (``use_checkpoint: false``, ``use_cache: false``:
  the dataset handling of every checkpointing run, since 1.6.1 turns the
  HF cache off whenever ``use_checkpoint`` is on);
- ``none_cached``: no checkpoints, HF cache on (1.6.1's default);
- ``dj_end``: 1.6.1's own end-of-run checkpoint (unpatched);
- ``dj_every_op``: a checkpoint before every op with 1.6.1's
  ``CheckpointManager`` (``save_to_disk``), which 1.6.1 itself cannot do;
- ``accel_fg``: ``dj-process`` patched, ``checkpoint.strategy: every_op``,
  ``checkpoint.background: false``;
- ``accel_bg``: the same, saved in the background.

Each process reports the executor's ``run()`` time (data loading, ops, the
checkpoints, export; not interpreter start-up) and how long every
``save_ckpt`` call blocked it (the stall). A separate in-process case
measures the stall of one background save of a 1 GB table.

The ops, the corpus writer and the job environment (a torch stand-in, no
package index) are those of ``dj_jobs``.
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import time

from data_juicer_accel.bench.dj_jobs import job_env, run_logged, write_corpus_jsonl, write_job_config
from data_juicer_accel.tools import _interrupt
from data_juicer_accel.tools._format import table

CASES = ["none", "none_cached", "dj_end", "dj_every_op", "accel_fg", "accel_bg"]
CASE_LABELS = {
    "none": "no checkpoints",
    "none_cached": "no checkpoints, HF cache on",
    "dj_end": "1.6.1: end-of-run checkpoint",
    "dj_every_op": "every op, 1.6.1 save_to_disk",
    "accel_fg": "every op, data-juicer-accel, foreground",
    "accel_bg": "every op, data-juicer-accel, background",
}

#: Peak temporary bytes per byte of text: the jsonl, every case's export and
#: checkpoints (each case's directory is kept until its next round).
DISK_PER_TEXT_BYTE = 12

#: Runs one case inside its own interpreter; prints one JSON line.
DRIVER = r"""
import json, sys, time
case, config = sys.argv[1], sys.argv[2]
stalls = []

def timed_saves(cls):
    save = cls.save_ckpt
    def save_ckpt(self, ds):
        start = time.perf_counter()
        try:
            return save(self, ds)
        finally:
            stalls.append(time.perf_counter() - start)
    cls.save_ckpt = save_ckpt

if case.startswith("accel"):
    from data_juicer_accel.patch import patch_data_juicer
    assert patch_data_juicer()
    from data_juicer_accel.utils.ckpt_utils import CheckpointManager
    timed_saves(CheckpointManager)
else:
    from data_juicer.utils.ckpt_utils import CheckpointManager
    timed_saves(CheckpointManager)
from data_juicer.config import init_configs
from data_juicer.core.executor import default_executor

if case == "dj_every_op":
    # 1.6.1's manager, saving the dataset as it enters every op after the first.
    from data_juicer.ops import base_op
    op_run, executor_run, state = base_op.OP.run, default_executor.DefaultExecutor.run, {}
    def run_op(self, dataset, *args, **kwargs):
        manager = state.get("manager")
        if manager is not None and len(manager.op_record) > state["done"]:
            state["done"] = len(manager.op_record)
            manager.save_ckpt(dataset)
        return op_run(self, dataset, *args, **kwargs)
    def run_executor(self, *args, **kwargs):
        state.update(manager=self.ckpt_manager, done=0)
        return executor_run(self, *args, **kwargs)
    base_op.OP.run, default_executor.DefaultExecutor.run = run_op, run_executor

cfg = init_configs(["--config", config])
executor = default_executor.DefaultExecutor(cfg)
start = time.perf_counter()
executor.run()
seconds = time.perf_counter() - start
manager = executor.ckpt_manager
if manager is not None and hasattr(manager, "close"):
    manager.close()
print("BENCH-RESULT " + json.dumps({"seconds": seconds, "stalls": stalls}), flush=True)
"""


def _config(workdir: str, case: str, data: str, np_: int) -> str:
    root = os.path.join(workdir, case)
    os.makedirs(root, exist_ok=True)
    checkpoint = ""
    if case.startswith("accel"):
        checkpoint = f"checkpoint:\n  strategy: every_op\n  background: {str(case == 'accel_bg').lower()}\n"
    settings = (
        f"use_checkpoint: {str(not case.startswith('none')).lower()}\n"
        f"use_cache: {str(case == 'none_cached').lower()}\n{checkpoint}"
    )
    return write_job_config(root, "bench-pipeline", data, np_, settings)


def _case_env(workdir: str, tmp: str) -> dict:
    """The jobs' environment, with ``tmp`` as their temp dir: what a case's
    process killed by a Ctrl-C cannot remove (HF's temporary cache, a pool
    Manager's socket directory) goes with it. ``tmp`` is a short path in the
    system temp dir, not inside ``workdir``: a Unix socket's path must fit in
    107 bytes."""
    env = job_env(workdir)
    env["TMPDIR"] = tmp
    return env


def run_case(case: str, workdir: str, data: str, np_: int, env: dict) -> dict:
    import shutil

    shutil.rmtree(os.path.join(workdir, case), ignore_errors=True)
    cfg = _config(workdir, case, data, np_)
    log = os.path.join(workdir, f"{case}.log")
    returncode, text, _ = run_logged([sys.executable, "-c", DRIVER, case, cfg], env, log)
    result = [line for line in text.splitlines() if line.startswith("BENCH-RESULT ")]
    if returncode != 0 or not result:
        raise RuntimeError(f"pipeline case {case} failed (rc {returncode}); see {log}:\n{text[-2000:]}")
    return json.loads(result[-1].split(" ", 1)[1])


def stall_at_size(size: int, rounds: int, workdir: str) -> dict:
    """Stall of ``save_ckpt`` with background=True on a ``datasets.Dataset``
    of ``size`` bytes (what Data-Juicer's executor passes), and the time until
    the save is committed."""
    import datasets

    from data_juicer_accel.bench.corpus import default_corpus
    from data_juicer_accel.utils.ckpt_utils import CheckpointManager

    table = datasets.Dataset(datasets.table.InMemoryTable(default_corpus(size)))
    manager = CheckpointManager(os.path.join(workdir, "stall"), [], num_proc=2, background=True)
    manager.save_ckpt(table.select(range(10)))  # starts the writer thread, as the first op of a pipeline does
    manager.wait()
    stalls, commits = [], []
    for _ in range(rounds):
        start = time.perf_counter()
        manager.save_ckpt(table)
        stalls.append(time.perf_counter() - start)
        manager.wait()
        commits.append(time.perf_counter() - start)
    manager.close()
    return {
        "bytes": table.data.nbytes,
        "source": "datasets.Dataset",
        "stall_ms": statistics.median(stalls) * 1e3,
        "stall_ms_max": max(stalls) * 1e3,
        "saves": len(stalls),
        "commit_s": statistics.median(commits),
    }


def expected_cost(size: int, rounds: int, stall_size: int = 10**9) -> tuple[float, float]:
    """Expected seconds and peak temporary bytes of ``run_pipeline_bench`` on
    a quiet 2-core machine (docs/bench-pipeline.json, 200 MB: a case's process
    takes about 5 s plus 0.25 s per MB of text; the stall case about 15 s per
    GB to build its table and 7 s per GB saved). On disk: the text, each
    case's export and checkpoints, and the stall case's checkpoint."""
    case_s = 5 + 0.25 * size / 1e6
    stall_s = (15 + 7 * max(rounds, 5)) * stall_size / 1e9
    seconds = 10 + (len(CASES) * rounds + 1) * case_s + stall_s
    return seconds, DISK_PER_TEXT_BYTE * size + 0.8 * stall_size


def run_pipeline_bench(
    size: int, rounds: int, workdir: str, np_: int = 2, stall_size: int = 10**9, warm_up: bool = True
) -> dict:
    """Every case ``rounds`` times, interleaved, after an untimed run that
    fills the page cache (``warm_up``), then the stall at ``stall_size``."""
    data = os.path.join(workdir, "corpus.jsonl")
    data_bytes = write_corpus_jsonl(size, data)
    seconds: dict[str, list] = {case: [] for case in CASES}
    stalls: dict[str, list] = {case: [] for case in CASES}
    with _interrupt.temporary_directory("dja-jobs-") as tmp:
        env = _case_env(workdir, tmp)
        if warm_up:
            run_case("none", workdir, data, np_, env)
        for _ in range(rounds):
            for case in CASES:  # interleaved, so load changes hit every case alike
                result = run_case(case, workdir, data, np_, env)
                seconds[case].append(result["seconds"])
                stalls[case].extend(result["stalls"])
    rows = []
    base = statistics.median(seconds["none"])
    for case in CASES:
        wall = statistics.median(seconds[case])
        per_save = stalls[case]
        rows.append(
            {
                "case": case,
                "label": CASE_LABELS[case],
                "seconds": wall,
                "vs_none": wall / base,
                "saves_per_run": len(per_save) // rounds,
                "stall_ms_median": statistics.median(per_save) * 1e3 if per_save else None,
                "stall_ms_max": max(per_save) * 1e3 if per_save else None,
            }
        )
    return {
        "data_bytes": data_bytes,
        "np": np_,
        "rounds": rounds,
        "loadavg": os.getloadavg(),
        "rows": rows,
        "stall_at_size": stall_at_size(stall_size, max(rounds, 5), workdir) if stall_size else None,
    }


def _report_cells(row: dict) -> list:
    stall = None if row["stall_ms_median"] is None else f"{row['stall_ms_median']:.1f} / {row['stall_ms_max']:.1f}"
    return [row["label"], f"{row['seconds']:.1f}", f"{row['vs_none']:.2f}", row["saves_per_run"], stall]


def format_report(result: dict) -> str:
    lines = [
        f"pipeline: 6 CPU ops of py-data-juicer 1.6.1, {result['data_bytes'] / 1e6:.0f} MB of jsonl text, "
        f"np={result['np']}, median of {result['rounds']} interleaved round(s); "
        f"load average at the end {result['loadavg'][0]:.1f}",
        "",
        table(
            ["case", "run() s", "x none", "saves", "stall ms (median / max)"],
            [_report_cells(r) for r in result["rows"]],
            right={1, 2, 3, 4},
        ),
    ]
    big = result.get("stall_at_size")
    if big:
        lines += ["", stall_sentence(big)]
    others = result.get("machine", {}).get("other_processes_cores")
    if others is not None:
        lines.append(f"CPU used by other processes during the run: {others:.2f} cores on average")
    return "\n".join(lines)


def stall_sentence(big: dict) -> str:
    worst = f" (max {big['stall_ms_max']:.1f} ms over {big['saves']} saves)" if "stall_ms_max" in big else ""
    source = big.get("source", "pyarrow.Table")  # runs before the field was kept saved a pyarrow.Table
    # Measured apart from the pipeline run, it names its own command and date.
    measured = f" (measured {big['date']}: `{big['command']}`)" if "command" in big and "date" in big else ""
    return (
        f"background save_ckpt of a {big['bytes'] / 1e9:.2f} GB {source}: stall {big['stall_ms']:.2f} ms "
        f"median{worst}, committed after {big['commit_s']:.2f} s{measured}"
    )
