#!/usr/bin/env python3
# ruff: noqa: UP006, UP035, UP045
# (typing spelled as in the reference: Event.__annotations__ are observable)
"""
Event logging mixin for Data-Juicer executors, with a Rust event buffer.

A drop-in replacement for ``data_juicer.core.executor.event_logging_mixin``
(py-data-juicer 1.6.1): the same ``EventType``, ``Event``, ``EventLogger`` and
``EventLoggingMixin``, the same JSONL lines in the same files, the same loguru
lines. What differs is underneath:

* An event is serialised in Rust and copied, without a lock, into one of two
  bounded buffers (the caller waits only when both are full); a
  background Rust thread writes the filled buffer to ``events_<UTC stamp>.jsonl`` in
  batches (one ``write()`` per batch of whole lines, ``O_APPEND``). Callers
  take no Python lock and open no file.
* Lines reach the disk within ``cfg.event_logging.flush_interval`` seconds
  (default 0.1); job-level events are written and fsynced before the call
  returns; ``flush()``/``close()`` exist; everything is flushed at exit and
  at garbage collection.
* Write-through, where a process may end without exit hooks: with
  ``flush_interval: 0``, in a worker process (started by ``multiprocessing``
  or ``multiprocess``, any start method, pools and ``ProcessPoolExecutor``
  included) and in any process forked from the one that imported this
  module, each logging call has its line in the file before it returns.
* The loguru INFO line is only formatted when some sink accepts INFO.
* ``analyze_resumption_state`` reads the log in Rust in linear time.
* No log stops a reader (the analysis, ``check_job_completion``, the
  ``events`` command): lines that are not UTF-8 (garbage, a character cut by a
  kill), not a JSON object, or nested deeper than 256 levels are skipped, and
  events whose timestamp, metadata or partition id the analysis cannot use are
  left out where they would make it raise. A job that logged nothing gets the
  reference's answers, though its file exists from construction.

The logging methods (``log_job_start`` ... ``log_partition_resume``) are
copied from py-data-juicer 1.6.1 (Apache-2.0), so metadata and messages
match the reference exactly. Compatible fixes are marked "Fix:".
"""

import contextlib
import json
import os
import re
import threading
import time
import weakref
from collections import defaultdict, deque
from dataclasses import dataclass, fields
from datetime import datetime, timezone
from enum import Enum
from pathlib import Path
from typing import Any, Dict, Generator, List, Optional
from uuid import uuid4

from loguru import logger

from data_juicer_accel import _lifecycle, _native
from data_juicer_accel._lifecycle import in_worker_process as _in_worker_process

#: Seconds a logged event may wait in memory before it is written.
DEFAULT_FLUSH_INTERVAL = 0.1
#: Events each of the two buffers holds (at most 4 MB of lines each) before
#: loggers wait for the flush thread.
DEFAULT_QUEUE_SIZE = 65536

_DEBUG = 10
_INFO = 20


def _min_log_level() -> float:
    """The lowest level any loguru sink accepts (``inf`` with no sink), so
    that lines nobody would see are not even formatted."""
    try:
        return logger._core.min_level  # type: ignore[attr-defined]
    except AttributeError:  # a loguru without the attribute: always format
        return 0


class EventType(Enum):
    """Types of events that can be logged."""

    JOB_START = "job_start"
    JOB_COMPLETE = "job_complete"
    JOB_FAILED = "job_failed"
    JOB_RESTART = "job_restart"  # New: Job restart event
    PARTITION_START = "partition_start"
    PARTITION_COMPLETE = "partition_complete"
    PARTITION_FAILED = "partition_failed"
    PARTITION_RESUME = "partition_resume"  # New: Partition resume event
    OP_START = "op_start"
    OP_COMPLETE = "op_complete"
    OP_FAILED = "op_failed"
    CHECKPOINT_SAVE = "checkpoint_save"
    CHECKPOINT_LOAD = "checkpoint_load"
    PROCESSING_START = "processing_start"
    PROCESSING_COMPLETE = "processing_complete"
    PROCESSING_ERROR = "processing_error"
    # DAG-specific events
    DAG_BUILD_START = "dag_build_start"
    DAG_BUILD_COMPLETE = "dag_build_complete"
    DAG_NODE_READY = "dag_node_ready"
    DAG_NODE_START = "dag_node_start"
    DAG_NODE_COMPLETE = "dag_node_complete"
    DAG_NODE_FAILED = "dag_node_failed"
    DAG_PARALLEL_GROUP_START = "dag_parallel_group_start"
    DAG_PARALLEL_GROUP_COMPLETE = "dag_parallel_group_complete"
    DAG_EXECUTION_PLAN_SAVED = "dag_execution_plan_saved"
    DAG_EXECUTION_PLAN_LOADED = "dag_execution_plan_loaded"


@dataclass
class Event:
    """Event data structure."""

    event_type: EventType
    timestamp: float
    message: str
    event_id: Optional[str] = None
    job_id: Optional[str] = None
    partition_id: Optional[int] = None
    operation_name: Optional[str] = None
    operation_idx: Optional[int] = None
    status: Optional[str] = None
    duration: Optional[float] = None
    error_message: Optional[str] = None
    stack_trace: Optional[str] = None
    retry_count: Optional[int] = None
    checkpoint_path: Optional[str] = None
    op_args: Optional[Dict[str, Any]] = None
    input_rows: Optional[int] = None
    output_rows: Optional[int] = None
    output_path: Optional[str] = None
    partition_meta: Optional[Dict[str, Any]] = None
    config: Optional[Dict[str, Any]] = None
    metadata: Optional[Dict[str, Any]] = None
    total_partitions: Optional[int] = None
    successful_partitions: Optional[int] = None
    failed_partitions: Optional[int] = None
    job_duration: Optional[float] = None
    completion_time: Optional[float] = None
    failure_time: Optional[float] = None
    error_type: Optional[str] = None
    # Process and thread tracking
    process_id: Optional[int] = None
    thread_id: Optional[int] = None


_EVENT_FIELDS = [f.name for f in fields(Event)]

# Loggers alive in this process: flushed at exit, restarted after a fork.
_live_loggers: "weakref.WeakSet[EventLogger]" = weakref.WeakSet()


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


def _utc_stamp() -> str:
    """The UTC time as ``YYYYmmdd_HHMMSS`` (the reference's job id and file stamp)."""
    return datetime.now(timezone.utc).strftime("%Y%m%d_%H%M%S")


