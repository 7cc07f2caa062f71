"""RayCheckpointManager on a real local Ray cluster (started here, 2 CPUs,
one session for the module): round trips, the partitioned executor's call
pattern, a worker SIGKILLed mid-write, the reference's parquet checkpoints,
and the ``_log_event`` calls compared with the reference's."""

from __future__ import annotations

import gc
import glob
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time

import pyarrow as pa
import pytest

from tests.conftest import require

ray = require("ray")
require("ray.data")

from data_juicer_accel import _native  # noqa: E402
from data_juicer_accel.utils import ray_ckpt  # noqa: E402
from data_juicer_accel.utils.ckpt_utils import CheckpointStrategy, RayCheckpointManager  # noqa: E402
from tests.conftest import requires_reference, text_table  # noqa: E402


@pytest.fixture(scope="module", autouse=True)
def ray_cluster():
    ray.init(
        address="local",
        num_cpus=2,
        include_dashboard=False,
        object_store_memory=256 << 20,
        log_to_driver=False,
        configure_logging=False,
    )
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False
    yield
    ray.shutdown()


def numbered(rows: int = 1200, blocks: int = 6) -> ray.data.Dataset:
    table = text_table(rows).append_column("id", pa.array(range(rows), pa.int64()))
    return ray.data.from_arrow(table).repartition(blocks)


def ids(ds) -> list[int]:
    return sorted(pa.concat_tables(ray.get(ds.to_arrow_refs()))["id"].to_pylist())


def as_table(ds) -> pa.Table:
    return pa.concat_tables(ray.get(ds.to_arrow_refs())).sort_by("id")


def listing(path) -> list[str]:
    return sorted(os.listdir(path))


class RecordingLogger:
    """Test double of the caller's contract: an object with ``_log_event``."""

    def __init__(self):
        self.calls: list[dict] = []

    def _log_event(self, **kwargs):
        self.calls.append(kwargs)


class Op:
    def __init__(self, name):
        self._name = name


class Wrapped:
    """Shaped like Data-Juicer's RayDataset: the Ray dataset in ``.data``."""

    def __init__(self, data):
        self.data = data


def test_save_writes_shards_on_the_workers_and_load_reads_them_back(tmp_path):
    m = RayCheckpointManager(str(tmp_path))
    ds = numbered()
    expected = as_table(ds)
    path = m.save_checkpoint(ds, 3, "words_num_filter", 0)
    assert path == str(tmp_path / "checkpoint_op_0003_partition_0000.accel")
    assert listing(tmp_path) == ["checkpoint_op_0003_partition_0000.accel"]
    assert listing(path) == [".accel.lock", "latest"]  # no staging left
    files = listing(os.path.join(path, "latest"))
    assert _native.MANIFEST_FILE in files
    shards = [f for f in files if f.endswith(".arrow")]
    assert len(shards) == 6, "one shard per block"
    # Written by several Ray tasks: every shard name starts with its task index.
    assert len({f.split("-")[0] for f in shards}) > 1

    loaded = m.load_checkpoint(3, "words_num_filter", 0)
    assert isinstance(loaded, ray.data.Dataset)
    assert loaded.count() == 1200
    assert as_table(loaded).equals(expected)
    assert loaded.materialize().num_blocks() == 6, "the saved blocks, not Ray's default split of them"
    # The shards are ordinary zstd Arrow IPC streams.
    one = pa.ipc.open_stream(pa.OSFile(os.path.join(path, "latest", shards[0]))).read_all()
    assert one.schema.equals(expected.schema)


def test_write_tasks_compress_on_as_many_threads_as_cpus_ray_granted_them(tmp_path):
    granted = ray.get([ray.remote(num_cpus=cpus)(ray_ckpt._granted_cpus).remote() for cpus in (0.5, 1, 2)])
    assert granted == [1, 1, 2]
    m = RayCheckpointManager(str(tmp_path))
    m.write_ray_remote_args = {"num_cpus": 2}  # one task at a time on this cluster, two encoder threads each
    ds = numbered()
    expected = as_table(ds)
    m.save_checkpoint(ds, 0)
    assert as_table(m.load_checkpoint(0)).equals(expected)


def test_load_reads_on_the_workers(tmp_path):
    m = RayCheckpointManager(str(tmp_path))
    m.save_checkpoint(numbered(600, 4), 0)
    loaded = m.load_checkpoint(0)

    # Each read task runs in a Ray worker process, not in the driver.
    pids = set(loaded.map_batches(lambda b: {"pid": [os.getpid()] * len(b["id"])}).unique("pid"))
    assert pids and os.getpid() not in pids


