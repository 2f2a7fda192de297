"""`automix pretrain`: train the built-in Llama-architecture model on the synthetic corpus."""

from __future__ import annotations

import argparse

from automix.commands import Subparsers



def add_parser(subparsers: Subparsers) -> None:
    p = subparsers.add_parser(
        "pretrain",
        help="train the built-in tiny/small model (cached in the user cache dir and reused)",
        description="Train the built-in model on the synthetic corpus (copying, key-value recall, "
                    "addition, BoolQ-style passages, simple text). Without --out the model goes to the "
                    "user cache dir; an existing model there is reused unless --force.",
    )
    p.add_argument("--out", default=None, help="output directory (default: user cache dir)")
    p.add_argument("--size", choices=["tiny", "small"], default="tiny")
    p.add_argument("--steps", type=int, default=None, help="training steps (default: the size's schedule)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--force", action="store_true", help="retrain even if the output already holds a model")
    p.add_argument("--probe", action="store_true", help="print task accuracies after training")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    import torch

    from automix.builtin import cached_model_dir  # lazy: CLI start-up (a command loads only what it runs)
    from automix.trial.pretrain import pretrain, probe_accuracies

    if args.steps is not None and args.steps < 1:
        raise SystemExit(f"automix pretrain: --steps must be >= 1, got {args.steps}")
    out = Path(args.out) if args.out else cached_model_dir(args.size)
    if (out / "model.safetensors").is_file() and not args.force:
        print(f"{out} already holds a model (use --force to retrain)")
    else:
        torch.set_num_threads(min(2, torch.get_num_threads()) or 1)
        pretrain(size=args.size, out=out, steps=args.steps, seed=args.seed)
    if args.probe:
        from automix.trial.data import get_task  # lazy: CLI start-up (a command loads only what it runs)
        from automix.trial.models import load_model

        model, tok = load_model(str(out))
        ppl = get_task("lm").evaluate(model, tok)["perplexity"]
        accs = probe_accuracies(model, tok)
        print(f"held-out perplexity {ppl:.3f}; " + ", ".join(f"{k} {v:.3f}" for k, v in accs.items()))
    print(out)
    return 0
