"""What a save accepts, what lands on disk, and what a load gives back."""

from __future__ import annotations

import json
import os

import datasets
import pyarrow as pa
import pytest

from data_juicer_accel import _native
from data_juicer_accel.utils.ckpt_utils import CheckpointManager
from tests.conftest import require, requires_reference, text_table

OPS = [{"a_mapper": {}}]


def manager(path, num_proc=1, **kw) -> CheckpointManager:
    return CheckpointManager(str(path), OPS, num_proc=num_proc, **kw)


def manifest(m: CheckpointManager) -> dict:
    with open(os.path.join(m.ckpt_ds_dir, _native.MANIFEST_FILE)) as f:
        return json.load(f)


# ---------------------------------------------------------------- inputs


def test_pyarrow_table_round_trip(tmp_path, table):
    m = manager(tmp_path, num_proc=2)
    m.save_ckpt(table)
    back = manager(tmp_path).load_ckpt()
    assert isinstance(back, pa.Table) and back.equals(table)
    assert back.schema == table.schema


def test_record_batch_reader_round_trip(tmp_path, table):
    m = manager(tmp_path, num_proc=2)
    reader = pa.RecordBatchReader.from_batches(table.schema, table.to_batches(max_chunksize=300))
    m.save_ckpt(reader)
    assert manager(tmp_path).load_ckpt().equals(table)


def test_python_generator_stream_round_trip(tmp_path, table):
    def batches():
        yield from table.to_batches(max_chunksize=123)

    m = manager(tmp_path, num_proc=2)
    m.save_ckpt(pa.RecordBatchReader.from_batches(table.schema, batches()))
    assert manager(tmp_path).load_ckpt().equals(table)


def test_polars_dataframe_via_arrow_c_stream(tmp_path, table):
    pl = require("polars")
    df = pl.DataFrame({"text": ["a", "b", None], "n": [1, 2, 3]})
    m = manager(tmp_path)
    m.save_ckpt(df)
    back = manager(tmp_path).load_ckpt()
    assert pl.from_arrow(back).equals(df)


def test_hf_dataset_round_trip_keeps_features(tmp_path):
    features = datasets.Features({"text": datasets.Value("string"), "label": datasets.ClassLabel(names=["neg", "pos"])})
    ds = datasets.Dataset.from_dict({"text": ["x", "y", "z"], "label": [0, 1, 1]}, features=features)
    m = manager(tmp_path)
    m.save_ckpt(ds)
    back = manager(tmp_path).load_ckpt()
    assert type(back) is datasets.Dataset
    assert back.features == features
    assert back.to_list() == ds.to_list()
    # Same fingerprint as datasets.load_from_disk gives (it re-applies the format).
    assert back._fingerprint == datasets.load_from_disk(m.ckpt_ds_dir)._fingerprint


@pytest.mark.parametrize(
    "view",
    [
        lambda d: d.filter(lambda r: r["n"] % 3 == 0),
        lambda d: d.select([5, 1, 1, 40, 7]),
        lambda d: d.shuffle(seed=1),
        lambda d: d.select(range(10, 20)),
        lambda d: d.filter(lambda r: False),
    ],
    ids=["filter", "select-list", "shuffle", "select-range", "filter-all"],
)
def test_indices_mapping_saves_visible_rows(tmp_path, view):
    base = datasets.Dataset.from_dict({"text": [f"t{i}" for i in range(50)], "n": list(range(50))})
    ds = view(base)
    m = manager(tmp_path, num_proc=2)
    m.save_ckpt(ds)
    back = manager(tmp_path).load_ckpt()
    assert back.to_list() == ds.to_list()
    assert manifest(m)["num_rows"] == len(ds)
    # And datasets itself reads exactly the visible rows.
    assert datasets.load_from_disk(m.ckpt_ds_dir).to_list() == ds.to_list()


@requires_reference
def test_nested_dataset_round_trip(tmp_path):
    from data_juicer.core.data import NestedDataset

    ds = NestedDataset(datasets.Dataset.from_dict({"text": ["a", "b"], "meta": [{"k": 1}, {"k": 2}]}))
    m = manager(tmp_path)
    m.save_ckpt(ds.filter(lambda r: r["text"] == "b"))
    back = manager(tmp_path).load_ckpt()
    assert type(back) is NestedDataset
    assert back.to_list() == [{"text": "b", "meta": {"k": 2}}]
    assert manifest(m)["kind"] == "nested"


def test_hf_format_state_is_kept(tmp_path):
    ds = datasets.Dataset.from_dict({"a": [1, 2], "b": [3, 4]}).with_format("numpy", columns=["a"])
    m = manager(tmp_path)
    m.save_ckpt(ds)
    back = manager(tmp_path).load_ckpt()
    assert back.format == ds.format


# ---------------------------------------------------------------- empty


@pytest.mark.parametrize("kind", ["arrow", "hf"])
def test_empty_dataset_is_saved_with_schema(tmp_path, table, kind):
    empty = table.slice(0, 0) if kind == "arrow" else datasets.Dataset(table).filter(lambda r: False)
    m = manager(tmp_path)
    m.record(OPS[0])
    m.save_ckpt(table)
    m.save_ckpt(empty)  # the reference skips this and leaves the old rows behind
    again = manager(tmp_path)
    assert again.ckpt_available
    back = again.load_ckpt()
    assert len(back) == 0
    schema = back.schema if kind == "arrow" else back.data.table.schema
    assert schema.names == table.schema.names
    assert manifest(m)["num_rows"] == 0