def test_relative_checkpoint_dir(tmp_path, monkeypatch):
    """Ray workers run elsewhere than the driver's working directory."""
    monkeypatch.chdir(tmp_path)
    m = RayCheckpointManager("ckpt")
    assert m.save_checkpoint(numbered(200, 2), 0) == os.path.join("ckpt", "checkpoint_op_0000_partition_0000.accel")
    assert m.find_latest_checkpoint(0)[2] == os.path.join("ckpt", "checkpoint_op_0000_partition_0000.accel")
    assert m.load_checkpoint(0).count() == 200


def test_empty_dataset_keeps_its_schema(tmp_path):
    m = RayCheckpointManager(str(tmp_path))
    ds = ray.data.from_arrow(text_table(10).slice(0, 0))
    m.save_checkpoint(ds, 0)
    loaded = m.load_checkpoint(0)
    assert loaded.count() == 0
    assert loaded.schema().names == ["text", "meta", "__dj__stats__"]


def test_resave_of_the_same_op_replaces_the_checkpoint(tmp_path):
    m = RayCheckpointManager(str(tmp_path))
    m.save_checkpoint(numbered(100, 2), 1)
    m.save_checkpoint(numbered(300, 3), 1)
    assert listing(tmp_path) == ["checkpoint_op_0001_partition_0000.accel"]
    assert m.load_checkpoint(1).count() == 300


def test_a_lazy_load_reads_its_own_generation_after_a_resave(tmp_path):
    """Ray reads when the dataset executes: a save of the same op and
    partition in between must not take the shards from under it."""
    m = RayCheckpointManager(str(tmp_path))
    path = m.save_checkpoint(numbered(300, 3), 0)
    old = m.load_checkpoint(0)  # nothing read yet
    m.save_checkpoint(numbered(500, 2), 0)
    assert ids(old) == list(range(300))
    assert ids(m.load_checkpoint(0)) == list(range(500))
    # Each load's hard links go once its datasets are gone.
    del old
    gc.collect()
    assert listing(path) == [".accel.lock", "latest"]


def _save_generations_forever(ckpt_path: str, stop_file: str) -> subprocess.Popen:
    """Another process committing new generations of one Ray checkpoint as
    fast as it can: generation g holds ids g*1000 .. g*1000+999, in 4 shards."""
    code = f"""
import os, pyarrow as pa
from data_juicer_accel import _native
g = 1
while not os.path.exists({stop_file!r}):
    staging = _native.ShardStaging({ckpt_path!r})
    try:
        entries = []
        for part in range(4):
            ids = pa.array(range(g * 1000 + part * 250, g * 1000 + (part + 1) * 250), pa.int64())
            table = pa.table({{"id": ids}})
            entries += _native.write_shard_files(staging.dir, table, prefix=f"g{{g}}-{{part}}", level=1)
        staging.commit(entries, kind="ray", level=1)
    finally:
        staging.abort()
    g += 1
"""
    return subprocess.Popen([sys.executable, "-c", code])


def test_loads_racing_saves_by_another_process_read_one_generation_whole(tmp_path):
    m = RayCheckpointManager(str(tmp_path))
    first = pa.table({"id": pa.array(range(1000), pa.int64())})
    path = m.save_checkpoint(ray.data.from_arrow(first).repartition(4), 0)
    stop = str(tmp_path / "stop")
    saver = _save_generations_forever(os.path.abspath(path), stop)
    try:
        generations = set()
        for _ in range(12):
            loaded = m.load_checkpoint(0)
            assert loaded is not None
            time.sleep(0.05)  # let a save or two commit before the read tasks run
            got = ids(loaded)
            generation = got[0] // 1000
            assert got == list(range(generation * 1000, generation * 1000 + 1000))
            generations.add(generation)
        assert len(generations) > 1, "the saves kept committing while we loaded"
    finally:
        open(stop, "w").close()
        saver.wait(timeout=60)


def test_a_readers_symlink_out_of_the_checkpoint_is_not_followed(tmp_path):
    m = RayCheckpointManager(str(tmp_path / "ckpt"))
    path = m.save_checkpoint(numbered(100, 1), 0)
    outside = tmp_path / "outside"
    outside.mkdir()
    os.symlink(outside, os.path.join(path, ray_ckpt.READERS))
    assert m.load_checkpoint(0).count() == 100
    assert os.listdir(outside) == []


