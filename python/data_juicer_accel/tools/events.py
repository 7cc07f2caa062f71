"""``data-juicer-accel events WORK_DIR``: a job's status, resumption plan and partitions.

WORK_DIR is a job's work directory (``<work_dir>/<job_id>``, holding
``events_*.jsonl``). The report comes from the drop-in's public API
(``generate_status_report``, ``EventLoggingMixin.analyze_resumption_state``),
run over the job's latest events file (the one ``find_latest_events_file``
picks) through a reader of that file, without writing anything. ``--follow`` prints events as the running
job appends them and stops at ``job_complete`` / ``job_failed``.

Lines no reader can use (garbage, text that is not UTF-8, a line cut by a
kill, JSON that is not an object, nesting deeper than 256 levels) are skipped
here as in the analysis; the report is the one the log without them gives.

Exit codes: 0 report printed (``--follow``: job completed), 1 ``--follow``: job
failed, or the report cannot be built from what the file holds, 2 no events
there, 124 ``--follow --timeout`` elapsed, 130 interrupted.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import time
from collections import Counter
from datetime import datetime
from pathlib import Path
from typing import Any

from data_juicer_accel.tools._format import error, key_values, print_json, table

NAME = "events"

EXIT_OK = 0
EXIT_JOB_FAILED = 1
EXIT_UNREADABLE = 1
EXIT_NO_EVENTS = 2
EXIT_TIMEOUT = 124
EXIT_INTERRUPTED = 130

_EVENTS_GLOB = "events_*.jsonl"
_END_EVENTS = {"job_complete": EXIT_OK, "job_failed": EXIT_JOB_FAILED}


class _NoEvents(Exception):
    pass


class _Unreadable(Exception):
    """The analysis failed on the events file's content (as the reference's would)."""


def add_parser(subparsers) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        NAME,
        help="a job's status report, resumption plan and partitions; --follow to tail it",
        description="Report on a Data-Juicer job from its events (WORK_DIR: <work_dir>/<job_id>).",
    )
    parser.add_argument("work_dir", metavar="WORK_DIR")
    parser.add_argument(
        "--follow", "-f", action="store_true", help="print events as they are logged, until the job ends"
    )
    parser.add_argument(
        "--timeout", type=float, default=None, metavar="S", help="with --follow: give up after S seconds (exit 124)"
    )
    parser.add_argument("--interval", type=float, default=0.2, metavar="S", help=argparse.SUPPRESS)
    parser.add_argument("--json", action="store_true", help="machine-readable output (--follow: one JSON event a line)")
    parser.set_defaults(run=run)
    return parser


def run(args: argparse.Namespace) -> int:
    work_dir = os.path.abspath(args.work_dir)
    if args.follow:
        if not os.path.isdir(work_dir):
            return _fail(args, f"{work_dir}: no such directory", EXIT_NO_EVENTS)
        try:
            return _follow(work_dir, args.timeout, args.interval, args.json)
        except KeyboardInterrupt:
            return EXIT_INTERRUPTED
    try:
        report = build_report(work_dir)
        text = None if args.json else _report_text(report)
    except _NoEvents as e:
        return _fail(args, str(e), EXIT_NO_EVENTS)
    except _Unreadable as e:
        return _fail(args, str(e), EXIT_UNREADABLE)
    if args.json:
        print_json(report)
    else:
        print(text)
    return EXIT_OK


def _fail(args, message: str, code: int) -> int:
    error(message)
    if getattr(args, "json", False):
        print_json({"error": message, "exit_code": code})
    return code


# --------------------------------------------------------------------------
# Reading a job through the public API, without writing to it


class _EventsFileReader:
    """An events file read whole, as the mixin's analysis and the status
    report read a logger: ``jsonl_file``, ``job_id``, ``events`` (``Event``
    objects of the types ``EventType`` knows; the other types counted in
    ``unknown_event_types``), ``generate_status_report()``. Writes nothing."""

    def __init__(self, events_file: Path, job_id: str):
        from data_juicer_accel.core.executor._event import EVENT_FIELDS, Event, EventType

        self.jsonl_file = events_file
        self.job_id = job_id
        self.events: list = []
        self.unknown_event_types: Counter = Counter()
        for record in _read_lines(events_file):
            try:
                event_type = EventType(record.get("event_type"))
            except ValueError:
                self.unknown_event_types[str(record.get("event_type"))] += 1
                continue
            kwargs = {k: v for k, v in record.items() if k in EVENT_FIELDS}
            kwargs.update(event_type=event_type)
            kwargs.setdefault("timestamp", 0.0)
            kwargs.setdefault("message", "")
            self.events.append(Event(**kwargs))

    def generate_status_report(self) -> str:
        from data_juicer_accel.core.executor._event_logger import status_report

        return status_report(self.events)


def _job_view(work_dir: str, reader: _EventsFileReader):
    """The mixin's analysis over a finished or running job's files."""
    from data_juicer_accel.core.executor.event_logging_mixin import EventLoggingMixin

    class JobView(EventLoggingMixin):
        executor_type = "events"

        def __init__(self):  # no mixin __init__: it would set up logging
            self.work_dir = work_dir
            self.event_logger = reader
            self.cfg = argparse.Namespace()

    return JobView()


def _read_lines(path: Path) -> list[dict[str, Any]]:
    """The events of ``path`` every reader reads (a partial last line being
    written is left for later)."""
    with open(path, "rb") as f:
        data = f.read()
    return _records(data[: data.rfind(b"\n") + 1])


def _records(data: bytes) -> list[dict[str, Any]]:
    """The events in whole lines ``data``: lines that are not a JSON object
    (garbage, text that is not UTF-8, non-objects, nesting too deep) are skipped."""
    from data_juicer_accel import _native
    from data_juicer_accel.core.executor._event_files import parse_event_lines

    return parse_event_lines(_native.event_lines(data))


def _events_files(work_dir: str) -> list[Path]:
    return sorted(Path(work_dir).glob(_EVENTS_GLOB), key=lambda p: (p.stat().st_mtime, p.name))


def _jobs_below(work_dir: str) -> list[str]:
    """Job directories directly below ``work_dir`` (a work root holding several jobs)."""
    from data_juicer_accel.core.executor.event_logging_mixin import EventLogger

    jobs = {os.path.basename(j["work_dir"]) for j in EventLogger.list_available_jobs(work_dir)}
    for entry in os.scandir(work_dir):
        if entry.is_dir() and any(Path(entry.path).glob(_EVENTS_GLOB)):
            jobs.add(entry.name)
    return sorted(jobs)


def build_report(work_dir: str) -> dict[str, Any]:
    from data_juicer_accel.core.executor._event_files import latest_events_file

    if not os.path.exists(work_dir):
        raise _NoEvents(f"{work_dir}: no such directory")
    if not os.path.isdir(work_dir):
        raise _NoEvents(f"{work_dir}: not a directory")
    latest = latest_events_file(work_dir)
    if latest is None:
        jobs = _jobs_below(work_dir)
        if len(jobs) == 1:
            return build_report(os.path.join(work_dir, jobs[0]))
        if jobs:
            raise _NoEvents(
                f"{work_dir} holds {len(jobs)} jobs; pass one of their directories: "
                + ", ".join(os.path.join(work_dir, j) for j in jobs)
            )
        raise _NoEvents(f"{work_dir}: no Data-Juicer job events here (no {_EVENTS_GLOB})")

    summary_path = os.path.join(work_dir, "job_summary.json")
    summary = None
    if os.path.exists(summary_path):
        try:
            with open(summary_path) as f:
                summary = json.load(f)
        except (OSError, ValueError):
            summary = None
    try:
        return _report(work_dir, latest, summary)
    except Exception as e:  # what the file holds broke the analysis: say so in one line
        reason = str(e).splitlines()[0] if str(e) else ""
        raise _Unreadable(f"{latest}: cannot analyse its events: {type(e).__name__}: {reason}") from e


def _report(work_dir: str, latest: Path, summary) -> dict[str, Any]:
    records = _read_lines(latest)
    job_id = (summary or {}).get("job_id") or next(
        (r["job_id"] for r in records if r.get("job_id")), os.path.basename(work_dir)
    )

    reader = _EventsFileReader(latest, job_id)
    view = _job_view(work_dir, reader)
    analysis = view.analyze_resumption_state(job_id)
    counts = Counter(e.event_type.value for e in reader.events)
    counts.update(reader.unknown_event_types)

    runs = []
    for path in _events_files(work_dir):
        lines = _read_lines(path)
        types = [r.get("event_type") for r in lines]
        runs.append(
            {
                "events_file": str(path),
                "events": len(lines),
                "started": lines[0].get("timestamp") if lines else None,
                "last_event": types[-1] if types else None,
                "last_time": lines[-1].get("timestamp") if lines else None,
                "ended": next((t for t in reversed(types) if t in _END_EVENTS), None),
            }
        )

    return {
        "job_id": job_id,
        "work_dir": work_dir,
        "events_file": str(latest),
        "job_status": analysis.get("job_status"),
        "job_summary": summary,
        "runs": runs,
        "event_counts": dict(sorted(counts.items())),
        "status_report": view.generate_status_report(),
        "resumption": analysis,
    }


def _when(ts) -> str:
    if not isinstance(ts, (int, float)) or ts <= 0:
        return "-"
    return datetime.fromtimestamp(ts).strftime("%Y-%m-%d %H:%M:%S")


def _report_text(r: dict[str, Any]) -> str:
    """The report as ``_print_report`` prints it (built whole before printing,
    so a value it fails on leaves no half-printed report)."""
    out = io.StringIO()
    try:
        with contextlib.redirect_stdout(out):
            _print_report(r)
    except Exception as e:  # values of types no Data-Juicer logger writes
        raise _Unreadable(f"{r['events_file']}: cannot print its report: {type(e).__name__}: {e}") from e
    return out.getvalue().rstrip("\n")


def _resume_after(op: dict[str, Any] | None) -> str:
    if not op:
        return "-"
    return f"{op['operation_name']} (op {op['operation_idx'] + 1}; {op['ops_done']} done)"


def _print_report(r: dict[str, Any]) -> None:
    summary = r["job_summary"] or {}
    res = r["resumption"]
    plan = res.get("resumption_plan", {})
    head = [
        ("job", r["job_id"]),
        ("work dir", r["work_dir"]),
        ("status", r["job_status"]),
        ("events file", r["events_file"]),
        ("runs", len(r["runs"])),
    ]
    last = r["runs"][-1] if r["runs"] else None
    if last is not None and last["ended"] is None:
        head.append(
            ("latest run", f"no job_complete/job_failed yet: still running, or it died (last: {last['last_event']})")
        )
    if summary.get("resumption_command"):
        head.append(("resume with", summary["resumption_command"]))
    print(key_values(head))

    print("\nRuns (one events file each):")
    rows = [
        [i, os.path.basename(run["events_file"]), _when(run["started"]), run["events"], run["last_event"], run["ended"]]
        for i, run in enumerate(r["runs"], 1)
    ]
    print(table(["#", "events file", "started", "events", "last event", "ended with"], rows, right={0, 3}))

    print()
    print(r["status_report"])

    print("\nResumption plan:")
    plan_rows = [
        ("can resume", "yes" if res.get("can_resume") else "no"),
        ("reason", plan.get("reason")),
        ("resume from checkpoint", res.get("resume_from_checkpoint")),
        ("resume after op", _resume_after(res.get("resume_after_operation"))),
        ("partitions to retry", ", ".join(map(str, res.get("partitions_to_retry") or [])) or "-"),
        ("partitions to skip", ", ".join(map(str, res.get("partitions_to_skip") or [])) or "-"),
    ]
    print("\n".join("  " + line for line in key_values(plan_rows).splitlines()))
    metrics = res.get("progress_metrics") or {}
    if metrics:
        pct = metrics.get("progress_percentage")
        elapsed = metrics.get("elapsed_time_seconds")
        print(
            f"  progress:               {metrics.get('completed_partitions', 0)}/{metrics.get('total_partitions', 0)}"
            f" partitions completed, {metrics.get('failed_partitions', 0)} failed,"
            f" {metrics.get('running_partitions', 0)} running"
            + (f" ({pct:.1f}%)" if isinstance(pct, (int, float)) else "")
            + (f", {elapsed:.1f}s since job start" if isinstance(elapsed, (int, float)) else "")
        )

    states = res.get("partition_states") or {}
    print(f"\nPartitions ({len(states)}):")
    if not states:
        print("  none logged (the default executor logs no partition events)")
        return
    rows = []
    for pid, s in sorted(states.items(), key=lambda kv: _sort_key(kv[0])):
        op = s.get("current_operation") or {}
        rows.append(
            [
                pid,
                s.get("status"),
                f"{s['duration']:.2f}s" if isinstance(s.get("duration"), (int, float)) else None,
                s.get("retry_count"),
                f"{op.get('name')} (#{op.get('idx')})" if op else None,
                s.get("error"),
            ]
        )
    print(table(["partition", "status", "duration", "retries", "current op", "error"], rows, right={0, 2, 3}))


def _sort_key(pid) -> tuple:
    try:
        return (0, int(pid), "")
    except (TypeError, ValueError):
        return (1, 0, str(pid))


# --------------------------------------------------------------------------
# --follow


def _format_event(record: dict[str, Any]) -> str:
    parts = [_when(record.get("timestamp")), str(record.get("event_type"))]
    if record.get("partition_id") is not None:
        parts.append(f"partition={record['partition_id']}")
    if record.get("operation_name"):
        parts.append(f"op={record['operation_name']}")
    parts.append(str(record.get("message", "")))
    return "  ".join(parts)


def _follow(work_dir: str, timeout: float | None, interval: float, as_json: bool) -> int:
    """Print the job's events as they are appended; switch to a newer events
    file when a new run starts; stop at the end of the job."""
    deadline = None if timeout is None else time.monotonic() + timeout
    current: Path | None = None
    pos = 0
    pending = b""
    while True:
        files = _events_files(work_dir)
        newest = files[-1] if files else None
        chunk = b""
        if current is not None:
            try:
                with open(current, "rb") as f:
                    f.seek(pos)
                    chunk = f.read()
            except FileNotFoundError:
                chunk = b""
        if not chunk and newest is not None and newest != current:
            if current is not None and not as_json:
                print(f"--- new run: {newest.name}", flush=True)
            current, pos, pending = newest, 0, b""
            continue
        pos += len(chunk)
        pending += chunk
        whole = pending.rfind(b"\n") + 1  # after it, a partial line (or nothing)
        records, pending = _records(pending[:whole]), pending[whole:]
        for record in records:
            if as_json:
                print(json.dumps(record, default=str), flush=True)
            else:
                print(_format_event(record), flush=True)
            event_type = record.get("event_type")
            end = _END_EVENTS.get(event_type) if isinstance(event_type, str) else None
            if end is not None:
                return end
        if deadline is not None and time.monotonic() >= deadline:
            error(f"--follow: no job_complete/job_failed within {timeout:g}s")
            return EXIT_TIMEOUT
        if not chunk:
            time.sleep(interval)
