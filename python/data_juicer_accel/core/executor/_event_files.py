"""Reading event logs: which file of a work directory is the latest run's,
and the events of a file as every reader here reads them.

The lines come from ``_native`` (rust/events/lines.rs), which passes only
whole UTF-8 JSON objects at most 256 levels deep: garbage, text that is not
UTF-8, a line cut by a kill and non-objects are skipped, so that no log stops
a reader (the analysis, ``check_job_completion``, the ``events`` command).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from loguru import logger

from data_juicer_accel import _native

EVENTS_GLOB = "events_*.jsonl"


def latest_events_file(work_dir: str) -> Path | None:
    """The ``events_*.jsonl`` of ``work_dir`` modified last, among those
    holding events (the reference's file exists once an event is logged; ours
    from construction). A file that vanishes meanwhile is passed over."""
    events_dir = Path(work_dir)
    if not events_dir.exists():
        return None
    mtimes = {}
    for events_file in events_dir.glob(EVENTS_GLOB):
        try:
            stat = events_file.stat()
        except OSError:
            continue
        if stat.st_size > 0:
            mtimes[events_file] = stat.st_mtime
    if not mtimes:
        return None
    return max(mtimes, key=mtimes.__getitem__)


def holds_events(events_file) -> bool:
    """Whether ``events_file`` exists and is not empty (``os.path.exists``
    is false for a file it cannot stat, too)."""
    try:
        return os.stat(events_file).st_size > 0
    except (OSError, ValueError):
        return False


def file_has_event_type(events_file, event_type: str) -> bool:
    """Whether ``events_file`` holds an event of ``event_type`` (False, with a
    warning, when it cannot be read): in Rust, or in Python for a line only
    Python reads as the reference does."""
    try:
        found = _native.events_file_has_type(str(events_file), event_type)
        if found is None:
            found = any(e.get("event_type") == event_type for e in read_events(events_file))
    except OSError as e:
        logger.warning(f"Error reading events file {events_file}: {e}")
        return False
    return found


def read_events(events_file) -> list[dict[str, Any]]:
    """The events of ``events_file``, as ``json.loads`` reads them, from the
    lines every reader reads."""
    return parse_event_lines(_native.read_event_lines(str(events_file)))


def parse_event_lines(lines: list[str]) -> list[dict[str, Any]]:
    """``json.loads`` of lines ``_native`` found readable. A line it still
    refuses (a lowered ``sys.set_int_max_str_digits``, a call stack already
    near the recursion limit) is skipped like any unreadable line."""
    events = []
    for line in lines:
        try:
            events.append(json.loads(line))
        except (ValueError, RecursionError):
            continue
    return events
