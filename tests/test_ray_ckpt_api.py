"""RayCheckpointManager without a Ray cluster: the reference's decisions
(strategies, groups, names) compared one by one, and which directories
``find_latest_checkpoint`` takes for a checkpoint. Runs without ray installed."""

from __future__ import annotations

import inspect
import itertools
import os

import pyarrow as pa
import pytest

from data_juicer_accel import _native
from data_juicer_accel.utils import ray_ckpt
from data_juicer_accel.utils.ckpt_utils import CheckpointStrategy, RayCheckpointManager
from tests.conftest import requires_reference, text_table


class Op:
    def __init__(self, name: str):
        self._name = name

    def __repr__(self) -> str:
        return self._name


class Unnamed:
    """An op without ``_name``: both fall back to ``op_{i}``."""


NAMES = ["clean_links_mapper", "words_num_filter", "language_id_score_filter", "document_deduplicator"]

CONFIGS = [
    dict(checkpoint_strategy=CheckpointStrategy.EVERY_OP),
    dict(checkpoint_strategy=CheckpointStrategy.EVERY_OP, checkpoint_enabled=False),
    dict(checkpoint_strategy=CheckpointStrategy.EVERY_N_OPS, checkpoint_n_ops=1),
    dict(checkpoint_strategy=CheckpointStrategy.EVERY_N_OPS, checkpoint_n_ops=2),
    dict(checkpoint_strategy=CheckpointStrategy.EVERY_N_OPS, checkpoint_n_ops=3),
    dict(checkpoint_strategy=CheckpointStrategy.EVERY_N_OPS, checkpoint_n_ops=10),
    dict(checkpoint_strategy=CheckpointStrategy.MANUAL, checkpoint_op_names=["words_num_filter"]),
    dict(checkpoint_strategy=CheckpointStrategy.MANUAL, checkpoint_op_names=["words_num_filter", "op_5"]),
    dict(checkpoint_strategy=CheckpointStrategy.MANUAL, checkpoint_op_names=None),
    dict(checkpoint_strategy=CheckpointStrategy.DISABLED),
    dict(checkpoint_strategy=CheckpointStrategy.DISABLED, checkpoint_enabled=True),
]


def op_lists():
    yield []
    for n in range(1, 8):
        yield [Op(NAMES[i % len(NAMES)]) for i in range(n)]
    yield [Op("a"), Unnamed(), Op("words_num_filter"), Unnamed(), Unnamed(), Unnamed(), Op("b")]


def groups_shape(groups):
    return [(s, e, [id(o) for o in g]) for s, e, g in groups]


@requires_reference
@pytest.mark.parametrize("config", CONFIGS, ids=lambda c: "-".join(f"{v}" for v in c.values()))
def test_same_decisions_as_the_reference(tmp_path, config):
    from data_juicer.utils import ckpt_utils as ref_utils

    ref_config = dict(config)
    ref_config["checkpoint_strategy"] = ref_utils.CheckpointStrategy(config["checkpoint_strategy"].value)
    ref = ref_utils.RayCheckpointManager(str(tmp_path / "ref"), **ref_config)
    ours = RayCheckpointManager(str(tmp_path / "ours"), **config)

    assert ours.checkpoint_enabled == ref.checkpoint_enabled
    assert ours.checkpoint_strategy.value == ref.checkpoint_strategy.value
    assert ours.checkpoint_n_ops == ref.checkpoint_n_ops
    assert ours.checkpoint_op_names == ref.checkpoint_op_names
    for ops in op_lists():
        assert groups_shape(ours.group_operations_for_checkpointing(ops)) == groups_shape(
            ref.group_operations_for_checkpointing(ops)
        ), ops
    for op_idx, name in itertools.product(range(12), [*NAMES, "op_5", ""]):
        assert ours.should_checkpoint(op_idx, name) == ref.should_checkpoint(op_idx, name), (op_idx, name)
    for op_idx, partition_id in itertools.product([0, 1, 9, 123, 9999, 12345], [0, 3, 10000]):
        ref_name = ref.resolve_checkpoint_filename(op_idx, partition_id)
        assert ours.resolve_reference_checkpoint_filename(op_idx, partition_id) == ref_name
        assert ours.resolve_checkpoint_filename(op_idx, partition_id) == ref_name.replace(".parquet", ".accel")


