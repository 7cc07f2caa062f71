"""``CheckpointManager`` with ``ckpt_dir="s3://bucket/prefix"``, against a real
S3-protocol server on loopback (moto, started by the test session): what a
save leaves in the bucket, a load from a fresh process, old versions removed,
background saves, configuration and its errors. Crashes, races and server
faults are in ``test_ckpt_bucket_crash.py``."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time

import pyarrow as pa
import pytest

from data_juicer_accel import _native
from data_juicer_accel.errors import CheckpointLockedError
from data_juicer_accel.utils.ckpt_utils import CheckpointManager

OPS = [{"clean_email_mapper": {}}, {"words_num_filter": {"min_num": 3}}, {"clean_links_mapper": {}}]


def table(n: int, rows: int = 5_000) -> pa.Table:
    return pa.table({"text": [f"row {i} of save {n} " * 3 for i in range(rows)], "n": [n] * rows})


def versions(server, bucket: str, prefix: str = "ck") -> list[str]:
    return [k for k in server.list_keys(bucket, f"{prefix}/versions/")]


def generations(server, bucket: str, prefix: str = "ck") -> set[str]:
    return {k.split("/")[2] for k in server.list_keys(bucket, f"{prefix}/generations/")}


def test_a_save_publishes_a_version_and_writes_nothing_locally(s3_server, s3_bucket, s3_env, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    uri = f"s3://{s3_bucket}/ck"
    manager = CheckpointManager(uri, OPS)
    assert not manager.ckpt_available and manager.bucket == uri
    manager.record(OPS[0])
    assert manager.save_ckpt(table(1)) == uri

    keys = s3_server.list_keys(s3_bucket)
    assert len(versions(s3_server, s3_bucket)) == 1
    (generation,) = generations(s3_server, s3_bucket)
    names = {k.rsplit("/", 1)[1] for k in keys if f"/{generation}/" in k}
    assert names == {"part-00000.arrow", "ckpt_op.json", "state.json", "dataset_info.json"}
    assert os.listdir(tmp_path) == []  # no ./s3:/ directory, nothing else


def test_a_fresh_process_resumes_from_the_bucket(s3_bucket, s3_env, tmp_path):
    uri = f"s3://{s3_bucket}/ck"
    saver = textwrap.dedent(f"""
        import pyarrow as pa
        from data_juicer_accel.utils.ckpt_utils import CheckpointManager
        m = CheckpointManager({uri!r}, {OPS!r})
        m.record({OPS[0]!r}); m.record({OPS[1]!r})
        m.save_ckpt(pa.table({{"text": ["a b c", "d e f"], "n": [1, 2]}}))
    """)
    subprocess.run([sys.executable, "-c", saver], check=True, cwd=tmp_path, timeout=300)

    manager = CheckpointManager(uri, OPS)
    assert manager.ckpt_available
    assert manager.get_left_process_list() == OPS[2:]
    assert manager.load_ckpt().to_pydict() == {"text": ["a b c", "d e f"], "n": [1, 2]}


def test_a_hf_dataset_comes_back_as_one(s3_bucket, s3_env):
    datasets = pytest.importorskip("datasets")
    uri = f"s3://{s3_bucket}/ck"
    ds = datasets.Dataset.from_dict({"text": ["x", "y", "z"], "id": [3, 1, 2]}).sort("id")
    CheckpointManager(uri, OPS).save_ckpt(ds)
    loaded = CheckpointManager(uri, OPS).load_ckpt()
    assert isinstance(loaded, datasets.Dataset)
    assert loaded.to_dict() == {"text": ["y", "z", "x"], "id": [1, 2, 3]}


def test_the_newest_two_versions_stay_and_older_ones_go_with_their_objects(s3_server, s3_bucket, s3_env):
    uri = f"s3://{s3_bucket}/ck"
    manager = CheckpointManager(uri, OPS)
    for n in range(1, 6):
        manager.save_ckpt(table(n))
        assert len(versions(s3_server, s3_bucket)) == min(n, 2)
        assert len(generations(s3_server, s3_bucket)) == min(n, 2)
    assert CheckpointManager(uri, OPS).load_ckpt().equals(table(5))


def test_a_large_shard_is_uploaded_in_parts_and_no_upload_stays_pending(s3_server, s3_bucket, s3_env):
    uri = f"s3://{s3_bucket}/ck"
    random_text = os.urandom(24 << 20).hex()  # zstd cannot shrink it below a part
    big = pa.table({"text": [random_text[i : i + 4096] for i in range(0, len(random_text), 4096)]})
    manager = CheckpointManager(uri, OPS)
    manager.save_ckpt(big)
    assert s3_server.pending_multipart_uploads(s3_bucket) == []
    assert CheckpointManager(uri, OPS).load_ckpt().equals(big)


def test_a_background_save_goes_to_the_bucket(s3_bucket, s3_env):
    uri = f"s3://{s3_bucket}/ck"
    manager = CheckpointManager(uri, OPS, background=True)
    try:
        manager.record(OPS[0])
        manager.save_ckpt(table(7))
        manager.wait()
    finally:
        manager.close()
    reloaded = CheckpointManager(uri, OPS)
    assert reloaded.ckpt_available and reloaded.load_ckpt().equals(table(7))


def test_a_load_of_an_empty_prefix_says_there_is_no_checkpoint(s3_bucket, s3_env):
    manager = CheckpointManager(f"s3://{s3_bucket}/nothing", OPS)
    assert not manager.ckpt_available
    with pytest.raises(FileNotFoundError, match=rf"s3://{s3_bucket}/nothing"):
        manager.load_ckpt()


def test_storage_options_override_the_environment(s3_server, s3_bucket, monkeypatch):
    for name in list(os.environ):
        if name.startswith("AWS_"):
            monkeypatch.delenv(name)
    options = {
        "endpoint_url": s3_server.endpoint,
        "aws_access_key_id": "testing",
        "aws_secret_access_key": "testing",
        "region": "us-east-1",
        "allow_http": True,
    }
    uri = f"s3://{s3_bucket}/ck"
    CheckpointManager(uri, OPS, storage_options=options).save_ckpt(table(2))
    assert CheckpointManager(uri, OPS, storage_options=options).load_ckpt().equals(table(2))


def test_a_plain_http_endpoint_needs_allow_http(s3_bucket, s3_env, monkeypatch):
    monkeypatch.delenv("AWS_ALLOW_HTTP")
    with pytest.raises(ValueError, match=r"plain http .*AWS_ALLOW_HTTP=true"):
        CheckpointManager(f"s3://{s3_bucket}/ck", OPS)


def test_bad_storage_options_are_named_without_their_values(s3_bucket, s3_env, tmp_path):
    with pytest.raises(ValueError, match=r"storage_options key .no_such_key. is not an S3 option"):
        CheckpointManager(f"s3://{s3_bucket}/ck", OPS, storage_options={"no_such_key": "hush-secret"})
    with pytest.raises(ValueError, match=r"storage_options apply to a checkpoint in a bucket"):
        CheckpointManager(str(tmp_path / "ck"), OPS, storage_options={"region": "x"})


def test_errors_never_show_the_secret_key(s3_bucket, s3_env, monkeypatch):
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "hush-hush-secret")
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")  # nothing listens: the request fails
    with pytest.raises(OSError) as raised:
        CheckpointManager(f"s3://{s3_bucket}/ck", OPS)
    assert "hush-hush-secret" not in str(raised.value) and f"s3://{s3_bucket}/ck" in str(raised.value)


def test_of_two_writers_from_the_same_version_the_second_is_refused(s3_server, s3_bucket, s3_env):
    uri = f"s3://{s3_bucket}/ck"
    first, second = _native.CheckpointWriter(uri), _native.CheckpointWriter(uri)
    for writer, n in ((first, 1), (second, 2)):
        writer.write_data(table(n))
    first.commit("arrow")
    with pytest.raises(CheckpointLockedError, match=r"another writer published a checkpoint in s3://"):
        second.commit("arrow")
    assert len(generations(s3_server, s3_bucket)) == 1  # the loser's objects are gone
    assert CheckpointManager(uri, OPS).load_ckpt().equals(table(1))


class StallingRelay:
    """A TCP relay to the server that, once ``stall()`` is called, swallows
    what clients send and never answers: a server that stopped mid-upload.
    Stalling also drops its connections to the server, which serves one
    request at a time and would otherwise wait for the swallowed bodies."""

    def __init__(self, upstream_port: int, stall_after: int | None = None):
        self._upstream_port = upstream_port
        #: Stall by itself once clients sent this many bytes (an upload under way).
        self._stall_after = stall_after
        self.forwarded = 0
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self._stalled = threading.Event()
        self.swallowed = 0
        self._clients: list[socket.socket] = []
        self._upstreams: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def stalled(self) -> bool:
        return self._stalled.is_set()

    def stall(self) -> None:
        self._stalled.set()
        for upstream in self._upstreams:
            _hang_up(upstream)

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            self._clients.append(client)
            upstream = None
            if not self._stalled.is_set():
                upstream = socket.create_connection(("127.0.0.1", self._upstream_port))
                self._upstreams.append(upstream)
                threading.Thread(target=self._answer, args=(upstream, client), daemon=True).start()
            threading.Thread(target=self._forward, args=(client, upstream), daemon=True).start()

    def _forward(self, client: socket.socket, upstream: socket.socket | None) -> None:
        try:
            while data := client.recv(1 << 16):
                if self._stall_after is not None and self.forwarded >= self._stall_after:
                    self.stall()
                if self._stalled.is_set() or upstream is None:
                    self.swallowed += len(data)
                else:
                    upstream.sendall(data)
                    self.forwarded += len(data)
        except OSError:
            if self._stalled.is_set():  # the server's side was dropped: swallow the rest
                self._swallow(client)

    def _swallow(self, client: socket.socket) -> None:
        try:
            while data := client.recv(1 << 16):
                self.swallowed += len(data)
        except OSError:
            pass

    def _answer(self, upstream: socket.socket, client: socket.socket) -> None:
        try:
            while data := upstream.recv(1 << 16):
                if not self._stalled.is_set():
                    client.sendall(data)
        except OSError:
            pass

    def close(self) -> None:
        for sock in [self._listener, *self._clients, *self._upstreams]:
            _hang_up(sock)


def _hang_up(sock: socket.socket) -> None:
    """Ends the connection now: ``close`` alone leaves it open while another
    thread is blocked reading it."""
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    sock.close()


@pytest.mark.parametrize("stall_after", [0, 4 << 20], ids=["before-any-request", "mid-upload"])
def test_ctrl_c_while_the_server_stalls_stops_the_save(s3_bucket, s3_env, s3_server, tmp_path, stall_after):
    """The client retries a stalled request for minutes; Ctrl-C must not wait for it."""
    uri = f"s3://{s3_bucket}/ck"
    CheckpointManager(uri, OPS).save_ckpt(table(1))
    relay = StallingRelay(s3_server.port, stall_after=stall_after)
    child = textwrap.dedent(f"""
        import os, sys, pyarrow as pa
        from data_juicer_accel.utils.ckpt_utils import CheckpointManager
        text = os.urandom(24 << 20).hex()
        big = pa.table({{"text": [text[i : i + 4096] for i in range(0, len(text), 4096)]}})
        print("ready", flush=True)
        try:
            CheckpointManager({uri!r}, {OPS!r}).save_ckpt(big)
        except KeyboardInterrupt:
            print("interrupted", flush=True)
            sys.exit(130)
    """)
    env = dict(os.environ, AWS_ENDPOINT_URL=f"http://127.0.0.1:{relay.port}")
    proc = subprocess.Popen([sys.executable, "-c", child], stdout=subprocess.PIPE, text=True, env=env, cwd=tmp_path)
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
        while not (relay.stalled and relay.swallowed > 0):  # a request is stuck
            assert proc.poll() is None, "the save ended before the server stalled"
            time.sleep(0.05)
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=60)  # the client alone would retry for 3 minutes
    finally:
        proc.kill()
        relay.close()
    assert proc.returncode == 130 and "interrupted" in out
    assert CheckpointManager(uri, OPS).load_ckpt().equals(table(1))


def test_the_keys_of_an_aws_profile_are_used_when_nothing_else_gives_one(s3_bucket, s3_env, tmp_path, monkeypatch):
    """Without a key the client would ask the EC2 metadata endpoint, which is not there."""
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_REGION", "AWS_DEFAULT_REGION"):
        monkeypatch.delenv(name, raising=False)
    aws = tmp_path / "home" / ".aws"
    aws.mkdir(parents=True)
    (aws / "credentials").write_text(
        "[default]\naws_access_key_id = nope\n[dev]\naws_access_key_id = testing\naws_secret_access_key = testing\n"
    )
    (aws / "config").write_text("[profile dev]\nregion = us-east-1\n")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("AWS_PROFILE", "dev")
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    uri = f"s3://{s3_bucket}/ck"
    CheckpointManager(uri, OPS).save_ckpt(table(3))
    assert CheckpointManager(uri, OPS).load_ckpt().equals(table(3))
