"""A background save commits exactly the rows the table held when
``save_ckpt`` returned, whatever memory those rows live in, and never
crashes the process: memory the caller can still write (numpy arrays
wrapped without a copy, a file memory-mapped from disk) is copied before
``save_ckpt`` returns, and a stream that calls back into Python is read
before it returns. HF datasets' tables and pyarrow's own buffers stay
zero-copy (``test_ckpt_background.py::test_saving_holds_references_not_copies``).

``lock_taken:slow`` holds the writer thread 100 ms before it writes the
first shard, so a change the caller makes right after ``save_ckpt`` returns
lands before the writer reads the rows."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import threading

import numpy as np
import pyarrow as pa
import pytest

from data_juicer_accel.utils.ckpt_utils import CheckpointManager


def manager(ckpt_dir) -> CheckpointManager:
    return CheckpointManager(str(ckpt_dir), [], num_proc=2, background=True)


def subprocess_env() -> dict:
    return dict(os.environ, PYTHONPATH=os.pathsep.join([os.getcwd(), os.environ.get("PYTHONPATH", "")]))


def test_numpy_arrays_changed_after_the_save_returned_are_saved_as_they_were(tmp_path, monkeypatch, fault_hook):
    values = np.arange(300_000, dtype=np.int64)
    scores = np.linspace(0.0, 1.0, 300_000)
    table = pa.table({"n": values, "score": scores, "text": [f"row {i}" for i in range(300_000)]})
    assert table.column("n").chunk(0).buffers()[1].address == values.ctypes.data, "pyarrow wraps numpy memory"
    expected = table.to_pydict()
    monkeypatch.setenv(fault_hook, "lock_taken:slow")
    m = manager(tmp_path / "ckpt")
    m.save_ckpt(table)
    values[:] = -1  # the caller reuses its arrays for the next step
    scores[:] = np.nan
    m.wait()
    assert m.load_ckpt().to_pydict() == expected
    m.close()


def _memory_mapped_table(path, rows: int) -> pa.Table:
    table = pa.table({"n": np.arange(rows, dtype=np.int64), "text": [f"text of row {i}" for i in range(rows)]})
    with pa.OSFile(str(path), "wb") as sink, pa.ipc.new_file(sink, table.schema) as writer:
        writer.write_table(table, max_chunksize=10_000)
    mapped = pa.ipc.open_file(pa.memory_map(str(path))).read_all()
    assert mapped.equals(table)
    return mapped


def test_a_memory_mapped_file_rewritten_in_place_after_the_save_is_saved_as_it_was(tmp_path, monkeypatch, fault_hook):
    path = tmp_path / "data.arrow"
    mapped = _memory_mapped_table(path, 200_000)
    expected = mapped.to_pydict()
    monkeypatch.setenv(fault_hook, "lock_taken:slow")
    m = manager(tmp_path / "ckpt")
    m.save_ckpt(mapped)
    with open(path, "r+b") as f:  # same size, other bytes: the mapping shows them
        size = f.seek(0, os.SEEK_END)
        f.seek(0)
        f.write(b"\x55" * size)
    m.wait()
    assert m.load_ckpt().to_pydict() == expected
    m.close()


TRUNCATE_SCRIPT = textwrap.dedent(
    """
    import os, sys
    import pyarrow as pa
    from tests.test_ckpt_snapshot import _memory_mapped_table, manager
    ckpt_dir, path = sys.argv[1], sys.argv[2]
    mapped = _memory_mapped_table(path, 200_000)
    expected = mapped.to_pydict()
    m = manager(ckpt_dir)
    m.save_ckpt(mapped)
    os.truncate(path, 0)  # reading the mapping now is SIGBUS
    m.wait()
    print("same rows:", m.load_ckpt().to_pydict() == expected)
    m.close()
    """
)


def test_a_memory_mapped_file_truncated_after_the_save_does_not_kill_the_process(tmp_path, fault_hook):
    env = dict(subprocess_env(), **{fault_hook: "lock_taken:slow"})
    proc = subprocess.run(
        [sys.executable, "-c", TRUNCATE_SCRIPT, str(tmp_path / "ckpt"), str(tmp_path / "data.arrow")],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, (proc.returncode, proc.stderr[-3000:])
    assert proc.stdout.strip() == "same rows: True"


def test_a_python_generator_stream_is_read_before_the_save_returns(tmp_path):
    table = pa.table({"n": np.arange(30_000), "text": [f"row {i}" for i in range(30_000)]})
    pulled_by: list = []

    def batches():
        for batch in table.to_batches(max_chunksize=5_000):
            pulled_by.append(threading.current_thread())
            yield batch

    m = manager(tmp_path / "ckpt")
    m.save_ckpt(pa.RecordBatchReader.from_batches(table.schema, batches()))
    assert pulled_by == [threading.current_thread()] * 6, "read by the caller, before save_ckpt returned"
    m.wait()
    assert m.load_ckpt().equals(table)
    m.close()


class CallsBackIntoPython:
    """An ``__arrow_c_stream__`` object whose batches Python produces on demand."""

    def __init__(self, table: pa.Table):
        self.table = table
        self.pulled = 0

    def __arrow_c_stream__(self, requested_schema=None):
        def batches():
            for batch in self.table.to_batches(max_chunksize=4_000):
                self.pulled += 1
                yield batch

        reader = pa.RecordBatchReader.from_batches(self.table.schema, batches())
        return reader.__arrow_c_stream__(requested_schema)


EXIT_RIGHT_AFTER_SCRIPT = textwrap.dedent(
    """
    import sys
    import numpy as np
    import pyarrow as pa
    from tests.test_ckpt_snapshot import CallsBackIntoPython, manager
    table = pa.table({"n": np.arange(40_000), "text": [f"row {i}" for i in range(40_000)]})
    source = CallsBackIntoPython(table)
    manager(sys.argv[1]).save_ckpt(source)
    print("pulled before return:", source.pulled)
    """
)


def test_a_stream_calling_back_into_python_is_saved_when_the_process_exits_right_after(tmp_path):
    """The interpreter is shutting down when the exit hook waits for the
    save: a stream read then could not run its Python code."""
    ckpt_dir = tmp_path / "ckpt"
    proc = subprocess.run(
        [sys.executable, "-c", EXIT_RIGHT_AFTER_SCRIPT, str(ckpt_dir)],
        env=subprocess_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip() == "pulled before return: 10"
    loaded = CheckpointManager(str(ckpt_dir), []).load_ckpt()
    assert loaded.column("n").to_pylist() == list(range(40_000))


@pytest.mark.parametrize("kind", ["record batch", "sliced table"])
def test_other_pyarrow_shapes_are_snapshotted_too(tmp_path, monkeypatch, fault_hook, kind):
    values = np.arange(100_000, dtype=np.int64)
    data = pa.record_batch({"n": values}) if kind == "record batch" else pa.table({"n": values}).slice(10, 50_000)
    expected = data.to_pydict()
    monkeypatch.setenv(fault_hook, "lock_taken:slow")
    m = manager(tmp_path / "ckpt")
    m.save_ckpt(data)
    values[:] = 7
    m.wait()
    assert m.load_ckpt().to_pydict() == expected
    m.close()


class SourceBroke(RuntimeError):
    pass


def test_an_exception_of_the_callers_stream_reaches_the_caller_as_it_was_and_queues_nothing(tmp_path, table):
    def batches():
        yield table.to_batches()[0]
        raise SourceBroke("the source broke")

    m = manager(tmp_path / "ckpt")
    with pytest.raises(SourceBroke, match="the source broke"):
        m.save_ckpt(pa.RecordBatchReader.from_batches(table.schema, batches()))
    m.wait()
    assert not os.path.exists(m.ckpt_ds_dir)
    m.save_ckpt(table)
    assert m.load_ckpt().equals(table)
    m.close()
