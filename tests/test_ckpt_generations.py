"""A load returns the rows its op record describes, and what this package
wrote is loaded only the way it can be checked.

* A checkpoint replaced by another process's save, with another op record,
  between the skip decision and the load: ``CheckpointChangedError`` naming
  both records, nothing loaded (Data-Juicer's executor has already dropped
  the skipped ops from its list by then). With the same record, the new
  rows are what the decision assumed, and load.
* ``latest/`` written here but without its manifest: refused, not loaded
  unverified through ``datasets``; a plain ``save_to_disk`` directory still
  loads.
* A manifest naming a missing file: ``CheckpointCorruptError`` naming it.
* Two savers of one process on one directory: the second is told which
  manager holds the lock.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import threading

import datasets
import numpy as np
import pyarrow as pa
import pytest

from data_juicer_accel import CheckpointChangedError, CheckpointCorruptError, CheckpointLockedError, _native
from data_juicer_accel.utils.ckpt_utils import CheckpointManager, RayCheckpointManager
from tests.conftest import text_table

OPS = [{"a_mapper": {}}, {"b_filter": {"min": 1}}, {"c_mapper": {}}]

#: Saves `rows` rows of generation `gen` with the first `done` ops of OPS
#: recorded, in its own process.
SAVE_IN_ANOTHER_PROCESS = """
    import json, sys
    import pyarrow as pa
    from data_juicer_accel.utils.ckpt_utils import CheckpointManager
    ckpt_dir, ops, gen = sys.argv[1], json.loads(sys.argv[2]), sys.argv[4]
    done, rows = int(sys.argv[3]), int(sys.argv[5])
    m = CheckpointManager(ckpt_dir, ops, num_proc=2)
    m.op_record = []
    for op in ops[:done]:
        m.record(op)
    m.save_ckpt(pa.table({"gen": [gen] * rows, "n": list(range(rows))}))
