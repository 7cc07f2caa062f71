"""The data every checkpoint case writes: a deterministic corpus shaped like
Data-Juicer's, or the user's own file.

The default corpus has Data-Juicer's three kinds of columns: ``text``, a
``meta`` struct and a ``__dj__stats__`` struct. Its text is made of phrases
(runs of 1-12 words over a 30k-word generated vocabulary) drawn from a Zipf
distribution, with ~2% random numbers: zstd finds repeated phrases the way it
finds boilerplate in web text, so the text compresses 3-4x at level 3 (the
run prints the measured ratio). Record batches hold 1,000 rows, the
``writer_batch_size`` of HF ``datasets``.
"""

from __future__ import annotations

import os
import re

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

BATCH_ROWS = 1000
DEFAULT_SEED = 20251128

_VOCAB = 30_000
_PHRASES = 300_000
_PHRASE_ZIPF = 1.05
_RANDOM_TOKENS = 0.02
_LUT_BITS = 22
_LETTERS = np.array(list("etaoinshrdlcumwfgypbvkjxqz"))
_LETTER_FREQ = np.array(
    [12.7, 9.1, 8.2, 7.5, 7.0, 6.7, 6.3, 6.1, 6.0, 4.3, 4.0, 2.8, 2.8]
    + [2.4, 2.4, 2.2, 2.0, 2.0, 1.9, 1.5, 1.0, 0.8, 0.15, 0.15, 0.1, 0.07]
)
_STOPWORDS = ["the", "of", "and", "to", "a", "in", "is", "for", "that", "on", "with", "as"]
_SOURCES = ["common_crawl", "c4", "wikipedia", "books", "arxiv", "github", "stackexchange"]
_TLDS = [".com", ".org", ".net", ".io", ".edu", ".co.uk", ".de"]


def parse_size(text: str) -> int:
    """'1GB', '256MB', '512M', '2.5G', '1000000' -> bytes (decimal units)."""
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([kmgt]?)i?b?\s*", text.lower())
    if not m:
        raise ValueError(f"not a size: {text!r} (try 1GB, 256MB)")
    scale = {"": 1, "k": 10**3, "m": 10**6, "g": 10**9, "t": 10**12}[m.group(2)]
    return int(float(m.group(1)) * scale)


def _zipf_lut(n: int, exponent: float) -> np.ndarray:
    """Inverse CDF of a Zipf law over n ranks, tabulated: index with a uniform
    integer in [0, 2**_LUT_BITS) to draw a rank (much faster than searchsorted)."""
    weights = 1.0 / np.arange(1, n + 1) ** exponent
    cdf = np.cumsum(weights) / weights.sum()
    grid = (np.arange(2**_LUT_BITS) + 0.5) / 2**_LUT_BITS
    return np.minimum(np.searchsorted(cdf, grid), n - 1).astype(np.int32)


def _offsets(lengths: np.ndarray) -> pa.Array:
    return pa.array(np.concatenate([[0], np.cumsum(lengths)]).astype(np.int32))


class CorpusGenerator:
    """Deterministic record batches of Data-Juicer-shaped rows."""

    def __init__(self, seed: int = DEFAULT_SEED):
        self.rng = rng = np.random.default_rng(seed)
        # Vocabulary: letter strings, the shortest ones the most frequent.
        lengths = np.sort(np.clip(rng.poisson(7, _VOCAB), 2, 18))
        letters = rng.choice(_LETTERS, size=int(lengths.sum()), p=_LETTER_FREQ / _LETTER_FREQ.sum())
        joined = "".join(letters.tolist())
        ends = np.cumsum(lengths)
        vocab = [joined[e - n : e] for n, e in zip(lengths.tolist(), ends.tolist(), strict=True)]
        vocab[: len(_STOPWORDS)] = _STOPWORDS
        self.vocab = pa.array(vocab, pa.string())
        # Phrases: runs of Zipf-drawn words, some ending in punctuation.
        word_lut = _zipf_lut(_VOCAB, 1.0)
        phrase_len = np.clip(rng.geometric(0.3, _PHRASES), 1, 12)
        words = self.vocab.take(pa.array(word_lut[rng.integers(0, 2**_LUT_BITS, int(phrase_len.sum()))]))
        phrases = pc.binary_join(pa.ListArray.from_arrays(_offsets(phrase_len), words), " ")
        punct = pa.array(rng.choice(np.array(["", "", "", "", ",", ".", ".", ":"]), _PHRASES))
        self.phrases = pc.binary_join_element_wise(phrases, punct, "")
        self.phrase_lut = _zipf_lut(_PHRASES, _PHRASE_ZIPF)
        self.row = 0

    def _text(self, n_docs: int) -> tuple[pa.Array, np.ndarray]:
        rng = self.rng
        phrases_per_doc = np.clip(rng.lognormal(5.0, 0.8, n_docs).astype(np.int64), 5, 5000)
        total = int(phrases_per_doc.sum())
        idx = self.phrase_lut[rng.integers(0, 2**_LUT_BITS, total)]
        random_mask = rng.random(total) < _RANDOM_TOKENS
        n_random = int(random_mask.sum())
        numbers = pa.array(rng.integers(0, 10**6, n_random).astype(str), pa.string())
        idx[random_mask] = _PHRASES + np.arange(n_random, dtype=np.int32)
        tokens = pa.concat_arrays([self.phrases, numbers]).take(pa.array(idx))
        text = pc.binary_join(pa.ListArray.from_arrays(_offsets(phrases_per_doc), tokens), " ")
        return text, phrases_per_doc

    def batch(self, n_docs: int = BATCH_ROWS) -> pa.RecordBatch:
        rng = self.rng
        text, phrases = self._text(n_docs)
        first = self.row
        self.row += n_docs
        ids = np.arange(first, first + n_docs)
        domains = self.vocab.take(pa.array(rng.integers(200, _VOCAB, n_docs)))
        paths = self.vocab.take(pa.array(rng.integers(100, _VOCAB, n_docs)))
        tld = pa.array(rng.choice(np.array(_TLDS), n_docs))
        url = pc.binary_join_element_wise("https://www.", domains, tld, "/", paths, "/", pa.array(ids.astype(str)), "")
        meta = pa.StructArray.from_arrays(
            [
                url,
                pa.array(rng.choice(np.array(_SOURCES), n_docs)),
                pa.array(np.full(n_docs, "en")),
                pa.array(1_700_000_000 + ids * 7 + rng.integers(0, 7, n_docs), pa.int64()),
            ],
            names=["url", "source", "language", "timestamp"],
        )
        text_len = pc.utf8_length(text).cast(pa.int64())
        num_words = pa.array(np.round(phrases * 3.3).astype(np.int64))
        stats = pa.StructArray.from_arrays(
            [
                text_len,
                num_words,
                pa.array(rng.uniform(0.7, 1.0, n_docs)),
                pa.array(rng.uniform(0.80, 0.98, n_docs)),
                pa.array(rng.lognormal(6.0, 0.5, n_docs)),
                pa.array(rng.uniform(0.0, 0.2, n_docs)),
            ],
            names=["text_len", "num_words", "lang_score", "alnum_ratio", "perplexity", "special_char_ratio"],
        )
        return pa.RecordBatch.from_arrays([text, meta, stats], names=["text", "meta", "__dj__stats__"])


