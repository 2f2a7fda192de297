"""`automix ui`: open the MLflow UI (or, with --optuna, optuna-dashboard) on the study stores."""

from __future__ import annotations

import argparse



def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("ui", help="open the MLflow UI (or optuna-dashboard) on the tracking stores")
    p.add_argument("--tracking-uri", default=None, help="MLflow backend (default: the working dir's SQLite file)")
    p.add_argument("--optuna", action="store_true", help="open optuna-dashboard on the Optuna storage instead")
    p.add_argument("--storage", default=None, help="Optuna storage URL for --optuna (default: the working dir's)")
    p.add_argument("--host", default="127.0.0.1")
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


def run(args: argparse.Namespace) -> int:
    import subprocess

    cmd = command(args)
    print(" ".join(cmd))
    if args.dry_run:
        return 0
    try:
        return subprocess.call(cmd)
    except KeyboardInterrupt:
        return 0
