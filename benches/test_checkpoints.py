"""Checkpoint save/load throughput and small-checkpoint latency, per competitor.

Every round writes into a fresh directory; every case checks what it
measured: the saved checkpoint loads back with every row, the loaded table
equals the saved one.
"""

from __future__ import annotations

import itertools
import os

from data_juicer_accel.bench import checkpoints as ck
from data_juicer_accel.bench.corpus import table_buffers
from data_juicer_accel.bench.measure import zstd_ceiling

ROUNDS = int(os.environ.get("DJA_BENCH_ROUNDS", "3"))


def _fresh_dirs(base):
    counter = itertools.count()
    return lambda: str(base / f"ckpt-{next(counter)}")


def _bench_save(benchmark, competitor, table, tmp_path, rounds):
    data = competitor.prepare(table)
    fresh = _fresh_dirs(tmp_path)
    written = []

    def setup():
        path = fresh()
        written.append(path)
        return (data, path), {}

    benchmark.extra_info["bytes"] = table.nbytes
    benchmark.pedantic(competitor.save, setup=setup, rounds=rounds, iterations=1)
    loaded = competitor.load(written[-1])
    assert loaded.num_rows == table.num_rows
    benchmark.extra_info["disk_bytes"] = ck.dir_bytes(written[-1])
    benchmark.extra_info["MBps"] = table.nbytes / benchmark.stats.stats.median / 1e6


def _bench_load(benchmark, competitor, table, tmp_path, rounds):
    path = str(tmp_path / "ckpt")
    competitor.save(competitor.prepare(table), path)
    loaded = benchmark.pedantic(competitor.load, args=(path,), rounds=rounds, iterations=1)
    assert loaded.num_rows == table.num_rows
    assert loaded.equals(table)
    benchmark.extra_info["MBps"] = table.nbytes / benchmark.stats.stats.median / 1e6


def test_save(benchmark, competitor, corpus, tmp_path):
    benchmark.group = "checkpoint save"
    _bench_save(benchmark, competitor, corpus, tmp_path, ROUNDS)


def test_load(benchmark, competitor, corpus, tmp_path):
    benchmark.group = "checkpoint load (fully materialised)"
    _bench_load(benchmark, competitor, corpus, tmp_path, ROUNDS)


def test_small_save(benchmark, competitor, small_corpus, tmp_path):
    benchmark.group = "small checkpoint save (1,000 rows)"
    competitor.save(competitor.prepare(small_corpus), str(tmp_path / "warm-up"))
    _bench_save(benchmark, competitor, small_corpus, tmp_path, 5)


def test_small_load(benchmark, competitor, small_corpus, tmp_path):
    benchmark.group = "small checkpoint load (1,000 rows)"
    _bench_load(benchmark, competitor, small_corpus, tmp_path, 5)


def test_zstd_ceiling(benchmark, corpus):
    """zstd level 1 alone on the corpus's bytes, one thread per core."""
    benchmark.group = "ceiling"
    pieces = table_buffers(corpus)
    result = benchmark.pedantic(zstd_ceiling, args=(pieces,), rounds=ROUNDS, iterations=1)
    assert result["bytes"] == sum(len(p) for p in pieces)
    assert result["ratio"] > 1
    benchmark.extra_info["one_thread_MBps"] = result["bytes"] / result["one_thread_s"] / 1e6
    benchmark.extra_info["all_cores_MBps"] = result["bytes"] / result["all_cores_s"] / 1e6
