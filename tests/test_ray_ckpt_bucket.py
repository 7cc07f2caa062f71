"""RayCheckpointManager with ``ckpt_dir="s3://bucket/prefix"`` on a real local
Ray cluster (2 CPUs, one session for the module) against moto's S3 server:
the write tasks upload their own shards, the driver publishes them; loads
read and verify each object in read tasks."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import pyarrow as pa
import pytest

from tests.conftest import require

ray = require("ray")
require("ray.data")

from data_juicer_accel import _native  # noqa: E402
from data_juicer_accel.errors import CheckpointCorruptError, CheckpointLockedError  # noqa: E402
from data_juicer_accel.utils.ray_ckpt import RayCheckpointManager  # noqa: E402
from tests.conftest import text_table  # noqa: E402

NAME = "checkpoint_op_0002_partition_0000.accel"


@pytest.fixture(scope="module", autouse=True)
def ray_cluster(s3_server):
    # The workers reach the bucket as the driver does, through AWS_* variables
    # of their own (a cluster's nodes have their own credentials).
    ray.init(
        address="local",
        num_cpus=2,
        include_dashboard=False,
        object_store_memory=256 << 20,
        log_to_driver=False,
        configure_logging=False,
        runtime_env={"env_vars": s3_server.env()},
    )
    ray.data.DataContext.get_current().enable_progress_bars = False
    yield
    ray.shutdown()


@pytest.fixture
def ckpt_dir(s3_bucket, s3_env, tmp_path, monkeypatch) -> str:
    # Anything written to a local path that looks like the URI would land here.
    monkeypatch.chdir(tmp_path)
    return f"s3://{s3_bucket}/run/ckpt"


def numbered(rows: int = 1200, blocks: int = 6) -> ray.data.Dataset:
    table = text_table(rows).append_column("id", pa.array(range(rows), pa.int64()))
    return ray.data.from_arrow(table).repartition(blocks)


def ids_in_order(ds) -> list[int]:
    return pa.concat_tables(ray.get(ds.to_arrow_refs()))["id"].to_pylist()


def shard_keys(s3_server, bucket: str) -> list[str]:
    return [k for k in s3_server.list_keys(bucket, f"run/ckpt/{NAME}/generations/") if k.endswith(".arrow")]


def test_roundtrip_in_row_order_with_one_manifest_and_nothing_local(s3_server, s3_bucket, ckpt_dir, tmp_path):
    m = RayCheckpointManager(ckpt_dir)
    path = m.save_checkpoint(numbered(), 2, "words_num_filter")
    assert path == f"{ckpt_dir}/{NAME}"
    keys = s3_server.list_keys(s3_bucket)
    versions = [k for k in keys if "/versions/" in k]
    assert len(versions) == 1 and versions[0].startswith(f"run/ckpt/{NAME}/versions/")
    shards = shard_keys(s3_server, s3_bucket)
    assert len(shards) >= 6, "each write task uploaded its blocks' shards"
    assert len({os.path.basename(k).split("-b")[0] for k in shards}) > 1, "by more than one task"
    manifest = json.loads(s3_server.get(s3_bucket, versions[0]))
    assert manifest["kind"] == "ray" and manifest["num_rows"] == 1200
    assert sorted(f"run/ckpt/{NAME}/{manifest['generation']}/{e['file']}" for e in manifest["shards"]) == shards

    loaded = m.load_checkpoint(2)
    assert loaded.count() == 1200
    assert ids_in_order(loaded) == list(range(1200)), "rows come back in the saved order"
    assert m.find_latest_checkpoint(0) == (2, "op_0002", path)
    assert m.checkpoint_exists(path)
    assert os.listdir(tmp_path) == [], "nothing written to a local path"


def test_a_resave_publishes_a_new_version_and_keeps_two(s3_server, s3_bucket, ckpt_dir):
    m = RayCheckpointManager(ckpt_dir)
    for rows in (100, 200, 300):
        m.save_checkpoint(numbered(rows, 2), 2)
    assert ids_in_order(m.load_checkpoint(2)) == list(range(300))
    versions = s3_server.list_keys(s3_bucket, f"run/ckpt/{NAME}/versions/")
    assert len(versions) == 2, versions
    generations = {k.split("/generations/")[1].split("/")[0] for k in shard_keys(s3_server, s3_bucket)}
    assert len(generations) == 2, "the oldest version's objects are gone"


def test_a_lazy_load_survives_one_resave(ckpt_dir):
    m = RayCheckpointManager(ckpt_dir)
    m.save_checkpoint(numbered(300, 3), 2)
    lazy = m.load_checkpoint(2)
    m.save_checkpoint(numbered(50, 1), 2)
    assert ids_in_order(lazy) == list(range(300)), "the version it read stays through one save"
    assert ids_in_order(m.load_checkpoint(2)) == list(range(50))


def test_a_lazy_load_across_two_resaves_reads_its_own_version(ckpt_dir, s3_server):
    """A lazy load pins the version it read: saves after it keep its objects
    until it is unpinned, then the next save removes them."""
    m = RayCheckpointManager(ckpt_dir)
    m.save_checkpoint(numbered(300, 3), 2)
    lazy = m.load_checkpoint(2)
    for rows in (50, 60, 70):
        m.save_checkpoint(numbered(rows, 1), 2)
    assert ids_in_order(lazy) == list(range(300))
    bucket, prefix = ckpt_dir.removeprefix("s3://").split("/", 1)
    under = f"{prefix}/{NAME}"
    generations = {k.split("/")[-2] for k in s3_server.list_keys(bucket, f"{under}/generations/")}
    assert len(generations) == 3  # the newest two, and the pinned one
    (pin,) = [k.removeprefix(f"{under}/") for k in s3_server.list_keys(bucket, f"{under}/readers/")]
    # What the dataset's finalizer calls once Ray lets go of its datasource.
    _native.unpin_bucket_version(f"{ckpt_dir}/{NAME}", pin, os.getpid())
    m.save_checkpoint(numbered(80, 1), 2)
    assert len({k.split("/")[-2] for k in s3_server.list_keys(bucket, f"{under}/generations/")}) == 2
    assert ids_in_order(m.load_checkpoint(2)) == list(range(80))


# The job's tasks reach the bucket through its runtime_env, as a user's would.
FRESH_DRIVER = r"""
import os, sys
import ray
from data_juicer_accel.utils.ray_ckpt import RayCheckpointManager

