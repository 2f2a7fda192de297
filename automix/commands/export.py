"""`automix export --study NAME --max-memory 6GiB`: write the chosen front configuration."""

from __future__ import annotations

import argparse



def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("export", help="export the best configuration of a study under a memory limit")
    p.add_argument("--study", required=True, help="study name (or study file)")
    p.add_argument("--max-memory", default=None, help="memory limit, e.g. 6GiB (default: the study budget)")
    p.add_argument("--pick", choices=["accuracy", "memory", "knee"], default="accuracy",
                   help="best quality, least memory, or the knee of the front under the limit")
    p.add_argument("--out", default=None, help="output directory (default: exported/<study>-trial<N>)")
    p.add_argument("--with-weights", action="store_true",
                   help="also save the quantized checkpoint and trained adapters (re-runs the trial)")
    p.add_argument("--storage", default=None, help="Optuna storage URL (default: the working dir's)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from automix.study.storage import open_study  # lazy: CLI start-up (a command loads only what it runs)
    from automix.export import export_trial, select_trial
    from automix.config.study import format_size, parse_size  # lazy: CLI start-up (a command loads only what it runs)
    from automix.study.storage import study_from_ref  # lazy: CLI start-up (a command loads only what it runs)

    cfg = study_from_ref(args.study, args.storage)
    study = open_study(cfg, create=False)
    limit = parse_size(args.max_memory) if args.max_memory else None
    trial = select_trial(study, cfg, limit, args.pick)
    out = args.out or f"exported/{cfg.name}-trial{trial.number}"
    path = export_trial(study, cfg, trial, out, with_weights=args.with_weights)
    q = cfg.objectives.quality
    print(f"trial {trial.number} ({trial.user_attrs.get('method')}): {q} {trial.values[0]:.4g}, "
          f"memory {format_size(trial.values[1])} -> {path}/layers.yaml")
    spec = trial.user_attrs.get("spec") or {}
    print(f"run it again with: automix trial --model {spec.get('model', cfg.model)} --task {cfg.task} "
          f"--method {trial.user_attrs.get('method')} --layers {path}/layers.yaml")
    return 0
