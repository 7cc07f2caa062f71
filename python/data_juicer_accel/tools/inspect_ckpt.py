"""``data-juicer-accel inspect CKPT_DIR``: what a Data-Juicer checkpoint holds.

CKPT_DIR is a checkpoint directory (the one holding ``latest/`` and
``ckpt_op.json``, i.e. ``<work_dir>/<job_id>/ckpt``), its ``latest/``, the
job's work directory, or a bucket prefix ``s3://bucket/prefix`` (the client
configured by the ``AWS_*`` environment variables, as for the checkpoint
manager). Checkpoints written by this package are described from their
manifest (in a bucket, the newest version's, read with the rows and checked
against them); ones written by the original Data-Juicer (``datasets``
``save_to_disk``) are said to be so and described from their ``state.json``
and Arrow files. Any other URI is refused.

Exit codes: 0 readable checkpoint, 1 damaged checkpoint, 2 no checkpoint there
(missing, foreign or unusable directory, bad arguments).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any

from data_juicer_accel.tools._format import error, human_bytes, key_values, print_json, table

NAME = "inspect"

EXIT_OK = 0
EXIT_DAMAGED = 1
EXIT_NOT_A_CHECKPOINT = 2

_OP_RECORD_FILE = "ckpt_op.json"
_STATE_FILE = "state.json"
_RAY_KIND = "ray"


class _NotACheckpoint(Exception):
    pass


def _read_small_file(path: str, root: str) -> bytes:
    """A metadata file, read only if it is a regular file inside ``root`` (never a FIFO), at most 64 MiB."""
    from data_juicer_accel.utils.ckpt_utils import _read_metadata_file

    return _read_metadata_file(path, root=root)


def add_parser(subparsers) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        NAME,
        help="describe a checkpoint: ops recorded, rows, shards, sizes, ratio, format",
        description=(
            "Describe a Data-Juicer checkpoint (CKPT_DIR: <work_dir>/<job_id>/ckpt, its latest/, "
            "the job's work dir, or s3://bucket/prefix with the AWS_* environment variables). "
            "Exit code 1 on a damaged checkpoint, 2 when there is none."
        ),
    )
    parser.add_argument("ckpt_dir", metavar="CKPT_DIR")
    parser.add_argument(
        "--config",
        metavar="YAML",
        help="a Data-Juicer config: show which of its ops this checkpoint lets a run skip",
    )
    parser.add_argument(
        "--job-id",
        help="job id used to resolve the config's work_dir (default: the directory above ckpt/)",
    )
    parser.add_argument("--verify", action="store_true", help="read every file and check every checksum")
    parser.add_argument("--json", action="store_true", help="machine-readable output")
    parser.set_defaults(run=run)
    return parser


def run(args: argparse.Namespace) -> int:
    try:
        ckpt_dir, report = _describe(args)
    except _NotACheckpoint as e:
        return _fail(args, str(e), EXIT_NOT_A_CHECKPOINT)

    if args.config:
        try:
            report["config"] = _config_plan(ckpt_dir, args.config, args.job_id)
        except Exception as e:  # a config Data-Juicer itself rejects
            why = str(e) if isinstance(e, ValueError) else f"{type(e).__name__}: {e}"
            return _fail(args, f"cannot load config {args.config}: {why}", EXIT_NOT_A_CHECKPOINT)

    report["damaged"] = bool(report["problems"])
    if args.json:
        print_json(report)
    else:
        _print_report(report)
    return EXIT_DAMAGED if report["damaged"] else EXIT_OK


# --------------------------------------------------------------------------


def _describe(args: argparse.Namespace) -> tuple[str, dict[str, Any]]:
    """(checkpoint location, report) for the checkpoint ``args`` name."""
    bucket = _bucket_of(args.ckpt_dir)
    if bucket is None:
        ckpt_dir, latest = _resolve(args.ckpt_dir)
        report: dict[str, Any] = {"ckpt_dir": ckpt_dir, "latest_dir": latest, "problems": []}
        _describe_directory(ckpt_dir, latest, args.verify, report)
        return ckpt_dir, report
    if args.config and not args.job_id:
        raise _NotACheckpoint(
            f"{bucket}: --config needs --job-id for a checkpoint in a bucket (the op record names the "
            "job's work_dir, and a bucket prefix does not name the job)"
        )
    report = {"ckpt_dir": bucket, "latest_dir": None, "problems": []}
    _describe_bucket(bucket, args.verify, report)
    return bucket, report


def _fail(args, message: str, code: int) -> int:
    error(message)
    if getattr(args, "json", False):
        print_json({"error": message, "exit_code": code})
    return code


def _bucket_of(path: str) -> str | None:
    """``s3://bucket/prefix`` for a checkpoint in a bucket, None for a local
    path; any other URI, or one with credentials in it, is refused (the
    message never shows them)."""
    from data_juicer_accel import _native

    try:
        return _native.bucket_uri(path)
    except ValueError as e:
        raise _NotACheckpoint(_first_line(e)) from None


def _first_line(error: BaseException) -> str:
    """An error's message on one line (a bucket's errors carry the server's XML answer)."""
    lines = str(error).strip().splitlines()
    return lines[0] if lines else type(error).__name__


