"""Behaviour of ``data-juicer-accel bench`` (never its timings)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tests.conftest import missing, require

require("numpy")
require("zstandard")

from data_juicer_accel import cli  # noqa: E402
from data_juicer_accel.bench import checkpoints as ck  # noqa: E402
from data_juicer_accel.bench import events as ev  # noqa: E402
from data_juicer_accel.bench import report  # noqa: E402
from data_juicer_accel.bench.corpus import (  # noqa: E402
    BATCH_ROWS,
    default_corpus,
    load_user_data,
    parse_size,
    table_buffers,
    text_zstd_ratio,
)

#: The results of a real default run.
DOCS_BENCH_JSON = Path(__file__).resolve().parent.parent / "docs" / "bench.json"


def test_parse_size():
    assert parse_size("1GB") == 10**9
    assert parse_size("256MB") == 256 * 10**6
    assert parse_size("2.5g") == 2_500_000_000
    assert parse_size("1000") == 1000
    with pytest.raises(ValueError):
        parse_size("lots")


def test_default_corpus_is_deterministic_and_dj_shaped():
    a, b = default_corpus(3 * 10**6), default_corpus(3 * 10**6)
    assert a.equals(b)
    assert a.nbytes >= 3 * 10**6
    assert a.column_names == ["text", "meta", "__dj__stats__"]
    assert pa.types.is_struct(a.schema.field("meta").type)
    assert pa.types.is_struct(a.schema.field("__dj__stats__").type)
    assert all(batch.num_rows == BATCH_ROWS for batch in a.to_batches())
    stats = a.column("__dj__stats__").combine_chunks()
    lengths = a.column("text").combine_chunks()
    assert stats.field("text_len").to_pylist()[:50] == [len(t) for t in lengths.to_pylist()[:50]]
    assert not default_corpus(3 * 10**6, seed=1).equals(a)


def test_text_compresses_like_web_text():
    ratio = text_zstd_ratio(default_corpus(20 * 10**6))
    assert 3.0 <= ratio <= 4.0


def test_table_buffers_cover_the_table():
    table = default_corpus(2 * 10**6)
    pieces = table_buffers(table, piece=1 << 16)
    assert max(len(p) for p in pieces) <= 1 << 16
    assert sum(len(p) for p in pieces) == sum(
        b.size for col in table.columns for chunk in col.chunks for b in chunk.buffers() if b is not None
    )


def test_load_user_data_formats(tmp_path):
    table = default_corpus(10**6).select(["text"])
    pq.write_table(table, tmp_path / "d.parquet")
    with pa.OSFile(str(tmp_path / "d.arrow"), "wb") as sink, pa.ipc.new_file(sink, table.schema) as w:
        w.write_table(table)
    with open(tmp_path / "d.jsonl", "w") as f:
        for text in table.column("text").to_pylist():
            f.write(json.dumps({"text": text}) + "\n")
    for name in ("d.parquet", "d.arrow", "d.jsonl"):
        assert load_user_data(str(tmp_path / name)).column("text").to_pylist() == table.column("text").to_pylist()


@pytest.mark.parametrize("key", ["accel", "ipc", "ipc_sharded", "parquet"])
def test_competitors_round_trip(key, tmp_path):
    table = default_corpus(2 * 10**6)
    comp = next(c for c in ck.competitors(2) if c.key == key)
    comp.save(comp.prepare(table), str(tmp_path / "c"))
    assert comp.load(str(tmp_path / "c")).equals(table)
    assert ck.dir_bytes(str(tmp_path / "c")) < table.nbytes


def test_write_event_log_is_analysable_by_the_reference(tmp_path):
    reference = ev.load_reference()
    if reference is None:
        missing("py-data-juicer 1.6.1")
    path = str(tmp_path / "events_x.jsonl")
    lines = ev.write_event_log(path, 3000, partitions=20)
    _, result = ev.analysis_case(reference, str(tmp_path / "ref"), path)
    summary = ev.analysis_summary(result)
    assert summary["total_events"] == lines
    assert summary["partitions"] == 20
    assert summary["partitions_to_skip"]  # most partitions completed


def test_events_case_counts_every_line(tmp_path):
    reference = ev.load_reference()
    if reference is None:
        missing("py-data-juicer 1.6.1")
    rate = ev.events_case(reference, str(tmp_path / "r"), 200, 4, "info-file")
    assert rate > 0
    assert os.path.getsize(tmp_path / "r" / "info.log") > 0


def test_cli_dispatches_subcommands(capsys):
    assert cli.main([]) == 2
    assert "bench" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        cli.main(["bench", "--only", "nothing"])


def test_bench_command_end_to_end(tmp_path):
    """`python -m data_juicer_accel bench` on a tiny corpus, once: the first
    lines say time and disk, the progress never shows 100 % before the end,
    the table, the JSON and the plot come out, with every competitor
    measured."""
    out_json = tmp_path / "r.json"
    args = [sys.executable, "-m", "data_juicer_accel", "bench", "--size", "2MB", "--rounds", "1"]
    args += ["--small-rounds", "1", "--events", "1000", "--analysis-events", "100"]
    args += ["--num-proc", "2", "--json", str(out_json), "--workdir", str(tmp_path / "w")]
    if require("matplotlib"):
        args += ["--plot", str(tmp_path / "p.png")]
    proc = subprocess.run(args, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    _assert_first_lines_and_bar(proc.stderr.splitlines())
    assert "writer" in proc.stdout
    assert proc.stdout.startswith("data-juicer-accel saves ")
    # A path cannot wrap: the line naming the results file is as long as the temp dir's path.
    shown = [line for line in proc.stdout.splitlines() if not line.startswith("results written to ")]
    assert max(len(line) for line in shown) <= report.WIDTH
    assert "temporary disk" in proc.stdout.split("\n\n")[0]
    for word in ("issue", "MISSED", "target"):
        assert word not in proc.stdout
    results = json.loads(out_json.read_text())
    keys = [r["key"] for r in results["checkpoints"]]
    assert keys[0] == "accel" and {"ipc", "ipc_sharded", "parquet"} <= set(keys)
    assert all(r["disk_MB"] > 0 and r["save_MBps"] > 0 for r in results["checkpoints"])
    assert results["small"]["rows"] == 1000
    # The zstd ceiling is sampled after every save, with the writers' threads.
    assert results["ceiling"]["samples"] == len(keys) and results["ceiling"]["threads"] == 2
    assert results["temp_disk"]["peak_bytes"] > 0 and not (tmp_path / "w" / "ckpt-accel-0").exists()
    assert results["command"].startswith("data-juicer-accel bench --size 2MB --rounds 1")
    assert (tmp_path / "p.png").stat().st_size > 0
    if ev.load_accel() is None:
        assert ev.NOT_AVAILABLE in proc.stdout
    else:
        # The floors that bound the event ratios: the loops with no logging.
        floors = results["events"]["no_logging_us"]
        assert set(floors) == set(ev.CALLS) and all(f["1"] > 0 and f["4"] > 0 for f in floors.values())
        assert "with the logging removed" in proc.stdout
    assert report.render(results)


def _assert_first_lines_and_bar(err: list[str]) -> None:
    assert err[0].startswith("expected: about ") and "Ctrl-C stops it" in err[0]
    assert err[1].startswith("temporary disk: at most about ") and "removed at the end" in err[1]
    ours = [line for line in err if line.startswith("[") and "%" in line]  # HF prints bars of its own
    assert ours and all(int(line[1:].split("%")[0]) <= 99 for line in ours)


def test_without_py_data_juicer_the_row_is_its_save_to_disk_call(tmp_path, monkeypatch, capsys):
    """In this process (`--only checkpoints`, 1 MB): the bar advances by the
    costs it planned with, reaching the plan's total exactly at the end."""
    require("datasets")
    from data_juicer_accel.bench.runner import BenchConfig, Runner

    monkeypatch.setitem(sys.modules, "data_juicer", None)  # as if not installed: importing it raises ImportError
    cfg = BenchConfig(size=10**6, rounds=1, small_rounds=1, num_proc=1, only="checkpoints", workdir=str(tmp_path))
    runner = Runner(cfg)
    results = runner.run()
    assert runner.progress.done == pytest.approx(runner.progress.total)
    _assert_first_lines_and_bar(capsys.readouterr().err.splitlines())
    reference = results["checkpoints"][1]
    assert reference["key"] == "hf"
    assert reference["label"] == ck.HFDatasets.label
    text = report.render(results)
    assert "as Data-Juicer 1.6.1 calls it" in text
    assert "py-data-juicer cannot be imported" in text.split("\n\n")[0]  # said in the headline
    assert text.startswith("data-juicer-accel saves ")


