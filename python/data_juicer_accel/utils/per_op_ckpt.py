"""Per-op checkpoints for Data-Juicer's ``DefaultExecutor``.

Data-Juicer 1.6.1's default executor saves its checkpoint once, in a
``finally`` after the op loop: a SIGKILL (the OOM killer) runs no ``finally``
and loses every finished op. With ``patch_data_juicer()`` and
``use_checkpoint: true``, the executor also honours the ``checkpoint.*`` keys
of Data-Juicer's partitioned executor:

- ``checkpoint.enabled`` / ``checkpoint.strategy``: ``every_op``,
  ``every_n_ops`` (with ``checkpoint.n_ops``), ``manual`` (with
  ``checkpoint.op_names``) or ``disabled``;
- ``checkpoint.background`` (default true): saves are snapshots committed by
  a native thread while the next op runs.

A checkpoint is the dataset as it enters the next op, and its ``ckpt_op.json``
names exactly the ops done, so the original Data-Juicer resumes from it too.
Without a ``checkpoint`` key in the configuration (or with ``disabled``), the
behaviour is 1.6.1's: one save at the end, or when an op fails.

How it hooks in (installed by ``patch_data_juicer``): ``DefaultExecutor.run``
marks its run as active, and ``NestedDataset.process``, when that run's
executor calls it with the run's ``CheckpointManager`` as ``checkpointer``,
loops over thin stand-ins of the ops (``_OpInLoop``) whose ``run`` offers the
dataset the loop passes in here before the real op runs. Anything else that
runs an op (the insight miner and its analyzer, fusion and batch-size probes,
a user's op running another op on a sample) calls the op itself, so it never
becomes, nor triggers, a checkpoint. Both hooks are inert outside such a run.
Once the run returns or raises, nothing of it is left: its background writer
and watcher threads are stopped and the manager forgets the callback.

Where the checkpoint lives: 1.6.1's default executor always keeps it in
``work_dir/ckpt``. Patched, it takes Data-Juicer's ``checkpoint_dir`` key
(declared by 1.6.1's parser for every executor, read only by the partitioned
one) when the user sets it: a directory, or ``s3://bucket/prefix`` for a
bucket. Unset, the parser fills it with ``work_dir/checkpoints`` (the
partitioned executor's default), and the checkpoint stays in
``work_dir/ckpt``, where 1.6.1 writes and resumes it.
"""

from __future__ import annotations

import contextvars
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from loguru import logger

__all__ = ["CheckpointPolicy", "PerOpCheckpoints", "checkpoint_dir_of", "open_checkpoint_manager", "policy_from_config"]

_EXECUTOR_MODULE = "data_juicer.core.executor.default_executor"

STRATEGIES = ("every_op", "every_n_ops", "manual", "disabled")

#: The per-op checkpoints of the ``DefaultExecutor.run`` in progress.
_ACTIVE: contextvars.ContextVar[PerOpCheckpoints | None] = contextvars.ContextVar(
    "data_juicer_accel_per_op_checkpoints", default=None
)


@dataclass(frozen=True)
class CheckpointPolicy:
    """After which ops a checkpoint is taken."""

    strategy: str = "every_op"
    n_ops: int = 1
    op_names: frozenset = frozenset()
    background: bool = True

    def wants(self, ops_done: list) -> bool:
        """Whether to checkpoint once the ops in ``ops_done`` are done."""
        done = len(ops_done)
        if done == 0 or self.strategy == "disabled":
            return False
        if self.strategy == "every_op":
            return True
        if self.strategy == "every_n_ops":
            return done % self.n_ops == 0
        return _op_name(ops_done[-1]) in self.op_names  # manual


