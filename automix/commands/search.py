"""`automix search STUDY.yaml`: run (or continue) a study and print its Pareto front."""

from __future__ import annotations

import argparse



def add_parser(sub: argparse._SubParsersAction) -> None:
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
    from rich.console import Console

    from automix.study.loop import run_study  # lazy: CLI start-up (a command loads only what it runs)
    from automix.study.executors import LocalExecutor
    from automix.config.study import load_study  # lazy: CLI start-up (a command loads only what it runs)
    from automix.study.backend import AutomixBackend, preflight  # lazy: CLI start-up (a command loads only what it runs)

    console = Console()
    cfg = load_study(args.study, workers=args.workers)
    if args.n_trials:
        cfg.n_trials = args.n_trials
    if args.resume:
        import optuna
        from pathlib import Path

        db = cfg.storage_url[len("sqlite:///"):] if cfg.storage_url.startswith("sqlite:///") else None
        try:  # (a missing SQLite file is not created just to be asked)
            names = [] if db is not None and not Path(db).is_file() else optuna.get_all_study_names(cfg.storage_url)
        except Exception:
            names = []
        if cfg.name not in names:
            raise SystemExit(f"--resume: no study {cfg.name!r} in {cfg.storage_url}")
    backend = AutomixBackend(cfg)
    preflight(cfg, backend, cluster=bool(args.ray_address))
    console.print(f"study [bold]{cfg.name}[/]: {len(cfg.methods)} method(s), {cfg.n_trials} trials, "
                  f"{cfg.workers} worker(s); Optuna {cfg.storage_url}; MLflow {cfg.tracking}")
    executor = LocalExecutor(backend.function) if args.local else None
    result = run_study(cfg, backend, executor=executor, ray_address=args.ray_address,
                       ray_timeout_s=args.ray_timeout, takeover=args.takeover, progress=not args.no_progress)
    from automix.commands.status import print_status  # lazy: CLI start-up (a command loads only what it runs)

    print_status(cfg, console)
    if result.requeued:
        console.print(f"{len(result.requeued)} trial(s) a previous driver left unfinished were marked stale; "
                      f"{len(result.reran)} of their configurations finished in this run")
    console.print(f"search loop done in {result.seconds:.0f} s")
    if result.done and result.failed == result.done:
        console.print(f"[red]error:[/] every trial of study {cfg.name!r} failed ({result.failed} of "
                      f"{result.done}); see the reasons above (`automix status {cfg.name} --all`)")
        return 1
    if args.export:
        from automix.study.storage import open_study  # lazy: CLI start-up (a command loads only what it runs)
        from automix.export import export_trial, select_trial

        study = open_study(cfg, create=False)
        trial = select_trial(study, cfg, None, "accuracy")
        path = export_trial(study, cfg, trial, args.export)
        console.print(f"exported trial {trial.number} ({trial.user_attrs.get('method')}, "
                      f"{cfg.objectives.quality} {trial.values[0]:.4g}) to {path}/layers.yaml")
    else:
        console.print(f"export the best configuration under a memory limit with:\n"
                      f"  automix export --study {cfg.name} --max-memory <SIZE> --out exported/{cfg.name}")
    return 0
