"""A fault-injecting HTTP/1.1 proxy on loopback, in front of the S3 server.

Each client connection gets a thread that serves its requests one after
another (keep-alive) and forwards each on a new upstream connection (the
single-threaded server closes its connections after each response). A fault
applies to the next ``times`` requests that match it:

- ``fail(status)``: answer with that status and an S3-style XML error, without forwarding;
- ``reset_mid_body(after_bytes)``: forward the headers and part of the body,
  then reset both connections (an upload cut off: the server never gets the
  whole request);
- ``drop_response()``: forward the whole request, wait for the server's
  response, then reset the client's connection instead of relaying it (the
  write happened, the client sees a failure: an ambiguous outcome);
- ``fail_after_forward(status)``: forward the whole request, then answer with
  that status instead of the server's response (the write happened, the
  client sees a server error and retries a request already done, as S3's
  occasional 500 after a write makes it)."""

from __future__ import annotations

import http.client
import socket
import struct
import threading
from collections import Counter
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler
from types import TracebackType
from typing import Literal
from urllib.parse import parse_qs, unquote, urlsplit
from xml.sax.saxutils import escape

from tests.support.s3_server import s3_env

CHUNK = 64 * 1024
HOP_BY_HOP = {"connection", "keep-alive", "proxy-connection", "transfer-encoding", "expect", "te", "upgrade"}
ERROR_CODES = {500: "InternalError", 503: "SlowDown"}


@dataclass
class Fault:
    kind: Literal["fail", "reset_mid_body", "drop_response", "fail_after_forward"]
    method: str | None = None
    path: str | None = None  # a substring of the URL-decoded path (/bucket/key)
    query: str | None = None  # a query parameter the request must have: partNumber, uploads, uploadId
    times: int = 1
    status: int = 503
    code: str | None = None
    after_bytes: int = 0
    applied: int = 0  # how many requests it hit

    def matches(self, method: str, target: str) -> bool:
        url = urlsplit(target)
        return (
            self.applied < self.times
            and (self.method is None or self.method == method)
            and (self.path is None or self.path in unquote(url.path))
            and (self.query is None or self.query in parse_qs(url.query, keep_blank_values=True))
        )


class FaultProxy:
    """Use as ``with FaultProxy(server.endpoint) as proxy:``; point the client at ``proxy.endpoint``."""

    def __init__(self, upstream: str) -> None:
        url = urlsplit(upstream)
        self.upstream = (url.hostname or "127.0.0.1", url.port or 80)
        self._lock = threading.Lock()
        self._faults: list[Fault] = []
        self._counts: Counter[str] = Counter()
        self._connections: set[socket.socket] = set()
        self._threads: list[threading.Thread] = []
        self._listener = socket.create_server(("127.0.0.1", 0), backlog=128)
        self.port: int = self._listener.getsockname()[1]
        self._closed = False
        self._threads.append(threading.Thread(target=self._accept_loop, daemon=True))
        self._threads[0].start()

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def env(self) -> dict[str, str]:
        return s3_env(self.endpoint)

    # Programming faults.

    # Each takes what a request must match (all optional): method ("PUT"), path (a substring
    # of the decoded /bucket/key) and query (a parameter it has: "partNumber", "uploads", "uploadId").

    def fail(self, status: int = 503, *, code: str | None = None, times: int = 1, **match: str | None) -> Fault:
        """Answer the next ``times`` matching requests with ``status`` and an XML error ``code``."""
        return self._add(Fault("fail", status=status, code=code, times=times), **match)

    def reset_mid_body(self, after_bytes: int, *, times: int = 1, **match: str | None) -> Fault:
        """Cut the matching upload after ``after_bytes`` bytes of its body (never the whole body;
        an empty body: before the request is forwarded)."""
        return self._add(Fault("reset_mid_body", after_bytes=after_bytes, times=times), **match)

    def drop_response(self, *, times: int = 1, **match: str | None) -> Fault:
        """Let the server do the matching request, then reset the client's connection."""
        return self._add(Fault("drop_response", times=times), **match)

    def fail_after_forward(
        self, status: int = 500, *, code: str | None = None, times: int = 1, **match: str | None
    ) -> Fault:
        """Let the server do the matching request, then answer ``status`` and an XML error ``code``."""
        return self._add(Fault("fail_after_forward", status=status, code=code, times=times), **match)

    def _add(self, fault: Fault, method: str | None = None, path: str | None = None, query: str | None = None) -> Fault:
        fault.method, fault.path, fault.query = method, path, query
        with self._lock:
            self._faults.append(fault)
        return fault

    def counts(self) -> dict[str, int]:
        """Requests seen per method (faulted ones included)."""
        with self._lock:
            return dict(self._counts)

    def clear(self) -> None:
        """Forget the faults and the counts."""
        with self._lock:
            self._faults.clear()
            self._counts.clear()

    def take_fault(self, method: str, target: str) -> Fault | None:
        """Count the request; return the first fault that applies to it, and mark it applied."""
        with self._lock:
            self._counts[method] += 1
            fault = next((f for f in self._faults if f.matches(method, target)), None)
            if fault is not None:
                fault.applied += 1
            return fault

    # Serving.

    def _accept_loop(self) -> None:
        while True:
            try:
                connection, address = self._listener.accept()
            except OSError:
                return  # close() shut the listener down
            thread = threading.Thread(target=self._serve, args=(connection, address), daemon=True)
            with self._lock:
                if self._closed:
                    connection.close()
                    return
                self._connections.add(connection)
                self._threads = [t for t in self._threads if t.is_alive()] + [thread]
            thread.start()

    def _serve(self, connection: socket.socket, address: tuple[str, int]) -> None:
        try:
            _Handler(connection, address, self)  # type: ignore[arg-type]  # only .server is used
        except (OSError, http.client.HTTPException):
            pass  # the client or the server went away, or close() shut the connection
        finally:
            with self._lock:
                self._connections.discard(connection)
            connection.close()

    def close(self) -> None:
        with self._lock:
            self._closed = True
            connections = list(self._connections)
            threads = list(self._threads)
        _shutdown(self._listener)
        self._listener.close()
        for connection in connections:
            _shutdown(connection)  # wakes its thread, blocked reading the next request
        for thread in threads:
            thread.join(30)

    def __enter__(self) -> FaultProxy:
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None, tb: TracebackType | None) -> None:
        self.close()


