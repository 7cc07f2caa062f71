"""
Event logging for Data-Juicer executors, with a Rust event buffer: a drop-in
for ``data_juicer.core.executor.event_logging_mixin`` (py-data-juicer 1.6.1).

This module only re-exports; each concern has its own module:

* ``_event``: ``EventType`` and ``Event``, the reference's data model;
* ``_event_logger``: ``EventLogger`` over its native sink, and the flush at
  exit and restart after a fork of every live logger;
* ``_logging_mixin``: ``EventLoggingMixin`` and its ``log_*`` methods, with
  ``_log_event`` as a method of C;
* ``_resumption``: ``analyze_resumption_state``, in one Rust pass;
* ``_job_summary``: ``job_summary.json``;
* ``_event_files``: which file is a job's latest log, and the lines every
  reader reads.

The same JSONL lines in the same files, the same loguru lines as the
reference. What differs is underneath: events are serialised in Rust and
written by a background thread (within ``cfg.event_logging.flush_interval``
seconds, default 0.1; job-level events before the call returns; each event
at once with ``flush_interval: 0``, in worker processes and in forked
children); the loguru INFO line is only formatted when some sink accepts
INFO; ``analyze_resumption_state`` reads the log in linear time; and no log
stops a reader: lines that are not UTF-8, not a JSON object, or nested deeper
than 256 levels are skipped, and events the analysis cannot use are left out
where they would make it raise.
"""

# The names the reference module has at top level (its imports included),
# for code that imports them from here.
import json  # noqa: F401
import os  # noqa: F401
import re  # noqa: F401
import threading  # noqa: F401
import time  # noqa: F401
from collections import defaultdict, deque  # noqa: F401
from dataclasses import dataclass  # noqa: F401
from datetime import datetime  # noqa: F401
from enum import Enum  # noqa: F401
from pathlib import Path  # noqa: F401
from typing import Any, Dict, Generator, List, Optional  # noqa: F401, UP035
from uuid import uuid4  # noqa: F401

from loguru import logger  # noqa: F401

# Re-exports (``name as name``): the reference's classes, our settings, and
# private names other modules and tests reach here (the exit flush in
# tools/_interrupt.py, the fork restart, the worker test, the fast path).
from data_juicer_accel.core.executor._event import Event as Event
from data_juicer_accel.core.executor._event import EventType as EventType
from data_juicer_accel.core.executor._event_logger import DEFAULT_FLUSH_INTERVAL as DEFAULT_FLUSH_INTERVAL
from data_juicer_accel.core.executor._event_logger import DEFAULT_QUEUE_SIZE as DEFAULT_QUEUE_SIZE
from data_juicer_accel.core.executor._event_logger import EventLogger as EventLogger
from data_juicer_accel.core.executor._event_logger import _flush_all_loggers as _flush_all_loggers
from data_juicer_accel.core.executor._event_logger import _in_worker_process as _in_worker_process
from data_juicer_accel.core.executor._event_logger import _restart_after_fork as _restart_after_fork
from data_juicer_accel.core.executor._logging_mixin import _FAST_PATH as _FAST_PATH
from data_juicer_accel.core.executor._logging_mixin import EventLoggingMixin as EventLoggingMixin

# This is the classes' public home: reprs, pickles and error messages name it,
# as the reference's name their module.
for _public in (EventType, Event, EventLogger, EventLoggingMixin):
    _public.__module__ = __name__
del _public