def test_pins_of_dead_loaders_are_removed_by_the_next_load(tmp_path):
    m = RayCheckpointManager(str(tmp_path))
    path = m.save_checkpoint(numbered(100, 1), 0)
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    stale = os.path.join(path, ray_ckpt.READERS, f"{socket.gethostname()}-{dead.stdout.strip()}-0123456789ab")
    os.makedirs(stale)
    loaded = m.load_checkpoint(0)
    assert not os.path.exists(stale)
    assert loaded.count() == 100


def test_partitioned_executor_call_pattern(tmp_path):
    """What ``RayExecutorPartitioned._process_with_checkpointing`` does, with
    its positional calls, then the resume of the same job by a new manager."""
    events = RecordingLogger()
    ops = [Op(n) for n in ["a_mapper", "b_filter", "c_mapper", "d_filter", "e_mapper"]]

    def process(partition_id, dataset, manager, fail_after_op=None):
        latest = manager.find_latest_checkpoint(partition_id)
        current = dataset
        for start_idx, end_idx, group_ops in manager.group_operations_for_checkpointing(ops):
            if latest and latest[0] >= end_idx:
                continue
            if latest and latest[0] >= start_idx:
                current = manager.load_checkpoint(latest[0], latest[1], partition_id, cfg=None)
                assert current is not None
                current = Wrapped(current)
                group_ops = ops[latest[0] + 1 : end_idx]
                if not group_ops:
                    continue
            for i in range(len(group_ops)):
                op_idx = end_idx - len(group_ops) + i
                if fail_after_op is not None and op_idx > fail_after_op:
                    raise KeyboardInterrupt("job stopped")
                current = Wrapped(current.data.map_batches(lambda b, k=op_idx: {**b, "id": b["id"] + 0 * k}))
            current.data = current.data.materialize()
            last_op_idx = end_idx - 1
            if manager.should_checkpoint(last_op_idx, ops[last_op_idx]._name):
                manager.save_checkpoint(current, last_op_idx, ops[last_op_idx]._name, partition_id, cfg=None)
        return current

    def manager():
        return RayCheckpointManager(
            str(tmp_path), True, CheckpointStrategy.EVERY_N_OPS, 2, None, events
        )  # positional, as the executor's call order

    partitions = {0: numbered(400, 2), 1: numbered(200, 2)}
    with pytest.raises(KeyboardInterrupt):
        process(0, Wrapped(partitions[0]), manager(), fail_after_op=2)
    assert listing(tmp_path) == ["checkpoint_op_0001_partition_0000.accel"]
    assert [e["operation_idx"] for e in events.calls] == [1]

    # Resume: op groups (0,2) (2,4) (4,5); the checkpoint after op 1 is loaded.
    done = process(0, Wrapped(partitions[0]), manager())
    assert ids(done.data) == list(range(400))
    done1 = process(1, Wrapped(partitions[1]), manager())
    assert ids(done1.data) == list(range(200))
    assert listing(tmp_path) == [
        "checkpoint_op_0001_partition_0000.accel",
        "checkpoint_op_0001_partition_0001.accel",
        "checkpoint_op_0003_partition_0000.accel",
        "checkpoint_op_0003_partition_0001.accel",
    ]
    kinds = [(e["event_type"].value, e["partition_id"], e["operation_idx"]) for e in events.calls]
    assert kinds == [
        ("checkpoint_save", 0, 1),
        ("checkpoint_load", 0, 1),
        ("checkpoint_save", 0, 3),
        ("checkpoint_save", 1, 1),
        ("checkpoint_save", 1, 3),
    ]
    assert manager().find_latest_checkpoint(1) == (
        3,
        "op_0003",
        str(tmp_path / "checkpoint_op_0003_partition_0001.accel"),
    )


def _kill_in_write(staging_glob: str, marker: str, kill_id: int):
    """A map UDF fused into the write tasks: on the block holding ``kill_id``
    it waits until other blocks' shards are in the staging directory, notes
    how many, and SIGKILLs its own worker process."""

    def udf(batch):
        if kill_id in set(batch["id"].tolist()):
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline and not glob.glob(staging_glob):
                time.sleep(0.05)
            with open(marker, "w") as f:
                f.write(str(len(glob.glob(staging_glob))))
            os.kill(os.getpid(), signal.SIGKILL)
        return batch

    return udf


