"""The ``data-juicer-accel`` console script's entry point.

Importing it puts the command's Ctrl-C handler in place before anything
else of the command is imported: the script calls ``main`` only once its
module is imported, and a Ctrl-C in between would otherwise end in Python's
traceback instead of the command's one line. ``main`` then takes over."""

import signal
import threading

from data_juicer_accel.tools import _interrupt

if threading.current_thread() is threading.main_thread():
    signal.signal(signal.SIGINT, _interrupt._end_at_once)

from data_juicer_accel.cli import main  # noqa: E402  (after the handler, on purpose)

__all__ = ["main"]
