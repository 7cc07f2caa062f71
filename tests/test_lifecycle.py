"""The package's one exit handler and one at-fork handler (``_lifecycle``).

Each exit case runs in a fresh interpreter, since it is about that
interpreter's exit.
"""

import os

import pytest

from data_juicer_accel import _lifecycle
from tests.test_exit_gate import run_python


def test_exit_runs_the_saves_then_the_event_loggers_then_the_drain():
    result = run_python(
        """
        from data_juicer_accel import _lifecycle
        import data_juicer_accel.utils.ckpt_utils  # registers the background saves
        import data_juicer_accel.core.executor.event_logging_mixin  # registers the event loggers
        def traced(name, step):
            def run():
                print(name, flush=True)
                step()
            return run
        for part in _lifecycle.EXIT_ORDER:
            _lifecycle._exit_steps[part] = traced(part, _lifecycle._exit_steps[part])
        _lifecycle._drain_native_calls = traced("drain", _lifecycle._drain_native_calls)
        """
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == ["background checkpoint saves", "event loggers", "drain"]


def test_a_step_that_raises_is_reported_and_the_drain_still_waits(tmp_path):
    """A Ctrl-C in one step is said as Python says a failing exit hook, and
    the exit gate still waits for a daemon thread's block."""
    finished = tmp_path / "finished"
    result = run_python(
        """
        import sys, threading, time
        from data_juicer_accel import _lifecycle
        def interrupted():
            raise KeyboardInterrupt
        _lifecycle._exit_steps[_lifecycle.EVENT_LOGGERS] = interrupted
        started = threading.Event()
        def work():
            with _lifecycle.in_flight():
                started.set()
                while not _lifecycle.exit_started():
                    time.sleep(0.01)  # until the exit handler runs
                open(sys.argv[1], "w").close()
        threading.Thread(target=work, daemon=True).start()
        started.wait()
        """,
        str(finished),
    )
    assert result.returncode == 0, result.stderr
    assert "Exception ignored in atexit callback" in result.stderr and "KeyboardInterrupt" in result.stderr
    assert finished.exists()


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_a_forked_child_is_a_worker_process():
    assert not _lifecycle.in_worker_process()
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: say what it sees, end without exit hooks
        os.write(write_end, b"worker" if _lifecycle.in_worker_process() else b"main")
        os._exit(0)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as f:
        said = f.read()
    os.waitpid(pid, 0)
    assert said == b"worker"


def test_an_unknown_part_is_refused():
    with pytest.raises(ValueError, match="unknown lifecycle part"):
        _lifecycle.register("sockets", at_exit=lambda: None, in_forked_child=lambda: None)
