#!/usr/bin/env python3
# ruff: noqa: UP006, UP035, UP045
# (typing spelled as in the reference's signatures)
"""``EventLogger``: the reference's event logger over a native sink, and the
exit and fork handling of every live logger.

An event is serialised in Rust and copied, without a lock, into one of two
bounded buffers of its ``_native.EventSink`` (the caller waits only when both
are full); a background Rust thread writes the filled buffer to
``events_<UTC stamp>.jsonl`` in batches (one ``write()`` per batch of whole
lines, ``O_APPEND``). Callers take no Python lock and open no file. Lines reach
the disk within ``flush_interval`` seconds; job-level events are written and
fsynced before the call returns; everything is flushed at exit. In a worker
process (``multiprocessing`` or ``multiprocess``, any start method) and in a
forked child, each call has its line in the file before it returns.

The lifecycle functions at the bottom (``_flush_all_loggers``,
``_restart_after_fork``) act on every live logger of the process.
"""

import json
import os
import threading
import time
import weakref
from collections import defaultdict, deque
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Dict, Generator, List, Optional
from uuid import uuid4

from loguru import logger

from data_juicer_accel import _lifecycle, _native
from data_juicer_accel._lifecycle import in_worker_process as _in_worker_process
from data_juicer_accel.core.executor._event import EVENT_FIELDS, Event, EventType
from data_juicer_accel.core.executor._event_files import file_has_event_type, latest_events_file

#: Seconds a logged event may wait in memory before it is written.
DEFAULT_FLUSH_INTERVAL = 0.1
#: Events each of the two buffers holds (at most 4 MB of lines each) before
#: loggers wait for the flush thread.
DEFAULT_QUEUE_SIZE = 65536

_INFO = 20


def _min_log_level() -> float:
    """The lowest level any loguru sink accepts (``inf`` with no sink), so
    that lines nobody would see are not even formatted."""
    try:
        return logger._core.min_level  # type: ignore[attr-defined]
    except AttributeError:  # a loguru without the attribute: always format
        return 0


def _utc_stamp() -> str:
    """The UTC time as ``YYYYmmdd_HHMMSS`` (the reference's job id and file stamp)."""
    return datetime.now(timezone.utc).strftime("%Y%m%d_%H%M%S")