_lifecycle.register(_lifecycle.EVENT_LOGGERS, at_exit=_flush_all_loggers, in_forked_child=_restart_after_fork)


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
            _EVENT_FIELDS,
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
        events_dir = Path(work_dir)
        if not events_dir.exists():
            return None

        # Our own events must be on disk (a run's file is empty until then).
        if isinstance(self, EventLogger):
            try:
                self.flush()
            except OSError as e:
                logger.warning(f"Event logger for {self.jsonl_file}: {e}")

        # Find all events files with timestamp pattern. Fix: only files holding
        # events, as in the reference, where a file exists once an event is
        # logged (ours exists from construction); a file that vanished
        # meanwhile is passed over rather than raising.
        mtimes = {}
        for events_file in events_dir.glob("events_*.jsonl"):
            try:
                stat = events_file.stat()
            except OSError:
                continue
            if stat.st_size > 0:
                mtimes[events_file] = stat.st_mtime
        if not mtimes:
            return None

        # Sort by modification time and return the latest
        latest_file = max(mtimes, key=mtimes.__getitem__)
        return latest_file

    def check_job_completion(self, events_file: Path) -> bool:
        """Check if job is already completed by looking for job_complete event."""
        # Our own queued events must be on disk before the file is read.
        self.flush()
        try:
            found = _native.events_file_has_type(str(events_file), "job_complete")
        except OSError as e:
            logger.warning(f"Error reading events file {events_file}: {e}")
            return False
        if found is None:  # a line only Python reads as the reference does
            found = _file_has_job_complete(events_file)
        return found

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
        events = self._snapshot()
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


_FAST_LOG_EVENT = EventLogger.log_event


def _native_fast_path() -> Optional["_native.LogEventFastPath"]:
    """The fast path of the C ``_log_event`` (set below EventLoggingMixin), or
    None with a loguru it cannot read."""
    core = getattr(logger, "_core", None)
    if core is None or not isinstance(getattr(core, "min_level", None), (int, float)):
        return None
    return _native.LogEventFastPath(core, _FAST_LOG_EVENT)


_FAST_PATH = _native_fast_path()


def _write_json_atomically(path: str, data: Dict[str, Any]) -> None:
    """Replace ``path`` with ``data`` so readers never see half a file."""
    tmp_path = f"{path}.tmp.{os.getpid()}"
    with open(tmp_path, "w") as f:
        json.dump(data, f, indent=2, default=str)
    os.replace(tmp_path, path)


