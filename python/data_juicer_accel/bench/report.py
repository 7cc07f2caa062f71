"""What ``data-juicer-accel bench`` prints: a headline, then the tables, each
ratio beside the bound that limits it; and the optional JSON and plot."""

from __future__ import annotations

import json
import textwrap

from data_juicer_accel.tools._format import table

MB = 1e6
CALLS = ("_log_event", "log_op_start")
SINKS = ("none", "info-file")
DJ = "Data-Juicer 1.6.1"
#: The widest line of the terminal report.
WIDTH = 100


def _fmt(value, spec: str, missing: str = "-") -> str:
    return missing if value is None else format(value, spec)


def _by_key(rows, key):
    return next((r for r in rows if r["key"] == key), None)


def _reference(rows):
    """The Data-Juicer row: py-data-juicer itself, or its save_to_disk call."""
    return next((r for r in rows if r["key"] in ("dj", "hf")), None)


def _duration(seconds: float) -> str:
    minutes, secs = divmod(round(seconds), 60)
    return f"{minutes} min {secs} s" if minutes else f"{secs} s"


def _size(nbytes: float) -> str:
    return f"{nbytes / 1e9:.1f} GB" if nbytes >= 1e9 else f"{nbytes / MB:,.0f} MB"


def event_rate(results, impl, sink, threads, call="_log_event"):
    for r in results.get("events", {}).get("rates", []):
        if (r["impl"], r.get("call", "log_op_start"), r["sink"], r["threads"]) == (impl, call, sink, threads):
            return r["events_per_s"]
    return None


def save_bound(results, row) -> float | None:
    """The best save ratio against ``row`` any zstd writer can reach here:
    zstd alone on the same bytes and threads, over ``row``'s speed."""
    ceiling = (results.get("ceiling") or {}).get("all_cores_MBps")
    return ceiling / row["save_MBps"] if ceiling else None


def ceiling_share(results, row) -> float | None:
    """A zstd writer's best save as a share of the zstd ceiling (at most 1:
    the ceiling is the best of samples taken with the writers, see runner)."""
    ceiling = (results.get("ceiling") or {}).get("all_cores_MBps")
    if not ceiling or not row.get("zstd"):
        return None
    return row.get("save_best_MBps", row["save_MBps"]) / ceiling


def event_floor_us(results, sink, threads, call) -> float | None:
    """Microseconds per event with no event logger at all: the bench's loop
    with the logging removed, plus one loguru info() per event when INFO
    goes to a file. No event logger can go below it."""
    evs = results.get("events", {})
    floor = evs.get("no_logging_us", {}).get(call, {}).get(str(threads))
    if floor is None or sink == "none":
        return floor
    loguru = evs.get("loguru_info_file_us" if threads == 1 else "loguru_info_file_us_4_threads")
    return floor + loguru if loguru else None


def event_bound(results, sink, threads, call) -> float | None:
    """The best events/s ratio against the reference the floor allows."""
    ref = event_rate(results, "reference", sink, threads, call)
    floor = event_floor_us(results, sink, threads, call)
    return (1e6 / ref) / floor if ref and floor else None