"""


def save_in_another_process(ckpt_dir: str, done: int, gen: str, rows: int) -> None:
    script = textwrap.dedent(SAVE_IN_ANOTHER_PROCESS)
    args = [ckpt_dir, json.dumps(OPS), str(done), gen, str(rows)]
    proc = subprocess.run([sys.executable, "-c", script, *args], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]


def generation(gen: str, rows: int) -> pa.Table:
    return pa.table({"gen": [gen] * rows, "n": list(range(rows))})


# ---------------------------------------------------------------- the decision and the load


def test_a_save_of_another_op_record_between_decision_and_load_is_refused_naming_both(tmp_path):
    ckpt_dir = str(tmp_path / "ckpt")
    save_in_another_process(ckpt_dir, done=1, gen="first", rows=50)
    m = CheckpointManager(ckpt_dir, OPS)
    assert m.ckpt_available and m.get_left_process_list() == OPS[1:]  # what the executor now runs
    save_in_another_process(ckpt_dir, done=2, gen="second", rows=30)  # the rows after a_mapper and b_filter
    with pytest.raises(CheckpointChangedError) as info:
        m.load_ckpt()  # would run b_filter a second time on them
    message = str(info.value)
    assert os.path.join(ckpt_dir, "latest") in message
    assert "['a_mapper'] (1 ops)" in message and "['a_mapper', 'b_filter'] (2 ops)" in message
    # A new decision sees the new checkpoint.
    again = CheckpointManager(ckpt_dir, OPS)
    assert again.get_left_process_list() == OPS[2:]
    assert again.load_ckpt().equals(generation("second", 30))


def test_a_save_of_fewer_ops_between_decision_and_load_is_refused(tmp_path):
    ckpt_dir = str(tmp_path / "ckpt")
    save_in_another_process(ckpt_dir, done=2, gen="first", rows=50)
    m = CheckpointManager(ckpt_dir, OPS)
    assert m.get_left_process_list() == OPS[2:]
    save_in_another_process(ckpt_dir, done=1, gen="second", rows=30)  # b_filter would be skipped
    with pytest.raises(CheckpointChangedError, match=r"\['a_mapper', 'b_filter'\] \(2 ops\)"):
        m.load_ckpt()


def test_same_op_names_other_arguments_are_named_in_full(tmp_path):
    ckpt_dir = str(tmp_path / "ckpt")
    save_in_another_process(ckpt_dir, done=2, gen="first", rows=5)
    m = CheckpointManager(ckpt_dir, OPS)
    other = [OPS[0], {"b_filter": {"min": 7}}]
    w = CheckpointManager(ckpt_dir, other)
    w.op_record = list(other)
    w.save_ckpt(generation("other", 3))
    with pytest.raises(CheckpointChangedError) as info:
        m.load_ckpt()
    assert '"min": 1' in str(info.value) and '"min": 7' in str(info.value)


def test_a_save_of_the_same_op_record_between_decision_and_load_loads_its_rows(tmp_path):
    ckpt_dir = str(tmp_path / "ckpt")
    save_in_another_process(ckpt_dir, done=1, gen="first", rows=50)
    m = CheckpointManager(ckpt_dir, OPS)
    save_in_another_process(ckpt_dir, done=1, gen="second", rows=30)
    # The rows come with the record the decision used: what it assumed.
    assert m.load_ckpt().equals(generation("second", 30))


def test_the_managers_own_saves_move_what_a_load_expects(tmp_path):
    ckpt_dir = str(tmp_path / "ckpt")
    save_in_another_process(ckpt_dir, done=1, gen="first", rows=50)
    m = CheckpointManager(ckpt_dir, OPS)
    m.record(OPS[1])
    m.save_ckpt(generation("mine", 10))
    assert m.load_ckpt().equals(generation("mine", 10))
    save_in_another_process(ckpt_dir, done=1, gen="theirs", rows=20)
    with pytest.raises(CheckpointChangedError):
        m.load_ckpt()  # its record says a_mapper and b_filter are done


def test_background_save_moves_what_a_load_expects(tmp_path):
    ckpt_dir = str(tmp_path / "ckpt")
    save_in_another_process(ckpt_dir, done=1, gen="first", rows=50)
    m = CheckpointManager(ckpt_dir, OPS, background=True)
    try:
        m.record(OPS[1])
        m.save_ckpt(generation("mine", 10))
        assert m.load_ckpt().equals(generation("mine", 10))
    finally:
        m.close()


def test_a_failed_background_save_leaves_the_expectation_on_the_checkpoint_there(tmp_path, monkeypatch, fault_hook):
    ckpt_dir = str(tmp_path / "ckpt")
    save_in_another_process(ckpt_dir, done=1, gen="first", rows=50)
    m = CheckpointManager(ckpt_dir, OPS, background=True)
    try:
        m.record(OPS[1])
        monkeypatch.setenv(fault_hook, "shard_write:enospc")
        m.save_ckpt(generation("mine", 10))
        with pytest.raises(OSError):
            m.wait()
        monkeypatch.delenv(fault_hook)
        # The previous checkpoint, which the decision was about, is what there is.
        assert m.load_ckpt().equals(generation("first", 50))
    finally:
        m.close()


def test_no_decision_to_keep_loads_what_is_there(tmp_path):
    ckpt_dir = str(tmp_path / "ckpt")
    save_in_another_process(ckpt_dir, done=1, gen="first", rows=5)
    m = CheckpointManager(ckpt_dir, [{"z_mapper": {}}])  # the record does not match: nothing skipped
    assert not m.ckpt_available
    save_in_another_process(ckpt_dir, done=2, gen="second", rows=3)
    assert m.load_ckpt().equals(generation("second", 3))  # as the reference does


def test_a_reference_checkpoint_replaced_between_decision_and_load_is_refused(tmp_path):
    ckpt_dir = tmp_path / "ckpt"
    ds = datasets.Dataset.from_dict({"text": ["a", "b"]})
    ds.save_to_disk(str(ckpt_dir / "latest"))
    (ckpt_dir / "ckpt_op.json").write_text(json.dumps(OPS[:1]))
    m = CheckpointManager(str(ckpt_dir), OPS)
    assert m.get_left_process_list() == OPS[1:]
    datasets.Dataset.from_dict({"text": ["c"]}).save_to_disk(str(ckpt_dir / "latest2"))
    os.rename(ckpt_dir / "latest", ckpt_dir / "old")
    os.rename(ckpt_dir / "latest2", ckpt_dir / "latest")
    (ckpt_dir / "ckpt_op.json").write_text(json.dumps(OPS[:2]))
    with pytest.raises(CheckpointChangedError):
        m.load_ckpt()


# ---------------------------------------------------------------- our files without their manifest


def our_checkpoint(tmp_path, data=None) -> CheckpointManager:
    m = CheckpointManager(str(tmp_path / "ckpt"), OPS, num_proc=2)
    m.record(OPS[0])
    m.save_ckpt(data if data is not None else datasets.Dataset(text_table(3000)))
    return m


def test_our_checkpoint_without_its_manifest_is_refused(tmp_path):
    m = our_checkpoint(tmp_path)
    os.remove(os.path.join(m.ckpt_ds_dir, _native.MANIFEST_FILE))
    again = CheckpointManager(m.ckpt_dir, OPS)
    with pytest.raises(CheckpointCorruptError) as info:
        again.load_ckpt()
    message = str(info.value)
    assert os.path.join(m.ckpt_ds_dir, _native.MANIFEST_FILE) in message and "is missing" in message
    assert os.path.join(m.ckpt_ds_dir, "data-00000-of-00002.arrow") in message and "zstd" in message


@pytest.mark.parametrize("kind", ["arrow", "hf"])
def test_our_checkpoint_without_manifest_with_a_damaged_shard_is_refused(tmp_path, kind):
    # Random integers do not compress: zstd keeps them as they are, and a flipped bit changes a value.
    table = pa.table({"n": pa.array(np.random.default_rng(0).integers(0, 2**62, 20_000), pa.int64())})
    m = our_checkpoint(tmp_path, table if kind == "arrow" else datasets.Dataset(table))
    shard = os.path.join(m.ckpt_ds_dir, "data-00000-of-00002.arrow")
    os.remove(os.path.join(m.ckpt_ds_dir, _native.MANIFEST_FILE))
    with open(shard, "r+b") as f:
        f.seek(os.path.getsize(shard) - 4000)
        byte = f.read(1)
        f.seek(-1, os.SEEK_CUR)
        f.write(bytes([byte[0] ^ 0x10]))
    # What loading it unverified would give: wrong rows, and no error.
    assert not datasets.load_from_disk(m.ckpt_ds_dir).data.table.equals(table)
    with pytest.raises(CheckpointCorruptError, match="is missing"):
        CheckpointManager(m.ckpt_dir, OPS).load_ckpt()


def test_a_plain_save_to_disk_checkpoint_still_loads(tmp_path):
    ckpt_dir = tmp_path / "ckpt"
    ds = datasets.Dataset(text_table(3000))
    ds.save_to_disk(str(ckpt_dir / "latest"), num_proc=2)
    (ckpt_dir / "ckpt_op.json").write_text(json.dumps(OPS[:1]))
    m = CheckpointManager(str(ckpt_dir), OPS)
    assert m.get_left_process_list() == OPS[1:]
    assert m.load_ckpt().data.table.equals(ds.data.table)


def test_a_reference_checkpoint_with_our_copy_of_its_record_still_loads(tmp_path):
    """A save killed after linking the op record, before its swap, leaves
    the reference's ``latest/`` with a copy of the record inside and
    ``ckpt_op.json`` a symlink to it: still the reference's checkpoint."""
    ckpt_dir = tmp_path / "ckpt"
    ds = datasets.Dataset.from_dict({"text": ["p", "q", "r"]})
    ds.save_to_disk(str(ckpt_dir / "latest"))
    (ckpt_dir / "latest" / "ckpt_op.json").write_text(json.dumps(OPS[:1]))
    os.symlink(os.path.join("latest", "ckpt_op.json"), ckpt_dir / "ckpt_op.json")
    (ckpt_dir / ".accel.lock").touch()
    m = CheckpointManager(str(ckpt_dir), OPS)
    assert m.get_left_process_list() == OPS[1:]
    assert m.load_ckpt().to_list() == ds.to_list()


