"""Runs the cases, rounds interleaved, and collects medians."""

from __future__ import annotations

import os
import platform
import shutil
import sys
import time
from dataclasses import asdict, dataclass, field
from typing import Any

import pyarrow as pa

from data_juicer_accel.bench import checkpoints as ck
from data_juicer_accel.bench import events as ev
from data_juicer_accel.bench.corpus import default_corpus, load_user_data, table_buffers, text_zstd_ratio
from data_juicer_accel.bench.measure import PeakRSS, median, release_memory, timed, timed_cpu, zstd_ceiling
from data_juicer_accel.bench.progress import Progress, expectations
from data_juicer_accel.tools import _interrupt

MB = 1e6


@dataclass
class BenchConfig:
    size: int = 10**9
    data: str | None = None
    rounds: int = 3
    num_proc: int = field(default_factory=lambda: os.cpu_count() or 1)
    only: str | None = None  # "checkpoints" | "events"
    workdir: str | None = None
    small_rows: int = 1000
    small_rounds: int = 5
    events: int = 200_000  # this package; the reference logs events // 10
    analysis_events: int = 100_000
    analysis_partitions: int = 500
    progress: bool = True
    seed: int = 20251128

    @property
    def run_checkpoints(self) -> bool:
        return self.only in (None, "checkpoints")

    @property
    def run_events(self) -> bool:
        return self.only in (None, "events")


class CpuShare:
    """CPU used by other processes while the bench runs (cores, averaged)."""

    def __init__(self) -> None:
        self.psutil: Any = None
        try:
            import psutil
        except ImportError:
            return
        self.psutil = psutil
        self.start = self._sample()

    def _sample(self) -> tuple[float, float, float]:
        psutil = self.psutil
        cpu = psutil.cpu_times()
        busy = cpu.user + cpu.system + getattr(cpu, "nice", 0) + getattr(cpu, "irq", 0) + getattr(cpu, "softirq", 0)
        me = psutil.Process().cpu_times()
        mine = me.user + me.system + me.children_user + me.children_system
        for child in psutil.Process().children(recursive=True):
            try:
                t = child.cpu_times()
                mine += t.user + t.system
            except psutil.Error:
                pass
        return time.monotonic(), busy, mine

    def others(self) -> float | None:
        if self.psutil is None:
            return None
        t1, busy1, mine1 = self._sample()
        t0, busy0, mine0 = self.start
        return max(0.0, ((busy1 - busy0) - (mine1 - mine0)) / max(t1 - t0, 1e-9))


def machine_info() -> dict:
    info = {
        "cpus": os.cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "pyarrow": pa.__version__,
        "loadavg_start": list(os.getloadavg()),
    }
    info["date"] = time.strftime("%Y-%m-%d", time.gmtime())
    try:
        import psutil

        info["memory_gb"] = round(psutil.virtual_memory().total / 2**30, 1)
    except ImportError:
        pass
    try:
        from data_juicer_accel import __version__

        info["data_juicer_accel"] = __version__
    except ImportError:
        pass
    return info


class Costs:
    """Expected seconds of each unit of work on a quiet 2-core machine (from
    docs/bench.json's default run, 262 s at 1 GB); a busy machine takes longer."""

    #: Seconds per GB of a save and a load; Data-Juicer's save also starts a
    #: spawn pool (about a second).
    CHECKPOINT_S_PER_GB = {"accel": 2.1, "dj": 4.5, "hf": 4.5, "ipc": 5.2, "ipc_sharded": 2.9, "parquet": 8.0}
    #: Seconds per case of 200,000 events (the reference logs a tenth).
    EVENTS_S = {
        ("accel", "none", 1): 0.4,
        ("accel", "none", 4): 0.5,
        ("accel", "info-file", 1): 3.5,
        ("accel", "info-file", 4): 13.0,
        ("reference", "none", 1): 0.5,
        ("reference", "none", 4): 1.0,
        ("reference", "info-file", 1): 0.8,
        ("reference", "info-file", 4): 1.4,
    }

    def __init__(self, cfg: BenchConfig, nbytes: int):
        self.gb = nbytes / 1e9
        self.ev = max(cfg.events / 200_000, 0.02)
        self.an = max(cfg.analysis_events / 100_000, 0.02)
        self.generated = cfg.data is None

    def corpus(self) -> float:
        return 15 * self.gb if self.generated else 0.0

    def checkpoint(self, key: str) -> float:
        return self.CHECKPOINT_S_PER_GB.get(key, 5.0) * self.gb + (1.0 if key in ("dj", "hf") else 0.0)

    def ceiling(self) -> float:
        return 1.0 * self.gb

    def small(self, key: str) -> float:
        return 0.8 if key.startswith(("dj", "hf")) else 0.05

    def events(self, impl: str, call: str, sink: str, threads: int) -> float:
        return self.EVENTS_S[(impl, sink, threads)] * self.ev

    def floors(self) -> float:
        """One round of the loguru floors (1 and 4 threads) and the loops with the logging removed."""
        return 2.0 + 4 * 0.3 * self.ev

    def analysis_log(self) -> float:
        return 3.0 * self.an

    def analysis(self, impl: str) -> float:
        return (4.0 if impl == "reference" else 0.1) * self.an


