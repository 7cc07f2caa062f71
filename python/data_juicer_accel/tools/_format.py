"""Plain-text tables and sizes for the subcommands (no extra dependency)."""

from __future__ import annotations

import json
import sys
from typing import Any


def human_bytes(n: int | float | None) -> str:
    if n is None:
        return "-"
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(value) < 1024 or unit == "TiB":
            return f"{int(value)} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} TiB"  # unreachable


def table(headers: list[str], rows: list[list[Any]], right: set[int] | None = None, markdown: bool = False) -> str:
    """The one table renderer of every subcommand: a header, a rule, the rows;
    columns in ``right`` are right-aligned, None shows as "-". ``markdown``
    draws a GitHub table (for README.md) instead of the plain terminal one."""
    right = right or set()
    cells = [[("-" if c is None else str(c)) for c in row] for row in rows]
    widths = [len(h) for h in headers]
    for row in cells:
        for i, c in enumerate(row):
            widths[i] = max(widths[i], len(c))

    def line(values: list[str]) -> str:
        out = [v.rjust(widths[i]) if i in right else v.ljust(widths[i]) for i, v in enumerate(values)]
        return "| " + " | ".join(out) + " |" if markdown else "  ".join(out).rstrip()

    if markdown:
        rule = "|" + "|".join("-" * (w + 1) + ":" if i in right else "-" * (w + 2) for i, w in enumerate(widths)) + "|"
    else:
        rule = line(["-" * w for w in widths])
    return "\n".join([line(headers), rule, *(line(r) for r in cells)])


def key_values(pairs: list[tuple[str, Any]]) -> str:
    width = max((len(k) for k, _ in pairs), default=0)
    return "\n".join(f"{k + ':':<{width + 1}} {'-' if v is None else v}" for k, v in pairs)


def print_json(data: Any) -> None:
    json.dump(data, sys.stdout, indent=2, default=str, sort_keys=False)
    sys.stdout.write("\n")


def error(message: str) -> None:
    print(f"data-juicer-accel: {message}", file=sys.stderr)