def test_worker_killed_mid_write_leaves_no_checkpoint(tmp_path):
    m = RayCheckpointManager(str(tmp_path))
    m.write_ray_remote_args = {"max_retries": 0}
    m.save_checkpoint(numbered(600, 3), 0, "first", 0)

    name = m.resolve_checkpoint_filename(1, 0)
    staging_glob = str(tmp_path / name / ".latest.staging-*" / "*.arrow")
    marker = str(tmp_path.parent / f"{tmp_path.name}-killed")
    ds = numbered(1200, 6).map_batches(_kill_in_write(staging_glob, marker, kill_id=1199), max_retries=0)
    # The UDF is fused into the write tasks (MapBatches(udf)->Write): the kill lands in one.
    with pytest.raises(ray.exceptions.WorkerCrashedError):
        m.save_checkpoint(ds, 1, "second", 0)

    # The worker was killed while the checkpoint was half written ...
    assert int(open(marker).read()) >= 1
    # ... and the checkpoint is absent, never half there: no latest/, no staging.
    assert listing(tmp_path / name) == [".accel.lock"]
    assert m.find_latest_checkpoint(0) == (0, "op_0000", str(tmp_path / "checkpoint_op_0000_partition_0000.accel"))
    assert m.load_checkpoint(1, "second", 0) is None
    assert m.load_checkpoint(0).count() == 600


def test_a_damaged_shard_fails_the_read_loudly(tmp_path):
    m = RayCheckpointManager(str(tmp_path))
    path = m.save_checkpoint(numbered(300, 2), 0)
    shard = sorted(glob.glob(os.path.join(path, "latest", "*.arrow")))[0]
    data = bytearray(open(shard, "rb").read())
    data[len(data) // 2] ^= 0xFF
    open(shard, "wb").write(bytes(data))
    loaded = m.load_checkpoint(0)
    with pytest.raises(Exception, match="xxh3"):
        loaded.materialize()


def test_a_shard_symlinked_outside_the_checkpoint_is_refused(tmp_path):
    """The same bytes, size and checksum, but outside the checkpoint directory:
    a load reads only regular files inside it (the reference's read_parquet
    follows the link)."""
    m = RayCheckpointManager(str(tmp_path / "ckpt"))
    path = m.save_checkpoint(numbered(300, 2), 0)
    with open(os.path.join(path, "latest", _native.MANIFEST_FILE)) as f:
        first, second = (os.path.join(path, "latest", e["file"]) for e in json.load(f)["shards"])
    # A later shard: refused by the read task that reads it.
    os.rename(second, tmp_path / "second.arrow")
    os.symlink(tmp_path / "second.arrow", second)
    loaded = m.load_checkpoint(0)
    with pytest.raises(Exception, match=f"{os.path.basename(second)}.*symbolic link"):
        loaded.materialize()
    # The first shard, whose schema the driver reads: no checkpoint to resume from.
    os.rename(first, tmp_path / "first.arrow")
    os.symlink(tmp_path / "first.arrow", first)
    assert m.load_checkpoint(0) is None
    os.unlink(first)
    os.mkfifo(first)  # and no hang on a FIFO
    assert m.load_checkpoint(0) is None


def test_a_lying_row_count_fails_the_read(tmp_path):
    m = RayCheckpointManager(str(tmp_path))
    path = m.save_checkpoint(numbered(300, 2), 0)
    manifest_path = os.path.join(path, "latest", _native.MANIFEST_FILE)
    with open(manifest_path) as f:
        manifest = json.load(f)
    first, second = manifest["shards"][:2]
    first["rows"] -= 1
    second["rows"] += 1  # the total still agrees
    with open(manifest_path, "w") as f:
        json.dump(manifest, f)
    loaded = m.load_checkpoint(0)
    named = "|".join(re.escape(e["file"]) for e in (first, second))  # whichever read task fails first
    with pytest.raises(Exception, match=rf"({named}): shard holds \d+ rows, the manifest says"):
        loaded.materialize()


def inspect(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "data_juicer_accel", "inspect", *args], capture_output=True, text=True, timeout=120
    )


