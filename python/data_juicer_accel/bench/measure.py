"""Timing, memory sampling, and the zstd ceiling."""

from __future__ import annotations

import ctypes
import gc
import os
import resource
import statistics
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pyarrow as pa

try:
    import psutil
except ImportError:  # pragma: no cover - psutil comes with py-data-juicer's and datasets' users
    psutil = None


def median(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def release_memory() -> None:
    """Hands freed memory back to the OS so the next RSS baseline is honest:
    Python's garbage, Arrow's pool, glibc's arenas (Rust allocates there)."""
    gc.collect()
    try:
        pa.default_memory_pool().release_unused()
    except AttributeError:  # pragma: no cover - old pyarrow
        pass
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # pragma: no cover - not glibc
        pass


_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def _own_rss() -> int:
    """This process's RSS, cheaply (one small /proc read on Linux)."""
    try:
        with open("/proc/self/statm", "rb") as f:
            return int(f.read().split()[1]) * _PAGE
    except OSError:
        return psutil.Process().memory_info().rss if psutil is not None else 0


def _children_rss(children) -> int:
    total = 0
    for child in children:
        try:
            total += child.memory_info().rss
        except psutil.Error:
            pass
    return total


def tree_rss() -> int:
    """RSS of this process plus its children (a spawn pool's workers count)."""
    if psutil is None:
        return _own_rss()
    return _own_rss() + _children_rss(psutil.Process().children(recursive=True))


class PeakRSS:
    """Samples the process tree's RSS in a thread; ``above`` is the peak
    minus the RSS at entry (what the operation added). This process is read
    every ``interval`` seconds; the list of children (listing them scans
    /proc) every ``children_interval``, their RSS at every sample. Sampling
    costs well under 1% of a core."""

    def __init__(self, interval: float = 0.005, children_interval: float = 0.1):
        self.interval = interval
        self.children_interval = children_interval
        self.baseline = 0
        self.peak = 0
        self._stop = threading.Event()

    def _run(self):
        children, listed = [], 0.0
        while not self._stop.is_set():
            now = time.monotonic()
            if psutil is not None and now - listed >= self.children_interval:
                children, listed = psutil.Process().children(recursive=True), now
            self.peak = max(self.peak, _own_rss() + (_children_rss(children) if children else 0))
            self._stop.wait(self.interval)

    def __enter__(self):
        release_memory()
        self.baseline = self.peak = tree_rss()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, tree_rss())

    @property
    def above(self) -> int | None:
        return max(0, self.peak - self.baseline)


def cpu_seconds() -> float:
    """CPU time of this process (all threads) and of its reaped children."""
    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


def timed(fn, *args):
    start = time.perf_counter()
    result = fn(*args)
    return time.perf_counter() - start, result


def timed_cpu(fn, *args):
    """(wall seconds, CPU seconds, result): CPU time counts every thread and
    every child process (a spawn pool's workers), so it measures the work
    done whatever else runs on the machine."""
    cpu = cpu_seconds()
    start = time.perf_counter()
    result = fn(*args)
    wall = time.perf_counter() - start
    return wall, cpu_seconds() - cpu, result


def zstd_ceiling(pieces: list, level: int = 1, threads: int | None = None, one_thread: bool = True) -> dict:
    """python-zstandard's own speed on the same bytes, in the same ~8 MiB
    pieces a writer compresses: on ``threads`` threads (the writers'
    num_proc), and first on one thread unless ``one_thread`` is False.
    Compression only: no Arrow encoding, no I/O, so no zstd writer of the
    same bytes can be faster under the same conditions."""
    import zstandard

    threads = threads or os.cpu_count() or 1
    raw = sum(len(p) for p in pieces)
    out: dict = {"bytes": raw, "threads": threads}
    if one_thread:
        cctx = zstandard.ZstdCompressor(level=level)
        start, cpu = time.perf_counter(), cpu_seconds()
        compressed = sum(len(cctx.compress(p)) for p in pieces)
        out["one_thread_s"], out["one_thread_cpu_s"] = time.perf_counter() - start, cpu_seconds() - cpu
        out["ratio"] = raw / max(compressed, 1)

    local = threading.local()

    def compress(piece):
        ctx = getattr(local, "ctx", None)
        if ctx is None:
            ctx = local.ctx = zstandard.ZstdCompressor(level=level)
        return len(ctx.compress(piece))

    with ThreadPoolExecutor(threads) as pool:
        start, cpu = time.perf_counter(), cpu_seconds()
        compressed = sum(pool.map(compress, pieces, chunksize=4))
        out["all_cores_s"], out["all_cores_cpu_s"] = time.perf_counter() - start, cpu_seconds() - cpu
    out.setdefault("ratio", raw / max(compressed, 1))
    return out
