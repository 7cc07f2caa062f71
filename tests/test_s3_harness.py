"""The S3 test harness itself (tests/support/): the moto server the
object-storage tests run against, with its atomic conditional writes, and the
fault proxy's faults, checked with boto3 alone."""

from __future__ import annotations

import http.client
import os
import socket
import threading
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import require

require("boto3")
from botocore.exceptions import ClientError, ConnectionClosedError  # noqa: E402

from tests.support.fault_proxy import FaultProxy  # noqa: E402
from tests.support.s3_server import S3Server, s3_client  # noqa: E402

# moto does not check signatures, but finds the service (s3) in the credential scope.
AUTH_HEADER = "Authorization: AWS4-HMAC-SHA256 Credential=testing/20260101/us-east-1/s3/aws4_request, Signature=0"


def error_status(error: ClientError) -> int:
    status: int = error.response["ResponseMetadata"]["HTTPStatusCode"]
    return status


def no_retries(endpoint: str) -> Any:
    # total_max_attempts counts the first attempt: botocore's max_attempts counts retries.
    return s3_client(endpoint, retries={"total_max_attempts": 1})


def port_is_closed(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=10).close()
    except ConnectionRefusedError:
        return True
    return False


def test_put_get_list_roundtrip(s3_server: S3Server, s3_bucket: str) -> None:
    s3_server.put(s3_bucket, "ckpt/a", b"alpha")
    s3_server.put(s3_bucket, "ckpt/b/c", b"")
    s3_server.put(s3_bucket, "other", b"x")
    assert s3_server.list_keys(s3_bucket, "ckpt/") == ["ckpt/a", "ckpt/b/c"]
    assert s3_server.get(s3_bucket, "ckpt/a") == b"alpha"
    s3_server.flip_byte(s3_bucket, "ckpt/a", -1)
    assert s3_server.get(s3_bucket, "ckpt/a") == b"alph\x9e"
    s3_server.delete(s3_bucket, "other")
    assert s3_server.list_keys(s3_bucket) == ["ckpt/a", "ckpt/b/c"]


def test_env_points_a_client_at_the_server(s3_server: S3Server, s3_bucket: str, s3_env: dict[str, str]) -> None:
    assert os.environ["AWS_ENDPOINT_URL"] == s3_server.endpoint == s3_env["AWS_ENDPOINT_URL"]
    assert s3_env["AWS_ALLOW_HTTP"] == "true"
    s3_server.put(s3_bucket, "k", b"v")
    import boto3  # configured by the environment alone, as a subprocess would be

    assert boto3.client("s3").get_object(Bucket=s3_bucket, Key="k")["Body"].read() == b"v"


def test_conditional_create_succeeds_once(s3_server: S3Server, s3_bucket: str) -> None:
    s3_server.client.put_object(Bucket=s3_bucket, Key="k", Body=b"first", IfNoneMatch="*")
    with pytest.raises(ClientError) as caught:
        s3_server.client.put_object(Bucket=s3_bucket, Key="k", Body=b"second", IfNoneMatch="*")
    assert error_status(caught.value) == 412
    assert caught.value.response["Error"]["Code"] == "PreconditionFailed"
    assert s3_server.get(s3_bucket, "k") == b"first"


