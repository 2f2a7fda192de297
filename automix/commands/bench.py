"""`automix bench NAME [ARGS]`: run a benchmark (`BENCHMARKS`), print its table."""

from __future__ import annotations

import argparse
import importlib

from automix.commands import Subparsers

# benchmark name -> module exposing main(argv) -> int
BENCHMARKS = {
    "kernels": "automix.bench.kernels",
    "search": "automix.bench.search",
    "fidelity": "automix.bench.fidelity",
    "methods": "automix.bench.methods",
    "trial": "automix.bench.trial",
    "memory": "automix.bench.memory",
    "orchestration": "automix.bench.orchestration",
    "sensitivity": "automix.bench.sensitivity",
    "reliability": "automix.bench.reliability",
    "quant": "automix.bench.quant",
    "boolq": "automix.bench.boolq",
    "tiny-model": "automix.bench.tiny_model",
}


def add_parser(sub: Subparsers) -> None:
    p = sub.add_parser("bench", help="run a benchmark and print its table")
    p.add_argument("which", choices=sorted(BENCHMARKS), help="which benchmark")
    p.add_argument("rest", nargs=argparse.REMAINDER, help="arguments for the benchmark (see its --help)")
    p.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    module = importlib.import_module(BENCHMARKS[args.which])
    return int(module.main(args.rest) or 0)
