"""``data-juicer-accel`` command line: one sub-command per job.

Each sub-command is a module exposing ``add_arguments(parser)`` and
``run(args) -> int``; adding one is a line in ``SUBCOMMANDS``. Modules are
imported only when their sub-command runs, so ``--help`` stays fast.
"""

from __future__ import annotations

import argparse
import importlib
import sys

#: name -> (module, one-line help)
SUBCOMMANDS = {
    "bench": ("data_juicer_accel.bench.cli", "benchmark checkpoints and job events against the alternatives"),
}


def build_parser(load=None) -> argparse.ArgumentParser:
    from data_juicer_accel import __version__

    parser = argparse.ArgumentParser(
        prog="data-juicer-accel",
        description="Rust-accelerated checkpoints and job-event logging for Data-Juicer.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (module, help_text) in SUBCOMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        if load is None or load == name:
            importlib.import_module(module).add_arguments(p)
        p.set_defaults(_module=module)
    return parser


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    command = next((a for a in argv if not a.startswith("-")), None)
    parser = build_parser(load=command if command in SUBCOMMANDS else None)
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    return int(importlib.import_module(args._module).run(args) or 0)
