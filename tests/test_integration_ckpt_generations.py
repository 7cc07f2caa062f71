"""Data-Juicer 1.6.1's ``DefaultExecutor`` decides which ops to skip in
``__init__`` (``cfg.process = get_left_process_list()``) and loads the
checkpoint in ``run()``. When another ``dj-process`` of the same job saves a
checkpoint of another op record in between, the load must not hand the
executor rows its op list does not fit (it would run ops a second time).

Real processes: a patched run killed by an op error leaves a checkpoint
after 2 ops; a patched executor decides from it and waits; a second patched
``dj-process`` runs the job to the end (its checkpoint names all 5 ops);
then the waiting executor runs.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap

from tests.conftest import require

require("data_juicer")

from tests.test_integration_e2e import (  # noqa: E402
    JOB,
    RUN_TIMEOUT,
    _dj_env,
    read_jsonl,
    run_dj,
    write_config,
    write_support_files,
)

#: Builds the executor (the skip decision), says which ops are left on fd 3,
#: waits for a line on stdin, then runs it.
DECIDE_THEN_RUN = """
    import json, os, sys
    markers = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)  # Data-Juicer's own output goes to the log
    from data_juicer_accel import patch_data_juicer
    assert patch_data_juicer()
    from data_juicer.config import init_configs
    from data_juicer.core.executor.default_executor import DefaultExecutor
    cfg = init_configs(args=sys.argv[1:])
    executor = DefaultExecutor(cfg)
    print("left", json.dumps([next(iter(op)) for op in cfg.process]), file=markers, flush=True)
    sys.stdin.readline()
    try:
        executor.run()
    except Exception as e:
        print("raised", type(e).__name__, str(e).replace(chr(10), " "), file=markers, flush=True)
        sys.exit(3)
    print("ran", file=markers, flush=True)
"""


def test_a_job_saved_further_by_another_run_after_the_decision_is_not_processed_twice(tmp_path):
    support = write_support_files(tmp_path / "support")
    root = tmp_path / "job"
    root.mkdir()
    cfg = write_config(root, support)
    first = run_dj("acc", cfg, root / "first.jsonl", root / "first.log", support, fail=True)
    assert first.returncode != 0, "the first run stops at the failing op, after a checkpoint of 2 ops"

    args = ["--config", str(cfg), "--job_id", JOB, "--export_path", str(root / "waiting.jsonl")]
    with open(root / "waiting.log", "w") as log:
        waiting = subprocess.Popen(
            [sys.executable, "-c", textwrap.dedent(DECIDE_THEN_RUN), *args],
            env=_dj_env(support, fail=False),
            cwd=cfg.parent,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=log,
            text=True,
        )
        try:
            decided = waiting.stdout.readline()
            assert decided.startswith("left "), (root / "waiting.log").read_text()[-3000:]
            assert decided.split(" ", 1)[1].strip() == (
                '["dja_fail_when_told_mapper", "text_length_filter", "words_num_filter"]'
            )
            # Another run of the job, to the end: its checkpoint names all 5 ops.
            other = run_dj("acc", cfg, root / "other.jsonl", root / "other.log", support)
            assert other.returncode == 0, (root / "other.log").read_text()[-3000:]
            out, _ = waiting.communicate("go\n", timeout=RUN_TIMEOUT)
        finally:
            waiting.kill()
            waiting.wait()
    assert waiting.returncode == 3, (out, (root / "waiting.log").read_text()[-3000:])
    assert out.startswith("raised CheckpointChangedError "), out
    assert "['whitespace_normalization_mapper', 'clean_email_mapper'] (2 ops)" in out
    assert "'text_length_filter', 'words_num_filter'] (5 ops)" in out
    assert not (root / "waiting.jsonl").exists()  # nothing was processed
    assert read_jsonl(root / "other.jsonl")  # the other run's result stands
