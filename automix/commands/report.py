"""`automix report STUDY`: an HTML report (and PNGs) of a study, logged to its MLflow run."""

from __future__ import annotations

import argparse

from automix.commands import Subparsers, add_study_argument, study_argument


def add_parser(sub: Subparsers) -> None:
    p = sub.add_parser(
        "report", help="HTML + PNG report of a study's fronts, hypervolume, calibration and configurations",
        description="Write a self-contained HTML report (plotly, opens offline) and one PNG per view, "
                    "and log them on the study's MLflow parent run (artifacts under report/).",
    )
    add_study_argument(p)
    p.add_argument("--storage", default=None, help="Optuna storage URL (default: the working dir's SQLite file)")
    p.add_argument("--tracking-uri", default=None,
                   help="MLflow tracking URI (default: the one the study recorded, else the working dir's)")
    p.add_argument("--out", default=None, help="output directory (default: reports/<study>)")
    p.add_argument("--compare", nargs="+", default=[], metavar="NAME",
                   help="other studies (same storage) to overlay, e.g. the same model under other samplers")
    p.add_argument("--from-mlflow", action="store_true",
                   help="read the studies from their MLflow experiments (--tracking-uri) instead of the "
                        "Optuna storage (all views but the memory breakdown)")
    p.add_argument("--no-png", action="store_true", help="skip the PNG images (HTML only)")
    p.add_argument("--no-mlflow", action="store_true", help="do not log the report to MLflow")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    args.study = study_argument(args)
    what = ["HTML"] + ([] if args.no_png else ["PNG images"]) + ([] if args.no_mlflow else ["logged to MLflow"])
    names = " vs ".join([args.study, *(args.compare or [])])
    print(f"building the report of {names} ({', '.join(what)}) ...", flush=True)

    from automix.dashboards.report import main  # lazy: CLI start-up (a command loads only what it runs)

    return main(args)
