"""`automix status STUDY`: the trials of a study and its Pareto front, as tables."""

from __future__ import annotations

import argparse
from typing import Any

from automix.commands import Subparsers, add_study_argument, output_console, study_argument


def add_parser(sub: Subparsers) -> None:
    p = sub.add_parser("status", help="table of a study's trials and its Pareto front",
                       description="The trials of a study (finished, interrupted, waiting, running), "
                                   "its Pareto front, and which driver runs it.")
    add_study_argument(p)
    p.add_argument("--storage", default=None, help="Optuna storage URL (default: the working dir's SQLite file)")
    p.add_argument("--all", action="store_true", help="list every trial (default: the last 20)")
    p.set_defaults(func=run)


def print_status(cfg: Any, console: Any = None, show_all: bool = False) -> None:
    """Print the trials table (recent ones unless show_all) and the front table.

    Trials without a result are shown as they are: INTERRUPTED (Ctrl-C) and STALE (a driver
    died) ones with their reason, WAITING ones (queued re-runs), RUNNING ones (ORPHANED when no
    live driver holds the study)."""
    from collections import Counter

    from rich.table import Table

    from automix.study.storage import StudyLease, open_study  # lazy: CLI start-up (a command loads only what it runs)
    from automix.study.results import front_table, trials_table
    from automix.config.study import format_size  # lazy: CLI start-up (a command loads only what it runs)

    console = console or output_console()
    study = open_study(cfg, create=False)
    holder = StudyLease(cfg.storage_url, cfg.name).holder()
    alive = holder is not None and holder.alive()
    rows = trials_table(study, cfg, unfinished=True, driver_alive=alive)
    q = cfg.objectives.quality
    n = Counter(r["state"] for r in rows)
    finished = n["COMPLETE"] + n["FAIL"] + n["PRUNED"]
    parts = [f"{finished} finished ({n['FAIL']} failed" + (f", {n['PRUNED']} pruned)" if n["PRUNED"] else ")")]
    parts += [f"{n[k]} {label}" for k, label in (
        ("INTERRUPTED", "interrupted"), ("STALE", "stale"), ("WAITING", "waiting"),
        ("RUNNING", "running"), ("ORPHANED", "left running by a stopped driver")) if n[k]]
    console.print(f"[bold]{cfg.name}[/]: {', '.join(parts)}, budget {format_size(cfg.memory_budget)}")
    if holder is not None:
        state = "driven by" if alive else "last driven by (now dead; the next search takes over)"
        console.print(f"{state} {holder.describe()}")
    if n["INTERRUPTED"] + n["STALE"] + n["ORPHANED"] and not alive:
        console.print("`automix search` on this study re-runs the interrupted trials and continues it")

    def table(title: str, rs: list[dict]) -> Table:
        t = Table(title=title)
        for c in ("trial", "state", "method", q, "memory", "avg bits", "front", "note"):
            t.add_column(c)
        for r in rs:
            t.add_row(str(r["number"]), r["state"], str(r["method"]),
                      "" if r["quality"] is None else f"{r['quality']:.4g}",
                      "" if r["memory_bytes"] is None else format_size(r["memory_bytes"]),
                      "" if r["avg_bits"] is None else f"{r['avg_bits']:.2f}",
                      "*" if r["pareto"] else ("m" if r["pareto_method"] else ""),
                      ("over budget" if not r["feasible"] and r["state"] == "COMPLETE" else "")
                      + r["failure_reason"][:60])
        return t

    shown = rows if show_all else rows[-20:]
    console.print(table(f"trials ({len(shown)} of {len(rows)}; front: * overall, m per method)", shown))
    front = front_table([r for r in rows if r["state"] in ("COMPLETE", "FAIL")])
    if front:
        console.print(table("Pareto front within the budget", front))
    else:
        console.print("Pareto front within the budget: no complete trial within the budget yet")


def run(args: argparse.Namespace) -> int:
    from automix.study.storage import study_from_ref  # lazy: CLI start-up (a command loads only what it runs)

    print_status(study_from_ref(study_argument(args), args.storage), show_all=args.all)
    return 0
