"""Shared fixtures and the one rule for optional dependencies.

The reference (py-data-juicer 1.6.1), HF ``datasets``, Ray and the bench's
modules are optional: a test that needs one is skipped when it is missing,
except with ``CI=true``, where the missing module fails the test. CI installs
every extra, so there a missing module means a broken setup, and a skip would
hide the comparison the suite exists for."""

from __future__ import annotations

import getpass
import importlib
import importlib.util
import os
import re
import shutil
import signal
import tempfile
from pathlib import Path
from types import ModuleType
from typing import NoReturn

import pyarrow as pa
import pytest
from loguru import logger

IN_CI = os.environ.get("CI", "").strip().lower() in ("1", "true", "yes")

# Nothing left in the temp directory. pytest's own base temp is removed by its
# retention policy (pyproject.toml: only a failed session keeps it, and then
# only the failed tests' directories). Ray keeps every cluster's session
# directory (logs, sockets, spilled objects) under $RAY_TMPDIR/ray, /tmp/ray by
# default; here it goes to a directory of this session, inherited by the Ray
# clusters that tests and their subprocesses (dj-process) start, and removed at
# the end. Ray's unix socket paths must fit in 107 bytes:
# <here>/ray/session_<date>_<time>_<usec>_<pid>/sockets/plasma_store takes 81
# more, so it goes to /tmp when the temp directory's own path is longer.
_OWN_RAY_TMPDIR: str | None = None
_RAY_PATH_ROOM = 107 - len("/ray-xxxxxxxx/ray/session_2026-12-07_13-49-31_408159_1234567/sockets/plasma_store")


#: Temporary directories that SIGKILLed children leave (a pool Manager's
#: sockets, HF datasets' temporary cache): those new since the session began
#: are removed at its end, as a killed process cannot remove its own.
_KILLED_CHILDREN_LEAVE = ("pymp-", "hf_datasets-")
_TEMP_BEFORE: set[str] = set()


def _killed_childrens_dirs() -> set[str]:
    parent = tempfile.gettempdir()
    try:
        names = os.listdir(parent)
    except OSError:
        return set()
    return {os.path.join(parent, name) for name in names if name.startswith(_KILLED_CHILDREN_LEAVE)}


def pytest_configure(config: pytest.Config) -> None:
    global _OWN_RAY_TMPDIR
    # A suite started in the background by a script (`pytest &`, nohup)
    # inherits SIGINT ignored, and so would every program the tests start
    # and then interrupt: its Ctrl-C would do nothing. A handler is reset to
    # the default in a new program, so each starts as from a terminal.
    if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)
    _TEMP_BEFORE.update(_killed_childrens_dirs())
    if "RAY_TMPDIR" not in os.environ:
        parent = tempfile.gettempdir()
        _OWN_RAY_TMPDIR = tempfile.mkdtemp(prefix="ray-", dir=parent if len(parent) <= _RAY_PATH_ROOM else "/tmp")
        os.environ["RAY_TMPDIR"] = _OWN_RAY_TMPDIR


def _dirs_in_use() -> set[str]:
    """Directories a live process still uses: this process's own
    multiprocessing temp dir (its exit handler removes it) and those holding a
    bound Unix socket (another test session's live pool Manager)."""
    import multiprocessing.process

    in_use = {multiprocessing.process.current_process()._config.get("tempdir") or ""}
    try:
        with open("/proc/net/unix") as sockets:
            fields = (line.split() for line in sockets)
            in_use.update(os.path.dirname(f[7]) for f in fields if len(f) >= 8 and f[7].startswith("/"))
    except OSError:
        pass
    return in_use


