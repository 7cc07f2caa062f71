"""Drop-in Rust acceleration for Data-Juicer checkpoints and job-event logging.

Change one word in an import::

    from data_juicer.utils.ckpt_utils import CheckpointManager          # before
    from data_juicer_accel.utils.ckpt_utils import CheckpointManager    # after
"""

from data_juicer_accel._native import __version__
from data_juicer_accel.core.executor.event_logging_mixin import Event, EventLogger, EventLoggingMixin, EventType

__all__ = ["__version__", "EventType", "Event", "EventLogger", "EventLoggingMixin"]