def test_a_writer_that_cannot_run_is_listed_with_the_reason(monkeypatch):
    """The runner's choice of writers and the report, on the figures of a
    real run (docs/bench.json) -- no bench run needed."""
    from data_juicer_accel.bench.runner import BenchConfig, Runner

    for name in ("data_juicer", "datasets"):
        monkeypatch.setitem(sys.modules, name, None)
    runner = Runner(BenchConfig(size=10**6, num_proc=2))
    runnable = runner._runnable(ck.competitors(2))
    assert [s["key"] for s in runner.results["skipped"]] == ["hf"]
    assert {c.key for c in runnable} == {"accel", "ipc", "ipc_sharded", "parquet"}
    results = {**json.loads(DOCS_BENCH_JSON.read_text()), "skipped": runner.results["skipped"]}
    said = " ".join(report.render(results).split())  # the report wraps lines at 100 columns
    assert "not measured: " + ck.HFDatasets.label + " -- `datasets` cannot be imported" in said


def test_one_table_renderer_for_the_terminal_and_markdown():
    from data_juicer_accel.tools._format import table

    plain = table(["a", "bb"], [["x", 1], ["yy", None]], right={1})
    assert plain.splitlines() == ["a   bb", "--  --", "x    1", "yy   -"]
    md = table(["a", "bb"], [["x", 1]], right={1}, markdown=True)
    assert md.splitlines() == ["| a | bb |", "|---|---:|", "| x |  1 |"]


