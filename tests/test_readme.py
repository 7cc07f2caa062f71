"""README.md works as written: every ```python block runs, its figures are
the ones of docs/bench.json, and it makes no promise the package cannot keep."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import require

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()
PYTHON_BLOCKS = re.findall(r"^```python\n(.*?)^```", README, re.S | re.M)


def run_block(code: str, cwd: Path) -> subprocess.CompletedProcess:
    """A block runs in a fresh interpreter (as a user would paste it), in an empty directory."""
    return subprocess.run([sys.executable, "-c", code], cwd=cwd, capture_output=True, text=True, timeout=300)


def test_the_readme_has_python_blocks():
    assert len(PYTHON_BLOCKS) >= 2


@pytest.mark.parametrize("code", PYTHON_BLOCKS, ids=[f"block{i}" for i in range(len(PYTHON_BLOCKS))])
def test_every_python_block_runs_as_written(code, tmp_path):
    """And a block ending in ``print(...)  # shown: why`` prints what is shown.
    A block that imports py-data-juicer runs against the installed reference."""
    if "data_juicer." in code:
        require("data_juicer")
    proc = run_block(code, tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    shown = re.search(r"^print\(.*\)\s+# (.*)\Z", code.strip(), re.M)
    if shown:
        assert proc.stdout.strip().splitlines()[-1] == shown.group(1).split(": ")[0]


def test_the_drop_in_snippet_saves_then_resumes(tmp_path):
    """Run twice: the second run finds the checkpoint, has no op left, and
    prints the same rows (what the comment in the README says)."""
    snippet = next(b for b in PYTHON_BLOCKS if "CheckpointManager(" in b)
    expected = re.search(r"print\(.*\)\s*# (\[.*\])", snippet).group(1)
    for _ in range(2):
        proc = run_block(snippet, tmp_path)
        assert proc.returncode == 0, proc.stderr[-3000:]
        assert proc.stdout.strip().splitlines()[-1] == expected
    assert (tmp_path / "work_dir" / "ckpt" / "latest" / "accel_manifest.json").exists()


def test_the_figures_are_those_of_docs_bench_json():
    from data_juicer_accel.bench.readme import regions

    results = json.loads((ROOT / "docs" / "bench.json").read_text())
    pipeline_results = json.loads((ROOT / "docs" / "bench-pipeline.json").read_text())
    ray_results = json.loads((ROOT / "docs" / "bench-ray.json").read_text())
    found = regions(results, pipeline_results, ray_results)
    assert "bench-pipeline" in found and "bench-ray" in found
    for name, content in found.items():
        region = re.search(rf"<!-- {name}:begin -->\n(.*?)\n<!-- {name}:end -->", README, re.S)
        assert region, f"README has no {name} region"
        assert region.group(1) == content, f"README's {name} differs from docs/bench.json: run docs/regenerate-bench.sh"


def test_ci_commands_follow_their_markers():
    for marker in ("ci:test-command", "ci:bench-command"):
        block = re.search(rf"<!-- {marker} -->\n```bash\n(.*?)\n```", README, re.S)
        assert block and len(block.group(1).splitlines()) == 1, marker
    assert "pytest" in re.search(r"<!-- ci:test-command -->\n```bash\n(.*)", README).group(1)


def test_the_readme_is_a_front_door():
    assert len(README.splitlines()) <= 310
    assert not re.search(r"issue #\d|#\d+\b(?!-)", README), "no issue numbers in the README"
    assert not re.search(r"pip install '?data-juicer-accel", README), "no index has the package"
    prose = re.sub(r"```.*?```", "", README, flags=re.S)
    assert not re.search(r"\b(?=[0-9a-f]*[a-f])(?=[0-9a-f]*[0-9])[0-9a-f]{7,40}\b", prose), "no commit hashes"
    for section in ("## Install", "## Differences from Data-Juicer 1.6.1", "## On disk", "## What survives a crash"):
        assert section in README