def headline(results: dict, where: bool = True) -> list[str]:
    """The first lines of the output (and of the README): what the run shows.
    ``where``: name the temporary directory (not in the README)."""
    lines = []
    rows = results.get("checkpoints") or []
    ours, ref = _by_key(rows, "accel"), _reference(rows)
    stand_in = results.get("reference_stand_in")
    name = DJ if ref is None or ref["key"] == "dj" else f"{DJ}'s save_to_disk call"
    if ours and ref:
        lines.append(
            f"data-juicer-accel saves {ours['save_MBps'] / ref['save_MBps']:.1f}x faster than {name}, "
            f"{ref['disk_MB'] / ours['disk_MB']:.1f}x smaller on disk, crash-safe."
        )
        bound = save_bound(results, ref)
        ceiling = results.get("ceiling") or {}
        lines.append(
            f"  save: {ours['save_MBps']:,.0f} MB/s against {ref['save_MBps']:,.0f} MB/s"
            + (
                f"; at most {bound:.1f}x is possible here: zstd level {ceiling['level']} alone on this machine "
                f"({ceiling['threads']} threads) compresses {ceiling['all_cores_MBps']:,.0f} MB/s"
                if bound
                else ""
            )
        )
        lines.append(
            f"  on disk: {ours['disk_MB']:,.0f} MB against {ref['disk_MB']:,.0f} MB, which Data-Juicer writes "
            "uncompressed"
            + (
                f"; zstd level {ceiling['level']} alone shrinks the same bytes {ceiling['ratio']:.2f}x"
                if ceiling.get("ratio")
                else ""
            )
        )
        lines.append(
            "  crash-safe: a save killed at any moment leaves the previous checkpoint loadable (checksummed "
            "manifest, atomic commit); Data-Juicer 1.6.1 can pair rows with the wrong op record"
        )
    elif ours:
        lines.append(f"data-juicer-accel saves {ours['save_MBps']:,.0f} MB/s; no Data-Juicer row (see below).")
    if stand_in and ref:
        lines.append(f"  the Data-Juicer row is {stand_in['label']}: {stand_in['why']}")
    small = results.get("small")
    if small:
        s_ours, s_ref = _by_key(small["cases"], "accel"), _reference(small["cases"])
        if s_ours and s_ref:
            lines.append(
                f"  a {small['rows']:,}-row checkpoint saves in {s_ours['save_ms']:,.1f} ms against "
                f"{s_ref['save_ms']:,.0f} ms ({s_ref['save_ms'] / s_ours['save_ms']:.0f}x)"
            )
    a1, r1 = event_rate(results, "accel", "none", 1), event_rate(results, "reference", "none", 1)
    if a1 and r1:
        bound = event_bound(results, "none", 1, "_log_event")
        lines.append(
            f"  job events: {a1 / r1:.0f}x the events/s of {DJ} (one thread, no INFO log sink)"
            + (f"; at most {bound:.0f}x: the same loop with the logging removed" if bound else "")
        )
    analysis = {a["impl"]: a for a in results.get("events", {}).get("analysis", [])}
    if {"accel", "reference"} <= set(analysis):
        a, r = analysis["accel"], analysis["reference"]
        lines.append(
            f"  resuming a job: analyze_resumption_state reads a {a['events']:,}-event log "
            f"{r['seconds'] / a['seconds']:.0f}x faster"
        )
    if results.get("wall_seconds"):
        disk = results.get("temp_disk")
        used = ""
        if disk:
            place = f" in {disk['dir']}" + (", removed at the end" if disk.get("removed") else "") if where else ""
            used = f" and used at most {_size(disk['peak_bytes'])} of temporary disk{place}"
        lines.append(f"This run took {_duration(results['wall_seconds'])}{used}.")
    return lines


def _machine(results: dict) -> list[str]:
    m = results.get("machine", {})
    cfg = results.get("config", {})
    out = []
    load = m.get("loadavg_start")
    out.append(
        f"machine: {m.get('cpus')} cores, {m.get('memory_gb', '?')} GB, {m.get('platform')}, "
        f"Python {m.get('python')}, pyarrow {m.get('pyarrow')}"
        + (f"; load average at start {load[0]:.2f}" if load else "")
    )
    if m.get("other_processes_cores") is not None:
        out.append(f"CPU used by other processes during the run: {m['other_processes_cores']:.2f} cores on average")
    out.append(f"rounds: {cfg.get('rounds')} (interleaved; medians shown); num_proc = {cfg.get('num_proc')}")
    corpus = results.get("corpus")
    if corpus:
        ratio = corpus.get("text_zstd3_ratio")
        out.append(
            f"data: {corpus['source']}\n      {corpus['rows']:,} rows, {corpus['bytes'] / MB:,.0f} MB in memory"
            + (f"; text compresses {ratio:.2f}x with zstd level 3 (python-zstandard)" if ratio else "")
        )
    return out


