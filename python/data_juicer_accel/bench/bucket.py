"""Bench case ``bucket``: checkpoints in an S3-compatible bucket.

This package's ``CheckpointManager("s3://bucket/prefix")`` (zstd Arrow IPC
shards uploaded in parts, a create-only manifest PUT publishing the version)
against what the reference's ``RayCheckpointManager`` does underneath
``ray.data.Dataset.write_parquet`` / ``ray.data.read_parquet``: pyarrow's
``pq.write_table`` / ``pq.read_table`` through ``pyarrow.fs.S3FileSystem``,
with Ray Data's default parquet settings (it passes no compression, so
pyarrow's default, snappy), in one process; and, when ``pylance`` is
installed, Lance's ``write_dataset`` / ``dataset(...).to_table()``.

Every writer gets the same in-memory table and a fresh prefix of its own
under the run's prefix ``<given prefix>/dja-bench-<id>``. A save ends when
the writer returns (ours: the version published); a load when the table is
in memory. "Bucket bytes" is the sum of the sizes of the objects the save
left, listed after it. After an untimed warm-up (connections, imports), each
round runs every writer once, the first one rotating from round to round;
medians are reported. What a round wrote is deleted after it (untimed), the
run's prefix at the end or on a Ctrl-C.

The bucket is configured as the checkpoint manager's is, by the ``AWS_*``
environment variables (``AWS_ENDPOINT_URL``, ``AWS_ACCESS_KEY_ID``,
``AWS_SECRET_ACCESS_KEY``, ``AWS_REGION``, ``AWS_ALLOW_HTTP``); pyarrow and
Lance are given the same settings.

With ``--with-job`` the case also runs the ``ray_partitioned`` Data-Juicer
job of ``--only ray`` (``ray_job``), unpatched and patched, alternating, each
run's ``checkpoint_dir`` a fresh prefix under the run's (``JobBucket``). It is
an option, not the default: every run is a process starting its own local Ray
cluster (half a minute at least on 2 cores), so it adds minutes.
"""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa

from data_juicer_accel.bench.measure import median, release_memory

#: zstd level of our shards, as in the checkpoint case.
ZSTD_LEVEL = 1
#: Rows of the untimed warm-up save of every writer.
WARM_UP_ROWS = 1000
#: How long the reachability check waits for the endpoint.
PROBE_TIMEOUT_S = 10.0


class BucketError(ValueError):
    """The bucket cannot be used: one line naming it and why."""


@dataclass
class Target:
    """``s3://bucket/prefix`` and the settings that reach it."""

    bucket: str
    prefix: str
    env: Mapping[str, str] = field(default_factory=lambda: dict(os.environ))

    @property
    def uri(self) -> str:
        return f"s3://{self.bucket}/{self.prefix}".rstrip("/")

    @property
    def endpoint(self) -> str | None:
        return self.env.get("AWS_ENDPOINT_URL") or self.env.get("AWS_ENDPOINT") or None

    @property
    def region(self) -> str | None:
        return self.env.get("AWS_REGION") or self.env.get("AWS_DEFAULT_REGION") or None

    def where(self) -> str:
        """The endpoint, as the report names it."""
        return self.endpoint or f"AWS S3 ({self.region or 'default region'})"

    def filesystem(self, probe: bool = False) -> Any:
        """A ``pyarrow.fs.S3FileSystem`` with these settings; ``probe``: one
        attempt with short timeouts."""
        from pyarrow import fs

        options: dict[str, Any] = {
            "access_key": self.env.get("AWS_ACCESS_KEY_ID") or None,
            "secret_key": self.env.get("AWS_SECRET_ACCESS_KEY") or None,
            "session_token": self.env.get("AWS_SESSION_TOKEN") or None,
            "region": self.region,
            "allow_bucket_creation": True,
        }
        if self.endpoint:
            scheme, _, host = self.endpoint.partition("://")
            options.update(endpoint_override=host.rstrip("/"), scheme=scheme)
        if probe:
            options.update(
                connect_timeout=PROBE_TIMEOUT_S,
                request_timeout=PROBE_TIMEOUT_S,
                retry_strategy=fs.AwsStandardS3RetryStrategy(max_attempts=1),
            )
        return fs.S3FileSystem(**options)

    def lance_options(self) -> dict[str, str]:
        """The same settings as Lance's ``storage_options``."""
        names = {
            "aws_endpoint": self.endpoint,
            "aws_access_key_id": self.env.get("AWS_ACCESS_KEY_ID"),
            "aws_secret_access_key": self.env.get("AWS_SECRET_ACCESS_KEY"),
            "aws_session_token": self.env.get("AWS_SESSION_TOKEN"),
            "aws_region": self.region,
            "allow_http": self.env.get("AWS_ALLOW_HTTP"),
        }
        return {name: value for name, value in names.items() if value}


