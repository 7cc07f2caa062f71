"""Drop-in Rust acceleration for Data-Juicer checkpoints and job-event logging.

Change one word in an import::

    from data_juicer.utils.ckpt_utils import CheckpointManager          # before
    from data_juicer_accel.utils.ckpt_utils import CheckpointManager    # after
"""

from data_juicer_accel import _lifecycle  # noqa: F401 - first: the exit and fork handlers (see its doc)
from data_juicer_accel._native import __version__
from data_juicer_accel.core.executor.event_logging_mixin import Event, EventLogger, EventLoggingMixin, EventType
from data_juicer_accel.errors import CheckpointChangedError, CheckpointCorruptError, CheckpointLockedError
from data_juicer_accel.patch import patch_data_juicer
from data_juicer_accel.utils.ckpt_utils import CheckpointManager, CheckpointManagerBase, CheckpointStrategy

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