#: Short names of the writers in the tables; ``_writers`` says what each is.
SHORT = {
    "accel": "data-juicer-accel",
    "dj": "Data-Juicer 1.6.1",
    "hf": "DJ's save_to_disk",
    "ipc": "pyarrow IPC",
    "ipc_sharded": "pyarrow IPC sharded",
    "parquet": "pyarrow parquet",
}


def _short(row: dict) -> str:
    key = row["key"]
    base = key.removesuffix("_np1")
    return SHORT.get(base, row["label"]) + (" np=1" if key.endswith("_np1") else "")


def _writers(rows: list[dict]) -> str:
    """One line per writer: its short name, what it is and what its save includes."""
    lines = ["writers:"]
    for r in rows:
        lines.append(f"  {_short(r)}: {r['label']}" + (f" -- {r['note']}" if r.get("note") else ""))
    return "\n".join(lines)


def _checkpoint_table(results: dict) -> list[str]:
    rows = results["checkpoints"]
    ours = _by_key(rows, "accel")
    ceiling = results.get("ceiling")
    headers = ["writer", "save MB/s", "load MB/s", "disk MB", "ratio", "peak +MB", "save x", "max x", "load x"]
    body, cpu = [], []
    for r in rows:
        bound = save_bound(results, r)
        share = ceiling_share(results, r)
        body.append(
            [
                _short(r),
                f"{r['save_MBps']:,.0f}",
                f"{r['load_MBps']:,.0f}",
                f"{r['disk_MB']:,.0f}",
                _fmt(r["ratio"], ".2f"),
                "-" if r["peak_above_MB"] is None else f"{r['peak_above_MB']:,.0f} ({r['peak_above_pct']:.0f}%)",
                "-" if r is ours else f"{ours['save_MBps'] / r['save_MBps']:.2f}",
                "-" if r is ours or bound is None else f"{bound:.2f}",
                "-" if r is ours else f"{ours['load_MBps'] / r['load_MBps']:.2f}",
            ]
        )
        cpu.append(
            [
                _short(r),
                _fmt(r.get("save_cpu_s_per_GB"), ".2f"),
                _fmt(r.get("load_cpu_s_per_GB"), ".2f"),
                "-" if share is None else f"{100 * share:.0f}%",
            ]
        )
    out = [
        f"checkpoints of {results.get('corpus', {}).get('bytes', 0) / MB:,.0f} MB (terms below)",
        table(headers, body, right=set(range(1, len(headers)))),
        "",
        table(["writer", "save CPU s/GB", "load CPU s/GB", "of zstd speed"], cpu, right={1, 2, 3}),
        "",
        "terms:",
        "  ratio: in-memory bytes over bytes on disk; peak +MB: memory above the start during the save",
        "    (and its share of the data); save x / load x: data-juicer-accel's speed over the writer's",
        "  load: to a table with every byte in memory -- zstd writers decompress; Data-Juicer memory-maps",
        "    uncompressed files, so its figure is the time to map them and touch every page, and it",
        "    depends on the page cache: not comparable, and it swings widely between runs",
        "  CPU s/GB: CPU seconds of all threads and processes per GB of data",
    ]
    if ceiling:
        out += [
            f"  max x: the best save x any zstd writer can reach: zstd level {ceiling['level']} alone on this "
            f"machine ({ceiling['threads']} threads,",
            f"    the same bytes in 8 MiB pieces, best of {ceiling.get('samples', 1)} samples taken after "
            f"the saves) compresses {ceiling['all_cores_MBps']:,.0f} MB/s",
            f"    ({ceiling['one_thread_MBps']:,.0f} MB/s on one thread); of zstd speed: a zstd writer's best save "
            "as a share of that",
        ]
    out.append(_writers(rows))
    return out


