"""`automix profile --model DIR`: per-layer, per-bits sensitivity proxies, cached by fingerprint."""

from __future__ import annotations

import argparse



def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "profile", help="measure per-layer quantization sensitivity (cached per model)",
        description="Quantize one layer at a time and measure the activation-weighted error and "
        "the KL divergence of the logits on calibration text. The result is cached under the "
        "model's fingerprint and reused by every study of the model.")
    p.add_argument("--model", default="builtin:tiny", help="model directory or builtin:tiny|small")
    p.add_argument("--bits", type=int, nargs="+", default=[2, 3, 4, 8])
    p.add_argument("--group-size", type=int, default=64)
    p.add_argument("--method", default="minmax", help="quantizer (minmax | hqq)")
    p.add_argument("--samples", type=int, default=16, help="calibration sequences")
    p.add_argument("--seq-len", type=int, default=128)
    p.add_argument("--no-kl", action="store_true", help="skip the per-layer KL (one forward per layer and bits)")
    p.add_argument("--cache-dir", default=None, help="default: $AUTOMIX_CACHE_DIR or the user cache")
    p.add_argument("--refresh", action="store_true", help="recompute even if cached")
    p.add_argument("--out", default=None, help="also write the profile JSON here")
    p.add_argument("--top", type=int, default=10, help="rows of the most sensitive layers to print")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from automix.trial.sensitivity import load_or_profile  # lazy: CLI start-up (a command loads only what it runs)

    for b in args.bits:
        if b not in (2, 3, 4, 8, 16):
            raise ValueError(f"--bits: {b} is not one of 2, 3, 4, 8, 16")
    prof, path, computed = load_or_profile(
        args.model, bits=args.bits, group_size=args.group_size, method=args.method,
        n_samples=args.samples, seq_len=args.seq_len, kl=not args.no_kl,
        cache=args.cache_dir, refresh=args.refresh)
    print(f"{'computed' if computed else 'cached'} profile of {args.model} "
          f"(fingerprint {prof.fingerprint}): {path}")
    metric = "weighted_error" if args.no_kl else "kl"
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
