"""What the bench says while it runs, on stderr: its first two lines (the
time and disk to expect) and a dependency-free progress bar."""

from __future__ import annotations

import os
import sys
import time


def expectations(seconds: float, disk_bytes: float, where: str) -> str:
    """The first two lines of every bench run: how long it should take and
    how much temporary disk it needs, in ``where``."""
    minutes = seconds / 60
    took = f"about {minutes:.0f} min" if minutes >= 1.5 else f"about {max(seconds, 1):.0f} s"
    load = os.getloadavg()[0]
    busy = f" (load average now {load:.1f}: expect longer)" if load > (os.cpu_count() or 1) else ""
    return (
        f"expected: {took} on a quiet 2-core machine{busy}; Ctrl-C stops it\n"
        f"temporary disk: at most about {disk_bytes / 1e6:,.0f} MB in {where} (removed at the end)"
    )


class Progress:
    def __init__(self, total: float, enabled: bool = True, stream=None):
        self.total = max(total, 1e-9)
        self.done = 0.0
        self.stream = stream or sys.stderr
        self.enabled = enabled
        self.tty = enabled and hasattr(self.stream, "isatty") and self.stream.isatty()
        self.start = time.monotonic()
        self.label = ""
        self._last_line = 0.0

    def step(self, label: str) -> None:
        """Announces the unit of work about to run."""
        self.label = label
        self._draw(force=not self.tty)

    def advance(self, amount: float = 1.0) -> None:
        self.done += amount
        self._draw()

    def _draw(self, force: bool = False) -> None:
        if not self.enabled:
            return
        # Work is planned in expected seconds; the bar shows what is done of
        # the plan, never 100% before close() (the last step is still running
        # when its cost is added), and the time left at the pace so far.
        frac = min(self.done / self.total, 0.99)
        elapsed = time.monotonic() - self.start
        left = f"~{elapsed / frac * (1 - frac):.0f}s left" if frac > 0.02 else ""
        if self.tty:
            width = 24
            filled = int(frac * width)
            bar = "#" * filled + "-" * (width - filled)
            text = f"\r[{bar}] {frac * 100:3.0f}% {elapsed:5.0f}s {left:>11}  {self.label[:45]:<45}"
            self.stream.write(text)
            self.stream.flush()
        elif force or elapsed - self._last_line > 10:
            self._last_line = elapsed
            self.stream.write(f"[{frac * 100:3.0f}% {elapsed:5.0f}s {left}] {self.label}\n")
            self.stream.flush()

    def close(self) -> None:
        if self.enabled and self.tty:
            self.stream.write("\r" + " " * 96 + "\r")
            self.stream.flush()
