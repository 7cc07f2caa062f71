"""Checkpoint writers a Data-Juicer user could pick, behind one interface.

Every competitor is handed the same in-memory ``pyarrow.Table`` and writes it
into a fresh, empty directory. ``load`` returns a table whose every byte has
been read:

- this package, pyarrow IPC and parquet decompress into memory, so the table
  they return is already materialised;
- py-data-juicer / HF ``datasets`` memory-map their uncompressed Arrow files:
  ``load_from_disk`` only maps them, so the load also touches every 4 KiB page
  of every buffer (what the first pass over the data would do), and the
  figure is the time to have all rows in memory.
"""

from __future__ import annotations

import os
import stat
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

ZSTD_LEVEL = 1


def dir_bytes(path: str) -> int:
    """Bytes of the regular files under ``path``, each file once: symbolic
    links are not followed, and the hard links a lazy Ray load keeps of the
    shards it reads do not count again."""
    total, seen = 0, set()
    for root, _dirs, files in os.walk(path):
        for name in files:
            st = os.lstat(os.path.join(root, name))
            if stat.S_ISREG(st.st_mode) and (st.st_dev, st.st_ino) not in seen:
                seen.add((st.st_dev, st.st_ino))
                total += st.st_size
    return total


def touch_pages(table: pa.Table) -> int:
    """Reads one byte of every page of every buffer (faults a mapped file in)."""
    acc = 0
    for column in table.columns:
        for chunk in column.chunks:
            for buf in chunk.buffers():
                if buf is not None and buf.size:
                    acc += int(np.frombuffer(buf, dtype=np.uint8)[::4096].sum())
    return acc


def _ipc_options() -> pa.ipc.IpcWriteOptions:
    return pa.ipc.IpcWriteOptions(compression=pa.Codec("zstd", compression_level=ZSTD_LEVEL), use_threads=True)


class Competitor:
    key = ""
    label = ""
    #: For the stand-in of py-data-juicer: why py-data-juicer itself was not used.
    instead_of_dj: str | None = None
    #: What ``save`` includes beyond writing bytes (shown in the notes).
    note = ""

    def __init__(self, num_proc: int):
        self.num_proc = num_proc

    def available(self) -> str | None:
        """None when usable, else why not."""
        return None

    def prepare(self, table: pa.Table):
        """Builds, outside the timing, what ``save`` is given (default: the table)."""
        return table

    def save(self, data, path: str) -> None:
        raise NotImplementedError

    def load(self, path: str) -> pa.Table:
        raise NotImplementedError


class Accel(Competitor):
    key = "accel"
    label = "data-juicer-accel CheckpointManager"
    note = "zstd-1 Arrow IPC shards from num_proc threads; xxh3 checksums, fsync and atomic commit included"

    def save(self, data, path):
        from data_juicer_accel.utils.ckpt_utils import CheckpointManager

        CheckpointManager(path, [], num_proc=self.num_proc, zstd_level=ZSTD_LEVEL).save_ckpt(data)

    def load(self, path):
        from data_juicer_accel.utils.ckpt_utils import CheckpointManager

        return CheckpointManager(path, [], num_proc=self.num_proc).load_ckpt()


def _hf_dataset(table: pa.Table):
    import datasets
    from datasets.table import InMemoryTable

    return datasets.Dataset(InMemoryTable(table))


def _hf_table(ds) -> pa.Table:
    table = ds.data.table
    if ds._indices is not None:
        table = table.take(ds._indices.column(0))
    return table


class DataJuicer(Competitor):
    key = "dj"
    label = "py-data-juicer 1.6.1 CheckpointManager"
    note = "HF save_to_disk(num_proc): uncompressed Arrow, a spawn pool when num_proc > 1; load memory-maps"

    def available(self):
        try:
            import data_juicer
            from data_juicer.utils.ckpt_utils import CheckpointManager  # noqa: F401
        except Exception as e:  # noqa: BLE001 - any import failure means "cannot be used"
            return f"py-data-juicer cannot be imported ({e.__class__.__name__}: {e})"
        version = getattr(data_juicer, "__version__", "?")
        if version != "1.6.1":
            self.label = f"py-data-juicer {version} CheckpointManager"
        return None

    def prepare(self, table):
        return _hf_dataset(table)

    def save(self, data, path):
        from data_juicer.utils.ckpt_utils import CheckpointManager

        CheckpointManager(path, [], num_proc=self.num_proc).save_ckpt(data)

    def load(self, path):
        from data_juicer.utils.ckpt_utils import CheckpointManager

        table = _hf_table(CheckpointManager(path, [], num_proc=self.num_proc).load_ckpt())
        touch_pages(table)
        return table


