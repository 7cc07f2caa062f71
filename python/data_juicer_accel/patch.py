"""Make an installed Data-Juicer use this package, with no change to its code.

``patch_data_juicer()`` swaps this package's ``CheckpointManager``,
``EventLogger`` and ``EventLoggingMixin`` (with ``EventType`` and ``Event``,
which Data-Juicer code passes to them) into the installed Data-Juicer:

1. the names are set on the reference modules themselves
   (``data_juicer.utils.ckpt_utils``,
   ``data_juicer.core.executor.event_logging_mixin``), so a later
   ``from ... import CheckpointManager`` gets ours;
2. every loaded ``data_juicer.*`` module whose globals still hold a reference
   class gets ours under the same name, so ``CheckpointManager(...)`` and
   ``EventLoggingMixin.__init__(self, cfg)`` inside ``DefaultExecutor``,
   ``RayExecutor`` and ``PartitionedRayExecutor`` resolve to ours;
3. every class that already inherits directly from a reference class
   (Data-Juicer's executors, and any user executor defined before the call)
   has that base replaced by ours in ``__bases__``, so its MRO is exactly the
   one it would have had if it had been written against this package.

Base swapping was chosen over grafting our methods onto the reference classes:
grafting would leave the reference's other attributes (helpers our methods do
not define, class attributes) mixed with ours, while a swapped base gives
exactly our class, and the reference classes stay intact for code that holds
them explicitly.

``RayCheckpointManager`` (and ``CheckpointStrategy``, which it is configured
with) is swapped as well once this package provides one.

``DefaultExecutor`` also keeps its checkpoint in ``checkpoint_dir`` (a
directory or ``s3://bucket/prefix``) when the configuration sets that key,
instead of 1.6.1's fixed ``work_dir/ckpt``: ``DefaultExecutor.__init__`` gets
a wrapper that builds the manager there.

It also makes ``DefaultExecutor`` take per-op checkpoints when the
configuration asks for them (``use_checkpoint: true`` plus ``checkpoint.*``
keys; see ``data_juicer_accel.utils.per_op_ckpt``): ``DefaultExecutor.run``
and ``NestedDataset.process`` (the executor's op loop) get thin wrappers that
do nothing outside such a run, and Data-Juicer's configuration parser learns
``checkpoint.background``. ``OP.run`` is left alone: the insight miner,
probes and users run ops too, and none of that may become a checkpoint.

``PartitionedRayExecutor`` keeps ``partitioning_info.json`` in the job's
work directory, resumes from the bucket and refuses to clear it, when its
``checkpoint_dir`` is a bucket (see ``data_juicer_accel.utils.partitioned_ckpt``):
four of its methods get wrappers that do nothing for a local directory.

Calling it again does nothing. Before changing anything, the reference API is
compared with the one this package reproduces (py-data-juicer 1.6.1): method
names and parameter names of every class swapped, the ``EventType`` values and
the ``Event`` fields. On any difference it warns (``RuntimeWarning``) and
changes nothing.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib
import inspect
import sys
import threading
import types
import warnings
from typing import Any

__all__ = ["patch_data_juicer", "is_patched", "DataJuicerAPIMismatchWarning"]

_REF_CKPT = "data_juicer.utils.ckpt_utils"
_REF_EVENTS = "data_juicer.core.executor.event_logging_mixin"
_ACCEL_CKPT = "data_juicer_accel.utils.ckpt_utils"
_ACCEL_EVENTS = "data_juicer_accel.core.executor.event_logging_mixin"
#: Set on both reference modules once patched.
_MARKER = "__data_juicer_accel_patched__"

#: The reference API this package reproduces (py-data-juicer 1.5.0 - 1.6.1):
#: class -> method -> parameter names.
_EXPECTED_METHODS: dict[str, dict[str, tuple[str, ...]]] = {
    "CheckpointManager": {
        "__init__": ("self", "ckpt_dir", "original_process_list", "num_proc"),
        "get_left_process_list": ("self",),
        "check_ckpt": ("self",),
        "record": ("self", "op_cfg"),
        "check_ops_to_skip": ("self",),
        "save_ckpt": ("self", "ds"),
        "save_checkpoint": ("self", "ds", "kwargs"),
        "load_ckpt": ("self",),
        "load_checkpoint": ("self", "kwargs"),
    },
    "RayCheckpointManager": {
        "__init__": (
            "self",
            "ckpt_dir",
            "checkpoint_enabled",
            "checkpoint_strategy",
            "checkpoint_n_ops",
            "checkpoint_op_names",
            "event_logger",
        ),
    },
    "EventLogger": {
        "__init__": ("self", "log_dir", "job_id", "work_dir"),
        "log_event": ("self", "event"),
        "find_latest_events_file": ("self", "work_dir"),
        "check_job_completion": ("self", "events_file"),
        "get_events": ("self", "event_type", "partition_id", "operation_name", "start_time", "end_time", "limit"),
        "generate_status_report": ("self",),
        "monitor_events": ("self", "event_type"),
        "list_available_jobs": ("cls", "work_dir"),
    },
    "EventLoggingMixin": {
        "__init__": ("self", "args", "kwargs"),
        "_setup_event_logging": ("self",),
        "_update_job_summary": ("self", "status", "end_time", "error_message"),
        "_load_job_summary": ("self",),
        "_get_config_name": ("self",),
        "_log_event": ("self", "event_type", "message", "kwargs"),
        "log_job_start": ("self", "config", "total_partitions"),
        "log_job_complete": ("self", "duration", "output_path"),
        "log_job_failed": ("self", "error_message", "duration"),
        "log_partition_start": ("self", "partition_id", "partition_meta"),
        "log_partition_complete": ("self", "partition_id", "duration", "output_path", "success", "error"),
        "log_partition_failed": ("self", "partition_id", "error_message", "retry_count"),
        "log_op_start": ("self", "partition_id", "operation_name", "operation_idx", "op_args", "kwargs"),
        "log_op_complete": (
            "self",
            "partition_id",
            "operation_name",
            "operation_idx",
            "duration",
            "checkpoint_path",
            "input_rows",
            "output_rows",
            "kwargs",
        ),
        "log_op_failed": (
            "self",
            "partition_id",
            "operation_name",
            "operation_idx",
            "error_message",
            "retry_count",
            "kwargs",
        ),
        "log_checkpoint_save": ("self", "partition_id", "operation_name", "operation_idx", "checkpoint_path"),
        "log_checkpoint_load": ("self", "partition_id", "operation_name", "operation_idx", "checkpoint_path"),
        "log_dag_build_start": ("self", "ast_info"),
        "log_dag_build_complete": ("self", "dag_info"),
        "log_dag_node_ready": ("self", "node_id", "node_info"),
        "log_dag_node_start": ("self", "node_id", "node_info"),
        "log_dag_node_complete": ("self", "node_id", "node_info", "duration"),
        "log_dag_node_failed": ("self", "node_id", "node_info", "error_message", "duration"),
        "log_dag_parallel_group_start": ("self", "group_id", "group_info"),
        "log_dag_parallel_group_complete": ("self", "group_id", "group_info", "duration"),
        "log_dag_execution_plan_saved": ("self", "plan_path", "plan_info"),
        "log_dag_execution_plan_loaded": ("self", "plan_path", "plan_info"),
        "log_job_restart": (
            "self",
            "restart_reason",
            "original_start_time",
            "resume_partitions",
            "resume_from_operation",
            "checkpoint_paths",
        ),
        "log_partition_resume": ("self", "partition_id", "resume_operation", "checkpoint_path", "resume_reason"),
        "get_events": ("self", "kwargs"),
        "generate_status_report": ("self",),
        "monitor_events": ("self", "event_type"),
        "analyze_resumption_state": ("self", "job_id"),
    },
}

#: Classes whose existing subclasses get our class as base instead.
_REBASED = ("CheckpointManager", "RayCheckpointManager", "EventLogger", "EventLoggingMixin")

_lock = threading.RLock()


class DataJuicerAPIMismatchWarning(RuntimeWarning):
    """The installed Data-Juicer differs from the API this package reproduces;
    nothing was patched."""


def is_patched() -> bool:
    """Whether ``patch_data_juicer()`` has been applied in this process."""
    mod = sys.modules.get(_REF_CKPT)
    return bool(mod is not None and getattr(mod, _MARKER, False))


def patch_data_juicer() -> bool:
    """Make the installed Data-Juicer use this package's checkpoints and events.

    :return: True when the patch is in place (now or from an earlier call);
        False, with a warning, when Data-Juicer is missing or its API differs
        from the one this package reproduces (then nothing is changed).
    """
    with _lock:
        try:
            ref_ckpt = importlib.import_module(_REF_CKPT)
            ref_events = importlib.import_module(_REF_EVENTS)
        except ImportError as e:
            _warn(f"Data-Juicer is not importable ({e}); nothing patched.")
            return False
        if getattr(ref_ckpt, _MARKER, False) and getattr(ref_events, _MARKER, False):
            return True
        accel_ckpt = importlib.import_module(_ACCEL_CKPT)
        accel_events = importlib.import_module(_ACCEL_EVENTS)

        pairs = _pairs(ref_ckpt, ref_events, accel_ckpt, accel_events)
        problems = _api_problems(pairs, ref_events, accel_events)
        if problems:
            version = getattr(sys.modules.get("data_juicer"), "__version__", "unknown")
            _warn(
                f"installed Data-Juicer {version} differs from the API data-juicer-accel reproduces "
                f"(py-data-juicer 1.6.1); nothing patched:\n  " + "\n  ".join(problems)
            )
            return False

        _apply(pairs, ref_ckpt, ref_events)
        return True


# --------------------------------------------------------------------------


def _warn(message: str) -> None:
    warnings.warn(message, DataJuicerAPIMismatchWarning, stacklevel=3)


def _pairs(ref_ckpt, ref_events, accel_ckpt, accel_events) -> list[tuple[str, Any, Any]]:
    """(name, reference object, replacement) for everything swapped."""
    names = [
        (ref_ckpt, accel_ckpt, "CheckpointManager"),
        (ref_events, accel_events, "EventLogger"),
        (ref_events, accel_events, "EventLoggingMixin"),
        (ref_events, accel_events, "EventType"),
        (ref_events, accel_events, "Event"),
    ]
    if getattr(accel_ckpt, "RayCheckpointManager", None) is not None:
        # The strategy enum goes with the manager that compares against it.
        names += [
            (ref_ckpt, accel_ckpt, "RayCheckpointManager"),
            (ref_ckpt, accel_ckpt, "CheckpointStrategy"),
        ]
    return [(name, getattr(ref, name, None), getattr(ours, name)) for ref, ours, name in names]


def _param_names(func) -> tuple[str, ...] | None:
    try:
        return tuple(inspect.signature(func).parameters)
    except (TypeError, ValueError):
        return None


def _api_problems(pairs, ref_events, accel_events) -> list[str]:
    problems = []
    for name, ref, ours in pairs:
        if ref is None:
            problems.append(f"{name} is missing")
            continue
        for method, expected in _EXPECTED_METHODS.get(name, {}).items():
            ref_func = inspect.getattr_static(ref, method, None)
            if ref_func is None:
                problems.append(f"{name}.{method} is missing")
                continue
            if isinstance(ref_func, (classmethod, staticmethod)):
                ref_func = ref_func.__func__
            got = _param_names(ref_func)
            if got != expected:
                problems.append(f"{name}.{method}{_fmt(got)} != expected {name}.{method}{_fmt(expected)}")
            elif not hasattr(ours, method):
                problems.append(f"data-juicer-accel's {name} lacks {method}")
    ref_type = getattr(ref_events, "EventType", None)
    if ref_type is not None:
        missing = sorted({m.value for m in ref_type} - {m.value for m in accel_events.EventType})
        if missing:
            problems.append(f"EventType values unknown to data-juicer-accel: {missing}")
    ref_event = getattr(ref_events, "Event", None)
    if ref_event is not None:
        try:
            ref_fields = [f.name for f in dataclasses.fields(ref_event)]
        except TypeError:
            ref_fields = None
        ours = [f.name for f in dataclasses.fields(accel_events.Event)]
        if ref_fields != ours:
            problems.append(f"Event fields {ref_fields} != {ours}")
    return problems


def _fmt(names) -> str:
    return "(?)" if names is None else "(" + ", ".join(names) + ")"


def _apply(pairs, ref_ckpt, ref_events) -> None:
    by_id = {id(ref): (ref, ours) for _name, ref, ours in pairs}

    # 1 + 2: module globals, the reference modules included. Only identity is
    # tested: a Data-Juicer LazyLoader would pip-install its module on any
    # attribute lookup.
    for mod_name, mod in list(sys.modules.items()):
        if not (mod_name == "data_juicer" or mod_name.startswith("data_juicer.")):
            continue
        if not isinstance(mod, types.ModuleType):
            continue
        namespace = vars(mod)
        for key, value in list(namespace.items()):
            hit = by_id.get(id(value))
            if hit is not None and hit[0] is value:
                namespace[key] = hit[1]

    # 3: classes already derived from a reference class.
    for name, ref, ours in pairs:
        if name not in _REBASED:  # EventType (an enum) and Event (a dataclass): names only
            continue
        for sub in list(ref.__subclasses__()):
            if sub is ours:
                continue
            new_bases = tuple(ours if b is ref else b for b in sub.__bases__)
            try:
                sub.__bases__ = new_bases
            except TypeError as e:  # an incompatible layout: leave it, say so
                warnings.warn(
                    f"data-juicer-accel could not rebase {sub.__module__}.{sub.__qualname__} "
                    f"onto {ours.__qualname__}: {e}",
                    RuntimeWarning,
                    stacklevel=3,
                )

    _install_per_op_checkpoints()
    _install_partitioned_bucket_checkpoints()
    setattr(ref_ckpt, _MARKER, True)
    setattr(ref_events, _MARKER, True)


# --------------------------------------------------------------------------
# Per-op checkpoints in DefaultExecutor.
# --------------------------------------------------------------------------

_EXECUTOR_MODULE = "data_juicer.core.executor.default_executor"
_DATASET_MODULE = "data_juicer.core.data.dj_dataset"
_CONFIG_MODULE = "data_juicer.config.config"
#: Set on every function this module wrapped (so it is wrapped once).
_WRAPPED = "__data_juicer_accel_wrapped__"


def _install_per_op_checkpoints() -> None:
    """Wrap ``DefaultExecutor.__init__`` and ``run``, ``NestedDataset.process`` and ``build_base_parser``.

    A module that cannot be imported (a trimmed Data-Juicer) is skipped with
    a warning: per-op checkpoints are then off, the rest of the patch holds.
    """
    try:
        executor_module = importlib.import_module(_EXECUTOR_MODULE)
        dataset_module = importlib.import_module(_DATASET_MODULE)
        config_module = importlib.import_module(_CONFIG_MODULE)
    except ImportError as e:
        warnings.warn(f"data-juicer-accel: per-op checkpoints unavailable ({e})", RuntimeWarning, stacklevel=4)
        return
    executor_cls = executor_module.DefaultExecutor
    executor_cls.__init__ = _wrap(executor_cls.__init__, _executor_init)  # type: ignore[method-assign]
    executor_cls.run = _wrap(executor_cls.run, _executor_run)
    dataset_cls = dataset_module.NestedDataset
    dataset_cls.process = _wrap(dataset_cls.process, _dataset_process)
    config_module.build_base_parser = _wrap(config_module.build_base_parser, _build_base_parser)  # type: ignore[attr-defined]


def _wrap(original, wrapper):
    if getattr(original, _WRAPPED, False):
        return original

    @functools.wraps(original)
    def wrapped(*args, **kwargs):
        return wrapper(original, *args, **kwargs)

    setattr(wrapped, _WRAPPED, True)
    return wrapped


def _executor_init(original, executor, cfg=None, *args, **kwargs):
    """``DefaultExecutor.__init__``, with its checkpoint in ``checkpoint_dir``
    when the user gives one (see ``per_op_ckpt.checkpoint_dir_of``).

    1.6.1's ``__init__`` builds its manager in ``work_dir/ckpt`` when
    ``use_checkpoint`` is true, and reads that key nowhere else: it runs with
    the key false, then the manager is built in ``checkpoint_dir``."""
    from data_juicer_accel.utils import per_op_ckpt

    if cfg is None:  # what ExecutorBase.__init__ would do, done first to read the config
        cfg = importlib.import_module("data_juicer.core.executor.base").init_configs()
    ckpt_dir = per_op_ckpt.checkpoint_dir_of(cfg) if getattr(cfg, "use_checkpoint", False) else None
    if ckpt_dir is None:
        return original(executor, cfg, *args, **kwargs)
    cfg.use_checkpoint = False
    try:
        original(executor, cfg, *args, **kwargs)
    finally:
        cfg.use_checkpoint = True
    per_op_ckpt.open_checkpoint_manager(executor, ckpt_dir)


def _executor_run(original, executor, *args, **kwargs):
    from data_juicer_accel.utils.per_op_ckpt import PerOpCheckpoints

    per_op = PerOpCheckpoints.for_executor(executor)
    if per_op is None:
        return original(executor, *args, **kwargs)
    return per_op.run(original, executor, *args, **kwargs)


def _dataset_process(original, dataset, operators, *args, **kwargs):
    """The executor's op loop: per-op checkpoints when its ``checkpointer`` is
    the manager of the per-op run in progress (no other caller passes it)."""
    from data_juicer_accel.utils import per_op_ckpt

    per_op = per_op_ckpt.active()
    if per_op is not None:
        operators = per_op.ops_for_loop(operators, kwargs.get("checkpointer"))
    return original(dataset, operators, *args, **kwargs)


def _build_base_parser(original, *args, **kwargs):
    parser = original(*args, **kwargs)
    parser.add_argument(
        "--checkpoint.background",
        type=bool,
        default=True,
        help="data-juicer-accel: save per-op checkpoints of the default executor in the background",
    )
    return parser


# --------------------------------------------------------------------------
# The partitioned Ray executor with its checkpoints in a bucket.
# --------------------------------------------------------------------------

_PARTITIONED_MODULE = "data_juicer.core.executor.ray_executor_partitioned"


def _install_partitioned_bucket_checkpoints() -> None:
    """Wrap the five methods of ``PartitionedRayExecutor`` that treat
    ``checkpoint_dir`` as a local directory (see ``partitioned_ckpt``).
    Without Ray the module does not import, and there is nothing to wrap."""
    try:
        module = importlib.import_module(_PARTITIONED_MODULE)
    except ImportError:
        return
    executor_cls = module.PartitionedRayExecutor
    for name, wrapper in (
        ("_get_partitioning_info_path", _partitioning_info_path),
        ("_save_partitioning_info", _save_partitioning_info),
        ("_load_partitioning_info", _load_partitioning_info),
        ("_resume_job", _resume_job),
        ("_clear_invalid_checkpoints", _clear_invalid_checkpoints),
    ):
        setattr(executor_cls, name, _wrap(getattr(executor_cls, name), wrapper))


def _partitioning_info_path(original, executor):
    from data_juicer_accel.utils import partitioned_ckpt

    if partitioned_ckpt.bucket_of(executor) is None:
        return original(executor)
    return partitioned_ckpt.partitioning_info_path(executor)


def _save_partitioning_info(original, executor, info):
    from data_juicer_accel.utils import partitioned_ckpt

    if partitioned_ckpt.bucket_of(executor) is None:
        return original(executor, info)
    return partitioned_ckpt.save_partitioning_info(executor, info)


def _load_partitioning_info(original, executor):
    from data_juicer_accel.utils import partitioned_ckpt

    if partitioned_ckpt.bucket_of(executor) is None:
        return original(executor)
    info_class = importlib.import_module(_PARTITIONED_MODULE).PartitioningInfo
    return partitioned_ckpt.load_partitioning_info(executor, info_class)


def _resume_job(original, executor, job_id):
    from data_juicer_accel.utils import partitioned_ckpt

    if partitioned_ckpt.bucket_of(executor) is None:
        return original(executor, job_id)
    ckpt_dir = executor.ckpt_manager.ckpt_dir
    result = original(executor, job_id)
    partitioned_ckpt.keep_bucket_after_resume(executor, ckpt_dir)
    return result


def _clear_invalid_checkpoints(original, executor):
    from data_juicer_accel.utils import partitioned_ckpt

    bucket = partitioned_ckpt.bucket_of(executor)
    if bucket is None:
        return original(executor)
    partitioned_ckpt.refuse_to_clear(bucket)
