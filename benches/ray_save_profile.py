"""Where a ``RayCheckpointManager.save_checkpoint`` spends its time.

    python benches/ray_save_profile.py [SIZE_MB] [ROUNDS] [BLOCKS] ["random words" | "text corpus"]

On a local Ray cluster of 2 CPUs and one of the datasets of ``bench --only
ray`` (default: its random words) in ``BLOCKS`` blocks of the object store,
each round runs these cases one after the other (interleaved across rounds;
a first round warms the workers up and is dropped), and prints the median
of each:

* ``noop sink``: ``write_datasink`` whose tasks only iterate their blocks:
  task scheduling and the datasink protocol;
* ``to_arrow sink``: the same, each block turned into a ``pyarrow.Table``;
* ``shards, tmpfs`` / ``shards, disk``: each block written by
  ``write_shard_files`` (one encoder thread) into a directory on
  ``/dev/shm`` (fsync costs nothing there) or beside the checkpoints; no
  commit;
* ``zstd-1 alone``: the bench's bound, zstd level 1 over each block's
  buffers in the same Ray tasks, output dropped;
* ``save_checkpoint``: the whole save, default and with
  ``write_ray_remote_args={"num_cpus": 2}`` (two encoder threads a task);
* ``write_parquet``: what the reference's save does.

Then the steps: seconds inside ``write_shard_files`` and inside the bound's
compression (summed over tasks), the driver's commit (staging listing,
manifest, fsync, exchange), and how many write tasks ran at once.
"""

from __future__ import annotations

import os
import shutil
import statistics
import sys
import tempfile
import time
import uuid
from collections import defaultdict
from collections.abc import Callable

import pyarrow as pa
import ray
from ray.data import Datasink
from ray.data.block import BlockAccessor

from data_juicer_accel import _native
from data_juicer_accel.bench.ray_checkpoints import DATASETS, dataset_table, start_local_ray
from data_juicer_accel.utils import ray_ckpt
from data_juicer_accel.utils.ray_ckpt import RayCheckpointManager


class ProbeSink(Datasink):
    """Tasks iterate their blocks; with ``convert`` they make tables, with
    ``shard_dir`` they write shards there. Each task reports its span and
    the seconds its steps took."""

    def __init__(self, convert: bool = False, shard_dir: str | None = None):
        self.convert = convert
        self.shard_dir = shard_dir
        self.steps: dict[str, float] = defaultdict(float)
        self.spans: list[tuple[float, float]] = []

    def write(self, blocks, ctx):
        began = time.time()
        steps: dict[str, float] = defaultdict(float)
        for b, block in enumerate(blocks):
            if not self.convert:
                continue
            start = time.perf_counter()
            table = BlockAccessor.for_block(block).to_arrow()
            steps["to_arrow"] += time.perf_counter() - start
            if self.shard_dir is not None:
                start = time.perf_counter()
                prefix = f"{ctx.task_idx:06d}-{uuid.uuid4().hex[:8]}-b{b:04d}"
                _native.write_shard_files(self.shard_dir, table, prefix=prefix, level=1)
                steps["write_shard_files"] += time.perf_counter() - start
        return {"steps": dict(steps), "span": (began, time.time())}

    def on_write_complete(self, write_result) -> None:
        for returned in write_result.write_returns:
            self.spans.append(returned["span"])
            for key, value in returned["steps"].items():
                self.steps[key] += value


def most_at_once(spans: list[tuple[float, float]]) -> int:
    """The largest number of spans overlapping at one instant."""
    edges = sorted([(start, 1) for start, _ in spans] + [(end, -1) for _, end in spans])
    running = best = 0
    for _, step in edges:
        running += step
        best = max(best, running)
    return best


def zstd_alone_busy(dataset) -> float:
    """The bench's bound, also returning the seconds spent compressing."""

    def compress(block: pa.Table) -> pa.Table:
        import zstandard

        start = time.perf_counter()
        compressor = zstandard.ZstdCompressor(level=1)
        buffers = (b for column in block.columns for chunk in column.chunks for b in chunk.buffers() if b is not None)
        sum(len(compressor.compress(b)) for b in buffers)
        return pa.table({"seconds": [time.perf_counter() - start]})

    seconds = dataset.map_batches(compress, batch_format="pyarrow", batch_size=None).materialize()
    return sum(seconds.to_pandas()["seconds"])