class Runner:
    def __init__(self, cfg: BenchConfig, data: pa.Table | None = None):
        """``data``: the table of ``cfg.data``, when read already (to check it)."""
        self.cfg = cfg
        self.data = data
        self.costs = Costs(cfg, data.nbytes if data is not None else cfg.size)
        self.results: dict = {"config": asdict(cfg), "machine": machine_info()}
        self.cpu = CpuShare()

    # -- plan ---------------------------------------------------------------

    def _plan(self, comps, impls) -> float:
        """Expected seconds of the whole run (see ``Costs``); the progress bar
        advances by the same costs, so that it ends when the work ends."""
        cfg, cost = self.cfg, self.costs
        total = 0.0
        if cfg.run_checkpoints:
            total += cost.corpus()
            total += cfg.rounds * sum(cost.checkpoint(c.key) + cost.ceiling() for c in comps)
            total += (cfg.small_rounds + 1) * sum(cost.small(c.key) for c in self._small_cases(comps))
        present = [k for k, m in impls.items() if m is not None]
        if cfg.run_events and present:
            cases = [(n, call, sink, t) for n in present for call in ev.CALLS for sink in ev.SINKS for t in (1, 4)]
            total += cfg.rounds * sum(cost.events(*case) for case in cases)
            total += cfg.rounds * cost.floors()
            total += cost.analysis_log() + cfg.rounds * sum(cost.analysis(n) for n in present)
        return total

    # -- main ---------------------------------------------------------------

    def run(self) -> dict:
        cfg = self.cfg
        base = _interrupt.temp_dir("dja-bench-", dir=cfg.workdir)
        comps = self._runnable(ck.competitors(cfg.num_proc)) if cfg.run_checkpoints else []
        impls = ev.implementations() if cfg.run_events else {}
        self.base = base
        self.disk_peak = 0
        plan = self._plan(comps, impls)
        if cfg.progress:
            print(self._expectations(plan, base), file=sys.stderr)
        self.progress = Progress(plan, enabled=cfg.progress)
        started = time.monotonic()
        try:
            if cfg.run_checkpoints:
                self._checkpoints(comps, base)
            if cfg.run_events:
                self._events(impls, base)
        finally:
            self.progress.close()
            _interrupt.remove_temp_dir(base)
        self.results["machine"]["loadavg_end"] = list(os.getloadavg())
        self.results["machine"]["other_processes_cores"] = self.cpu.others()
        self.results["wall_seconds"] = time.monotonic() - started
        self.results["temp_disk"] = {"peak_bytes": self.disk_peak, "dir": base, "removed": True}
        return self.results

    def _expectations(self, seconds: float, base: str) -> str:
        """The first line: how long the run should take and how much disk it needs."""
        nbytes = self.data.nbytes if self.data is not None else self.cfg.size
        disk = nbytes if self.cfg.run_checkpoints else 0  # Data-Juicer's checkpoint is uncompressed
        if self.cfg.run_events:
            disk += self.cfg.analysis_events * 400  # the analysed event log
        return expectations(seconds, disk, base)

    def _runnable(self, comps):
        """The competitors that can run; each one that cannot is recorded
        with the reason, to be printed (no row disappears silently)."""
        runnable, skipped = [], []
        for comp in comps:
            why = comp.available()
            if why is None:
                runnable.append(comp)
            else:
                skipped.append({"key": comp.key, "label": comp.label, "why": why})
            if comp.instead_of_dj:
                self.results["reference_stand_in"] = {"label": comp.label, "why": comp.instead_of_dj}
        self.results["skipped"] = skipped
        return runnable

    def _note_disk(self) -> None:
        """Temporary disk in use now (the bench deletes each checkpoint after loading it)."""
        self.disk_peak = max(self.disk_peak, ck.dir_bytes(self.base))

    # -- checkpoints ----------------------------------------------------------

    def _corpus(self) -> tuple[pa.Table, dict]:
        cfg = self.cfg
        if cfg.data:
            self.progress.step(f"reading {cfg.data}")
            table = self.data if self.data is not None else load_user_data(cfg.data)
            source = cfg.data
        else:
            self.progress.step(f"generating the {cfg.size / MB:,.0f} MB default corpus")
            last = [0.0]

            def tick(frac):
                self.progress.advance((frac - last[0]) * self.costs.corpus())
                last[0] = frac

            table = default_corpus(cfg.size, seed=cfg.seed, progress=tick)
            source = "default corpus (text, meta struct, __dj__stats__ struct; 1,000-row batches)"
        info = {
            "source": source,
            "rows": table.num_rows,
            "bytes": table.nbytes,
            "columns": table.column_names,
            "batches": sum(1 for _ in table.to_batches()),
            "text_zstd3_ratio": text_zstd_ratio(table),
        }
        return table, info

    def _checkpoints(self, comps, base):
        cfg = self.cfg
        table, info = self._corpus()
        self.results["corpus"] = info
        nbytes = table.nbytes
        prepared = {c.key: c.prepare(table) for c in comps}
        pieces = table_buffers(table)
        raw: dict[str, dict[str, list]] = {
            c.key: {"save_s": [], "load_s": [], "save_cpu": [], "load_cpu": [], "disk": [], "peak": []} for c in comps
        }
        # The zstd ceiling: how fast zstd alone compresses the same bytes.
        # Measured so that no zstd writer can exceed it: with the writers'
        # parallelism (num_proc threads), right after every writer's save
        # in every round (interleaved, so it sees the same memory state and
        # the same load from other processes as the writers), and taken as
        # the fastest sample -- noise on a shared machine only ever slows a
        # run down, so the best sample is the most robust estimate of what
        # the machine can do. Writers are compared by their best round too.
        ceiling: dict = {"one": [], "all": [], "cpu": []}
        checked: set[str] = set()
        for r in range(cfg.rounds):
            order = comps[r % len(comps) :] + comps[: r % len(comps)]
            for comp in order:
                self.progress.step(f"round {r + 1}/{cfg.rounds}: {comp.label}")
                path = os.path.join(base, f"ckpt-{comp.key}-{r}")
                self._one_round(comp, prepared[comp.key], table, path, raw, checked)
                self.progress.advance(self.costs.checkpoint(comp.key))
                self.progress.step(f"round {r + 1}/{cfg.rounds}: zstd ceiling")
                z = zstd_ceiling(pieces, level=ck.ZSTD_LEVEL, threads=cfg.num_proc, one_thread=comp is order[0])
                if "one_thread_s" in z:
                    ceiling["one"].append(z["bytes"] / z["one_thread_s"])
                ceiling["all"].append(z["bytes"] / z["all_cores_s"])
                ceiling["cpu"].append(z["all_cores_cpu_s"] / (z["bytes"] / 1e9))
                ceiling["ratio"] = z["ratio"]
                self.progress.advance(self.costs.ceiling())
        self.results["ceiling"] = {
            "level": ck.ZSTD_LEVEL,
            "one_thread_MBps": max(ceiling["one"]) / MB,
            "all_cores_MBps": max(ceiling["all"]) / MB,
            "all_cores_median_MBps": median(ceiling["all"]) / MB,
            "samples": len(ceiling["all"]),
            "threads": cfg.num_proc,
            "ratio": ceiling["ratio"],
            "cpu_s_per_GB": median(ceiling["cpu"]),
        }
        rows = []
        for comp in comps:
            d = raw[comp.key]
            save_s, load_s, disk = median(d["save_s"]), median(d["load_s"]), median(d["disk"])
            peak = median(d["peak"])
            rows.append(
                {
                    "key": comp.key,
                    "label": comp.label,
                    "note": comp.note,
                    "save_MBps": nbytes / save_s / MB,
                    "save_best_MBps": nbytes / min(d["save_s"]) / MB,
                    "zstd": comp.key in ck.ZSTD_WRITERS,
                    "load_MBps": nbytes / load_s / MB,
                    "save_cpu_s_per_GB": median(d["save_cpu"]) / (nbytes / 1e9),
                    "load_cpu_s_per_GB": median(d["load_cpu"]) / (nbytes / 1e9),
                    "disk_MB": disk / MB,
                    "ratio": nbytes / disk if disk else None,
                    "peak_above_MB": None if peak is None else peak / MB,
                    "peak_above_pct": None if peak is None else 100 * peak / nbytes,
                    "rounds": d,
                }
            )
        self.results["checkpoints"] = rows
        del prepared, pieces
        release_memory()
        self._small(comps, table, base)

    def _one_round(self, comp, data, table, path, raw, checked) -> None:
        """Saves and loads once, recording times, CPU, disk and peak memory;
        the first load of each writer is compared with the table in full."""
        with PeakRSS() as mem:
            save_s, save_cpu, _ = timed_cpu(comp.save, data, path)
        raw[comp.key]["save_s"].append(save_s)
        raw[comp.key]["save_cpu"].append(save_cpu)
        raw[comp.key]["peak"].append(mem.above)
        raw[comp.key]["disk"].append(ck.dir_bytes(path))
        self._note_disk()
        release_memory()
        load_s, load_cpu, loaded = timed_cpu(comp.load, path)
        raw[comp.key]["load_s"].append(load_s)
        raw[comp.key]["load_cpu"].append(load_cpu)
        if loaded.num_rows != table.num_rows:
            raise AssertionError(f"{comp.label}: loaded {loaded.num_rows} rows, saved {table.num_rows}")
        if comp.key not in checked:
            if not loaded.equals(table):
                raise AssertionError(f"{comp.label}: the loaded table differs from the saved one")
            checked.add(comp.key)
        del loaded
        shutil.rmtree(path, ignore_errors=True)
        release_memory()

    def _small_cases(self, comps):
        """The writers, plus the reference with num_proc=1 when num_proc > 1."""
        cases = list(comps)
        ref = next((c for c in comps if c.key in ("dj", "hf")), None)
        if ref is not None and self.cfg.num_proc > 1:
            single = type(ref)(1)
            single.available()
            single.key = ref.key + "_np1"
            single.label = ref.label + " (num_proc=1)"
            cases.append(single)
        return cases

    def _small(self, comps, table, base):
        cfg = self.cfg
        small = table.slice(0, min(cfg.small_rows, table.num_rows))
        cases = self._small_cases(comps)
        prepared = {c.key: c.prepare(small) for c in cases}
        raw: dict[str, dict[str, list]] = {c.key: {"save_s": [], "load_s": []} for c in cases}
        for r in range(cfg.small_rounds + 1):  # round 0 warms imports up, not counted
            for comp in cases:
                self.progress.step(f"small checkpoint, round {r}/{cfg.small_rounds}: {comp.label}")
                path = os.path.join(base, f"small-{comp.key}-{r}")
                save_s, _ = timed(comp.save, prepared[comp.key], path)
                load_s, loaded = timed(comp.load, path)
                if loaded.num_rows != small.num_rows:
                    raise AssertionError(f"{comp.label}: loaded {loaded.num_rows} rows, saved {small.num_rows}")
                shutil.rmtree(path, ignore_errors=True)
                self.progress.advance(self.costs.small(comp.key))
                if r:
                    raw[comp.key]["save_s"].append(save_s)
                    raw[comp.key]["load_s"].append(load_s)
        self.results["small"] = {
            "rows": small.num_rows,
            "bytes": small.nbytes,
            "cases": [
                {
                    "key": c.key,
                    "label": c.label,
                    "save_ms": 1000 * median(raw[c.key]["save_s"]),
                    "load_ms": 1000 * median(raw[c.key]["load_s"]),
                    "rounds": raw[c.key],
                }
                for c in cases
            ],
        }

    # -- events ---------------------------------------------------------------

    def _events(self, impls, base):
        cfg = self.cfg
        out: dict = {"rates": [], "analysis": [], "skipped": {}}
        for name, module in impls.items():
            if module is None:
                out["skipped"][name] = (
                    f"{ev.NOT_AVAILABLE} ({ev.ACCEL_MODULE} cannot be imported)"
                    if name == "accel"
                    else "py-data-juicer is not installed"
                )
        present = {k: m for k, m in impls.items() if m is not None}
        counts = {"accel": cfg.events, "reference": max(cfg.events // 10, 1000)}
        raw: dict = {}
        for r in range(cfg.rounds):
            for call in ev.CALLS:
                for sink in ev.SINKS:
                    for threads in (1, 4):
                        for name, module in present.items():
                            self.progress.step(
                                f"events round {r + 1}/{cfg.rounds}: {name} {call}, {threads} thread(s), {sink}"
                            )
                            path = os.path.join(base, f"events-{name}-{call}-{sink}-{threads}-{r}")
                            rate = ev.events_case(module, path, counts[name], threads, sink, call)
                            self._note_disk()
                            raw.setdefault((name, call, sink, threads), []).append(rate)
                            shutil.rmtree(path, ignore_errors=True)
                            self.progress.advance(self.costs.events(name, call, sink, threads))
        for (name, call, sink, threads), rates in raw.items():
            out["rates"].append(
                {
                    "impl": name,
                    "call": call,
                    "sink": sink,
                    "threads": threads,
                    "events": counts[name],
                    "events_per_s": median(rates),
                    "rounds": rates,
                }
            )
        if present:
            self.progress.step("the floors: loguru alone, and the loops with the logging removed")
            floor = [ev.loguru_info_floor(os.path.join(base, f"loguru-{r}")) for r in range(cfg.rounds)]
            out["loguru_info_file_us"] = median(floor) * 1e6
            floor4 = [ev.loguru_info_floor(os.path.join(base, f"loguru4-{r}"), threads=4) for r in range(cfg.rounds)]
            out["loguru_info_file_us_4_threads"] = median(floor4) * 1e6
            # The same loops with the logging removed, on the reference's
            # log_op_start body when it is there (ours is a copy of it).
            body_module = present.get("reference") or present["accel"]
            floors: dict = {}
            for _ in range(cfg.rounds):
                for call in ev.CALLS:
                    for threads in (1, 4):
                        seconds = ev.interpreter_floor(body_module, cfg.events, threads, call)
                        floors.setdefault(call, {}).setdefault(str(threads), []).append(seconds)
            self.progress.advance(cfg.rounds * self.costs.floors())
            out["no_logging_us"] = {
                call: {threads: median(values) * 1e6 for threads, values in by_threads.items()}
                for call, by_threads in floors.items()
            }
        if present:
            self.progress.step(f"writing a {cfg.analysis_events:,}-event log")
            log_dir = os.path.join(base, "analysis")
            os.makedirs(log_dir, exist_ok=True)
            log_file = os.path.join(log_dir, "events_bench.jsonl")
            lines = ev.write_event_log(log_file, cfg.analysis_events, cfg.analysis_partitions)
            self._note_disk()
            self.progress.advance(self.costs.analysis_log())
            times: dict = {}
            answers: dict = {}
            for r in range(cfg.rounds):
                for name, module in present.items():
                    self.progress.step(f"analyze_resumption_state round {r + 1}/{cfg.rounds}: {name}")
                    seconds, result = ev.analysis_case(module, os.path.join(log_dir, f"{name}-{r}"), log_file)
                    times.setdefault(name, []).append(seconds)
                    answers[name] = ev.analysis_summary(result)
                    self.progress.advance(self.costs.analysis(name))
            if len(answers) == 2 and answers["accel"] != answers["reference"]:
                raise AssertionError(f"analyze_resumption_state answers differ: {answers}")
            out["analysis"] = [
                {
                    "impl": name,
                    "events": lines,
                    "partitions": cfg.analysis_partitions,
                    "seconds": median(t),
                    "rounds": t,
                }
                for name, t in times.items()
            ]
            shutil.rmtree(log_dir, ignore_errors=True)
        self.results["events"] = out
