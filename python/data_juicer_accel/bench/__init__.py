"""``data-juicer-accel bench``: how much faster, smaller and safer the
checkpoints and job events of this package are than what a Data-Juicer user
would otherwise use (py-data-juicer 1.6.1, HF datasets, pyarrow IPC, parquet).

Modules: ``corpus`` (the default Data-Juicer-shaped corpus, user data),
``checkpoints`` (the competitors), ``events`` (event logging cases),
``measure`` (timing, RSS sampling, zstd ceiling), ``runner`` (rounds,
medians), ``report`` (table, targets, plot), ``cli`` (arguments).
"""

from data_juicer_accel.bench.runner import BenchConfig, Runner

__all__ = ["BenchConfig", "Runner"]
