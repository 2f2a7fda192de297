"""`automix status STUDY`: the trials of a study and its Pareto front, as tables."""

from __future__ import annotations

import argparse
from typing import Any



def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("status", help="table of a study's trials and its Pareto front")
    p.add_argument("study", help="study file or study name")
    p.add_argument("--storage", default=None, help="Optuna storage URL (default: the working dir's SQLite file)")
    p.add_argument("--all", action="store_true", help="list every trial (default: the last 20)")
    p.set_defaults(func=run)


def print_status(cfg: Any, console: Any = None, show_all: bool = False) -> None:
    """Print the trials table (recent ones unless show_all) and the front table."""
    from rich.console import Console
    from rich.table import Table

    from automix.study.storage import open_study  # lazy: CLI start-up (a command loads only what it runs)
    from automix.study.results import front_table, trials_table
    from automix.config.study import format_size  # lazy: CLI start-up (a command loads only what it runs)

    console = console or Console()
    study = open_study(cfg, create=False)
    rows = trials_table(study, cfg)
    q = cfg.objectives.quality
    running = sum(t.state.name in ("RUNNING", "WAITING") for t in study.get_trials(deepcopy=False))
    failed = sum(r["state"] == "FAIL" for r in rows)
    console.print(f"[bold]{cfg.name}[/]: {len(rows)} finished ({failed} failed), {running} running or "
                  f"queued, budget {format_size(cfg.memory_budget)}")

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
    console.print(table("Pareto front within the budget", front_table(rows)))


def run(args: argparse.Namespace) -> int:
    from automix.study.storage import study_from_ref  # lazy: CLI start-up (a command loads only what it runs)

    print_status(study_from_ref(args.study, args.storage), show_all=args.all)
    return 0