def racing_creates(clients: list[Any], bucket: str, key: str) -> list[int]:
    """Each client puts ``key`` with If-None-Match: * at the same moment; their HTTP statuses."""
    start = threading.Barrier(len(clients))
    outcomes: list[int] = []

    def create(client: Any, body: bytes) -> None:
        start.wait()
        try:
            client.put_object(Bucket=bucket, Key=key, Body=body, IfNoneMatch="*")
            outcomes.append(200)
        except ClientError as error:
            outcomes.append(error_status(error))

    threads = [threading.Thread(target=create, args=(c, b"writer%d" % i)) for i, c in enumerate(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return outcomes


def test_racing_conditional_creates_have_one_winner(s3_server: S3Server, s3_bucket: str) -> None:
    clients = [s3_client(s3_server.endpoint), s3_client(s3_server.endpoint)]
    for pair in range(20):
        assert sorted(racing_creates(clients, s3_bucket, f"race-{pair}")) == [200, 412], f"pair {pair}"
        assert s3_server.get(s3_bucket, f"race-{pair}") in (b"writer0", b"writer1")


def test_the_server_serves_one_request_at_a_time(s3_server: S3Server, s3_bucket: str) -> None:
    """What makes conditional writes atomic: while one request is being received, the next waits.
    (Racing creates alone rarely show a threaded server's check-then-write gap.)"""
    held = socket.create_connection(("127.0.0.1", s3_server.port), timeout=60)
    held.sendall(f"PUT /{s3_bucket}/held HTTP/1.1\r\nHost: x\r\n{AUTH_HEADER}\r\nContent-Length: 4\r\n\r\n".encode())
    other = threading.Thread(target=s3_server.put, args=(s3_bucket, "other", b"v"))
    other.start()
    other.join(2)  # can only pass wrongly on a slow machine, never fail wrongly
    assert other.is_alive(), "the server answered a request while another one's body was still coming"
    held.sendall(b"body")
    assert held.recv(12) == b"HTTP/1.0 200"
    held.close()
    other.join()
    assert s3_server.list_keys(s3_bucket) == ["held", "other"]


def test_if_match_with_a_wrong_etag_fails(s3_server: S3Server, s3_bucket: str) -> None:
    etag = s3_server.client.put_object(Bucket=s3_bucket, Key="k", Body=b"v1")["ETag"]
    with pytest.raises(ClientError) as caught:
        s3_server.client.put_object(Bucket=s3_bucket, Key="k", Body=b"v2", IfMatch='"0123456789abcdef"')
    assert error_status(caught.value) == 412
    s3_server.client.put_object(Bucket=s3_bucket, Key="k", Body=b"v3", IfMatch=etag)
    assert s3_server.get(s3_bucket, "k") == b"v3"


def test_objects_stay_in_memory(s3_server: S3Server, s3_bucket: str) -> None:
    # Above moto's default, an object's bytes spill to an unnamed file in its TMPDIR.
    s3_server.put(s3_bucket, "big", os.urandom(6 << 20))
    fds = Path(f"/proc/{s3_server.pid}/fd")
    files = {os.readlink(fd) for fd in fds.iterdir()} - {str(s3_server.log_path)}
    assert not [f for f in files if f.startswith(str(s3_server.workdir))]


def test_injected_503_is_seen_once_then_the_put_succeeds(
    s3_server: S3Server, s3_bucket: str, fault_proxy: FaultProxy
) -> None:
    client = no_retries(fault_proxy.endpoint)
    fault = fault_proxy.fail(503, method="PUT")
    with pytest.raises(ClientError) as caught:
        client.put_object(Bucket=s3_bucket, Key="k", Body=b"v")
    assert error_status(caught.value) == 503
    assert caught.value.response["Error"]["Code"] == "SlowDown"
    assert s3_server.list_keys(s3_bucket) == []
    client.put_object(Bucket=s3_bucket, Key="k", Body=b"v")
    assert s3_server.get(s3_bucket, "k") == b"v"
    assert fault.applied == 1
    assert fault_proxy.counts() == {"PUT": 2}


def test_a_connection_reset_mid_upload_leaves_no_object(
    s3_server: S3Server, s3_bucket: str, fault_proxy: FaultProxy
) -> None:
    client = no_retries(fault_proxy.endpoint)
    fault = fault_proxy.reset_mid_body(64 * 1024, method="PUT")
    with pytest.raises(ConnectionClosedError):
        client.put_object(Bucket=s3_bucket, Key="k", Body=os.urandom(1 << 20))
    assert fault.applied == 1
    assert s3_server.list_keys(s3_bucket) == []
    client.put_object(Bucket=s3_bucket, Key="k", Body=b"whole")
    assert s3_server.get(s3_bucket, "k") == b"whole"


def test_a_dropped_response_leaves_the_write_done(s3_server: S3Server, s3_bucket: str, fault_proxy: FaultProxy) -> None:
    client = no_retries(fault_proxy.endpoint)
    fault_proxy.drop_response(method="PUT", path="/k")
    with pytest.raises(ConnectionClosedError):
        client.put_object(Bucket=s3_bucket, Key="k", Body=b"written")
    assert s3_server.get(s3_bucket, "k") == b"written"


def test_faults_apply_only_to_matching_requests(s3_server: S3Server, s3_bucket: str, fault_proxy: FaultProxy) -> None:
    client = no_retries(fault_proxy.endpoint)
    fault = fault_proxy.fail(500, method="PUT", path="data/part", query="partNumber", times=2)
    client.put_object(Bucket=s3_bucket, Key="data/part", Body=b"not a part upload")
    upload = client.create_multipart_upload(Bucket=s3_bucket, Key="data/part")["UploadId"]
    part = {"Bucket": s3_bucket, "Key": "data/part", "UploadId": upload, "PartNumber": 1, "Body": b"p"}
    for _ in range(2):
        with pytest.raises(ClientError) as caught:
            client.upload_part(**part)
        assert (error_status(caught.value), caught.value.response["Error"]["Code"]) == (500, "InternalError")
    client.upload_part(**part)
    assert fault.applied == 2
    assert [u["UploadId"] for u in s3_server.pending_multipart_uploads(s3_bucket)] == [upload]
    fault_proxy.clear()
    assert fault_proxy.counts() == {}


def test_the_proxy_keeps_connections_alive(s3_server: S3Server, s3_bucket: str, fault_proxy: FaultProxy) -> None:
    s3_server.put(s3_bucket, "k", b"v")
    connection = http.client.HTTPConnection("127.0.0.1", fault_proxy.port, timeout=60)
    local_ports = set()
    for method in ("HEAD", "HEAD", "GET"):
        connection.request(method, f"/{s3_bucket}/k", headers=dict([AUTH_HEADER.split(": ", 1)]))
        response = connection.getresponse()
        assert (response.status, response.headers["Content-Length"]) == (200, "1")
        assert response.read() == (b"v" if method == "GET" else b"")
        assert not response.will_close
        local_ports.add(connection.sock.getsockname()[1])
    connection.close()
    assert len(local_ports) == 1, "the proxy closed the connection between requests"
    assert fault_proxy.counts() == {"HEAD": 2, "GET": 1}


def test_stop_closes_the_port_and_removes_the_log() -> None:
    require("moto.moto_server.werkzeug_app")
    with S3Server() as server, FaultProxy(server.endpoint) as proxy:
        process_dir = Path(f"/proc/{server.pid}")
        assert server.log_path.exists()
    assert port_is_closed(server.port) and port_is_closed(proxy.port)
    assert not process_dir.exists() and not server.workdir.exists()


def test_a_server_that_cannot_start_says_why(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    require("moto.moto_server.werkzeug_app")
    (tmp_path / "moto").mkdir()
    (tmp_path / "moto" / "__init__.py").write_text("raise ImportError('moto is broken here')\n")
    monkeypatch.setenv("PYTHONPATH", f"{tmp_path}{os.pathsep}{os.environ.get('PYTHONPATH', '')}")
    server = S3Server()
    with pytest.raises(RuntimeError, match=r"(?s)exited with 1 while starting.*moto is broken here"):
        server.start()
    assert not server.workdir.exists()