@requires_reference
@pytest.mark.parametrize(
    "method",
    [
        "__init__",
        "resolve_checkpoint_filename",
        "should_checkpoint",
        "save_checkpoint",
        "load_checkpoint",
        "find_latest_checkpoint",
        "group_operations_for_checkpointing",
    ],
)
def test_methods_take_the_reference_arguments(method):
    from data_juicer.utils.ckpt_utils import RayCheckpointManager as Ref

    def shape(cls):
        params = inspect.signature(getattr(cls, method)).parameters.values()
        return [(p.name, p.kind, getattr(p.default, "value", p.default)) for p in params]

    ours = shape(RayCheckpointManager)
    if method == "__init__":  # ours adds the bucket's client options, keyword-only
        assert ours[-1] == ("storage_options", inspect.Parameter.KEYWORD_ONLY, None)
        ours = ours[:-1]
    assert ours == shape(Ref)


def test_strategy_enum_is_the_one_of_ckpt_utils():
    assert ray_ckpt.CheckpointStrategy is CheckpointStrategy
    assert "RayCheckpointManager" in __import__("data_juicer_accel.utils.ckpt_utils").utils.ckpt_utils.__all__


def commit_checkpoint(ckpt_dir: str, name: str, table: pa.Table) -> str:
    """A committed checkpoint of ours, written as the driver and its write
    tasks would (no Ray needed)."""
    final = os.path.join(ckpt_dir, name)
    staging = _native.ShardStaging(final)
    entries = _native.write_shard_files(staging.dir, table, prefix="000000-test-b0000")
    staging.commit(entries, level=1)
    return final


def test_find_latest_takes_committed_accel_and_reference_parquet(tmp_path):
    ckpt_dir = str(tmp_path)
    m = RayCheckpointManager(ckpt_dir)
    assert m.find_latest_checkpoint(0) is None
    table = text_table(50)

    commit_checkpoint(ckpt_dir, m.resolve_checkpoint_filename(1, 0), table)
    os.makedirs(tmp_path / m.resolve_reference_checkpoint_filename(0, 0))  # written by the reference
    assert m.find_latest_checkpoint(0) == (1, "op_0001", str(tmp_path / "checkpoint_op_0001_partition_0000.accel"))

    # The reference's checkpoint of a later op wins (a job started before the switch).
    os.makedirs(tmp_path / m.resolve_reference_checkpoint_filename(4, 0))
    assert m.find_latest_checkpoint(0)[::2] == (4, str(tmp_path / "checkpoint_op_0004_partition_0000.parquet"))
    # Same op in both formats: ours.
    commit_checkpoint(ckpt_dir, m.resolve_checkpoint_filename(4, 0), table)
    assert m.find_latest_checkpoint(0)[2].endswith("checkpoint_op_0004_partition_0000.accel")
    # Other partitions are not mixed in.
    commit_checkpoint(ckpt_dir, m.resolve_checkpoint_filename(9, 1), table)
    assert m.find_latest_checkpoint(0)[0] == 4
    assert m.find_latest_checkpoint(1) == (9, "op_0009", str(tmp_path / "checkpoint_op_0009_partition_0001.accel"))
    assert m.find_latest_checkpoint(2) is None


def test_uncommitted_or_damaged_accel_directories_do_not_exist(tmp_path, log_messages):
    ckpt_dir = str(tmp_path)
    m = RayCheckpointManager(ckpt_dir)
    table = text_table(50)
    commit_checkpoint(ckpt_dir, m.resolve_checkpoint_filename(2, 0), table)

    # Shards written, driver died before the manifest: both as a staging dir and under the final name.
    dead = tmp_path / m.resolve_checkpoint_filename(5, 0)
    (dead / ".latest.staging-1-2").mkdir(parents=True)
    _native.write_shard_files(str(dead / ".latest.staging-1-2"), table, prefix="000000-dead-b0000")
    (dead / "latest").mkdir()
    _native.write_shard_files(str(dead / "latest"), table, prefix="000000-dead-b0000")
    # A manifest that is not one.
    broken = tmp_path / m.resolve_checkpoint_filename(7, 0) / "latest"
    broken.mkdir(parents=True)
    (broken / _native.MANIFEST_FILE).write_text("{half a manifest")

    assert m.find_latest_checkpoint(0) == (2, "op_0002", str(tmp_path / "checkpoint_op_0002_partition_0000.accel"))
    assert m.load_checkpoint(5) is None
    assert m.load_checkpoint(7) is None
    assert any("Ignoring checkpoint" in text and "accel_manifest.json" in text for _, text in log_messages)