def test_inspect_describes_a_ray_checkpoint_without_an_op_record(tmp_path):
    """A Ray checkpoint is one op's output for one partition: it has no
    ckpt_op.json, and inspect must not call it damaged for that."""
    m = RayCheckpointManager(str(tmp_path))
    path = m.save_checkpoint(numbered(300, 2), 5)
    for target in (path, os.path.join(path, "latest")):
        proc = inspect(target, "--verify", "--json")
        assert proc.returncode == 0, proc.stdout + proc.stderr
        report = json.loads(proc.stdout)
        assert report["kind"] == "ray" and report["num_rows"] == 300
        assert report["problems"] == [] and report["verify"]["ok"]
        assert report["ops_recorded"] is None
    text = inspect(path).stdout
    assert "DAMAGED" not in text and "ckpt_op.json" not in text
    # Damage is still found.
    shard = sorted(glob.glob(os.path.join(path, "latest", "*.arrow")))[0]
    os.truncate(shard, 10)
    proc = inspect(path)
    assert proc.returncode == 1 and "DAMAGED" in proc.stdout and os.path.basename(shard) in proc.stdout


KILLED_IN_FALLBACK_SCRIPT = r"""
import sys
import ray
from data_juicer_accel.utils.ray_ckpt import RayCheckpointManager

ray.init(address=sys.argv[1], log_to_driver=False)
ray.data.DataContext.get_current().enable_progress_bars = False
RayCheckpointManager(sys.argv[2]).save_checkpoint(ray.data.range(50, override_num_blocks=2), 0)
"""


