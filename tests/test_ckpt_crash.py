"""Crashes, full disks, concurrent writers and damaged files, for real:
SIGKILLed processes, a size-limited tmpfs, two processes on one directory.

The kill harness runs 50 trials by default and 500 with `pytest -m slow`.
"""

from __future__ import annotations

import json
import os
import random
import re
import signal
import subprocess
import sys
import textwrap
import time

import pyarrow as pa
import pytest

from data_juicer_accel import CheckpointCorruptError, _native
from data_juicer_accel.utils.ckpt_utils import CheckpointManager


def op_record(k: int) -> list:
    """The op record of generation k: one op whose argument names k."""
    return [{"generation_mapper": {"k": k}}]


PROCESS = op_record(0)


def generation(k: int) -> pa.Table:
    """The rows a save of generation k holds; sizes vary so saves take a while."""
    rows = 20_000 + (k % 5) * 7_000
    return pa.table({"gen": pa.array([k] * rows, pa.int64()), "text": [f"g{k} row {i} " * 6 for i in range(rows)]})


SAVER = textwrap.dedent(
    """
    import sys
    from tests.test_ckpt_crash import generation, op_record
    from data_juicer_accel.utils.ckpt_utils import CheckpointManager
    ckpt_dir, first = sys.argv[1], int(sys.argv[2])
    for k in range(first, first + 100_000):
        table = generation(k)  # built before the save, so kills land in saves
        m = CheckpointManager(ckpt_dir, [], num_proc=2)
        m.op_record = op_record(k)
        print("saving", k, flush=True)
        m.save_ckpt(table)
        print("committed", k, flush=True)
    """
)


def committed_generation(ckpt_dir: str) -> int:
    """Loads the checkpoint and checks rows and op record agree; returns k."""
    with open(os.path.join(ckpt_dir, "ckpt_op.json")) as f:
        record = json.load(f)
    k = record[0]["generation_mapper"]["k"]
    m = CheckpointManager(ckpt_dir, record + [{"next_mapper": {}}])
    assert m.ckpt_available and m.get_left_process_list() == [{"next_mapper": {}}]
    assert m.load_ckpt().equals(generation(k)), f"op record says generation {k}, rows differ"
    return k


def run_kill_trials(tmp_path, trials: int, seed: int) -> dict:
    rng = random.Random(seed)
    ckpt_dir = str(tmp_path / "ckpt")
    m = CheckpointManager(ckpt_dir, [])
    m.op_record = op_record(0)
    m.save_ckpt(generation(0))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([os.getcwd(), os.environ.get("PYTHONPATH", "")]))
    outcomes = {"previous": 0, "new": 0}
    k = 0
    # At least `trials` kills, and more while fewer than `trials` saves were
    # committed (a loaded machine saves slowly), so the kills land among many
    # committed saves whatever the machine's speed.
    kills = 0
    while kills < trials or (k <= trials and kills < 4 * trials):
        kills += 1
        found, last_committed = kill_a_saver(SAVER, ckpt_dir, k, rng, env)
        outcomes["new" if found > last_committed else "previous"] += 1
        k = max(found, last_committed)
    outcomes["generations"] = k
    return outcomes


def kill_a_saver(script: str, ckpt_dir: str, k: int, rng: random.Random, env: dict) -> tuple[int, int]:
    """Starts `script` saving generations k+1, k+2, ... into `ckpt_dir`,
    SIGKILLs it at a random moment, and checks what the directory holds.
    Returns (the generation found, the last one the saver said committed)."""
    proc = subprocess.Popen(
        [sys.executable, "-c", script, ckpt_dir, str(k + 1)], stdout=subprocess.PIPE, text=True, env=env
    )
    assert proc.stdout.readline().startswith("saving")  # past start-up, into the save loop
    time.sleep(rng.uniform(0, 0.4))
    proc.send_signal(signal.SIGKILL)
    output = proc.communicate()[0].split("\n")
    # A kill can cut the last line; a save whose "committed" line was cut
    # did finish, which the check below allows as last_committed + 1.
    committed = [int(m.group(1)) for line in output if (m := re.fullmatch(r"committed (\d+)", line))]
    last_committed = max(committed, default=k)
    found = committed_generation(ckpt_dir)
    # The directory holds the last committed save, or the one being committed.
    assert found in (last_committed, last_committed + 1), (found, last_committed)
    return found, last_committed


def test_sigkill_during_saves_never_tears_a_checkpoint(tmp_path):
    outcomes = run_kill_trials(tmp_path, trials=50, seed=1)
    print(f"kill trials: {outcomes}")
    assert outcomes["generations"] > 50, "the kills must land among many committed saves"
    # The next save clears what the killed ones left behind.
    m = CheckpointManager(str(tmp_path / "ckpt"), PROCESS)
    m.save_ckpt(generation(0))
    assert [n for n in os.listdir(tmp_path / "ckpt") if n.startswith(".")] == [".accel.lock"]


@pytest.mark.slow
def test_sigkill_during_saves_500_trials(tmp_path):
    outcomes = run_kill_trials(tmp_path, trials=500, seed=2)
    print(f"kill trials: {outcomes}")
    assert outcomes["generations"] > 500


# ------------------------------------------------------------ disk full


@pytest.fixture
def tiny_fs(tmp_path):
    """A 3 MiB tmpfs (needs root, as in CI); skipped where mounts are not allowed."""
    mount_point = tmp_path / "tiny"
    mount_point.mkdir()
    rc = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=3m", "tmpfs", str(mount_point)], capture_output=True)
    if rc.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {rc.stderr.decode().strip()}")
    yield mount_point
    subprocess.run(["umount", "-l", str(mount_point)], check=False)


