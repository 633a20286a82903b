"""The ``basin`` command: one console script with subcommands (``basin --help``).

Each subcommand is a module of :mod:`basin.commands` with a ``register(subparsers)`` function,
listed in :data:`COMMANDS`. A :class:`~unlearn.errors.BasinError`
anywhere becomes one line on stderr and exit status 2, without a traceback.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # steady timings when other jobs share the cores
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import argparse  # noqa: E402
import sys  # noqa: E402

from transformers.utils import logging as hf_logging  # noqa: E402

from basin.commands import audit, calibrate, demo, ls, report, study, sweep, unlearn, world  # noqa: E402
from unlearn import __version__  # noqa: E402
from unlearn.errors import BasinError  # noqa: E402

# subcommand modules, in the order `basin --help` lists them; each has register(subparsers)
COMMANDS = [world, ls, unlearn, audit, report, demo, sweep, calibrate, study]


class Parser(argparse.ArgumentParser):
    """argparse with a one-line refusal: the problem and where to read the fix, exit status 2."""

    def error(self, message: str):
        print(f"{self.prog}: error: {message} (see {self.prog} --help)", file=sys.stderr)
        sys.exit(2)


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog="basin", description="Robust LLM unlearning: unlearn with any optimizer tier, "
        "audit any checkpoint against relearning, quantization and interpolation attacks, report.")
    parser.add_argument("--version", action="version", version="basin " + __version__)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for command in COMMANDS:
        command.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 0
    if getattr(args, "quiet", False):  # also silence transformers' own loading / saving bars
        hf_logging.disable_progress_bar()
    try:
        return int(args.func(args) or 0)
    except BasinError as err:
        print(f"basin: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("basin: interrupted; finished results were kept, rerun the same command to resume",
              file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