def _small_table(results: dict) -> list[str]:
    small = results["small"]
    ours = _by_key(small["cases"], "accel")
    body = [
        [
            _short(c),
            f"{c['save_ms']:,.1f}",
            f"{c['load_ms']:,.1f}",
            "-" if c is ours else f"{c['save_ms'] / ours['save_ms']:.1f}",
            "-" if c is ours else f"{c['load_ms'] / ours['load_ms']:.1f}",
        ]
        for c in small["cases"]
    ]
    rounds = results.get("config", {}).get("small_rounds")
    return [
        f"small checkpoint: {small['rows']:,} rows ({small['bytes'] / MB:.1f} MB), median of {rounds} rounds "
        "after a warm-up; np=1: num_proc=1",
        table(["writer", "save ms", "load ms", "save x", "load x"], body, right={1, 2, 3, 4}),
    ]


def _event_tables(results: dict) -> list[str]:
    evs = results["events"]
    out = [f"events: {name} skipped -- {why}" for name, why in evs.get("skipped", {}).items()]
    if evs.get("rates"):
        body = []
        for call in CALLS:
            for sink in SINKS:
                for impl in ("accel", "reference"):
                    r1, r4 = event_rate(results, impl, sink, 1, call), event_rate(results, impl, sink, 4, call)
                    if r1 is None:
                        continue
                    cells = [call, "none" if sink == "none" else "INFO file"]
                    cells += ["accel" if impl == "accel" else "DJ 1.6.1"]
                    cells += [f"{r1:,.0f}", _fmt(r4, ",.0f")]
                    for threads, rate in ((1, r1), (4, r4)):
                        ref = event_rate(results, "reference", sink, threads, call)
                        bound = event_bound(results, sink, threads, call)
                        ours = impl == "accel" and ref and rate
                        cells += [f"{rate / ref:.1f}" if ours else "-", _fmt(bound if ours else None, ".1f")]
                    body.append(cells)
        headers = ["call", "log sink", "logger", "ev/s 1 thr", "ev/s 4 thr", "x 1 thr", "max x", "x 4 thr", "max x"]
        out.append("job events per second, from the first call until every line is in the JSONL file")
        out.append(table(headers, body, right=set(range(3, len(headers)))))
        out += [
            "terms:",
            "  log sink: none, or loguru INFO to a file; accel: data-juicer-accel; DJ 1.6.1: py-data-juicer",
            "  x: accel's events/s over DJ's, on 1 or 4 threads; max x: DJ's time per event over that of",
            "    the same loop with the logging removed (plus one loguru info() per event with an INFO sink):",
            "    no event logger can go below it",
        ]
        if evs.get("loguru_info_file_us"):
            four = evs.get("loguru_info_file_us_4_threads")
            out.append(
                f"  one loguru info() of an event line to a file: {evs['loguru_info_file_us']:.1f} us"
                + (f"; from 4 threads at once: {four:.1f} us per line" if four else "")
            )
        for call, by_threads in evs.get("no_logging_us", {}).items():
            out.append(
                f"  the {call} loop with the logging removed: {by_threads['1']:.2f} us per call on 1 thread, "
                f"{by_threads['4']:.2f} us on 4"
            )
    if evs.get("analysis"):
        ref = next((a for a in evs["analysis"] if a["impl"] == "reference"), None)
        body = [
            [
                "data-juicer-accel" if a["impl"] == "accel" else "py-data-juicer 1.6.1",
                f"{a['events']:,}",
                f"{a['partitions']:,}",
                f"{a['seconds']:.3f}",
                "-" if a["impl"] != "accel" or ref is None else f"{ref['seconds'] / a['seconds']:.0f}",
            ]
            for a in evs["analysis"]
        ]
        out.append("analyze_resumption_state on a large event log")
        out.append(table(["implementation", "events", "partitions", "seconds", "x ref"], body, right={1, 2, 3, 4}))
    return out