class EventLogger:
    """Event logging system with real-time capabilities and JSONL event log for resumability.

    Events go to the in-memory ``events`` deque at once and to ``jsonl_file``
    (created here) through two Rust buffers and a flush thread: within
    ``flush_interval`` seconds, at ``flush()``/``close()``, at exit, or at once
    for job-level events. With ``flush_interval=0``, and in worker processes,
    each event's line is in the file before ``log_event`` returns.
    """

    def __init__(
        self,
        log_dir: str,
        job_id: Optional[str] = None,
        work_dir: Optional[str] = None,
        *,
        flush_interval: Optional[float] = None,
        queue_size: Optional[int] = None,
    ):
        self.log_dir = Path(log_dir)
        self.log_dir.mkdir(parents=True, exist_ok=True)
        # Use provided job_id or generate a simple timestamp-based one
        self.job_id = job_id or f"{_utc_stamp()}-{uuid4().hex[:6]}"
        # What ``events`` returns. Logging keeps events natively; they are
        # moved in (built as Event objects) when ``events`` is read.
        self._events: deque = deque(maxlen=10000)
        self._events_read_lock = threading.Lock()
        # Kept for callers that use it; logging itself takes no Python lock.
        self.event_lock = threading.Lock()

        # Use work_dir for JSONL file if provided, otherwise use log_dir
        self.jsonl_dir = Path(work_dir) if work_dir else self.log_dir
        self.jsonl_dir.mkdir(parents=True, exist_ok=True)

        # Create timestamped events file
        timestamp = _utc_stamp()
        self.jsonl_file = self.jsonl_dir / f"events_{timestamp}.jsonl"

        self._sink = _native.EventSink(
            str(self.jsonl_file),
            Event,
            EVENT_FIELDS,
            flush_interval=DEFAULT_FLUSH_INTERVAL if flush_interval is None else float(flush_interval),
            queue_size=DEFAULT_QUEUE_SIZE if queue_size is None else int(queue_size),
            events_maxlen=self._events.maxlen,
            write_through=_in_worker_process(),
        )
        _live_loggers.add(self)

    @property
    def events(self) -> deque:
        """The newest 10,000 events, oldest first, as the reference's deque."""
        with self._events_read_lock:
            self._sink.move_events_into(self._events)
        return self._events

    @events.setter
    def events(self, value: deque) -> None:
        if "_sink" not in self.__dict__:  # a subclass setting it before __init__ ran
            self._events = value
            return
        with self._events_read_lock:
            self._sink.move_events_into(self._events)
            self._events = value
            self._sink.set_events_maxlen(getattr(value, "maxlen", None))

    def log_event(self, event: Event):
        """Log an event (to memory, loguru, and JSONL for resumability)."""
        # Sets event.job_id, keeps it for self.events, queues the JSON line.
        self._sink.log_event(event, self.job_id)
        if _min_log_level() <= _INFO:
            logger.info(self._format_event_for_logging(event))

    def flush(self, fsync: bool = False) -> None:
        """Write every event logged so far to ``jsonl_file`` (and fsync it).

        Raises OSError if writing failed; the events are kept and retried.
        """
        self._sink.flush(fsync)

    def close(self) -> None:
        """Flush, fsync and stop the flush thread; later events are refused."""
        self._sink.close()
        _live_loggers.discard(self)

    def _snapshot(self) -> List[Event]:
        """The in-memory events, copied whole: a copy that a producer appended to meanwhile is taken again."""
        while True:
            try:
                events = self.events
                with self._events_read_lock:
                    return list(events)
            except RuntimeError:  # appended to by a caller while being copied
                continue

    def find_latest_events_file(self, work_dir: str) -> Optional[Path]:
        """Find the latest events file in the work directory."""
        if not Path(work_dir).exists():
            return None
        # Our own events must be on disk (a run's file is empty until then).
        try:
            self.flush()
        except OSError as e:
            logger.warning(f"Event logger for {self.jsonl_file}: {e}")
        # Fix: only files holding events count (see latest_events_file).
        return latest_events_file(work_dir)

    def check_job_completion(self, events_file: Path) -> bool:
        """Check if job is already completed by looking for job_complete event."""
        # Our own queued events must be on disk before the file is read.
        self.flush()
        return file_has_event_type(events_file, "job_complete")

    def _format_event_for_logging(self, event: Event) -> str:
        """Format event for logging with enhanced details."""
        parts = [f"EVENT[{event.event_type.value}]", f"TIME[{datetime.fromtimestamp(event.timestamp).isoformat()}]"]

        if event.partition_id is not None:
            parts.append(f"PARTITION[{event.partition_id}]")

        if event.operation_name:
            parts.append(f"OP[{event.operation_name}]")
            if event.operation_idx is not None:
                parts.append(f"OP_IDX[{event.operation_idx}]")

        if event.duration is not None:
            # Handle case where duration might be a string (due to parameter order issues)
            try:
                if isinstance(event.duration, (int, float)):
                    parts.append(f"DURATION[{event.duration:.3f}s]")
                else:
                    parts.append(f"DURATION[{event.duration}]")
            except (ValueError, TypeError):
                parts.append(f"DURATION[{event.duration}]")

        parts.append(f"MSG[{event.message}]")

        if event.error_message:
            parts.append(f"ERROR[{event.error_message}]")

        if event.checkpoint_path:
            parts.append(f"CHECKPOINT[{os.path.basename(event.checkpoint_path)}]")

        if event.output_path:
            parts.append(f"OUTPUT[{os.path.basename(event.output_path)}]")

        if event.metadata:
            # Include key metadata in the log message
            key_metadata = {}
            for key in ["status", "retry_count", "error_type", "operation_class"]:
                if key in event.metadata:
                    key_metadata[key] = event.metadata[key]
            if key_metadata:
                parts.append(f"META[{json.dumps(key_metadata)}]")

        return " | ".join(parts)

    def get_events(
        self,
        event_type: Optional[EventType] = None,
        partition_id: Optional[int] = None,
        operation_name: Optional[str] = None,
        start_time: Optional[float] = None,
        end_time: Optional[float] = None,
        limit: Optional[int] = None,
    ) -> List[Event]:
        """Get events with optional filtering."""
        filtered_events = []

        for event in self._snapshot():
            # Apply filters
            if event_type and event.event_type != event_type:
                continue
            if partition_id is not None and event.partition_id != partition_id:
                continue
            if operation_name and event.operation_name != operation_name:
                continue
            if start_time and event.timestamp < start_time:
                continue
            if end_time and event.timestamp > end_time:
                continue

            filtered_events.append(event)

        # Apply limit
        if limit:
            filtered_events = filtered_events[-limit:]

        return filtered_events

    def generate_status_report(self) -> str:
        """Generate a comprehensive status report."""
        return status_report(self._snapshot())

    def monitor_events(self, event_type: Optional[EventType] = None) -> Generator[Event, None, None]:
        """Monitor events in real-time."""
        last_event_count = len(self.events)

        while True:
            current_events = self._snapshot()

            # Yield new events
            for event in current_events[last_event_count:]:
                if event_type is None or event.event_type == event_type:
                    yield event

            last_event_count = len(current_events)
            time.sleep(0.1)  # Check every 100ms

    @classmethod
    def list_available_jobs(cls, work_dir: str) -> List[Dict[str, Any]]:
        """List available jobs for resumption from a work directory."""
        available_jobs: List[Dict[str, Any]] = []

        if not os.path.exists(work_dir):
            return available_jobs

        # Look for job directories (each job has its own directory)
        for item in os.listdir(work_dir):
            job_work_dir = os.path.join(work_dir, item)
            if os.path.isdir(job_work_dir):
                summary_file = os.path.join(job_work_dir, "job_summary.json")
                if os.path.exists(summary_file):
                    try:
                        with open(summary_file) as f:
                            job_summary = json.load(f)
                        job_summary["work_dir"] = job_work_dir
                        available_jobs.append(job_summary)
                    except Exception as e:
                        logger.warning(f"Failed to load job summary from {summary_file}: {e}")

        return available_jobs


