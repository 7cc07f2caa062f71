"""What one 32 MB block of the Ray bench costs to write, in one thread, by
codec: Arrow IPC with zstd level 1, LZ4 or no compression (pyarrow), and
parquet with pyarrow's defaults (what Ray's ``write_parquet`` uses).

    python benches/codec_costs.py [ROUNDS]

Prints the median time per block and the bytes written. Shows whether a
compressed checkpoint can save as fast as the reference's parquet at all.
"""

import os
import shutil
import statistics
import sys
import tempfile
import time

import pyarrow as pa
import pyarrow.ipc as ipc
import pyarrow.parquet as pq

from data_juicer_accel.bench.ray_checkpoints import make_table

table = make_table(32)
workdir = tempfile.mkdtemp(prefix="codec-costs-")


def write_ipc(codec) -> int:
    path = os.path.join(workdir, "block.arrow")
    with open(path, "wb") as f, ipc.new_stream(f, table.schema, options=ipc.IpcWriteOptions(compression=codec)) as w:
        for batch in table.to_batches(max_chunksize=20_000):
            w.write_batch(batch)
    return os.path.getsize(path)


def write_parquet() -> int:
    path = os.path.join(workdir, "block.parquet")
    pq.write_table(table, path)
    return os.path.getsize(path)


cases = {
    "Arrow IPC, zstd level 1": lambda: write_ipc(pa.Codec("zstd", compression_level=1)),
    "Arrow IPC, LZ4": lambda: write_ipc("lz4"),
    "Arrow IPC, uncompressed": lambda: write_ipc(None),
    "parquet, pyarrow defaults": write_parquet,
}
times: dict[str, list] = {name: [] for name in cases}
sizes = {}
try:
    for _ in range(int(sys.argv[1]) if len(sys.argv) > 1 else 5):
        for name, write in cases.items():  # alternating, so load changes hit every case alike
            start = time.perf_counter()
            sizes[name] = write()
            times[name].append(time.perf_counter() - start)
finally:
    shutil.rmtree(workdir, ignore_errors=True)
print(f"one block: {table.num_rows} rows, {table.nbytes / 1e6:.1f} MB in memory")
for name in cases:
    print(f"{name:28} {statistics.median(times[name]) * 1e3:7.1f} ms  {sizes[name] / 1e6:6.1f} MB written")
