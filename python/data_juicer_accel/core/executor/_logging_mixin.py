#!/usr/bin/env python3
# ruff: noqa: UP006, UP035, UP045
# (typing spelled as in the reference's signatures)
"""``EventLoggingMixin``: the reference's event logging methods of an executor.

The ``log_*`` methods are py-data-juicer 1.6.1's (Apache-2.0): the same
signatures, docstrings, metadata and messages; each builds its metadata and
message and logs through ``_log_reference_event``, which gives the event the
reference's id. Compatible fixes are marked "Fix:".

``_log_event`` is, with a loguru whose levels can be read, a method of C
(rust/bindings/log_event_method.rs): one native call per event, no Python
frame. Which calls that fast path takes is decided in Rust alone
(rust/bindings/events/fast_path.rs); the Python ``_log_event`` below runs for
the calls it declines, writes the reference's DEBUG lines, and still hands
the event to the sink through ``_FAST_PATH.log`` where Rust allows it.

The resumption analysis and the job summary are the mixin's bases
(``_resumption.py``, ``_job_summary.py``). This module is one concern, the
logging methods; its length is the reference's 23 ``log_*`` methods.
"""

import os
import threading
import time
from typing import Any, Dict, Generator, List, Optional
from uuid import uuid4

from loguru import logger

from data_juicer_accel import _native
from data_juicer_accel.core.executor._event import Event, EventType
from data_juicer_accel.core.executor._event_logger import EventLogger
from data_juicer_accel.core.executor._job_summary import JobSummaryMixin
from data_juicer_accel.core.executor._resumption import ResumptionAnalysis


