"""Loads racing saves from another process see one whole generation."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pyarrow as pa

from data_juicer_accel.utils.ckpt_utils import CheckpointManager

OPS = [{"a_mapper": {}}]
SAVER = """
    import os, sys
    import pyarrow as pa
    from data_juicer_accel.utils.ckpt_utils import CheckpointManager
    ckpt_dir, stop = sys.argv[1], sys.argv[2]
    tables = [pa.table({{"gen": ["a"] * {a}, "n": list(range({a}))}}),
              pa.table({{"gen": ["b"] * {b}, "n": list(range({b}))}})]
    m = CheckpointManager(ckpt_dir, [{{"a_mapper": {{}}}}], num_proc=8)
    m.record({{"a_mapper": {{}}}})
    saves = 0
    while not os.path.exists(stop):
        m.save_ckpt(tables[saves % 2])
        saves += 1
        with open(stop + ".count.tmp", "w") as f:
            f.write(str(saves))
        os.replace(stop + ".count.tmp", stop + ".count")
    print(saves)
"""
ROWS = {"a": 30000, "b": 17000}


def saves_so_far(stop: str) -> int:
    with open(stop + ".count") as f:
        return int(f.read())


def test_loads_during_saves_by_another_process_return_old_or_new_whole(tmp_path):
    ckpt_dir, stop = str(tmp_path / "ckpt"), str(tmp_path / "stop")
    saver = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(SAVER.format(**ROWS)), ckpt_dir, stop],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        while not os.path.exists(stop + ".count"):
            assert saver.poll() is None, saver.communicate()
        m = CheckpointManager(ckpt_dir, OPS)
        seen = {"a": 0, "b": 0}
        loads = 0
        # At least 300 loads, and on until they have spanned 60 saves.
        while loads < 300 or (saves_so_far(stop) < 60 and loads < 20_000):
            loads += 1
            table: pa.Table = m.load_ckpt()  # never CheckpointCorruptError
            generations = set(table.column("gen").to_pylist())
            assert len(generations) == 1, generations
            gen = generations.pop()
            assert table.num_rows == ROWS[gen]
            assert table.column("n").to_pylist() == list(range(ROWS[gen]))
            seen[gen] += 1
    finally:
        open(stop, "w").close()
        out, err = saver.communicate(timeout=120)
    assert saver.returncode == 0, err[-2000:]
    assert int(out) >= 60, "the saver ran during the loads"
    assert seen["a"] and seen["b"], seen