aws = {k: v for k, v in os.environ.items() if k.startswith("AWS_")}
ray.init(address=sys.argv[1], log_to_driver=False, runtime_env={"env_vars": aws})
ray.data.DataContext.get_current().enable_progress_bars = False
m = RayCheckpointManager(sys.argv[2])
found = m.find_latest_checkpoint(0)
ds = m.load_checkpoint(found[0])
print(found[0], found[2], ds.count(), sum(row["id"] for row in ds.iter_rows()))
"""


def test_a_fresh_driver_process_finds_and_loads_the_checkpoint(ckpt_dir, tmp_path):
    m = RayCheckpointManager(ckpt_dir)
    m.save_checkpoint(numbered(400, 2), 0)
    path = m.save_checkpoint(numbered(600, 3), 2)
    # A prefix with objects but no published version is no checkpoint.
    staging = _native.BucketShardStaging(f"{ckpt_dir}/checkpoint_op_0007_partition_0000.accel")
    _native.write_bucket_shard_files(staging.uri, staging.generation, pa.table({"id": [1]}), prefix="t")
    address = ray.get_runtime_context().gcs_address
    proc = subprocess.run(
        [sys.executable, "-c", FRESH_DRIVER, address, ckpt_dir],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=tmp_path,
    )
    staging.abort()
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.split() == ["2", path, "600", str(sum(range(600)))]
    assert os.listdir(tmp_path) == []


def test_a_flipped_byte_names_the_object(s3_server, s3_bucket, ckpt_dir):
    m = RayCheckpointManager(ckpt_dir)
    m.save_checkpoint(numbered(600, 3), 2)
    key = shard_keys(s3_server, s3_bucket)[1]
    s3_server.flip_byte(s3_bucket, key, -40)
    loaded = m.load_checkpoint(2)
    with pytest.raises(Exception, match="xxh3") as raised:
        loaded.materialize()
    assert f"s3://{s3_bucket}/{key}" in str(raised.value)
    assert "CheckpointCorruptError" in str(raised.value) or isinstance(raised.value, CheckpointCorruptError)


def test_of_two_managers_racing_the_second_is_refused_and_the_first_stays(s3_server, s3_bucket, ckpt_dir):
    first, second = RayCheckpointManager(ckpt_dir), RayCheckpointManager(ckpt_dir)
    first.save_checkpoint(numbered(100, 1), 2)
    make_sink = second._datasink

    def sink_then_other_save(path: str):
        sink = make_sink(path)  # notes version 0 as the newest
        first.save_checkpoint(numbered(300, 2), 2)  # publishes version 1 meanwhile
        return sink

    second._datasink = sink_then_other_save  # type: ignore[method-assign]
    with pytest.raises(CheckpointLockedError, match="published by another writer|already exists|newer"):
        second.save_checkpoint(numbered(50, 2), 2)
    assert ids_in_order(first.load_checkpoint(2)) == list(range(300))
    versions = s3_server.list_keys(s3_bucket, f"run/ckpt/{NAME}/versions/")
    live = {json.loads(s3_server.get(s3_bucket, k))["generation"] for k in versions}
    on_server = {k.split(f"{NAME}/")[1].rsplit("/", 1)[0] for k in shard_keys(s3_server, s3_bucket)}
    assert on_server == live, "the refused save's objects are deleted"


def test_a_failed_write_task_leaves_the_previous_version(s3_server, s3_bucket, ckpt_dir):
    m = RayCheckpointManager(ckpt_dir)
    m.save_checkpoint(numbered(200, 2), 2)
    before = s3_server.list_keys(s3_bucket)

    def explode(batch):
        raise RuntimeError("a worker lost its input")

    m.write_ray_remote_args = {"max_retries": 0}
    with pytest.raises(Exception, match="a worker lost its input"):
        m.save_checkpoint(numbered(200, 2).map_batches(explode, batch_format="pyarrow"), 2)
    assert ids_in_order(m.load_checkpoint(2)) == list(range(200))
    after = [k for k in s3_server.list_keys(s3_bucket) if "/readers/" not in k]  # the load's pin
    assert after == before, "what the failed save uploaded is deleted"
    assert s3_server.pending_multipart_uploads(s3_bucket) == []


def test_storage_options_are_taken_and_stay_out_of_reprs(s3_server, s3_bucket, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    options = {
        "endpoint_url": s3_server.endpoint,
        "aws_access_key_id": "testing",
        "aws_secret_access_key": "testing-secret-value",
        "region": "us-east-1",
        "allow_http": True,
    }
    m = RayCheckpointManager(f"s3://{s3_bucket}/opts", storage_options=options)
    sink = m._datasink(f"s3://{s3_bucket}/opts/{NAME}")
    assert "testing-secret-value" not in repr(sink)
    sink._staging.abort()
    m.save_checkpoint(numbered(100, 2), 2)
    assert ids_in_order(m.load_checkpoint(2)) == list(range(100))
    with pytest.raises(ValueError, match="storage_options apply to checkpoints in a bucket"):
        RayCheckpointManager(str(tmp_path / "local"), storage_options=options)


def _killed_once(marker: str, kill_id: int):
    """A map UDF fused into the write tasks: the first attempt that meets
    ``kill_id`` SIGKILLs its own worker; the retried one passes."""

    def udf(batch):
        if kill_id in set(batch["id"].tolist()) and not os.path.exists(marker):
            with open(marker, "w") as f:
                f.write("killed")
            os.kill(os.getpid(), signal.SIGKILL)
        return batch

    return udf


def test_a_write_task_killed_once_is_retried_and_the_save_is_whole(s3_server, s3_bucket, ckpt_dir, tmp_path):
    m = RayCheckpointManager(ckpt_dir)
    marker = str(tmp_path / "killed")
    ds = numbered(1200, 6).map_batches(_killed_once(marker, kill_id=1199))
    m.write_ray_remote_args = {"max_retries": 2}
    m.save_checkpoint(ds, 2)
    assert os.path.exists(marker), "a write task was killed"
    assert ids_in_order(m.load_checkpoint(2)) == list(range(1200))
    (version,) = s3_server.list_keys(s3_bucket, f"run/ckpt/{NAME}/versions/")
    manifest = json.loads(s3_server.get(s3_bucket, version))
    listed = sorted(f"run/ckpt/{NAME}/{manifest['generation']}/{e['file']}" for e in manifest["shards"])
    assert shard_keys(s3_server, s3_bucket) == listed, "only the shards the manifest lists stay"
    assert s3_server.pending_multipart_uploads(s3_bucket) == []


def test_an_empty_dataset_keeps_its_schema(ckpt_dir):
    m = RayCheckpointManager(ckpt_dir)
    empty = pa.table({"id": pa.array([], pa.int64()), "text": pa.array([], pa.string())})
    m.save_checkpoint(ray.data.from_arrow(empty), 2)
    loaded = m.load_checkpoint(2)
    assert loaded.count() == 0
    assert loaded.schema().names == ["id", "text"]


# A head without CPUs and two worker nodes: the write tasks run on the workers.
# The task that meets id 399 notes its node and waits; the driver removes that
# node. Ray retries the task on the other node, or the save fails: either way
# the bucket holds a whole version, never part of one.
NODE_REMOVED = r"""
import os, sys, threading, time
import pyarrow as pa
import ray
from ray.cluster_utils import Cluster
from data_juicer_accel.utils.ray_ckpt import RayCheckpointManager