def _shutdown(sock: socket.socket) -> None:
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass


def _reset_on_close(sock: socket.socket) -> None:
    """Make the peer see a connection reset (RST) when ``sock`` closes, not an orderly end."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))


class _Handler(BaseHTTPRequestHandler):
    """One client connection: parses each request (and answers ``Expect: 100-continue``
    itself), then forwards it, fails it, or cuts it as the proxy's faults say."""

    protocol_version = "HTTP/1.1"  # keep-alive
    server: FaultProxy  # type: ignore[assignment]

    def log_message(self, format: str, *args: object) -> None:
        pass

    def handle_one_request(self) -> None:
        # The base class calls do_<METHOD>: every method goes to _proxy.
        self.raw_requestline = self.rfile.readline(65537)
        if not self.raw_requestline:
            self.close_connection = True
            return
        if self.parse_request():
            self._proxy()
            self.wfile.flush()

    def _proxy(self) -> None:
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            self.send_error(501, "the fault proxy forwards Content-Length bodies only")
            self.close_connection = True
            return
        fault = self.server.take_fault(self.command, self.path)
        length = int(self.headers.get("Content-Length") or 0)
        if fault is not None and fault.kind == "fail":
            self.rfile.read(length)
            self._send_s3_error(fault.status, fault.code or ERROR_CODES.get(fault.status, "ServiceUnavailable"))
            return
        if fault is not None and fault.kind == "reset_mid_body" and length == 0:
            self._cut()  # with no body to cut, forwarding the headers would forward the whole request
            return
        upstream = http.client.HTTPConnection(*self.server.upstream, timeout=300)
        try:
            self._forward_request(upstream, length, fault)
            if fault is not None and fault.kind == "reset_mid_body":
                return
            response = upstream.getresponse()
            body = response.read()
        finally:
            upstream.close()
        if fault is not None and fault.kind == "drop_response":
            self._cut()
            return
        if fault is not None and fault.kind == "fail_after_forward":
            self._send_s3_error(fault.status, fault.code or ERROR_CODES.get(fault.status, "ServiceUnavailable"))
            return
        self._relay(response, body)

    def _forward_request(self, upstream: http.client.HTTPConnection, length: int, fault: Fault | None) -> None:
        upstream.putrequest(self.command, self.path, skip_host=True, skip_accept_encoding=True)
        for name, value in self.headers.items():
            if name.lower() not in HOP_BY_HOP:
                upstream.putheader(name, value)
        upstream.endheaders()
        cut_at = length
        if fault is not None and fault.kind == "reset_mid_body":
            cut_at = max(0, min(fault.after_bytes, length - 1))
        sent = 0
        while sent < cut_at:
            chunk = self.rfile.read(min(CHUNK, cut_at - sent))
            if not chunk:
                raise ConnectionError("the client ended its connection mid-body")
            upstream.send(chunk)
            sent += len(chunk)
        if cut_at < length:
            _reset_on_close(upstream.sock)
            self._cut()

    def _cut(self) -> None:
        """End the client's connection with a reset, once this request's handling returns."""
        _reset_on_close(self.connection)
        self.close_connection = True

    def _relay(self, response: http.client.HTTPResponse, body: bytes) -> None:
        self.send_response_only(response.status, response.reason)
        has_body = self.command != "HEAD" and response.status >= 200 and response.status not in (204, 304)
        for name, value in response.getheaders():
            # The body is relayed whole: its length replaces the server's framing (except where
            # there is no body, as for HEAD, whose Content-Length is the object's).
            if name.lower() not in HOP_BY_HOP and not (has_body and name.lower() == "content-length"):
                self.send_header(name, value)
        if has_body:
            self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if has_body:
            self.wfile.write(body)

    def _send_s3_error(self, status: int, code: str) -> None:
        body = (
            '<?xml version="1.0" encoding="UTF-8"?>\n'
            f"<Error><Code>{code}</Code><Message>injected by the fault proxy</Message>"
            f"<Resource>{escape(self.path)}</Resource><RequestId>fault-proxy</RequestId></Error>"
        ).encode()
        self.send_response_only(status)
        self.send_header("Content-Type", "application/xml")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