class EventLoggingMixin:
    """Mixin to add event logging capabilities to any executor."""

    cfg: Any  # set by the executor
    work_dir: str  # set by the executor

    def __init__(self, *args, **kwargs):
        """Initialize the mixin."""
        # Initialize event logging if not already done
        if not hasattr(self, "event_logger"):
            self._setup_event_logging()

    def _setup_event_logging(self):
        """Setup event logging for the executor.

        Keys of ``cfg.event_logging``: ``enabled`` (default True),
        ``flush_interval`` (seconds, default 0.1; 0 writes each event before
        the logging call returns), ``queue_size`` (events per buffer, two
        buffers, default 65536).
        """
        # Get event logging configuration
        event_config = getattr(self.cfg, "event_logging", {})
        enabled = event_config.get("enabled", True)

        if not enabled:
            self.event_logger = None
            return

        # job_id and work_dir should already be resolved by resolve_job_directories() in config.py
        job_id = getattr(self.cfg, "job_id", None)
        if not job_id:
            raise ValueError(
                "job_id must be set before setting up event logging. "
                "This should have been done by resolve_job_id() in config.py"
            )

        # work_dir already includes job_id after resolve_job_directories
        # Create work directory and subdirectories
        os.makedirs(self.work_dir, exist_ok=True)

        # Use logs directory instead of event_logs
        logs_dir = os.path.join(self.work_dir, "logs")
        os.makedirs(logs_dir, exist_ok=True)

        self.event_logger = EventLogger(
            logs_dir,
            job_id=job_id,
            work_dir=self.work_dir,
            flush_interval=event_config.get("flush_interval", None),
            queue_size=event_config.get("queue_size", None),
        )

        logger.info(f"Event logging initialized for {self.executor_type} executor")

    def _resumption_command(self, job_id: str) -> str:
        """The command that resumes this job (``dj-process`` with its job id)."""
        config_file = getattr(self.cfg, "config", None)
        if isinstance(config_file, (list, tuple)):
            config_file = config_file[0] if config_file else None
        if config_file:
            return f"dj-process --config {config_file} --job_id {job_id}"
        return f"dj-process --job_id {job_id}"

    def _create_job_summary(self, start_time: Optional[float] = None):
        """Fix: write ``job_summary.json`` at job start (1.6.1 never creates
        it, so ``_update_job_summary`` and ``list_available_jobs`` saw nothing)."""
        work_dir = getattr(self, "work_dir", None)
        if not work_dir or self.event_logger is None:
            return
        os.makedirs(work_dir, exist_ok=True)
        job_id = self.event_logger.job_id
        summary = {
            "job_id": job_id,
            "status": "running",
            "start_time": start_time or time.time(),
            "config_name": self._get_config_name(),
            "work_dir": work_dir,
            "events_file": str(self.event_logger.jsonl_file),
            "resumption_command": self._resumption_command(job_id),
        }
        _write_json_atomically(os.path.join(work_dir, "job_summary.json"), summary)

    def _update_job_summary(self, status: str, end_time: Optional[float] = None, error_message: Optional[str] = None):
        """Update job summary with completion status."""
        # work_dir already includes job_id after resolve_job_directories
        summary_file = os.path.join(self.work_dir, "job_summary.json")

        if not os.path.exists(summary_file):
            return

        with open(summary_file) as f:
            job_summary = json.load(f)

        job_summary.update(
            {
                "status": status,
                "end_time": end_time or time.time(),
                "duration": (end_time or time.time()) - job_summary.get("start_time", time.time()),
                "error_message": error_message,
            }
        )

        _write_json_atomically(summary_file, job_summary)

        # Display completion info
        if status == "completed":
            logger.info("=" * 60)
            logger.info("DataJuicer Job Completed Successfully")
            logger.info(f"Duration: {job_summary['duration']:.2f} seconds")
            logger.info("=" * 60)
        elif status == "failed":
            logger.error("=" * 60)
            logger.error("DataJuicer Job Failed")
            logger.error(f"Error: {error_message}")
            logger.error(f"Duration: {job_summary['duration']:.2f} seconds")
            logger.error("=" * 60)
            # Fix: a summary without resumption_command no longer raises KeyError.
            resumption_command = job_summary.get("resumption_command")
            if resumption_command:
                logger.error("To resume this job, use:")
                logger.error(f"  {resumption_command}")
                logger.error("=" * 60)

    def _load_job_summary(self) -> Optional[Dict[str, Any]]:
        """Load job summary if it exists."""
        # work_dir already includes job_id after resolve_job_directories
        summary_file = os.path.join(self.work_dir, "job_summary.json")

        if os.path.exists(summary_file):
            with open(summary_file) as f:
                return json.load(f)
        return None

    def _get_config_name(self) -> str:
        """Extract a meaningful name from config file or project name."""
        # Try to get config file name first
        config_file = getattr(self.cfg, "config", None)
        if isinstance(config_file, (list, tuple)):
            # Fix: Data-Juicer's parser stores the config as a list of paths.
            config_file = config_file[0] if config_file else None
        if config_file:
            # Extract filename without extension and path
            config_name = os.path.splitext(os.path.basename(str(config_file)))[0]
            # Clean up the name (remove special chars, limit length)
            config_name = re.sub(r"[^a-zA-Z0-9_-]", "_", config_name)
            config_name = config_name[:20]  # Limit length
            if config_name:
                return config_name

        # Fall back to project name
        project_name = getattr(self.cfg, "project_name", "dj")
        # Clean up project name
        project_name = re.sub(r"[^a-zA-Z0-9_-]", "_", project_name)
        project_name = project_name[:15]  # Limit length

        return project_name

    def _add_dag_context_to_metadata(
        self, metadata: Dict[str, Any], operation_name: str, operation_idx: int, partition_id: int
    ):
        """Add DAG context to metadata if DAGExecutionMixin is available."""
        # Check if DAGExecutionMixin is available and has the method to get DAG node
        if hasattr(self, "_get_dag_node_for_operation"):
            try:
                node_id = self._get_dag_node_for_operation(operation_name, operation_idx, partition_id=partition_id)
                if node_id:
                    metadata["dag_node_id"] = node_id
                else:
                    logger.debug(f"DAG node not found for operation {operation_name} (idx {operation_idx})")
            except Exception as e:
                logger.debug(f"Error getting DAG node for operation {operation_name}: {e}")

    def _log_event(self, event_type: EventType, message: str, **kwargs):
        """Log an event if event logging is enabled."""
        # With a loguru it can read, the class holds a native method instead
        # (set below the class), which calls this one for what it declines.
        event_logger = self.event_logger
        if event_logger is None:
            logger.warning(f"Event logger is None, cannot log event: {event_type.value}")
            return

        min_level = _min_log_level()
        verbose = min_level <= _DEBUG
        if verbose:
            logger.debug(f"Creating event: {event_type.value} - {message}")
            logger.debug(f"Logging event to event logger: {event_type.value}")
        event = None
        # The fast path builds the Event, its ids and its line in Rust. A
        # logger whose log_event was replaced (subclass, patch) gets an Event.
        if type(event_logger).log_event is _FAST_LOG_EVENT and "log_event" not in event_logger.__dict__:
            wants_event = min_level <= _INFO
            event = event_logger._sink.log_fields(event_type, message, kwargs, event_logger.job_id, wants_event)
            if event is not None and wants_event:
                logger.info(event_logger._format_event_for_logging(event))
        if event is None:  # slow path, or a keyword Event() rejects: its TypeError
            self._log_event_object(event_logger, event_type, message, kwargs)
        if verbose:
            logger.debug(f"Successfully logged event: {event_type.value}")

    def _log_event_object(self, event_logger, event_type: EventType, message: str, kwargs: Dict[str, Any]):
        """The reference's path: build the Event in Python, then log it."""
        # Automatically capture process and thread IDs
        process_id = os.getpid()
        thread_id = threading.get_ident()

        # Generate event ID if not provided
        event_id = kwargs.pop("event_id", None)
        if event_id is None:
            timestamp = int(time.time())
            event_id = f"{event_type.value}_{timestamp}_{uuid4().hex[:8]}"

        event = Event(
            event_type=event_type,
            timestamp=time.time(),
            message=message,
            event_id=event_id,
            process_id=process_id,
            thread_id=thread_id,
            **kwargs,
        )
        event_logger.log_event(event)

    # Add new logging methods for job, partition, and op events
    def log_job_start(self, config, total_partitions):
        """Log job start with detailed configuration."""
        # Handle both dataset_path (string) and dataset (dict) configurations
        dataset_info = {}
        if "dataset_path" in config:
            dataset_info["dataset_path"] = config.get("dataset_path")
        if "dataset" in config:
            dataset_info["dataset"] = config.get("dataset")

        partition_cfg = config.get("partition", {})
        partition_size = partition_cfg.get("size") if partition_cfg is not None else None
        metadata = {
            "total_partitions": total_partitions,
            "config_summary": {
                **dataset_info,
                "executor_type": config.get("executor_type"),
                "partition_size": partition_size,
                "checkpoint_strategy": config.get("checkpoint_strategy"),
                "storage_format": config.get("storage_format"),
                "compression": config.get("compression"),
            },
        }
        event_id = f"job_start_{int(time.time())}"
        self._log_event(
            EventType.JOB_START,
            "Job started",
            event_id=event_id,
            config=config,
            metadata=metadata,
            total_partitions=total_partitions,
        )
        self._create_job_summary()

    def log_job_complete(self, duration, output_path=None):
        """Log job completion with performance metrics."""
        metadata = {"status": "completed", "duration_seconds": duration, "completion_time": time.time()}
        if output_path:
            metadata["output_path"] = output_path

        event_id = f"job_complete_{int(time.time())}"
        self._log_event(
            EventType.JOB_COMPLETE,
            f"Job completed successfully in {duration:.2f}s",
            event_id=event_id,
            status="completed",
            duration=duration,
            metadata=metadata,
        )
        self._update_job_summary("completed", error_message=None)

    def log_job_failed(self, error_message, duration):
        """Log job failure with error details."""
        metadata = {
            "status": "failed",
            "duration_seconds": duration,
            "failure_time": time.time(),
            "error_type": type(error_message).__name__ if error_message else "Unknown",
        }
        event_id = f"job_failed_{int(time.time())}"
        self._log_event(
            EventType.JOB_FAILED,
            f"Job failed: {error_message}",
            event_id=event_id,
            status="failed",
            error_message=error_message,
            duration=duration,
            metadata=metadata,
        )
        self._update_job_summary("failed", error_message=error_message)

    def log_partition_start(self, partition_id, partition_meta):
        """Log partition start with detailed metadata."""
        metadata = {
            "partition_path": partition_meta.get("partition_path"),
            "start_time": partition_meta.get("start_time"),
            "partition_size_bytes": partition_meta.get("file_size_bytes"),
            "sample_count": partition_meta.get("sample_count"),
        }
        event_id = f"partition_start_{partition_id}_{int(time.time())}"
        self._log_event(
            EventType.PARTITION_START,
            f"Partition {partition_id} started processing",
            event_id=event_id,
            partition_id=partition_id,
            partition_meta=partition_meta,
            metadata=metadata,
        )

    def log_partition_complete(self, partition_id, duration, output_path, success=True, error=None):
        """Log partition completion with performance metrics."""
        metadata = {
            "output_path": output_path,
            "duration_seconds": duration,
            "completion_time": time.time(),
            "success": success,
            "throughput_samples_per_second": None,  # Will be calculated if sample_count is available
        }

        if not success and error:
            metadata["error"] = error
            message = f"Partition {partition_id} completed with failure after {duration:.2f}s: {error}"
        else:
            message = f"Partition {partition_id} completed successfully after {duration:.2f}s"

        # Add debug logging to help diagnose issues
        logger.debug(f"Creating partition_complete event for partition {partition_id}")
        logger.debug(f"  Duration: {duration:.2f}s")
        logger.debug(f"  Success: {success}")
        logger.debug(f"  Output path: {output_path}")
        if error:
            logger.debug(f"  Error: {error}")

        # Use the _log_event method to ensure proper logging
        event_id = f"partition_complete_{partition_id}_{int(time.time())}"
        self._log_event(
            EventType.PARTITION_COMPLETE, message, event_id=event_id, partition_id=partition_id, metadata=metadata
        )

    def log_partition_failed(self, partition_id, error_message, retry_count):
        """Log partition failure with retry information."""
        metadata = {
            "retry_count": retry_count,
            "failure_time": time.time(),
            "error_type": type(error_message).__name__ if error_message else "Unknown",
        }
        event_id = f"partition_failed_{partition_id}_{int(time.time())}"
        self._log_event(
            EventType.PARTITION_FAILED,
            f"Partition {partition_id} failed after {retry_count} retries: {error_message}",
            event_id=event_id,
            partition_id=partition_id,
            error_message=error_message,
            retry_count=retry_count,
            status="failed",
            metadata=metadata,
        )

    def log_op_start(self, partition_id, operation_name, operation_idx, op_args, **kwargs):
        """Log operation start with detailed arguments."""
        metadata = {
            "operation_idx": operation_idx,
            "operation_args": op_args,
            "start_time": time.time(),
            "operation_class": operation_name,
        }
        # Merge any additional metadata from kwargs
        if "metadata" in kwargs:
            metadata.update(kwargs["metadata"])

        # Automatically add DAG context if DAGExecutionMixin is available
        self._add_dag_context_to_metadata(metadata, operation_name, operation_idx, partition_id)

        event_id = f"op_start_{partition_id}_{operation_idx}_{int(time.time())}"
        self._log_event(
            EventType.OP_START,
            f"Operation {operation_name} (idx {operation_idx}) started on partition {partition_id}",
            event_id=event_id,
            partition_id=partition_id,
            operation_name=operation_name,
            operation_idx=operation_idx,
            op_args=op_args,
            metadata=metadata,
        )

    def log_op_complete(
        self, partition_id, operation_name, operation_idx, duration, checkpoint_path, input_rows, output_rows, **kwargs
    ):
        """Log operation completion with detailed performance metrics."""
        # Build metadata with only meaningful metrics
        metadata = {
            "duration_seconds": duration,
            "checkpoint_path": checkpoint_path,
            "completion_time": time.time(),
            "operation_class": operation_name,
        }

        # Only include row counts and derived metrics if they're meaningful (non-zero or explicitly set)
        if input_rows is not None and input_rows > 0:
            metadata["input_rows"] = input_rows
        if output_rows is not None and output_rows > 0:
            metadata["output_rows"] = output_rows

        # Calculate derived metrics only if we have valid row counts
        if input_rows and output_rows is not None:
            if duration > 0:
                metadata["throughput_rows_per_second"] = input_rows / duration
            if input_rows > 0:
                metadata["reduction_ratio"] = (input_rows - output_rows) / input_rows

        # Merge any additional metadata from kwargs
        if "metadata" in kwargs:
            metadata.update(kwargs["metadata"])

        # Automatically add DAG context if DAGExecutionMixin is available
        self._add_dag_context_to_metadata(metadata, operation_name, operation_idx, partition_id)

        # Build message without row counts (they're in metadata if meaningful)
        event_id = f"op_complete_{partition_id}_{operation_idx}_{int(time.time())}"
        self._log_event(
            EventType.OP_COMPLETE,
            f"Operation {operation_name} (idx {operation_idx}) completed on partition {partition_id} in {duration:.3f}s",  # noqa: E501
            event_id=event_id,
            partition_id=partition_id,
            operation_name=operation_name,
            operation_idx=operation_idx,
            status="success",
            metadata=metadata,
        )

    def log_op_failed(self, partition_id, operation_name, operation_idx, error_message, retry_count, **kwargs):
        """Log operation failure with error details."""
        metadata = {
            "retry_count": retry_count,
            "failure_time": time.time(),
            "error_type": type(error_message).__name__ if error_message else "Unknown",
            "operation_class": operation_name,
        }
        # Merge any additional metadata from kwargs
        if "metadata" in kwargs:
            metadata.update(kwargs["metadata"])

        # Automatically add DAG context if DAGExecutionMixin is available
        self._add_dag_context_to_metadata(metadata, operation_name, operation_idx, partition_id)

        event_id = f"op_failed_{partition_id}_{operation_idx}_{int(time.time())}"
        self._log_event(
            EventType.OP_FAILED,
            f"Operation {operation_name} (idx {operation_idx}) failed on partition {partition_id}: {error_message}",
            event_id=event_id,
            partition_id=partition_id,
            operation_name=operation_name,
            operation_idx=operation_idx,
            error_message=error_message,
            retry_count=retry_count,
            status="failed",
            metadata=metadata,
        )

    def log_checkpoint_save(self, partition_id, operation_name, operation_idx, checkpoint_path):
        """Log checkpoint save with file information."""
        metadata = {
            "checkpoint_path": checkpoint_path,
            "operation_idx": operation_idx,
            "operation_class": operation_name,
            "save_time": time.time(),
        }
        event_id = f"checkpoint_save_{partition_id}_{operation_idx}_{int(time.time())}"
        self._log_event(
            EventType.CHECKPOINT_SAVE,
            f"Checkpoint saved for operation {operation_name} (idx {operation_idx}) on partition {partition_id}",
            event_id=event_id,
            partition_id=partition_id,
            operation_name=operation_name,
            operation_idx=operation_idx,
            checkpoint_path=checkpoint_path,
            metadata=metadata,
        )

    def log_checkpoint_load(self, partition_id, operation_name, operation_idx, checkpoint_path):
        """Log checkpoint load with file information."""
        metadata = {
            "checkpoint_path": checkpoint_path,
            "operation_idx": operation_idx,
            "operation_class": operation_name,
            "load_time": time.time(),
        }
        event_id = f"checkpoint_load_{partition_id}_{operation_idx}_{int(time.time())}"
        self._log_event(
            EventType.CHECKPOINT_LOAD,
            f"Checkpoint loaded for operation {operation_name} (idx {operation_idx}) on partition {partition_id}",
            event_id=event_id,
            partition_id=partition_id,
            operation_name=operation_name,
            operation_idx=operation_idx,
            checkpoint_path=checkpoint_path,
            metadata=metadata,
        )

    # DAG-specific event logging methods
    def log_dag_build_start(self, ast_info: Dict[str, Any]):
        """Log DAG build start with AST information."""
        metadata = {
            "ast_node_count": ast_info.get("node_count", 0),
            "ast_depth": ast_info.get("depth", 0),
            "ast_operation_types": ast_info.get("operation_types", []),
            "build_start_time": time.time(),
        }
        event_id = f"dag_build_start_{int(time.time())}"
        self._log_event(
            EventType.DAG_BUILD_START,
            "DAG build started from pipeline AST",
            event_id=event_id,
            metadata=metadata,
        )

    def log_dag_build_complete(self, dag_info: Dict[str, Any]):
        """Log DAG build completion with execution plan information."""
        metadata = {
            "dag_node_count": dag_info.get("node_count", 0),
            "dag_edge_count": dag_info.get("edge_count", 0),
            "parallel_groups_count": dag_info.get("parallel_groups_count", 0),
            "execution_plan_length": dag_info.get("execution_plan_length", 0),
            "build_duration": dag_info.get("build_duration", 0),
            "build_complete_time": time.time(),
        }
        event_id = f"dag_build_complete_{int(time.time())}"
        self._log_event(
            EventType.DAG_BUILD_COMPLETE,
            f"DAG build completed: {dag_info.get('node_count', 0)} nodes, {dag_info.get('edge_count', 0)} edges",
            event_id=event_id,
            metadata=metadata,
        )

    def log_dag_node_ready(self, node_id: str, node_info: Dict[str, Any]):
        """Log when a DAG node becomes ready for execution."""
        metadata = {
            "node_id": node_id,
            "op_name": node_info.get("op_name"),
            "op_type": node_info.get("op_type"),
            "dependencies_count": node_info.get("dependencies_count", 0),
            "dependents_count": node_info.get("dependents_count", 0),
            "execution_order": node_info.get("execution_order", -1),
            "ready_time": time.time(),
        }
        event_id = f"dag_node_ready_{node_id}_{int(time.time())}"
        self._log_event(
            EventType.DAG_NODE_READY,
            f"DAG node {node_id} ({node_info.get('op_name')}) ready for execution",
            event_id=event_id,
            metadata=metadata,
        )

    def log_dag_node_start(self, node_id: str, node_info: Dict[str, Any]):
        """Log when a DAG node starts execution."""
        metadata = {
            "node_id": node_id,
            "op_name": node_info.get("op_name"),
            "op_type": node_info.get("op_type"),
            "execution_order": node_info.get("execution_order", -1),
            "start_time": time.time(),
        }
        event_id = f"dag_node_start_{node_id}_{int(time.time())}"
        self._log_event(
            EventType.DAG_NODE_START,
            f"DAG node {node_id} ({node_info.get('op_name')}) started execution",
            event_id=event_id,
            metadata=metadata,
        )

    def log_dag_node_complete(self, node_id: str, node_info: Dict[str, Any], duration: float):
        """Log when a DAG node completes execution."""
        metadata = {
            "node_id": node_id,
            "op_name": node_info.get("op_name"),
            "op_type": node_info.get("op_type"),
            "execution_order": node_info.get("execution_order", -1),
            "duration_seconds": duration,
            "completion_time": time.time(),
        }
        event_id = f"dag_node_complete_{node_id}_{int(time.time())}"
        self._log_event(
            EventType.DAG_NODE_COMPLETE,
            f"DAG node {node_id} ({node_info.get('op_name')}) completed in {duration:.3f}s",
            event_id=event_id,
            metadata=metadata,
        )

    def log_dag_node_failed(self, node_id: str, node_info: Dict[str, Any], error_message: str, duration: float = 0):
        """Log when a DAG node fails execution."""
        metadata = {
            "node_id": node_id,
            "op_name": node_info.get("op_name"),
            "op_type": node_info.get("op_type"),
            "execution_order": node_info.get("execution_order", -1),
            "duration_seconds": duration,
            "error_message": error_message,
            "failure_time": time.time(),
        }
        event_id = f"dag_node_failed_{node_id}_{int(time.time())}"
        self._log_event(
            EventType.DAG_NODE_FAILED,
            f"DAG node {node_id} ({node_info.get('op_name')}) failed: {error_message}",
            event_id=event_id,
            metadata=metadata,
        )

    def log_dag_parallel_group_start(self, group_id: str, group_info: Dict[str, Any]):
        """Log when a parallel group starts execution."""
        metadata = {
            "group_id": group_id,
            "node_count": group_info.get("node_count", 0),
            "node_ids": group_info.get("node_ids", []),
            "op_types": group_info.get("op_types", []),
            "start_time": time.time(),
        }
        event_id = f"dag_parallel_group_start_{group_id}_{int(time.time())}"
        self._log_event(
            EventType.DAG_PARALLEL_GROUP_START,
            f"Parallel group {group_id} started with {group_info.get('node_count', 0)} nodes",
            event_id=event_id,
            metadata=metadata,
        )

    def log_dag_parallel_group_complete(self, group_id: str, group_info: Dict[str, Any], duration: float):
        """Log when a parallel group completes execution."""
        metadata = {
            "group_id": group_id,
            "node_count": group_info.get("node_count", 0),
            "completed_nodes": group_info.get("completed_nodes", 0),
            "failed_nodes": group_info.get("failed_nodes", 0),
            "duration_seconds": duration,
            "completion_time": time.time(),
        }
        event_id = f"dag_parallel_group_complete_{group_id}_{int(time.time())}"
        self._log_event(
            EventType.DAG_PARALLEL_GROUP_COMPLETE,
            f"Parallel group {group_id} completed: {group_info.get('completed_nodes', 0)}/{group_info.get('node_count', 0)} nodes in {duration:.3f}s",  # noqa: E501
            event_id=event_id,
            metadata=metadata,
        )

    def log_dag_execution_plan_saved(self, plan_path: str, plan_info: Dict[str, Any]):
        """Log when DAG execution plan is saved."""
        metadata = {
            "plan_path": plan_path,
            "node_count": plan_info.get("node_count", 0),
            "edge_count": plan_info.get("edge_count", 0),
            "parallel_groups_count": plan_info.get("parallel_groups_count", 0),
            "save_time": time.time(),
        }
        event_id = f"dag_execution_plan_saved_{int(time.time())}"
        self._log_event(
            EventType.DAG_EXECUTION_PLAN_SAVED,
            f"DAG execution plan saved to {plan_path}",
            event_id=event_id,
            metadata=metadata,
        )

    def log_dag_execution_plan_loaded(self, plan_path: str, plan_info: Dict[str, Any]):
        """Log when DAG execution plan is loaded."""
        metadata = {
            "plan_path": plan_path,
            "node_count": plan_info.get("node_count", 0),
            "edge_count": plan_info.get("edge_count", 0),
            "parallel_groups_count": plan_info.get("parallel_groups_count", 0),
            "load_time": time.time(),
        }
        event_id = f"dag_execution_plan_loaded_{int(time.time())}"
        self._log_event(
            EventType.DAG_EXECUTION_PLAN_LOADED,
            f"DAG execution plan loaded from {plan_path}",
            event_id=event_id,
            metadata=metadata,
        )

    def log_job_restart(
        self,
        restart_reason: str,
        original_start_time: float,
        resume_partitions: List[int],
        resume_from_operation: int,
        checkpoint_paths: List[str],
    ):
        """Log when a job is restarted after interruption."""
        metadata = {
            "restart_reason": restart_reason,
            "original_start_time": original_start_time,
            "restart_time": time.time(),
            "resume_partitions": resume_partitions,
            "resume_from_operation": resume_from_operation,
            "checkpoint_paths": checkpoint_paths,
        }
        event_id = f"job_restart_{int(time.time())}"
        self._log_event(
            EventType.JOB_RESTART,
            f"Job restarted after {restart_reason} interruption",
            event_id=event_id,
            metadata=metadata,
        )

    def log_partition_resume(self, partition_id: int, resume_operation: int, checkpoint_path: str, resume_reason: str):
        """Log when a partition is resumed from a checkpoint."""
        metadata = {
            "resume_operation": resume_operation,
            "checkpoint_path": checkpoint_path,
            "resume_reason": resume_reason,
        }
        event_id = f"partition_resume_{partition_id}_{int(time.time())}"
        self._log_event(
            EventType.PARTITION_RESUME,
            f"Partition {partition_id} resumed from operation {resume_operation} checkpoint",
            event_id=event_id,
            partition_id=partition_id,
            metadata=metadata,
        )

    def get_events(self, **kwargs) -> List[Event]:
        """Get events with optional filtering."""
        if self.event_logger is None:
            return []
        return self.event_logger.get_events(**kwargs)

    def generate_status_report(self) -> str:
        """Generate status report."""
        if self.event_logger is None:
            return "Event logging is disabled."
        return self.event_logger.generate_status_report()

    def monitor_events(self, event_type: Optional[EventType] = None) -> Generator[Event, None, None]:
        """Monitor events in real-time."""
        if self.event_logger is None:
            return
        yield from self.event_logger.monitor_events(event_type)

    def analyze_resumption_state(self, job_id: str) -> Dict[str, Any]:
        """
        Analyze event history to determine resumption state and generate resumption plan.

        Args:
            job_id: The job ID to analyze

        Returns:
            Dictionary containing resumption analysis and plan
        """
        if not self.event_logger:
            return {"error": "Event logger not available"}

        # Everything logged before this call must be in the file we read.
        flush = getattr(self.event_logger, "flush", None)
        if flush is not None:
            flush()

        events_file = self.event_logger.jsonl_file
        # Fix: our file exists from construction; the reference's only once an
        # event is logged. An empty file is one nothing was logged to, so the
        # answer is the reference's for a job that logged nothing.
        if not _holds_events(events_file):
            return {"error": f"Events file not found: {events_file}"}

        native = _native.analyze_events_file(str(events_file)) if self._uses_reference_helpers() else None
        if native is not None and not native["needs_reference_reading"]:
            # One pass in Rust; the two helpers below see reduced inputs that
            # give the same answer (the latest checkpoint, the first job_start).
            with contextlib.suppress(TypeError):  # a job_start timestamp that is not a number
                return self._resumption_answer(
                    job_id,
                    native["total_events"],
                    native["job_status"],
                    native["partition_states"],
                    native["checkpoints"],
                    native["job_start_events"],
                )
        events = _read_events(events_file)
        try:
            return self._resumption_answer_from_events(job_id, events)
        except (TypeError, AttributeError):
            # Fix: the reference raises on an event whose timestamp, metadata or
            # partition id it cannot compare, call or key. Such events are left
            # out, as lines no reader reads are.
            return self._resumption_answer_from_events(job_id, [e for e in events if _analysable(e)])

    def _resumption_answer_from_events(self, job_id: str, events: List[Dict]) -> Dict[str, Any]:
        """``analyze_resumption_state``'s answer from every event, as the reference computes it."""
        partition_starts = [e for e in events if e.get("event_type") == "partition_start"]
        partition_completes = [e for e in events if e.get("event_type") == "partition_complete"]
        partition_failures = [e for e in events if e.get("event_type") == "partition_failed"]
        op_starts = [e for e in events if e.get("event_type") == "op_start"]
        op_completes = [e for e in events if e.get("event_type") == "op_complete"]
        # Fix: the reference looks only for "checkpoint_saved", which nothing writes.
        checkpoints = [e for e in events if e.get("event_type") in _CHECKPOINT_EVENT_TYPES]
        job_status = self._determine_job_status(events, partition_completes, partition_failures)
        partition_states = self._analyze_partition_states(
            partition_starts, partition_completes, partition_failures, op_starts, op_completes
        )
        return self._resumption_answer(job_id, len(events), job_status, partition_states, checkpoints, events)

    def _resumption_answer(
        self,
        job_id: str,
        total_events: int,
        job_status: str,
        partition_states: Dict,
        checkpoints: List[Dict],
        job_events: List[Dict],
    ) -> Dict[str, Any]:
        """The answer from the analysed events: plan and progress as the reference adds them."""
        # Generate resumption plan
        resumption_plan = self._generate_resumption_plan(partition_states, checkpoints, job_status)

        # Calculate progress metrics
        progress_metrics = self._calculate_progress_metrics(partition_states, job_events)

        return {
            "job_id": job_id,
            "job_status": job_status,
            "total_events": total_events,
            "partition_states": partition_states,
            "resumption_plan": resumption_plan,
            "progress_metrics": progress_metrics,
            "analysis_timestamp": time.time(),
            "can_resume": resumption_plan["can_resume"],
            "resume_from_checkpoint": resumption_plan.get("resume_from_checkpoint"),
            "resume_after_operation": _resume_after_operation(resumption_plan.get("resume_from_checkpoint")),
            "partitions_to_retry": resumption_plan.get("partitions_to_retry", []),
            "partitions_to_skip": resumption_plan.get("partitions_to_skip", []),
        }

    def _uses_reference_helpers(self) -> bool:
        """Whether the analysis helpers are ours (the Rust pass reproduces
        them); a subclass overriding one gets the Python path instead."""
        cls = type(self)
        return all(
            getattr(cls, name) is getattr(EventLoggingMixin, name)
            for name in ("_determine_job_status", "_analyze_partition_states", "_determine_partition_state")
        )

    def _determine_job_status(
        self, events: List[Dict], partition_completes: List[Dict], partition_failures: List[Dict]
    ) -> str:
        """Determine the current job status based on events."""
        # Check if job has any completion events
        job_completes = [e for e in events if e.get("event_type") == "job_complete"]
        job_failures = [e for e in events if e.get("event_type") == "job_failed"]

        if job_completes:
            return "completed"
        elif job_failures:
            return "failed"
        elif partition_completes:
            # Check if all partitions are completed (success or failure)
            all_partitions_completed = all(
                pc.get("metadata", {}).get("success", False) or pc.get("metadata", {}).get("error") is not None
                for pc in partition_completes
            )
            if all_partitions_completed:
                return "completed_with_failures"
            else:
                return "running"
        else:
            return "not_started"

    def _analyze_partition_states(
        self,
        partition_starts: List[Dict],
        partition_completes: List[Dict],
        partition_failures: List[Dict],
        op_starts: List[Dict],
        op_completes: List[Dict],
    ) -> Dict[int, Dict]:
        """Analyze the state of each partition based on events.

        Same result as the reference, in one pass over each list (the
        reference rescans every list for every partition_start).
        """

        all_events = (partition_starts, partition_completes, partition_failures, op_starts, op_completes)
        if not all(type(e.get("partition_id")) in _PLAIN_ID_TYPES for events in all_events for e in events):
            # Ids Python compares in ways a dict does not key them (1 == True,
            # a float NaN, lists): the reference's own scan, exceptions and all.
            return _reference_partition_states(self, *all_events)

        def by_partition(events: List[Dict]) -> Dict[Any, List[Dict]]:
            grouped: Dict[Any, List[Dict]] = defaultdict(list)
            for event in events:
                grouped[event.get("partition_id")].append(event)
            return grouped

        starts_by_id = by_partition(partition_starts)
        completes_by_id = by_partition(partition_completes)
        failures_by_id = by_partition(partition_failures)
        op_starts_by_id = by_partition(op_starts)
        op_completes_by_id = by_partition(op_completes)

        partition_states = {}
        for partition_id, starts in starts_by_id.items():
            if partition_id is None:
                continue
            # Find the latest start event for this partition
            latest_start = max(starts, key=lambda x: x.get("timestamp", 0))
            partition_states[partition_id] = self._determine_partition_state(
                partition_id,
                latest_start,
                completes_by_id.get(partition_id, []),
                failures_by_id.get(partition_id, []),
                op_starts_by_id.get(partition_id, []),
                op_completes_by_id.get(partition_id, []),
            )

        return partition_states

    def _determine_partition_state(
        self,
        partition_id: int,
        start_event: Dict,
        completes: List[Dict],
        failures: List[Dict],
        op_starts: List[Dict],
        op_completes: List[Dict],
    ) -> Dict:
        """Determine the detailed state of a specific partition."""
        # Find the latest completion event
        latest_complete = max(completes, key=lambda x: x.get("timestamp", 0)) if completes else None

        # Determine if partition is completed successfully
        is_completed = latest_complete and latest_complete.get("metadata", {}).get("success", False)
        is_failed = latest_complete and not latest_complete.get("metadata", {}).get("success", False)

        # Find the last operation that was started
        last_op_start = max(op_starts, key=lambda x: x.get("timestamp", 0)) if op_starts else None
        last_op_complete = max(op_completes, key=lambda x: x.get("timestamp", 0)) if op_completes else None

        # Determine current operation
        current_operation = None
        if last_op_start:
            current_operation = {
                "name": last_op_start.get("operation_name"),
                "idx": last_op_start.get("operation_idx"),
                "started_at": last_op_start.get("timestamp"),
                "completed": last_op_complete is not None
                and last_op_complete.get("timestamp", 0) > last_op_start.get("timestamp", 0),
            }

        return {
            "partition_id": partition_id,
            "status": "completed" if is_completed else "failed" if is_failed else "running",
            "start_time": start_event.get("timestamp"),
            "completion_time": latest_complete.get("timestamp") if latest_complete else None,
            "duration": latest_complete.get("metadata", {}).get("duration_seconds") if latest_complete else None,
            "success": is_completed,
            "error": latest_complete.get("metadata", {}).get("error") if latest_complete and not is_completed else None,
            "current_operation": current_operation,
            "retry_count": len([f for f in failures if f.get("partition_id") == partition_id]),
            "output_path": latest_complete.get("metadata", {}).get("output_path") if latest_complete else None,
        }

    def _generate_resumption_plan(
        self, partition_states: Dict[int, Dict], checkpoints: List[Dict], job_status: str
    ) -> Dict:
        """Generate a resumption plan based on partition states and checkpoints."""
        # Find partitions that need to be retried
        partitions_to_retry = []
        partitions_to_skip = []

        for partition_id, state in partition_states.items():
            if state["status"] == "failed":
                partitions_to_retry.append(partition_id)
            elif state["status"] == "completed":
                partitions_to_skip.append(partition_id)

        # Find the latest checkpoint
        latest_checkpoint = max(checkpoints, key=lambda x: x.get("timestamp", 0)) if checkpoints else None

        # Determine if we can resume based on job status and partition states
        if job_status == "completed":
            can_resume = False
            reason = "Job already completed successfully"
        elif job_status == "failed":
            can_resume = True
            reason = "Job failed, can resume from checkpoint or retry failed partitions"
        elif len(partitions_to_retry) > 0:
            can_resume = True
            reason = f"Found {len(partitions_to_retry)} failed partitions to retry"
        elif latest_checkpoint is not None:
            can_resume = True
            reason = "Found checkpoint to resume from"
        else:
            can_resume = False
            reason = "No failed partitions or checkpoints found"

        return {
            "can_resume": can_resume,
            "reason": reason,
            "resume_from_checkpoint": (
                latest_checkpoint.get("metadata", {}).get("checkpoint_path") if latest_checkpoint else None
            ),
            "partitions_to_retry": partitions_to_retry,
            "partitions_to_skip": partitions_to_skip,
            "total_partitions_to_process": len(partitions_to_retry),
            "estimated_remaining_work": len(partitions_to_retry) / len(partition_states) if partition_states else 0,
        }

    def _calculate_progress_metrics(self, partition_states: Dict[int, Dict], events: List[Dict]) -> Dict:
        """Calculate progress metrics based on partition states."""
        total_partitions = len(partition_states)
        completed_partitions = len([s for s in partition_states.values() if s["status"] == "completed"])
        failed_partitions = len([s for s in partition_states.values() if s["status"] == "failed"])
        running_partitions = len([s for s in partition_states.values() if s["status"] == "running"])

        # Calculate overall progress
        if total_partitions == 0:
            progress_percentage: float = 0
        else:
            progress_percentage = (completed_partitions / total_partitions) * 100

        # Calculate timing metrics
        job_start_events = [e for e in events if e.get("event_type") == "job_start"]
        start_time = job_start_events[0].get("timestamp") if job_start_events else None
        current_time = time.time()
        elapsed_time = current_time - start_time if start_time else 0

        return {
            "total_partitions": total_partitions,
            "completed_partitions": completed_partitions,
            "failed_partitions": failed_partitions,
            "running_partitions": running_partitions,
            "progress_percentage": progress_percentage,
            "elapsed_time_seconds": elapsed_time,
            "start_time": start_time,
            "current_time": current_time,
        }