# ---------------------------------------------------------------- a manifest naming a missing file


@pytest.mark.parametrize("missing", ["data-00001-of-00002.arrow", "state.json", "dataset_info.json", "ckpt_op.json"])
def test_a_file_the_manifest_lists_but_is_missing_is_named(tmp_path, missing):
    m = our_checkpoint(tmp_path)
    os.remove(os.path.join(m.ckpt_ds_dir, missing))
    with pytest.raises(CheckpointCorruptError) as info:
        m.load_ckpt()
    assert os.path.join(m.ckpt_ds_dir, missing) in str(info.value)
    assert "missing" in str(info.value)


# ---------------------------------------------------------------- lock conflicts inside one process


class Gate:
    """A stream that holds its save (and the directory's lock) open until released."""

    def __init__(self, table: pa.Table):
        self.table = table
        self.started = threading.Event()
        self.release = threading.Event()

    def reader(self) -> pa.RecordBatchReader:
        def batches():
            self.started.set()
            assert self.release.wait(60), "the test never released the save"
            yield from self.table.to_batches()

        return pa.RecordBatchReader.from_batches(self.table.schema, batches())


def hold_lock_while(manager: CheckpointManager, then) -> None:
    """Runs ``then()`` while ``manager`` is inside a save into its directory."""
    gate = Gate(text_table(100))
    errors: list[BaseException] = []

    def save():
        try:
            manager.save_ckpt(gate.reader())
        except BaseException as e:  # noqa: BLE001 - reported by the test
            errors.append(e)

    saver = threading.Thread(target=save)
    saver.start()
    try:
        assert gate.started.wait(60)
        then()
    finally:
        gate.release.set()
        saver.join()
    assert not errors, errors


