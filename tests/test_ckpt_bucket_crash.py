"""The bucket commit (``ckpt_dir="s3://bucket/prefix"``) under crashes, races
and faults, against a real S3-protocol server (moto, on loopback) and real
processes: a save killed at any moment leaves the previous checkpoint or the
new one, whole; of two savers racing for a version exactly one wins; a failed
request ends the save with an error naming the key and removes what the save
uploaded, except what a version that may be published references; damage is
reported as ``CheckpointCorruptError`` naming the object, never as rows.

Every checkpoint here is a deterministic function of its ``n``: the op record
is the first ``n`` ops of ``PROCESS`` and the rows are ``rows_of(n)``, so any
load can be checked whole."""

from __future__ import annotations

import json
import os
import queue
import random
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

import pyarrow as pa
import pytest

if TYPE_CHECKING:
    from tests.support.fault_proxy import Fault, FaultProxy
    from tests.support.s3_server import S3Server

REPO = Path(__file__).resolve().parent.parent
PREFIX = "ckpt"
#: The ops of the pipeline whose checkpoints these tests save: checkpoint ``n`` has done the first ``n``.
PROCESS = [{"op": {"n": i}} for i in range(1, 5001)]
SCHEMA = pa.schema([("n", pa.int64()), ("i", pa.int64()), ("payload", pa.binary())])
#: A shard of a large checkpoint: incompressible, above the 16 MiB part size, so a multipart upload.
LARGE_ROWS, LARGE_ROW_BYTES = 18, 1 << 20
#: Ample for anything here to end on a busy machine; only guards against hangs.
HANG_GUARD_S = 300.0


def rows_of(n: int) -> pa.Table:
    """The rows of checkpoint ``n``: every fourth one large (multipart), every
    fourth empty, the others a few thousand rows of varied size."""
    rng = random.Random(n)
    if n % 4 == 0:
        payloads = [rng.randbytes(LARGE_ROW_BYTES) for _ in range(LARGE_ROWS)]
    elif n % 4 == 1:
        payloads = []
    else:
        payloads = [rng.randbytes(rng.randint(0, 64)).hex().encode() for _ in range(rng.randint(1, 4000))]
    rows = len(payloads)
    return pa.table({"n": [n] * rows, "i": list(range(rows)), "payload": payloads}, schema=SCHEMA)


def is_large(n: int) -> bool:
    return n % 4 == 0


def uri_of(bucket: str) -> str:
    return f"s3://{bucket}/{PREFIX}"


def manager_at(uri: str, n: int) -> Any:
    """A new manager of a run that has done the first ``n`` ops (it reads the
    checkpoint there: make it before programming faults)."""
    from data_juicer_accel.utils.ckpt_utils import CheckpointManager

    manager = CheckpointManager(uri, PROCESS)
    manager.op_record = PROCESS[:n]
    return manager


def save(uri: str, n: int) -> str:
    """Saves checkpoint ``n`` with a new manager."""
    return str(manager_at(uri, n).save_ckpt(rows_of(n)))


def loaded_n(uri: str) -> int | None:
    """What a fresh manager finds: None when no checkpoint was published, else
    the ``n`` of the checkpoint it loads, after checking that its rows are
    exactly ``rows_of(n)``."""
    from data_juicer_accel import _native
    from data_juicer_accel.utils.ckpt_utils import CheckpointManager

    manager = CheckpointManager(uri, PROCESS)
    if not manager.ckpt_available:
        # Not a damaged record taken for no checkpoint: nothing loads either.
        assert _native.read_committed(uri) is None
        return None
    n = len(manager.op_record)
    assert manager.op_record == PROCESS[:n]
    assert manager.get_left_process_list() == PROCESS[n:]
    table = manager.load_checkpoint()
    assert isinstance(table, pa.Table)
    assert_rows_of(table, n)
    return n


def assert_rows_of(table: pa.Table, n: int) -> None:
    expected = rows_of(n)
    assert table.schema.remove_metadata() == SCHEMA, f"checkpoint {n}: schema {table.schema}"
    assert table.num_rows == expected.num_rows, f"checkpoint {n}: {table.num_rows} rows"
    assert table.equals(expected), f"checkpoint {n}: rows differ from rows_of({n})"


