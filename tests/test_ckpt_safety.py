"""Nothing lost, nothing crashes: failed saves, crashes around the commit,
damaged files, locked and unwritable directories."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import datasets
import pyarrow as pa
import pytest

from data_juicer_accel import CheckpointCorruptError, CheckpointLockedError, _native
from data_juicer_accel.utils.ckpt_utils import CheckpointManager
from tests.conftest import text_table

OPS = [{"a_mapper": {}}, {"b_filter": {"k": 1}}]
FAULT = "DATA_JUICER_ACCEL_FAULT"


def saved(path, table, ops=OPS[:1], num_proc=2) -> CheckpointManager:
    m = CheckpointManager(str(path), OPS, num_proc=num_proc)
    for op in ops:
        m.record(op)
    m.save_ckpt(table)
    return m


def leftovers(path) -> list:
    return [n for n in os.listdir(path) if n.startswith(".latest") or n.startswith(".ckpt_op")]


def shard_path(m: CheckpointManager, index=0) -> str:
    return os.path.join(m.ckpt_ds_dir, sorted(n for n in os.listdir(m.ckpt_ds_dir) if n.endswith(".arrow"))[index])


# ------------------------------------------------------------ failed saves


@pytest.mark.parametrize(
    "fault, error",
    [
        ("shard_write:enospc", r"No space left on device: '.*part-0000\d\.arrow'"),
        ("shard_write:eio", r"Input/output error: '.*part-0000\d\.arrow'"),
        ("shard_sync:eio", r"Input/output error"),
        ("before_swap:eio", r"Input/output error: '.*latest'"),
    ],
)
def test_failed_save_keeps_previous_checkpoint(tmp_path, table, monkeypatch, fault, error, fault_hook):
    m = saved(tmp_path, table)
    m.record(OPS[1])
    monkeypatch.setenv(FAULT, fault)
    with pytest.raises(OSError, match=error):
        m.save_ckpt(table.slice(0, 10))
    monkeypatch.delenv(FAULT)
    assert leftovers(tmp_path) == []
    again = CheckpointManager(str(tmp_path), OPS)
    assert again.ckpt_available and again.get_left_process_list() == OPS[1:]
    assert again.load_ckpt().equals(table)


CRASHING_SAVE = textwrap.dedent(
    """
    import sys, pyarrow as pa
    from data_juicer_accel.utils.ckpt_utils import CheckpointManager
    m = CheckpointManager(sys.argv[1], [{"a_mapper": {}}, {"b_filter": {"k": 1}}], num_proc=2)
    m.record({"b_filter": {"k": 1}})
    m.save_ckpt(pa.table({"text": ["new"] * 7}))
    """
)


@pytest.mark.parametrize("point, expect_new", [("shard_write", False), ("before_swap", False), ("after_swap", True)])
def test_process_killed_during_save_leaves_old_or_new(tmp_path, table, point, expect_new, fault_hook):
    saved(tmp_path, table)
    env = dict(os.environ, **{FAULT: f"{point}:abort"})
    proc = subprocess.run([sys.executable, "-c", CRASHING_SAVE, str(tmp_path)], env=env, capture_output=True)
    assert proc.returncode != 0  # died by SIGABRT, as under kill -9: no cleanup ran
    m = CheckpointManager(str(tmp_path), OPS)
    assert m.ckpt_available
    loaded = m.load_ckpt()
    with open(m.ckpt_op_record) as f:
        record = json.load(f)
    if expect_new:
        assert loaded.column("text").to_pylist() == ["new"] * 7 and record == OPS
    else:
        assert loaded.equals(table) and record == [OPS[0]]
    # The next save clears what the dead one left behind.
    m.save_ckpt(table.slice(0, 3))
    assert leftovers(tmp_path) == []


def test_unwritable_ckpt_dir_raises_oserror_naming_it(tmp_path, table):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a directory")
    with pytest.raises(OSError) as info:
        CheckpointManager(str(blocker / "ckpt"), OPS)
    assert str(blocker) in str(info.value)
    m = CheckpointManager(str(tmp_path / "ck"), OPS)
    os.rmdir(m.ckpt_dir)
    (tmp_path / "ck").write_text("replaced by a file")
    with pytest.raises(OSError) as info:
        m.save_ckpt(table)
    assert str(tmp_path / "ck") in str(info.value)


def test_second_concurrent_saver_gets_a_clear_error(tmp_path, table):
    m = saved(tmp_path, table)
    holder = _native.CheckpointWriter(m.ckpt_dir)  # holds the lock until aborted
    try:
        with pytest.raises(CheckpointLockedError, match="a checkpoint writer, in this process, is saving"):
            m.save_ckpt(table.slice(0, 1))
    finally:
        holder.abort()
    m.save_ckpt(table.slice(0, 1))
    assert CheckpointManager(str(tmp_path), OPS).load_ckpt().num_rows == 1


def test_reader_of_previous_checkpoint_keeps_its_data(tmp_path):
    big = datasets.Dataset(text_table(5000))
    m = saved(tmp_path, big)
    old = datasets.load_from_disk(m.ckpt_ds_dir)  # memory-maps the old shards
    m.save_ckpt(datasets.Dataset(text_table(10, seed=3)))
    m.save_ckpt(datasets.Dataset(text_table(20, seed=4)))
    assert old.data.table.equals(big.data.table)  # no SIGBUS, same rows


# ------------------------------------------------------------ damaged files


def flip_byte(path, offset_from_end=40):
    with open(path, "r+b") as f:
        f.seek(-offset_from_end, os.SEEK_END)
        b = f.read(1)
        f.seek(-1, os.SEEK_CUR)
        f.write(bytes([b[0] ^ 0xFF]))


def test_flipped_byte_in_shard_names_file_and_checksum(tmp_path, table):
    m = saved(tmp_path, table)
    shard = shard_path(m, 1)
    flip_byte(shard)
    with pytest.raises(CheckpointCorruptError, match=rf"{shard}: xxh3 checksum is [0-9a-f]{{16}}, the manifest says"):
        CheckpointManager(str(tmp_path), OPS).load_ckpt()


def test_truncated_shard_names_file_and_size(tmp_path, table):
    m = saved(tmp_path, table)
    shard = shard_path(m)
    size = os.path.getsize(shard)
    os.truncate(shard, size // 2)
    for verify in (True, False):
        with pytest.raises(
            CheckpointCorruptError, match=rf"{shard}: file is {size // 2} bytes, the manifest says {size}"
        ):
            CheckpointManager(str(tmp_path), OPS, verify_on_load=verify).load_ckpt()


def test_damaged_shard_without_verification_still_fails_cleanly(tmp_path, table):
    m = saved(tmp_path, table)
    shard = shard_path(m)
    with open(shard, "r+b") as f:  # same size, garbage in the middle
        f.seek(os.path.getsize(shard) // 2)
        f.write(b"\xff" * 64)
    with pytest.raises(CheckpointCorruptError, match=shard):
        CheckpointManager(str(tmp_path), OPS, verify_on_load=False).load_ckpt()


@pytest.mark.parametrize("name", ["state.json", "dataset_info.json", _native.MANIFEST_FILE])
def test_damaged_metadata_file_is_named(tmp_path, table, name):
    m = saved(tmp_path, table)
    path = os.path.join(m.ckpt_ds_dir, name)
    with open(path, "ab") as f:
        f.write(b"}")
    with pytest.raises(CheckpointCorruptError, match=path):
        CheckpointManager(str(tmp_path), OPS).load_ckpt()


@pytest.mark.parametrize("content", ["{not json", "", '{"a": 1}', "[1, 2]"])
def test_unparsable_op_record_warns_and_starts_afresh(tmp_path, table, content, log_messages):
    m = saved(tmp_path, table)
    target = os.path.realpath(m.ckpt_op_record)
    with open(target, "w") as f:
        f.write(content)
    again = CheckpointManager(str(tmp_path), OPS)
    assert again.ckpt_available is False and again.get_left_process_list() == OPS and again.op_record == []
    assert any(
        level == "WARNING" and "All ops will be processed from the beginning" in msg for level, msg in log_messages
    )


def test_hostile_manifest_names_cannot_escape(tmp_path, table):
    m = saved(tmp_path, table)
    path = os.path.join(m.ckpt_ds_dir, _native.MANIFEST_FILE)
    man = json.load(open(path))
    man["shards"][0]["file"] = "../../etc/passwd"
    json.dump(man, open(path, "w"))
    with pytest.raises(CheckpointCorruptError, match="is not allowed"):
        CheckpointManager(str(tmp_path), OPS).load_ckpt()


def test_missing_checkpoint_raises_file_not_found(tmp_path):
    m = CheckpointManager(str(tmp_path), OPS)
    with pytest.raises(FileNotFoundError):
        m.load_ckpt()


def test_writer_rejects_unsafe_file_names_and_reuse(tmp_path, table):
    w = _native.CheckpointWriter(str(tmp_path))
    try:
        with pytest.raises(ValueError, match="not a valid checkpoint file name"):
            w.add_file("../evil", b"x")
        with pytest.raises(ValueError, match="commit\\(\\) before write_data"):
            w.commit("arrow")
        w.write_data(table)
        with pytest.raises(ValueError, match="already called"):
            w.write_data(table)
        with pytest.raises(TypeError, match="__arrow_c_stream__"):
            _native.CheckpointWriter(str(tmp_path / "other")).write_data([1, 2])
    finally:
        w.abort()


def test_writer_without_sizes_uses_the_default_sizes(tmp_path):
    """Unset chunk_bytes/max_shard_bytes are the DEFAULT_* ones: one record
    batch per DEFAULT_CHUNK_BYTES of input."""
    table = pa.table({"text": pa.array(["x" * 1000] * 20_000)})  # 20 MB: 3 chunks of 8 MiB

    def batches_written(name: str, **sizes) -> int:
        w = _native.CheckpointWriter(str(tmp_path / name), level=1, **sizes)
        w.write_data(table)
        latest = w.commit("arrow")
        return sum(
            len(list(pa.ipc.open_stream(pa.OSFile(os.path.join(latest, f)))))
            for f in os.listdir(latest)
            if f.endswith(".arrow")
        )

    explicit = dict(chunk_bytes=_native.DEFAULT_CHUNK_BYTES, max_shard_bytes=_native.DEFAULT_MAX_SHARD_BYTES)
    assert batches_written("unset") == batches_written("none", chunk_bytes=None, max_shard_bytes=None)
    assert batches_written("unset") == batches_written("explicit", **explicit) == 3
    assert batches_written("small", chunk_bytes=1 << 20) > 3


def test_failing_input_stream_raises_and_keeps_previous(tmp_path, table):
    m = saved(tmp_path, table)

    def batches():
        yield table.to_batches()[0]
        raise RuntimeError("upstream exploded")

    with pytest.raises((ValueError, RuntimeError), match="upstream exploded"):
        m.save_ckpt(pa.RecordBatchReader.from_batches(table.schema, batches()))
    assert leftovers(tmp_path) == []
    assert CheckpointManager(str(tmp_path), OPS).load_ckpt().equals(table)
