"""``CheckpointManager(..., background=True)``: save_ckpt returns after a
zero-copy snapshot and a native thread commits it.

Behaviour only: what ends up committed, when calls wait, which failures are
raised and logged, what survives the cache files being unlinked, process exit
(normal, error, fork) and SIGKILL. Nothing here asserts timing.
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import textwrap
import time

import pytest

from data_juicer_accel import _native
from data_juicer_accel.utils.ckpt_utils import CheckpointManager
from tests.conftest import text_table
from tests.test_ckpt_crash import committed_generation, generation, kill_a_saver, op_record

datasets = pytest.importorskip("datasets")

FAULT = "DATA_JUICER_ACCEL_FAULT"


def manager(ckpt_dir, ops=None, **kwargs) -> CheckpointManager:
    return CheckpointManager(str(ckpt_dir), ops or [], num_proc=2, background=True, **kwargs)


def subprocess_env() -> dict:
    return dict(os.environ, PYTHONPATH=os.pathsep.join([os.getcwd(), os.environ.get("PYTHONPATH", "")]))


def test_save_returns_then_commits_what_was_saved(tmp_path, table):
    m = manager(tmp_path / "ckpt")
    m.op_record = [{"a_mapper": {}}]
    assert m.save_ckpt(table) == m.ckpt_ds_dir
    m.wait()
    with open(tmp_path / "ckpt" / "ckpt_op.json") as f:
        assert json.load(f) == [{"a_mapper": {}}]
    assert m.load_ckpt().equals(table)
    m.close()


def test_load_waits_for_the_save_in_flight(tmp_path):
    m = manager(tmp_path / "ckpt")
    for k in range(3):
        m.op_record = op_record(k)
        m.save_ckpt(generation(k))
    assert m.load_ckpt().equals(generation(2))  # no wait() before: load_ckpt waits
    m.close()


def test_the_newest_save_wins(tmp_path):
    m = manager(tmp_path / "ckpt")
    committed = []
    m.on_commit = lambda path, ops_done: committed.append(ops_done)
    for k in range(1, 30):
        m.op_record = op_record(k) * k  # k ops done
        m.save_ckpt(generation(k))
    m.wait()
    submitted, last_committed, superseded, busy = m._background_saves.writer.progress
    assert (submitted, last_committed, busy) == (29, 29, False)
    # Every save was either committed (and reported once, in order) or superseded.
    assert committed == sorted(set(committed)) and committed[-1] == 29
    assert len(committed) + superseded == 29
    loaded = m.load_ckpt()
    assert loaded.equals(generation(29))
    with open(tmp_path / "ckpt" / "ckpt_op.json") as f:
        assert json.load(f) == op_record(29) * 29
    m.close()


def test_hf_dataset_with_an_indices_mapping_loads_back_here_and_in_datasets(tmp_path, table):
    ds = datasets.Dataset(datasets.table.InMemoryTable(table)).filter(lambda s: len(s["text"]) % 3 == 0)
    assert ds._indices is not None
    m = manager(tmp_path / "ckpt")
    m.save_ckpt(ds)
    m.close()
    expected = ds.flatten_indices().data.table
    assert m.load_ckpt().data.table.equals(expected)
    reference = datasets.load_from_disk(m.ckpt_ds_dir)
    assert reference.data.table.equals(expected)
    assert reference.features == ds.features


def test_snapshot_survives_cleanup_cache_files(tmp_path):
    """Data-Juicer calls ``cleanup_cache_files()`` on the newest dataset right
    before ``save_ckpt``, which unlinks the cache files of the older ones a
    background save may still be reading. Their buffers are memory-mapped,
    and a mapping stays valid after its file is unlinked."""
    cache = tmp_path / "cache"
    source = datasets.Dataset(datasets.table.InMemoryTable(text_table(40_000)))
    entering = source.map(lambda s: {"text": s["text"].upper()}, cache_file_name=str(cache / "cache-a.arrow"))
    expected = entering.to_list()
    m = manager(tmp_path / "ckpt")
    m.save_ckpt(entering)  # the checkpoint of the dataset entering the next op
    after_next_op = entering.map(lambda s: {"n": len(s["text"])}, cache_file_name=str(cache / "cache-b.arrow"))
    assert after_next_op.cleanup_cache_files() == 1
    assert not os.path.exists(cache / "cache-a.arrow")
    exported = tmp_path / "export.jsonl"
    after_next_op.to_json(str(exported))  # the export reads the newest table meanwhile
    m.wait()
    assert m.load_ckpt().to_list() == expected
    assert sum(1 for _ in open(exported)) == len(expected)
    m.close()


def test_a_failure_is_raised_on_the_next_call_logged_and_the_previous_checkpoint_kept(
    tmp_path, table, log_messages, monkeypatch
):
    m = manager(tmp_path / "ckpt")
    m.op_record = op_record(1)
    m.save_ckpt(generation(1))
    m.wait()
    monkeypatch.setenv(FAULT, "before_swap:eio")
    m.op_record = op_record(2)
    m.save_ckpt(generation(2))  # fails in the background
    with pytest.raises(OSError, match="Input/output error") as info:
        m.wait()
    assert str(tmp_path / "ckpt") in str(info.value)
    errors = [text for level, text in log_messages if level == "ERROR"]
    assert any("Background checkpoint save" in text and "Input/output error" in text for text in errors), errors
    m.wait()  # reported once
    monkeypatch.delenv(FAULT)
    assert committed_generation(str(tmp_path / "ckpt")) == 1
    m.close()


def test_an_unreported_failure_is_raised_by_the_next_save(tmp_path, monkeypatch):
    m = manager(tmp_path / "ckpt")
    monkeypatch.setenv(FAULT, "shard_write:enospc")
    m.op_record = op_record(1)
    m.save_ckpt(generation(1))
    while m._background_saves.writer.progress[3]:  # until the failed save is done
        time.sleep(0.01)
    monkeypatch.delenv(FAULT)
    m.op_record = op_record(2)
    with pytest.raises(OSError, match="No space left on device"):
        m.save_ckpt(generation(2))
    m.save_ckpt(generation(2))
    m.close()
    assert committed_generation(str(tmp_path / "ckpt")) == 2


def test_close_then_save_again_starts_a_new_writer(tmp_path, table):
    m = manager(tmp_path / "ckpt")
    m.save_ckpt(table)
    m.close()
    m.close()
    m.save_ckpt(table.slice(0, 10))
    m.close()
    assert m.load_ckpt().num_rows == 10


def test_bad_input_raises_at_the_call_and_queues_nothing(tmp_path):
    m = manager(tmp_path / "ckpt")
    with pytest.raises(TypeError, match=r"CheckpointManager.save_ckpt\(\)"):
        m.save_ckpt([1, 2, 3])
    with pytest.raises(TypeError, match="__arrow_c_stream__"):
        _native.BackgroundCheckpointWriter().submit(str(tmp_path), object(), kind="arrow", files=[])
    m.close()
    assert not os.path.exists(m.ckpt_ds_dir)


EXIT_SCRIPT = textwrap.dedent(
    """
    import os, sys
    from tests.test_ckpt_crash import generation, op_record
    from data_juicer_accel.utils.ckpt_utils import CheckpointManager
    ckpt_dir, how = sys.argv[1], sys.argv[2]
    m = CheckpointManager(ckpt_dir, [], num_proc=2, background=True)
    for k in range(1, 4):
        m.op_record = op_record(k)
        m.save_ckpt(generation(k))
    if how == "fork":
        pid = os.fork()
        if pid == 0:
            sys.exit(0)  # the child runs atexit hooks: they must not wait for a thread it lacks
        os.waitpid(pid, 0)
    if how == "error":
        raise RuntimeError("the pipeline failed after the save")
    """
)


@pytest.mark.parametrize("how", ["normal", "error", "fork"])
def test_exit_waits_for_the_last_save(tmp_path, how):
    ckpt_dir = str(tmp_path / "ckpt")
    proc = subprocess.run(
        [sys.executable, "-c", EXIT_SCRIPT, ckpt_dir, how],
        env=subprocess_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == (1 if how == "error" else 0), proc.stderr
    assert committed_generation(ckpt_dir) == 3


BACKGROUND_SAVER = textwrap.dedent(
    """
    import sys
    from tests.test_ckpt_crash import generation, op_record
    from data_juicer_accel.utils.ckpt_utils import CheckpointManager
    ckpt_dir, first = sys.argv[1], int(sys.argv[2])
    m = CheckpointManager(ckpt_dir, [], num_proc=2, background=True)
    m.on_commit = lambda path, ops_done: print("committed", ops_done, flush=True)
    for k in range(first, first + 100_000):
        table = generation(k)
        m.op_record = op_record(k) * k  # the record's length names the generation
        print("saving", k, flush=True)
        m.save_ckpt(table)
        m.wait()
    """
)


def test_sigkill_during_background_saves_leaves_the_previous_or_the_new_checkpoint(tmp_path):
    rng = random.Random(3)
    ckpt_dir = str(tmp_path / "ckpt")
    m = CheckpointManager(ckpt_dir, [])
    m.op_record = op_record(0)
    m.save_ckpt(generation(0))
    k = 0
    # At least 20 kills, and more while fewer than 20 saves were committed (a
    # loaded machine saves slowly), so the kills land among many committed saves.
    kills = 0
    while kills < 20 or (k <= 20 and kills < 80):
        kills += 1
        found, last_committed = kill_a_saver(BACKGROUND_SAVER, ckpt_dir, k, rng, subprocess_env())
        k = max(found, last_committed)
    assert k > 20


def _sizing_tables():
    """Tables whose byte count pyarrow reckons slice by slice: nulls, odd
    offsets, several chunks, nested values."""
    import pyarrow as pa

    texts = pa.array([None if i % 7 == 0 else "x" * (i % 13) for i in range(301)])
    lists = pa.array([None if i % 5 == 0 else [f"t{j}" for j in range(i % 4)] for i in range(301)])
    structs = pa.array(
        [None if i % 6 == 0 else {"n": i, "ok": i % 3 == 0, "s": str(i)} for i in range(301)],
    )
    numbers = pa.array([None if i % 4 == 0 else i * 0.5 for i in range(301)])
    full = pa.table({"text": texts, "lists": lists, "structs": structs, "numbers": numbers})
    chunks = pa.concat_tables([full.slice(3, 101), full.slice(117, 9), full.slice(130, 150)])
    yield "sliced", full.slice(5, 283)
    yield "chunks", chunks
    yield "no nulls left", full.slice(1, 6)
    yield "hf", datasets.Dataset(full)
    yield "hf mapping", datasets.Dataset(full).select(range(3, 280, 3))
    yield "large types", pa.table({"t": texts.cast(pa.large_string()), "l": lists.cast(pa.large_list(pa.string()))})
    # Columns chunked differently: the C stream cuts batches across chunks,
    # whose bitmaps cover other bytes than pyarrow's chunk-by-chunk count.
    yield (
        "misaligned chunks",
        pa.table(
            {
                "text": pa.chunked_array([texts.slice(0, 10), texts.slice(10, 13)]),
                "meta": pa.chunked_array([structs.slice(0, 5), structs.slice(5, 18)]),
            }
        ),
    )
    yield from _struct_sizing_tables()


def _struct_sizing_tables():
    """Struct columns: pyarrow counts no struct bitmap, but every child
    bitmap the producer exported, null or not in the rows it covers."""
    import pyarrow as pa

    dj = pa.table(
        {
            "text": [f"sample {i} " * (i % 9) for i in range(240)],
            "meta": [{"source": None if i % 5 == 0 else f"s{i % 3}", "len": i} for i in range(240)],
            "__dj__stats__": [
                {"lang": "en", "lang_score": i / 240, "words": None if i % 7 == 0 else [f"w{i}"] * (i % 3)}
                for i in range(240)
            ],
        }
    )
    yield "dj", dj
    yield "dj sliced", dj.slice(8, 3)  # no null source or words in rows 8..11
    yield "dj chunks", pa.concat_tables([dj.slice(1, 50), dj.slice(61, 3), dj.slice(100, 133)])
    yield "dj hf mapping", datasets.Dataset(dj).select(range(5, 230, 2))
    nested = pa.array(
        [None if i % 5 == 0 else {"o": {"x": i, "y": None if i % 2 else "s"}, "e": {}} for i in range(97)],
        pa.struct([("o", pa.struct([("x", pa.int64()), ("y", pa.string())])), ("e", pa.struct([]))]),
    )
    in_lists = pa.array([None if i % 4 == 0 else [{"a": i, "b": None}] * (i % 3) for i in range(97)])
    lists_in = pa.array([{"l": None if i % 6 == 0 else [True] * (i % 4), "t": "ab"} for i in range(97)])
    nests = pa.table({"nested": nested, "in_lists": in_lists, "lists_in": lists_in})
    yield "nested", nests
    yield "nested sliced", nests.slice(13, 41)
    yield "nested chunks", pa.concat_tables([nests.slice(3, 20), nests.slice(40, 1), nests.slice(50, 44)])


def _shard_files(ckpt_ds_dir) -> list:
    with open(os.path.join(ckpt_ds_dir, "state.json")) as f:
        return [entry["filename"] for entry in json.load(f)["_data_files"]]


@pytest.mark.parametrize("limit_delta", [0, 1])
def test_background_saves_shard_exactly_like_foreground_saves(tmp_path, monkeypatch, limit_delta):
    """The writer thread sizes shards from the buffers itself; a shard limit
    of exactly the data's byte count (or one more) tells a byte off."""
    from data_juicer_accel.utils import ckpt_sources

    for name, data in _sizing_tables():
        source = ckpt_sources._describe_source(data, "test")
        assert "size_like_datasets" in source.background_sizing(1), name  # sized in the writer thread
        nbytes = source.nbytes if hasattr(source, "num_rows") else data.nbytes
        monkeypatch.setattr(ckpt_sources, "MAX_SHARD_BYTES", nbytes + limit_delta)
        saved = []
        for background in (False, True):
            ckpt_dir = tmp_path / f"{name}-{limit_delta}-{background}"
            m = CheckpointManager(str(ckpt_dir), [], num_proc=1, background=background)
            m.save_ckpt(data)
            m.close()
            saved.append(_shard_files(m.ckpt_ds_dir))
        if name == "misaligned chunks":  # a few bytes off at most: the same rows, maybe one shard more
            assert len(saved[1]) - len(saved[0]) in (0, 1), name
            continue
        assert saved[0] == saved[1], name
        assert len(saved[0]) == (2 if limit_delta == 0 else 1), name