# --- inspecting the bucket (boto3, straight to the server) ---


def version_keys(server: S3Server, bucket: str) -> list[str]:
    return server.list_keys(bucket, f"{PREFIX}/versions/")


def generation_of(server: S3Server, bucket: str, key: str) -> str | None:
    """The generation (``generations/<id>``) the manifest ``key`` names; None if it is gone or junk."""
    try:
        generation = json.loads(server.get(bucket, key)).get("generation")
    except Exception:  # deleted meanwhile, or not a manifest: names nothing
        return None
    return generation if isinstance(generation, str) else None


def generations(server: S3Server, bucket: str) -> set[str]:
    """Every generation with objects: ``generations/<id>``."""
    keys = server.list_keys(bucket, f"{PREFIX}/generations/")
    return {"/".join(key.split("/")[1:3]) for key in keys}


def published_generations(server: S3Server, bucket: str) -> set[str]:
    named = (generation_of(server, bucket, key) for key in version_keys(server, bucket))
    return {generation for generation in named if generation is not None}


def generation_keys(server: S3Server, bucket: str, generation: str) -> list[str]:
    return server.list_keys(bucket, f"{PREFIX}/{generation}/")


def shard_keys(server: S3Server, bucket: str) -> list[str]:
    """The shards of the newest version."""
    newest = version_keys(server, bucket)[0]
    generation = generation_of(server, bucket, newest)
    assert generation is not None
    return [key for key in generation_keys(server, bucket, generation) if key.endswith(".arrow")]


def assert_only_published_objects(server: S3Server, bucket: str) -> None:
    """No object of an unpublished save is left, and no multipart upload pending."""
    assert generations(server, bucket) == published_generations(server, bucket)
    assert server.pending_multipart_uploads(bucket) == []


# --- fixtures ---


@pytest.fixture
def uri(s3_bucket: str, s3_env: dict[str, str]) -> str:
    """The checkpoint prefix in a new bucket, the client pointed at the server."""
    return uri_of(s3_bucket)


@pytest.fixture
def proxied_uri(
    s3_bucket: str, s3_env: dict[str, str], fault_proxy: FaultProxy, monkeypatch: pytest.MonkeyPatch
) -> str:
    """The checkpoint prefix in a new bucket, the client pointed at the fault proxy."""
    for name, value in fault_proxy.env().items():
        monkeypatch.setenv(name, value)
    return uri_of(s3_bucket)


# --- faults through the proxy ---

#: Faults repeated this often outlast the client's own retries (10, then it gives up).
PERSISTENT = 1000
MANIFEST_PUT: dict[str, Any] = {"method": "PUT", "path": f"/{PREFIX}/versions/"}


@pytest.mark.parametrize("status", [503, 500])
def test_manifest_put_failing_for_good_fails_the_save_and_keeps_the_previous(
    proxied_uri: str, fault_proxy: FaultProxy, s3_server: S3Server, s3_bucket: str, status: int
) -> None:
    save(proxied_uri, 2)
    before = generations(s3_server, s3_bucket)
    manager = manager_at(proxied_uri, 3)
    fault = fault_proxy.fail(status, times=PERSISTENT, **MANIFEST_PUT)
    with pytest.raises(OSError) as failed:
        manager.save_ckpt(rows_of(3))
    assert fault.applied > 1, "the client did not retry"
    assert f"s3://{s3_bucket}/{PREFIX}/versions/" in str(failed.value)
    fault_proxy.clear()
    assert loaded_n(proxied_uri) == 2
    assert generations(s3_server, s3_bucket) == before, "the failed save's objects were left"
    assert_only_published_objects(s3_server, s3_bucket)


def test_manifest_put_failing_once_is_retried(proxied_uri: str, fault_proxy: FaultProxy) -> None:
    save(proxied_uri, 2)
    fault = fault_proxy.fail(503, times=1, **MANIFEST_PUT)
    save(proxied_uri, 3)
    assert fault.applied == 1
    assert loaded_n(proxied_uri) == 3


