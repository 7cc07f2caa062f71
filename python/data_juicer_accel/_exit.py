"""Interpreter exit waits for the native work of daemon threads.

On CPython before 3.14, a daemon thread that needs the GIL after
finalisation began is ended with ``pthread_exit``, which aborts the process
when the thread is inside native code (ours, or pyarrow's C++). The hook
below runs after this package's other exit hooks: it waits for native
calls and ``in_flight()`` blocks to end, and parks forever any thread that
enters one afterwards.

Work that exit cannot complete (a daemon thread's save still running when
the wait ends, or abandoned by a Ctrl-C) is lost: that is said on stderr
and the process exits non-zero (``_native.fail_exit``), as the package's
other exit hooks do for background saves and events.
"""

import atexit
import os
import sys

from data_juicer_accel import _native

#: How long exit waits for daemon threads' checkpoint saves, loads and
#: event calls in flight before it goes on regardless.
EXIT_WAIT_SECONDS = 60.0

#: ``with in_flight(): ...`` makes interpreter exit wait for the block.
in_flight = _native.InFlight


def _wait_for_native_calls() -> None:
    try:
        still_running = _native.drain_native_calls(EXIT_WAIT_SECONDS)
    except KeyboardInterrupt:
        say_at_exit(
            "Ctrl-C at interpreter exit: abandoned the native calls of daemon threads still running "
            "(checkpoint saves, event writes); their work is lost, a previous checkpoint is kept."
        )
        _native.fail_exit("interrupted")
        return
    if still_running:
        say_at_exit(
            f"{still_running} native call(s) of daemon threads (checkpoint saves, event writes) still "
            f"running after {EXIT_WAIT_SECONDS:.0f} s at interpreter exit; exiting anyway: their work is "
            "lost, a previous checkpoint is kept."
        )
        _native.fail_exit("failed")


def say_at_exit(message: str) -> None:
    """Writes ``message`` to stderr, where an uncaught exception would be."""
    try:
        print(f"data_juicer_accel: {message}", file=sys.stderr, flush=True)
    except (OSError, ValueError, AttributeError):  # no usable stderr: the exit status still says it
        pass


# Registered before this package's other hooks, so that it runs after them
# (atexit runs hooks last registered first): they may still need threads
# to make progress.
atexit.register(_wait_for_native_calls)


#: Set in a child forked from this process.
_forked_child = False


def _mark_forked_child() -> None:
    global _forked_child
    _forked_child = True


os.register_at_fork(after_in_child=_mark_forked_child)


def in_worker_process() -> bool:
    """Whether this process may end by ``os._exit`` or a signal, without exit
    hooks: a forked child (``multiprocessing``'s fork workers end so), or a
    process started by ``multiprocessing``/``multiprocess`` with any start
    method (pools terminate their workers). Event loggers write through there,
    and background saves are made in the foreground."""
    if _forked_child:
        return True
    for name in ("multiprocessing", "multiprocess"):
        module = sys.modules.get(name)
        parent_process = getattr(module, "parent_process", None)
        if parent_process is not None and parent_process() is not None:
            return True
    return False
