"""``data-juicer-accel bench``: the subcommand's arguments and entry point.

Imports nothing heavy at module level (the CLI imports every subcommand; the
bench's own dependencies -- numpy, zstandard, matplotlib -- are the ``bench``
extra, loaded only when it runs).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
from collections.abc import Iterator
from typing import Any

NAME = "bench"


class BadArgument(Exception):
    """An argument the bench cannot run with: one line naming it, exit 2."""


def _size(text: str) -> int:
    from data_juicer_accel.bench.corpus import parse_size

    try:
        size = parse_size(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from e
    if size < 1000:
        raise argparse.ArgumentTypeError(f"{text!r} is too small (at least 1KB; e.g. 256MB)")
    return size


def _at_least(minimum: int):
    def whole(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be at least {minimum:,}, not {value:,}")
        return value

    return whole


_positive = _at_least(1)


def add_parser(subparsers) -> argparse.ArgumentParser:
    help_text = "benchmark checkpoints and job events against what users would pick instead"
    parser = subparsers.add_parser(NAME, help=help_text, description=help_text)
    add_arguments(parser)
    parser.set_defaults(run=run)
    return parser


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--size",
        type=_size,
        default=10**9,
        help="in-memory size of the default corpus (default 1GB; e.g. 256MB)",
    )
    p.add_argument("--data", metavar="PATH", help="benchmark your own jsonl / parquet / Arrow file instead")
    p.add_argument(
        "--only",
        choices=["checkpoints", "events", "ray", "pipeline", "bucket"],
        help="run one part only; `ray` (needs the ray extra) compares RayCheckpointManager with the reference's "
        "write_parquet/read_parquet on a local 2-CPU Ray cluster, at --size capped to 64MB unless given, then runs "
        "a ray_partitioned Data-Juicer job with a checkpoint after every op, unpatched and patched (needs "
        "py-data-juicer), at --size 200MB unless given; "
        "`pipeline` times a real 6-op Data-Juicer pipeline (np 2) without checkpoints, with 1.6.1's and with "
        "per-op checkpoints, at --size 200MB unless given, plus the stall of a background save of 1GB; "
        "`bucket` saves and loads checkpoints in an S3-compatible bucket (--bucket or --local-server) against "
        "the reference's parquet through pyarrow.fs and, with pylance installed, Lance, at --size 64MB unless given",
    )
    p.add_argument(
        "--bucket",
        metavar="s3://BUCKET/PREFIX",
        help="where `--only bucket` writes (under a sub-prefix of its own, removed at the end); the endpoint and "
        "credentials come from the AWS_* variables (AWS_ENDPOINT_URL, AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, "
        "AWS_REGION, AWS_ALLOW_HTTP=true for plain http)",
    )
    p.add_argument(
        "--local-server",
        action="store_true",
        help="`--only bucket` against moto's S3 server started on loopback (needs moto[server])",
    )
    p.add_argument(
        "--with-job",
        action="store_true",
        help="`--only bucket` also runs the ray_partitioned Data-Juicer job (as `--only ray`, default corpus at "
        "--size) with its checkpoints in the bucket, unpatched and patched; a Ray job process per run, so minutes",
    )
    p.add_argument(
        "--rounds", type=_positive, default=3, help="interleaved rounds per case; medians are shown (default 3)"
    )
    p.add_argument(
        "--num-proc",
        type=_positive,
        default=os.cpu_count() or 1,
        help="num_proc of every checkpoint writer (default: the number of cores)",
    )
    p.add_argument("--small-rounds", type=_positive, default=5, help="rounds of the 1,000-row checkpoint (default 5)")
    p.add_argument(
        "--events",
        type=_at_least(1000),
        default=200_000,
        help="events logged per case by this package; the reference logs a tenth (default 200000)",
    )
    p.add_argument(
        "--analysis-events",
        type=_at_least(100),
        default=100_000,
        help="lines of the event log given to analyze_resumption_state (default 100000)",
    )
    p.add_argument(
        "--partitions",
        type=_positive,
        default=4,
        help="partitions of the ray_partitioned job of `--only ray` and `--only bucket --with-job` (default 4)",
    )
    p.add_argument("--workdir", metavar="DIR", help="where checkpoints are written (default: a fresh temp dir)")
    p.add_argument("--json", metavar="FILE", help="also write the results as JSON")
    p.add_argument("--plot", metavar="FILE.png", help="also draw the results (needs matplotlib)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")
    p.add_argument(
        "--report",
        metavar="FILE.json",
        help="print (and --plot) the results saved by an earlier --json run instead of running",
    )


def run(args: argparse.Namespace) -> int:
    try:
        data = check(args)
    except BadArgument as e:
        print(f"data-juicer-accel bench: {e}", file=sys.stderr)
        return 2
    if args.report:
        return _print_report(data, args)
    return _run(args, data)


def check(args: argparse.Namespace) -> Any:
    """Every argument checked before any work starts; returns the --report
    results or the --data table (None when neither is given)."""
    if args.plot:
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            raise BadArgument("--plot needs matplotlib: pip install 'data-juicer-accel[bench]'") from None
    for option, path in (("--json", args.json), ("--plot", args.plot)):
        folder = os.path.dirname(os.path.abspath(path)) if path else None
        if folder and not os.path.isdir(folder):
            raise BadArgument(f"{option} {path}: no such directory {folder}")
    if args.workdir and os.path.exists(args.workdir) and not os.path.isdir(args.workdir):
        raise BadArgument(f"--workdir {args.workdir}: not a directory")
    if args.report:
        return _read_report(args.report)
    _check_bucket(args)
    if args.data:
        return _read_data(args.data)
    return None


def _check_bucket(args: argparse.Namespace) -> None:
    """``--bucket`` / ``--local-server``: they go with ``--only bucket``, which
    needs one of them; the bucket must answer (one request)."""
    from data_juicer_accel.bench import bucket, local_s3

    if args.only != "bucket":
        for option, given in (
            ("--bucket", args.bucket),
            ("--local-server", args.local_server),
            ("--with-job", args.with_job),
        ):
            if given:
                raise BadArgument(f"{option} goes with --only bucket")
        return
    if args.with_job and args.data:
        raise BadArgument("--with-job runs the job on the default corpus at --size: give no --data")
    if args.bucket and args.local_server:
        raise BadArgument("--bucket and --local-server: give one (--local-server makes a bucket of its own)")
    if args.local_server:
        why = local_s3.why_not_available()
        if why:
            raise BadArgument(f"--local-server: {why}")
        return
    if not args.bucket:
        raise BadArgument(
            "--only bucket needs --bucket s3://bucket/prefix, or --local-server to start moto's S3 server on loopback"
        )
    try:
        bucket.probe(bucket.parse_target(args.bucket))
    except bucket.BucketError as e:
        raise BadArgument(str(e)) from None


def _read_report(path: str) -> dict:
    try:
        with open(path) as f:
            results = json.load(f)
    except OSError as e:
        raise BadArgument(f"--report {path}: {e.strerror or e}") from None
    except ValueError as e:
        raise BadArgument(f"--report {path}: not JSON ({e})") from None
    if not isinstance(results, dict) or not {"checkpoints", "events", "small", "bucket"} & set(results):
        raise BadArgument(f"--report {path}: not the results of `bench --json` (no checkpoints, small or events)")
    return results


def _read_data(path: str) -> Any:
    import pyarrow as pa

    from data_juicer_accel.bench.corpus import load_user_data

    if not os.path.exists(path):
        raise BadArgument(f"--data {path}: no such file or directory")
    try:
        table = load_user_data(path)
    except (OSError, ValueError, pa.ArrowException) as e:
        first = str(e).strip().splitlines()[0].removeprefix(f"{path}: ") if str(e).strip() else type(e).__name__
        raise BadArgument(f"--data {path}: cannot be read as jsonl, parquet or Arrow ({first})") from None
    if table.num_rows == 0:
        raise BadArgument(f"--data {path}: has no rows")
    return table


def _print_report(results: dict, args: argparse.Namespace) -> int:
    from data_juicer_accel.bench import report

    print(report.render(results))
    if args.plot:
        report.plot(results, args.plot)
        print(f"plot written to {args.plot}")
    return 0


def _run(args: argparse.Namespace, data: Any) -> int:
    from data_juicer_accel.bench import report
    from data_juicer_accel.bench.runner import BenchConfig, Runner

    _quiet()
    if args.workdir:
        os.makedirs(args.workdir, exist_ok=True)
    if args.only == "ray":
        return _run_ray(args)
    if args.only == "pipeline":
        return _run_pipeline(args)
    if args.only == "bucket":
        return _run_bucket(args, data)
    cfg = BenchConfig(
        size=args.size,
        data=args.data,
        rounds=args.rounds,
        num_proc=args.num_proc,
        only=args.only,
        workdir=args.workdir,
        small_rounds=args.small_rounds,
        events=args.events,
        analysis_events=args.analysis_events,
        progress=not args.no_progress,
    )
    results = Runner(cfg, data=data).run()
    results["command"] = command_line(args)
    print(report.render(results))
    if args.json:
        report.write_json(results, args.json)
        print(f"\nresults written to {args.json}")
    if args.plot:
        report.plot(results, args.plot)
        print(f"plot written to {args.plot}")
    return 0


def command_line(args: argparse.Namespace) -> str:
    """The command that reproduces this run (its options that differ from
    the defaults; where the files go is left out)."""
    parts = ["data-juicer-accel", "bench"]
    if args.size != 10**9:
        parts += ["--size", f"{args.size / 10**6:g}MB"]
    defaults: dict[str, object] = {"rounds": 3, "num_proc": os.cpu_count() or 1, "small_rounds": 5}
    defaults.update({"events": 200_000, "analysis_events": 100_000, "data": None, "only": None, "partitions": 4})
    for name, default in defaults.items():
        value = getattr(args, name)
        if value != default:
            parts += [f"--{name.replace('_', '-')}", str(value)]
    if getattr(args, "local_server", False):
        parts.append("--local-server")
    if getattr(args, "with_job", False):
        parts.append("--with-job")
    return " ".join(parts)


def _run_ray(args: argparse.Namespace) -> int:
    """The Ray case: our per-partition checkpoints against the reference's
    parquet on real Ray, then the same partitioned Data-Juicer job unpatched
    and patched."""
    from data_juicer_accel.bench import ray_checkpoints as bench_ray
    from data_juicer_accel.bench import ray_job
    from data_juicer_accel.bench.runner import CpuShare, machine_info
    from data_juicer_accel.tools import _interrupt

    machine, cpu = machine_info(), CpuShare()
    size_mb = 64 if args.size == 10**9 else max(1, args.size // 10**6)
    job_size = ray_job.JOB_SIZE if args.size == 10**9 else args.size
    with _interrupt.temporary_directory("dja-bench-", dir=args.workdir) as workdir:
        costs = [bench_ray.expected_cost(size_mb, args.rounds), ray_job.expected_cost(job_size, args.rounds)]
        _say_expectations(args, sum(seconds for seconds, _ in costs), max(disk for _, disk in costs), workdir)
        rows = bench_ray.run_ray_bench(size_mb, args.rounds, dir=workdir)
        print(f"ray: {rows[0]['mb']} MB, local Ray with 2 CPUs, median of {args.rounds} round(s); x = vs this package")
        print(bench_ray.format_table(rows))
        print(bench_ray.bound_summary(rows))
        job = _run_ray_job(args, job_size, workdir)
    machine.update(loadavg_end=list(os.getloadavg()), other_processes_cores=cpu.others())
    if args.json:
        with open(args.json, "w") as f:
            json.dump(
                {"ray": rows, "ray_job": job, "machine": machine, "command": command_line(args), "rounds": args.rounds},
                f,
                indent=2,
            )
        print(f"\nresults written to {args.json}")
    return 0


def _run_ray_job(args: argparse.Namespace, size: int, workdir: str) -> dict:
    """The partitioned Ray job (see bench/ray_job.py), or why it was not run."""
    from data_juicer_accel.bench import ray_job

    print()
    why = ray_job.why_not_runnable()
    if why is not None:
        print(f"not run: {ray_job.TITLE} -- {why}")
        return {"not_run": why}
    result = ray_job.run_ray_job_bench(size, args.rounds, os.path.join(workdir, "job"), partitions=args.partitions)
    print(ray_job.format_report(result))
    return result


def _run_pipeline(args: argparse.Namespace) -> int:
    """Per-op checkpoints in a real Data-Juicer pipeline (see bench/pipeline.py)."""
    from data_juicer_accel.bench import pipeline
    from data_juicer_accel.bench.runner import CpuShare, machine_info
    from data_juicer_accel.tools import _interrupt

    size = 200 * 10**6 if args.size == 10**9 else args.size
    machine, cpu = machine_info(), CpuShare()
    with _interrupt.temporary_directory("dja-bench-", dir=args.workdir) as workdir:
        _say_expectations(args, *pipeline.expected_cost(size, args.rounds), workdir)
        result = pipeline.run_pipeline_bench(size, args.rounds, workdir)
    machine.update(loadavg_end=list(os.getloadavg()), other_processes_cores=cpu.others())
    result.update(machine=machine, command=command_line(args))
    print(pipeline.format_report(result))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"pipeline": result}, f, indent=2)
        print(f"\nresults written to {args.json}")
    return 0


#: The size of `--only bucket` unless --size is given.
BUCKET_SIZE = 64 * 10**6


def _run_bucket(args: argparse.Namespace, data: Any) -> int:
    """Checkpoints in a bucket against the reference's parquet (see bench/bucket.py)."""
    from data_juicer_accel.bench import bucket, ray_job, report
    from data_juicer_accel.bench.corpus import default_corpus
    from data_juicer_accel.bench.progress import Progress
    from data_juicer_accel.bench.runner import CpuShare, machine_info
    from data_juicer_accel.tools import _interrupt

    machine, cpu = machine_info(), CpuShare()
    size = BUCKET_SIZE if args.size == 10**9 else args.size
    with _bucket_target(args) as target:
        run = bucket.RunPrefix(target, target.filesystem())
        keys = [w.key for w in bucket.writers(args.num_proc) if w.available() is None]
        nbytes = data.nbytes if data is not None else size
        seconds = bucket.expected_seconds(nbytes, args.rounds, keys) + (0 if data is not None else 15 * size / 1e9)
        job_seconds, job_bytes = ray_job.expected_cost(size, args.rounds) if args.with_job else (0.0, 0.0)
        seconds += job_seconds
        if not args.no_progress:
            print(_bucket_expectations(seconds, max(nbytes, job_bytes), run.uri), file=sys.stderr, flush=True)
        progress = Progress(seconds, enabled=not args.no_progress)
        with _interrupt.removed_if_interrupted(run.uri, run.remove):
            try:
                progress.step(f"generating the {size / 1e6:,.0f} MB default corpus")
                table = data if data is not None else default_corpus(size)
                step = _stepper(progress)
                result = bucket.run_bucket_bench(table, target, run.prefix, args.rounds, args.num_proc, step)
                del table
                if args.with_job:
                    step("the ray_partitioned job, unpatched and patched", job_seconds)
                    result["job"] = _run_bucket_job(args, size, bucket.JobBucket(target, run.prefix))
            finally:
                progress.close()
                if not _interrupt.interrupted():
                    run.remove()
    machine.update(loadavg_end=list(os.getloadavg()), other_processes_cores=cpu.others())
    result.update(local_server=args.local_server, machine=machine, command=command_line(args))
    result["data"] = args.data or "default corpus (text, meta struct, __dj__stats__ struct)"
    print(report.bucket_report(result))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"bucket": result}, f, indent=2)
        print(f"\nresults written to {args.json}")
    return 0