def load_line(results: dict) -> str | None:
    """The load trade-off, in one line under the headline."""
    rows = results.get("checkpoints") or []
    ours, ref = _by_key(rows, "accel"), _reference(rows)
    if not ours or not ref:
        return None
    return (
        f"  load: {ours['load_MBps']:,.0f} MB/s into memory, decompressed; Data-Juicer only memory-maps "
        f"({ref['load_MBps']:,.0f} MB/s here; it swings widely between runs): not comparable"
    )


def _wrap(text: str, width: int = WIDTH) -> str:
    """Lines longer than ``width`` wrapped, continuation lines indented two
    more than the line's own indent (tables are built narrower than this)."""
    out = []
    for line in text.split("\n"):
        if len(line) <= width:
            out.append(line)
            continue
        indent = " " * (len(line) - len(line.lstrip()))
        out.append(textwrap.fill(line.strip(), width, initial_indent=indent, subsequent_indent=indent + "  "))
    return "\n".join(out)


def render(results: dict) -> str:
    """Headline, the competitors that could not run and why, then the details;
    no line wider than ``WIDTH``."""
    if "bucket" in results and not {"checkpoints", "events", "small"} & set(results):
        return bucket_report(results["bucket"])
    lines = headline(results)
    load = load_line(results)
    if load:
        lines.insert(3 if len(lines) > 3 else len(lines), load)
    parts = ["\n".join(lines)]
    parts += [f"not measured: {s['label']} -- {s['why']}" for s in results.get("skipped", [])]
    parts.append("\n".join(_machine(results)))
    if results.get("checkpoints"):
        parts.append("\n".join(_checkpoint_table(results)))
    if results.get("small"):
        parts.append("\n".join(_small_table(results)))
    if results.get("events") is not None:
        parts.append("\n".join(_event_tables(results)))
    return _wrap("\n\n".join(p for p in parts if p))


def bucket_report(result: dict) -> str:
    """The tables of ``bench --only bucket`` (see bench/bucket.py), their terms and writers."""
    rows = result["writers"]
    speed = [
        [
            r["label"],
            f"{r['save_MBps']:,.1f}",
            f"{r['load_MBps']:,.1f}",
            f"{r['bucket_bytes'] / MB:,.1f}",
            f"{r['objects']:g}",
            _fmt(r["save_x"], ".2f"),
            _fmt(r["load_x"], ".2f"),
            _fmt(r["bytes_x"], ".2f"),
        ]
        for r in rows
    ]
    per_row = [[r["label"], f"{r['save_rows_per_s']:,.0f}", f"{r['load_rows_per_s']:,.0f}"] for r in rows]
    headers = ["writer", "save MB/s", "load MB/s", "bucket MB", "objects", "save x", "load x", "bytes x"]
    server = ", moto's server on loopback" if result.get("local_server") else ""
    lines = [
        f"bucket: {result['MB']:,.0f} MB in memory ({result['rows']:,} rows), median of {result['rounds']} "
        "round(s), writers alternating",
        f"  {result['uri']} at {result['endpoint']}{server}",
        table(headers, speed, right=set(range(1, len(headers)))),
        "",
        table(["writer", "save rows/s", "load rows/s"], per_row, right={1, 2}),
        "",
        "terms:",
        "  MB/s, rows/s: of the table in memory; a load ends with every row in memory",
        "  bucket MB, objects: what the save left in the bucket, listed after it",
        "  save x / load x: the writer's speed over the reference's; bytes x: its bucket bytes over the",
        "    reference's",
        "writers:",
        *(f"  {r['label']}: {r['note']}" for r in rows),
        *(f"not measured: {s['label']} -- {s['why']}" for s in result.get("skipped", [])),
    ]
    text = _wrap("\n".join(lines))
    lines = []
    job = result.get("job")
    if job:  # as `--only ray` prints it: its table is wider than WIDTH, never wrapped
        from data_juicer_accel.bench import ray_job

        text += "\n\n" + (
            f"not run: {ray_job.TITLE} -- {job['not_run']}" if "not_run" in job else ray_job.format_report(job)
        )
    machine = result.get("machine") or {}
    if machine:
        others = machine.get("other_processes_cores")
        lines.append(
            f"machine: {machine.get('cpus')} cores, {machine.get('platform')}, pyarrow {machine.get('pyarrow')}"
            + (f"; other processes used {others:.2f} cores on average" if others is not None else "")
        )
    if result.get("command"):
        lines.append(f"command: {result['command']}")
    return text + "\n" + _wrap("\n".join(lines))


