"""moto's S3-protocol server in a subprocess on loopback: what ``bench --only
bucket --local-server`` runs against, and the server the object-storage tests
start (tests/support/s3_server.py adds boto3 inspection helpers to it).

It serves one request at a time (werkzeug's single-threaded server): moto's
conditional writes (``If-None-Match: *``) are atomic only then, as two racing
requests of the threaded server can both pass the check. Standard library
only here; moto (``pip install 'moto[server]'``) is imported by the child."""

from __future__ import annotations

import contextlib
import http.client
import importlib.util
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from types import TracebackType

ACCESS_KEY = SECRET_KEY = "testing"
REGION = "us-east-1"
START_TIMEOUT_S = 120.0
STOP_TIMEOUT_S = 10.0
#: What the server needs: moto's server app and the web framework it runs on.
NEEDS = ("moto", "flask", "werkzeug")

# The child serves the listening socket it inherits (fd in argv[1]): the parent
# bound it to port 0 and knows the port before the child starts, without a race.
# It exits when its stdin closes, so it never outlives the process that started it.
_CHILD = """
import os, sys, threading
from werkzeug.serving import make_server
from moto.moto_server.werkzeug_app import DomainDispatcherApplication, create_backend_app
threading.Thread(target=lambda: (sys.stdin.buffer.read(), os._exit(0)), daemon=True).start()
app = DomainDispatcherApplication(create_backend_app)
make_server("127.0.0.1", 0, app, threaded=False, fd=int(sys.argv[1])).serve_forever()
"""


def why_not_available() -> str | None:
    """None when moto's server can be started here, else why not (one line)."""
    for name in NEEDS:
        if importlib.util.find_spec(name) is None:
            return f"moto's S3 server is not installed (no module {name!r}): pip install 'moto[server]'"
    return None


def s3_env(endpoint: str) -> dict[str, str]:
    """The variables that point an S3 client (the Rust object_store, boto3) at ``endpoint``."""
    return {
        "AWS_ENDPOINT_URL": endpoint,
        "AWS_ACCESS_KEY_ID": ACCESS_KEY,
        "AWS_SECRET_ACCESS_KEY": SECRET_KEY,
        "AWS_REGION": REGION,
        "AWS_DEFAULT_REGION": REGION,
        "AWS_ALLOW_HTTP": "true",
    }


class LocalS3Server:
    """Start with ``with LocalS3Server() as server:`` (or ``start()``/``stop()``).

    ``workdir``: the directory that holds the server's log and is its TMPDIR;
    by default a new temporary one, removed by ``stop()`` (a given one is the
    caller's to remove)."""

    def __init__(self, workdir: str | None = None) -> None:
        self._given_workdir = workdir
        self.workdir = Path()
        self.port = 0
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def env(self) -> dict[str, str]:
        return s3_env(self.endpoint)

    @property
    def pid(self) -> int | None:
        return None if self._process is None else self._process.pid

    @property
    def log_path(self) -> Path:
        return self.workdir / "moto.log"

    def start(self) -> LocalS3Server:
        self.workdir = Path(self._given_workdir or tempfile.mkdtemp(prefix="dja-s3-server-"))
        listener = socket.create_server(("127.0.0.1", 0), backlog=128)
        self.port = listener.getsockname()[1]
        with listener, open(self.log_path, "wb") as log:
            self._process = subprocess.Popen(
                [sys.executable, "-c", _CHILD, str(listener.fileno())],
                pass_fds=[listener.fileno()],
                stdin=subprocess.PIPE,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=self._child_env(),
                start_new_session=True,  # signals sent to the starter's group do not reach it
            )
        self._wait_until_it_answers()
        return self

    def _child_env(self) -> dict[str, str]:
        env = dict(os.environ, TMPDIR=str(self.workdir))
        # Objects stay in memory: moto spills larger ones to a temporary file.
        env["MOTO_S3_DEFAULT_KEY_BUFFER_SIZE"] = str(1 << 40)
        return env

    def _wait_until_it_answers(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            assert self._process is not None
            if self._process.poll() is not None:
                self._fail(f"moto server exited with {self._process.returncode} while starting")
            try:
                connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=5)
                connection.request("GET", "/")
                connection.getresponse().read()
                connection.close()
                return
            except (OSError, http.client.HTTPException):
                continue  # a read timeout: it is still importing moto
        self._fail(f"moto server did not answer within {START_TIMEOUT_S:.0f} s")

    def log_tail(self, lines: int = 40) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError as error:
            return f"(no log: {error})"
        return "\n".join(text.splitlines()[-lines:])

    def _fail(self, message: str) -> None:
        tail = self.log_tail()
        self.stop()
        raise RuntimeError(f"{message}\n--- moto server log, last lines ---\n{tail}")

    def stop(self) -> None:
        process, self._process = self._process, None
        if process is not None:
            process.terminate()
            try:
                process.wait(STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
            if process.stdin is not None:
                process.stdin.close()
        if self.workdir != Path() and self._given_workdir is None:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self) -> LocalS3Server:
        return self.start()

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None, tb: TracebackType | None) -> None:
        self.stop()


@contextlib.contextmanager
def environment_of(server: LocalS3Server) -> Iterator[None]:
    """The ``AWS_*`` variables of ``server`` set in this process (the checkpoint
    manager's client reads them), the previous values put back at the end."""
    saved = {name: os.environ.get(name) for name in server.env()}
    os.environ.update(server.env())
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
