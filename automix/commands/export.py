"""`automix export --study NAME --max-memory 6GiB`: write the chosen front configuration."""

from __future__ import annotations

import argparse
import json

from automix.commands import add_study_argument, study_argument


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("export", help="export the best configuration of a study under a memory limit")
    add_study_argument(p)
    p.add_argument("--max-memory", default=None,
                   help="memory limit with a unit, e.g. 6GiB or 800MiB (default: the study budget)")
    p.add_argument("--pick", choices=["best", "memory", "knee", "accuracy"], default="best",
                   help="best: the best quality objective (highest accuracy, lowest perplexity); "
                        "memory: the least memory; knee: where the front bends (all under the limit; "
                        "'accuracy' is the old name of best)")
    p.add_argument("--out", default=None, help="output directory (default: exported/<study>-trial<N>)")
    p.add_argument("--with-weights", action="store_true",
                   help="also save the quantized checkpoint and trained adapters (re-runs the trial)")
    p.add_argument("--format", dest="formats", action="append", metavar="FORMAT",
                   choices=["automix", "hf", "peft", "llama-cpp"],
                   help="also write: hf (merged checkpoint for transformers), peft (dense base + PEFT "
                        "LoRA adapter), llama-cpp (llama-quantize --tensor-type overrides); repeatable. "
                        "hf and peft re-run the trial for its weights and re-score what they write")
    p.add_argument("--storage", default=None, help="Optuna storage URL (default: the working dir's)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from automix.study.storage import open_study  # lazy: CLI start-up (a command loads only what it runs)
    from automix.export import export_trial, select_trial
    from automix.config.study import format_size, parse_size  # lazy: CLI start-up (a command loads only what it runs)
    from automix.study.storage import study_from_ref  # lazy: CLI start-up (a command loads only what it runs)

    cfg = study_from_ref(study_argument(args), args.storage)
    study = open_study(cfg, create=False)
    limit = parse_size(args.max_memory) if args.max_memory else None
    trial = select_trial(study, cfg, limit, args.pick)
    out = args.out or f"exported/{cfg.name}-trial{trial.number}"
    formats = args.formats or ["automix"]
    if {"hf", "peft"} & set(formats) or args.with_weights:
        print(f"re-running trial {trial.number} to rebuild its weights (as long as the trial took) ...", flush=True)
    path = export_trial(study, cfg, trial, out, with_weights=args.with_weights, formats=formats)
    q = cfg.objectives.quality
    print(f"trial {trial.number} ({trial.user_attrs.get('method')}): {q} {trial.values[0]:.4g}, "
          f"memory {format_size(trial.values[1])} -> {path}/layers.yaml")
    manifest = json.loads((path / "manifest.json").read_text())
    for fmt, info in manifest.get("formats", {}).items():
        metric = next(k for k in info if k not in ("path",) and not k.startswith("automix_"))
        print(f"{fmt}: {path / info['path']} ({metric} {info[metric]:.4g}; automix.load gives "
              f"{info['automix_' + metric]:.4g})")
    if "llama-cpp" in manifest.get("files", {}):
        print(f"llama-cpp: {path}/llama-cpp/quantize.sh (per-tensor types in tensor-types.txt)")
    spec = trial.user_attrs.get("spec") or {}
    print(f"run it again with: automix trial --model {spec.get('model', cfg.model)} --task {cfg.task} "
          f"--method {trial.user_attrs.get('method')} --layers {path}/layers.yaml")
    return 0
