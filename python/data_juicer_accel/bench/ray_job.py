"""The partitioned Ray job of ``data-juicer-accel bench --only ray``:
Data-Juicer 1.6.1's own ``ray_partitioned`` executor with a checkpoint after
every op of every partition, unpatched and patched.

The same job runs twice per round, each time in a fresh process and work
directory, the two cases alternating round by round so that load changes hit
both alike:

- ``reference``: ``dj-process`` as installed; its ``RayCheckpointManager``
  writes every checkpoint with Ray's ``write_parquet``;
- ``accel``: ``data-juicer-accel dj-process`` (``patch_data_juicer()``, then
  the same entry point); this package's ``RayCheckpointManager`` writes zstd
  Arrow IPC shards with a checksummed manifest, committed atomically.

The job: the bench corpus's text as jsonl, the six CPU ops of ``dj_jobs``,
``np: 2``, ``partition: {mode: manual, num_of_partitions: N}``,
``checkpoint: {enabled: true, strategy: every_op}``, ``ray_address: local``
(each process starts its own local Ray cluster on this machine's CPUs and
stops it at exit). Every run writes ops x partitions checkpoints.

Per case (medians over the rounds):

- ``run_s``: the executor's ``run()`` -- what ``dj-process`` itself logs as
  "Running executor took N seconds": loading the jsonl, the ops, every
  checkpoint, the export; not interpreter start-up, the config, the Ray
  cluster's start or stop;
- ``process_s``: the whole process, from its start to its exit (adds Python
  and Ray start-up, the executor's set-up and Ray's shutdown);
- ``save_s``: the seconds of the job's checkpoint saves, summed: from the
  executor's "Creating checkpoint after operation K" of a partition to the
  manager's "Saved checkpoint" of that op and partition (both cases log both
  lines). Other partitions run their ops meanwhile, so this is the share of
  the job's wall time a save took, not its CPU time;
- ``ckpt_bytes``: every regular file (each once) under the job's checkpoint directory at
  the end (the checkpoints with their manifests or parquet metadata, and the
  executor's ``partitioning_info.json``);
- ``checkpoints``: the ``checkpoint_op_*`` entries in it.

Both cases must export the same rows (the sorted texts, compared by digest):
the bench stops with an error otherwise.

With a ``bucket`` (``bench --only bucket --with-job``, see ``bucket.JobBucket``)
every run's ``checkpoint_dir`` is a fresh prefix in it: 1.6.1's manager writes
its parquet there through ``write_parquet`` (and a stray ``./s3:/...``
``partitioning_info.json`` in the job's cwd, its own fresh directory, removed
after the run); ``ckpt_bytes`` is then every object under that prefix, listed at
the end, and the prefix is deleted before the next run.
"""

from __future__ import annotations

import datetime
import glob
import hashlib
import json
import os
import re
import shutil
import statistics
import sys
from typing import Any

from data_juicer_accel.bench.checkpoints import dir_bytes
from data_juicer_accel.bench.dj_jobs import (
    OPS,
    REFERENCE_MAIN,
    job_env,
    run_logged,
    write_corpus_jsonl,
    write_job_config,
)
from data_juicer_accel.tools._format import table

#: In-memory size of the corpus the job reads unless --size is given: about
#: 200 MB of jsonl, a run() of 1.5-2 minutes on 2 cores.
JOB_SIZE = 200 * 10**6
TITLE = "ray_partitioned job, checkpoint every op, unpatched and patched"
CASES = ["reference", "accel"]
CASE_LABELS = {
    "reference": "py-data-juicer 1.6.1 (write_parquet)",
    "accel": "data-juicer-accel (zstd Arrow IPC)",
}
COMMANDS = {
    "reference": [sys.executable, "-c", REFERENCE_MAIN],
    "accel": [sys.executable, "-m", "data_juicer_accel", "dj-process"],
}
#: What dj-process logs once the executor's run() returned.
RUN_TIME = re.compile(r"Running executor took ([0-9.]+) seconds")
#: What Ray prints when one of its own internal checks (RAY_CHECK) aborts a
#: process, e.g. its task-cancellation race "Tried to complete task that was
#: not pending". Not the job's doing: such a run is run once more.
RAY_INTERNAL_CHECK_FAILED = "You have likely discovered a bug in Ray"
#: A log line's loguru timestamp.
LOG_TIME = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d+) \|")
SAVE_STARTS = re.compile(r"Partition (\d+): Creating checkpoint after operation (\d+)")
SAVE_ENDS = re.compile(r"Saved checkpoint: \S*checkpoint_op_(\d+)_partition_(\d+)")


def why_not_runnable() -> str | None:
    """None when Data-Juicer's ``dj-process`` and partitioned Ray executor
    import in a job's environment, else why not. Checked in a child process
    with that environment (no package index), so a missing dependency is
    never installed by Data-Juicer's lazy loader here."""
    import subprocess

    from data_juicer_accel.tools import _interrupt

    check = "import data_juicer.tools.process_data, data_juicer.core.executor.ray_executor_partitioned"
    with _interrupt.temporary_directory("dja-bench-check-") as workdir:
        proc = subprocess.run([sys.executable, "-c", check], env=job_env(workdir), capture_output=True, text=True)
    if proc.returncode == 0:
        return None
    lines = proc.stderr.strip().splitlines()
    return f"py-data-juicer cannot be imported ({lines[-1] if lines else f'exit {proc.returncode}'})"


