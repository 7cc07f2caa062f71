"""Ctrl-C and a closed stdout for the command line.

A Ctrl-C reaches every process of the terminal's foreground group: the CLI
and the workers of whatever pool it runs (the spawn pool and the Manager
process of HF ``save_to_disk(num_proc)``, Data-Juicer's map workers, Ray's
processes). When those die of their own KeyboardInterrupt under a parent
that is still using them, the parent's ``Pool.terminate()`` either fails
(it unpickles queued tasks whose Manager proxies connect to a dead Manager)
or blocks forever (``_help_stuff_finish`` waits for the task queue's lock,
which a dead worker may hold), and every one of them prints a traceback.

So the CLI blocks SIGINT in its main thread from its start -- the threads and
child processes it starts inherit the mask, so no worker ever sees a Ctrl-C.
A watcher thread, the one thread started with SIGINT unblocked, is woken by
every Ctrl-C (``signal.set_wakeup_fd``). The main thread gets one
KeyboardInterrupt, so that with- and finally-blocks close pools and files;
``finish()`` then kills what is left of the descendants, removes the
temporary directories made through ``temp_dir`` and says so in one line.
When the main thread has not finished within ``GRACE_SECONDS`` (stuck in
native code, a library that swallowed the KeyboardInterrupt, a second
Ctrl-C), the watcher does the same itself and ends the process with
``os._exit``.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from typing import NoReturn

#: Exit code of an interrupted command (128 + SIGINT, as a shell reports it).
EXIT_INTERRUPTED = 130
#: Exit code when stdout was closed by its reader (128 + SIGPIPE, what a
#: command killed by SIGPIPE reports, e.g. ``yes | head``).
EXIT_BROKEN_PIPE = 141
#: How long the main thread has to unwind after a Ctrl-C before the process
#: cleans up and exits from the signal thread.
GRACE_SECONDS = 1.0

_temp_dirs: list[str] = []
#: What a command made outside temporary directories (a bench's objects in a
#: bucket), each with what removes it: see ``removed_if_interrupted``.
_removers: list[tuple[str, Callable[[], None]]] = []
#: How long the removers have, together, on a Ctrl-C.
REMOVE_SECONDS = 2.0
#: Temporary directories of killed descendants, found before they were killed.
_children_temp_dirs: set[str] = set()
_finishing = threading.Lock()
_interrupted = threading.Event()
_raised = threading.Event()
_noting = threading.Lock()
_stderr_fd: int | None = None
#: The real stderr while fd 2 is /dev/null for a moment (resource trackers starting).
_stderr_while_muted: int | None = None
#: Set while the command is being ended: from then on a thread that forks (a
#: pool replacing the workers just killed) waits until the process exits.
_ending = threading.Event()


def _hold_forks_while_ending() -> None:
    if _ending.is_set():
        threading.Event().wait()


os.register_at_fork(before=_hold_forks_while_ending)


def temp_dir(prefix: str, dir: str | None = None) -> str:
    """``tempfile.mkdtemp``, removed by ``finish`` if the command is interrupted."""
    path = tempfile.mkdtemp(prefix=prefix, dir=dir)
    _temp_dirs.append(path)
    return path


def remove_temp_dir(path: str) -> None:
    shutil.rmtree(path, ignore_errors=True)
    with contextlib.suppress(ValueError):
        _temp_dirs.remove(path)


@contextlib.contextmanager
def temporary_directory(prefix: str, dir: str | None = None) -> Iterator[str]:
    path = temp_dir(prefix, dir)
    try:
        yield path
    finally:
        remove_temp_dir(path)


@contextlib.contextmanager
def removed_if_interrupted(what: str, remove: Callable[[], None]) -> Iterator[None]:
    """Around work that makes ``what`` (e.g. ``s3://bucket/prefix``) where
    ``temp_dir`` cannot: on a Ctrl-C, ``remove()`` runs before the processes
    are killed (a local server among them still answers), bounded by
    ``REMOVE_SECONDS``; ``what`` is named as left behind when it raises or
    takes longer. The work removes ``what`` itself when it ends otherwise."""
    entry = (what, remove)
    _removers.append(entry)
    try:
        yield
    finally:
        if not _interrupted.is_set():  # else the clean-up runs it
            with contextlib.suppress(ValueError):
                _removers.remove(entry)


def _run_removers() -> list[str]:
    """Runs every remover in a thread of its own; what they did not remove."""
    entries, _removers[:] = list(_removers), []
    done: list[str] = []

    def run(what: str, remove: Callable[[], None]) -> None:
        with contextlib.suppress(Exception):
            remove()
            done.append(what)

    threads = [threading.Thread(target=run, args=entry, daemon=True) for entry in entries]
    for thread in threads:
        thread.start()
    deadline = time.monotonic() + REMOVE_SECONDS
    for thread in threads:
        thread.join(max(0.0, deadline - time.monotonic()))
    return [what for what, _ in entries if what not in done]


def _children_map() -> dict[int, list[int]]:
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as f:
                stat = f.read()
        except OSError:
            continue
        # The command name (field 2) may hold spaces and parentheses.
        ppid = int(stat[stat.rindex(b")") + 2 :].split()[1])
        children.setdefault(ppid, []).append(int(entry))
    return children


def _is_resource_tracker(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return b"resource_tracker" in f.read()
    except OSError:
        return False


def _descendants() -> list[int]:
    """Every process below this one, but the resource trackers: they clean
    up after the others when this process ends."""
    if not os.path.isdir("/proc"):
        return []
    children, found, todo = _children_map(), [], [os.getpid()]
    while todo:
        for child in children.get(todo.pop(), []):
            if not _is_resource_tracker(child):
                found.append(child)
                todo.append(child)
    return found


def _socket_dirs(pids: list[int]) -> set[str]:
    """The ``pymp-*`` directories of the Unix sockets ``pids`` hold open: a
    Manager's server process makes its own, which a SIGKILL leaves behind."""
    inodes = set()
    for pid in pids:
        with contextlib.suppress(OSError):
            for fd in os.listdir(f"/proc/{pid}/fd"):
                with contextlib.suppress(OSError):
                    target = os.readlink(f"/proc/{pid}/fd/{fd}")
                    if target.startswith("socket:["):
                        inodes.add(target[len("socket:[") : -1])
    found = set()
    with contextlib.suppress(OSError), open("/proc/net/unix") as table:
        for line in table:
            fields = line.split()  # Num RefCount Protocol Flags Type St Inode Path
            if len(fields) >= 8 and fields[6] in inodes:
                directory = os.path.dirname(fields[7])
                if os.path.basename(directory).startswith("pymp-"):
                    found.add(directory)
    return found


def _kill_descendants() -> None:
    """SIGKILL every process below this one. The tree is frozen first (SIGSTOP,
    until a listing finds no new process): a stopped process cannot fork, and
    its children stay below it, so none escapes to init while we kill."""
    stopped: list[int] = []
    for _ in range(50):
        new = [pid for pid in _descendants() if pid not in stopped]
        if not new:
            break
        for pid in new:
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGSTOP)
        stopped += new
    _children_temp_dirs.update(_socket_dirs(stopped))
    for pid in stopped:
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGKILL)
    for pid in stopped:  # reap our own children; the others are reaped by their parents, now dead
        with contextlib.suppress(OSError):
            os.waitpid(pid, 0)


