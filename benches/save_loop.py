"""Repeated saves of the default corpus, for A/B runs between installs and for profilers.

    python benches/save_loop.py [MB] [ROUNDS] [CORPUS.arrow]   # default 400 MB, 4 rounds
    python benches/save_loop.py 400 0 /tmp/corpus.arrow           # write the corpus once, then
    perf record -g python benches/save_loop.py 400 5 /tmp/corpus.arrow   # profile the saves alone

Prints MB/s and CPU-s/GB (this process and its threads, getrusage) per save,
num_proc=2, zstd level 1, into a fresh directory each time.
"""

import os
import resource
import shutil
import sys
import tempfile
import time

import pyarrow as pa
from loguru import logger

from data_juicer_accel.bench import corpus
from data_juicer_accel.utils.ckpt_utils import CheckpointManager


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def main() -> None:
    logger.remove()
    size_mb = int(sys.argv[1]) if len(sys.argv) > 1 else 400
    rounds = int(sys.argv[2]) if len(sys.argv) > 2 else 4
    cached = sys.argv[3] if len(sys.argv) > 3 else None
    if cached and os.path.exists(cached):  # read back, so that a profile shows the saves alone
        table = pa.ipc.open_file(pa.memory_map(cached)).read_all().combine_chunks()
    else:
        table = corpus.default_corpus(size_mb * 1_000_000)
        if cached:
            with pa.OSFile(cached, "wb") as f, pa.ipc.new_file(f, table.schema) as writer:
                writer.write_table(table)
    base = tempfile.mkdtemp(prefix="dja-save-loop-")
    try:
        for r in range(rounds):
            path = os.path.join(base, str(r))
            cpu, start = cpu_seconds(), time.perf_counter()
            CheckpointManager(path, [], num_proc=2, zstd_level=1).save_ckpt(table)
            seconds, cpu = time.perf_counter() - start, cpu_seconds() - cpu
            print(f"save {r + 1}: {table.nbytes / 1e6 / seconds:.0f} MB/s, {cpu / (table.nbytes / 1e9):.2f} CPU-s/GB")
            shutil.rmtree(path)
    finally:
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