def write_config(root: str, data: str, partitions: int, np_: int, checkpoint_uri: str | None = None) -> str:
    """The job's config; ``checkpoint_uri``: its ``checkpoint_dir`` (else the work dir's)."""
    where = f"checkpoint_dir: '{checkpoint_uri}'\n" if checkpoint_uri else ""
    return write_job_config(
        root,
        "bench-ray-job",
        data,
        np_,
        "executor_type: ray_partitioned\nray_address: local\n"
        f"partition:\n  mode: manual\n  num_of_partitions: {partitions}\n{where}"
        "checkpoint:\n  enabled: true\n  strategy: every_op\n",
    )


def checkpoint_dir(root: str) -> str:
    """The job's checkpoint directory (under the work dir the job created)."""
    found = glob.glob(os.path.join(root, "work", "**", "checkpoints"), recursive=True)
    if len(found) != 1:
        raise RuntimeError(f"expected one checkpoint directory under {root}/work, found {found}")
    return found[0]


def export_digest(root: str) -> tuple[int, str]:
    """Rows of the export (a directory of jsonl files) and the digest of their sorted texts."""
    texts = []
    for part in sorted(glob.glob(os.path.join(root, "out", "result.jsonl", "*"))):
        with open(part) as f:
            texts += [json.loads(line)["text"] for line in f if line.strip()]
    texts.sort()
    digest = hashlib.sha256()
    for text in texts:
        digest.update(text.encode())
        digest.update(b"\0")
    return len(texts), digest.hexdigest()


def run_job(case: str, workdir: str, data: str, partitions: int, np_: int, env: dict, bucket: Any = None) -> dict:
    """One job of ``case`` in a fresh directory (its cwd too); what it cost and
    what it exported. With a ``bucket`` (``bucket.JobBucket``) its checkpoints
    go to a fresh prefix there, deleted after the run. A run that Ray aborts in
    an internal check is run once more, from scratch."""
    for attempt in (1, 2):
        root = os.path.join(workdir, case)
        shutil.rmtree(root, ignore_errors=True)
        os.makedirs(root)
        ckpt_uri = bucket.next_uri(case) if bucket is not None else None
        cfg = write_config(root, data, partitions, np_, ckpt_uri)
        log = os.path.join(workdir, f"{case}.log")
        returncode, text, process_s = run_logged([*COMMANDS[case], "--config", cfg], env, log, cwd=root)
        if returncode != 0 and RAY_INTERNAL_CHECK_FAILED in text and attempt == 1:
            os.replace(log, log + ".ray-check-failed")
            if ckpt_uri:
                bucket.remove(ckpt_uri)
            continue
        run_time = RUN_TIME.findall(text)
        if returncode != 0 or not run_time:
            raise RuntimeError(f"ray job {case} failed (rc {returncode}); see {log}:\n{text[-3000:]}")
        ckpt_bytes, checkpoints = bucket.measure(ckpt_uri) if ckpt_uri else local_checkpoints(root)
        if ckpt_uri:
            bucket.remove(ckpt_uri)
        rows, digest = export_digest(root)
        result = {
            "run_s": float(run_time[-1]),
            "process_s": process_s,
            "save_s": save_seconds(text),
            "ckpt_bytes": ckpt_bytes,
            "checkpoints": checkpoints,
            "rows": rows,
            "digest": digest,
            "retried": attempt - 1,
        }
        shutil.rmtree(root, ignore_errors=True)  # the next job starts from nothing; disk stays small
        return result
    raise AssertionError("unreachable")


def local_checkpoints(root: str) -> tuple[int, int]:
    """Bytes under the job's local checkpoint directory, and its checkpoints."""
    ckpt = checkpoint_dir(root)
    return dir_bytes(ckpt), len(glob.glob(os.path.join(ckpt, "checkpoint_op_*")))


def save_seconds(log: str) -> float:
    """Seconds from each "Creating checkpoint after operation K" of partition P
    to the "Saved checkpoint" of op K, partition P, summed over the log."""
    started: dict[tuple[int, int], datetime.datetime] = {}
    total = 0.0
    for line in log.splitlines():
        stamp = LOG_TIME.match(line)
        if stamp is None:
            continue
        at = datetime.datetime.fromisoformat(stamp.group(1))
        if start := SAVE_STARTS.search(line):
            started[(int(start.group(2)), int(start.group(1)))] = at
        elif (end := SAVE_ENDS.search(line)) and (op_partition := (int(end.group(1)), int(end.group(2)))) in started:
            total += (at - started.pop(op_partition)).total_seconds()
    return total