def _resolve(path: str) -> tuple[str, str]:
    """(checkpoint dir, its latest/) for a checkpoint dir, a latest/ or a job work dir."""
    from data_juicer_accel import _native

    path = os.path.abspath(path)
    if not os.path.exists(path):
        raise _NotACheckpoint(f"{path}: no such directory")
    if not os.path.isdir(path):
        raise _NotACheckpoint(f"{path}: not a directory")
    if os.path.isdir(os.path.join(path, "latest")):
        return path, os.path.join(path, "latest")
    if os.path.exists(os.path.join(path, _native.MANIFEST_FILE)) or os.path.exists(os.path.join(path, _STATE_FILE)):
        return os.path.dirname(path), path
    if os.path.isdir(os.path.join(path, "ckpt", "latest")):
        return os.path.join(path, "ckpt"), os.path.join(path, "ckpt", "latest")
    if os.path.exists(os.path.join(path, _OP_RECORD_FILE)):
        raise _NotACheckpoint(f"{path}: has an op record ({_OP_RECORD_FILE}) but no latest/ dataset")
    raise _NotACheckpoint(
        f"{path}: not a Data-Juicer checkpoint directory (expected latest/ and {_OP_RECORD_FILE}, "
        f"as in <work_dir>/<job_id>/ckpt)"
    )


def _describe_directory(ckpt_dir: str, latest: str, verify: bool, report: dict[str, Any]) -> None:
    _describe_data(latest, report)
    # A Ray checkpoint is one op's output for one partition, named after
    # both (checkpoint_op_XXXX_partition_YYYY.accel): it has no op record.
    if report.get("kind") == _RAY_KIND:
        report["ops_recorded"] = None
    else:
        report["ops_recorded"] = _op_record(ckpt_dir, report["problems"])
    if verify:
        report["verify"] = _verify(latest, report)
        if not report["verify"]["ok"]:
            report["problems"].append(report["verify"]["error"])


def _describe_bucket(uri: str, verify: bool, report: dict[str, Any]) -> None:
    """The newest version published under ``uri``: its manifest, op record and,
    with ``verify``, every checksum. The native read checks every object's
    size and the rows of every shard in any case."""
    from data_juicer_accel import _native
    from data_juicer_accel.errors import CheckpointCorruptError

    report["writer"] = "data-juicer-accel"
    checked = "every object's xxh3-64 checksum, every shard decoded"
    try:
        if verify:  # reads every shard, checks every checksum and row count
            loaded = _native.read_committed(uri, verify=True)
            manifest_text = loaded.manifest if loaded is not None else None
            op_record = loaded.file(_OP_RECORD_FILE) if loaded is not None else None
        else:  # the manifest and the op record only
            manifest_text = _native.committed_manifest(uri)
            op_record = _native.committed_file(uri, _OP_RECORD_FILE)
        versions = _native.bucket_versions(uri)
    except CheckpointCorruptError as e:
        report["problems"].append(_first_line(e))
        report["ops_recorded"] = None
        if verify:
            report["verify"] = {"ok": False, "checked": checked, "error": _first_line(e)}
        return
    except (OSError, ValueError, MemoryError) as e:  # no such bucket, no answer, refused credentials
        raise _NotACheckpoint(f"{uri}: cannot read the checkpoint: {_first_line(e)}") from None
    if manifest_text is None:
        raise _NotACheckpoint(f"{uri}: no checkpoint published there (no manifest under {uri}/versions/)")
    manifest = json.loads(manifest_text)
    _describe_manifest(manifest, report)
    report["generation"] = manifest.get("generation")
    report["versions_kept"] = versions
    report["ops_recorded"] = _ops_of(op_record, f"{uri}/{_OP_RECORD_FILE}", report["problems"])
    if verify:
        report["verify"] = {"ok": True, "checked": checked, "rows": manifest.get("num_rows")}