def _log_info_line(executor, event) -> None:
    """The INFO line of an event the native ``_log_event`` logged, for an INFO sink."""
    logger.info(executor.event_logger._format_event_for_logging(event))


if _FAST_PATH is not None:
    # One C call per event for the common case (a package EventLogger, no
    # DEBUG sink), with no Python frame and no kwargs dict: see
    # rust/bindings/log_event_method.rs. The Python method above runs for
    # everything else.
    EventLoggingMixin._log_event = _native.log_event_method(  # type: ignore[method-assign]
        _FAST_PATH, EventLoggingMixin._log_event, _log_info_line
    )


#: Checkpoint event types the analysis recognises: the reference's
#: "checkpoint_saved" and "checkpoint_save", which is what is actually logged.
_CHECKPOINT_EVENT_TYPES = ("checkpoint_saved", "checkpoint_save")


#: Partition id types whose dict keying matches Python's ``==`` exactly.
_PLAIN_ID_TYPES = (str, int, type(None))


def _reference_partition_states(
    mixin, partition_starts, partition_completes, partition_failures, op_starts, op_completes
):
    """The reference's ``_analyze_partition_states``: for each start, a scan of
    every list comparing ids with ``==`` (quadratic; used only for odd ids)."""
    partition_states = {}
    for start_event in partition_starts:
        partition_id = start_event.get("partition_id")
        if partition_id is None:
            continue
        starts_for_id = [e for e in partition_starts if e.get("partition_id") == partition_id]
        latest_start = max(starts_for_id, key=lambda x: x.get("timestamp", 0))
        partition_states[partition_id] = mixin._determine_partition_state(
            partition_id,
            latest_start,
            [e for e in partition_completes if e.get("partition_id") == partition_id],
            [e for e in partition_failures if e.get("partition_id") == partition_id],
            [e for e in op_starts if e.get("partition_id") == partition_id],
            [e for e in op_completes if e.get("partition_id") == partition_id],
        )
    return partition_states