def status_report(events: List[Event]) -> str:
    """``generate_status_report``'s text for ``events`` (the reference's,
    whose error and warning counts are always 0)."""
    total_events = len(events)
    if total_events == 0:
        return "No events logged yet."

    # Count event types
    event_counts: Dict[str, int] = defaultdict(int)
    error_count = 0
    warning_count = 0

    for event in events:
        event_counts[event.event_type.value] += 1

    # Generate report
    report_lines = [
        "=== EVENT LOGGING STATUS REPORT ===",
        f"Total Events: {total_events}",
        f"Errors: {error_count}",
        f"Warnings: {warning_count}",
        "",
        "Event Type Distribution:",
    ]

    for event_type, count in sorted(event_counts.items()):
        percentage = (count / total_events) * 100
        report_lines.append(f"  {event_type}: {count} ({percentage:.1f}%)")

    return "\n".join(report_lines)


# --------------------------------------------------------------------------
# Exit and fork: every live logger of the process

#: Loggers alive in this process: flushed at exit, restarted after a fork.
_live_loggers: "weakref.WeakSet[EventLogger]" = _lifecycle.live_objects(_lifecycle.EVENT_LOGGERS)


def _each_live_logger(action) -> None:
    for event_logger in list(_live_loggers):
        try:
            action(event_logger)
        except Exception as e:  # one broken logger must not stop the others
            logger.warning(f"Event logger for {event_logger.jsonl_file}: {e}")


def _flush_all_loggers() -> None:
    """Writes every queued event of every live logger (at exit)."""
    _each_live_logger(lambda event_logger: event_logger.flush())


def _restart_after_fork() -> None:
    """In a forked child: start a fresh flush thread per logger, writing
    through from now on. Lines the parent had queued stay the parent's."""
    _each_live_logger(lambda event_logger: event_logger._sink._after_fork_in_child())


_lifecycle.register(_lifecycle.EVENT_LOGGERS, at_exit=_flush_all_loggers, in_forked_child=_restart_after_fork)
