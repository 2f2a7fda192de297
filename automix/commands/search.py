"""`automix search STUDY.yaml`: run (or continue) a study and print its Pareto front."""

from __future__ import annotations

import argparse
import contextlib
import shlex
import warnings
from typing import Any

from automix.commands import Subparsers, output_console, rerun_command, trial_threads


def add_parser(sub: Subparsers) -> None:
    p = sub.add_parser("search", help="run or resume a study (Ray trials, Optuna + MLflow tracking)",
                       description="Run a study: the driver asks the sampler for configurations, runs "
                       "them as Ray tasks and records results in Optuna and MLflow. Re-running the "
                       "same study continues it.")
    p.add_argument("study", help="study file (studies/*.yaml)")
    p.add_argument("--workers", type=int, default=None, help="trials in parallel (default: the study's)")
    p.add_argument("--ray-address", default=None,
                   help="join an existing Ray cluster (HOST:PORT or 'auto'); default: start a local Ray")
    p.add_argument("--ray-timeout", type=float, default=30.0, metavar="S",
                   help="give up joining --ray-address after S seconds (default 30)")
    p.add_argument("--takeover", action="store_true",
                   help="take the study over from a driver that holds its lease but is dead (e.g. on "
                   "a lost node); its unfinished trials are re-run")
    p.add_argument("--resume", action="store_true",
                   help="require an existing study and continue it (re-running without it continues too)")
    p.add_argument("--n-trials", type=int, default=None, help="total finished trials to reach")
    p.add_argument("--no-progress", action="store_true", help="no live progress display")
    p.add_argument("--export", metavar="DIR", default=None,
                   help="when the study is done, export its best configuration within the budget to DIR")
    p.add_argument("--local", action="store_true", help="run trials in this process, one at a time (no Ray)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from automix.study.progress import end_step, show_step  # lazy: CLI start-up (a command loads only what it runs)

    console = output_console(highlight=False)
    # the imports, the model's config and the checks take a while before anything else shows
    show_step(console, f"checking {args.study}: model, search space, data and stores ...")
    try:
        with warnings.catch_warnings():
            # how the sampler evaluates the memory model (tables or per candidate) asks nothing of the user
            warnings.filterwarnings("ignore", message="decompose: ", category=UserWarning)
            return _search(args, console)
    finally:
        end_step()


def _search(args: argparse.Namespace, console: Any) -> int:
    from automix.config.study import format_size, load_study  # lazy: CLI start-up (a command loads only what it runs)

    cfg = load_study(args.study, workers=args.workers)  # a typo in the file is reported before the slow imports
    from automix.study.loop import run_study  # lazy: CLI start-up (a command loads only what it runs)
    from automix.study.executors import LocalExecutor
    from automix.study.backend import AutomixBackend, preflight  # lazy: CLI start-up (a command loads only what it runs)
    from automix.study.progress import end_step, show_step  # lazy: CLI start-up (a command loads only what it runs)

    if args.n_trials:
        cfg.n_trials = args.n_trials
    if args.resume:
        import optuna
        from pathlib import Path

        import sqlalchemy.exc

        db = cfg.storage_url[len("sqlite:///"):] if cfg.storage_url.startswith("sqlite:///") else None
        try:  # (a missing SQLite file is not created just to be asked)
            names = [] if db is not None and not Path(db).is_file() else optuna.get_all_study_names(cfg.storage_url)
        except (sqlalchemy.exc.SQLAlchemyError, ImportError, ValueError) as err:
            raise SystemExit(f"--resume: cannot read the studies of {cfg.storage_url}: {err}") from None
        if cfg.name not in names:
            raise SystemExit(f"--resume: no study {cfg.name!r} in {cfg.storage_url}")
    backend = AutomixBackend(cfg)
    preflight(cfg, backend, cluster=bool(args.ray_address))
    end_step()
    at_once = 1 if args.local else cfg.workers
    console.print(f"study [bold]{cfg.name}[/]: {len(cfg.methods)} method(s) ({', '.join(cfg.methods)}), "
                  f"{cfg.n_trials} trials, {at_once} at a time, budget {format_size(cfg.memory_budget)}",
                  soft_wrap=True)
    say(console, f"  Optuna: {cfg.storage_url}")
    say(console, f"  MLflow: {cfg.tracking}")
    from automix.study.tracking import adopt_artifact_roots  # lazy: CLI start-up (a command loads only what it runs)

    adopted = adopt_artifact_roots(cfg.tracking)  # a copied project logs into its own artifact directory
    if adopted:
        say(console, f"  note: {adopted}")
    if args.local:
        show_step(console, "running the trials in this process, one at a time ...")
    elif args.ray_address:
        show_step(console, f"joining the Ray cluster at {args.ray_address} ...")
    else:
        show_step(console, f"starting a local Ray for {cfg.workers} trial(s) at a time ...")
    executor = LocalExecutor(backend.function) if args.local else None
    try:
        with trial_threads(cfg) if args.local else contextlib.nullcontext():
            result = run_study(cfg, backend, executor=executor, ray_address=args.ray_address,
                               ray_timeout_s=args.ray_timeout, takeover=args.takeover,
                               progress=not args.no_progress)
    except KeyboardInterrupt:
        end_step()
        console.print(f"interrupted: the finished trials are kept; `automix search {args.study}` "
                      "continues the study", soft_wrap=True)
        return 130
    from automix.commands.status import print_status  # lazy: CLI start-up (a command loads only what it runs)

    print_status(cfg, console)
    if result.requeued:
        console.print(f"{len(result.requeued)} trial(s) a previous driver left unfinished were marked stale; "
                      f"{len(result.reran)} of their configurations finished in this run")
    console.print(f"search loop done in {result.seconds:.0f} s")
    ref = study_ref(cfg, args.study)
    if result.done and result.failed == result.done:
        console.print(f"[red]error:[/] every trial of study {cfg.name!r} failed ({result.failed} of "
                      f"{result.done}); see the reasons above (`automix status {ref} --all`)", soft_wrap=True)
        return 1
    rerun = None
    if args.export:
        from automix.study.storage import open_study  # lazy: CLI start-up (a command loads only what it runs)
        from automix.export import export_trial, select_trial

        study = open_study(cfg, create=False)
        trial = select_trial(study, cfg, None, "best")
        path = export_trial(study, cfg, trial, args.export)
        console.print(f"exported trial {trial.number} ({trial.user_attrs.get('method')}, "
                      f"{cfg.objectives.quality} {trial.values[0]:.4g}) to {path}/layers.yaml", soft_wrap=True)
        rerun = rerun_command(f"{path}/layers.yaml")
    console.print("next:")
    for line in next_commands(cfg, ref, rerun):
        say(console, f"  {line}")
    return 0


def say(console: Any, line: str) -> None:
    """One plain line (no markup, no wrapping: commands and paths stay copyable)."""
    console.print(line, markup=False, soft_wrap=True)


def study_ref(cfg: Any, study_file: str) -> str:
    """How `status` / `report` / `export` find the study: its name in the working directory's
    store, else its study file (which names its store)."""
    from automix.config.study import default_storage_url  # lazy: CLI start-up (a command loads only what it runs)

    return cfg.name if cfg.storage_url == default_storage_url() else study_file


def _compact_size(n: float) -> str:
    from automix.config.study import format_size  # lazy: CLI start-up (a command loads only what it runs)

    return format_size(n).replace(".00 ", " ").replace(" ", "")


def next_commands(cfg: Any, ref: str, rerun: str | None = None) -> list[str]:
    """The commands to run after a search, each with what it does (`rerun`: the `automix trial`
    command of an exported configuration)."""
    from automix.config.study import default_tracking_uri  # lazy: CLI start-up (a command loads only what it runs)

    q = shlex.quote(ref)
    rows = [(f"automix status {q}", "trials and the Pareto front, as tables"),
            (f"automix report {q}", "HTML + PNG report (also logged to MLflow)")]
    if rerun is None:
        rows.append((f"automix export {q} --max-memory {_compact_size(cfg.memory_budget)} "
                     f"--out {shlex.quote(f'exported/{cfg.name}')}", "the best configuration under a memory limit"))
    else:
        rows.append((rerun, "re-run the exported configuration"))
    if cfg.tracking == default_tracking_uri():
        rows.append(("automix ui", "MLflow UI on every trial's run (prints each study's front page)"))
    elif cfg.tracking.startswith(("http://", "https://")):
        rows.append((f"open {cfg.tracking}", "the MLflow server's UI"))
    else:
        rows.append((f"automix ui --tracking-uri {shlex.quote(cfg.tracking)}",
                     "MLflow UI on the study's tracking store"))
    width = max([len(cmd) for cmd, _ in rows if len(cmd) <= 40] or [0])  # a long one is not aligned
    return [f"{cmd:<{width}}  # {what}" for cmd, what in rows]
