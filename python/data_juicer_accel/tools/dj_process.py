"""``data-juicer-accel dj-process ARGS...``: Data-Juicer's ``dj-process`` with the drop-in.

Applies ``patch_data_juicer()`` and then runs Data-Juicer's own entry point
(``data_juicer.tools.process_data:main``) with ARGS, unchanged.
"""

from __future__ import annotations

import argparse
import sys

NAME = "dj-process"
#: The rest of the command line goes to Data-Juicer unparsed (see cli.py).
PASSTHROUGH = True


def add_parser(subparsers) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        NAME,
        help="run Data-Juicer's dj-process with data-juicer-accel patched in",
        description=(
            "Run Data-Juicer's own dj-process entry point with patch_data_juicer() applied. "
            "Every argument is passed to dj-process (e.g. --config x.yaml)."
        ),
        add_help=False,
    )
    parser.set_defaults(run=run, argv=[])
    return parser


def run(args: argparse.Namespace) -> int:
    from data_juicer_accel.patch import patch_data_juicer

    if not patch_data_juicer():
        print(
            "data-juicer-accel: the installed Data-Juicer could not be patched (see the warning above); "
            "not running it unaccelerated.",
            file=sys.stderr,
        )
        return 2
    from data_juicer.tools.process_data import main as dj_main

    saved_argv = sys.argv
    sys.argv = ["dj-process", *args.argv]
    try:
        result = dj_main()
    finally:
        sys.argv = saved_argv
    return result if isinstance(result, int) else 0