def _file_has_job_complete(events_file) -> bool:
    """``check_job_completion`` read in Python (for objects only Python reads
    as the reference does): lines no reader reads are skipped."""
    try:
        return any(e.get("event_type") == "job_complete" for e in _read_events(events_file))
    except OSError as e:
        logger.warning(f"Error reading events file {events_file}: {e}")
    return False


def _analysable(event: Dict) -> bool:
    """Whether the analysis can use ``event``: a number (or no) timestamp,
    an object (or no) metadata, a partition id a dict can key."""
    timestamp = event.get("timestamp", 0)
    return (
        isinstance(timestamp, (int, float))
        and isinstance(event.get("metadata", {}), dict)
        and not isinstance(event.get("partition_id"), (list, dict))
    )


def _holds_events(events_file) -> bool:
    """Whether ``events_file`` exists and is not empty (``os.path.exists``
    is false for a file it cannot stat, too)."""
    try:
        return os.stat(events_file).st_size > 0
    except (OSError, ValueError):
        return False


def _resume_after_operation(checkpoint_path) -> Optional[Dict[str, Any]]:
    """The last op a default-executor checkpoint holds, from its op record
    (``ckpt_op.json``, which the restart itself reads): name, index, ops done.
    None for other checkpoints or when the record cannot be read."""
    if not isinstance(checkpoint_path, str):
        return None
    try:
        with open(os.path.join(checkpoint_path, "ckpt_op.json")) as f:
            record = json.load(f)
        name = next(iter(record[-1]))
    except (OSError, ValueError, TypeError, KeyError, IndexError, StopIteration):
        return None
    return {"operation_name": name, "operation_idx": len(record) - 1, "ops_done": len(record)}


def _read_events(events_file) -> List[Dict]:
    """The events of ``events_file``, as ``json.loads`` reads them: its lines
    every reader reads (``_native.read_event_lines``: JSON objects; garbage,
    text that is not UTF-8, a line cut by a kill, non-objects and nesting
    deeper than 256 levels are skipped)."""
    return _parse_event_lines(_native.read_event_lines(str(events_file)))


def _parse_event_lines(lines: List[str]) -> List[Dict]:
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