def test_disk_full_raises_and_keeps_previous(tiny_fs):
    ckpt_dir = str(tiny_fs / "ckpt")
    small = generation(1).slice(0, 100)
    m = CheckpointManager(ckpt_dir, PROCESS, num_proc=2)
    m.op_record = PROCESS[:1]
    m.save_ckpt(small)
    big = pa.table({"noise": pa.array([os.urandom(256) for _ in range(40_000)], pa.binary())})  # 10 MB, incompressible
    m.op_record = PROCESS[:2]
    with pytest.raises(OSError, match="No space left on device") as info:
        m.save_ckpt(big)
    assert ckpt_dir in str(info.value)
    assert sorted(os.listdir(ckpt_dir)) == [".accel.lock", "ckpt_op.json", "latest"]  # temporaries gone
    again = CheckpointManager(ckpt_dir, PROCESS)
    assert len(again.op_record) == 1 and again.load_ckpt().equals(small)


# ------------------------------------------------------------ two processes


HOLD_AND_SAVE = textwrap.dedent(
    """
    import sys, pyarrow as pa
    from data_juicer_accel import _native
    w = _native.CheckpointWriter(sys.argv[1])
    w.write_data(pa.table({"gen": pa.array([7] * 5, pa.int64())}))
    print("holding", flush=True)
    sys.stdin.readline()
    w.add_file("ckpt_op.json", b"[]")
    w.commit("arrow")
    print("done", flush=True)
    """
)


def test_concurrent_saver_in_another_process_gets_a_clear_error(tmp_path):
    ckpt_dir = str(tmp_path / "ckpt")
    m = CheckpointManager(ckpt_dir, PROCESS)
    m.save_ckpt(generation(1))
    other = subprocess.Popen(
        [sys.executable, "-c", HOLD_AND_SAVE, ckpt_dir], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        assert other.stdout.readline() == "holding\n"
        with pytest.raises(
            _native.CheckpointLockedError, match=f"another process is saving a checkpoint into {ckpt_dir}"
        ):
            m.save_ckpt(generation(2))
        # What is there is still the first save, whole.
        assert CheckpointManager(ckpt_dir, PROCESS).load_ckpt().equals(generation(1))
        other.stdin.write("go\n")
        other.stdin.flush()
        assert other.stdout.readline() == "done\n"
    finally:
        other.kill()
        other.wait()
    assert CheckpointManager(ckpt_dir, PROCESS).load_ckpt().column("gen").to_pylist() == [7] * 5


READ_SLOWLY = textwrap.dedent(
    """
    import sys, datasets
    ds = datasets.load_from_disk(sys.argv[1])   # memory-maps the shards
    print("loaded", flush=True)
    sys.stdin.readline()
    gens = set(ds.data.table.column("gen").to_pylist())
    print(len(ds), sorted(gens), flush=True)
    """
)


def test_reader_in_another_process_keeps_its_rows_while_we_save(tmp_path):
    ckpt_dir = str(tmp_path / "ckpt")
    m = CheckpointManager(ckpt_dir, PROCESS, zstd_level=1)
    m.save_ckpt(generation(3))
    reader = subprocess.Popen(
        [sys.executable, "-c", READ_SLOWLY, m.ckpt_ds_dir], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        assert reader.stdout.readline() == "loaded\n"
        for k in (4, 5):
            m.save_ckpt(generation(k))
        reader.stdin.write("go\n")
        reader.stdin.flush()
        assert reader.stdout.readline().strip() == f"{generation(3).num_rows} [3]"
    finally:
        reader.kill()
        reader.wait()


# ------------------------------------------------------------ damaged files


def _damage(path: str, how: str, rng: random.Random) -> None:
    size = os.path.getsize(path)
    if how == "truncate":
        os.truncate(path, rng.randrange(0, max(size, 1)))
    else:
        with open(path, "r+b") as f:
            at = rng.randrange(size)
            f.seek(at)
            byte = f.read(1)[0]
            f.seek(at)
            f.write(bytes([byte ^ (1 << rng.randrange(8))]))


@pytest.mark.parametrize("how", ["flip", "truncate"])
@pytest.mark.parametrize(
    "target",
    [
        "data-00000-of-00002.arrow",
        "data-00001-of-00002.arrow",
        _native.MANIFEST_FILE,
        "state.json",
        "dataset_info.json",
        "ckpt_op.json",
    ],
)
def test_damaged_file_raises_naming_it_or_starts_afresh(tmp_path, target, how, log_messages):
    rng = random.Random(f"{target}{how}")
    table = generation(2)
    for trial in range(8):
        ckpt_dir = str(tmp_path / f"t{trial}")
        m = CheckpointManager(ckpt_dir, PROCESS, num_proc=2)
        m.op_record = PROCESS[:3]
        m.save_ckpt(table)
        path = os.path.join(m.ckpt_ds_dir, target)
        _damage(path, how, rng)
        log_messages.clear()
        again = CheckpointManager(ckpt_dir, PROCESS)
        if not again.ckpt_available:
            # Only a damaged op record may lead here, with a warning.
            assert target == "ckpt_op.json"
            assert any(lvl == "WARNING" and "from the beginning" in msg for lvl, msg in log_messages)
            continue
        try:
            loaded = again.load_ckpt()
        except (CheckpointCorruptError, OSError) as e:
            assert m.ckpt_ds_dir in str(e), str(e)
            continue
        # It loaded: then the damage changed nothing the rows depend on.
        assert loaded.equals(table), f"trial {trial}: wrong rows loaded"
        assert target in (_native.MANIFEST_FILE, "ckpt_op.json", "dataset_info.json", "state.json")
