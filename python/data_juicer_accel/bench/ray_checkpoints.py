"""Bench case ``ray``: ``RayCheckpointManager`` save/load against the
reference's ``write_parquet`` / ``read_parquet`` on the same Ray dataset.

Both sides get the same materialized dataset (in the object store, split in
blocks) and run on the same local Ray cluster; a save ends when the write
tasks are done and (ours) the manifest is committed, a load ends when every
block is materialized again. MB are the Arrow bytes of the dataset in memory.
After an untimed warm-up (workers started, both code paths imported), the
figure of each round is kept, the median reported; within a round the cases
run one after the other on the same cluster, the first case rotating from
round to round.

Two datasets: Data-Juicer-shaped rows of random words (``make_table``,
compresses ~2.3x) and the text of the checkpoint bench's corpus
(``bench.corpus``, repeated phrases as in web text, ~3x).

Rows: ours as configured by default (a write task compresses on the one CPU
Ray grants it); ours with ``write_ray_remote_args={"num_cpus": 2}`` (two
encoder threads a task); the reference; and the bound of our default save:
the same Ray tasks over the same blocks doing nothing but zstd level 1 (the
level of our shards) on the Arrow buffers, with the ``zstandard`` package: no
checksum, no file, no fsync.

Run::

    python -m data_juicer_accel.bench.ray_checkpoints [--size-mb 64] [--rounds 3]

It starts a local Ray cluster with 2 CPUs (unless one is already running in
this process) and shuts it down at the end.
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import statistics
import time
from collections.abc import Callable
from typing import Any

import pyarrow as pa

from data_juicer_accel.bench.checkpoints import dir_bytes
from data_juicer_accel.tools import _interrupt
from data_juicer_accel.tools._format import table

__all__ = ["run_ray_bench", "main", "make_table", "bound_summary", "format_table"]

BLOCKS = 8
OURS = "data-juicer-accel (zstd Arrow IPC)"
OURS_2_CPUS = 'data-juicer-accel, write tasks of {"num_cpus": 2}'
REFERENCE = "reference (Ray write_parquet/read_parquet)"
BOUND = "bound: zstd level 1 alone, same Ray tasks"
#: The datasets, by the name rows carry in ``data``.
DATASETS = ("random words", "text corpus")


def _zstd_alone(dataset: Any) -> None:
    """Every block's Arrow buffers compressed at zstd level 1 in Ray tasks, output dropped."""

    def compress(block: pa.Table) -> pa.Table:
        import zstandard

        compressor = zstandard.ZstdCompressor(level=1)
        buffers = (b for column in block.columns for chunk in column.chunks for b in chunk.buffers() if b is not None)
        return pa.table({"bytes": [sum(len(compressor.compress(b)) for b in buffers)]})

    dataset.map_batches(compress, batch_format="pyarrow", batch_size=None).materialize()


def make_table(size_mb: int, seed: int = 0) -> pa.Table:
    """Data-Juicer-shaped rows (text, meta struct, stats) of about ``size_mb`` MB."""
    rng = random.Random(seed)
    vocab = ["".join(rng.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(rng.randint(2, 10))) for _ in range(5000)]
    texts: list[str] = []
    total = 0
    target = size_mb << 20
    while total < target:
        text = " ".join(rng.choices(vocab, k=rng.randint(20, 400)))
        texts.append(text)
        total += len(text) + 40
    n = len(texts)
    return pa.table(
        {
            "text": texts,
            "meta": [{"source": f"crawl-{i % 13}", "n": i} for i in range(n)],
            "__dj__stats__": [{"text_len": len(t), "num_words": t.count(" ") + 1} for t in texts],
        }
    )