def pytest_unconfigure(config: pytest.Config) -> None:
    for path in _killed_childrens_dirs() - _TEMP_BEFORE - _dirs_in_use():
        shutil.rmtree(path, ignore_errors=True)
    if _OWN_RAY_TMPDIR is not None:
        shutil.rmtree(_OWN_RAY_TMPDIR, ignore_errors=True)
        os.environ.pop("RAY_TMPDIR", None)
    if config.option.basetemp is None:
        remove_if_unused(
            Path(os.environ.get("PYTEST_DEBUG_TEMPROOT") or tempfile.gettempdir()) / f"pytest-of-{getpass.getuser()}"
        )


def remove_if_unused(directory: Path) -> None:
    """Remove pytest's per-user temp root (its sessions' base temps' parent)
    once it holds nothing but dead ``pytest-current`` links: another session
    may be running, and then it stays."""
    try:
        for entry in directory.iterdir():
            if entry.is_symlink() and not entry.exists():
                entry.unlink(missing_ok=True)
        directory.rmdir()
    except OSError:
        pass


# What to install for each optional top-level module the tests import.
INSTALL_HINTS = {
    "data_juicer": "pip install --no-deps py-data-juicer==1.6.1",
    "ray": "pip install -e '.[ray]'",
}
DEFAULT_HINT = "pip install -e '.[test]'"


def missing(what: str, hint: str = DEFAULT_HINT, detail: str = "not installed") -> NoReturn:
    """Skip the current test (or module) because ``what`` is missing; with
    CI=true fail it instead."""
    message = f"needs {what}, {detail} ({hint})"
    if IN_CI:
        pytest.fail(f"{message}; CI=true requires it", pytrace=False)
    pytest.skip(message, allow_module_level=True)


def require(module: str) -> ModuleType:
    """Import and return ``module``, which the calling test needs: like
    ``pytest.importorskip``, but failing under CI=true."""
    hint = INSTALL_HINTS.get(module.split(".")[0], DEFAULT_HINT)
    try:
        return importlib.import_module(module)
    except ImportError as error:
        missing(module, hint, f"cannot import it: {error}")


HAS_REFERENCE = importlib.util.find_spec("data_juicer") is not None


@pytest.fixture
def reference_installed() -> None:
    require("data_juicer")


requires_reference = pytest.mark.usefixtures("reference_installed")


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


# --- S3-protocol server (moto) and fault proxy, for the object-storage tests ---
# One server on loopback for the session; each test gets its own bucket. moto
# and boto3 come with the test extra: missing, the tests are skipped (failed
# under CI=true). The harness is in tests/support/.

from collections.abc import Iterator  # noqa: E402
from typing import TYPE_CHECKING  # noqa: E402

if TYPE_CHECKING:  # the fixtures import the harness, which imports the optional boto3
    from tests.support.fault_proxy import FaultProxy
    from tests.support.s3_server import S3Server


@pytest.fixture(scope="session")
def s3_server() -> Iterator[S3Server]:
    require("moto.moto_server.werkzeug_app")
    require("boto3")
    from tests.support.s3_server import S3Server

    with S3Server() as server:
        yield server


@pytest.fixture
def s3_bucket(s3_server: S3Server) -> Iterator[str]:
    """A new, empty bucket; removed with its contents after the test (moto holds them in memory)."""
    bucket = s3_server.new_bucket()
    yield bucket
    s3_server.remove_bucket(bucket)


@pytest.fixture
def s3_env(s3_server: S3Server, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """The AWS_* variables pointing at the server, set in this process (and so in its subprocesses)."""
    for name in ("AWS_SESSION_TOKEN", "AWS_PROFILE", "AWS_ENDPOINT", "AWS_VIRTUAL_HOSTED_STYLE_REQUEST"):
        monkeypatch.delenv(name, raising=False)
    env = s3_server.env()
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return env


@pytest.fixture
def fault_proxy(s3_server: S3Server) -> Iterator[FaultProxy]:
    """A fault-injecting proxy in front of the session's server; its ``env()`` points clients at it."""
    from tests.support.fault_proxy import FaultProxy

    with FaultProxy(s3_server.endpoint) as proxy:
        yield proxy
