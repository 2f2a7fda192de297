"""`automix profile --model DIR [--task T --data FILE]`: per-layer, per-bits sensitivity proxies,
cached by model, data and settings."""

from __future__ import annotations

import argparse

from automix.commands import Subparsers


def add_parser(sub: Subparsers) -> None:
    p = sub.add_parser(
        "profile", help="measure per-layer quantization sensitivity (cached per model and data)",
        description="Estimate, for every linear layer and bit width, how much quantizing that layer "
        "alone changes the model's next-token distribution, on calibration text from the task's "
        "training data. The default metric, fisher_kl, re-runs only the layer's own block and "
        "carries the change to the output with the Fisher information (one forward and a few "
        "backward passes for the whole model); --exact adds the exact KL (one full forward per "
        "layer and bits: slow). The result is cached under the model's fingerprint, the task, "
        "the data and the settings, and reused by every study of that model and data.")
    p.add_argument("--model", default="builtin:tiny", help="model directory or builtin:tiny|small")
    p.add_argument("--task", default="lm", help="task whose training text calibrates (lm | boolq)")
    p.add_argument("--data", default=None, help="the task's data (JSONL or saved dataset); default: built-in")
    p.add_argument("--bits", type=int, nargs="+", default=[2, 3, 4, 8])
    p.add_argument("--group-size", type=int, default=64)
    p.add_argument("--method", default=None, help="quantizer (rtn | minmax | hqq); default: automix's")
    p.add_argument("--samples", type=int, default=4, help="calibration sequences")
    p.add_argument("--seq-len", type=int, default=128)
    p.add_argument("--draws", type=int, default=16, help="label draws (backward passes) of the Fisher estimate")
    p.add_argument("--exact", action="store_true", help="also the exact single-layer KL (one forward per layer and bits)")
    p.add_argument("--device", default="cpu", help="cpu | cuda")
    p.add_argument("--cache-dir", default=None, help="default: $AUTOMIX_CACHE_DIR or the user cache")
    p.add_argument("--refresh", action="store_true", help="recompute even if cached")
    p.add_argument("--out", default=None, help="also write the profile JSON here")
    p.add_argument("--top", type=int, default=10, help="rows of the most sensitive layers to print")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from automix.trial.sensitivity import DEFAULT_METRIC, load_or_profile  # lazy: CLI start-up (a command loads only what it runs)

    for b in args.bits:
        if b not in (2, 3, 4, 8, 16):
            raise ValueError(f"--bits: {b} is not one of 2, 3, 4, 8, 16")
    metrics = ("fisher_kl", "weighted_error") + (("kl",) if args.exact else ())
    kw = {"method": args.method} if args.method else {}
    prof, path, computed = load_or_profile(
        args.model, bits=args.bits, group_size=args.group_size, n_samples=args.samples,
        seq_len=args.seq_len, metrics=metrics, n_draws=args.draws, task=args.task, data=args.data,
        cache=args.cache_dir, refresh=args.refresh, device=args.device, progress=True, **kw)
    how = f"computed in {prof.seconds:.0f} s" if computed else "cached"
    print(f"{how}: profile of {args.model} on {prof.task} data {prof.data} "
          f"(fingerprint {prof.fingerprint}): {path}")
    metric = "kl" if args.exact else DEFAULT_METRIC
    scores = prof.scores(metric)
    low = min(prof.bits)
    ranked = sorted(scores, key=lambda n: -scores[n].get(low, 0.0))[: args.top]
    header = "layer".ljust(40) + "".join(f"{b}-bit".rjust(12) for b in prof.bits)
    print(f"most sensitive layers by {metric} at {low}-bit:")
    print(header)
    for n in ranked:
        print(n.ljust(40) + "".join(f"{scores[n].get(b, 0.0):12.4g}" for b in prof.bits))
    if args.out:
        prof.save(args.out)
    return 0
