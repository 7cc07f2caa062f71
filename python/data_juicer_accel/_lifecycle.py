"""How this process's checkpoint writers and event loggers live through a fork and an exit.

This module holds the one ``atexit`` handler, the one at-fork handler and
the registry of the parts they act on. Each part registers what exit and a
forked child must do with its live objects; the handlers run those steps in
the fixed order below. The native module keeps its own C-level hooks,
described here by role.

**Parts and their threads.** Background saves: each
``CheckpointManager(background=True)`` has a native writer thread and a
Python watcher daemon thread that reports commits. Event loggers: each
``EventLogger`` has a native flush thread. Any daemon thread of the program
may also be inside a native call (a save, a load, an event write) or an
``in_flight()`` block when the interpreter exits.

**Exit.** After the main thread returns, CPython joins the non-daemon
threads and then runs the ``atexit`` hooks, last registered first. Hooks
registered after this package's import run first. Then this module's
handler runs these steps in order, each one even if an earlier one raised:

1. Background saves (``utils/ckpt_background.py``): from now on a save that
   asks for the background is made in the caller's thread, because no step
   would wait for a new writer. Every live writer is closed: exit waits
   until the last save that was asked for is committed, and reports its
   commit. A save that failed unseen is lost, and so is a save that a
   Ctrl-C abandons. Either loss is said on stderr and fails the exit.
2. Event loggers (``core/executor/event_logging_mixin.py``): every queued
   event is written, including those that step 1's commit callbacks
   logged. That is why the saves come first.
3. The native exit gate (``rust/bindings``' exit gate): it closes and waits
   up to ``EXIT_WAIT_SECONDS`` for the native calls and ``in_flight()``
   blocks of daemon threads to end, with those of step 1's foreground saves
   among them. A thread that enters one later parks for ever. On CPython
   before 3.14, a daemon thread that needs the GIL after finalisation began
   is ended by ``pthread_exit``, and its unwind would abort the process
   inside Rust or pyarrow's C++. The gate and the GIL re-take in
   ``rust/bindings``' GIL module, which parks the thread instead of
   unwinding, mean finalisation never meets such a thread. Work still
   running when the wait ends, or abandoned by a Ctrl-C, is lost: said on
   stderr, and the exit fails.

loguru is imported before the handler is registered, so loguru's and
``logging``'s own exit hooks run after it: the failures logged at exit
still reach loguru's sinks. After finalisation, C ``exit()`` runs the
native handlers, again last registered first:

* The live event writers' C ``atexit`` handler flushes every writer of
  this process once more. It catches lines that daemon threads logged after
  step 2, and it can do so because a flush thread holds no Python object.
  Lines it cannot write are reported and fail the exit.
* The exit gate's glibc ``on_exit`` status hook, registered when the
  native module is imported, runs last. It is the only hook that may
  change the status (CPython ignores one from ``atexit``). If work was
  reported lost and the process was about to exit 0, it ends the process
  with status 1, or by SIGINT after a Ctrl-C. Any other status is kept.

Who waits for what, then: the handler's steps wait for the background
writer threads and the event flush threads; the gate waits for daemon
threads in native code; the C handlers wait for nothing Python-side.

**Fork.** Only the forking thread exists in the child. The native
``pthread_atfork`` handlers run first, inside ``fork()``. The exit gate
keeps only the forking thread's in-flight count and none of the parent's
exit failure. The event writer refreshes its cached pid. The checkpoint
commit code points the lock descriptors it inherited at ``/dev/null``,
which drops the child's share of a parent's lock. A fork guard makes sure
no fork happens between taking a lock and recording its descriptor. Then
Python's at-fork hooks run in the order they were registered (threading's,
``logging``'s, loguru's, then this module's), and this handler:

* marks the process a worker (``in_worker_process()``);
* restarts every event logger's flush thread, writing through from now on
  (the parent's queued lines stay the parent's);
* forgets the parent's background writers: their thread did not survive,
  so they are kept alive and never waited on. ``background=True`` saves
  are made in the caller's thread in such a process.

A process that may end by ``os._exit`` or a signal runs no exit hook: a
forked child, or any ``multiprocessing``/``multiprocess`` worker. There,
event loggers write through and saves run in the foreground, so nothing
is left for an exit step.
"""