def policy_from_config(cfg: Any) -> CheckpointPolicy | None:
    """The policy the configuration asks for, or None for 1.6.1's behaviour:
    no ``use_checkpoint``, no ``checkpoint`` key set by the user, or
    checkpoints disabled.

    Data-Juicer's parser fills ``checkpoint.*`` with defaults whether or not
    the user wrote them, so the configuration files and command line are
    read to tell whether the user asked.
    """
    if not _get(cfg, "use_checkpoint", False) or not _user_set_checkpoint(cfg):
        return None
    section = _get(cfg, "checkpoint", None)
    enabled = _get(section, "enabled", True)
    strategy = str(_get(section, "strategy", "every_op") or "every_op")
    if strategy not in STRATEGIES:
        raise ValueError(f"checkpoint.strategy must be one of {', '.join(STRATEGIES)}; got {strategy!r}")
    if not enabled or strategy == "disabled":
        return None
    n_ops = int(_get(section, "n_ops", 1) or 1)
    if n_ops < 1:
        raise ValueError(f"checkpoint.n_ops must be a positive integer; got {n_ops}")
    op_names = frozenset(_get(section, "op_names", None) or [])
    if strategy == "manual" and not op_names:
        logger.warning("checkpoint.strategy is 'manual' but checkpoint.op_names is empty: only 1.6.1's end save")
    return CheckpointPolicy(strategy, n_ops, op_names, bool(_get(section, "background", True)))


def checkpoint_dir_of(cfg: Any) -> str | None:
    """The ``checkpoint_dir`` the user gave for the default executor's
    checkpoint, or None for 1.6.1's ``work_dir/ckpt``.

    Data-Juicer's parser fills ``checkpoint_dir`` with ``work_dir/checkpoints``
    whether or not the user wrote it: that value counts as given only when a
    configuration file or the command line names the key.
    """
    value = _get(cfg, "checkpoint_dir", None)
    if not value:
        return None
    value = os.fspath(value)
    work_dir = _get(cfg, "work_dir", None)
    filled_in = work_dir is not None and value == os.path.join(os.fspath(work_dir), "checkpoints")
    if filled_in and not _user_sets(cfg, lambda key: key == "checkpoint_dir"):
        return None
    return value


def open_checkpoint_manager(executor: Any, ckpt_dir: str) -> None:
    """What 1.6.1's ``DefaultExecutor.__init__`` does with ``use_checkpoint``,
    with the checkpoint in ``ckpt_dir`` instead of ``work_dir/ckpt``."""
    import importlib

    # The name the executor itself uses: the patch made it this package's manager.
    manager_cls = importlib.import_module(_EXECUTOR_MODULE).CheckpointManager
    logger.info(f"Preparing checkpoint manager in {ckpt_dir} (checkpoint_dir)...")
    executor.ckpt_dir = ckpt_dir
    executor.ckpt_manager = manager_cls(ckpt_dir, executor.cfg.process, executor.np)
    if executor.ckpt_manager.ckpt_available:
        logger.info("Found existed dataset checkpoint.")
        executor.cfg.process = executor.ckpt_manager.get_left_process_list()


