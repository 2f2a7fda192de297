"""The `automix` command line: one sub-command per module in `automix.commands`.

Each command module exposes `add_parser(subparsers)` and keeps its heavy imports (torch, ray,
mlflow) inside the function it runs, so `automix --help` stays fast.
"""

from __future__ import annotations

import argparse
import importlib
import sys


# Order is the order shown by --help.
COMMANDS = ["pretrain", "models", "profile", "trial", "search", "status", "export", "report", "ui", "bench"]


def build_parser() -> argparse.ArgumentParser:
    from automix import __version__  # lazy: CLI start-up (a command loads only what it runs)

    parser = argparse.ArgumentParser(
        prog="automix",
        description="Search per-layer quantization / pruning / adapter mixes under a memory budget.",
    )
    parser.add_argument("--version", action="version", version=f"automix {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMANDS:
        try:
            module = importlib.import_module(f"automix.commands.{name}")
        except ModuleNotFoundError as err:
            if err.name == f"automix.commands.{name}":
                continue  # command not built yet
            raise
        module.add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        result = args.func(args)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except ValueError as err:  # bad input (file, key, value): a message and status 2, no traceback
        print(f"error: {err}", file=sys.stderr)
        return 2
    return int(result or 0)


if __name__ == "__main__":
    sys.exit(main())