def _ops_of(text: bytes | None, where: str, problems: list[str]) -> list[dict[str, Any]] | None:
    """The ops of an op record read from a bucket (already checked against its manifest)."""
    if text is None:
        problems.append(f"{where}: missing (a run cannot resume from this checkpoint)")
        return None
    try:
        record = json.loads(text)
    except (ValueError, RecursionError) as e:
        problems.append(f"{where}: unreadable op record ({e})")
        return None
    if not isinstance(record, list) or not all(isinstance(op, dict) and op for op in record):
        problems.append(f"{where}: not a list of op configs")
        return None
    return [{"name": next(iter(op)), "args": op[next(iter(op))]} for op in record]


def _op_record(ckpt_dir: str, problems: list[str]) -> list[dict[str, Any]] | None:
    path = os.path.join(ckpt_dir, _OP_RECORD_FILE)
    if not os.path.exists(path):
        problems.append(f"{path}: missing (a run cannot resume from this checkpoint)")
        return None
    from data_juicer_accel.utils.ckpt_op_record import NotAnOpRecord, load_op_record

    try:
        record = load_op_record(path, root=ckpt_dir)
    except NotAnOpRecord:
        problems.append(f"{path}: not a list of op configs")
        return None
    except (OSError, ValueError, RecursionError) as e:
        problems.append(f"{path}: unreadable op record ({e})")
        return None
    return [{"name": next(iter(op)), "args": op[next(iter(op))]} for op in record]


def _describe_data(latest: str, report: dict[str, Any]) -> None:
    from data_juicer_accel import _native

    try:
        manifest_json = _native.read_manifest(latest)
    except ValueError as e:  # CheckpointCorruptError: a manifest that does not validate
        report["writer"] = "data-juicer-accel"
        report["problems"].append(str(e))
        return
    if manifest_json is not None:
        _describe_ours(latest, json.loads(manifest_json), report)
    else:
        _describe_foreign(latest, report)


def _describe_ours(latest: str, manifest: dict[str, Any], report: dict[str, Any]) -> None:
    shards = _describe_manifest(manifest, report)
    # Cheap damage check: every listed file is there with its recorded size.
    resized = 0
    for entry in [*shards, *manifest.get("files", [])]:
        path = os.path.join(latest, entry["file"])
        try:
            size = os.path.getsize(path)
        except OSError:
            report["problems"].append(f"{path}: missing")
            continue
        if "bytes" in entry and size != entry["bytes"]:
            resized += 1
            report["problems"].append(f"{path}: {size} bytes, manifest says {entry['bytes']}")
    if resized and _datasets_loadable(latest):
        report["problems"].append(
            "the files were rewritten after data-juicer-accel wrote this manifest, apparently by datasets "
            "save_to_disk (unpatched Data-Juicer saving over this checkpoint leaves the manifest behind, stale)"
        )


def _describe_manifest(manifest: dict[str, Any], report: dict[str, Any]) -> list[dict[str, Any]]:
    """What this package's manifest says (wherever the checkpoint is); returns its shards."""
    shards = manifest.get("shards", [])
    total = sum(s["bytes"] for s in shards)
    raw = sum(s.get("raw_bytes", 0) for s in shards)
    report.update(
        writer="data-juicer-accel",
        format_version=manifest.get("format_version"),
        kind=manifest.get("kind"),
        codec=manifest.get("codec"),
        level=manifest.get("level"),
        num_rows=manifest.get("num_rows"),
        shards=shards,
        files=manifest.get("files", []),
        total_bytes=total,
        raw_bytes=raw,
        compression_ratio=(raw / total) if total else None,
    )
    return shards


def _datasets_loadable(latest: str) -> bool:
    """Whether ``state.json`` names data files that are all there."""
    try:
        state = json.loads(_read_small_file(os.path.join(latest, _STATE_FILE), root=latest))
        names = [d["filename"] for d in state["_data_files"]]
    except (OSError, ValueError, KeyError, TypeError, RecursionError):
        return False
    return bool(names) and all(os.path.exists(os.path.join(latest, n)) for n in names)


