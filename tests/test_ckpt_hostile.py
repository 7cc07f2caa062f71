"""A checkpoint a stranger wrote or tampered with loads whole and verified, or
fails with an exception naming the file: no wrong rows, nothing read outside
the checkpoint directory, no hang, no false corruption report."""

from __future__ import annotations

import json
import os
import pickle
import shutil
import subprocess
import sys
import textwrap
import threading
import time

import datasets
import pyarrow as pa
import pytest

from data_juicer_accel import CheckpointCorruptError, CheckpointLockedError, _native, errors
from data_juicer_accel.tools import inspect_ckpt
from data_juicer_accel.utils.ckpt_utils import CheckpointManager
from tests.conftest import requires_reference

OPS = [{"a_mapper": {}}, {"b_filter": {"k": 1}}]


def saved(path, data, num_proc=2) -> CheckpointManager:
    m = CheckpointManager(str(path), OPS, num_proc=num_proc)
    m.record(OPS[0])
    m.save_ckpt(data)
    return m


def manifest(m: CheckpointManager) -> dict:
    with open(os.path.join(m.ckpt_ds_dir, _native.MANIFEST_FILE)) as f:
        return json.load(f)


def write_manifest(m: CheckpointManager, content: dict) -> None:
    with open(os.path.join(m.ckpt_ds_dir, _native.MANIFEST_FILE), "w") as f:
        json.dump(content, f)


def rewrite_listed_file(m: CheckpointManager, name: str, data: bytes) -> None:
    """Replaces a file and makes the manifest agree (size and checksum)."""
    path = os.path.join(m.ckpt_ds_dir, name)
    os.unlink(path)
    with open(path, "wb") as f:
        f.write(data)
    content = manifest(m)
    for entry in content["shards"] + content["files"]:
        if entry["file"] == name:
            entry["bytes"] = len(data)
            entry["xxh3_64"] = _native.xxh3_64_hex(data)
    write_manifest(m, content)


def load(path):
    return CheckpointManager(str(path), OPS).load_ckpt()


# ------------------------------------------------ verified or refused


def copy_in_name_order(src: str, dst: str) -> None:
    """As `cp` of a sorted listing would: the manifest first, so it is the oldest file."""
    os.makedirs(dst)
    for name in sorted(os.listdir(src)):
        shutil.copy(os.path.join(src, name), os.path.join(dst, name))
    oldest = os.stat(os.path.join(dst, _native.MANIFEST_FILE)).st_mtime_ns - 10**9
    os.utime(os.path.join(dst, _native.MANIFEST_FILE), ns=(oldest, oldest))


