"""`automix ui`: open the MLflow UI (or, with --optuna, optuna-dashboard) on the study stores.

The server runs as a child in its own process group, and `automix ui` passes Ctrl-C, SIGTERM and
SIGHUP on to the whole group and waits for it: stopping `automix ui` stops the server and its
workers (MLflow's uvicorn workers included), and the port is free again. The tools are run with
this Python (`python -m mlflow`, optuna-dashboard next to it), so an environment that is not
activated works too.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from automix.commands import Subparsers


def add_parser(sub: Subparsers) -> None:
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


def _optuna_dashboard() -> list[str]:
    """How to start optuna-dashboard: when this Python has it, its script next to this interpreter
    (a virtual environment that is not activated has its bin/ off PATH) or its entry point run by
    this interpreter; else one on PATH."""
    import importlib.util
    import shutil

    if importlib.util.find_spec("optuna_dashboard") is not None:
        beside = Path(sys.executable).parent / "optuna-dashboard"
        if beside.is_file() and os.access(beside, os.X_OK):
            return [str(beside)]
        return [sys.executable, "-c", "import sys; from optuna_dashboard._cli import main; sys.exit(main())"]
    if shutil.which("optuna-dashboard"):  # installed elsewhere (e.g. with pipx)
        return [str(shutil.which("optuna-dashboard"))]
    raise SystemExit("optuna-dashboard is not installed: `pip install optuna-dashboard` "
                     "(or `make setup`), then run `automix ui --optuna` again")


def command(args: argparse.Namespace) -> list[str]:
    """The command line `automix ui` runs (a clear error when the tool is missing)."""
    from automix.config.study import default_storage_url, default_tracking_uri  # lazy: CLI start-up (a command loads only what it runs)

    if args.optuna:
        storage = args.storage or default_storage_url()
        return [*_optuna_dashboard(), storage, "--host", args.host, "--port", str(args.port or 8080)]
    uri = args.tracking_uri or default_tracking_uri()
    return [sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", uri,
            "--host", args.host, "--port", str(args.port or 5000)]


# The MLflow UI's runs page for the current Pareto front: the model-training view (MLflow 3
# opens the GenAI one otherwise), the trial runs tagged pareto, sorted by memory. The sort is
# what shows them: with the default sort (by date) the UI nests the matching trial runs under
# their study run, one collapsed row. A study logged by this version saves that view with the
# objectives' columns shown (automix.study.tracking.front_view_state; MLflow's default view hides
# every metric column): its address names the saved view; older ones get the filter and sort.
FRONT_FILTER = "tags.pareto = 'true'"
FRONT_SORT = "metrics.`memory_mib`"
FRONT_VIEW = "automix-pareto-front"   # automix.study.tracking.FRONT_VIEW (tests/test_cli_ui.py checks)


def front_query(saved_view: bool = False) -> str:
    from urllib.parse import urlencode, quote

    if saved_view:  # a search facet in the address would make the page ignore the saved view
        return urlencode({"workflowType": "machine_learning", "viewStateShareKey": FRONT_VIEW}, quote_via=quote)
    return urlencode({"workflowType": "machine_learning", "searchFilter": FRONT_FILTER,
                      "orderByKey": FRONT_SORT, "orderByAsc": "true"}, quote_via=quote)


def _studies(uri: str) -> list[tuple[str, str, bool]]:
    """(experiment id, study name, whether it saved the front view) of the automix studies in a
    SQLite tracking store (read only; nothing for other stores or a missing file)."""
    import sqlite3
    from pathlib import Path

    if not uri.startswith("sqlite:///") or not Path(uri[len("sqlite:///"):]).is_file():
        return []
    try:
        with contextlib.closing(sqlite3.connect(f"file:{uri[len('sqlite:///'):]}?mode=ro", uri=True)) as db:
            return [(str(i), n, bool(v)) for i, n, v in db.execute(
                "SELECT e.experiment_id, e.name, (SELECT COUNT(*) FROM experiment_tags v WHERE "
                "v.experiment_id = e.experiment_id AND v.key = ?) FROM experiments e JOIN experiment_tags t "
                "ON t.experiment_id = e.experiment_id WHERE t.key = 'automix.config.study' "
                "AND e.lifecycle_stage = 'active' ORDER BY e.experiment_id", ("mlflow.sharedViewState." + FRONT_VIEW,))]
    except sqlite3.Error:
        return []


def address(host: str, port: int) -> str:
    """Where a browser on this machine opens a UI listening on host:port."""
    return f"http://{'127.0.0.1' if host in ('0.0.0.0', '::') else host}:{port}"


def front_links(uri: str, host: str, port: int) -> list[str]:
    """One line per study: the address of its Pareto front's trial runs in the MLflow UI."""
    base = address(host, port)
    return [f"{name}: {base}/#/experiments/{eid}/runs?{front_query(saved)}" for eid, name, saved in _studies(uri)]


def serve(cmd: list[str], stop_timeout: float = 10.0) -> int:
    """Run the server ``cmd`` in its own process group until it ends or this process is told to
    stop (SIGINT, SIGTERM, SIGHUP: passed on to the whole group); the group is gone when it returns
    (SIGKILL after ``stop_timeout`` seconds)."""
    proc = subprocess.Popen(cmd, start_new_session=True)
    stopping: list[int] = []

    def forward(signum: int, _frame: object) -> None:
        stopping.append(signum)
        _signal_group(proc.pid, signal.SIGTERM if signum == signal.SIGHUP else signum)

    old = {s: signal.signal(s, forward) for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
    try:
        while True:
            try:
                code = proc.wait()
                break
            except KeyboardInterrupt:  # raised by a handler installed by someone else: go on stopping
                _signal_group(proc.pid, signal.SIGINT)
    finally:
        _stop_group(proc.pid, stop_timeout)
        for s, handler in old.items():
            signal.signal(s, handler)
    return 0 if stopping else code


def _signal_group(pgid: int, sig: int) -> bool:
    """Send ``sig`` to process group ``pgid``; False when no process is left in it."""
    try:
        os.killpg(pgid, sig)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _stop_group(pgid: int, timeout: float) -> None:
    """What is left of the server's group (workers whose parent has gone) is stopped: SIGTERM,
    then SIGKILL when it is still there after ``timeout`` seconds."""
    if not _signal_group(pgid, signal.SIGTERM):
        return
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not _signal_group(pgid, 0):
            return
        time.sleep(0.1)
    _signal_group(pgid, signal.SIGKILL)


def run(args: argparse.Namespace) -> int:
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
    sys.stdout.flush()
    return serve(cmd)