def expected_cost(size: int, rounds: int) -> tuple[float, float]:
    """Expected seconds and peak temporary bytes of ``run_ray_job_bench`` on a
    quiet 2-core machine (docs/bench-ray.json: a job process takes about 7 s
    plus 0.27 s per MB of jsonl; the reference's checkpoints take 3.4 times
    the text, and one job's directory is kept at a time)."""
    seconds = 10 + 2 * rounds * (7 + 0.27 * size / 1e6)
    return seconds, 5.5 * size


def run_ray_job_bench(
    size: int, rounds: int, workdir: str, partitions: int = 4, np_: int = 2, bucket: Any = None
) -> dict:
    """Both cases, ``rounds`` interleaved rounds; medians and patched/unpatched ratios.
    ``bucket`` (``bucket.JobBucket``): the checkpoints go there instead of the work dir."""
    os.makedirs(workdir, exist_ok=True)
    data = os.path.join(workdir, "corpus.jsonl")
    data_bytes = write_corpus_jsonl(size, data)
    env = job_env(workdir)
    runs: dict[str, list[dict]] = {case: [] for case in CASES}
    for r in range(rounds):
        order = CASES if r % 2 == 0 else CASES[::-1]  # neither case always runs first
        for case in order:
            runs[case].append(run_job(case, workdir, data, partitions, np_, env, bucket))
    check_same_export(runs)
    rows = [_row(case, runs[case]) for case in CASES]
    ref, ours = rows
    for key in ("run_s", "process_s", "save_s", "ckpt_bytes"):
        ours[f"{key}_vs_reference"] = ours[key] / ref[key]
    return {
        "data_bytes": data_bytes,
        "partitions": partitions,
        "ops": OPS,
        "np": np_,
        "rounds": rounds,
        "cpus": os.cpu_count(),
        "exported_rows": ref["rows"],
        "same_export": True,
        "loadavg": list(os.getloadavg()),
        "rows": rows,
        "checkpoint_dir": bucket.where() if bucket is not None else None,
    }


def check_same_export(runs: dict[str, list[dict]]) -> None:
    """Raises unless every run of every case exported the same rows."""
    exports = {(run["rows"], run["digest"]) for case_runs in runs.values() for run in case_runs}
    if len(exports) != 1:
        detail = {case: [(run["rows"], run["digest"][:12]) for run in case_runs] for case, case_runs in runs.items()}
        raise AssertionError(f"the ray jobs exported different rows (rows, digest of the sorted texts): {detail}")


def _row(case: str, runs: list[dict]) -> dict:
    return {
        "case": case,
        "label": CASE_LABELS[case],
        "run_s": statistics.median(r["run_s"] for r in runs),
        "process_s": statistics.median(r["process_s"] for r in runs),
        "save_s": statistics.median(r["save_s"] for r in runs),
        "ckpt_bytes": statistics.median(r["ckpt_bytes"] for r in runs),
        "checkpoints": runs[0]["checkpoints"],
        "rows": runs[0]["rows"],
        "retried": sum(r["retried"] for r in runs),
        "runs": runs,
    }


REPORT_HEADER = ["case", "run() s", "process s", "saves s", "ckpt MB", "ckpts"] + [
    f"x ref {figure}" for figure in ("run()", "process", "saves", "MB")
]


def _report_cells(row: dict) -> list:
    ratios = [row.get(f"{k}_vs_reference") for k in ("run_s", "process_s", "save_s", "ckpt_bytes")]
    return [
        row["label"],
        f"{row['run_s']:.1f}",
        f"{row['process_s']:.1f}",
        f"{row['save_s']:.1f}",
        f"{row['ckpt_bytes'] / 1e6:.1f}",
        row["checkpoints"],
        *(None if x is None else f"{x:.2f}" for x in ratios),
    ]


def format_report(result: dict) -> str:
    lines = [
        f"ray_partitioned job: Data-Juicer 1.6.1's executor, {result['ops']} CPU ops x {result['partitions']} "
        f"partitions, checkpoint every op, {result['data_bytes'] / 1e6:.0f} MB of jsonl text, np={result['np']}, "
        f"local Ray on {result['cpus']} CPUs; median of {result['rounds']} interleaved round(s); "
        f"load average at the end {result['loadavg'][0]:.1f}",
        "",
        table(
            REPORT_HEADER,
            [_report_cells(r) for r in result["rows"]],
            right=set(range(1, 10)),
        ),
    ]
    in_bucket = result.get("checkpoint_dir")
    if in_bucket:
        lines.insert(1, f"checkpoint_dir: a fresh prefix per run under {in_bucket}")
    lines += [
        f"both exported the same {result['exported_rows']:,} rows (sorted texts equal)",
        "run(): the executor's run() as dj-process logs it (load, ops, checkpoints, export); process: start to exit, "
        'with Python and Ray start-up; saves: from each "Creating checkpoint" to its "Saved checkpoint" log line, '
        "summed (other partitions run meanwhile); ckpt MB: "
        + (
            "every object under the run's checkpoint prefix in the bucket at the end"
            if in_bucket
            else "every file under the job's checkpoint directory at the end"
        ),
    ]
    retried = sum(r["retried"] for r in result["rows"])
    if retried:
        lines.append(f"{retried} run(s) aborted by an internal check of Ray were run again")
    return "\n".join(lines)
