"""CLI sub-commands: one module each, exposing `add_parser(subparsers)`.

Building the parser imports every command module, so each command imports the library it
runs inside its handler (marked `# lazy: CLI start-up`): `automix --help` takes 0.25 s, while
importing what `search`, `export` and `report` need (torch, transformers, Ray, MLflow, plotly)
takes about 8 s on 2 cores.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shlex
from typing import Any, Iterator, Protocol


class Subparsers(Protocol):
    """What `ArgumentParser.add_subparsers()` returns, as the commands use it (argparse's own
    class for it is private)."""

    def add_parser(self, name: str, **kwargs: Any) -> argparse.ArgumentParser: ...


# columns of a command's output when it goes to a pipe or a file (rich would wrap tables at 80)
PIPED_WIDTH = 200


def output_console(**kwargs: Any) -> Any:
    """The rich Console a command prints with: the terminal's width on a terminal; elsewhere (a
    pipe, a file, a CI log) wide enough that a table keeps one line per row, unless COLUMNS says
    otherwise."""
    from rich.console import Console  # lazy: CLI start-up (a command loads only what it runs)

    console = Console(**kwargs)
    if not console.is_terminal and "COLUMNS" not in os.environ:
        console.width = PIPED_WIDTH
    return console


def add_study_argument(parser: argparse.ArgumentParser, what: str = "study name or study file") -> None:
    """The study a command acts on: positional (`automix status NAME`) or `--study NAME`, the
    same in every command."""
    parser.add_argument("study", nargs="?", default=None, metavar="STUDY", help=what)
    parser.add_argument("--study", dest="study_option", default=None, metavar="STUDY",
                        help="the same as the positional STUDY")


def study_argument(args: argparse.Namespace) -> str:
    """The STUDY given positionally or with --study (a clear error when none or two differ)."""
    given = [s for s in (args.study, args.study_option) if s is not None]
    if not given:
        raise ValueError(f"automix {args.command}: which study? give its name or study file "
                         f"(e.g. `automix {args.command} quickstart`)")
    if len(set(given)) > 1:
        raise ValueError(f"automix {args.command}: two different studies given ({given[0]!r} and {given[1]!r})")
    return given[0]


def rerun_command(layers: str) -> str:
    """`automix trial` re-running an exported trial: its layers.yaml carries the model, task,
    method and every training and evaluation setting (steps, batch, sequence length, learning
    rate, evaluation size, checkpointing, ...), so the file alone trains and scores the way the
    study did."""
    return f"automix trial --layers {shlex.quote(layers)}"


@contextlib.contextmanager
def trial_threads(cfg: Any) -> Iterator[None]:
    """A trial run in the CLI's own process (`export --with-weights`, `search --local`) gets, on
    CPU, the threads a Ray task of the study has (`resources.cpus`): the study's time and
    arithmetic, not those of a machine the driver shares. The count is restored after."""
    import torch

    before = torch.get_num_threads()
    if not cfg.resources.gpus:
        torch.set_num_threads(max(1, int(cfg.resources.cpus)))
    try:
        yield
    finally:
        torch.set_num_threads(before)