def parse_target(uri: str, env: Mapping[str, str] | None = None) -> Target:
    """``--bucket``'s value, checked without any request (``BucketError``)."""
    from data_juicer_accel import _native

    try:
        parsed = _native.bucket_uri(uri)
    except ValueError as e:  # names the location itself, never a credential written into it
        raise BucketError(f"--bucket: {e}") from None
    if parsed is None:
        raise BucketError(f"--bucket {uri}: not an S3 URI (expected s3://bucket/prefix)")
    bucket, _, prefix = parsed.removeprefix("s3://").partition("/")
    target = Target(bucket, prefix.strip("/"), dict(os.environ) if env is None else env)
    endpoint = target.endpoint or ""
    if endpoint.lower().startswith("http://") and target.env.get("AWS_ALLOW_HTTP", "").lower() != "true":
        raise BucketError(f"--bucket {uri}: the endpoint is plain http ({endpoint}); set AWS_ALLOW_HTTP=true to use it")
    return target


def probe(target: Target) -> None:
    """One request: the bucket exists and answers (``BucketError`` otherwise)."""
    from pyarrow import fs

    try:
        info = target.filesystem(probe=True).get_file_info(target.bucket)
    except (OSError, ValueError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise BucketError(f"--bucket {target.uri}: cannot reach it at {target.where()} ({first})") from None
    if info.type == fs.FileType.NotFound:
        raise BucketError(f"--bucket {target.uri}: no bucket {target.bucket!r} at {target.where()}")


# -- what the writers left in the bucket ---------------------------------------


def listed(filesystem: Any, path: str) -> tuple[int, int]:
    """(objects, bytes) under ``bucket/prefix`` ``path``, listed."""
    from pyarrow import fs

    infos = filesystem.get_file_info(fs.FileSelector(path, recursive=True, allow_not_found=True))
    files = [i for i in infos if i.type == fs.FileType.File]
    return len(files), sum(i.size or 0 for i in files)


def remove(filesystem: Any, path: str) -> None:
    """Deletes every object under ``path`` (each round's, the run's prefix);
    lists again until nothing is left (a writer may finish an upload meanwhile)."""
    for _ in range(3):
        try:
            filesystem.delete_dir(path)
        except FileNotFoundError:
            pass
        if listed(filesystem, path)[0] == 0:
            return
    raise OSError(f"objects are left under s3://{path}")


class RunPrefix:
    """The run's own prefix, ``<given prefix>/dja-bench-<id>``, and its removal.

    pyarrow's S3 filesystem keeps a deleted object's parent "directory" in
    existence: deleting the run's prefix puts a 0-byte ``<given prefix>/``
    marker object there (as pyarrow and Ray's ``write_parquet`` do when they
    write). So the given prefix's levels that held no object when the run
    began (``top`` the shallowest of them) are emptied of such markers at the
    end; a level that held objects is never touched, and keeps that marker."""

    def __init__(self, target: Target, filesystem: Any):
        self.filesystem = filesystem
        self.prefix = "/".join(p for p in (target.prefix, f"dja-bench-{uuid.uuid4().hex[:12]}") if p)
        self.path = f"{target.bucket}/{self.prefix}"
        self.uri = f"s3://{self.path}"
        self.top = self._first_absent_level(target)

    def _first_absent_level(self, target: Target) -> str | None:
        from pyarrow import fs

        parts = target.prefix.split("/") if target.prefix else []
        for depth in range(1, len(parts) + 1):
            path = "/".join([target.bucket, *parts[:depth]])
            if self.filesystem.get_file_info(path).type == fs.FileType.NotFound:
                return path
        return None

    def remove(self) -> None:
        remove(self.filesystem, self.path)
        if self.top is not None and listed(self.filesystem, self.top)[0] == 0:
            remove(self.filesystem, self.top)  # markers only: no object was listed


# -- the writers -------------------------------------------------------------


@dataclass
class Place:
    """Where one save goes: ``uri`` (``s3://b/p/...``) and ``path`` (``b/p/...``)."""

    uri: str
    path: str
    target: Target
    filesystem: Any


class Writer:
    key = ""
    label = ""
    note = ""

    def __init__(self, num_proc: int):
        self.num_proc = num_proc

    def available(self) -> str | None:
        """None when usable, else why not."""
        return None

    def save(self, table: pa.Table, place: Place) -> None:
        raise NotImplementedError

    def load(self, place: Place) -> pa.Table:
        raise NotImplementedError


class Accel(Writer):
    key = "accel"
    label = "data-juicer-accel"

    @property
    def note(self) -> str:  # type: ignore[override]
        return (
            f'CheckpointManager("s3://...", num_proc={self.num_proc}).save_ckpt / load_ckpt: zstd-{ZSTD_LEVEL} '
            "Arrow IPC shards uploaded in parts, xxh3 checksums, a create-only PUT of the manifest publishes"
        )

    def save(self, table, place):
        from data_juicer_accel.utils.ckpt_utils import CheckpointManager

        CheckpointManager(place.uri, [], num_proc=self.num_proc, zstd_level=ZSTD_LEVEL).save_ckpt(table)

    def load(self, place):
        from data_juicer_accel.utils.ckpt_utils import CheckpointManager

        loaded: pa.Table = CheckpointManager(place.uri, [], num_proc=self.num_proc).load_ckpt()
        return loaded


class Reference(Writer):
    """What Ray Data's write_parquet / read_parquet do for one block, in this process."""

    key = "parquet"
    label = "reference parquet"
    note = (
        "pq.write_table / pq.read_table through pyarrow.fs.S3FileSystem with Ray Data's write_parquet "
        "defaults (snappy): what Data-Juicer 1.6.1's RayCheckpointManager writes, one file, one process"
    )
    FILE = "part-0.parquet"

    def save(self, table, place):
        import pyarrow.parquet as pq

        pq.write_table(table, f"{place.path}/{self.FILE}", filesystem=place.filesystem)

    def load(self, place):
        import pyarrow.parquet as pq

        return pq.read_table(f"{place.path}/{self.FILE}", filesystem=place.filesystem)


class Lance(Writer):
    key = "lance"
    label = "Lance"
    note = "lance.write_dataset / lance.dataset(...).to_table() with its defaults"

    def available(self):
        try:
            import lance
        except ImportError:
            return "pylance is not installed (pip install pylance)"
        self.note += f" (pylance {getattr(lance, '__version__', '?')})"
        return None

    def save(self, table, place):
        import lance

        lance.write_dataset(table, place.uri, storage_options=place.target.lance_options())

    def load(self, place):
        import lance

        loaded: pa.Table = lance.dataset(place.uri, storage_options=place.target.lance_options()).to_table()
        return loaded


def writers(num_proc: int) -> list[Writer]:
    """Ours first, the reference second."""
    return [Accel(num_proc), Reference(num_proc), Lance(num_proc)]


# -- the run -------------------------------------------------------------------


#: Expected seconds per MB of a save plus its load against moto on loopback
#: (one request at a time) on a 2-core machine, from runs at 64 MB and 256 MB.
SECONDS_PER_MB = {"accel": 0.016, "parquet": 0.035, "lance": 0.05}


def expected_seconds(nbytes: int, rounds: int, keys: list[str]) -> float:
    mb = nbytes / 1e6
    return 2 + rounds * sum(SECONDS_PER_MB.get(key, 0.03) * mb + 0.2 for key in keys)


def run_bucket_bench(
    table: pa.Table,
    target: Target,
    prefix: str,
    rounds: int,
    num_proc: int,
    step: Callable[[str, float], None] = lambda label, cost: None,
) -> dict:
    """Every available writer ``rounds`` times under ``bucket/prefix``, the
    first one rotating; ``step(label, expected_seconds)`` announces each unit
    of work. The caller removes ``prefix`` (also on a Ctrl-C)."""
    filesystem = target.filesystem()
    chosen, skipped = [], []
    for writer in writers(num_proc):
        why = writer.available()
        if why is None:
            chosen.append(writer)
        else:
            skipped.append({"key": writer.key, "label": writer.label, "why": why})

    def place(name: str) -> Place:
        path = f"{target.bucket}/{prefix}/{name}"
        return Place(f"s3://{path}", path, target, filesystem)

    step("warm-up: every writer once on 1,000 rows", 1.0)
    for writer in chosen:
        _once(writer, table.slice(0, WARM_UP_ROWS), place(f"warm-{writer.key}"), {}, check=False)
    raw: dict[str, dict[str, list]] = {w.key: {"save_s": [], "load_s": [], "bytes": [], "objects": []} for w in chosen}
    mb = table.nbytes / 1e6
    for r in range(rounds):
        order = chosen[r % len(chosen) :] + chosen[: r % len(chosen)]
        for writer in order:
            step(f"round {r + 1}/{rounds}: {writer.label}", SECONDS_PER_MB.get(writer.key, 0.03) * mb + 0.2)
            _once(writer, table, place(f"r{r}-{writer.key}"), raw[writer.key], check=r == 0)
    return {
        "uri": f"s3://{target.bucket}/{prefix}",
        "endpoint": target.where(),
        "rows": table.num_rows,
        "MB": mb,
        "rounds": rounds,
        "num_proc": num_proc,
        "writers": _rows(chosen, raw, table),
        "skipped": skipped,
    }


def _once(writer: Writer, table: pa.Table, place: Place, raw: dict, check: bool) -> None:
    """One save, listing and load of ``writer``, then its objects deleted."""
    release_memory()
    start = time.perf_counter()
    writer.save(table, place)
    save_s = time.perf_counter() - start
    objects, nbytes = listed(place.filesystem, place.path)
    release_memory()
    start = time.perf_counter()
    loaded = writer.load(place)
    load_s = time.perf_counter() - start
    if loaded.num_rows != table.num_rows:
        raise AssertionError(f"{writer.label}: loaded {loaded.num_rows} rows, saved {table.num_rows}")
    if check and not loaded.equals(table):
        raise AssertionError(f"{writer.label}: the table loaded from {place.uri} differs from the saved one")
    del loaded
    remove(place.filesystem, place.path)
    if raw:
        raw["save_s"].append(save_s)
        raw["load_s"].append(load_s)
        raw["bytes"].append(nbytes)
        raw["objects"].append(objects)


def _rows(chosen: list[Writer], raw: dict, table: pa.Table) -> list[dict]:
    rows = []
    for writer in chosen:
        d = raw[writer.key]
        save_s, load_s = median(d["save_s"]), median(d["load_s"])
        rows.append(
            {
                "key": writer.key,
                "label": writer.label,
                "note": writer.note,
                "save_MBps": table.nbytes / save_s / 1e6,
                "load_MBps": table.nbytes / load_s / 1e6,
                "save_rows_per_s": table.num_rows / save_s,
                "load_rows_per_s": table.num_rows / load_s,
                "bucket_bytes": median(d["bytes"]),
                "objects": median(d["objects"]),
                "raw": d,
            }
        )
    ref = next((r for r in rows if r["key"] == Reference.key), None)
    for row in rows:
        row["save_x"] = row["save_MBps"] / ref["save_MBps"] if ref else None
        row["load_x"] = row["load_MBps"] / ref["load_MBps"] if ref else None
        row["bytes_x"] = row["bucket_bytes"] / ref["bucket_bytes"] if ref and ref["bucket_bytes"] else None
    return rows


# -- the partitioned job's checkpoints (bench --only bucket --with-job) -------


class JobBucket:
    """Where ``ray_job.run_job`` puts a run's ``checkpoint_dir``: a fresh prefix
    per run under ``<run's prefix>/job``; what a run left there, and its removal."""

    def __init__(self, target: Target, prefix: str):
        self.target = target
        self.filesystem = target.filesystem()
        self.path = f"{target.bucket}/{prefix}/job"
        self.runs = 0

    def where(self) -> str:
        return f"s3://{self.path} at {self.target.where()}"

    def next_uri(self, case: str) -> str:
        self.runs += 1
        return f"s3://{self.path}/{self.runs}-{case}"

    def measure(self, uri: str) -> tuple[int, int]:
        """Bytes of every object under ``uri``, and its ``checkpoint_op_*`` entries."""
        from pyarrow import fs

        path = uri.removeprefix("s3://")
        infos = self.filesystem.get_file_info(fs.FileSelector(path, recursive=True, allow_not_found=True))
        files = [i for i in infos if i.type == fs.FileType.File]
        tops = {i.path[len(path) + 1 :].split("/")[0] for i in files}
        return sum(i.size or 0 for i in files), sum(1 for top in tops if top.startswith("checkpoint_op_"))

    def remove(self, uri: str) -> None:
        remove(self.filesystem, uri.removeprefix("s3://"))
