"""Checkpoint save/load in an S3-compatible bucket, per writer of ``bench --only bucket``.

Against moto's server on loopback (``moto[server]``), one session-wide
bucket; every round saves under a prefix of its own. Each case checks what it
measured (every row loads back) and records the bytes the save left in the
bucket (``extra_info``). The corpus is ``DJA_BENCH_SIZE`` (default 256MB).
"""

from __future__ import annotations

import itertools
import os

import pytest

from data_juicer_accel.bench import bucket as bk
from data_juicer_accel.bench import local_s3

ROUNDS = int(os.environ.get("DJA_BENCH_ROUNDS", "3"))
NUM_PROC = int(os.environ.get("DJA_BENCH_NUM_PROC", os.cpu_count() or 1))


@pytest.fixture(scope="session")
def target():
    why = local_s3.why_not_available()
    if why:
        pytest.skip(why)
    with local_s3.LocalS3Server() as server:
        with local_s3.environment_of(server):
            target = bk.Target("dja-bench", "benches", dict(os.environ))
            target.filesystem().create_dir(target.bucket)
            yield target


def writer_params():
    params = []
    for writer in bk.writers(NUM_PROC):
        why = writer.available()
        params.append(pytest.param(writer, id=writer.key, marks=[pytest.mark.skip(reason=why)] if why else []))
    return params


@pytest.fixture(params=writer_params())
def writer(request):
    return request.param


def _places(target, key):
    filesystem, counter = target.filesystem(), itertools.count()

    def place():
        path = f"{target.bucket}/{target.prefix}/{key}-{next(counter)}"
        return bk.Place(f"s3://{path}", path, target, filesystem)

    return place


def test_bucket_save(benchmark, writer, corpus, target):
    benchmark.group = "bucket save"
    fresh, written = _places(target, f"save-{writer.key}"), []

    def setup():
        written.append(fresh())
        return (corpus, written[-1]), {}

    benchmark.pedantic(writer.save, setup=setup, rounds=ROUNDS, iterations=1, warmup_rounds=1)
    assert writer.load(written[-1]).num_rows == corpus.num_rows
    benchmark.extra_info["bucket_bytes"] = bk.listed(written[-1].filesystem, written[-1].path)[1]
    benchmark.extra_info["MBps"] = corpus.nbytes / benchmark.stats.stats.median / 1e6
    for place in written:
        bk.remove(place.filesystem, place.path)


def test_bucket_load(benchmark, writer, corpus, target):
    benchmark.group = "bucket load"
    place = _places(target, f"load-{writer.key}")()
    writer.save(corpus, place)
    loaded = benchmark.pedantic(writer.load, args=(place,), rounds=ROUNDS, iterations=1, warmup_rounds=1)
    assert loaded.equals(corpus)
    benchmark.extra_info["MBps"] = corpus.nbytes / benchmark.stats.stats.median / 1e6
    bk.remove(place.filesystem, place.path)
