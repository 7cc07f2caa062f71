"""A/B of the stall of a background ``save_ckpt``: struct columns sized in
the caller (before: pyarrow ``Table.nbytes``) against in the writer thread
(after), alternating save by save in one process.

    python benches/sizing_stall_ab.py 1GB 7
"""

import os
import shutil
import statistics
import sys
import tempfile
import time

import pyarrow as pa

from data_juicer_accel.bench.corpus import default_corpus, parse_size
from data_juicer_accel.utils import ckpt_sources
from data_juicer_accel.utils.ckpt_utils import CheckpointManager

new_gate = ckpt_sources._sized_natively


def old_gate(data_type):  # the gate before structs were sized natively
    if pa.types.is_list(data_type) or pa.types.is_large_list(data_type):
        return old_gate(data_type.value_type)
    return any(is_type(data_type) for is_type in ckpt_sources._NATIVELY_SIZED_LEAVES)


size, rounds = parse_size(sys.argv[1]), int(sys.argv[2])
table = default_corpus(size)
print(
    "corpus",
    table.nbytes,
    "bytes",
    table.num_rows,
    "rows",
    table.column(0).num_chunks,
    "chunks",
    table.schema.types,
    flush=True,
)
workdir = tempfile.mkdtemp(prefix="sizing-stall-", dir=os.environ.get("STALL_DIR", "/tmp"))
stalls = {"before": [], "after": []}
shards = {}
try:
    manager = CheckpointManager(os.path.join(workdir, "stall"), [], num_proc=2, background=True)
    manager.save_ckpt(table.slice(0, 10))
    manager.wait()
    for r in range(rounds):
        for case, gate in (
            (("before", old_gate), ("after", new_gate)) if r % 2 == 0 else (("after", new_gate), ("before", old_gate))
        ):
            ckpt_sources._sized_natively = gate
            start = time.perf_counter()
            manager.save_ckpt(table)
            stalls[case].append(time.perf_counter() - start)
            manager.wait()
            shards.setdefault(case, set()).add(len(os.listdir(manager.ckpt_ds_dir)))
    manager.close()
finally:
    shutil.rmtree(workdir, ignore_errors=True)
for case, xs in stalls.items():
    ms = sorted(x * 1e3 for x in xs)
    print(
        f"{case}: median {statistics.median(ms):.2f} ms, min {ms[0]:.2f}, max {ms[-1]:.2f}, n={len(ms)};"
        f" files in dataset dir {shards[case]}"
    )
