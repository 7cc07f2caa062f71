"""``data-juicer-accel bench``: how much faster, smaller and safer the
checkpoints and job events of this package are than what a Data-Juicer user
would otherwise use (py-data-juicer 1.6.1, HF datasets, pyarrow IPC, parquet).

Modules: ``corpus`` (the default Data-Juicer-shaped corpus, user data),
``checkpoints`` (the competitors), ``events`` (event logging cases),
``measure`` (timing, RSS sampling, zstd ceiling), ``runner`` (rounds,
medians), ``progress`` (the first lines and the bar), ``report`` (headline,
tables, plot), ``pipeline`` (``--only pipeline``), ``ray_checkpoints`` and
``ray_job`` (``--only ray``), ``dj_jobs`` (what their Data-Juicer jobs
share), ``bucket`` and ``local_s3`` (``--only bucket``: checkpoints in an
S3-compatible bucket; moto's server on loopback), ``cli`` (arguments). What only the maintainers run (the README's
figures, the 1 GB stall re-measure) is in the repository's benches/.
"""

__all__ = ["BenchConfig", "Runner"]


def __getattr__(name):  # lazy: importing the package (the CLI does) loads no numpy
    if name in __all__:
        from data_juicer_accel.bench import runner

        return getattr(runner, name)
    raise AttributeError(name)