def test_part_upload_cut_off_for_good_aborts_the_upload(
    proxied_uri: str, fault_proxy: FaultProxy, s3_server: S3Server, s3_bucket: str
) -> None:
    save(proxied_uri, 2)
    fault = fault_proxy.reset_mid_body(1 << 20, times=PERSISTENT, method="PUT", query="partNumber")
    with pytest.raises(OSError) as failed:
        save(proxied_uri, 4)
    assert fault.applied >= 1
    assert f"s3://{s3_bucket}/{PREFIX}/generations/" in str(failed.value)
    fault_proxy.clear()
    assert loaded_n(proxied_uri) == 2
    assert_only_published_objects(s3_server, s3_bucket)


def test_part_upload_cut_off_once_ends_whole_either_way(
    proxied_uri: str, fault_proxy: FaultProxy, s3_server: S3Server, s3_bucket: str
) -> None:
    save(proxied_uri, 2)
    fault = fault_proxy.reset_mid_body(1 << 20, times=1, method="PUT", query="partNumber")
    try:
        save(proxied_uri, 4)
        expected = 4
    except OSError:
        expected = 2
    assert fault.applied == 1
    fault_proxy.clear()
    assert loaded_n(proxied_uri) == expected
    assert_only_published_objects(s3_server, s3_bucket)


def test_upload_completion_failing_for_good_aborts_the_upload(
    proxied_uri: str, fault_proxy: FaultProxy, s3_server: S3Server, s3_bucket: str
) -> None:
    save(proxied_uri, 2)
    fault_proxy.fail(503, times=PERSISTENT, method="POST", query="uploadId")
    with pytest.raises(OSError):
        save(proxied_uri, 4)
    fault_proxy.clear()
    assert loaded_n(proxied_uri) == 2
    assert_only_published_objects(s3_server, s3_bucket)


def test_upload_completion_answer_lost_ends_whole_either_way(
    proxied_uri: str, fault_proxy: FaultProxy, s3_server: S3Server, s3_bucket: str
) -> None:
    save(proxied_uri, 2)
    fault = fault_proxy.drop_response(times=1, method="POST", query="uploadId")
    try:
        save(proxied_uri, 4)
        expected = 4
    except OSError:
        expected = 2
    assert fault.applied == 1
    fault_proxy.clear()
    assert loaded_n(proxied_uri) == expected
    assert_only_published_objects(s3_server, s3_bucket)


def lose_the_answer(proxy: FaultProxy, how: str, **match: Any) -> Fault:
    """The server does the next matching request; the client sees its
    connection reset (``drop``) or a 500 it then retries (``500``)."""
    if how == "drop":
        return proxy.drop_response(times=1, **match)
    return proxy.fail_after_forward(500, times=1, **match)


@pytest.mark.parametrize("how", ["drop", "500"])
def test_manifest_put_answer_lost_still_commits(
    proxied_uri: str, fault_proxy: FaultProxy, s3_server: S3Server, s3_bucket: str, how: str
) -> None:
    """The server created the version, the client saw a failure (and may have
    retried, to find the key taken): the save reads the key back, finds its
    own manifest, and has committed."""
    save(proxied_uri, 2)
    manager = manager_at(proxied_uri, 3)
    fault = lose_the_answer(fault_proxy, how, **MANIFEST_PUT)
    manager.save_ckpt(rows_of(3))
    assert fault.applied == 1
    fault_proxy.clear()
    assert loaded_n(proxied_uri) == 3
    assert_only_published_objects(s3_server, s3_bucket)


@pytest.mark.parametrize("how", ["drop", "500"])
def test_manifest_put_answer_lost_and_unreadable_keeps_what_may_be_published(
    proxied_uri: str, fault_proxy: FaultProxy, s3_server: S3Server, s3_bucket: str, how: str
) -> None:
    """The version was created but the save cannot tell (reading it back
    fails too): the save fails, but deletes nothing the version references."""
    save(proxied_uri, 2)
    manager = manager_at(proxied_uri, 3)
    lose_the_answer(fault_proxy, how, **MANIFEST_PUT)
    fault_proxy.fail(503, times=PERSISTENT, method="GET", path=f"/{PREFIX}/versions/")
    with pytest.raises(OSError) as failed:
        manager.save_ckpt(rows_of(3))
    assert f"s3://{s3_bucket}/{PREFIX}/versions/" in str(failed.value)
    fault_proxy.clear()
    assert loaded_n(proxied_uri) == 3
    assert generations(s3_server, s3_bucket) == published_generations(s3_server, s3_bucket)


