"""``data-juicer-accel`` command line: one subcommand per module.

Each module in ``SUBCOMMAND_MODULES`` exposes ``NAME``, ``add_parser(subparsers)``
and ``run(args) -> int``. A module with ``PASSTHROUGH = True`` receives the
rest of the command line unparsed, as ``args.argv`` (``dj-process`` hands it
to Data-Juicer's own parser).

For every subcommand, a Ctrl-C ends the command within about a second with
one line on stderr and exit code 130, its temporary directories removed
(see tools/_interrupt.py); a reader that closes stdout early (``| head``)
ends it quietly with exit code 141, as if SIGPIPE had killed it. This holds
from the command's first moment: this module and the package's ``__init__``
import nothing heavy, and the subcommands are imported after ``main`` has
taken over SIGINT.
"""

from __future__ import annotations

import argparse
import sys
from types import ModuleType
from typing import NoReturn

from data_juicer_accel.tools import _interrupt

#: The modules of the subcommands, in the order ``--help`` lists them.
SUBCOMMAND_MODULES = [
    "data_juicer_accel.tools.inspect_ckpt",
    "data_juicer_accel.tools.events",
    "data_juicer_accel.tools.dj_process",
    "data_juicer_accel.bench.cli",
]


def subcommands() -> list[ModuleType]:
    """Imported when the command runs, not with this module: by then a
    Ctrl-C is handled (see ``main``)."""
    import importlib

    return [importlib.import_module(name) for name in SUBCOMMAND_MODULES]


class _Parser(argparse.ArgumentParser):
    """A bad argument is one line naming it (not the usage block), exit 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="data-juicer-accel",
        description="Rust-accelerated checkpoints and job events for Data-Juicer.",
    )
    from data_juicer_accel import __version__

    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for module in subcommands():
        module.add_parser(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    # First: whatever this command then imports (pyarrow, Data-Juicer: most
    # of a second) can be interrupted with the one line too.
    with _interrupt.from_the_start():
        return _run_guarded(argv)


def _run_guarded(argv: list[str]) -> int:
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
    for module in subcommands():
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
