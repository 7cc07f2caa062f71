"""``data-juicer-accel`` command line: one subcommand per module.

Each module in ``SUBCOMMANDS`` exposes ``NAME``, ``add_parser(subparsers)``
and ``run(args) -> int``. A module with ``PASSTHROUGH = True`` receives the
rest of the command line unparsed, as ``args.argv`` (``dj-process`` hands it
to Data-Juicer's own parser).

For every subcommand, a Ctrl-C ends the command within about a second with
one line on stderr and exit code 130, its temporary directories removed
(see tools/_interrupt.py); a reader that closes stdout early (``| head``)
ends it quietly with exit code 141, as if SIGPIPE had killed it.
"""

from __future__ import annotations

import argparse
import sys
from typing import NoReturn

from data_juicer_accel import __version__
from data_juicer_accel.bench import cli as bench
from data_juicer_accel.tools import _interrupt, dj_process, events, inspect_ckpt

SUBCOMMANDS = [inspect_ckpt, events, dj_process, bench]


class _Parser(argparse.ArgumentParser):
    """A bad argument is one line naming it (not the usage block), exit 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="data-juicer-accel",
        description="Rust-accelerated checkpoints and job events for Data-Juicer.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for module in SUBCOMMANDS:
        module.add_parser(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    try:
        with _interrupt.guard(pools=argv[:1] in (["bench"], ["dj-process"])):
            code = _dispatch(argv)
            sys.stdout.flush()  # inside the try: a closed pipe shows up here
    except BrokenPipeError:
        if not _interrupt.interrupted():
            return _interrupt.stdout_closed()
    except BaseException:
        # The KeyboardInterrupt, or what a library turned it into while
        # unwinding (HF's pool helpers raise a TimeoutError instead).
        if not _interrupt.interrupted():
            raise
    if _interrupt.interrupted():  # also when a subcommand caught its KeyboardInterrupt
        _interrupt.finish()
    return code


def _dispatch(argv: list[str]) -> int:
    for module in SUBCOMMANDS:
        if getattr(module, "PASSTHROUGH", False) and argv[:1] == [module.NAME]:
            return module.run(argparse.Namespace(command=module.NAME, argv=argv[1:]))
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    return args.run(args)


if __name__ == "__main__":
    sys.exit(main())