def _run_bucket_job(args: argparse.Namespace, size: int, job_bucket: Any) -> dict:
    """The partitioned job of ``--only ray`` with its checkpoints in the bucket
    (see bench/ray_job.py), or why it was not run."""
    from data_juicer_accel.bench import ray_job
    from data_juicer_accel.tools import _interrupt

    why = ray_job.why_not_runnable()
    if why is not None:
        return {"not_run": why}
    with _interrupt.temporary_directory("dja-bench-job-", dir=args.workdir) as workdir:
        return ray_job.run_ray_job_bench(size, args.rounds, workdir, partitions=args.partitions, bucket=job_bucket)


def _stepper(progress: Any) -> Any:
    """``step(label, cost)`` for the bucket case: the bar advances by the cost
    of the unit before, then names the next."""
    pending = [0.0]

    def step(label: str, cost: float) -> None:
        progress.advance(pending[0])
        pending[0] = cost
        progress.step(label)

    return step


def _bucket_expectations(seconds: float, nbytes: float, where: str) -> str:
    """The first two lines on stderr: the time, and what goes into the bucket
    (one writer's save at a time; none writes more than the table's size)."""
    from data_juicer_accel.bench.progress import expectations

    first = expectations(seconds, 0, where).splitlines()[0]
    return f"{first}\nin the bucket: at most about {nbytes / 1e6:,.0f} MB under {where} (removed at the end)"