def test_a_small_file_failing_for_good_removes_the_uploaded_shards(
    proxied_uri: str, fault_proxy: FaultProxy, s3_server: S3Server, s3_bucket: str
) -> None:
    """The save fails after its shard is uploaded: removing it goes through
    the network, and other Python threads (here the proxy) keep running."""
    save(proxied_uri, 2)
    manager = manager_at(proxied_uri, 3)
    fault_proxy.fail(503, times=PERSISTENT, method="PUT", path="/dataset_info.json")
    with pytest.raises(OSError) as failed:
        manager.save_ckpt(rows_of(3))
    assert "/dataset_info.json" in str(failed.value)
    fault_proxy.clear()
    assert loaded_n(proxied_uri) == 2
    assert_only_published_objects(s3_server, s3_bucket)


# --- damage ---


def damaged_message(uri: str) -> str:
    from data_juicer_accel.errors import CheckpointCorruptError
    from data_juicer_accel.utils.ckpt_utils import CheckpointManager

    with pytest.raises(CheckpointCorruptError) as damaged:
        CheckpointManager(uri, PROCESS).load_checkpoint()
    return str(damaged.value)


@pytest.mark.parametrize("n", [2, 4])
def test_a_flipped_byte_in_a_shard_is_named(uri: str, s3_server: S3Server, s3_bucket: str, n: int) -> None:
    save(uri, 1)
    save(uri, n)
    for shard in shard_keys(s3_server, s3_bucket):
        s3_server.flip_byte(s3_bucket, shard, len(s3_server.get(s3_bucket, shard)) // 2)
    message = damaged_message(uri)
    assert f"s3://{s3_bucket}/{shard_keys(s3_server, s3_bucket)[0]}" in message


def test_a_missing_shard_is_named(uri: str, s3_server: S3Server, s3_bucket: str) -> None:
    save(uri, 1)
    save(uri, 2)
    (shard,) = shard_keys(s3_server, s3_bucket)
    s3_server.delete(s3_bucket, shard)
    message = damaged_message(uri)
    assert f"s3://{s3_bucket}/{shard}" in message and "missing" in message


@pytest.mark.parametrize("junk", [b"", b"{not json", b'{"format": "x"}', json.dumps({"generation": "../x"}).encode()])
def test_a_junk_manifest_is_named(uri: str, s3_server: S3Server, s3_bucket: str, junk: bytes) -> None:
    save(uri, 1)
    save(uri, 2)
    newest = version_keys(s3_server, s3_bucket)[0]
    s3_server.put(s3_bucket, newest, junk)
    assert f"s3://{s3_bucket}/{newest}" in damaged_message(uri)


def test_a_flipped_byte_in_the_op_record_is_named(uri: str, s3_server: S3Server, s3_bucket: str) -> None:
    save(uri, 2)
    newest = version_keys(s3_server, s3_bucket)[0]
    generation = generation_of(s3_server, s3_bucket, newest)
    assert generation is not None
    record = f"{PREFIX}/{generation}/ckpt_op.json"
    s3_server.flip_byte(s3_bucket, record, 2)
    assert f"s3://{s3_bucket}/{record}" in damaged_message(uri)


# --- child processes: savers to kill, savers racing ---

#: Imports what the children share with this module (rows_of, PROCESS).
_CHILD_PRELUDE = """
import json, os, sys
sys.path.insert(0, sys.argv[1])
from loguru import logger
logger.remove()  # a manager logs each op it skips: noise here
from tests.test_ckpt_bucket_crash import PREFIX, PROCESS, rows_of, manager_at
from data_juicer_accel import _native
from data_juicer_accel.errors import CheckpointLockedError
uri, bucket = sys.argv[2], sys.argv[3]
def say(*words):
    print(*words, flush=True)
"""

#: Saves checkpoints n0 + 1, n0 + 2, ... as a run resumed from checkpoint n0
#: would; after each save, says how many versions the bucket lists.
_SAVER = (
    _CHILD_PRELUDE
    + """
from tests.support.s3_server import s3_client
from data_juicer_accel.utils.ckpt_utils import CheckpointManager
client = s3_client(os.environ["AWS_ENDPOINT_URL"])
manager = CheckpointManager(uri, PROCESS)
n = len(manager.op_record) if manager.ckpt_available else 0
say("ready", n)
while True:
    n += 1
    manager.record(PROCESS[n - 1])
    say("saving", n)
    manager.save_ckpt(rows_of(n))
    listed = client.list_objects_v2(Bucket=bucket, Prefix=f"{PREFIX}/versions/")
    say("saved", n, listed["KeyCount"])
"""
)

#: Lock-step: `begin n` writes checkpoint n (not committed), `commit` commits it.
_STEPPER = (
    _CHILD_PRELUDE
    + """
say("ready")
for line in sys.stdin:
    command, *args = line.split()
    if command == "begin":
        n = int(args[0])
        writer = _native.CheckpointWriter(uri)
        writer.write_data(rows_of(n))
        writer.add_file("ckpt_op.json", json.dumps(PROCESS[:n]).encode())
        say("written", n)
    elif command == "commit":
        try:
            writer.commit("arrow")
            say("committed", n)
        except CheckpointLockedError as e:
            say("raced", n, json.dumps(str(e)))
        finally:
            writer.abort()
"""
)

#: Free-running: on `go`, saves each n given, one after another, with a manager.
_RACER = (
    _CHILD_PRELUDE
    + """
say("ready")
sys.stdin.readline()
for n in map(int, sys.argv[4].split(",")):
    try:
        manager_at(uri, n).save_ckpt(rows_of(n))
        say("committed", n)
    except CheckpointLockedError as e:
        say("raced", n, json.dumps(str(e)))
say("done")
"""
)


class Child:
    """A Python child running ``script``; its stdout lines are read by a thread."""

    def __init__(self, script: str, uri: str, bucket: str, tmp_path: Path, *extra: str) -> None:
        self.stderr_path = tmp_path / f"child-{id(self)}.stderr"
        with open(self.stderr_path, "wb") as stderr:
            self.process = subprocess.Popen(
                [sys.executable, "-c", script, str(REPO), uri, bucket, *extra],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=stderr,
                text=True,
            )
        self.lines: queue.Queue[str | None] = queue.Queue()
        self.seen: list[str] = []
        self._reader = threading.Thread(target=self._read, args=(self.process.stdout,), daemon=True)
        self._reader.start()

    def _read(self, stdout: IO[str]) -> None:
        for line in stdout:
            self.lines.put(line.rstrip("\n"))
        self.lines.put(None)

    def next_line(self) -> str:
        """The next line it says; fails if it exits first."""
        try:
            line = self.lines.get(timeout=HANG_GUARD_S)
        except queue.Empty:
            raise AssertionError(f"child said nothing for {HANG_GUARD_S:.0f} s; stderr:\n{self.stderr()}") from None
        if line is None:
            self.process.wait(HANG_GUARD_S)
            raise AssertionError(f"child exited with {self.process.returncode}; stderr:\n{self.stderr()}")
        self.seen.append(line)
        return line

    def send(self, line: str) -> None:
        assert self.process.stdin is not None
        self.process.stdin.write(line + "\n")
        self.process.stdin.flush()

    def kill(self) -> list[str]:
        """SIGKILL it; every line it said."""
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(HANG_GUARD_S)
        self._reader.join(HANG_GUARD_S)
        while (line := self.lines.get_nowait()) is not None:
            self.seen.append(line)
        return self.seen

    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace")[-4000:]

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait(HANG_GUARD_S)
        if self.process.stdin is not None:
            self.process.stdin.close()
        self.stderr_path.unlink(missing_ok=True)


@pytest.fixture
def children() -> Iterator[list[Child]]:
    started: list[Child] = []
    yield started
    for child in started:
        child.close()


# --- 50 SIGKILLs ---

KILLS = 50
#: The kill lands uniformly within this long after the saver is ready: a few saves.
KILL_WITHIN_S = 3.0


def sweep_orphans(server: S3Server, bucket: str) -> tuple[int, int]:
    """Counts, then removes, what killed saves left: generations no version
    names, and pending multipart uploads (a bucket's day-old sweep and
    lifecycle rule would). Only with no saver running."""
    orphans = generations(server, bucket) - published_generations(server, bucket)
    for generation in orphans:
        for key in generation_keys(server, bucket, generation):
            server.delete(bucket, key)
    pending = server.pending_multipart_uploads(bucket)
    for upload in pending:
        server.client.abort_multipart_upload(Bucket=bucket, Key=upload["Key"], UploadId=upload["UploadId"])
    return len(orphans), len(pending)


def test_saves_killed_at_random_moments_leave_a_whole_checkpoint(
    uri: str, s3_server: S3Server, s3_bucket: str, tmp_path: Path, children: list[Child]
) -> None:
    seed = int(os.environ.get("DJA_KILL_SEED", random.randrange(1 << 32)))
    rng = random.Random(seed)
    last: int | None = None  # the checkpoint loaded after the previous kill
    orphans = pending = killed_before_publish = killed_after_publish = max_versions = 0
    for kill in range(1, KILLS + 1):
        where = f"kill {kill} of {KILLS} (DJA_KILL_SEED={seed})"
        child = Child(_SAVER, uri, s3_bucket, tmp_path)
        children.append(child)
        assert child.next_line() == f"ready {last or 0}", f"{where}: the run did not resume from checkpoint {last}"
        threading.Event().wait(rng.uniform(0, KILL_WITHIN_S))  # the random moment, not a synchronisation
        lines = [line.split() for line in child.kill()]
        assert child.process.returncode == -signal.SIGKILL, f"{where}: saver failed:\n{child.stderr()}"
        child.close()
        attempted = [int(words[1]) for words in lines if words[0] == "saving"]
        saved = [int(words[1]) for words in lines if words[0] == "saved"]
        versions_after_save = [int(words[2]) for words in lines if words[0] == "saved"]
        assert all(count <= 2 for count in versions_after_save), f"{where}: versions listed {versions_after_save}"

        now = loaded_n(uri)
        assert now is not None or (last is None and not saved), f"{where}: no checkpoint after saves {saved}"
        if now is not None:
            assert now >= max(saved, default=last or 0), f"{where}: loaded {now} after {saved} returned"
            assert now <= max(attempted, default=last or 0), f"{where}: loaded {now}, never saved"
            assert last is None or now >= last, f"{where}: went back from {last} to {now}"
        # Where the kill fell in the save it cut short: before its version was published, or after.
        unfinished = attempted[-1] if attempted and attempted[-1] not in saved else None
        killed_before_publish += unfinished is not None and now != unfinished
        killed_after_publish += unfinished is not None and now == unfinished
        last = now
        max_versions = max(max_versions, len(version_keys(s3_server, s3_bucket)))
        left = sweep_orphans(s3_server, s3_bucket)
        orphans, pending = orphans + left[0], pending + left[1]

    # How far the saves got depends on the machine's speed: reported, not asserted.
    final = (last or 0) + 1
    save(uri, final)  # a save after the crashes leaves the two newest versions and nothing else
    assert len(version_keys(s3_server, s3_bucket)) == (1 if last is None else 2)
    assert loaded_n(uri) == final
    assert_only_published_objects(s3_server, s3_bucket)
    print(
        f"\n{KILLS} SIGKILLs (DJA_KILL_SEED={seed}): reached checkpoint {last}; a save was cut short "
        f"before its version was published {killed_before_publish} times, after it {killed_after_publish} "
        f"times; kills left {orphans} unpublished generation(s) and {pending} pending multipart upload(s); "
        f"at most {max_versions} versions listed after a kill"
    )


# --- two writers racing ---


def test_of_two_writers_from_one_version_the_first_commit_wins(uri: str, s3_server: S3Server, s3_bucket: str) -> None:
    from data_juicer_accel import _native
    from data_juicer_accel.errors import CheckpointLockedError

    save(uri, 1)
    writers = []
    for n in (2, 3):
        writer = _native.CheckpointWriter(uri)
        writer.write_data(rows_of(n))
        writer.add_file("ckpt_op.json", json.dumps(PROCESS[:n]).encode())
        writers.append(writer)
    staged = generations(s3_server, s3_bucket) - published_generations(s3_server, s3_bucket)
    assert len(staged) == 2
    writers[1].commit("arrow")
    with pytest.raises(CheckpointLockedError) as lost:
        writers[0].commit("arrow")
    writers[0].abort()
    assert f"s3://{s3_bucket}/{PREFIX}" in str(lost.value)
    assert loaded_n(uri) == 3
    assert len(generations(s3_server, s3_bucket) & staged) == 1, "the losing save's objects were left"
    assert_only_published_objects(s3_server, s3_bucket)


ROUNDS = 20


def test_two_processes_committing_the_same_version_exactly_one_wins(
    uri: str, s3_server: S3Server, s3_bucket: str, tmp_path: Path, children: list[Child]
) -> None:
    """Each round both write a save from the same newest version, then both
    commit at once: one publishes, the other gets CheckpointLockedError."""
    steppers = [Child(_STEPPER, uri, s3_bucket, tmp_path) for _ in range(2)]
    children.extend(steppers)
    for stepper in steppers:
        assert stepper.next_line() == "ready"
    wins = [0, 0]
    for round_ in range(ROUNDS):
        ns = (2 * round_ + 1, 2 * round_ + 2)  # odd ones small or empty, even ones medium or large
        for stepper, n in zip(steppers, ns, strict=True):
            stepper.send(f"begin {n}")
        for stepper, n in zip(steppers, ns, strict=True):
            assert stepper.next_line() == f"written {n}"
        for stepper in steppers:
            stepper.send("commit")
        outcomes = [stepper.next_line().split()[0] for stepper in steppers]
        assert sorted(outcomes) == ["committed", "raced"], f"round {round_}: {outcomes}"
        winner = outcomes.index("committed")
        wins[winner] += 1
        assert loaded_n(uri) == ns[winner], f"round {round_}"
        assert_only_published_objects(s3_server, s3_bucket)
    print(f"\n{ROUNDS} lock-step rounds: wins {wins}")


def test_two_processes_saving_freely_never_publish_a_mix(
    uri: str, s3_server: S3Server, s3_bucket: str, tmp_path: Path, children: list[Child]
) -> None:
    """Two runs save 20 checkpoints each into one prefix, unsynchronised:
    each save commits or raises CheckpointLockedError, and the checkpoint
    left is whole: the last committed save of one of them."""
    plans = [list(range(1, 2 * ROUNDS, 2)), list(range(2, 2 * ROUNDS + 1, 2))]
    racers = [Child(_RACER, uri, s3_bucket, tmp_path, ",".join(map(str, plan))) for plan in plans]
    children.extend(racers)
    for racer in racers:
        assert racer.next_line() == "ready"
    for racer in racers:
        racer.send("go")
    committed: list[list[int]] = [[], []]
    for racer, plan, done in zip(racers, plans, committed, strict=True):
        for n in plan:
            outcome, said_n, *_ = racer.next_line().split()
            assert int(said_n) == n and outcome in ("committed", "raced"), racer.seen
            if outcome == "committed":
                done.append(n)
        assert racer.next_line() == "done"
    final = loaded_n(uri)
    assert final in {done[-1] for done in committed if done}, f"final {final}, committed {committed}"
    newest_version = (1 << 64) - 1 - int(version_keys(s3_server, s3_bucket)[0].rsplit("/", 1)[1].split(".")[0])
    # Each committed save published a version of its own (numbered from 0).
    assert len(committed[0]) + len(committed[1]) <= newest_version + 1, committed
    assert_only_published_objects(s3_server, s3_bucket)
    print(f"\nfree race of {2 * ROUNDS} saves: committed {list(map(len, committed))}, newest version {newest_version}")