def test_bench_only_ray_compares_with_the_reference_on_real_ray(tmp_path):
    require("ray")
    out = tmp_path / "ray.json"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "data_juicer_accel",
            "bench",
            "--only",
            "ray",
            "--size",
            "2MB",
            "--rounds",
            "1",
            "--partitions",
            "2",
            "--json",
            str(out),
            "--workdir",
            str(tmp_path / "w"),
        ],
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    err = proc.stderr.splitlines()
    assert err[0].startswith("expected: about ") and err[1].startswith("temporary disk: at most about ")
    assert list((tmp_path / "w").iterdir()) == []
    results = json.loads(out.read_text())
    rows = results["ray"]
    assert [r["name"] for r in rows][0].startswith("data-juicer-accel")
    assert sorted({r["data"] for r in rows}) == ["random words", "text corpus"]
    assert sum('{"num_cpus": 2}' in r["name"] for r in rows) == 2  # one row per dataset
    assert "text corpus: our save at " in proc.stdout
    assert any("write_parquet" in r["name"] for r in rows)
    assert any(r["name"].startswith("bound: zstd level 1") and r["load_mb_s"] is None for r in rows)
    assert all(r["save_mb_s"] > 0 for r in rows)
    assert all(r["load_mb_s"] > 0 for r in rows if not r["name"].startswith("bound"))

    # Then the partitioned job, unpatched and patched, after the save/load table.
    require("data_juicer")
    job = results["ray_job"]
    assert [r["case"] for r in job["rows"]] == ["reference", "accel"]
    assert job["partitions"] == 2 and job["same_export"] and job["exported_rows"] > 0
    for row in job["rows"]:
        assert row["run_s"] > 0 and row["process_s"] > row["run_s"] and row["ckpt_bytes"] > 0
        assert 0 < row["save_s"] < row["run_s"] * 2  # saves of partitions side by side may overlap
        assert row["checkpoints"] == 6 * 2  # every op of every partition
        assert row["rows"] == job["exported_rows"]
    assert job["rows"][1]["ckpt_bytes_vs_reference"] > 0
    assert proc.stdout.index("write_parquet") < proc.stdout.index("ray_partitioned job")
    assert f"both exported the same {job['exported_rows']:,} rows" in proc.stdout


