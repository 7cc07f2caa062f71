# ruff: noqa: UP006, UP035, UP045
# (typing spelled as in the reference: Event.__annotations__ are observable)
"""The event data model of py-data-juicer 1.6.1: ``EventType`` and ``Event``.

Copied from the reference (Apache-2.0) so that the enum values, the field
order (the order of the keys of every JSON line) and ``Event.__annotations__``
are the reference's.
"""

from dataclasses import dataclass, fields
from enum import Enum
from typing import Any, Dict, Optional


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


#: Field names of ``Event``, in order: the keys of a JSON line.
EVENT_FIELDS = [f.name for f in fields(Event)]
