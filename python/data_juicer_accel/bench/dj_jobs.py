"""What the bench's real Data-Juicer jobs share (``pipeline`` and ``ray_job``):
the six CPU ops, the corpus as jsonl, the environment every job process runs
in, and running one job process with its output in a log.

Data-Juicer's op loop calls ``free_models()`` after every op, which would
pip-install torch; the jobs get a three-line ``torch.cuda`` stand-in (no
distribution metadata, so Data-Juicer still sees no torch) and
``PIP_NO_INDEX=1`` / ``UV_OFFLINE=1``, so nothing is ever downloaded.
"""

from __future__ import annotations

import os
import subprocess
import time

#: Six CPU ops of py-data-juicer 1.6.1 that need no model, as a config's ``process:`` list.
PROCESS = """process:
  - whitespace_normalization_mapper:
  - clean_email_mapper:
  - punctuation_normalization_mapper:
  - text_length_filter:
      min_len: 20
  - alphanumeric_filter:
      min_ratio: 0.2
  - words_num_filter:
      min_num: 5
"""
OPS = 6
#: Data-Juicer's own entry point, unpatched (as the ``dj-process`` script runs it).
REFERENCE_MAIN = "import sys; from data_juicer.tools.process_data import main; sys.argv[0] = 'dj-process'; main()"
TORCH_STAND_IN = (
    "import types as _types\n"
    "cuda = _types.SimpleNamespace(empty_cache=lambda: None, device_count=lambda: 0, is_available=lambda: False)\n"
)


def job_env(workdir: str) -> dict:
    """The environment of a job process: the torch stand-in on ``PYTHONPATH``
    (Ray workers inherit it), no package index, one OpenMP thread."""
    stub = os.path.join(workdir, "torch_stand_in")
    os.makedirs(os.path.join(stub, "torch"), exist_ok=True)
    with open(os.path.join(stub, "torch", "__init__.py"), "w") as f:
        f.write(TORCH_STAND_IN)
    env = dict(os.environ)
    env.update(
        PYTHONPATH=os.pathsep.join(filter(None, [stub, env.get("PYTHONPATH")])),
        USE_TORCH="0",
        PIP_NO_INDEX="1",
        UV_OFFLINE="1",
        OMP_NUM_THREADS="1",
        HF_DATASETS_DISABLE_PROGRESS_BARS="1",
    )
    return env


def write_job_config(root: str, project: str, data: str, np_: int, settings: str) -> str:
    """``root/config.yaml`` of a job over ``data`` exporting to ``root/out``,
    with ``settings`` (YAML lines) and the six ops; returns its path."""
    path = os.path.join(root, "config.yaml")
    with open(path, "w") as f:
        f.write(
            f"project_name: {project}\ndataset_path: {data}\nexport_path: {root}/out/result.jsonl\n"
            f"work_dir: {root}/work\nnp: {np_}\nopen_monitor: false\n{settings}{PROCESS}"
        )
    return path


def write_corpus_jsonl(size: int, path: str) -> int:
    """The bench corpus's text column as jsonl; returns the file's bytes."""
    import datasets

    from data_juicer_accel.bench.corpus import default_corpus

    table = default_corpus(size).select(["text"])
    datasets.Dataset(datasets.table.InMemoryTable(table)).to_json(path)
    return os.path.getsize(path)


def run_logged(cmd: list[str], env: dict, log: str, cwd: str | None = None) -> tuple[int, str, float]:
    """Runs ``cmd`` with stdout and stderr in ``log``; its return code, the
    log's text and the seconds from start to exit."""
    with open(log, "w") as out:
        start = time.perf_counter()
        proc = subprocess.run(cmd, env=env, cwd=cwd, stdout=out, stderr=subprocess.STDOUT)
        seconds = time.perf_counter() - start
    with open(log, errors="replace") as f:
        return proc.returncode, f.read(), seconds
