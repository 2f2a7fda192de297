"""CLI sub-commands: one module each, exposing `add_parser(subparsers)`.

Building the parser imports every command module, so each command imports the library it
runs inside its handler (marked `# lazy: CLI start-up`): `automix --help` takes 0.25 s, while
importing what `search`, `export` and `report` need (torch, transformers, Ray, MLflow, plotly)
takes about 8 s on 2 cores.
"""

from __future__ import annotations

import argparse


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