PEAK_MEMORY_SCRIPT = textwrap.dedent(
    """
    import resource, sys
    import pyarrow as pa
    from data_juicer_accel.utils.ckpt_utils import CheckpointManager
    ckpt_dir, background, source = sys.argv[1], sys.argv[2] == "background", sys.argv[3]
    rows = pa.array([f"row {i:07d} " + "lorem ipsum dolor sit amet " * 36 for i in range(3000)])
    # 100 chunks sharing one 3 MB array: 300 MB to a saver, 3 MB of memory
    # until something copies the rows.
    table = pa.table({"text": pa.chunked_array([rows] * 100)})
    data = table
    if source != "table":
        import datasets
        data = datasets.Dataset(datasets.table.InMemoryTable(table))
        if source == "filtered dataset":  # an indices mapping: rows gathered a step at a time
            data = data.select(range(0, len(data), 2))
    def peak():
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    before = peak()
    m = CheckpointManager(ckpt_dir, [], num_proc=2, background=background)
    for _ in range(3):
        m.save_ckpt(data)
    m.close()
    print(table.nbytes, peak() - before)
    """
)


@pytest.mark.parametrize("source", ["table", "dataset", "filtered dataset"])
@pytest.mark.parametrize("mode", ["background", "foreground"])
def test_saving_holds_references_not_copies(tmp_path, mode, source):
    """Peak memory while saving a 300 MB table grows by a small part of it
    (compression buffers), never by a copy of the rows."""
    proc = subprocess.run(
        [sys.executable, "-c", PEAK_MEMORY_SCRIPT, str(tmp_path / "ckpt"), mode, source],
        env=subprocess_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    table_bytes, growth = map(int, proc.stdout.split())
    assert table_bytes > 250_000_000
    assert growth < table_bytes / 4, f"peak memory grew {growth / 1e6:.0f} MB saving {table_bytes / 1e6:.0f} MB"
