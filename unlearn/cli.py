"""The ``basin`` command: one console script with subcommands (``basin --help``).

Each subcommand lives beside the code it drives and registers itself through a
``register(subparsers)`` function listed in :data:`COMMANDS`. A :class:`~unlearn.errors.BasinError`
anywhere becomes one line on stderr and exit status 2, without a traceback.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import os
import sys

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # steady timings when other jobs share the cores
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

# subcommand modules, in the order `basin --help` lists them; each has register(subparsers)
COMMANDS = ["unlearn.cli_world", "unlearn.cli_ls", "unlearn.cli_unlearn", "audit.cli", "analysis.cli",
            "analysis.cli_demo", "analysis.cli_sweep"]


def _available(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="basin", description="Robust LLM unlearning: unlearn with any optimizer tier, "
        "audit any checkpoint against relearning, quantization and interpolation attacks, report.")
    parser.add_argument("--version", action="version", version="basin " + _version())
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for module in COMMANDS:
        if _available(module):
            importlib.import_module(module).register(sub)
    return parser


def _version() -> str:
    from unlearn import __version__

    return __version__


def main(argv: list[str] | None = None) -> int:
    from unlearn.errors import BasinError

    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 0
    if getattr(args, "quiet", False):  # also silence transformers' own loading / saving bars
        from transformers.utils import logging as hf_logging

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
