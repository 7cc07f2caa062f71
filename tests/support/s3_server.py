"""moto's S3-protocol server in a subprocess on loopback, for the object-storage tests.

It serves one request at a time (werkzeug's single-threaded server): moto's
conditional writes (``If-None-Match: *``) are atomic only then, as two racing
requests of the threaded server can both pass the check. boto3 here only
inspects the server; the product talks to it with its own Rust client."""

from __future__ import annotations

import http.client
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from types import TracebackType
from typing import Any

import boto3
from botocore.config import Config

ACCESS_KEY = SECRET_KEY = "testing"
REGION = "us-east-1"
START_TIMEOUT_S = 120.0
STOP_TIMEOUT_S = 10.0

# The child serves the listening socket it inherits (fd in argv[1]): the parent
# bound it to port 0 and knows the port before the child starts, without a race.
# It exits when its stdin closes, so it never outlives the test process.
_CHILD = """
import os, sys, threading
from werkzeug.serving import make_server
from moto.moto_server.werkzeug_app import DomainDispatcherApplication, create_backend_app
threading.Thread(target=lambda: (sys.stdin.buffer.read(), os._exit(0)), daemon=True).start()
app = DomainDispatcherApplication(create_backend_app)
make_server("127.0.0.1", 0, app, threaded=False, fd=int(sys.argv[1])).serve_forever()
"""


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


def s3_client(endpoint: str, **config: Any) -> Any:
    """A boto3 S3 client for ``endpoint``; ``config`` goes to botocore's Config."""
    return boto3.client(
        "s3",
        endpoint_url=endpoint,
        aws_access_key_id=ACCESS_KEY,
        aws_secret_access_key=SECRET_KEY,
        region_name=REGION,
        config=Config(s3={"addressing_style": "path"}, **config),
    )


class S3Server:
    """Start with ``with S3Server() as server:`` (or ``start()``/``stop()``)."""

    def __init__(self) -> None:
        # Holds the log and is the child's TMPDIR; made by start(), removed by stop().
        self.workdir = Path()
        self.port = 0
        self._process: subprocess.Popen[bytes] | None = None
        self._client: Any = None

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

    def start(self) -> S3Server:
        self.workdir = Path(tempfile.mkdtemp(prefix="dja-s3-server-"))
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
                start_new_session=True,  # signals a test sends to its group do not reach it
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
        if self.workdir != Path():
            shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self) -> S3Server:
        return self.start()

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None, tb: TracebackType | None) -> None:
        self.stop()

    # Inspection helpers for tests (boto3, straight to the server).

    @property
    def client(self) -> Any:
        if self._client is None:
            self._client = s3_client(self.endpoint)
        return self._client

    def new_bucket(self, name: str | None = None) -> str:
        name = name or f"test-{uuid.uuid4().hex[:16]}"
        self.client.create_bucket(Bucket=name)
        return name

    def remove_bucket(self, bucket: str) -> None:
        """Delete a bucket with its objects and pending multipart uploads (moto holds them in memory)."""
        for upload in self.pending_multipart_uploads(bucket):
            self.client.abort_multipart_upload(Bucket=bucket, Key=upload["Key"], UploadId=upload["UploadId"])
        for key in self.list_keys(bucket):
            self.delete(bucket, key)
        self.client.delete_bucket(Bucket=bucket)

    def list_keys(self, bucket: str, prefix: str = "") -> list[str]:
        pages = self.client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
        return sorted(item["Key"] for page in pages for item in page.get("Contents", []))

    def get(self, bucket: str, key: str) -> bytes:
        body: bytes = self.client.get_object(Bucket=bucket, Key=key)["Body"].read()
        return body

    def put(self, bucket: str, key: str, data: bytes) -> None:
        self.client.put_object(Bucket=bucket, Key=key, Body=data)

    def delete(self, bucket: str, key: str) -> None:
        self.client.delete_object(Bucket=bucket, Key=key)

    def flip_byte(self, bucket: str, key: str, offset: int) -> None:
        """Invert the byte at ``offset`` (negative: from the end) of an object, in place."""
        data = bytearray(self.get(bucket, key))
        data[offset] ^= 0xFF
        self.put(bucket, key, bytes(data))

    def pending_multipart_uploads(self, bucket: str) -> list[dict[str, Any]]:
        """Started but neither completed nor aborted multipart uploads: each has Key and UploadId."""
        uploads: list[dict[str, Any]] = self.client.list_multipart_uploads(Bucket=bucket).get("Uploads", [])
        return uploads