def test_a_second_manager_of_this_process_is_told_which_manager_holds_the_lock(tmp_path):
    first = CheckpointManager(str(tmp_path), OPS)  # the line named below
    line = sys._getframe().f_lineno - 1
    second = CheckpointManager(str(tmp_path), OPS)

    def conflict():
        with pytest.raises(CheckpointLockedError) as info:
            second.save_ckpt(text_table(10))
        message = str(info.value)
        assert "another process" not in message
        assert f"CheckpointManager({str(tmp_path)!r}) at {id(first):#x}" in message
        assert f"{__file__}:{line}" in message and "in this process" in message

    hold_lock_while(first, conflict)
    second.save_ckpt(text_table(10))  # free again
    assert CheckpointManager(str(tmp_path), OPS).load_ckpt().num_rows == 10


def test_a_background_save_of_this_process_is_named_too(tmp_path):
    holder = CheckpointManager(str(tmp_path), OPS)
    background = CheckpointManager(str(tmp_path), OPS, background=True)

    def conflict():
        background.save_ckpt(text_table(10))
        with pytest.raises(CheckpointLockedError, match=f"CheckpointManager.* at {id(holder):#x}"):
            background.wait()

    try:
        hold_lock_while(holder, conflict)
    finally:
        background.close()


def test_a_ray_manager_and_a_manager_of_this_process_name_each_other(tmp_path):
    ray_manager = RayCheckpointManager(str(tmp_path))
    target = os.path.join(str(tmp_path), ray_manager.resolve_checkpoint_filename(0, 0))
    manager = CheckpointManager(target, OPS)

    def ray_save_conflicts():
        with pytest.raises(CheckpointLockedError, match=f"CheckpointManager.* at {id(manager):#x}"):
            ray_manager.save_checkpoint(pa.table({"n": [1]}), op_idx=0, partition_id=0)

    hold_lock_while(manager, ray_save_conflicts)
    # The other way round: the Ray manager's staging (held while its tasks write).
    staging = _native.ShardStaging(target, holder=ray_manager._lock_holder())
    try:
        with pytest.raises(CheckpointLockedError, match=f"RayCheckpointManager.* at {id(ray_manager):#x}"):
            manager.save_ckpt(text_table(5))
    finally:
        staging.abort()


def test_a_saver_in_another_process_is_still_another_process(tmp_path):
    script = """
        import sys
        from data_juicer_accel import _native
        w = _native.CheckpointWriter(sys.argv[1])
        print("holding", flush=True)
        sys.stdin.readline()
        w.abort()
    """
    other = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(script), str(tmp_path)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert other.stdout.readline() == "holding\n"
        with pytest.raises(CheckpointLockedError, match="another process is saving"):
            CheckpointManager(str(tmp_path), OPS).save_ckpt(text_table(5))
    finally:
        other.communicate("go\n", timeout=60)
    assert other.returncode == 0