# ---------------------------------------------------------------- on disk


def test_on_disk_layout_and_manifest(tmp_path, table):
    m = manager(tmp_path, num_proc=3)
    m.save_ckpt(table)
    names = sorted(os.listdir(m.ckpt_ds_dir))
    shards = [n for n in names if n.endswith(".arrow")]
    assert shards == [f"data-{i:05d}-of-00003.arrow" for i in range(3)]
    assert {"state.json", "dataset_info.json", "ckpt_op.json", _native.MANIFEST_FILE} <= set(names)
    man = manifest(m)
    assert man["format"] == "data-juicer-accel/checkpoint" and man["format_version"] == _native.FORMAT_VERSION
    assert (man["codec"], man["level"], man["kind"]) == ("zstd", 1, "arrow")
    assert [s["file"] for s in man["shards"]] == shards
    assert sum(s["rows"] for s in man["shards"]) == man["num_rows"] == table.num_rows
    for entry in man["shards"] + man["files"]:
        assert os.path.getsize(os.path.join(m.ckpt_ds_dir, entry["file"])) == entry["bytes"]
        assert len(entry["xxh3_64"]) == 16
    # Shards are contiguous runs of rows, in order, readable by pyarrow.
    parts = [pa.ipc.open_stream(os.path.join(m.ckpt_ds_dir, s)).read_all() for s in shards]
    assert pa.concat_tables(parts).equals(table)


def test_shards_are_compressed(tmp_path):
    table = text_table(20000)
    m = manager(tmp_path, num_proc=2)
    m.save_ckpt(table)
    on_disk = sum(s["bytes"] for s in manifest(m)["shards"])
    assert on_disk * 3 < table.nbytes


def test_zstd_level_and_no_compression_are_recorded(tmp_path, table):
    m = manager(tmp_path / "a", zstd_level=7)
    m.save_ckpt(table)
    assert manifest(m)["level"] == 7
    with pytest.raises(ValueError, match="zstd level"):
        manager(tmp_path / "b", zstd_level=99).save_ckpt(table)


def test_loadable_by_datasets_and_pyarrow(tmp_path):
    ds = datasets.Dataset.from_dict({"text": ["p", "q", "r"], "meta": [{"x": 1}, {"x": 2}, {"x": 3}]})
    m = manager(tmp_path, num_proc=2)
    m.save_ckpt(ds)
    assert datasets.load_from_disk(m.ckpt_ds_dir).to_list() == ds.to_list()
    arrow_tables = [
        pa.ipc.open_stream(os.path.join(m.ckpt_ds_dir, f["filename"])).read_all()
        for f in json.load(open(os.path.join(m.ckpt_ds_dir, "state.json")))["_data_files"]
    ]
    assert pa.concat_tables(arrow_tables).to_pylist() == ds.to_list()


def test_arrow_kind_is_loadable_by_datasets(tmp_path, table):
    m = manager(tmp_path)
    m.save_ckpt(table)
    assert datasets.load_from_disk(m.ckpt_ds_dir).data.table.equals(table)


@requires_reference
def test_reference_checkpoint_loads_here_and_ours_loads_in_reference(tmp_path):
    from data_juicer.core.data import NestedDataset
    from data_juicer.utils import ckpt_utils as ref

    ds = NestedDataset(datasets.Dataset.from_dict({"text": ["one", "two", "three"]}))
    r = ref.CheckpointManager(str(tmp_path / "ref"), OPS)
    r.record(OPS[0])
    r.save_ckpt(ds)
    m = manager(tmp_path / "ref")  # our manager on the reference's directory
    assert m.ckpt_available and m.get_left_process_list() == []
    assert m.load_ckpt().to_list() == ds.to_list()
    # Our save over the reference's layout, then the reference reads ours.
    m.save_ckpt(ds.select([2]))
    r2 = ref.CheckpointManager(str(tmp_path / "ref"), OPS)
    assert r2.ckpt_available
    assert r2.load_ckpt().to_list() == [{"text": "three"}]


def test_no_copy_of_the_table_in_pyarrow_memory(tmp_path):
    table = text_table(20000)
    m = manager(tmp_path, num_proc=2)
    before = pa.total_allocated_bytes()
    m.save_ckpt(table)
    # Rust reads the table's own buffers: pyarrow allocates nothing of its size.
    assert pa.total_allocated_bytes() - before < table.nbytes // 10


@requires_reference
def test_checkpoint_rewritten_in_place_by_the_reference_loads_with_a_warning(tmp_path, log_messages):
    from data_juicer.utils.ckpt_utils import CheckpointManager as Reference

    ours = manager(tmp_path)
    ours.record(OPS[0])
    ours.save_ckpt(datasets.Dataset.from_dict({"x": [1, 2, 3]}))
    ref = Reference(str(tmp_path), OPS + [{"b_mapper": {}}])
    assert ref.ckpt_available
    ref.record({"b_mapper": {}})
    ref.save_ckpt(ref.load_ckpt().map(lambda r: {"x": r["x"] * 10}, keep_in_memory=True))
    # Our manifest is still there, stale; the directory is a valid reference checkpoint.
    again = CheckpointManager(str(tmp_path), OPS + [{"b_mapper": {}}, {"c_mapper": {}}])
    assert again.ckpt_available and again.get_left_process_list() == [{"c_mapper": {}}]
    assert again.load_ckpt()["x"] == [10, 20, 30]
    assert any(level == "WARNING" and "saved again by another writer" in msg for level, msg in log_messages)