def test_ray_job_is_listed_as_not_run_without_py_data_juicer(tmp_path, monkeypatch, capsys):
    from data_juicer_accel.bench import cli as bench_cli
    from data_juicer_accel.bench import ray_job

    blocked = tmp_path / "blocked" / "data_juicer"
    blocked.mkdir(parents=True)
    (blocked / "__init__.py").write_text("raise ImportError('blocked by the test')\n")
    monkeypatch.setenv("PYTHONPATH", str(blocked.parent))
    args = cli.build_parser().parse_args(["bench", "--only", "ray"])
    result = bench_cli._run_ray_job(args, 10**6, str(tmp_path))
    assert result == {"not_run": "py-data-juicer cannot be imported (ImportError: blocked by the test)"}
    assert f"not run: {ray_job.TITLE} -- py-data-juicer cannot be imported" in capsys.readouterr().out


def test_ray_job_sums_each_save_from_its_start_to_its_own_end():
    from data_juicer_accel.bench import ray_job

    executor = "| INFO     | data_juicer.core.executor.ray_executor_partitioned:2279 - "
    manager = "| INFO     | data_juicer.utils.ckpt_utils:338 - Saved checkpoint: /w/checkpoints/"
    log = "\n".join(
        [
            f"2026-12-01 00:00:01.000 {executor}Partition 0: Creating checkpoint after operation 2: m",
            f"2026-12-01 00:00:01.500 {executor}Partition 1: Creating checkpoint after operation 2: m",
            "2026-12-01 00:00:01,600\tINFO streaming_executor.py:215 -- Starting execution of Dataset d",
            f"2026-12-01 00:00:02.250 {manager}checkpoint_op_0002_partition_0001.parquet",
            f"2026-12-01 00:00:03.000 {manager}checkpoint_op_0002_partition_0000.parquet",
            f"2026-12-01 00:00:09.000 {manager}checkpoint_op_0005_partition_0000.parquet",  # no start: ignored
        ]
    )
    assert ray_job.save_seconds(log) == pytest.approx(2.0 + 0.75)


def test_ray_job_fails_loudly_when_the_exports_differ():
    from data_juicer_accel.bench import ray_job

    same = {"reference": [{"rows": 3, "digest": "a" * 64}], "accel": [{"rows": 3, "digest": "a" * 64}]}
    ray_job.check_same_export(same)
    differ = {"reference": [{"rows": 3, "digest": "a" * 64}], "accel": [{"rows": 3, "digest": "b" * 64}]}
    with pytest.raises(AssertionError, match="exported different rows"):
        ray_job.check_same_export(differ)


def test_bench_only_pipeline_runs_every_case_of_a_real_pipeline(tmp_path):
    """Each case is a real 1.6.1 DefaultExecutor run; the per-op cases save
    once per op after the first, the end-of-run case once, the others never."""
    require("data_juicer")
    from benches import readme
    from data_juicer_accel.bench import pipeline

    result = pipeline.run_pipeline_bench(300_000, 1, str(tmp_path), np_=1, stall_size=2_000_000, warm_up=False)
    rows = {row["case"]: row for row in result["rows"]}
    assert list(rows) == pipeline.CASES
    assert all(row["seconds"] > 0 for row in rows.values())
    saves = {case: row["saves_per_run"] for case, row in rows.items()}
    assert saves == {"none": 0, "none_cached": 0, "dj_end": 1, "dj_every_op": 6, "accel_fg": 6, "accel_bg": 6}
    exports = {case: (tmp_path / case / "out" / "result.jsonl").read_text() for case in pipeline.CASES}
    assert len(set(exports.values())) == 1 and exports["none"], "every case exports the same rows"
    assert result["stall_at_size"]["saves"] == 5
    result.update(machine={"cpus": 2}, command="data-juicer-accel bench --only pipeline")
    assert "every op, data-juicer-accel, background" in pipeline.format_report(result)
    assert readme.pipeline_markdown(result).count("\n|") == len(pipeline.CASES) + 2  # header, rule, rows


