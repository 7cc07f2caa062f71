"""Interpreter exit waits for the native work of daemon threads.

On CPython before 3.14, a daemon thread that needs the GIL after
finalisation began is ended with ``pthread_exit``, which aborts the process
when the thread is inside native code (ours, or pyarrow's C++). The hook
below runs after this package's other exit hooks: it waits for native
calls and ``in_flight()`` blocks to end, and parks forever any thread that
enters one afterwards.
"""

import atexit

from loguru import logger

from data_juicer_accel import _native

#: How long exit waits for daemon threads' checkpoint saves, loads and
#: event calls in flight before it goes on regardless.
EXIT_WAIT_SECONDS = 60.0

#: ``with in_flight(): ...`` makes interpreter exit wait for the block.
in_flight = _native.InFlight


def _wait_for_native_calls() -> None:
    still_running = _native.drain_native_calls(EXIT_WAIT_SECONDS)
    if still_running:
        logger.warning(
            f"data_juicer_accel: {still_running} native call(s) of daemon threads still running "
            f"after {EXIT_WAIT_SECONDS:.0f} s at interpreter exit; exiting anyway"
        )


# Registered before this package's other hooks, so that it runs after them
# (atexit runs hooks last registered first): they may still need threads
# to make progress.
atexit.register(_wait_for_native_calls)
