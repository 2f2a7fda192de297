"""The `automix` command line: one sub-command per module in `automix.commands`.

Each command module exposes `add_parser(subparsers)` and keeps its heavy imports (torch, ray,
mlflow) inside the function it runs, so `automix --help` stays fast.

The command line is quiet: `quiet_libraries` turns off the notices and progress bars of the
libraries automix drives (MLflow's INFO lines, transformers' "Loading weights" bars, Ray's
token-authentication notice), in this process and in the local Ray workers it starts; their
warnings and errors still show. `automix --verbose COMMAND` leaves the libraries as they are
(loading a model stays quiet: `automix.trial.models.quiet_loading`).
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys


# Order is the order shown by --help.
COMMANDS = ["pretrain", "models", "profile", "trial", "search", "status", "export", "report", "ui", "bench"]

# Environment variables set (unless the user set them) before a command imports the libraries.
# Local Ray workers inherit the driver's environment, so they are quiet too.
QUIET_ENV = {
    "MLFLOW_LOGGING_LEVEL": "WARNING",    # "Creating initial MLflow database tables", alembic INFO
    "HF_HUB_DISABLE_PROGRESS_BARS": "1",  # transformers' "Loading weights" bar, once per trial
}

# Log records dropped by logger name -> message start: notices that ask nothing of the user.
QUIET_NOTICES = {
    # a new local Ray turns token authentication on and says how to turn it off; it stays on
    "ray._private.authentication.authentication_token_setup": (
        "Token authentication is enabled for this Ray cluster",),
}


class _DropNotices(logging.Filter):
    def __init__(self, starts: tuple[str, ...]) -> None:
        super().__init__()
        self.starts = starts

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith(self.starts)


def quiet_libraries() -> None:
    """Silence library notices and progress bars for this process and the Ray workers it
    starts (environment variables the user set are kept)."""
    for key, value in QUIET_ENV.items():
        os.environ.setdefault(key, value)
    for name, starts in QUIET_NOTICES.items():
        logger = logging.getLogger(name)
        if not any(isinstance(f, _DropNotices) for f in logger.filters):
            logger.addFilter(_DropNotices(starts))


class Parser(argparse.ArgumentParser):
    """argparse with one-line errors: `automix trial: error: ...; see automix trial --help`
    (not the whole usage block)."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message} (see `{self.prog} --help`)\n")


def build_parser() -> argparse.ArgumentParser:
    from automix import __version__  # lazy: CLI start-up (a command loads only what it runs)

    parser = Parser(
        prog="automix",
        description="Search per-layer quantization / pruning / adapter mixes under a memory budget.",
    )
    parser.add_argument("--version", action="version", version=f"automix {__version__}")
    parser.add_argument("--verbose", action="store_true",
                        help="show the libraries' own notices (MLflow's INFO lines, Ray's notices, "
                             "Hugging Face progress bars)")
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
    if not args.verbose:
        quiet_libraries()
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