def _library_temp_dirs() -> list[str]:
    """Temporary directories libraries remove only at interpreter exit: HF
    datasets' temporary cache, and the ``pymp-*`` directory (sockets of
    managers and forkservers) of ``multiprocessing`` and ``multiprocess``."""
    found = []
    fingerprint = sys.modules.get("datasets.fingerprint")
    name = getattr(getattr(fingerprint, "_TEMP_DIR_FOR_TEMP_CACHE_FILES", None), "name", None)
    if isinstance(name, str):
        found.append(name)
    for module_name in ("multiprocessing", "multiprocess"):
        current_process = getattr(sys.modules.get(module_name), "current_process", None)
        config = getattr(current_process(), "_config", {}) if current_process else {}
        tempdir = config.get("tempdir") if isinstance(config, dict) else None
        if isinstance(tempdir, str):
            found.append(tempdir)
    return found


def _flush_event_logs() -> None:
    """What the exit hook of the event logger would do (``os._exit`` skips
    hooks): write the events still queued; bounded, as a flush could wait on
    a lock the interrupted main thread holds."""
    # Not imported here: the command line must take over Ctrl-C before the
    # heavy imports, and without the lifecycle module there is no logger.
    lifecycle = sys.modules.get("data_juicer_accel._lifecycle")
    flush = lifecycle.exit_step(lifecycle.EVENT_LOGGERS) if lifecycle is not None else None
    if flush is not None:
        flusher = threading.Thread(target=flush, name="flush-events", daemon=True)
        flusher.start()
        flusher.join(2.0)


def _clean_up() -> str:
    _flush_event_logs()
    left = _run_removers()
    _ending.set()
    _kill_descendants()
    # Once more, for a child whose fork had passed the hold when it was set,
    # or a program started without os.fork (subprocess) meanwhile.
    _kill_descendants()
    for path in [*_temp_dirs, *_library_temp_dirs(), *sorted(_children_temp_dirs)]:
        shutil.rmtree(path, ignore_errors=True)
        if os.path.exists(path):
            left.append(path)
    _temp_dirs.clear()
    return "nothing left behind" if not left else "left behind: " + ", ".join(left)


def _note_interrupt() -> None:
    """A Ctrl-C came: the command has nothing more to say. What its unwinding
    prints (the KeyboardInterrupt's traceback, or that of the error a library
    turned it into, as HF's ``iflatmap_unordered`` does) goes to /dev/null,
    the one line to the real stderr. Called by whichever of the main thread
    and the watcher sees the Ctrl-C first."""
    global _stderr_fd
    with _noting:
        if _interrupted.is_set():
            return
        _stderr_fd = os.dup(2 if _stderr_while_muted is None else _stderr_while_muted)
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, 2)
        os.close(devnull)
        _interrupted.set()


