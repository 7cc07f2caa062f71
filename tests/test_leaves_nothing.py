"""The test suite leaves nothing in the temp directory.

A run of a few tests of the suite, in a pytest of its own whose temp directory
starts empty: tests with ``tmp_path`` and one that starts a local Ray cluster
(Ray keeps a session directory of logs and sockets per cluster). When the run
has passed, the temp directory is empty again: pytest's base temp is gone
(pyproject.toml's retention policy), so is Ray's (tests/conftest.py).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from tests.conftest import require

ROOT = Path(__file__).resolve().parent.parent

TESTS = [
    "tests/test_ckpt_api.py::test_attributes",
    "tests/test_ray_ckpt.py::test_save_writes_shards_on_the_workers_and_load_reads_them_back",
]


def test_a_passed_run_leaves_nothing_in_the_temp_directory():
    require("ray")
    # In /tmp, short: Ray's unix socket paths under it must fit in 107 bytes.
    temp = tempfile.mkdtemp(prefix="dja-t-", dir="/tmp")
    try:
        env = {k: v for k, v in os.environ.items() if k not in ("RAY_TMPDIR", "PYTEST_ADDOPTS")}
        env["TMPDIR"] = temp
        run = subprocess.run(
            [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *TESTS],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=600,
        )
        assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
        assert "2 passed" in run.stdout, run.stdout[-3000:]
        left = sorted(str(p.relative_to(temp)) for p in Path(temp).rglob("*"))
        assert left == [], f"left in the temp directory: {left[:20]}"
    finally:
        shutil.rmtree(temp, ignore_errors=True)
