"""Save a checkpoint, "crash", resume: the drop-in CheckpointManager at work.

python examples/save_and_resume.py [WORK_DIR]
"""

import sys
import tempfile
import time

import pyarrow as pa
import pyarrow.compute as pc

from data_juicer_accel.utils.ckpt_utils import CheckpointManager

PROCESS = [
    {"lowercase_mapper": {}},
    {"text_length_filter": {"min_len": 40}},
    {"add_length_mapper": {}},
]


def run_op(op: dict, table: pa.Table) -> pa.Table:
    name = next(iter(op))
    if name == "lowercase_mapper":
        return table.set_column(0, "text", pc.utf8_lower(table["text"]))
    if name == "text_length_filter":
        return table.filter(pc.greater_equal(pc.utf8_length(table["text"]), op[name]["min_len"]))
    if name == "add_length_mapper":
        return table.append_column("length", pc.utf8_length(table["text"]))
    raise ValueError(name)


def job(work_dir: str, table: pa.Table, crash_after: int | None = None) -> pa.Table:
    ckpt = CheckpointManager(f"{work_dir}/ckpt", PROCESS, num_proc=2)
    if ckpt.ckpt_available:
        table = ckpt.load_ckpt()
        print(f"  resumed from checkpoint: {table.num_rows} rows, ops left {ckpt.get_left_process_list()}")
    try:
        for i, op in enumerate(ckpt.get_left_process_list()):
            if crash_after is not None and i == crash_after:
                raise RuntimeError(f"simulated crash before {next(iter(op))}")
            table = run_op(op, table)
            ckpt.record(op)
    finally:
        start = time.perf_counter()
        path = ckpt.save_ckpt(table)  # as Data-Juicer's executor does, in a `finally`
        print(f"  checkpoint of {table.num_rows} rows saved to {path} in {time.perf_counter() - start:.3f}s")
    return table


def main() -> None:
    work_dir = sys.argv[1] if len(sys.argv) > 1 else tempfile.mkdtemp(prefix="dj-accel-demo-")
    texts = [f"Document {i}: " + "Some Web Text " * (i % 9) for i in range(200_000)]
    data = pa.table({"text": texts, "meta": [{"id": i} for i in range(len(texts))]})
    print(f"first run ({data.num_rows} rows, {data.nbytes / 1e6:.0f} MB), crashing after one op:")
    try:
        job(work_dir, data, crash_after=1)
    except RuntimeError as e:
        print(f"  {e}")
    print("second run:")
    resumed = job(work_dir, data)
    print("uninterrupted run for comparison:")
    fresh = job(tempfile.mkdtemp(prefix="dj-accel-demo-fresh-"), data)
    print(f"resumed result equals an uninterrupted run: {resumed.equals(fresh)}")


if __name__ == "__main__":
    main()