def default_corpus(size_bytes: int, seed: int = DEFAULT_SEED, progress=None) -> pa.Table:
    """About ``size_bytes`` of rows in memory (``Table.nbytes``), deterministic."""
    gen = CorpusGenerator(seed)
    batches, total = [], 0
    while total < size_bytes:
        batch = gen.batch()
        batches.append(batch)
        total += batch.nbytes
        if progress is not None:
            progress(min(total, size_bytes) / size_bytes)
    return pa.Table.from_batches(batches)


def load_user_data(path: str) -> pa.Table:
    """A jsonl/json, parquet, Arrow IPC (file or stream) file, or a directory
    written by ``datasets.save_to_disk`` / holding parquet files."""
    if os.path.isdir(path):
        if os.path.exists(os.path.join(path, "state.json")):
            import datasets

            ds = datasets.load_from_disk(path, keep_in_memory=True)
            table = ds.data.table
            if ds._indices is not None:
                table = table.take(ds._indices.column(0))
            return table
        import pyarrow.dataset as pads

        return pads.dataset(path, format="parquet").to_table()
    lower = path.lower()
    if lower.endswith((".jsonl", ".json", ".jsonl.gz", ".json.gz", ".jsonl.zst")):
        import pyarrow.json as pajson

        return pajson.read_json(path, read_options=pajson.ReadOptions(block_size=64 << 20))
    if lower.endswith(".parquet"):
        import pyarrow.parquet as pq

        return pq.read_table(path)
    for opener in (pa.ipc.open_file, pa.ipc.open_stream):
        try:
            with pa.memory_map(path) as source:
                return opener(source).read_all()
        except pa.ArrowInvalid:
            continue
    raise ValueError(f"{path}: not a jsonl, parquet or Arrow IPC file")


def table_buffers(table: pa.Table, piece: int = 8 << 20) -> list:
    """The table's bytes as memoryviews of at most ``piece`` bytes, zero-copy
    (the units a writer compresses)."""
    views: list[memoryview] = []
    for column in table.columns:
        for chunk in column.chunks:
            for buf in chunk.buffers():
                if buf is None or buf.size == 0:
                    continue
                view = memoryview(buf)
                views.extend(view[i : i + piece] for i in range(0, len(view), piece))
    return views


def text_zstd_ratio(table: pa.Table, level: int = 3, sample_bytes: int = 64 << 20) -> float | None:
    """zstd ratio of the first ``sample_bytes`` of the ``text`` column."""
    import zstandard

    if "text" not in table.column_names or not pa.types.is_string(table.schema.field("text").type):
        return None
    parts, total = [], 0
    for chunk in table.column("text").chunks:
        data = pc.binary_join(pa.ListArray.from_arrays(pa.array([0, len(chunk)], pa.int32()), chunk), "")
        raw = data[0].as_buffer()
        parts.append(raw.to_pybytes())
        total += raw.size
        if total >= sample_bytes:
            break
    blob = b"".join(parts)[:sample_bytes]
    if not blob:
        return None
    return len(blob) / len(zstandard.ZstdCompressor(level=level).compress(blob))
