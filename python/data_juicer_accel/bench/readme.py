"""Writes a bench run's figures into README.md, so that the README says what
docs/bench.json measured: ``python -m data_juicer_accel.bench.readme
docs/bench.json README.md`` (docs/regenerate-bench.sh runs it after a run).

Two marked regions are replaced: ``bench-headline`` (the headline lines) and
``bench-summary`` (the command, the machine and the main table); given the JSON
of a ``bench --only pipeline`` run as third argument, ``bench-pipeline`` too."""

from __future__ import annotations

import json
import re
import sys

from data_juicer_accel.bench import pipeline, report
from data_juicer_accel.tools._format import table

REGIONS = ("bench-headline", "bench-summary", "bench-pipeline")


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
        + (f", other processes using {others:.2f} cores on average" if others is not None else "")
        + (f", {m['date']}" if m.get("date") else "")
    )


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


def replace_region(text: str, name: str, content: str) -> str:
    pattern = re.compile(rf"(<!-- {name}:begin -->\n).*?(<!-- {name}:end -->)", re.S)
    if not pattern.search(text):
        raise ValueError(f"README has no <!-- {name}:begin --> ... <!-- {name}:end --> region")
    return pattern.sub(lambda m: m.group(1) + content + "\n" + m.group(2), text)


def regions(results: dict, pipeline_results: dict | None = None) -> dict[str, str]:
    found = {"bench-headline": headline_markdown(results), "bench-summary": summary_markdown(results)}
    if pipeline_results is not None:
        found["bench-pipeline"] = pipeline_markdown(pipeline_results["pipeline"])
    return found


def main(argv: list[str] | None = None) -> int:
    args = (argv if argv is not None else sys.argv[1:]) or ["docs/bench.json", "README.md"]
    json_path, readme_path = args[:2]
    with open(json_path) as f:
        results = json.load(f)
    pipeline_results = None
    if len(args) > 2:
        with open(args[2]) as f:
            pipeline_results = json.load(f)
    with open(readme_path) as f:
        text = f.read()
    for name, content in regions(results, pipeline_results).items():
        text = replace_region(text, name, content)
    with open(readme_path, "w") as f:
        f.write(text)
    print(f"{readme_path}: figures of {json_path} written")
    return 0


if __name__ == "__main__":
    sys.exit(main())