class HFDatasets(Competitor):
    """Data-Juicer 1.6.1's save without Data-Juicer: the one call its
    ``CheckpointManager.save_ckpt`` makes, with the same arguments."""

    key = "hf"
    label = "datasets.save_to_disk(path, num_proc=...) as Data-Juicer 1.6.1 calls it"
    note = (
        "ds.save_to_disk(ckpt_dir/latest, num_proc=min(num_proc, rows)), the call of 1.6.1's save_ckpt: "
        "uncompressed Arrow, a spawn pool when num_proc > 1; load memory-maps"
    )

    def available(self):
        try:
            import datasets  # noqa: F401
        except ImportError as e:
            return f"`datasets` cannot be imported ({e}); it comes with the bench extra, or: pip install datasets"
        return None

    def prepare(self, table):
        return _hf_dataset(table)

    def save(self, data, path):
        # data_juicer/utils/ckpt_utils.py 1.6.1, CheckpointManager.save_ckpt:
        #   ds.save_to_disk(self.ckpt_ds_dir, num_proc=min(self.num_proc, left_sample_num))
        data.save_to_disk(os.path.join(path, "latest"), num_proc=min(self.num_proc, len(data)))

    def load(self, path):
        import datasets

        table = _hf_table(datasets.load_from_disk(os.path.join(path, "latest")))
        touch_pages(table)
        return table


class PyArrowIPC(Competitor):
    key = "ipc"
    label = "pyarrow IPC zstd-1, one writer"
    note = "new_stream(IpcWriteOptions(zstd level 1, use_threads=True)); read_all()"

    def save(self, data, path):
        os.makedirs(path, exist_ok=True)
        with pa.OSFile(os.path.join(path, "data.arrow"), "wb") as sink:
            with pa.ipc.new_stream(sink, data.schema, options=_ipc_options()) as writer:
                writer.write_table(data)

    def load(self, path):
        with pa.OSFile(os.path.join(path, "data.arrow"), "rb") as source:
            return pa.ipc.open_stream(source).read_all()


def _shard_bounds(rows: int, shards: int) -> list[tuple[int, int]]:
    step = -(-rows // shards) if rows else 0
    return [(i * step, min(step, rows - i * step)) for i in range(shards) if i * step < rows or i == 0]


class PyArrowIPCSharded(Competitor):
    key = "ipc_sharded"
    label = "pyarrow IPC zstd-1, num_proc shards/threads"
    note = "the table cut into num_proc contiguous slices, each written (and read) by its own thread"

    def save(self, data, path):
        os.makedirs(path, exist_ok=True)

        def write(i, offset, length):
            part = data.slice(offset, length)
            with pa.OSFile(os.path.join(path, f"data-{i:05d}.arrow"), "wb") as sink:
                with pa.ipc.new_stream(sink, data.schema, options=_ipc_options()) as writer:
                    writer.write_table(part)

        bounds = _shard_bounds(data.num_rows, self.num_proc)
        with ThreadPoolExecutor(len(bounds)) as pool:
            list(pool.map(lambda b: write(b[0], *b[1]), enumerate(bounds)))

    def load(self, path):
        files = sorted(f for f in os.listdir(path) if f.endswith(".arrow"))

        def read(name):
            with pa.OSFile(os.path.join(path, name), "rb") as source:
                return pa.ipc.open_stream(source).read_all()

        with ThreadPoolExecutor(max(1, min(len(files), self.num_proc))) as pool:
            return pa.concat_tables(list(pool.map(read, files)))


class Parquet(Competitor):
    key = "parquet"
    label = "pyarrow parquet zstd-1"
    note = "pq.write_table(compression='zstd', level 1), the format of Ray checkpoints; read_table(use_threads)"

    def save(self, data, path):
        os.makedirs(path, exist_ok=True)
        pq.write_table(data, os.path.join(path, "data.parquet"), compression="zstd", compression_level=ZSTD_LEVEL)

    def load(self, path):
        return pq.read_table(os.path.join(path, "data.parquet"))


#: Writers whose bytes are zstd level ``ZSTD_LEVEL``: the zstd ceiling bounds them.
ZSTD_WRITERS = ("accel", "ipc", "ipc_sharded", "parquet")


def reference(num_proc: int) -> Competitor:
    """py-data-juicer 1.6.1's CheckpointManager, or -- when py-data-juicer
    cannot be imported -- the ``save_to_disk`` call it makes, labelled so.
    The reason py-data-juicer was not used is in ``instead_of_dj``."""
    dj = DataJuicer(num_proc)
    why = dj.available()
    if why is None:
        return dj
    hf = HFDatasets(num_proc)
    hf.instead_of_dj = why
    return hf


def competitors(num_proc: int) -> list[Competitor]:
    """Every writer, this package first and the reference second; the caller
    asks each ``available()`` and reports the ones that cannot run."""
    return [Accel(num_proc), reference(num_proc), PyArrowIPC(num_proc), PyArrowIPCSharded(num_proc), Parquet(num_proc)]
