"""The printed table, the targets of issue #7, and the optional plot."""

from __future__ import annotations

import json

MB = 1e6


def _fmt(value, spec: str, missing: str = "-") -> str:
    return missing if value is None else format(value, spec)


def _table(headers: list[str], rows: list[list[str]], align: str | None = None) -> str:
    """A GitHub-markdown table (reads fine in a terminal too)."""
    align = align or "l" + "r" * (len(headers) - 1)
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(headers)]

    def line(cells):
        out = []
        for cell, width, a in zip(cells, widths, align, strict=True):
            out.append(cell.ljust(width) if a == "l" else cell.rjust(width))
        return "| " + " | ".join(out) + " |"

    sep = (
        "|"
        + "|".join(("-" * (w + 1) + ":") if a == "r" else ("-" * (w + 2)) for w, a in zip(widths, align, strict=True))
        + "|"
    )
    return "\n".join([line(headers), sep, *(line(r) for r in rows)])


def _by_key(rows, key):
    return next((r for r in rows if r["key"] == key), None)


def _reference_key(rows):
    return next((r["key"] for r in rows if r["key"] in ("dj", "hf")), None)


CALLS = ("_log_event", "log_op_start")
SINKS = ("none", "info-file")


def event_rate(results, impl, sink, threads, call="_log_event"):
    for r in results.get("events", {}).get("rates", []):
        if (r["impl"], r.get("call", "log_op_start"), r["sink"], r["threads"]) == (impl, call, sink, threads):
            return r["events_per_s"]
    return None


def targets(results: dict) -> list[dict]:
    """Issue #7's targets, each with the measured figure and whether it is met."""
    out = []

    def add(name, measured, goal, higher=True, unit="x", digits=2, bound=None):
        met = None if measured is None else (measured >= goal if higher else measured <= goal)
        out.append(
            {
                "bound": bound,
                "target": name,
                "measured": measured,
                "goal": goal,
                "higher_is_better": higher,
                "unit": unit,
                "met": met,
                "digits": digits,
            }
        )

    rows = results.get("checkpoints")
    ceiling = (results.get("ceiling") or {}).get("all_cores_MBps")

    def save_bound(row):
        """The best save ratio against ``row`` that zstd alone on this run's
        cores allows."""
        return None if not ceiling else ceiling / row["save_MBps"]

    if rows:
        ours = _by_key(rows, "accel")
        ref = _by_key(rows, _reference_key(rows))
        ipc = _by_key(rows, "ipc")
        sharded = _by_key(rows, "ipc_sharded")
        if ref:
            add(f"save >= 15x {ref['label']}", ours["save_MBps"] / ref["save_MBps"], 15, bound=save_bound(ref))
        if ipc:
            add(
                "save >= 1.8x one pyarrow IPC zstd writer",
                ours["save_MBps"] / ipc["save_MBps"],
                1.8,
                bound=save_bound(ipc),
            )
        if sharded:
            add(
                "save >= 0.95x pyarrow IPC sharded over threads",
                ours["save_MBps"] / sharded["save_MBps"],
                0.95,
                bound=save_bound(sharded),
            )
            add(
                "on-disk size equal (within 1%: manifest, metadata files) or smaller than pyarrow IPC sharded",
                ours["disk_MB"] / sharded["disk_MB"],
                1.01,
                higher=False,
                digits=4,
            )
        if ipc:
            add("load >= 2x one pyarrow IPC zstd reader", ours["load_MBps"] / ipc["load_MBps"], 2.0)
        if sharded:
            add("load >= 1.0x pyarrow IPC sharded over threads", ours["load_MBps"] / sharded["load_MBps"], 1.0)
        if ours.get("peak_above_pct") is not None:
            add("peak memory above the dataset during a save <= 25%", ours["peak_above_pct"], 25, False, "%")
    small = results.get("small")
    if small:
        cases = small["cases"]
        ours = _by_key(cases, "accel")
        ref = _by_key(cases, _reference_key(cases))
        if ref:
            add(
                f"small-checkpoint save latency <= 1/5 of {ref['label']}",
                ours["save_ms"] / ref["save_ms"],
                0.2,
                False,
                "x",
            )
        ref1 = _by_key(cases, (_reference_key(cases) or "") + "_np1")
        if ref1:
            add("  (same, against the reference at num_proc=1)", ours["save_ms"] / ref1["save_ms"], 0.2, False, "x")
    events = results.get("events", {})
    loguru_us = events.get("loguru_info_file_us")
    no_logging_us = events.get("no_logging_us", {})
    if events.get("rates"):
        for call in CALLS:
            for sink in SINKS:
                a1, r1 = event_rate(results, "accel", sink, 1, call), event_rate(results, "reference", sink, 1, call)
                if a1 and r1:
                    # Even free logging leaves the call itself (no_logging_us) and, with an
                    # INFO file sink, one loguru info() per event.
                    floor = no_logging_us.get(call, {}).get("1")
                    if floor is not None and sink == "info-file":
                        floor = floor + loguru_us if loguru_us else None
                    bound = 1e6 / r1 / floor if floor else None
                    add(f"events >= 20x the reference, 1 thread ({call}, {sink} sink)", a1 / r1, 20, bound=bound)
        for call in CALLS:
            for sink in SINKS:
                a1, a4 = event_rate(results, "accel", sink, 1, call), event_rate(results, "accel", sink, 4, call)
                if a1 and a4:
                    # What the same four threads do without this package: the loop with no
                    # logging, or loguru's info() alone with an INFO file sink.
                    floors = no_logging_us.get(call, {})
                    loguru_4t = events.get("loguru_info_file_us_4_threads")
                    if sink == "none":
                        bound = floors["1"] / floors["4"] if floors.get("4") else None
                    else:
                        bound = loguru_us / loguru_4t if loguru_us and loguru_4t else None
                    add(
                        f"no slowdown on 4 threads, 4t/1t rate within 5% ({call}, {sink} sink)",
                        a4 / a1,
                        0.95,
                        bound=bound,
                    )
    return out


