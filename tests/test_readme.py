"""README.md works as written: every ```python block runs, every shell command
names what exists (the wheel the build line builds, extras, subcommands and
their flags), its figures are the ones of docs/bench.json, and it makes no
promise the package cannot keep. CI (.ci/run) runs the build, install and test
lines themselves, as pasted."""

from __future__ import annotations

import json
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import require

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()
PYTHON_BLOCKS = re.findall(r"^```python\n(.*?)^```", README, re.S | re.M)
BASH_LINES = [
    line
    for block in re.findall(r"^```bash\n(.*?)^```", README, re.S | re.M)
    for line in block.splitlines()
    if line.strip()
]
# Inline code of the prose (a span may wrap onto the next line).
CODE_SPANS = re.findall(r"`([^`]+)`", re.sub(r"^```.*?^```", "", README, flags=re.S | re.M))
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())


def marked_command(marker: str) -> str:
    """The one line of the ```bash block that follows ``<!-- marker -->`` (what .ci/run runs)."""
    block = re.search(rf"<!-- {marker} -->\n```bash\n(.*?)\n```", README, re.S)
    assert block and len(block.group(1).splitlines()) == 1, f"README: one line in a bash block after <!-- {marker} -->"
    return block.group(1)


def ci_setting(name: str) -> str:
    return re.search(rf'^{name}="([^"]+)"', (ROOT / ".ci" / "run").read_text(), re.M).group(1)


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
    from benches.readme import regions

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
    assert "pytest" in marked_command("ci:test-command")
    assert "data-juicer-accel bench" in marked_command("ci:bench-command")
    assert "maturin build" in marked_command("ci:wheel-build")
    assert "pip install" in marked_command("ci:wheel-install")


def test_the_install_line_installs_the_wheel_the_build_line_builds():
    """maturin writes the wheel to target/wheels/ (no --out), named by the
    version in Cargo.toml and the tags .ci/run checks the built file for, in
    the order maturin writes them: the install line names that path. CI pastes
    the line into a fresh venv, beside the wheel it built."""
    build = marked_command("ci:wheel-build")
    assert build.split("&&")[-1].split() == ["maturin", "build", "--release", "--zig"], "CI appends --out to it"
    assert ci_setting("MATURIN") in build and ci_setting("ZIGLANG") in build, "the build tools CI pins"
    version = tomllib.loads((ROOT / "Cargo.toml").read_text())["package"]["version"]
    wheel = f"target/wheels/data_juicer_accel-{version}-{ci_setting('WHEEL_TAG')}.whl"
    install = shlex.split(marked_command("ci:wheel-install"), comments=True)
    assert install[:2] == ["pip", "install"]
    assert [arg.split("[")[0] for arg in install[2:]] == [wheel]


def pip_installs() -> list[list[str]]:
    """The arguments of every ``pip install`` the README shows, in blocks or inline."""
    commands = []
    for text in [*BASH_LINES, *CODE_SPANS]:
        for command in re.split(r"&&|;", text):
            words = shlex.split(command.replace("\n", " "), comments=True)
            if words[:2] == ["pip", "install"]:
                commands.append(words[2:])
    return commands


def test_every_extra_the_readme_names_exists():
    extras = set(PYPROJECT["project"]["optional-dependencies"])
    named = {
        extra
        for args in pip_installs()
        for arg in args
        if not arg.startswith("-")
        for group in re.findall(r"\[([^\]]+)\]", arg)
        for extra in group.split(",")
    }
    listed = re.search(r"\bExtras\b[^:]*:(.*?)\n\n", README, re.S)
    assert listed, "README lists the extras after 'Extras ...:'"
    named |= set(re.findall(r"`([a-z-]+)`(?= \()", listed.group(1)))
    assert {"data-juicer", "bench", "ray", "datasets", "test"} <= named
    assert named <= extras, f"extras the README names but pyproject.toml lacks: {sorted(named - extras)}"


def test_the_data_juicer_extra_installs_what_the_reference_imports_but_does_not_declare():
    """py-data-juicer 1.6.1 is installed with --no-deps: its extra must carry
    aiohttp (imported, never declared), zstandard and Ray (imported by
    ``data_juicer.core``, else pip-installed at run time); the test extra
    includes it."""
    extras = PYPROJECT["project"]["optional-dependencies"]
    names = {re.split(r"[<>=\[ ]", req)[0] for req in extras["data-juicer"]}
    assert {"aiohttp", "zstandard", "ray", "datasets", "jsonargparse"} <= names
    assert "py-data-juicer" not in names
    assert any(req.startswith("data-juicer-accel[") and "data-juicer" in req for req in extras["test"])
    assert any(args[:1] == ["--no-deps"] and "py-data-juicer==1.6.1" in args for args in pip_installs())


def cli_invocations() -> list[list[str]]:
    """Every ``data-juicer-accel SUBCOMMAND ...`` the README shows, as argv
    (placeholders such as CKPT_DIR kept, ``[--flag]`` unbracketed), plus the
    bench flags its quick start names on their own."""
    found = []
    for text in [*BASH_LINES, *CODE_SPANS]:
        for match in re.finditer(r"data-juicer-accel ([a-z][\w-]*)([^`#&|]*)", text.replace("\n", " ")):
            found.append([match.group(1), *re.sub(r"[\[\]]", " ", match.group(2)).split()])
    quick_start = README.split("## Quick start")[1].split("\n## ")[0]
    for span in re.findall(r"`(--[^`]+)`", quick_start):
        for flags in span.split("/"):
            found.append(["bench", *flags.split()])
    return found


def test_every_subcommand_and_flag_the_readme_shows_parses():
    """Parsed by the real parser (nothing runs): a renamed or removed flag, or
    a value it no longer accepts, fails here. dj-process hands its arguments to
    Data-Juicer, whose --help must list them."""
    from data_juicer_accel.cli import build_parser

    invocations = cli_invocations()
    assert {argv[0] for argv in invocations} >= {"bench", "inspect", "events", "dj-process"}
    parser = build_parser()
    dj_flags = set()
    for argv in invocations:
        if argv[0] == "dj-process":
            dj_flags |= {arg for arg in argv if arg.startswith("--")}
            continue
        argv = [argv[0], *["x" if re.fullmatch(r"[A-Z_]+", arg) else arg for arg in argv[1:]]]
        if argv[0] in ("inspect", "events") and not any(not a.startswith("-") for a in argv[1:]):
            argv.append("x")  # the positional a span may leave out
        try:
            parser.parse_args(argv)
        except SystemExit as exit:
            pytest.fail(f"README shows `data-juicer-accel {' '.join(argv)}`, which does not parse (exit {exit.code})")
    require("data_juicer")
    help_text = subprocess.run(
        [sys.executable, "-m", "data_juicer_accel", "dj-process", "--help"], capture_output=True, text=True, timeout=300
    ).stdout
    assert dj_flags and all(flag in help_text for flag in dj_flags), dj_flags


def test_the_readme_is_a_front_door():
    assert len(README.splitlines()) <= 335
    assert not re.search(r"issue #\d|#\d+\b(?!-)", README), "no issue numbers in the README"
    assert not re.search(r"pip install '?data-juicer-accel", README), "no index has the package"
    prose = re.sub(r"```.*?```", "", README, flags=re.S)
    assert not re.search(r"\b(?=[0-9a-f]*[a-f])(?=[0-9a-f]*[0-9])[0-9a-f]{7,40}\b", prose), "no commit hashes"
    for section in ("## Install", "## Differences from Data-Juicer 1.6.1", "## On disk", "## What survives a crash"):
        assert section in README