def test_commit_drops_leftovers_of_failed_attempts_and_replaces_atomically(tmp_path):
    ckpt_dir = str(tmp_path)
    name = "checkpoint_op_0000_partition_0000.accel"
    first = commit_checkpoint(ckpt_dir, name, text_table(30))
    staging = _native.ShardStaging(first)
    entries = _native.write_shard_files(staging.dir, text_table(40), prefix="000001-new-b0000")
    _native.write_shard_files(staging.dir, text_table(10), prefix="000001-failed-attempt-b0000")
    os.mkdir(os.path.join(staging.dir, ".000002-x.writing"))
    latest = staging.commit(entries, level=1)
    assert latest == os.path.join(first, "latest")
    assert sorted(os.listdir(tmp_path)) == [name]
    assert sorted(os.listdir(first)) == [".accel.lock", "latest"]
    assert sorted(os.listdir(latest)) == sorted([_native.MANIFEST_FILE, *(e["file"] for e in entries)])
    loaded = _native.read_shard_file(
        os.path.join(latest, entries[0]["file"]),
        bytes=entries[0]["bytes"],
        xxh3_64=entries[0]["xxh3_64"],
        rows=entries[0]["rows"],
    )
    assert pa.RecordBatchReader.from_stream(loaded).read_all().num_rows == 40


def test_a_second_driver_saving_the_same_checkpoint_gets_a_clear_error(tmp_path):
    name = os.path.join(str(tmp_path), "checkpoint_op_0000_partition_0000.accel")
    first = _native.ShardStaging(name)
    with pytest.raises(_native.CheckpointLockedError):
        _native.ShardStaging(name)
    first.abort()
    assert first.dir is None
    _native.ShardStaging(name).abort()


def test_commit_refuses_entries_that_do_not_match_the_files(tmp_path):
    final = commit_checkpoint(str(tmp_path), "checkpoint_op_0000_partition_0000.accel", text_table(30))
    for damage in ({"bytes": 1}, {"file": "../escape.arrow"}, {"file": "missing.arrow"}, {"rows": "many"}):
        staging = _native.ShardStaging(final)
        [entry] = _native.write_shard_files(staging.dir, text_table(5), prefix="p")
        with pytest.raises((ValueError, OSError)):
            staging.commit([dict(entry, **damage)])
        staging.abort()
    assert RayCheckpointManager(str(tmp_path))._committed_manifest(final)["num_rows"] == 30


def test_shards_are_plain_arrow_ipc_streams(tmp_path):
    table = text_table(300)
    entries = _native.write_shard_files(str(tmp_path), table, prefix="p", max_shard_bytes=4096, chunk_bytes=1024)
    assert len(entries) > 1
    assert [e["file"] for e in entries] == [f"p-data-{i:05d}-of-{len(entries):05d}.arrow" for i in range(len(entries))]
    parts = [pa.ipc.open_stream(pa.OSFile(str(tmp_path / e["file"]))).read_all() for e in entries]
    assert pa.concat_tables(parts).equals(table)
    assert sum(e["rows"] for e in entries) == 300


def test_read_shard_file_refuses_a_damaged_shard(tmp_path):
    [entry] = _native.write_shard_files(str(tmp_path), text_table(100), prefix="p")
    path = tmp_path / entry["file"]
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(_native.CheckpointCorruptError, match="xxh3"):
        _native.read_shard_file(str(path), bytes=entry["bytes"], xxh3_64=entry["xxh3_64"], rows=entry["rows"])
    [good] = _native.write_shard_files(str(tmp_path), text_table(100), prefix="q")
    with pytest.raises(_native.CheckpointCorruptError, match="100 rows"):
        _native.read_shard_file(str(tmp_path / good["file"]), bytes=good["bytes"], xxh3_64=good["xxh3_64"], rows=7)


def test_a_forked_child_leaves_its_parents_pins_alone(tmp_path):
    """A load's links are removed by the process that made them, never by a
    forked child running the inherited finalizer at its exit."""
    pin = tmp_path / ray_ckpt.READERS / "host-1-0123456789ab"
    pin.mkdir(parents=True)
    parent = os.getpid()
    child = os.fork()
    if child == 0:
        _native.unpin_generation(str(pin), parent)
        os._exit(0)
    os.waitpid(child, 0)
    assert pin.exists()
    _native.unpin_generation(str(pin), parent)
    assert not (tmp_path / ray_ckpt.READERS).exists()