def _timed(fn: Callable[..., Any]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def dataset_table(name: str, size_mb: int) -> pa.Table:
    """The dataset ``name`` (one of ``DATASETS``), about ``size_mb`` MB in memory."""
    if name == "random words":
        return make_table(size_mb)
    from data_juicer_accel.bench.corpus import default_corpus

    corpus = default_corpus(size_mb << 20)
    return corpus.select([c for c in corpus.column_names if c in ("text", "meta", "__dj__stats__")])


def start_local_ray(size_mb: int) -> None:
    """A local Ray cluster of 2 CPUs whose object store holds a dataset of
    ``size_mb`` MB, a load of it and headroom: a store that spills to disk
    slows whichever case runs next."""
    import ray

    ray.init(
        address="local",
        num_cpus=2,
        include_dashboard=False,
        object_store_memory=max(512, 5 * size_mb) << 20,
        log_to_driver=False,
        configure_logging=False,
    )


def expected_cost(size_mb: int, rounds: int) -> tuple[float, float]:
    """Expected seconds and peak temporary bytes of ``run_ray_bench`` on a
    quiet 2-core machine (docs/bench-ray.json: about 20 s to start Ray and
    warm it up, then per dataset and round four saves and three loads of
    200-500 MB/s; our checkpoint and the reference's parquet side by side)."""
    per_round = 7 * size_mb / 300
    seconds = 20 + len(DATASETS) * (2 + 0.05 * size_mb + max(1, rounds) * per_round)
    return seconds, 1.5 * size_mb * 1e6


def run_ray_bench(size_mb: int, rounds: int, dir: str | None = None) -> list[dict]:
    """One row per dataset and implementation: ``data``, ``name``,
    ``save_mb_s``, ``load_mb_s``, ``disk_mb`` (median of ``rounds``), and
    ``save_ratio``, ``load_ratio``, ``disk_ratio``: the row's figure divided
    by ours on the same data (ours = 1.0). The checkpoints go to a temporary
    directory in ``dir`` (default: the system's)."""
    import ray

    started = not ray.is_initialized()
    if started:
        start_local_ray(size_mb)
    ray.data.DataContext.get_current().enable_progress_bars = False
    rows: list[dict] = []
    root = _interrupt.temp_dir("dja-bench-ray-", dir=dir)
    try:
        _warm_up(root)
        for data in DATASETS:
            table = dataset_table(data, size_mb)
            mb = table.nbytes / (1 << 20)
            dataset = ray.data.from_arrow(table).repartition(BLOCKS).materialize()
            del table
            results: dict[str, dict[str, list[float | None]]] = {}
            for r in range(max(1, rounds)):
                _one_round(dataset, os.path.join(root, f"{r}"), results, first=r)
            rows += _rows(data, mb, {name: results[name] for name in (OURS, OURS_2_CPUS, REFERENCE, BOUND)})
            del dataset
    finally:
        _interrupt.remove_temp_dir(root)
        if started:
            ray.shutdown()
    return rows


def _warm_up(root: str) -> None:
    """Untimed: workers started and every code path imported on them."""
    import ray

    from data_juicer_accel.utils.ray_ckpt import RayCheckpointManager

    small = ray.data.from_arrow(make_table(1)).repartition(2).materialize()
    RayCheckpointManager(os.path.join(root, "warm")).save_checkpoint(small, 0)
    RayCheckpointManager(os.path.join(root, "warm")).load_checkpoint(0).materialize()  # type: ignore[union-attr]
    small.write_parquet(os.path.join(root, "warm.parquet"))
    _zstd_alone(small)
    ray.data.read_parquet(os.path.join(root, "warm.parquet")).materialize()


def _one_round(dataset: Any, root: str, results: dict, first: int = 0) -> None:
    """Each case once, one after the other, on the same dataset, starting
    with case ``first`` (the caller rotates it round by round, so that no
    case always follows the same one)."""
    cases = [
        lambda: _ours(dataset, root, results, OURS, None),
        lambda: _ours(dataset, root, results, OURS_2_CPUS, {"num_cpus": 2}),
        lambda: _reference(dataset, root, results),
        lambda: _record(results, BOUND, _timed(lambda: _zstd_alone(dataset)), None, None),
    ]
    for i in range(len(cases)):
        cases[(first + i) % len(cases)]()


def _ours(dataset: Any, root: str, results: dict, name: str, remote_args: dict | None) -> None:
    from data_juicer_accel.utils.ray_ckpt import RayCheckpointManager

    manager = RayCheckpointManager(os.path.join(root, "ours"))
    manager.write_ray_remote_args = remote_args
    save = _timed(lambda: manager.save_checkpoint(dataset, 0, "bench", 0))
    load = _timed(lambda: manager.load_checkpoint(0, "bench", 0).materialize())  # type: ignore[union-attr]
    _record(results, name, save, load, dir_bytes(manager.ckpt_dir) / (1 << 20))
    _remove(manager.ckpt_dir)


def _reference(dataset: Any, root: str, results: dict) -> None:
    """What the reference's RayCheckpointManager does."""
    import ray

    path = os.path.join(root, "ref", "checkpoint_op_0000_partition_0000.parquet")
    save = _timed(lambda: dataset.write_parquet(path))
    load = _timed(lambda: ray.data.read_parquet(path).materialize())
    _record(results, REFERENCE, save, load, dir_bytes(path) / (1 << 20))
    _remove(os.path.dirname(path))


def _remove(path: str) -> None:
    """Removes a case's files and waits for the disk to settle (untimed): on
    a filesystem mounted with ``discard`` the freed blocks are trimmed at the
    next journal commit, which the next case's fsync would otherwise wait for."""
    shutil.rmtree(path, ignore_errors=True)
    os.sync()


def _rows(data: str, mb: float, results: dict) -> list[dict]:
    rows = []
    for name, figures in results.items():
        loads, disks = [x for x in figures["load"] if x is not None], [x for x in figures["disk"] if x is not None]
        rows.append(
            {
                "data": data,
                "name": name,
                "mb": round(mb, 1),
                "save_mb_s": round(mb / statistics.median(figures["save"]), 1),
                "load_mb_s": round(mb / statistics.median(loads), 1) if loads else None,
                "disk_mb": round(statistics.median(disks), 2) if disks else None,
            }
        )
    ours = rows[0]
    for row in rows:
        for key, ratio in (("save_mb_s", "save_ratio"), ("load_mb_s", "load_ratio"), ("disk_mb", "disk_ratio")):
            row[ratio] = round(row[key] / ours[key], 2) if row[key] is not None and ours[key] else None
    return rows


def _record(results, name: str, save: float, load: float | None, disk: float | None) -> None:
    entry = results.setdefault(name, {"save": [], "load": [], "disk": []})
    entry["save"].append(save)
    entry["load"].append(load)
    entry["disk"].append(disk)


def format_table(rows: list[dict]) -> str:
    header = ["data", "case", "save MB/s", "load MB/s", "disk MB", "save x", "load x", "disk x"]
    keys = ["data", "name", "save_mb_s", "load_mb_s", "disk_mb", "save_ratio", "load_ratio", "disk_ratio"]
    return table(header, [[r[k] for k in keys] for r in rows], right=set(range(2, len(header))))


def bound_summary(rows: list[dict]) -> str:
    """How close our default save comes to the bound, per dataset."""
    lines = []
    for data in dict.fromkeys(r["data"] for r in rows):
        by_name = {r["name"]: r for r in rows if r["data"] == data}
        ours, bound = by_name[OURS]["save_mb_s"], by_name[BOUND]["save_mb_s"]
        lines.append(f"{data}: our save at {100 * ours / bound:.0f} % of the bound ({ours} of {bound} MB/s)")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mb", type=int, default=64, help="dataset size in memory (default 64)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds; the median is reported (default 3)")
    args = parser.parse_args(argv)
    rows = run_ray_bench(args.size_mb, args.rounds)
    print(f"ray: {rows[0]['mb']} MB in {BLOCKS} blocks, 2 CPUs, median of {args.rounds} round(s); x = vs ours")
    print(format_table(rows))
    print(bound_summary(rows))


if __name__ == "__main__":
    main()