from __future__ import annotations

import atexit
import os
import sys
import traceback
import weakref
from collections.abc import Callable

# Imported before the handler is registered: loguru's exit hook (and
# logging's, which it imports) then runs after ours, so the failures our
# steps log at exit still reach loguru's sinks.
import loguru  # noqa: F401

from data_juicer_accel import _native

#: How long exit waits for daemon threads' checkpoint saves, loads and
#: event calls in flight before it goes on regardless.
EXIT_WAIT_SECONDS = 60.0

#: ``with in_flight(): ...`` makes interpreter exit wait for the block.
in_flight = _native.InFlight

#: The parts, by the name they register under.
BACKGROUND_SAVES = "background checkpoint saves"
EVENT_LOGGERS = "event loggers"
#: The order of the exit steps; the exit gate's drain comes after them all.
EXIT_ORDER = (BACKGROUND_SAVES, EVENT_LOGGERS)
#: The order of the steps in a forked child. Any order works: neither step
#: touches the other's objects.
FORK_ORDER = (EVENT_LOGGERS, BACKGROUND_SAVES)

Step = Callable[[], object]
_exit_steps: dict[str, Step] = {}
_fork_steps: dict[str, Step] = {}
#: Each part's live objects, the ones its steps act on.
_live: dict[str, weakref.WeakSet] = {part: weakref.WeakSet() for part in EXIT_ORDER}

#: Set when the exit handler starts.
_exit_started = False
#: Set in a child forked from this process.
_forked_child = False


def register(part: str, *, at_exit: Step, in_forked_child: Step) -> None:
    """Makes ``at_exit()`` part of the exit handler and ``in_forked_child()``
    part of the at-fork handler, at ``part``'s place in their order.
    Registering again (a reloaded module) replaces the steps."""
    if part not in EXIT_ORDER:
        raise ValueError(f"unknown lifecycle part {part!r}; the parts are {EXIT_ORDER}")
    _exit_steps[part] = at_exit
    _fork_steps[part] = in_forked_child


def live_objects(part: str) -> weakref.WeakSet:
    """The live objects of ``part`` (a weak set its steps iterate)."""
    return _live[part]


def exit_step(part: str) -> Step | None:
    """The exit step registered for ``part`` (for a caller that must run
    it before ``os._exit``, which skips exit hooks), or None."""
    return _exit_steps.get(part)


def exit_started() -> bool:
    """Whether the exit handler has started: work handed to a new
    background thread now would not be waited for."""
    return _exit_started


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


def say_at_exit(message: str) -> None:
    """Writes ``message`` to stderr, where an uncaught exception would be."""
    try:
        print(f"data_juicer_accel: {message}", file=sys.stderr, flush=True)
    except (OSError, ValueError, AttributeError):  # no usable stderr: the exit status still says it
        pass


def _run_steps(steps: list[Step], hook: str) -> None:
    """Runs every step; one that raises is reported as Python reports a
    failing hook, and the next ones still run (the last ones drain)."""
    for step in steps:
        try:
            step()
        except BaseException:  # noqa: BLE001 - a Ctrl-C in one step must not skip the others
            _report_failed_step(step, hook)


def _report_failed_step(step: Step, hook: str) -> None:
    try:
        print(f"Exception ignored in {hook} callback: {step!r}", file=sys.stderr)
        traceback.print_exc()
    except (OSError, ValueError, AttributeError):  # no usable stderr
        pass


def _at_exit() -> None:
    global _exit_started
    _exit_started = True
    steps = [_exit_steps[part] for part in EXIT_ORDER if part in _exit_steps]
    _run_steps([*steps, _drain_native_calls], "atexit")


def _after_fork_in_child() -> None:
    global _forked_child
    _forked_child = True
    _run_steps([_fork_steps[part] for part in FORK_ORDER if part in _fork_steps], "at-fork")


def _drain_native_calls() -> None:
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


atexit.register(_at_exit)
os.register_at_fork(after_in_child=_after_fork_in_child)
