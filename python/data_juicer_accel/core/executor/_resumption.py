# ruff: noqa: UP006, UP035, UP045
# (typing spelled as in the reference's signatures)
"""``analyze_resumption_state``: what a job's event log says about resuming it.

One implementation: ``_native.analyze_events_file`` (rust/events/analysis.rs)
folds the log in one pass, in linear time, into the job status, the
partition states as the reference computes them, the latest checkpoint and the
first ``job_start``; the reference's plan and progress methods finish the
answer from those.

The reference's own Python methods (``_determine_job_status``,
``_analyze_partition_states``, ``_determine_partition_state``) stay, as
1.6.1 wrote them, and run in two cases the Rust pass cannot answer:

* a subclass overrides one of them (its override must be called);
* the log holds a line that only Python reads as the reference does
  (``needs_reference_reading``): a partition id that is a boolean, a float
  or a huge integer (Python's ``1 == True == 1.0`` decides which partition
  it belongs to, and which id is shown), a timestamp that is not a plain
  number (NaN, a string: ``max`` compares it, or raises, as only Python
  does), metadata that is not an object, or a value that does not convert
  exactly. Data-Juicer never writes such lines; for them the answer is the
  reference's (quadratic) scan, and events the reference would raise on
  are left out (Fix: a job with such a line can still resume).
"""

import contextlib
import json
import os
import time
from typing import Any, Dict, List, Optional

from data_juicer_accel import _native
from data_juicer_accel.core.executor._event_files import holds_events, read_events

#: Checkpoint event types the analysis recognises: the reference's
#: "checkpoint_saved" and "checkpoint_save", which is what is actually logged.
_CHECKPOINT_EVENT_TYPES = ("checkpoint_saved", "checkpoint_save")

#: The reference's helpers the Rust pass reproduces; a subclass overriding
#: one gets the Python reading.
_REPRODUCED_HELPERS = ("_determine_job_status", "_analyze_partition_states", "_determine_partition_state")


class ResumptionAnalysis:
    """``EventLoggingMixin``'s resumption analysis (the reference's methods)."""

    event_logger: Any  # set by EventLoggingMixin

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
        if not holds_events(events_file):
            return {"error": f"Events file not found: {events_file}"}

        answer = self._answer_in_one_pass(job_id, events_file) if self._uses_reference_helpers() else None
        return answer if answer is not None else self._answer_in_python(job_id, events_file)

    def _answer_in_one_pass(self, job_id: str, events_file) -> Optional[Dict[str, Any]]:
        """The answer from the Rust pass, or None where only Python reads the log as the reference does."""
        native = _native.analyze_events_file(str(events_file))
        if native["needs_reference_reading"]:
            return None
        # The two helpers below see reduced inputs that give the same answer
        # (the latest checkpoint, the first job_start).
        with contextlib.suppress(TypeError):  # a job_start timestamp that is not a number
            return self._resumption_answer(
                job_id,
                native["total_events"],
                native["job_status"],
                native["partition_states"],
                native["checkpoints"],
                native["job_start_events"],
            )
        return None

    def _answer_in_python(self, job_id: str, events_file) -> Dict[str, Any]:
        """The answer from every event read in Python, by the reference's helpers."""
        events = read_events(events_file)
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
        return all(getattr(cls, name) is getattr(ResumptionAnalysis, name) for name in _REPRODUCED_HELPERS)

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
        """Analyze the state of each partition based on events."""
        partition_states = {}

        # Group events by partition ID
        for start_event in partition_starts:
            partition_id = start_event.get("partition_id")
            if partition_id is None:
                continue

            # Find the latest start event for this partition
            partition_starts_for_id = [e for e in partition_starts if e.get("partition_id") == partition_id]
            latest_start = max(partition_starts_for_id, key=lambda x: x.get("timestamp", 0))

            # Find completion events for this partition
            partition_completes_for_id = [e for e in partition_completes if e.get("partition_id") == partition_id]
            partition_failures_for_id = [e for e in partition_failures if e.get("partition_id") == partition_id]

            # Find operation events for this partition
            ops_for_partition = [e for e in op_starts if e.get("partition_id") == partition_id]
            op_completes_for_partition = [e for e in op_completes if e.get("partition_id") == partition_id]

            # Determine partition state
            state = self._determine_partition_state(
                partition_id,
                latest_start,
                partition_completes_for_id,
                partition_failures_for_id,
                ops_for_partition,
                op_completes_for_partition,
            )

            partition_states[partition_id] = state

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


def _analysable(event: Dict) -> bool:
    """Whether the analysis can use ``event``: a number (or no) timestamp,
    an object (or no) metadata, a partition id a dict can key."""
    timestamp = event.get("timestamp", 0)
    return (
        isinstance(timestamp, (int, float))
        and isinstance(event.get("metadata", {}), dict)
        and not isinstance(event.get("partition_id"), (list, dict))
    )