class Profile:
    def __init__(self, dataset, disk_root: str, shm_root: str):
        self.dataset = dataset
        self.disk_root = disk_root
        self.shm_root = shm_root
        self.times: dict[str, list[float]] = defaultdict(list)
        self.steps: dict[str, list[float]] = defaultdict(list)
        self.commit_seconds: list[float] = []
        self._time_driver_commit()

    def _time_driver_commit(self) -> None:
        sink_class = ray_ckpt._datasink_class()
        commit = sink_class.on_write_complete
        seconds = self.commit_seconds

        def timed_commit(sink, write_result):
            start = time.perf_counter()
            try:
                return commit(sink, write_result)
            finally:
                seconds.append(time.perf_counter() - start)

        sink_class.on_write_complete = timed_commit

    def case(self, label: str, run: Callable[[], None], record: bool) -> None:
        start = time.perf_counter()
        run()
        if record:
            self.times[label].append(time.perf_counter() - start)

    def probe(self, label: str, sink: ProbeSink, record: bool) -> None:
        self.case(label, lambda: self.dataset.write_datasink(sink), record)
        if record:
            for key, value in sink.steps.items():
                self.steps[f"{label}: {key}"].append(value)
            self.steps[f"{label}: tasks at once"].append(most_at_once(sink.spans))

    def round(self, r: int, record: bool) -> None:
        self.probe("noop sink", ProbeSink(), record)
        self.probe("to_arrow sink", ProbeSink(convert=True), record)
        for label, root in (("shards, tmpfs", self.shm_root), ("shards, disk", self.disk_root)):
            out = tempfile.mkdtemp(dir=root)
            self.probe(label, ProbeSink(convert=True, shard_dir=out), record)
            shutil.rmtree(out)
        busy: list[float] = []
        self.case("zstd-1 alone (bound)", lambda: busy.append(zstd_alone_busy(self.dataset)), record)
        if record:
            self.steps["zstd-1 alone (bound): compression"].append(busy[0])
        for label, remote_args in (("save_checkpoint", None), ('save_checkpoint, {"num_cpus": 2}', {"num_cpus": 2})):
            manager = RayCheckpointManager(os.path.join(self.disk_root, f"ours-{r}"))
            manager.write_ray_remote_args = remote_args
            self.case(label, lambda m=manager: m.save_checkpoint(self.dataset, 0, "profile", 0), record)
            if record:
                self.steps[f"{label}: driver commit"].append(self.commit_seconds[-1])
            shutil.rmtree(manager.ckpt_dir)
        parquet = os.path.join(self.disk_root, f"ref-{r}")
        self.case("write_parquet", lambda: self.dataset.write_parquet(parquet), record)
        shutil.rmtree(parquet, ignore_errors=True)

    def report(self, mb: float) -> None:
        print(f"{'case':<44} {'s':>7} {'MB/s':>7}")
        for label, values in self.times.items():
            median = statistics.median(values)
            print(f"{label:<44} {median:7.3f} {mb / median:7.0f}")
        print(f"\n{'step (seconds summed over tasks)':<44} {'median':>7}")
        for label, values in self.steps.items():
            print(f"{label:<44} {statistics.median(values):7.3f}")


def main() -> None:
    size_mb = int(sys.argv[1]) if len(sys.argv) > 1 else 256
    rounds = int(sys.argv[2]) if len(sys.argv) > 2 else 3
    blocks = int(sys.argv[3]) if len(sys.argv) > 3 else 8
    data = sys.argv[4] if len(sys.argv) > 4 else DATASETS[0]
    start_local_ray(size_mb)
    ray.data.DataContext.get_current().enable_progress_bars = False
    table = dataset_table(data, size_mb)
    mb = table.nbytes / (1 << 20)
    dataset = ray.data.from_arrow(table).repartition(blocks).materialize()
    del table
    disk_root = tempfile.mkdtemp(prefix="dja-ray-profile-", dir=os.environ.get("PROFILE_DIR"))
    shm_root = tempfile.mkdtemp(prefix="dja-ray-profile-", dir="/dev/shm")
    profile = Profile(dataset, disk_root, shm_root)
    try:
        for r in range(rounds + 1):
            profile.round(r, record=r > 0)
    finally:
        shutil.rmtree(disk_root, ignore_errors=True)
        shutil.rmtree(shm_root, ignore_errors=True)
        ray.shutdown()
    load = os.getloadavg()
    print(f"{data}: {mb:.0f} MB in {blocks} blocks, 2 CPUs, median of {rounds} rounds, load average {load[0]:.2f}")
    profile.report(mb)


if __name__ == "__main__":
    main()