BAD_ARGUMENTS = [
    (["--size", "0"], "argument --size: '0' is too small"),
    (["--size", "lots"], "argument --size: not a size: 'lots'"),
    (["--rounds", "0"], "argument --rounds: must be at least 1, not 0"),
    (["--small-rounds", "-1"], "argument --small-rounds: must be at least 1, not -1"),
    (["--num-proc", "0"], "argument --num-proc: must be at least 1, not 0"),
    (["--events", "10"], "argument --events: must be at least 1,000, not 10"),
    (["--only", "nothing"], "argument --only: invalid choice: 'nothing'"),
    (["--data", "{tmp}/missing.jsonl"], "--data {tmp}/missing.jsonl: no such file or directory"),
    (["--data", "{tmp}/bad.jsonl"], "--data {tmp}/bad.jsonl: cannot be read as jsonl, parquet or Arrow (JSON parse"),
    (["--data", "{tmp}/empty.parquet"], "--data {tmp}/empty.parquet: has no rows"),
    (["--data", "{tmp}/notes.txt"], "--data {tmp}/notes.txt: cannot be read as jsonl, parquet or Arrow"),
    (["--report", "{tmp}/missing.json"], "--report {tmp}/missing.json: No such file or directory"),
    (["--report", "{tmp}/bad.jsonl"], "--report {tmp}/bad.jsonl: not JSON"),
    (["--report", "{tmp}/other.json"], "--report {tmp}/other.json: not the results of `bench --json`"),
    (["--json", "{tmp}/no/such/dir/r.json"], "--json {tmp}/no/such/dir/r.json: no such directory"),
    (["--workdir", "{tmp}/notes.txt"], "--workdir {tmp}/notes.txt: not a directory"),
]


@pytest.mark.parametrize(("args", "says"), BAD_ARGUMENTS, ids=[" ".join(a) for a, _ in BAD_ARGUMENTS])
def test_a_bad_argument_is_one_line_naming_it_before_any_work(tmp_path, args, says):
    (tmp_path / "bad.jsonl").write_text('{"text": "a"}\nnot json\n')
    pq.write_table(pa.table({"text": pa.array([], pa.string())}), tmp_path / "empty.parquet")
    (tmp_path / "notes.txt").write_text("plain text\n")
    (tmp_path / "other.json").write_text('{"something": "else"}')
    tmpdir = tmp_path / "tmpdir"
    tmpdir.mkdir()
    args = [a.format(tmp=tmp_path) for a in args]
    proc = subprocess.run(
        [sys.executable, "-m", "data_juicer_accel", "bench", *args],
        capture_output=True,
        text=True,
        timeout=120,
        env=dict(os.environ, TMPDIR=str(tmpdir)),
    )
    assert proc.returncode == 2
    assert len(proc.stderr.splitlines()) == 1, proc.stderr
    assert proc.stderr.startswith(f"data-juicer-accel bench: {says.format(tmp=tmp_path)}"), proc.stderr
    assert proc.stdout == "" and list(tmpdir.iterdir()) == []  # no work started


def test_plot_without_matplotlib_is_refused_before_the_run(tmp_path):
    code = (
        "import sys; sys.modules['matplotlib'] = None\n"
        "from data_juicer_accel.cli import main\n"
        f"sys.exit(main(['bench', '--size', '2MB', '--plot', {str(tmp_path / 'p.png')!r}]))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.splitlines() == [
        "data-juicer-accel bench: --plot needs matplotlib: pip install 'data-juicer-accel[bench]'"
    ]
    assert proc.stdout == ""


