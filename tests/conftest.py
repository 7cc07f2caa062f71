"""Shared fixtures. The reference (py-data-juicer 1.6.1) is optional: tests
that compare against it are skipped when it is not installed."""

from __future__ import annotations

import importlib.util
import os
import re

import pyarrow as pa
import pytest
from loguru import logger

HAS_REFERENCE = importlib.util.find_spec("data_juicer") is not None
requires_reference = pytest.mark.skipif(
    not HAS_REFERENCE, reason="py-data-juicer 1.6.1 not installed (pip install --no-deps py-data-juicer==1.6.1)"
)


@pytest.fixture
def fault_hook() -> str:
    """The name of the fault-injection variable, for tests that need the hook
    (``--features fault-injection``, off in release wheels). Skipped without
    it, except under ``CI=true``, where it fails."""
    from data_juicer_accel import _native

    if not _native.FAULT_INJECTION:
        message = (
            "this build has no fault hook: reinstall with "
            "--config-settings=build-args='--features fault-injection' (see README, Tests)"
        )
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    return "DATA_JUICER_ACCEL_FAULT"


def text_table(rows: int = 2000, seed: int = 0) -> pa.Table:
    """A small table shaped like Data-Juicer data: text, a meta struct, stats."""
    words = ["data", "juicer", "arrow", "zstd", "checkpoint", "token", "the", "of", "model", "web"]
    texts = [" ".join(words[(i * 7 + j * 3 + seed) % len(words)] for j in range(5 + i % 40)) for i in range(rows)]
    return pa.table(
        {
            "text": texts,
            "meta": [{"source": f"s{i % 5}", "n": i} for i in range(rows)],
            "__dj__stats__": [{"len": len(t)} for t in texts],
        }
    )


@pytest.fixture
def table() -> pa.Table:
    return text_table()


@pytest.fixture
def log_messages():
    """Collects loguru messages (level, text) emitted during a test."""
    records: list[tuple[str, str]] = []
    sink = logger.add(lambda m: records.append((m.record["level"].name, m.record["message"])), level="DEBUG")
    yield records
    logger.remove(sink)


def normalise_paths(text: str, *roots: str) -> str:
    for root in roots:
        text = text.replace(str(root), "<ckpt>")
    return re.sub(r"\s+", " ", text)