def render(results: dict) -> str:
    parts = []
    m = results.get("machine", {})
    cfg = results.get("config", {})
    load = m.get("loadavg_start")
    others = m.get("other_processes_cores")
    parts.append(
        f"machine: {m.get('cpus')} cores, {m.get('memory_gb', '?')} GB, {m.get('platform')}, Python {m.get('python')},"
        f" pyarrow {m.get('pyarrow')}; load average at start {load[0]:.2f}"
        if load
        else ""
    )
    if others is not None:
        parts.append(f"CPU used by other processes during the run: {others:.2f} cores on average")
    parts.append(f"rounds: {cfg.get('rounds')} (interleaved; medians shown); num_proc = {cfg.get('num_proc')}")

    corpus = results.get("corpus")
    if corpus:
        ratio = corpus.get("text_zstd3_ratio")
        parts.append(
            f"\ndata: {corpus['source']}\n      {corpus['rows']:,} rows, {corpus['bytes'] / MB:,.0f} MB in memory"
            + (f"; text compresses {ratio:.2f}x with zstd level 3 (python-zstandard)" if ratio else "")
        )
    rows = results.get("checkpoints")
    ceiling = results.get("ceiling")
    if rows:
        ours = _by_key(rows, "accel")
        headers = [
            "checkpoint writer",
            "save MB/s",
            "load MB/s",
            "on disk MB",
            "ratio",
            "peak mem +MB (% data)",
            "accel save x",
            "accel load x",
            "% zstd ceiling",
            "save CPU-s/GB",
            "load CPU-s/GB",
        ]
        body = []
        for r in rows:
            peak = "-" if r["peak_above_MB"] is None else f"{r['peak_above_MB']:,.0f} ({r['peak_above_pct']:.0f}%)"
            body.append(
                [
                    r["label"],
                    f"{r['save_MBps']:,.0f}",
                    f"{r['load_MBps']:,.0f}",
                    f"{r['disk_MB']:,.0f}",
                    f"{r['ratio']:.2f}",
                    peak,
                    "-" if r is ours else f"{ours['save_MBps'] / r['save_MBps']:.2f}",
                    "-" if r is ours else f"{ours['load_MBps'] / r['load_MBps']:.2f}",
                    f"{100 * r['save_MBps'] / ceiling['all_cores_MBps']:.0f}%" if ceiling else "-",
                    _fmt(r.get("save_cpu_s_per_GB"), ".2f"),
                    _fmt(r.get("load_cpu_s_per_GB"), ".2f"),
                ]
            )
        parts.append("\n" + _table(headers, body))
        if ceiling:
            parts.append(
                f"\nceiling: zstd level {ceiling['level']} alone on the same bytes (8 MiB pieces, python-zstandard): "
                f"{ceiling['one_thread_MBps']:,.0f} MB/s on one thread, {ceiling['all_cores_MBps']:,.0f} MB/s on "
                f"{ceiling['threads']} threads (ratio {ceiling['ratio']:.2f}); "
                f"{ceiling.get('cpu_s_per_GB', float('nan')):.2f} CPU-s/GB"
            )
    small = results.get("small")
    if small:
        ours = _by_key(small["cases"], "accel")
        body = [
            [
                c["label"],
                f"{c['save_ms']:,.1f}",
                f"{c['load_ms']:,.1f}",
                "-" if c is ours else f"{c['save_ms'] / ours['save_ms']:.1f}",
                "-" if c is ours else f"{c['load_ms'] / ours['load_ms']:.1f}",
            ]
            for c in small["cases"]
        ]
        parts.append(
            f"\nsmall checkpoint: {small['rows']:,} rows ({small['bytes'] / MB:.1f} MB), median of "
            f"{cfg.get('small_rounds')} rounds after a warm-up\n"
            + _table(["checkpoint writer", "save ms", "load ms", "accel save x", "accel load x"], body)
        )
    evs = results.get("events")
    if evs is not None:
        for name, why in evs.get("skipped", {}).items():
            parts.append(f"\nevents ({name}): skipped -- {why}")
        if evs.get("rates"):
            body = []
            for call in CALLS:
                for sink in SINKS:
                    for impl in ("accel", "reference"):
                        r1, r4 = event_rate(results, impl, sink, 1, call), event_rate(results, impl, sink, 4, call)
                        if r1 is None:
                            continue
                        ref1 = event_rate(results, "reference", sink, 1, call)
                        ref4 = event_rate(results, "reference", sink, 4, call)
                        label = "data-juicer-accel" if impl == "accel" else "py-data-juicer 1.6.1"
                        body.append(
                            [
                                call,
                                "no INFO sink" if sink == "none" else "INFO file sink",
                                label,
                                f"{r1:,.0f}",
                                _fmt(r4, ",.0f"),
                                "-" if impl != "accel" or not ref1 else f"{r1 / ref1:.1f}",
                                "-" if impl != "accel" or not ref4 or r4 is None else f"{r4 / ref4:.1f}",
                            ]
                        )
            parts.append(
                "\nevents per second, from the first call until every line is in the JSONL file\n"
                + _table(
                    ["call", "loguru", "event logger", "1 thread ev/s", "4 threads ev/s", "x ref (1 t)", "x ref (4 t)"],
                    body,
                    align="lllrrrr",
                )
            )
            if evs.get("loguru_info_file_us"):
                four = evs.get("loguru_info_file_us_4_threads")
                parts.append(
                    f"one loguru logger.info() of an event line to a file sink alone: {evs['loguru_info_file_us']:.1f} "
                    f"us ({1e6 / evs['loguru_info_file_us']:,.0f} lines/s)"
                    + (f"; from 4 threads at once: {four:.1f} us per line" if four else "")
                )
            for call, by_threads in evs.get("no_logging_us", {}).items():
                parts.append(
                    f"the {call} loop with the logging removed (a no-op _log_event): "
                    f"{by_threads['1']:.2f} us per call on 1 thread, {by_threads['4']:.2f} us on 4 threads"
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
            parts.append(
                "\nanalyze_resumption_state on a large event log\n"
                + _table(["implementation", "events", "partitions", "seconds", "x ref"], body)
            )
    tg = targets(results)
    if tg:
        body = []
        for t in tg:
            measured = (
                "-"
                if t["measured"] is None
                else (f"{t['measured']:.1f}%" if t["unit"] == "%" else f"{t['measured']:.{t['digits']}f}x")
            )
            goal = f"{'>=' if t['higher_is_better'] else '<='} {t['goal']:g}{'%' if t['unit'] == '%' else 'x'}"
            status = "-" if t["met"] is None else ("met" if t["met"] else "MISSED")
            bound = "-" if t.get("bound") is None else f"{t['bound']:.2f}x"
            body.append([t["target"], goal, measured, status, bound])
        parts.append(
            "\ntargets (issue #7), as ratios measured in this run. 'bound': the best ratio the measured floor allows --"
            "\nfor saves, zstd level 1 alone on this run's cores (ceiling MB/s / competitor MB/s); for events, the"
            "\nsame loop with the logging removed, plus one loguru info() per event with an INFO file sink (reference"
            "\nus per event / floor us per event); for 4 threads, what the same threads do without this package:"
            "\nthe no-logging loop's 4t/1t rate, or loguru info() alone from 4 threads with an INFO file sink\n"
            + _table(["target", "goal", "measured", "", "bound"], body, align="lrrlr")
        )
    if results.get("wall_seconds"):
        parts.append(f"\nwall time: {results['wall_seconds']:.0f} s")
    return "\n".join(p for p in parts if p)


def write_json(results: dict, path: str) -> None:
    results = dict(results)
    results["targets"] = targets(results)
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