class PerOpCheckpoints:
    """Checkpoints one ``DefaultExecutor.run`` per its policy."""

    def __init__(self, executor: Any, policy: CheckpointPolicy):
        self.executor = executor
        self.policy = policy
        self.manager = executor.ckpt_manager
        # Ops restored from a checkpoint are already saved.
        self.ops_considered = len(self.manager.op_record)
        # What the manager had before this run, put back once it ends.
        self._manager_settings = (self.manager.background, self.manager.on_commit)
        self.manager.background = policy.background
        self.manager.on_commit = self._log_commit

    @classmethod
    def for_executor(cls, executor: Any) -> PerOpCheckpoints | None:
        manager = getattr(executor, "ckpt_manager", None)
        if manager is None or not hasattr(manager, "on_commit"):
            return None  # not our CheckpointManager
        policy = policy_from_config(executor.cfg)
        if policy is None:
            return None
        logger.info(
            f"Per-op checkpoints: strategy {policy.strategy}"
            + (f" every {policy.n_ops} ops" if policy.strategy == "every_n_ops" else "")
            + (f" after {sorted(policy.op_names)}" if policy.strategy == "manual" else "")
            + (", saved in the background" if policy.background else "")
        )
        return cls(executor, policy)

    def run(self, run, *args, **kwargs):
        """``run(*args, **kwargs)`` with this object active; waits for the
        last checkpoint before returning or raising."""
        token = _ACTIVE.set(self)
        failed = True
        try:
            result = run(*args, **kwargs)
            failed = False
            return result
        finally:
            _ACTIVE.reset(token)
            self._finish(raise_errors=not failed)

    def ops_for_loop(self, operators: Any, checkpointer: Any) -> Any:
        """The ops ``NestedDataset.process`` should loop over when called with
        ``checkpointer``: stand-ins that checkpoint as they start, if it is
        this run's manager; ``operators`` unchanged otherwise."""
        if checkpointer is not self.manager or operators is None:
            return operators
        if not isinstance(operators, list):
            operators = [operators]
        return [_OpInLoop(op, self) for op in operators]

    def before_op(self, dataset: Any) -> None:
        """Checkpoints ``dataset``, which the executor's loop passes to its
        next op, if the ops done since the last call ask for it."""
        ops_done = self.manager.op_record
        if len(ops_done) <= self.ops_considered:
            return  # the first op (of this run)
        self.ops_considered = len(ops_done)
        if self.policy.wants(ops_done):
            logger.info(f"Checkpoint after op {len(ops_done)} [{_op_name(ops_done[-1])}]")
            self.manager.save_ckpt(dataset)

    def _finish(self, raise_errors: bool) -> None:
        """Waits for the last checkpoint, stops the manager's writer and
        watcher threads and forgets this run (so nothing keeps the executor)."""
        try:
            self.manager.close()
        except Exception:
            if raise_errors:
                raise
            # Logged by the manager; the run's own error is the one to see.
        finally:
            self.manager.background, self.manager.on_commit = self._manager_settings

    def _log_commit(self, path: str, ops_done: int) -> None:
        if ops_done == 0:
            return
        op_cfg = self.manager.op_record[ops_done - 1]
        log = getattr(self.executor, "log_checkpoint_save", None)
        if log is not None:
            log(0, _op_name(op_cfg), ops_done - 1, path)


class _OpInLoop:
    """An op as the executor's loop sees it: every attribute is the op's,
    and ``run`` first offers the dataset it is given for a checkpoint."""

    __slots__ = ("_op", "_per_op")

    def __init__(self, op: Any, per_op: PerOpCheckpoints):
        object.__setattr__(self, "_op", op)
        object.__setattr__(self, "_per_op", per_op)

    def run(self, dataset: Any, *args: Any, **kwargs: Any) -> Any:
        self._per_op.before_op(dataset)
        return self._op.run(dataset, *args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._op, name)

    def __setattr__(self, name: str, value: Any) -> None:
        setattr(self._op, name, value)

    def __delattr__(self, name: str) -> None:
        delattr(self._op, name)

    def __repr__(self) -> str:
        return repr(self._op)


def active() -> PerOpCheckpoints | None:
    return _ACTIVE.get()


def _op_name(op_cfg: dict) -> str:
    return next(iter(op_cfg))


def _get(obj: Any, key: str, default: Any) -> Any:
    if obj is None:
        return default
    if isinstance(obj, dict):
        return obj.get(key, default)
    return getattr(obj, key, default)


def _user_set_checkpoint(cfg: Any) -> bool:
    """Whether a configuration file or the command line sets ``checkpoint``."""
    return _user_sets(cfg, lambda key: key == "checkpoint" or key.startswith("checkpoint."))


def _user_sets(cfg: Any, is_key: Callable[[str], bool]) -> bool:
    """Whether a configuration file or the command line sets a key ``is_key`` accepts."""
    for arg in sys.argv[1:]:
        if arg.startswith("--") and is_key(arg[2:].split("=", 1)[0]):
            return True
    for path in _get(cfg, "config", None) or []:
        data = _read_yaml(path)
        if isinstance(data, dict) and any(is_key(str(k)) for k in data):
            return True
    return False


def _read_yaml(path: Any) -> Any:
    absolute = getattr(path, "absolute", None)
    if callable(absolute):
        absolute = absolute()
    name = str(absolute or path)
    if not os.path.isfile(name):
        return None
    import yaml

    try:
        with open(name) as f:
            return yaml.safe_load(f)
    except (OSError, yaml.YAMLError) as e:
        logger.warning(f"Cannot read {name} to look for checkpoint settings ({e}); per-op checkpoints off")
        return None