def _describe_foreign(latest: str, report: dict[str, Any]) -> None:
    """A ``latest/`` written by ``datasets.save_to_disk`` (original Data-Juicer)."""
    state_path = os.path.join(latest, _STATE_FILE)
    if not os.path.exists(state_path):
        raise _NotACheckpoint(
            f"{latest}: neither a data-juicer-accel checkpoint (no manifest) nor a datasets one (no {_STATE_FILE})"
        )
    report.update(writer="data-juicer (datasets save_to_disk)", format_version=None, kind="hf", codec="none")
    try:
        state = json.loads(_read_small_file(state_path, root=latest))
        data_files = [d["filename"] for d in state["_data_files"]]
    except (OSError, ValueError, KeyError, TypeError, RecursionError) as e:
        report["problems"].append(f"{state_path}: unreadable ({e})")
        return
    shards, rows_total = [], 0
    for name in data_files:
        path = os.path.join(latest, name)
        entry: dict[str, Any] = {"file": name, "bytes": None, "rows": None}
        try:
            entry["bytes"] = os.path.getsize(path)
            entry["rows"] = _arrow_stream_rows(path)
            rows_total += entry["rows"]
        except (OSError, ValueError) as e:  # pyarrow.ArrowInvalid is a ValueError
            report["problems"].append(f"{path}: {e}")
        shards.append(entry)
    total = sum(s["bytes"] or 0 for s in shards)
    report.update(
        num_rows=rows_total if not report["problems"] else None,
        shards=shards,
        files=sorted(n for n in os.listdir(latest) if n not in data_files),
        total_bytes=total,
        raw_bytes=total,
        compression_ratio=1.0 if total else None,
    )


def _arrow_stream_rows(path: str) -> int:
    """Rows of an Arrow IPC stream file, from its batch headers (memory-mapped)."""
    import pyarrow as pa

    if os.path.dirname(os.path.realpath(path)) != os.path.realpath(os.path.dirname(path)) or not os.path.isfile(path):
        raise OSError(f"not a regular file inside {os.path.dirname(path)}")
    with pa.memory_map(path) as source:
        reader = pa.ipc.open_stream(source)
        return sum(batch.num_rows for batch in reader)


def _verify(latest: str, report: dict[str, Any]) -> dict[str, Any]:
    if report.get("writer") == "data-juicer-accel":
        from data_juicer_accel import _native

        try:
            loaded = _native.read_checkpoint(latest, verify=True)
        except (ValueError, OSError, MemoryError) as e:
            return {"ok": False, "checked": "checksums", "error": str(e)}
        if loaded is None:
            return {"ok": False, "checked": "checksums", "error": f"{latest}: manifest disappeared"}
        return {"ok": True, "checked": "every file's xxh3-64 checksum, every shard decoded", "rows": loaded.num_rows}
    # datasets writes no checksums: the most that can be checked is that it loads.
    try:
        import datasets

        ds = datasets.load_from_disk(latest)
        rows = len(ds)
    except Exception as e:
        return {"ok": False, "checked": "datasets.load_from_disk", "error": f"{latest}: {type(e).__name__}: {e}"}
    return {"ok": True, "checked": "loads with datasets.load_from_disk (no checksums in this format)", "rows": rows}


def _config_plan(ckpt_dir: str, config: str, job_id: str | None) -> dict[str, Any]:
    """Which ops of ``config`` a run would skip, by CheckpointManager's own rule."""
    from loguru import logger

    from data_juicer_accel.utils.ckpt_utils import CheckpointManager

    job_id = job_id or os.path.basename(os.path.dirname(ckpt_dir))
    # This runs in the CLI's own process: Data-Juicer's config loading and the
    # manager's "Skip op" lines would bury the report, so stderr gets errors
    # only, and the manager's warnings (why a checkpoint is not usable) are kept.
    import data_juicer.config  # noqa: F401  (importing Data-Juicer sets up its own log handlers)

    logger.remove()
    logger.add(sys.stderr, level="ERROR")
    process_list = _load_process_list(config, job_id)
    messages: list[str] = []
    logger.remove()  # again: Data-Juicer may have set up its own handlers meanwhile
    logger.add(sys.stderr, level="ERROR")
    logger.add(
        lambda m: messages.append(m.record["message"]),
        level="WARNING",
        format="{message}",
        filter="data_juicer_accel",
    )
    manager = CheckpointManager(ckpt_dir, process_list)
    names = [next(iter(op)) for op in process_list]
    skipped = len(manager.op_record) if manager.ckpt_available else 0
    return {
        "path": os.path.abspath(config),
        "job_id": job_id,
        "checkpoint_usable": bool(manager.ckpt_available),
        "would_skip": names[:skipped],
        "would_run": [next(iter(op)) for op in manager.get_left_process_list()],
        "reason": " ".join(messages) or None,
    }