ckpt_dir, marker = sys.argv[1], sys.argv[2]
cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0})
workers = [cluster.add_node(num_cpus=1) for _ in range(2)]
ray.init(address=cluster.address, log_to_driver=False)
ray.data.DataContext.get_current().enable_progress_bars = False

def numbered(rows, blocks):
    table = pa.table({"id": pa.array(range(rows), pa.int64()), "text": [f"row {i}" for i in range(rows)]})
    return ray.data.from_arrow(table).repartition(blocks)

def wait_to_be_removed(batch):
    if 399 in set(batch["id"].tolist()) and not os.path.exists(marker):
        with open(marker + ".tmp", "w") as f:
            f.write(ray.get_runtime_context().get_node_id())
        os.rename(marker + ".tmp", marker)
        time.sleep(600)
    return batch

def remove_the_node():
    while not os.path.exists(marker):
        time.sleep(0.1)
    node_id = open(marker).read()
    cluster.remove_node(next(w for w in workers if w.node_id == node_id), allow_graceful=False)

m = RayCheckpointManager(ckpt_dir)
m.write_ray_remote_args = {"max_retries": 3}
m.save_checkpoint(numbered(100, 2), 2)
remover = threading.Thread(target=remove_the_node)
remover.start()
try:
    m.save_checkpoint(numbered(400, 4).map_batches(wait_to_be_removed), 2)
    outcome = "saved"