def write_json(results: dict, path: str) -> None:
    with open(path, "w") as f:
        json.dump(results, f, indent=2, default=str)


def plot(results: dict, path: str) -> None:
    """Save/load throughput and event rates as bar charts (needs matplotlib)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as e:
        raise SystemExit("--plot needs matplotlib: pip install 'data-juicer-accel[bench]'") from e
    panels = []
    if results.get("checkpoints"):
        panels += ["save", "load"]
    if results.get("events", {}).get("rates"):
        panels.append("events")
    if not panels:
        raise SystemExit("nothing to plot")
    fig, axes = plt.subplots(1, len(panels), figsize=(5.2 * len(panels), 4.8), squeeze=False)
    m = results.get("machine", {})
    size = results.get("corpus", {}).get("bytes", 0) / MB
    for ax, panel in zip(axes[0], panels, strict=True):
        if panel in ("save", "load"):
            rows = results["checkpoints"]
            labels = [
                r["label"].replace(" CheckpointManager", "\nCheckpointManager").replace(", ", ",\n") for r in rows
            ]
            values = [r[f"{panel}_MBps"] for r in rows]
            colors = ["tab:green" if r["key"] == "accel" else "tab:blue" for r in rows]
            bars = ax.bar(range(len(rows)), values, 0.6, color=colors)
            ax.bar_label(bars, labels=[f"{v:,.0f}" for v in values], fontsize=7)
            ceiling = results.get("ceiling")
            if panel == "save" and ceiling:
                ax.axhline(
                    ceiling["all_cores_MBps"],
                    color="grey",
                    ls="--",
                    lw=1,
                    label=f"zstd-{ceiling['level']} alone, {ceiling['threads']} threads",
                )
                ax.legend(fontsize=7)
            ax.set_xticks(range(len(rows)))
            ax.set_xticklabels(labels, fontsize=6.5, rotation=30, ha="right")
            ax.set_ylabel("MB/s of in-memory data" + (" (log scale)" if panel == "load" else ""))
            if panel == "load":  # a memory-mapped load dwarfs the others
                ax.set_yscale("log")
            what = "save" if panel == "save" else "load to a materialised table (HF: mmap + page touch)"
            ax.set_title(f"checkpoint {what}\n{size:,.0f} MB, {m.get('cpus')} cores", fontsize=9)
        else:
            rates = results["events"]["rates"]
            cases = [(s, t) for s in SINKS for t in (1, 4)]
            x = range(len(cases))
            w = 0.38
            for offset, impl, name in ((-w / 2, "accel", "data-juicer-accel"), (w / 2, "reference", "py-data-juicer")):
                values = [event_rate(results, impl, s, t) or 0 for s, t in cases]
                if any(values):
                    ax.bar([i + offset for i in x], values, w, label=name)
            ax.set_xticks(list(x))
            ax.set_xticklabels(
                [f"{'no INFO sink' if s == 'none' else 'INFO file'}\n{t} thread(s)" for s, t in cases], fontsize=8
            )
            ax.set_yscale("log")
            ax.set_ylabel("events/s (log scale)")
            ax.set_title("job events/s, EventLoggingMixin._log_event", fontsize=9)
            ax.legend(fontsize=8)
            del rates
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