@contextlib.contextmanager
def _bucket_target(args: argparse.Namespace) -> Iterator[Any]:
    """The bucket of ``--bucket``, or one on moto's server started on loopback
    (``--local-server``) for as long as the case runs."""
    from data_juicer_accel.bench import bucket
    from data_juicer_accel.bench.local_s3 import LocalS3Server, environment_of
    from data_juicer_accel.tools import _interrupt

    if not args.local_server:
        yield bucket.parse_target(args.bucket)
        return
    with _interrupt.temporary_directory("dja-bench-s3-", dir=args.workdir) as workdir, LocalS3Server(workdir) as server:
        with environment_of(server):
            target = bucket.Target("dja-bench", "bench", dict(os.environ))
            target.filesystem().create_dir(target.bucket)
            yield target


def _say_expectations(args: argparse.Namespace, seconds: float, disk_bytes: float, workdir: str) -> None:
    """The first lines on stderr, as the main bench's (unless --no-progress)."""
    from data_juicer_accel.bench.progress import expectations

    if not args.no_progress:
        print(expectations(seconds, disk_bytes, workdir), file=sys.stderr, flush=True)


def _quiet() -> None:
    """loguru at WARNING (both checkpoint managers log at DEBUG/INFO), and no
    HF progress bars: the bench's own bar is the only one."""
    from loguru import logger

    logger.remove()
    logger.add(sys.stderr, level="WARNING")
    os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")
    try:
        import datasets

        datasets.disable_progress_bars()
    except ImportError:
        pass
