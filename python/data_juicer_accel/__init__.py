"""Drop-in Rust acceleration for Data-Juicer checkpoints and job-event logging.

Change one word in an import::

    from data_juicer.utils.ckpt_utils import CheckpointManager          # before
    from data_juicer_accel.utils.ckpt_utils import CheckpointManager    # after

The names below are imported on first use (``from data_juicer_accel import
CheckpointManager`` works as usual): importing the package alone loads neither
pyarrow nor the native module, so that the command line takes over Ctrl-C
before its heavy imports (see cli.py). Each module that registers an exit
hook registers it through ``_lifecycle``, which runs every part in one
documented order.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from data_juicer_accel._native import __version__
    from data_juicer_accel.core.executor.event_logging_mixin import Event, EventLogger, EventLoggingMixin, EventType
    from data_juicer_accel.errors import CheckpointChangedError, CheckpointCorruptError, CheckpointLockedError
    from data_juicer_accel.patch import patch_data_juicer
    from data_juicer_accel.utils.ckpt_utils import CheckpointManager, CheckpointManagerBase, CheckpointStrategy

#: Where each public name is defined.
_HOMES = {
    "__version__": "data_juicer_accel._native",
    "CheckpointChangedError": "data_juicer_accel.errors",
    "CheckpointCorruptError": "data_juicer_accel.errors",
    "CheckpointLockedError": "data_juicer_accel.errors",
    "CheckpointManager": "data_juicer_accel.utils.ckpt_utils",
    "CheckpointManagerBase": "data_juicer_accel.utils.ckpt_utils",
    "CheckpointStrategy": "data_juicer_accel.utils.ckpt_utils",
    "EventType": "data_juicer_accel.core.executor.event_logging_mixin",
    "Event": "data_juicer_accel.core.executor.event_logging_mixin",
    "EventLogger": "data_juicer_accel.core.executor.event_logging_mixin",
    "EventLoggingMixin": "data_juicer_accel.core.executor.event_logging_mixin",
    "patch_data_juicer": "data_juicer_accel.patch",
}

__all__ = [
    "__version__",
    "CheckpointChangedError",
    "CheckpointCorruptError",
    "CheckpointLockedError",
    "CheckpointManager",
    "CheckpointManagerBase",
    "CheckpointStrategy",
    "EventType",
    "Event",
    "EventLogger",
    "EventLoggingMixin",
    "patch_data_juicer",
]


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module 'data_juicer_accel' has no attribute {name!r}")
    value = getattr(importlib.import_module(home), name)
    globals()[name] = value  # once: later lookups do not come here
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])