except Exception as e:
    outcome = "failed:" + type(e).__name__
remover.join()
ds = m.load_checkpoint(2)
ids = pa.concat_tables(ray.get(ds.to_arrow_refs()))["id"].to_pylist()
expected = list(range(400 if outcome == "saved" else 100))
print(f"loaded {len(ids)} rows, {len(set(ids))} distinct, first ids {ids[:3]}, last {ids[-3:]}", file=sys.stderr)
# Every row once; their order follows the blocks' arrival at the write tasks,
# which a retried task changes (Ray Data keeps order only with preserve_order).
print(outcome, sorted(ids) == expected)
ray.shutdown()
cluster.shutdown()
"""


def test_a_worker_node_removed_mid_save_leaves_a_whole_version(ckpt_dir, tmp_path):
    marker = str(tmp_path / "node")
    proc = subprocess.run(
        [sys.executable, "-c", NODE_REMOVED, ckpt_dir, marker],
        capture_output=True,
        text=True,
        timeout=900,
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    outcome, whole = proc.stdout.split()[-2:]
    assert os.path.exists(marker), "the node was removed while its task was writing"
    assert whole == "True", f"{outcome}: {proc.stderr[-1500:]}"
    print(outcome)  # which of the two clean ends this run took
    os.remove(marker)
