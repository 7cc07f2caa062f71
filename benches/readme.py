"""Writes a bench run's figures into README.md, so that the README says what
docs/bench.json measured. A maintainer's tool, not shipped: run from the
repository's root (docs/regenerate-bench.sh runs it after a run)::

    python benches/readme.py docs/bench.json README.md docs/bench-pipeline.json docs/bench-ray.json

Two marked regions are replaced: ``bench-headline`` (the headline lines) and
``bench-summary`` (the command, the machine and the main table); given the JSON
of a ``bench --only pipeline`` run as third argument, ``bench-pipeline`` too,
and given that of a ``bench --only ray`` run as fourth, ``bench-ray``."""

from __future__ import annotations

import json
import re
import sys

from data_juicer_accel.bench import pipeline, ray_checkpoints, report
from data_juicer_accel.tools._format import table

REGIONS = ("bench-headline", "bench-summary", "bench-pipeline", "bench-ray")


def headline_markdown(results: dict) -> str:
    first, *rest = report.headline(results, where=False)
    return "\n".join([f"**{first}**", "", *(f"- {line.strip()}" for line in rest)])


def machine_line(results: dict) -> str:
    m = results.get("machine", {})
    load = m.get("loadavg_start") or [None]
    others = m.get("other_processes_cores")
    return (
        f"{m.get('cpus')} cores, {m.get('memory_gb', '?')} GB ({m.get('platform')}, Python {m.get('python')}, "
        f"pyarrow {m.get('pyarrow')})"
        + (f", load average {load[0]:.2f} at the start" if load[0] is not None else "")
        + (f", {_others_label(results)} using {others:.2f} cores on average" if others is not None else "")
        + (f", {m['date']}" if m.get("date") else "")
    )


def _others_label(results: dict) -> str:
    # Ray's raylet, object store and workers run outside the bench's process
    # tree, so the CPU share of "other processes" counts them too.
    return "processes outside the bench's, Ray's among them," if "ray" in results else "other processes"


def summary_markdown(results: dict) -> str:
    rows = results.get("checkpoints") or []
    ours = next((r for r in rows if r["key"] == "accel"), None)
    if ours is None:
        return "This run measured no checkpoints (run the bench without `--only`)."
    body = []
    for r in rows:
        bound = report.save_bound(results, r)
        body.append(
            [
                r["label"],
                f"{r['save_MBps']:,.0f}",
                f"{r['load_MBps']:,.0f}",
                f"{r['disk_MB']:,.0f}",
                "-" if r is ours else f"{ours['save_MBps'] / r['save_MBps']:.2f}",
                "-" if r is ours or bound is None else f"{bound:.2f}",
            ]
        )
    headers = ["checkpoint writer", "save MB/s", "load MB/s", "on disk MB", "accel save x", "at most"]
    corpus = results.get("corpus", {})
    ceiling = results.get("ceiling") or {}
    lines = [
        f"Measured with `{results.get('command', 'data-juicer-accel bench')}` on {machine_line(results)}; "
        f"{corpus.get('bytes', 0) / 1e6:,.0f} MB of Data-Juicer-shaped rows, "
        f"num_proc={results.get('config', {}).get('num_proc')}, medians of {results.get('config', {}).get('rounds')} "
        "round(s). Full output: [docs/bench.txt](docs/bench.txt).",
        "",
        table(headers, body, right={1, 2, 3, 4, 5}, markdown=True),
    ]
    if ceiling:
        lines += [
            "",
            f"*at most*: the best save ratio any zstd writer can reach here — zstd level {ceiling['level']} alone "
            f"compresses the same bytes at {ceiling['all_cores_MBps']:,.0f} MB/s on {ceiling['threads']} threads.",
        ]
    return "\n".join(lines)


def pipeline_markdown(result: dict) -> str:
    """The per-op checkpoint pipeline table of a ``bench --only pipeline --json`` run."""
    body = [
        [
            r["label"],
            f"{r['seconds']:.1f}",
            f"{r['vs_none']:.2f}",
            str(r["saves_per_run"]),
            "-" if r["stall_ms_median"] is None else f"{r['stall_ms_median']:.1f} / {r['stall_ms_max']:.1f}",
        ]
        for r in result["rows"]
    ]
    headers = ["case", "run() s", "x none", "saves", "stall ms, median / max"]
    lines = [
        f"Measured with `{result['command']}` on {machine_line(result)}: six CPU ops of py-data-juicer 1.6.1 over "
        f"{result['data_bytes'] / 1e6:,.0f} MB of jsonl text, `np: {result['np']}`, "
        f"median of {result['rounds']} interleaved round(s).",
        "",
        table(headers, body, right={1, 2, 3, 4}, markdown=True),
    ]
    if result.get("stall_at_size"):
        stall = pipeline.stall_sentence(result["stall_at_size"])
        lines += ["", stall[0].upper() + stall[1:] + "."]
    return "\n".join(lines)