def test_flipped_byte_in_a_copy_made_in_name_order_is_refused(tmp_path, table):
    m = saved(tmp_path / "a", datasets.Dataset(table))
    copy = tmp_path / "b"
    shutil.copytree(tmp_path / "a", copy, ignore=shutil.ignore_patterns("latest"), symlinks=True)
    copy_in_name_order(m.ckpt_ds_dir, str(copy / "latest"))
    shard = next(n for n in sorted(os.listdir(copy / "latest")) if n.endswith(".arrow"))
    with open(copy / "latest" / shard, "r+b") as f:
        f.seek(os.path.getsize(copy / "latest" / shard) // 2)
        byte = f.read(1)
        f.seek(-1, 1)
        f.write(bytes([byte[0] ^ 0x01]))
    with pytest.raises(CheckpointCorruptError, match=f"{shard}.*xxh3"):
        load(copy)


def test_state_json_listing_a_file_outside_the_directory_is_refused(tmp_path, table):
    m = saved(tmp_path / "ckpt", datasets.Dataset(table))
    outside = tmp_path / "outside"
    datasets.Dataset(pa.table({"secret": ["x"] * 7})).save_to_disk(str(outside))
    state = json.loads((tmp_path / "ckpt" / "latest" / "state.json").read_text())
    state["_data_files"] = [{"filename": str(outside / "data-00000-of-00001.arrow")}]
    (tmp_path / "ckpt" / "latest" / "state.json").write_text(json.dumps(state))
    with pytest.raises(CheckpointCorruptError, match="state.json.*not a regular file inside"):
        m.load_ckpt()


def test_shard_symlinked_outside_is_refused_even_with_its_checksum(tmp_path, table):
    m = saved(tmp_path / "ckpt", table, num_proc=1)
    shard = manifest(m)["shards"][0]
    outside = tmp_path / "outside.arrow"
    shutil.copy(os.path.join(m.ckpt_ds_dir, shard["file"]), outside)
    os.unlink(os.path.join(m.ckpt_ds_dir, shard["file"]))
    os.symlink(outside, os.path.join(m.ckpt_ds_dir, shard["file"]))
    with pytest.raises(CheckpointCorruptError, match=f"{shard['file']}.*symbolic link"):
        m.load_ckpt()


@pytest.mark.parametrize("target", ["/dev/zero", "fifo"])
def test_fifo_or_device_in_place_of_a_file_fails_at_once(tmp_path, table, target):
    m = saved(tmp_path / "ckpt", datasets.Dataset(table))
    for name in ["state.json", manifest(m)["shards"][0]["file"]]:
        path = os.path.join(m.ckpt_ds_dir, name)
        with open(path, "rb") as f:
            original = f.read()
        os.unlink(path)
        if target == "fifo":
            os.mkfifo(path)
        else:
            os.symlink(target, path)
        outcome: list = []
        reader = threading.Thread(target=lambda found=outcome: found.append(_load_outcome(m)), daemon=True)
        reader.start()
        reader.join(timeout=60)
        assert outcome, f"load blocked on a {target} in place of {name}"
        assert isinstance(outcome[0], CheckpointCorruptError), outcome
        assert name in str(outcome[0])
        os.unlink(path)
        with open(path, "wb") as f:  # put it back for the next round
            f.write(original)


def _load_outcome(m):
    try:
        return m.load_ckpt()
    except BaseException as e:  # noqa: BLE001 - the test inspects it
        return e


def _lie_about_rows(m: CheckpointManager) -> str:
    content = manifest(m)
    first, second = content["shards"][:2]
    first["rows"] -= 1
    second["rows"] += 1  # the total still agrees
    write_manifest(m, content)
    return first["file"]


def test_per_shard_row_counts_are_checked_on_load_and_by_inspect(tmp_path, table, capsys):
    m = saved(tmp_path, table, num_proc=2)
    assert len(manifest(m)["shards"]) >= 2
    shard = _lie_about_rows(m)
    with pytest.raises(CheckpointCorruptError, match=f"{shard}.*rows, the manifest says"):
        m.load_ckpt()
    from data_juicer_accel.cli import main

    assert main(["inspect", str(tmp_path), "--verify"]) != 0
    assert "rows, the manifest says" in capsys.readouterr().out
    assert inspect_ckpt is not None


# ------------------------------------------------ hostile contents, valid checksums


@pytest.mark.parametrize(
    "state",
    [b"[]", b'{"_fingerprint": 1}', b"{not json", b'{"_format_kwargs": 3}', b"[" * 100_000 + b"]" * 100_000],
)
def test_hostile_state_json_with_valid_checksum_is_corrupt_naming_it(tmp_path, table, state):
    m = saved(tmp_path, datasets.Dataset(table))
    rewrite_listed_file(m, "state.json", state)
    with pytest.raises(CheckpointCorruptError, match="state.json"):
        m.load_ckpt()


def test_hostile_dataset_info_with_valid_checksum_is_corrupt_naming_it(tmp_path, table):
    m = saved(tmp_path, datasets.Dataset(table))
    rewrite_listed_file(m, "dataset_info.json", b'{"features": 12}')
    with pytest.raises(CheckpointCorruptError, match="dataset_info.json"):
        m.load_ckpt()


def test_too_deep_op_record_warns_and_starts_afresh(tmp_path, table, log_messages):
    saved(tmp_path, table)
    record = tmp_path / "ckpt_op.json"
    os.unlink(record)
    record.write_text("[" * 100_000 + "]" * 100_000)
    m = CheckpointManager(str(tmp_path), OPS)
    assert not m.ckpt_available and m.get_left_process_list() == OPS
    assert any(level == "WARNING" and "ckpt_op.json" in msg for level, msg in log_messages)


@requires_reference
def test_too_deep_op_record_reference_raises(tmp_path):
    from data_juicer.utils.ckpt_utils import CheckpointManager as Reference

    os.makedirs(tmp_path / "latest")
    (tmp_path / "ckpt_op.json").write_text("[" * 100_000 + "]" * 100_000)
    with pytest.raises(RecursionError):
        Reference(str(tmp_path), OPS)


# ------------------------------------------------ exceptions users can act on


def test_exceptions_live_in_errors_and_pickle_with_their_type():
    assert CheckpointCorruptError is errors.CheckpointCorruptError is _native.CheckpointCorruptError
    assert CheckpointLockedError is errors.CheckpointLockedError is _native.CheckpointLockedError
    for err in [CheckpointCorruptError("corrupted checkpoint file x"), CheckpointLockedError("held")]:
        back = pickle.loads(pickle.dumps(err))
        assert type(back) is type(err) and str(back) == str(err)


def _load_in_worker(path):
    return CheckpointManager(path, OPS).load_ckpt().num_rows


def test_corrupt_error_crosses_a_process_pool_with_its_type(tmp_path, table):
    import multiprocessing

    m = saved(tmp_path, table)
    shard = os.path.join(m.ckpt_ds_dir, manifest(m)["shards"][0]["file"])
    with open(shard, "r+b") as f:
        f.seek(100)
        f.write(b"\xff\xfe")
    with multiprocessing.get_context("spawn").Pool(1) as pool:
        with pytest.raises(CheckpointCorruptError, match="xxh3"):
            pool.apply(_load_in_worker, (str(tmp_path),))


class StreamBroke(RuntimeError):
    pass


def _failing_stream(table: pa.Table, error: BaseException) -> pa.RecordBatchReader:
    def batches():
        yield from table.slice(0, 100).to_batches()
        raise error

    return pa.RecordBatchReader.from_batches(table.schema, batches())


@pytest.mark.parametrize("error", [StreamBroke("source went away"), KeyboardInterrupt()])
def test_exception_from_the_callers_stream_propagates_as_it_was(tmp_path, table, error):
    m = saved(tmp_path, table)
    with pytest.raises(type(error)) as raised:
        m.save_ckpt(_failing_stream(table, error))
    assert raised.value is error
    assert load(tmp_path).num_rows == table.num_rows  # the previous checkpoint


def test_ckpt_dir_that_is_a_file_is_not_a_directory_error(tmp_path):
    path = tmp_path / "a_file"
    path.write_text("x")
    with pytest.raises(NotADirectoryError, match="a_file"):
        CheckpointManager(str(path), OPS)


@requires_reference
def test_ckpt_dir_that_is_a_file_reference_raises_file_exists(tmp_path):
    from data_juicer.utils.ckpt_utils import CheckpointManager as Reference

    path = tmp_path / "a_file"
    path.write_text("x")
    with pytest.raises(FileExistsError):
        Reference(str(path), OPS)


@pytest.mark.parametrize("method", ["save_ckpt", "save_checkpoint"])
def test_wrong_argument_names_the_method_called(tmp_path, method):
    m = CheckpointManager(str(tmp_path), OPS)
    with pytest.raises(TypeError, match=rf"CheckpointManager\.{method}\(\) expects"):
        getattr(m, method)([{"text": "a"}])


def test_missing_datasets_names_the_extra_to_install(tmp_path, table):
    saved(tmp_path, datasets.Dataset(table))
    script = f"""
        import sys
        sys.modules["datasets"] = None  # as if not installed
        from data_juicer_accel.utils.ckpt_utils import CheckpointManager
        try:
            CheckpointManager({str(tmp_path)!r}, {OPS!r}).load_ckpt()
        except ImportError as e:
            print("ImportError:", e)
    """
    out = subprocess.run([sys.executable, "-c", textwrap.dedent(script)], capture_output=True, text=True, timeout=120)
    assert "ImportError:" in out.stdout, out.stderr
    assert "pip install 'data-juicer-accel[datasets]'" in out.stdout


# ------------------------------------------------ symlinked names


def test_latest_symlink_inside_the_directory_is_saved_through(tmp_path, table):
    first = saved(tmp_path, table.slice(0, 50))
    os.rename(first.ckpt_ds_dir, tmp_path / "real")
    os.symlink("real", tmp_path / "latest")
    again = saved(tmp_path, table.slice(0, 70))
    assert os.path.islink(tmp_path / "latest")
    assert load(tmp_path).num_rows == 70
    again.save_ckpt(table.slice(0, 30))
    assert load(tmp_path).num_rows == 30


@requires_reference
def test_latest_symlink_reference_saves_through_it(tmp_path, table):
    from data_juicer.utils.ckpt_utils import CheckpointManager as Reference

    os.makedirs(tmp_path / "real")
    os.symlink("real", tmp_path / "latest")
    ref = Reference(str(tmp_path), OPS)
    ref.record(OPS[0])
    ref.save_ckpt(datasets.Dataset(table.slice(0, 70)))
    assert len(ref.load_ckpt()) == 70


def test_latest_symlink_leading_outside_is_refused(tmp_path, table):
    os.makedirs(tmp_path / "elsewhere" / "real")
    os.makedirs(tmp_path / "ckpt")
    os.symlink(tmp_path / "elsewhere" / "real", tmp_path / "ckpt" / "latest")
    with pytest.raises(OSError, match="outside the checkpoint directory"):
        saved(tmp_path / "ckpt", table)
    assert os.listdir(tmp_path / "elsewhere" / "real") == []


def test_symlinked_lock_file_is_never_followed(tmp_path, table):
    os.makedirs(tmp_path / "ckpt")
    target = tmp_path / "not_here"
    os.symlink(target, tmp_path / "ckpt" / ".accel.lock")
    with pytest.raises(OSError, match=r"\.accel\.lock.*symbolic link"):
        saved(tmp_path / "ckpt", table)
    assert not os.path.lexists(target)


# ------------------------------------------------ memory


def test_checkpoint_bigger_than_the_memory_allowed_is_memory_error(tmp_path):
    # ~256 MB of text that zstd shrinks to almost nothing.
    table = pa.table({"text": pa.array(["a" * 1024] * 256_000)})
    saved(tmp_path, table, num_proc=1)
    script = f"""
        import resource
        from data_juicer_accel.utils.ckpt_utils import CheckpointManager
        m = CheckpointManager({str(tmp_path)!r}, {OPS!r})
        with open("/proc/self/statm") as f:
            used = int(f.read().split()[0]) * resource.getpagesize()
        resource.setrlimit(resource.RLIMIT_AS, (used + (96 << 20), resource.RLIM_INFINITY))
        try:
            m.load_ckpt()
            print("loaded")
        except MemoryError as e:
            print("MemoryError:", e)
    """
    out = subprocess.run([sys.executable, "-c", textwrap.dedent(script)], capture_output=True, text=True, timeout=300)
    assert "MemoryError:" in out.stdout, (out.stdout, out.stderr[-2000:])
    assert "needs" in out.stdout and "RLIMIT_AS" in out.stdout
    assert "Corrupt" not in out.stdout + out.stderr


def test_a_shard_that_cannot_be_read_into_memory_is_memory_error_with_its_size(tmp_path):
    """48 MiB that zstd cannot shrink, loaded with 24 MiB of address space to
    spare: reading the shard's bytes already fails to allocate. That is a
    MemoryError saying how much was needed, not an OSError or a corrupt file."""
    table = pa.table({"blob": pa.array([os.urandom(1 << 20) for _ in range(48)], pa.binary())})
    m = saved(tmp_path, table, num_proc=1)
    [shard] = manifest(m)["shards"]
    assert shard["bytes"] > 40 << 20, "random bytes stay big"
    script = f"""
        import resource
        from data_juicer_accel.utils.ckpt_utils import CheckpointManager
        m = CheckpointManager({str(tmp_path)!r}, {OPS!r})
        with open("/proc/self/statm") as f:
            used = int(f.read().split()[0]) * resource.getpagesize()
        resource.setrlimit(resource.RLIMIT_AS, (used + (24 << 20), resource.RLIM_INFINITY))
        try:
            m.load_ckpt()
            print("loaded")
        except MemoryError as e:
            print("MemoryError:", e)
        except BaseException as e:
            print(type(e).__name__, e)
    """
    out = subprocess.run([sys.executable, "-c", textwrap.dedent(script)], capture_output=True, text=True, timeout=300)
    assert "MemoryError:" in out.stdout, (out.stdout, out.stderr[-2000:])
    assert f"{shard['file']} needs {shard['bytes']} bytes" in out.stdout
    assert "Corrupt" not in out.stdout + out.stderr
    assert load(tmp_path).num_rows == 48  # nothing was damaged


def test_loads_at_every_memory_limit_near_the_need_load_or_raise_memory_error(tmp_path):
    """Limits stepping 2 MiB at a time across the point where a load starts
    to fit: each attempt loads every row or raises MemoryError; the process
    never aborts on an allocation that fails half-way."""
    table = pa.table({"text": pa.array([f"a{i:07d}" * 128 for i in range(48_000)])})
    saved(tmp_path, table, num_proc=2)
    script = f"""
        import gc, resource
        from data_juicer_accel.utils.ckpt_utils import CheckpointManager
        m = CheckpointManager({str(tmp_path)!r}, {OPS!r}, num_proc=2)
        outcomes = []
        for extra in range(40 << 20, 400 << 20, 2 << 20):  # across the need: rows, working memory, arenas
            with open("/proc/self/statm") as f:
                used = int(f.read().split()[0]) * resource.getpagesize()
            resource.setrlimit(resource.RLIMIT_AS, (used + extra, resource.RLIM_INFINITY))
            try:
                outcomes.append(m.load_ckpt().num_rows)
            except MemoryError:
                outcomes.append("MemoryError")
            finally:
                resource.setrlimit(resource.RLIMIT_AS, (resource.RLIM_INFINITY, resource.RLIM_INFINITY))
                gc.collect()
        print(*outcomes)
    """
    out = subprocess.run([sys.executable, "-c", textwrap.dedent(script)], capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    outcomes = out.stdout.split()
    assert set(outcomes) == {"MemoryError", "48000"}, outcomes


# ------------------------------------------------ forks


def test_child_forked_during_a_save_does_not_keep_the_lock(tmp_path, table):
    children = []

    def batches():
        yield from table.slice(0, 100).to_batches()
        pid = os.fork()
        if pid == 0:  # the child lingers past the parent's save
            import time

            time.sleep(5)
            os._exit(0)
        children.append(pid)
        yield from table.slice(100).to_batches()

    m = saved(tmp_path, table.slice(0, 10))
    m.save_ckpt(pa.RecordBatchReader.from_batches(table.schema, batches()))
    try:
        assert children, "the stream forked"
        m.save_ckpt(table.slice(0, 40))  # not CheckpointLockedError
        assert load(tmp_path).num_rows == 40
    finally:
        for pid in children:
            os.waitpid(pid, 0)


def test_children_forked_while_saves_take_or_release_the_lock_never_hold_it(tmp_path, table, monkeypatch, fault_hook):
    m = CheckpointManager(str(tmp_path), OPS, num_proc=2, background=True)
    m.record(OPS[0])
    monkeypatch.setenv(fault_hook, "lock_taken:slow,lock_released:slow")  # 100 ms in each
    children = []
    try:
        for rows in range(10, 15):
            m.save_ckpt(table.slice(0, rows))  # taken and released by the writer thread
            for _ in range(12):  # forks that land in every part of it
                pid = os.fork()
                if pid == 0:  # the child outlives the parent's save
                    time.sleep(0.5)
                    os._exit(0)
                children.append(pid)
                time.sleep(0.02)
            m.wait()  # not CheckpointLockedError
    finally:
        for pid in children:
            os.waitpid(pid, 0)
        m.close()
    assert load(tmp_path).num_rows == 14


def test_a_child_forked_while_a_killed_saver_took_the_lock_does_not_keep_it(tmp_path, fault_hook):
    script = f"""
        import os, signal, time
        import pyarrow as pa
        from data_juicer_accel.utils.ckpt_utils import CheckpointManager
        m = CheckpointManager({str(tmp_path)!r}, {OPS!r}, background=True)
        os.environ[{fault_hook!r}] = "lock_taken:slow"  # 100 ms between flock and the rest
        m.save_ckpt(pa.table({{"text": ["row"] * 10}}))
        time.sleep(0.05)
        pid = os.fork()
        if pid == 0:  # lives on after its parent is killed, off the parent's pipes
            os.dup2(os.open(os.devnull, os.O_WRONLY), 1)
            os.dup2(1, 2)
            time.sleep(30)
            os._exit(0)
        print(pid, flush=True)
        os.kill(os.getpid(), signal.SIGKILL)
    """
    proc = subprocess.run([sys.executable, "-c", textwrap.dedent(script)], capture_output=True, text=True, timeout=60)
    child = int(proc.stdout.split()[0])
    try:
        saved(tmp_path, pa.table({"text": ["row"] * 5}))  # not CheckpointLockedError
    finally:
        os.kill(child, 9)
    assert load(tmp_path).num_rows == 5


# ------------------------------------------------ Ctrl-C


def test_ctrl_c_interrupts_a_long_save_and_keeps_the_previous_checkpoint(tmp_path, table):
    saved(tmp_path, table.slice(0, 25))
    script = f"""
        import os, signal, sys, threading, time
        import pyarrow as pa
        from data_juicer_accel.utils.ckpt_utils import CheckpointManager
        schema = pa.schema([("text", pa.string())])
        def batches():  # a save that would take ten minutes
            for i in range(6000):
                time.sleep(0.1)
                yield pa.record_batch([pa.array(["row"] * 10)], schema=schema)
        threading.Timer(1.0, lambda: os.kill(os.getpid(), signal.SIGINT)).start()
        m = CheckpointManager({str(tmp_path)!r}, {OPS!r})
        start = time.monotonic()
        try:
            m.save_ckpt(pa.RecordBatchReader.from_batches(schema, batches()))
        except KeyboardInterrupt:
            print("interrupted after", round(time.monotonic() - start), "s")
    """
    out = subprocess.run([sys.executable, "-c", textwrap.dedent(script)], capture_output=True, text=True, timeout=120)
    assert "interrupted after" in out.stdout, out.stderr[-2000:]
    assert load(tmp_path).num_rows == 25
    assert not [n for n in os.listdir(tmp_path) if n.startswith(".latest")]


def test_ctrl_c_interrupts_a_long_load(tmp_path, fault_hook):
    """3,000 record batches, each decoded 100 ms late by the test-only fault
    hook: a load of several minutes, which SIGINT must end with
    KeyboardInterrupt (and the checkpoint stays loadable)."""
    schema = pa.schema([("text", pa.string())])
    batches = [pa.record_batch([pa.array([f"row {i}"] * 4)], schema=schema) for i in range(3000)]
    saved(tmp_path, pa.RecordBatchReader.from_batches(schema, batches))
    script = f"""
        import os, signal, threading, time
        from data_juicer_accel.utils.ckpt_utils import CheckpointManager
        m = CheckpointManager({str(tmp_path)!r}, {OPS!r})
        threading.Timer(1.0, lambda: os.kill(os.getpid(), signal.SIGINT)).start()
        start = time.monotonic()
        try:
            m.load_ckpt()
            print("loaded")
        except KeyboardInterrupt:
            print("interrupted after", round(time.monotonic() - start, 1), "s")
    """
    env = dict(os.environ, **{fault_hook: "decode:slow"})
    out = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(script)], capture_output=True, text=True, timeout=120, env=env
    )
    assert "interrupted after" in out.stdout, (out.stdout, out.stderr[-2000:])
    assert load(tmp_path).num_rows == 4 * 3000


def test_inspect_does_not_block_on_a_fifo_op_record(tmp_path, table, capsys):
    saved(tmp_path, table)
    os.unlink(tmp_path / "ckpt_op.json")
    os.mkfifo(tmp_path / "ckpt_op.json")
    from data_juicer_accel.cli import main

    codes: list = []
    runner = threading.Thread(target=lambda: codes.append(main(["inspect", str(tmp_path)])), daemon=True)
    runner.start()
    runner.join(timeout=60)
    assert codes, "inspect blocked on a FIFO"
    assert "ckpt_op.json" in capsys.readouterr().out
