"""zstd level sweep behind DEFAULT_ZSTD_LEVEL: save/load speed and size ratio per level.

    python benches/zstd_levels.py [MB]

Zipf-distributed words over a generated vocabulary (deterministic), saved with
`num_proc=2`; three rounds, levels interleaved, medians.
"""

import os
import random
import shutil
import statistics
import sys
import tempfile
import time

import pyarrow as pa

from data_juicer_accel.utils.ckpt_utils import CheckpointManager

LEVELS = (-1, 1, 3, 6)
ROUNDS = 3


def corpus(megabytes: int) -> pa.Table:
    rng = random.Random(0)
    vocab = ["".join(rng.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(rng.randint(2, 10))) for _ in range(30000)]
    weights = [1 / (i + 1) for i in range(len(vocab))]
    docs = [" ".join(rng.choices(vocab, weights, k=400)) for _ in range(3000)]
    rows = megabytes * 1_000_000 // 3000
    return pa.table({"text": [docs[(i * 7919) % len(docs)] + f" {i}" for i in range(rows)]})


def measure(table: pa.Table, level: int, work: str) -> tuple[float, float, float]:
    shutil.rmtree(work, ignore_errors=True)
    manager = CheckpointManager(work, [], num_proc=2, zstd_level=level)
    start = time.perf_counter()
    manager.save_ckpt(table)
    save_s = time.perf_counter() - start
    latest = os.path.join(work, "latest")
    size = sum(os.path.getsize(os.path.join(latest, f)) for f in os.listdir(latest))
    start = time.perf_counter()
    assert manager.load_ckpt().num_rows == table.num_rows
    load_s = time.perf_counter() - start
    mb = table.nbytes / 1e6
    return mb / save_s, mb / load_s, table.nbytes / size


def main() -> None:
    table = corpus(int(sys.argv[1]) if len(sys.argv) > 1 else 300)
    work = os.path.join(tempfile.mkdtemp(), "ckpt")
    results: dict[int, list[tuple[float, float, float]]] = {level: [] for level in LEVELS}
    for _ in range(ROUNDS):
        for level in LEVELS:
            results[level].append(measure(table, level, work))
    print(f"{table.nbytes / 1e6:.0f} MB of text, num_proc=2, median of {ROUNDS} rounds; load {os.getloadavg()[0]:.1f}")
    for level, rounds in results.items():
        save, load, ratio = (statistics.median(r[i] for r in rounds) for i in range(3))
        print(f"level {level:>2}: save {save:6.0f} MB/s  load {load:6.0f} MB/s  size ratio {ratio:.2f}")


if __name__ == "__main__":
    main()