class EventLoggingMixin(ResumptionAnalysis, JobSummaryMixin):
    """Mixin to add event logging capabilities to any executor."""

    cfg: Any  # set by the executor
    work_dir: str  # set by the executor
    executor_type: str  # set by the executor

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
        # The class holds a C method instead (set below the class), which
        # calls this one for the calls its fast path declines.
        event_logger = self.event_logger
        if event_logger is None:
            logger.warning(f"Event logger is None, cannot log event: {event_type.value}")
            return
        logger.debug(f"Creating event: {event_type.value} - {message}")
        logger.debug(f"Logging event to event logger: {event_type.value}")
        # True, the Event when an INFO sink wants its line, or None where Rust
        # declines (a replaced log_event, a keyword Event() rejects).
        logged = _FAST_PATH.log(self, event_type, message, kwargs)
        if logged is None:
            self._log_event_object(event_logger, event_type, message, kwargs)
        elif logged is not True:
            _log_info_line(self, logged)
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

    def _log_reference_event(self, event_type: EventType, message: str, id_parts: tuple = (), **fields) -> None:
        """Log the event of a ``log_*`` method, with the reference's id:
        ``<type>_<id_parts...>_<seconds>``."""
        event_id = "_".join([event_type.value, *map(str, id_parts), str(int(time.time()))])
        self._log_event(event_type, message, event_id=event_id, **fields)

    def _add_op_context(
        self, metadata: Dict[str, Any], kwargs: Dict[str, Any], operation_name: str, operation_idx: int, partition_id
    ) -> None:
        """What the reference's ``log_op_*`` add to their metadata: the
        caller's ``metadata`` keyword, then the DAG node."""
        # Merge any additional metadata from kwargs
        if "metadata" in kwargs:
            metadata.update(kwargs["metadata"])

        # Automatically add DAG context if DAGExecutionMixin is available
        self._add_dag_context_to_metadata(metadata, operation_name, operation_idx, partition_id)

    def _log_partition_event(self, event_type: EventType, message: str, partition_id, **fields) -> None:
        """A partition-level event of the reference: its id and fields name the partition."""
        self._log_reference_event(event_type, message, id_parts=(partition_id,), partition_id=partition_id, **fields)

    def _log_op_event(
        self, event_type: EventType, message: str, partition_id, operation_name, operation_idx, **fields
    ) -> None:
        """An op-level event of the reference (op, checkpoint): its id and fields name the partition and op."""
        self._log_reference_event(
            event_type,
            message,
            id_parts=(partition_id, operation_idx),
            partition_id=partition_id,
            operation_name=operation_name,
            operation_idx=operation_idx,
            **fields,
        )

    def _log_checkpoint_event(
        self,
        event_type: EventType,
        verb: str,
        time_key: str,
        partition_id,
        operation_name,
        operation_idx,
        checkpoint_path,
    ) -> None:
        """``log_checkpoint_save`` / ``_load``: the same event but for the verb and the time key."""
        metadata = {
            "checkpoint_path": checkpoint_path,
            "operation_idx": operation_idx,
            "operation_class": operation_name,
            time_key: time.time(),
        }
        self._log_op_event(
            event_type,
            f"Checkpoint {verb} for operation {operation_name} (idx {operation_idx}) on partition {partition_id}",
            partition_id,
            operation_name,
            operation_idx,
            checkpoint_path=checkpoint_path,
            metadata=metadata,
        )

    def _log_dag_node_event(
        self, event_type: EventType, node_id: str, node_info: Dict[str, Any], outcome: str, **later_metadata
    ) -> None:
        """A ``log_dag_node_*`` event: metadata names the node and its op, then ``later_metadata`` in order."""
        metadata = {
            "node_id": node_id,
            "op_name": node_info.get("op_name"),
            "op_type": node_info.get("op_type"),
            **later_metadata,
        }
        message = f"DAG node {node_id} ({node_info.get('op_name')}) {outcome}"
        self._log_reference_event(event_type, message, id_parts=(node_id,), metadata=metadata)

    def _log_dag_plan_event(
        self, event_type: EventType, message: str, plan_path: str, plan_info: Dict[str, Any], time_key: str
    ) -> None:
        """``log_dag_execution_plan_saved`` / ``_loaded``: the same event but for the message and the time key."""
        metadata = {
            "plan_path": plan_path,
            "node_count": plan_info.get("node_count", 0),
            "edge_count": plan_info.get("edge_count", 0),
            "parallel_groups_count": plan_info.get("parallel_groups_count", 0),
            time_key: time.time(),
        }
        self._log_reference_event(event_type, message, metadata=metadata)

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
        self._log_reference_event(
            EventType.JOB_START,
            "Job started",
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

        self._log_reference_event(
            EventType.JOB_COMPLETE,
            f"Job completed successfully in {duration:.2f}s",
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
        self._log_reference_event(
            EventType.JOB_FAILED,
            f"Job failed: {error_message}",
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
        self._log_partition_event(
            EventType.PARTITION_START,
            f"Partition {partition_id} started processing",
            partition_id,
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

        self._log_partition_event(
            EventType.PARTITION_COMPLETE,
            message,
            partition_id,
            metadata=metadata,
        )

    def log_partition_failed(self, partition_id, error_message, retry_count):
        """Log partition failure with retry information."""
        metadata = {
            "retry_count": retry_count,
            "failure_time": time.time(),
            "error_type": type(error_message).__name__ if error_message else "Unknown",
        }
        self._log_partition_event(
            EventType.PARTITION_FAILED,
            f"Partition {partition_id} failed after {retry_count} retries: {error_message}",
            partition_id,
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
        self._add_op_context(metadata, kwargs, operation_name, operation_idx, partition_id)

        self._log_op_event(
            EventType.OP_START,
            f"Operation {operation_name} (idx {operation_idx}) started on partition {partition_id}",
            partition_id,
            operation_name,
            operation_idx,
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

        self._add_op_context(metadata, kwargs, operation_name, operation_idx, partition_id)

        self._log_op_event(
            EventType.OP_COMPLETE,
            f"Operation {operation_name} (idx {operation_idx}) completed on partition {partition_id} in {duration:.3f}s",  # noqa: E501
            partition_id,
            operation_name,
            operation_idx,
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
        self._add_op_context(metadata, kwargs, operation_name, operation_idx, partition_id)

        self._log_op_event(
            EventType.OP_FAILED,
            f"Operation {operation_name} (idx {operation_idx}) failed on partition {partition_id}: {error_message}",
            partition_id,
            operation_name,
            operation_idx,
            error_message=error_message,
            retry_count=retry_count,
            status="failed",
            metadata=metadata,
        )

    def log_checkpoint_save(self, partition_id, operation_name, operation_idx, checkpoint_path):
        """Log checkpoint save with file information."""
        self._log_checkpoint_event(
            EventType.CHECKPOINT_SAVE,
            "saved",
            "save_time",
            partition_id,
            operation_name,
            operation_idx,
            checkpoint_path,
        )

    def log_checkpoint_load(self, partition_id, operation_name, operation_idx, checkpoint_path):
        """Log checkpoint load with file information."""
        self._log_checkpoint_event(
            EventType.CHECKPOINT_LOAD,
            "loaded",
            "load_time",
            partition_id,
            operation_name,
            operation_idx,
            checkpoint_path,
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
        self._log_reference_event(
            EventType.DAG_BUILD_START,
            "DAG build started from pipeline AST",
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
        self._log_reference_event(
            EventType.DAG_BUILD_COMPLETE,
            f"DAG build completed: {dag_info.get('node_count', 0)} nodes, {dag_info.get('edge_count', 0)} edges",
            metadata=metadata,
        )

    def log_dag_node_ready(self, node_id: str, node_info: Dict[str, Any]):
        """Log when a DAG node becomes ready for execution."""
        self._log_dag_node_event(
            EventType.DAG_NODE_READY,
            node_id,
            node_info,
            "ready for execution",
            dependencies_count=node_info.get("dependencies_count", 0),
            dependents_count=node_info.get("dependents_count", 0),
            execution_order=node_info.get("execution_order", -1),
            ready_time=time.time(),
        )

    def log_dag_node_start(self, node_id: str, node_info: Dict[str, Any]):
        """Log when a DAG node starts execution."""
        self._log_dag_node_event(
            EventType.DAG_NODE_START,
            node_id,
            node_info,
            "started execution",
            execution_order=node_info.get("execution_order", -1),
            start_time=time.time(),
        )

    def log_dag_node_complete(self, node_id: str, node_info: Dict[str, Any], duration: float):
        """Log when a DAG node completes execution."""
        self._log_dag_node_event(
            EventType.DAG_NODE_COMPLETE,
            node_id,
            node_info,
            f"completed in {duration:.3f}s",
            execution_order=node_info.get("execution_order", -1),
            duration_seconds=duration,
            completion_time=time.time(),
        )

    def log_dag_node_failed(self, node_id: str, node_info: Dict[str, Any], error_message: str, duration: float = 0):
        """Log when a DAG node fails execution."""
        self._log_dag_node_event(
            EventType.DAG_NODE_FAILED,
            node_id,
            node_info,
            f"failed: {error_message}",
            execution_order=node_info.get("execution_order", -1),
            duration_seconds=duration,
            error_message=error_message,
            failure_time=time.time(),
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
        self._log_reference_event(
            EventType.DAG_PARALLEL_GROUP_START,
            f"Parallel group {group_id} started with {group_info.get('node_count', 0)} nodes",
            id_parts=(group_id,),
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
        self._log_reference_event(
            EventType.DAG_PARALLEL_GROUP_COMPLETE,
            f"Parallel group {group_id} completed: {group_info.get('completed_nodes', 0)}/{group_info.get('node_count', 0)} nodes in {duration:.3f}s",  # noqa: E501
            id_parts=(group_id,),
            metadata=metadata,
        )

    def log_dag_execution_plan_saved(self, plan_path: str, plan_info: Dict[str, Any]):
        """Log when DAG execution plan is saved."""
        self._log_dag_plan_event(
            EventType.DAG_EXECUTION_PLAN_SAVED,
            f"DAG execution plan saved to {plan_path}",
            plan_path,
            plan_info,
            "save_time",
        )

    def log_dag_execution_plan_loaded(self, plan_path: str, plan_info: Dict[str, Any]):
        """Log when DAG execution plan is loaded."""
        self._log_dag_plan_event(
            EventType.DAG_EXECUTION_PLAN_LOADED,
            f"DAG execution plan loaded from {plan_path}",
            plan_path,
            plan_info,
            "load_time",
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
        self._log_reference_event(
            EventType.JOB_RESTART,
            f"Job restarted after {restart_reason} interruption",
            metadata=metadata,
        )

    def log_partition_resume(self, partition_id: int, resume_operation: int, checkpoint_path: str, resume_reason: str):
        """Log when a partition is resumed from a checkpoint."""
        metadata = {
            "resume_operation": resume_operation,
            "checkpoint_path": checkpoint_path,
            "resume_reason": resume_reason,
        }
        self._log_partition_event(
            EventType.PARTITION_RESUME,
            f"Partition {partition_id} resumed from operation {resume_operation} checkpoint",
            partition_id,
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


def _log_info_line(executor, event) -> None:
    """The INFO line of an event the native fast path logged, for an INFO sink."""
    logger.info(executor.event_logger._format_event_for_logging(event))


#: Which ``_log_event`` calls go straight to the sink (rust/bindings/events/fast_path.rs).
_FAST_PATH = _native.LogEventFastPath(getattr(logger, "_core", None), EventLogger.log_event)

# One C call per event for the calls the fast path takes, with no Python
# frame and no kwargs dict (rust/bindings/log_event_method.rs); the Python
# method above runs for everything else.
EventLoggingMixin._log_event = _native.log_event_method(  # type: ignore[method-assign]
    _FAST_PATH, EventLoggingMixin._log_event, _log_info_line
)