def test_the_report_fits_100_columns_and_explains_its_terms():
    """On the figures of a real default run (docs/bench.json)."""
    results = json.loads(DOCS_BENCH_JSON.read_text())
    text = report.render(results)
    assert max(len(line) for line in text.splitlines()) <= 100
    for unexplained in ("x ref (1 t)", "save CPU-s/GB", "% of zstd ceiling"):
        assert unexplained not in text
    terms = "\n".join(line for line in text.splitlines() if line.startswith("  "))
    for term in ("ratio:", "peak +MB:", "save x / load x:", "max x:", "CPU s/GB:", "of zstd speed:", "log sink:"):
        assert term in terms, term
    # The load trade-off, in the headline.
    headline = text.split("\n\n")[0]
    assert "  load: " in headline and "memory-maps" in headline and "not comparable" in headline


def test_ctrl_c_during_only_pipeline_leaves_nothing(tmp_path):
    """Interrupted while a case's Data-Juicer process (np 2: a pool of
    workers) runs its ops: one line, exit 130, no process and no file left
    in the temp dir."""
    require("data_juicer")
    from tests.test_interrupt import Command, _assert_one_line

    cmd = Command(["bench", "--only", "pipeline", "--size", "2MB", "--rounds", "1"], tmp_path)
    cmd.wait_for(lambda: any(line.startswith("temporary disk: ") for line in cmd.err))
    assert cmd.err[0].startswith("expected: about ")
    workdir = Path(cmd.err[1].split(" in ", 1)[1].split(" (removed")[0])

    def at_work() -> bool:  # the first case's log shows an op running
        log = workdir / "none.log"
        return log.exists() and "OP [" in log.read_text(errors="replace")

    with cmd.changed:  # polled: the log is a file, not the command's output
        while not at_work() and cmd.proc.poll() is None:
            cmd.changed.wait(0.1)
    cmd.wait_for(lambda: True)
    _, after = cmd.interrupt()
    assert cmd.proc.returncode == 130, "".join(cmd.err)
    _assert_one_line(after)
    assert cmd.out == []
    cmd.assert_nothing_left()


# --- `bench --only bucket`: checkpoints in an S3-compatible bucket -------------------------------


def _bench(args: list[str], env: dict[str, str] | None = None, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "data_juicer_accel", "bench", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
    )