def _load_process_list(config: str, job_id: str) -> list[dict[str, Any]]:
    """The config's ``process`` list as Data-Juicer's executor sees it (defaults
    filled in, work_dir resolved): what its op record is compared with.

    The config is read as ``data-juicer-accel dj-process`` reads it: patched,
    so that the keys this package adds (``checkpoint.background``) are
    accepted. A config Data-Juicer rejects raises ValueError with its error,
    pointing to the help that lists the options."""
    import contextlib
    import io

    from data_juicer.config import init_configs

    from data_juicer_accel.patch import patch_data_juicer

    patch_data_juicer()
    said = io.StringIO()
    saved_argv0 = sys.argv[0]
    sys.argv[0] = "data-juicer-accel dj-process"
    try:
        with contextlib.redirect_stderr(said):
            cfg = init_configs(["--config", config, "--job_id", job_id], load_configs_only=True)
    except SystemExit:  # jsonargparse's parser.error()
        errors = [ln.removeprefix("error: ") for ln in said.getvalue().splitlines() if ln.startswith("error:")]
        reason = "; ".join(errors) or said.getvalue().strip() or "rejected by Data-Juicer"
        raise ValueError(f"{reason} (the accepted options: data-juicer-accel dj-process --help)") from None
    finally:
        sys.argv[0] = saved_argv0
    return list(cfg.process or [])


def _print_report(r: dict[str, Any]) -> None:
    ratio = r.get("compression_ratio")
    head = [
        ("checkpoint", r["ckpt_dir"]),
        ("written by", r.get("writer")),
        ("format version", r.get("format_version")),
        ("kind", r.get("kind")),
        ("codec", f"{r.get('codec')} (level {r['level']})" if r.get("level") is not None else r.get("codec")),
        ("rows", r.get("num_rows")),
        ("shards", len(r.get("shards") or [])),
        ("size in bucket" if "generation" in r else "size on disk", human_bytes(r.get("total_bytes"))),
        ("uncompressed", human_bytes(r.get("raw_bytes"))),
        ("compression ratio", f"{ratio:.2f}x" if ratio else None),
    ]
    if r.get("generation"):
        head.insert(1, ("generation", r["generation"]))
    if r.get("versions_kept"):
        head.insert(2, ("versions kept", ", ".join(str(v) for v in r["versions_kept"]) + " (newest first)"))
    print(key_values(head))
    if r.get("writer", "").startswith("data-juicer ("):
        print("note: written by the original Data-Juicer, not by data-juicer-accel (no manifest, no checksums)")

    if r.get("shards"):
        print("\nShards:")
        rows = [
            [
                s["file"],
                s.get("rows"),
                human_bytes(s.get("bytes")),
                human_bytes(s.get("raw_bytes")) if "raw_bytes" in s else None,
                f"{s['raw_bytes'] / s['bytes']:.2f}x" if s.get("raw_bytes") and s.get("bytes") else None,
                f"{s['xxh3_64']:016x}" if isinstance(s.get("xxh3_64"), int) else s.get("xxh3_64"),
            ]
            for s in r["shards"]
        ]
        print(table(["file", "rows", "bytes", "raw", "ratio", "xxh3-64"], rows, right={1, 2, 3, 4}))
    if r.get("files"):
        files = [f["file"] if isinstance(f, dict) else f for f in r["files"]]
        print(f"\nOther files: {', '.join(files)}")

    _print_ops(r)

    if "config" in r:
        c = r["config"]
        print(f"\nConfig {c['path']} (job id {c['job_id']}):")
        if c["checkpoint_usable"]:
            print(f"  would skip ({len(c['would_skip'])}): {', '.join(c['would_skip']) or '-'}")
        else:
            print("  checkpoint not usable with this config: every op would run")
            if c.get("reason"):
                print(f"  reason: {c['reason']}")
        print(f"  would run  ({len(c['would_run'])}): {', '.join(c['would_run']) or '-'}")

    if "verify" in r:
        v = r["verify"]
        print(f"\nVerify: {'OK' if v['ok'] else 'FAILED'} ({v['checked']})")
    if r["problems"]:
        print("\nDAMAGED:")
        for p in r["problems"]:
            print(f"  {p}")


def _print_ops(r: dict[str, Any]) -> None:
    if r.get("kind") == _RAY_KIND:
        print("\nOps recorded: none (a Ray checkpoint holds one op's output; its name carries the op's index)")
        return
    ops = r.get("ops_recorded")
    print(f"\nOps recorded ({len(ops) if ops is not None else 0}):")
    if ops:
        rows = [[i, op["name"], len(op["args"] or {})] for i, op in enumerate(ops, 1)]
        print(table(["#", "op", "args"], rows, right={0, 2}))
    else:
        print("  none")