def _say(message: str) -> None:
    fd = 2 if _stderr_fd is None else _stderr_fd
    # On a terminal: over the progress bar and the ^C the terminal echoed.
    start = "\r\033[K" if os.isatty(fd) else ""
    with contextlib.suppress(OSError):
        os.write(fd, f"{start}data-juicer-accel: interrupted; {message}\n".encode())


def interrupted() -> bool:
    """Whether a Ctrl-C came (also when a library caught the KeyboardInterrupt)."""
    return _interrupted.is_set()


def finish() -> NoReturn:
    """After the main thread unwound from a Ctrl-C: clean up, say so in one
    line, exit 130 (without interpreter shutdown: its hooks would wait for
    the pools and threads the interrupt left behind)."""
    if _finishing.acquire(blocking=False):
        _say(_clean_up())
        with contextlib.suppress(Exception):
            sys.stdout.flush()
        os._exit(EXIT_INTERRUPTED)
    threading.Event().wait()  # the watcher is ending the process
    raise AssertionError("unreachable")


def _exit_now() -> NoReturn:
    """From the watcher: the main thread did not finish in time."""
    if _finishing.acquire(blocking=False):
        _say(_clean_up())
    else:  # the main thread is cleaning up and will exit; end regardless if it does not
        threading.Event().wait(10)
    os._exit(EXIT_INTERRUPTED)


def _on_sigint(signum: int, frame: object) -> None:
    """In the main thread: the first Ctrl-C unwinds it; the watcher handles a second."""
    if not _raised.is_set():
        _raised.set()
        _note_interrupt()
        raise KeyboardInterrupt


def _watch(wakeup: int, stop: threading.Event) -> None:
    """Sees every Ctrl-C at once, whichever thread the kernel delivered it
    to (Python's C handler writes the signal number to ``wakeup``)."""
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})  # always one thread to deliver it to
    seen = 0
    while not stop.is_set():
        data = os.read(wakeup, 64)
        seen += data.count(signal.SIGINT)
        if stop.is_set() or not seen:
            continue
        _note_interrupt()
        if seen > 1 or not stop.wait(GRACE_SECONDS):
            _exit_now()


def _start_resource_trackers() -> None:
    """Starts the resource tracker of ``multiprocessing`` and of ``multiprocess``
    (HF datasets' fork of it) before SIGINT is blocked: starting one unblocks
    SIGINT in the calling thread, after which every process it starts would
    get the Ctrl-C again. Its stderr is /dev/null: after a Ctrl-C it removes
    the semaphores of the killed pool and would warn about each."""
    import importlib

    global _stderr_while_muted
    saved = os.dup(2)
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        _stderr_while_muted = saved  # where the one line goes on a Ctrl-C meanwhile
        os.dup2(devnull, 2)
        for name in ("multiprocessing.resource_tracker", "multiprocess.resource_tracker"):
            with contextlib.suppress(ImportError):
                importlib.import_module(name).ensure_running()
    finally:
        os.dup2(saved, 2)
        _stderr_while_muted = None
        os.close(saved)
        os.close(devnull)


def _end_at_once(signum: int, frame: object) -> None:
    """A Ctrl-C before ``guard`` is in place: the command is still importing
    what it runs and has started nothing to unwind."""
    _note_interrupt()
    finish()


@contextlib.contextmanager
def from_the_start() -> Iterator[None]:
    """Around a whole command: a Ctrl-C while it is still importing (before
    ``guard``) ends it at once, as one later does: one line, exit 130, and no
    traceback of the import it broke."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous_handler = signal.signal(signal.SIGINT, _end_at_once)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous_handler)


@contextlib.contextmanager
def guard(pools: bool = False) -> Iterator[None]:
    """Ctrl-C handling around a command run in the main thread (elsewhere:
    none). ``pools``: the command may start process pools."""
    if threading.current_thread() is not threading.main_thread() or not hasattr(signal, "pthread_sigmask"):
        yield
        return
    if pools:
        _start_resource_trackers()
    read_end, write_end = os.pipe()
    os.set_blocking(write_end, False)
    # Blocked in this thread, and so in every thread and process it starts
    # from now on; the watcher unblocks it for itself.
    previous_mask = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    previous_handler = signal.signal(signal.SIGINT, _on_sigint)
    previous_fd = signal.set_wakeup_fd(write_end, warn_on_full_buffer=False)
    stop = threading.Event()
    watcher = threading.Thread(target=_watch, args=(read_end, stop), name="sigint-watcher", daemon=True)
    watcher.start()
    try:
        yield
    finally:
        stop.set()
        os.write(write_end, b"\0")
        watcher.join()
        signal.set_wakeup_fd(previous_fd)
        signal.signal(signal.SIGINT, previous_handler)
        signal.pthread_sigmask(signal.SIG_SETMASK, previous_mask)
        os.close(read_end)
        os.close(write_end)


def stdout_closed() -> int:
    """The reader of stdout went away (``... | head``): end quietly."""
    # Python flushes stdout again at exit; point it at /dev/null so that
    # this does not raise a second BrokenPipeError.
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    return EXIT_BROKEN_PIPE