def test_bench_only_bucket_compares_with_the_reference_in_the_same_bucket(tmp_path, s3_server, s3_bucket, s3_env):
    """Tiny, against the session's server: every writer saved, listed, loaded;
    the ratios are over the reference's parquet; the bucket is empty after."""
    out = tmp_path / "bucket.json"
    s3_server.put(s3_bucket, "runs-of-others/x", b"not the bench's")
    proc = _bench(
        ["--only", "bucket", "--bucket", f"s3://{s3_bucket}/runs", "--size", "2MB", "--rounds", "2"]
        + ["--json", str(out)]
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    print(proc.stdout)
    err = proc.stderr.splitlines()
    assert err[0].startswith("expected: about ") and "Ctrl-C stops it" in err[0]
    assert err[1].startswith("in the bucket: at most about ") and f"s3://{s3_bucket}/runs/dja-bench-" in err[1]
    result = json.loads(out.read_text())["bucket"]
    rows = {r["key"]: r for r in result["writers"]}
    assert list(rows)[:2] == ["accel", "parquet"]
    for row in rows.values():
        assert row["save_MBps"] > 0 and row["load_MBps"] > 0 and row["save_rows_per_s"] > 0
        assert row["bucket_bytes"] > 0 and row["objects"] >= 1 and len(row["raw"]["save_s"]) == 2
    assert rows["parquet"]["save_x"] == rows["parquet"]["bytes_x"] == 1.0
    assert rows["accel"]["bytes_x"] == rows["accel"]["bucket_bytes"] / rows["parquet"]["bucket_bytes"]
    assert ("lance" in rows) != ("not measured: Lance -- pylance is not installed" in proc.stdout)
    assert "reference parquet" in proc.stdout and "bytes x" in proc.stdout
    # A path cannot wrap: the line naming the results file is as long as the temp dir's path.
    shown = [line for line in proc.stdout.splitlines() if not line.startswith("results written to ")]
    assert max(len(line) for line in shown) <= report.WIDTH
    assert s3_server.list_keys(s3_bucket) == ["runs-of-others/x"]
    assert s3_server.pending_multipart_uploads(s3_bucket) == []
    # --report prints the same tables again.
    again = _bench(["--report", str(out)])
    assert again.returncode == 0 and again.stdout.strip() == proc.stdout.split("\nresults written")[0].strip()


def test_bench_only_bucket_local_server_is_self_contained(tmp_path):
    """`--local-server`: moto's server started on loopback for the run, gone after it."""
    require("moto.moto_server.werkzeug_app")
    workdir = tmp_path / "w"
    args = ["--only", "bucket", "--local-server", "--size", "1MB", "--rounds", "1", "--no-progress"]
    proc = _bench([*args, "--workdir", str(workdir)])
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "moto's server on loopback" in proc.stdout and "data-juicer-accel" in proc.stdout
    assert proc.stdout.rstrip().endswith(
        "command: data-juicer-accel bench --size 1MB --rounds 1 --only bucket --local-server"
    )
    assert list(workdir.iterdir()) == []


def test_bench_only_bucket_with_job_times_the_partitioned_job_in_the_bucket(tmp_path, s3_server, s3_bucket, s3_env):
    """`--with-job`: the ray_partitioned job unpatched and patched, each with its
    checkpoints in the bucket (listed there, every op of every partition), the
    same export; the bucket and the work dir (the reference's stray local
    ``s3:`` directory among it) are empty after."""
    require("data_juicer")
    require("ray")
    out, workdir = tmp_path / "bucket.json", tmp_path / "w"
    args = ["--only", "bucket", "--bucket", f"s3://{s3_bucket}/runs", "--size", "1MB", "--rounds", "1"]
    args += ["--with-job", "--partitions", "2", "--no-progress", "--workdir", str(workdir), "--json", str(out)]
    proc = _bench(args, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    print(proc.stdout)
    job = json.loads(out.read_text())["bucket"]["job"]
    assert job["checkpoint_dir"].startswith(f"s3://{s3_bucket}/runs/dja-bench-")
    assert [row["case"] for row in job["rows"]] == ["reference", "accel"] and job["same_export"]
    for row in job["rows"]:
        assert row["checkpoints"] == 6 * 2 and row["ckpt_bytes"] > 0 and row["run_s"] > 0 and row["save_s"] > 0
        assert row["rows"] == job["exported_rows"] > 0
    assert "ray_partitioned job" in proc.stdout and "checkpoint_dir: a fresh prefix per run under s3://" in proc.stdout
    assert "--partitions 2 --with-job\n" in proc.stdout
    assert s3_server.list_keys(s3_bucket) == []
    assert list(workdir.iterdir()) == []


def _closed_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


BUCKET_BAD_ARGUMENTS = [
    ([], {}, "--only bucket needs --bucket s3://bucket/prefix, or --local-server"),
    (["--bucket", "gs://b/p"], {}, "--bucket: checkpoint location gs://... is not supported"),
    (["--bucket", "/tmp/b"], {}, "--bucket /tmp/b: not an S3 URI (expected s3://bucket/prefix)"),
    (["--bucket", "s3://key:secret@b/p"], {}, "--bucket: checkpoint location s3://<credentials>@...: credentials"),
    (["--bucket", "s3://b/p", "--local-server"], {}, "--bucket and --local-server: give one"),
    (["--bucket", "s3://b/p"], {"AWS_ALLOW_HTTP": "false"}, "--bucket s3://b/p: the endpoint is plain http"),
    (["--bucket", "s3://b/p"], {"AWS_ENDPOINT_URL": "closed"}, "--bucket s3://b/p: cannot reach it at http://"),
    (["--bucket", "s3://no-such-bucket/p"], {}, "--bucket s3://no-such-bucket/p: no bucket 'no-such-bucket' at"),
    (["--local-server", "--with-job", "--data", "x.jsonl"], {}, "--with-job runs the job on the default corpus"),
]


@pytest.mark.parametrize(
    ("args", "env", "says"), BUCKET_BAD_ARGUMENTS, ids=[" ".join(a) + str(e) for a, e, _ in BUCKET_BAD_ARGUMENTS]
)
def test_a_bad_bucket_argument_is_one_line_before_any_work(tmp_path, s3_env, args, env, says):
    env = dict(os.environ, **env, TMPDIR=str(tmp_path))
    if env["AWS_ENDPOINT_URL"] == "closed":
        env["AWS_ENDPOINT_URL"] = f"http://127.0.0.1:{_closed_port()}"
    proc = _bench(["--only", "bucket", *args], env=env, timeout=120)
    assert proc.returncode == 2
    assert len(proc.stderr.splitlines()) == 1, proc.stderr
    assert proc.stderr.startswith(f"data-juicer-accel bench: {says}"), proc.stderr
    assert "secret" not in proc.stderr
    assert proc.stdout == "" and list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("args", [["--bucket", "s3://b/p"], ["--local-server"], ["--with-job"]])
def test_bucket_options_go_with_only_bucket(args):
    proc = _bench(["--only", "checkpoints", *args], timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.splitlines() == [f"data-juicer-accel bench: {args[0]} goes with --only bucket"]


def test_bucket_local_server_without_moto_is_one_line():
    code = (
        "import sys; sys.modules['moto'] = None\n"
        "from data_juicer_accel.cli import main\n"
        "sys.exit(main(['bench', '--only', 'bucket', '--local-server']))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.splitlines() == [
        "data-juicer-accel bench: --local-server: moto's S3 server is not installed (no module 'moto'): "
        "pip install 'moto[server]'"
    ]


def test_ctrl_c_during_only_bucket_deletes_what_it_wrote(tmp_path, s3_server, s3_bucket, s3_env):
    """Interrupted once its writers have objects in the bucket: one line,
    exit 130, and nothing left under the prefix it was given."""
    from tests.test_interrupt import Command, _assert_one_line

    args = ["bench", "--only", "bucket", "--bucket", f"s3://{s3_bucket}/a/b", "--size", "8MB", "--rounds", "100"]
    cmd = Command(args, tmp_path)
    with cmd.changed:  # polled: the bucket is no output of the command
        while not s3_server.list_keys(s3_bucket, "a/b/") and cmd.proc.poll() is None:
            cmd.changed.wait(0.1)
    cmd.wait_for(lambda: True)
    _, after = cmd.interrupt()
    assert cmd.proc.returncode == 130, "".join(cmd.err)
    _assert_one_line(after, allowed_before=("[",))
    assert cmd.out == []
    assert s3_server.list_keys(s3_bucket) == []
    cmd.assert_nothing_left()


def test_bucket_without_pylance_lance_is_listed_as_not_measured(tmp_path, s3_server, s3_bucket, s3_env):
    code = (
        "import sys; sys.modules['lance'] = None\n"
        "from data_juicer_accel.cli import main\n"
        f"sys.exit(main(['bench', '--only', 'bucket', '--bucket', 's3://{s3_bucket}/p', '--size', '1MB',"
        " '--rounds', '1', '--no-progress']))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "not measured: Lance -- pylance is not installed (pip install pylance)" in proc.stdout
    assert "reference parquet" in proc.stdout and "\nLance " not in proc.stdout
    assert s3_server.list_keys(s3_bucket) == []
