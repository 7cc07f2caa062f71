"""Interpreter exit and daemon threads inside native work.

Exit waits for native calls and ``in_flight()`` blocks that daemon threads
are in; a thread that enters one once exit began parks forever. Each case
runs in a fresh interpreter, since it is about that interpreter's exit.
"""

import subprocess
import sys
import textwrap


def run_python(code: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code), *args],
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_exit_waits_for_a_daemon_thread_inside_a_block(tmp_path):
    finished = tmp_path / "finished"
    result = run_python(
        """
        import sys, threading, time
        from data_juicer_accel._lifecycle import in_flight
        started = threading.Event()
        def work():
            with in_flight():
                started.set()
                time.sleep(0.5)
                open(sys.argv[1], "w").close()
        threading.Thread(target=work, daemon=True).start()
        started.wait()
        """,
        str(finished),
    )
    assert result.returncode == 0, result.stderr
    assert finished.exists()
    assert "still running" not in result.stderr


def test_a_thread_entering_a_block_after_exit_began_parks_while_the_exiting_thread_goes_on(tmp_path):
    entered = tmp_path / "entered"
    hook_done = tmp_path / "hook_done"
    result = run_python(
        """
        import atexit, sys, threading, time
        go = threading.Event()
        def late_hook():
            # Registered before the package is imported: runs after its exit hook.
            from data_juicer_accel._lifecycle import in_flight
            go.set()
            time.sleep(0.3)
            with in_flight():  # the exiting thread may still enter
                open(sys.argv[2], "w").close()
        atexit.register(late_hook)
        from data_juicer_accel._lifecycle import in_flight
        def work():
            go.wait()
            with in_flight():
                open(sys.argv[1], "w").close()
        threading.Thread(target=work, daemon=True).start()
        """,
        str(entered),
        str(hook_done),
    )
    assert result.returncode == 0, result.stderr
    assert hook_done.exists()
    assert not entered.exists()


def test_a_forked_child_does_not_wait_for_its_parents_threads(tmp_path):
    result = run_python(
        """
        import os, sys, threading, time
        from data_juicer_accel._lifecycle import in_flight
        started = threading.Event()
        def work():
            with in_flight():
                started.set()
                time.sleep(3)
        threading.Thread(target=work, daemon=True).start()
        started.wait()
        pid = os.fork()
        if pid == 0:
            # sys.exit runs the exit hooks: the parent's thread is not here.
            sys.exit(0)
        _, status = os.waitpid(pid, 0)
        print("child", os.waitstatus_to_exitcode(status))
        """,
    )
    assert result.returncode == 0, result.stderr
    assert "child 0" in result.stdout
    assert "still running" not in result.stderr


def test_any_timeout_is_accepted_and_nothing_in_flight_returns_at_once():
    result = run_python(
        """
        from data_juicer_accel import _native
        print(*(_native.drain_native_calls(t) for t in (float("nan"), float("inf"), 1e300, -5.0, 0.0)))
        """
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["0"] * 5


DAEMON_IN_FLIGHT_AT_EXIT = """
    import atexit, sys, threading, time
    from data_juicer_accel._lifecycle import in_flight
    # Runs right before the package's exit wait (exit hooks run last registered first).
    atexit.register(lambda: print("exit hooks running", flush=True))
    started = threading.Event()
    def work():  # a save that never ends
        with in_flight():
            started.set()
            while True:
                time.sleep(0.05)
    threading.Thread(target=work, daemon=True).start()
    started.wait()
"""


def test_ctrl_c_ends_the_exit_wait_for_daemon_threads_says_so_and_exits_non_zero():
    import signal
    import time

    proc = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(DAEMON_IN_FLIGHT_AT_EXIT)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout.readline() == "exit hooks running\n"
        sent = time.monotonic()
        # Again each second: on a busy machine the first may still land in
        # the hook that printed, before the package's exit wait has begun.
        while proc.poll() is None and time.monotonic() - sent < 120:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(timeout=1)
            except subprocess.TimeoutExpired:
                pass
        _, err = proc.communicate(timeout=120)
        took = time.monotonic() - sent
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert "Ctrl-C at interpreter exit" in err and "lost" in err, err
    assert proc.returncode == -signal.SIGINT
    assert took < 10, f"exited {took:.1f} s after Ctrl-C"  # not the 60 s exit wait
