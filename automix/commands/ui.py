"""`automix ui`: open the MLflow UI (or, with --optuna, optuna-dashboard) on the study stores."""

from __future__ import annotations

import argparse
import contextlib


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("ui", help="open the MLflow UI (or optuna-dashboard) on the tracking stores")
    p.add_argument("--tracking-uri", default=None, help="MLflow backend (default: the working dir's SQLite file)")
    p.add_argument("--optuna", action="store_true", help="open optuna-dashboard on the Optuna storage instead")
    p.add_argument("--storage", default=None, help="Optuna storage URL for --optuna (default: the working dir's)")
    p.add_argument("--host", default="127.0.0.1",
                   help="address the UI listens on (default 127.0.0.1: this machine only; "
                        "0.0.0.0: every interface, e.g. to open it from another machine)")
    p.add_argument("--port", type=int, default=None, help="default 5000 (MLflow) / 8080 (optuna-dashboard)")
    p.add_argument("--dry-run", action="store_true", help="print the command instead of running it")
    p.set_defaults(func=run)


def command(args: argparse.Namespace) -> list[str]:
    """The command line `automix ui` runs (a clear error when the tool is missing)."""
    import importlib.util
    import shutil
    import sys

    from automix.config.study import default_storage_url, default_tracking_uri  # lazy: CLI start-up (a command loads only what it runs)

    if args.optuna:
        storage = args.storage or default_storage_url()
        if shutil.which("optuna-dashboard"):
            exe = [shutil.which("optuna-dashboard")]
        elif importlib.util.find_spec("optuna_dashboard") is not None:
            exe = [sys.executable, "-m", "optuna_dashboard"]
        else:
            raise SystemExit("optuna-dashboard is not installed: `pip install optuna-dashboard` "
                             "(or `make setup`), then run `automix ui --optuna` again")
        return [*exe, storage, "--host", args.host, "--port", str(args.port or 8080)]
    uri = args.tracking_uri or default_tracking_uri()
    return [sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", uri,
            "--host", args.host, "--port", str(args.port or 5000)]


# The MLflow UI's runs page for the current Pareto front: the model-training view (MLflow 3
# opens the GenAI one otherwise), the trial runs tagged pareto, sorted by memory. The sort is
# what shows them: with the default sort (by date) the UI nests the matching trial runs under
# their study run, one collapsed row.
FRONT_FILTER = "tags.pareto = 'true'"
FRONT_SORT = "metrics.`memory_mib`"


def front_query() -> str:
    from urllib.parse import urlencode, quote

    return urlencode({"workflowType": "machine_learning", "searchFilter": FRONT_FILTER,
                      "orderByKey": FRONT_SORT, "orderByAsc": "true"}, quote_via=quote)


def _studies(uri: str) -> list[tuple[str, str]]:
    """(experiment id, study name) of the automix studies in a SQLite tracking store (read only;
    nothing for other stores or a missing file)."""
    import sqlite3
    from pathlib import Path

    if not uri.startswith("sqlite:///") or not Path(uri[len("sqlite:///"):]).is_file():
        return []
    try:
        with contextlib.closing(sqlite3.connect(f"file:{uri[len('sqlite:///'):]}?mode=ro", uri=True)) as db:
            return [(str(i), n) for i, n in db.execute(
                "SELECT e.experiment_id, e.name FROM experiments e JOIN experiment_tags t "
                "ON t.experiment_id = e.experiment_id WHERE t.key = 'automix.config.study' "
                "AND e.lifecycle_stage = 'active' ORDER BY e.experiment_id")]
    except sqlite3.Error:
        return []


def address(host: str, port: int) -> str:
    """Where a browser on this machine opens a UI listening on host:port."""
    return f"http://{'127.0.0.1' if host in ('0.0.0.0', '::') else host}:{port}"


def front_links(uri: str, host: str, port: int) -> list[str]:
    """One line per study: the address of its Pareto front's trial runs in the MLflow UI."""
    base = address(host, port)
    return [f"{name}: {base}/#/experiments/{eid}/runs?{front_query()}" for eid, name in _studies(uri)]


def run(args: argparse.Namespace) -> int:
    import subprocess

    from automix.config.study import default_tracking_uri  # lazy: CLI start-up (a command loads only what it runs)

    cmd = command(args)
    print(" ".join(cmd))
    port = args.port or (8080 if args.optuna else 5000)
    print(f"{'optuna-dashboard' if args.optuna else 'MLflow UI'}: {address(args.host, port)}"
          + ("" if args.dry_run else " (Ctrl-C stops it)"))
    if not args.optuna:
        links = front_links(args.tracking_uri or default_tracking_uri(), args.host, args.port or 5000)
        if links:
            print(f"Pareto fronts (filter {FRONT_FILTER}, sorted by memory_mib):")
            print("\n".join(f"  {line}" for line in links))
    if args.dry_run:
        return 0
    try:
        return subprocess.call(cmd)
    except KeyboardInterrupt:
        return 0
