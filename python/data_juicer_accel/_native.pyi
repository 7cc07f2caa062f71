# Typed stubs of the native module (data_juicer_accel._native).
from os import PathLike
from pathlib import Path
from typing import Any

__version__: str

# ---------------------------------------------------------------------------
# Events (rust/bindings/events.rs)

class EventSink:
    """The native half of one EventLogger: a bounded lock-free queue, a flush
    thread writing it to the JSONL file, and the Event builder of the fast path."""

    def __init__(
        self,
        path: str | PathLike[str],
        event_class: type,
        fields: list[str],
        flush_interval: float = 0.1,
        queue_size: int = 65536,
    ) -> None: ...
    def log_fields(
        self,
        event_type: Any,
        message: Any,
        kwargs: dict[str, Any] | None,
        job_id: Any,
        events: Any,
    ) -> Any | None:
        """Build the Event, append it to ``events``, queue its line and return it;
        ``None`` (nothing done) when ``kwargs`` holds a name ``Event()`` rejects."""
    def log_event(self, event: Any, job_id: Any, events: Any) -> None:
        """Set ``event.job_id``, append the event to ``events`` and queue its line."""
    def flush(self, fsync: bool = False) -> None:
        """Write every queued line (and fsync); raises OSError if a write failed."""
    def close(self) -> None:
        """Flush, fsync and stop the flush thread; later events raise ValueError."""
    def _after_fork_in_child(self) -> None: ...
    @property
    def batches_written(self) -> int: ...
    @property
    def path(self) -> Path: ...

def analyze_events_file(path: str | PathLike[str]) -> dict[str, Any]:
    """Fold a JSONL event log into ``total_events``, ``job_status``,
    ``partition_states``, ``checkpoints`` and ``job_start_events``."""

def events_file_has_type(path: str | PathLike[str], event_type: str) -> bool:
    """Whether the log holds an event of ``event_type`` (broken lines skipped)."""