def ray_markdown(result: dict) -> str:
    """The save/load table and the partitioned job of a ``bench --only ray --json`` run."""
    rows = result["ray"]
    first = rows[0]
    lines = [
        f"Measured with `{result['command']}` on {machine_line(result)}; local Ray with 2 CPUs, "
        f"{first['mb']:.0f} MB in memory in {ray_checkpoints.BLOCKS} blocks, median of {result['rounds']} "
        "interleaved round(s).",
        "",
        table(
            ["data", "checkpoint", "save MB/s", "load MB/s", "on disk MB", "save x ref", "load x ref"],
            [_ray_cells(r, rows) for r in rows],
            right={2, 3, 4, 5, 6},
            markdown=True,
        ),
        "",
        ray_checkpoints.bound_summary(rows).replace("\n", "; ") + ".",
    ]
    job = result.get("ray_job") or {}
    if job.get("rows"):
        lines += [
            "",
            f"The partitioned job, same run: {job['ops']} CPU ops x {job['partitions']} partitions "
            f"({job['ops'] * job['partitions']} checkpoints a run) over {job['data_bytes'] / 1e6:,.0f} MB "
            "of jsonl text, "
            f"both exporting the same {job['exported_rows']:,} rows:",
            "",
            table(
                ["job", "`run()` s", "process s", "checkpoint saves s", "checkpoints on disk MB"],
                [_job_cells(r) for r in job["rows"]],
                right={1, 2, 3, 4},
                markdown=True,
            ),
        ]
    return "\n".join(lines)


def _ray_cells(row: dict, rows: list[dict]) -> list[str]:
    reference = next(r for r in rows if r["data"] == row["data"] and r["name"] == ray_checkpoints.REFERENCE)

    def figure(key: str, digits: int = 0) -> str:
        return "-" if row[key] is None else f"{row[key]:,.{digits}f}"

    def versus(key: str) -> str:
        if row[key] is None or row is reference:
            return "-"
        return f"{row[key] / reference[key]:.2f}"

    return [
        row["data"],
        row["name"],
        figure("save_mb_s"),
        figure("load_mb_s"),
        figure("disk_mb"),
        versus("save_mb_s"),
        versus("load_mb_s"),
    ]


def _job_cells(row: dict) -> list[str]:
    def with_ratio(value: float, key: str, scale: float = 1.0) -> str:
        ratio = row.get(f"{key}_vs_reference")
        return f"{value / scale:,.1f}" + ("" if ratio is None else f" ({ratio:.2f}x)")

    return [
        row["label"],
        with_ratio(row["run_s"], "run_s"),
        with_ratio(row["process_s"], "process_s"),
        "-" if row.get("save_s") is None else with_ratio(row["save_s"], "save_s"),
        with_ratio(row["ckpt_bytes"], "ckpt_bytes", 1e6),
    ]


def replace_region(text: str, name: str, content: str) -> str:
    pattern = re.compile(rf"(<!-- {name}:begin -->\n).*?(<!-- {name}:end -->)", re.S)
    if not pattern.search(text):
        raise ValueError(f"README has no <!-- {name}:begin --> ... <!-- {name}:end --> region")
    return pattern.sub(lambda m: m.group(1) + content + "\n" + m.group(2), text)


def regions(results: dict, pipeline_results: dict | None = None, ray_results: dict | None = None) -> dict[str, str]:
    found = {"bench-headline": headline_markdown(results), "bench-summary": summary_markdown(results)}
    if pipeline_results is not None:
        found["bench-pipeline"] = pipeline_markdown(pipeline_results["pipeline"])
    if ray_results is not None:
        found["bench-ray"] = ray_markdown(ray_results)
    return found


def main(argv: list[str] | None = None) -> int:
    args = (argv if argv is not None else sys.argv[1:]) or ["docs/bench.json", "README.md"]
    json_path, readme_path = args[:2]
    with open(json_path) as f:
        results = json.load(f)
    optional_paths: list[str | None] = [*args[2:4], None, None][:2]
    pipeline_results, ray_results = (_load_json(path) for path in optional_paths)
    with open(readme_path) as f:
        text = f.read()
    for name, content in regions(results, pipeline_results, ray_results).items():
        text = replace_region(text, name, content)
    with open(readme_path, "w") as f:
        f.write(text)
    print(f"{readme_path}: figures of {json_path} written")
    return 0


def _load_json(path: str | None) -> dict | None:
    if path is None:
        return None
    with open(path) as f:
        return json.load(f)


if __name__ == "__main__":
    sys.exit(main())
