"""Fixtures of the pytest-benchmark cases (``pytest benches/ --benchmark-only``).

The cases are those of ``data-juicer-accel bench``, on a smaller corpus by
default: set ``DJA_BENCH_SIZE`` (e.g. ``1GB``) and ``DJA_BENCH_NUM_PROC``.
These are not part of CI's test command (``testpaths`` is ``tests``).
"""

from __future__ import annotations

import os
import sys

import pytest

from data_juicer_accel.bench import checkpoints as ck
from data_juicer_accel.bench.corpus import default_corpus, parse_size

SIZE = parse_size(os.environ.get("DJA_BENCH_SIZE", "256MB"))
NUM_PROC = int(os.environ.get("DJA_BENCH_NUM_PROC", os.cpu_count() or 1))
SMALL_ROWS = 1000


@pytest.fixture(scope="session", autouse=True)
def quiet_logs():
    from loguru import logger

    logger.remove()
    logger.add(sys.stderr, level="WARNING")
    try:
        import datasets

        datasets.disable_progress_bars()
    except ImportError:
        pass


@pytest.fixture(scope="session")
def corpus():
    return default_corpus(SIZE)


@pytest.fixture(scope="session")
def small_corpus(corpus):
    return corpus.slice(0, SMALL_ROWS)


def competitor_params():
    params = []
    for comp in ck.competitors(NUM_PROC):
        why = comp.available()
        marks = [pytest.mark.skip(reason=why)] if why else []
        params.append(pytest.param(comp, id=comp.key, marks=marks))
    return params


@pytest.fixture(params=competitor_params())
def competitor(request):
    return request.param