def test_driver_killed_between_the_fallback_renames_keeps_the_checkpoint(tmp_path, fault_hook):
    """On a filesystem without ``RENAME_EXCHANGE`` the commit moves the old
    ``latest/`` aside, then the new one in. A driver killed in between leaves
    no ``latest/``: the next look at the checkpoint puts the old one back."""
    m = RayCheckpointManager(str(tmp_path))
    path = m.save_checkpoint(numbered(300, 3), 0)
    before = as_table(m.load_checkpoint(0))

    # A second driver on the same cluster saves the same checkpoint and dies
    # (SIGABRT, no cleanup) between the two renames.
    env = dict(os.environ, **{fault_hook: "exchange:einval,between_renames:abort"})
    address = ray.get_runtime_context().gcs_address
    args = [sys.executable, "-c", KILLED_IN_FALLBACK_SCRIPT, address, str(tmp_path)]
    proc = subprocess.run(args, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == -signal.SIGABRT, proc.stderr[-3000:]
    left = listing(path)
    assert "latest" not in left and any(n.startswith(".latest.old-") for n in left), left

    again = RayCheckpointManager(str(tmp_path))
    assert again.find_latest_checkpoint(0) == (0, "op_0000", path)
    assert as_table(again.load_checkpoint(0)).equals(before)
    assert [n for n in listing(path) if n != ray_ckpt.READERS] == [".accel.lock", "latest"]  # loads may hold pins
    # And the next save goes through.
    again.save_checkpoint(numbered(40, 1), 0)
    assert again.load_checkpoint(0).count() == 40


def test_an_fsync_failing_at_the_commit_keeps_the_previous_checkpoint(tmp_path, fault_hook, monkeypatch):
    """Write tasks on the driver's machine leave the fsync of their shards
    to the commit: one failing there fails the save, naming the shard, and
    the previous checkpoint stays the latest."""
    m = RayCheckpointManager(str(tmp_path))
    path = m.save_checkpoint(numbered(300, 3), 0)
    before = as_table(m.load_checkpoint(0))

    monkeypatch.setenv(fault_hook, "shard_sync:eio")  # the driver only: the workers started before
    with pytest.raises(OSError, match=r"Input/output error.*-data-00000-of-00001\.arrow"):
        m.save_checkpoint(numbered(50, 2), 0)
    monkeypatch.delenv(fault_hook)
    assert as_table(m.load_checkpoint(0)).equals(before)
    assert [n for n in listing(path) if n != ray_ckpt.READERS] == [".accel.lock", "latest"]


@requires_reference
def test_reference_checkpoints_are_found_and_loaded(tmp_path):
    from data_juicer.utils.ckpt_utils import RayCheckpointManager as Ref

    ds = numbered(500, 2)
    ref_path = Ref(str(tmp_path)).save_checkpoint(ds, 2, "b_filter", 0)
    assert ref_path.endswith("checkpoint_op_0002_partition_0000.parquet")

    m = RayCheckpointManager(str(tmp_path))
    assert m.find_latest_checkpoint(0) == (2, "op_0002", ref_path)
    assert as_table(m.load_checkpoint(2, "op_0002", 0)).equals(as_table(ds))
    # After the switch, ours is written for later ops and wins.
    ours = m.save_checkpoint(ds, 3, "c_mapper", 0)
    assert m.find_latest_checkpoint(0) == (3, "op_0003", ours)


def reference_event_module(monkeypatch):
    """The reference's ``event_logging_mixin`` loaded from its file and put in
    ``sys.modules``, so that the reference's ``from
    data_juicer.core.executor.event_logging_mixin import EventType`` finds it
    without importing the ``data_juicer.core.executor`` package (whose lazy
    loader may pip-install packages)."""
    import importlib.util

    import data_juicer

    path = os.path.join(os.path.dirname(data_juicer.__file__), "core", "executor", "event_logging_mixin.py")
    name = "data_juicer.core.executor.event_logging_mixin"
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    monkeypatch.setitem(sys.modules, name, module)
    return module


@requires_reference
def test_log_event_calls_match_the_reference(tmp_path, monkeypatch):
    from data_juicer.utils.ckpt_utils import RayCheckpointManager as Ref

    executor_imported_before = "data_juicer.core.executor" in sys.modules  # other tests may import it
    ref_events = reference_event_module(monkeypatch)
    ds = numbered(200, 2)
    ref_log, our_log = RecordingLogger(), RecordingLogger()
    ref = Ref(str(tmp_path / "ref"), event_logger=ref_log)
    ours = RayCheckpointManager(str(tmp_path / "ours"), event_logger=our_log)
    for manager in (ref, ours):
        manager.save_checkpoint(ds, 4, "d_filter", 7)
        manager.save_checkpoint(ds, 5, None, 7)
        assert manager.load_checkpoint(4, "d_filter", 7) is not None
        assert manager.load_checkpoint(5, None, 7) is not None
        assert manager.load_checkpoint(6, None, 7) is None  # absent: no event

    def normalised(calls, root, suffix):
        out = []
        for c in calls:
            c = dict(c, metadata=dict(c["metadata"]))
            c["metadata"]["checkpoint_path"] = c["metadata"]["checkpoint_path"].replace(str(root), "<dir>")
            c["metadata"]["checkpoint_path"] = c["metadata"]["checkpoint_path"].replace(suffix, "<ext>")
            out.append(c)
        return out

    assert len(ref_log.calls) == 4
    assert normalised(our_log.calls, tmp_path / "ours", ".accel") == normalised(
        ref_log.calls, tmp_path / "ref", ".parquet"
    )
    # The reference's executor is loaded: the event type is its own enum.
    assert all(isinstance(c["event_type"], ref_events.EventType) for c in our_log.calls)
    if not executor_imported_before:
        assert "data_juicer.core.executor" not in sys.modules, "the executor package (lazy installers) was imported"


REAL_RAY_DATASET_SCRIPT = r"""
import json, sys
import ray
from jsonargparse import Namespace

ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
from data_juicer.core.data.ray_dataset import RayDataset
from data_juicer_accel.utils.ckpt_utils import RayCheckpointManager

cfg = Namespace(auto_op_parallelism=False)
manager = RayCheckpointManager(sys.argv[1])
manager.save_checkpoint(RayDataset(ray.data.range(100, override_num_blocks=2), cfg=cfg), 0, "a", 0, cfg=cfg)
loaded = manager.load_checkpoint(0, "a", 0, cfg=cfg)
print(json.dumps({
    "class": f"{type(loaded).__module__}.{type(loaded).__qualname__}",
    "ids": sorted(row["id"] for row in loaded.data.take_all()),
    "auto_op_parallelism": loaded._auto_proc,
}))
"""


@requires_reference
def test_load_with_cfg_returns_data_juicers_real_ray_dataset(tmp_path):
    """With ``cfg``, the result is Data-Juicer's own ``RayDataset(ray_dataset,
    cfg=cfg)``, as in the reference. Importing it imports ``data_juicer.core``,
    so this runs in a subprocess set up like the end-to-end runs: pip cannot
    download, and a torch stand-in keeps the lazy loaders from wanting torch."""
    from tests.test_integration_e2e import _dj_env, write_support_files

    support = write_support_files(tmp_path / "support")
    proc = subprocess.run(
        [sys.executable, "-c", REAL_RAY_DATASET_SCRIPT, str(tmp_path / "ckpt")],
        env=_dj_env(support, fail=False),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result == {
        "class": "data_juicer.core.data.ray_dataset.RayDataset",
        "ids": list(range(100)),
        "auto_op_parallelism": False,
    }
    assert "Installing" not in proc.stderr and "pip install" not in proc.stderr
