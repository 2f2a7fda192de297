"""Sensitivity-profile benchmark: the cheap Fisher profile against the exact single-layer KL.

    python -m automix.bench.sensitivity --model DIR [--task lm --data FILE] [--layers 30]
        [--samples 4 --seq-len 128 --draws 16 --group-size 128] [--out benchmarks/sensitivity.md]

On a random sample of `--layers` target layers and bit widths `--sample-bits`, measures the
exact single-layer KL (one full model forward per layer and bits: what profiles cost before)
and its time per layer; then profiles every layer at `--bits` with the cheap metrics and times
that. Reports Kendall tau of each cheap metric against the exact KL over all sampled
(layer, bits) pairs and within each bit width (the harder ranking: across bit widths the
order is mostly given by the bits), and the extrapolated time of the exact profile.
Both use the same calibration rows, drawn from the task's training text.

``--spread`` instead reports how the sensitivity spreads over all target layers, from the
profile a study uses (cached by ``automix profile``; computed when missing): min / median / max
of ``fisher_kl`` at each bit width, the medians per layer kind and the most sensitive layers.
``--exact-ppl K`` adds, at the lowest bit width, the exact held-out perplexity with only one
layer quantized for the K most sensitive layers and for the median and least sensitive one
(one evaluation of ``--eval-rows`` rows each)::

    automix bench sensitivity --spread --model smollm2-135m --data builtin:python-docs --exact-ppl 3
"""

from __future__ import annotations

import argparse
import datetime as _dt
import os
import platform
import random
import sys
import time
from pathlib import Path

import torch
from scipy.stats import kendalltau

from automix.arch import target_layers
from automix.quant import DEFAULT_METHOD, quantize
from automix.trial.data import calibration_batches, get_task
from automix.trial.models import load_model
from automix.trial.sensitivity import SensitivityProfile, load_or_profile, profile_model


def tau(a: list[float], b: list[float]) -> float:
    return float(kendalltau(a, b).statistic)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="automix bench sensitivity", description=__doc__.split("\n\n")[0])
    p.add_argument("--model", required=True, help="model directory (e.g. SmolLM2-135M from `automix models get`)")
    p.add_argument("--task", default="lm")
    p.add_argument("--data", default=None, help="task data (default: the task's built-in data)")
    p.add_argument("--layers", type=int, default=30, help="layers sampled for the exact KL")
    p.add_argument("--sample-bits", type=int, nargs="+", default=[2, 3, 4])
    p.add_argument("--bits", type=int, nargs="+", default=[2, 3, 4, 8], help="bits of the cheap profile")
    p.add_argument("--group-size", type=int, default=128)
    p.add_argument("--method", default=DEFAULT_METHOD)
    p.add_argument("--samples", type=int, default=4)
    p.add_argument("--seq-len", type=int, default=128)
    p.add_argument("--draws", type=int, default=16, help="label draws (backward passes) of the Fisher estimate")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--exact-json", default=None, help="keep the exact KL of the sample here and reuse it "
                   "(runs with other --draws need not measure it again)")
    p.add_argument("--out", default=None, help="append the result (markdown) to this file")
    p.add_argument("--spread", action="store_true",
                   help="the spread of the (cached) profile over all layers, not the tau comparison")
    p.add_argument("--top", type=int, default=5, help="with --spread: most sensitive layers listed")
    p.add_argument("--exact-ppl", type=int, default=0, metavar="K",
                   help="with --spread: exact single-layer perplexity of the K most sensitive layers (+ median, min)")
    p.add_argument("--eval-rows", type=int, default=32, help="with --exact-ppl: held-out rows scored")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.spread:
        return spread_report(args, argv if argv is not None else sys.argv[1:])

    model, tokenizer = load_model(args.model)
    calib = calibration_batches(tokenizer, args.samples, args.seq_len, seed=0,
                                task=get_task(args.task, args.data))
    names = list(target_layers(model))
    sample = sorted(random.Random(args.seed).sample(names, min(args.layers, len(names))), key=names.index)
    common = dict(group_size=args.group_size, method=args.method)

    load0 = os.getloadavg()[0]
    t0, c0 = time.perf_counter(), time.process_time()
    cheap = profile_model(model, calib, args.bits, metrics=("fisher_kl", "weighted_error"),
                          n_draws=args.draws, seed=args.seed, progress=True, **common)
    t_cheap, cpu_cheap = time.perf_counter() - t0, time.process_time() - c0
    saved = Path(args.exact_json) if args.exact_json else None
    if saved is not None and saved.is_file():  # the same sample, bits, calibration and quantizer
        exact = SensitivityProfile.load(saved)
        t_exact, cpu_exact = exact.seconds, exact.cpu_seconds
        if exact.layers.keys() != set(sample) or exact.bits != args.sample_bits or exact.seq_len != args.seq_len \
                or exact.n_samples != args.samples or (exact.group_size, exact.method) != (args.group_size, args.method):
            raise SystemExit(f"{saved}: made with other settings; delete it or pass another --exact-json")
    else:
        t0, c0 = time.perf_counter(), time.process_time()
        exact = profile_model(model, calib, args.sample_bits, metrics=("kl",), layers=sample, progress=True, **common)
        t_exact, cpu_exact = time.perf_counter() - t0, time.process_time() - c0
        if saved is not None:
            exact.save(saved)
    load1 = os.getloadavg()[0]
    per_pair = t_exact / (len(sample) * len(args.sample_bits))
    pairs_all = len(names) * len([b for b in args.bits if b < 16])
    t_exact_all = per_pair * pairs_all
    cpu_exact_all = cpu_exact / (len(sample) * len(args.sample_bits)) * pairs_all

    rows = []
    for metric in ("fisher_kl", "weighted_error"):
        pairs = [(exact.layers[n]["kl"][b], cheap.layers[n][metric][b]) for n in sample for b in args.sample_bits]
        per_bits = {b: tau([exact.layers[n]["kl"][b] for n in sample], [cheap.layers[n][metric][b] for n in sample])
                    for b in args.sample_bits}
        rows.append((metric, tau(*zip(*pairs)), per_bits))
    spread = sorted(cheap.layers[n]["fisher_kl"][min(args.bits)] for n in names)

    lines = [
        f"### {Path(args.model).name}, task {args.task}, data {args.data or 'built-in'} "
        f"({_dt.date.today()}, {platform.machine()}, {torch.get_num_threads()} threads)",
        "",
        f"`python -m automix.bench.sensitivity {' '.join(argv if argv is not None else sys.argv[1:])}`",
        "",
        f"{len(names)} linears, calibration {args.samples} x {args.seq_len} tokens, {args.method} "
        f"group {args.group_size}; exact KL on {len(sample)} sampled layers x bits {args.sample_bits}.",
        "",
        f"Machine load average {load0:.1f} at the start, {load1:.1f} at the end (other jobs share the "
        f"cores: wall times are upper bounds; CPU time / {args.threads} threads is the idle-machine estimate).",
        "",
        "| profile | what it runs | wall time | CPU time |",
        "|---|---|---|---|",
        f"| exact single-layer KL (before) | one model forward per layer and bits | "
        f"{per_pair:.2f} s per layer-bits (measured on {len(sample) * len(args.sample_bits)}); "
        f"all {len(names)} x {len(args.bits)}: {t_exact_all / 60:.0f} min (extrapolated) | "
        f"{cpu_exact_all / 60:.0f} min (extrapolated) |",
        f"| fisher_kl + weighted_error (now) | 1 forward + {args.draws} backward, one block forward per "
        f"layer and bits | {t_cheap / 60:.1f} min for all {len(names)} x {len(args.bits)} (measured) | "
        f"{cpu_cheap / 60:.1f} min |",
        "",
        "| metric | Kendall tau vs exact KL, all pairs | " + " | ".join(f"tau at {b}-bit" for b in args.sample_bits) + " |",
        "|---|---|" + "---|" * len(args.sample_bits),
    ]
    for metric, t_all, per_bits in rows:
        lines.append(f"| {metric} | {t_all:.3f} | " + " | ".join(f"{per_bits[b]:.3f}" for b in args.sample_bits) + " |")
    lines += ["", f"fisher_kl at {min(args.bits)}-bit across all layers: min {spread[0]:.3g}, median "
              f"{spread[len(spread) // 2]:.3g}, max {spread[-1]:.3g} (speed-up of the profile: "
              f"{t_exact_all / t_cheap:.0f}x)", ""]
    text = "\n".join(lines)
    print(text)
    if args.out:
        with open(args.out, "a") as f:
            f.write(text + "\n")
    return 0


def _kind(name: str) -> str:
    return name.rsplit(".", 1)[-1]


def spread_report(args: argparse.Namespace, argv: list[str]) -> int:
    """Min / median / max of fisher_kl over every layer, per kind, the top layers; optionally
    the exact single-layer perplexity of a few of them."""
    import statistics

    bits = sorted(b for b in args.bits if b < 16)
    prof, path, computed = load_or_profile(args.model, bits=bits, group_size=args.group_size, method=args.method,
                                           n_samples=args.samples, seq_len=args.seq_len, n_draws=args.draws,
                                           task=args.task, data=args.data, progress=True)
    scores = prof.scores("fisher_kl")
    names = list(scores)
    low = bits[0]
    lines = [f"`automix bench sensitivity {' '.join(argv)}`", "",
             f"Profile {'computed' if computed else 'cached'} ({path.name}; {prof.seconds:.0f} s when computed): "
             f"fisher_kl of {len(names)} linears, {args.method} group {args.group_size}, calibration "
             f"{prof.n_samples} x {prof.seq_len} tokens of `{args.data or 'built-in'}`.", "",
             "| bits | min | median | max | max / median | max / min |", "|---|---|---|---|---|---|"]
    for b in bits:
        v = sorted(scores[n][b] for n in names)
        med = statistics.median(v)
        lines.append(f"| {b} | {v[0]:.3g} | {med:.3g} | {v[-1]:.3g} | {v[-1] / med:.0f} | {v[-1] / max(v[0], 1e-30):.0f} |")
    kinds = sorted({_kind(n) for n in names}, key=[_kind(n) for n in names].index)
    lines += ["", f"Median fisher_kl at {low}-bit per layer kind (and its most sensitive layer):", "",
              "| kind | layers | median | max | argmax |", "|---|---|---|---|---|"]
    for k in kinds:
        mine = [n for n in names if _kind(n) == k]
        top = max(mine, key=lambda n: scores[n][low])
        lines.append(f"| {k} | {len(mine)} | {statistics.median(scores[n][low] for n in mine):.3g} | "
                     f"{scores[top][low]:.3g} | {top} |")
    ranked = sorted(names, key=lambda n: -scores[n][low])
    lines += ["", f"Top {args.top} layers by fisher_kl at {low}-bit:", "",
              "| rank | layer | " + " | ".join(f"{b}-bit" for b in bits) + " |", "|---|---|" + "---|" * len(bits)]
    for i, n in enumerate(ranked[: args.top]):
        lines.append(f"| {i + 1} | {n} | " + " | ".join(f"{scores[n][b]:.3g}" for b in bits) + " |")
    text = "\n".join(lines)
    print(text, flush=True)
    if args.exact_ppl:
        text += "\n" + _exact_ppl(args, ranked, scores, low)
    if args.out:
        with open(args.out, "a") as f:
            f.write(text + "\n")
    return 0


def _exact_ppl(args: argparse.Namespace, ranked: list[str], scores: dict, low: int) -> str:
    model, tokenizer = load_model(args.model)
    task = get_task(args.task, args.data)
    layers = target_layers(model)

    def ppl() -> float:
        with torch.no_grad():
            return float(task.evaluate(model, tokenizer, n_rows=args.eval_rows, batch_size=16)["perplexity"])

    base = ppl()
    picks = [(f"top {i + 1}", n) for i, n in enumerate(ranked[: args.exact_ppl])]
    picks += [("median", ranked[len(ranked) // 2]), ("min", ranked[-1])]
    lines = ["", f"Exact held-out perplexity ({args.eval_rows} rows) with only one layer at {low}-bit "
             f"({args.method}, group {args.group_size}); full precision {base:.3f}:", "",
             "| which | layer | fisher_kl | perplexity | delta |", "|---|---|---|---|---|"]
    for label, n in picks:
        m = layers[n]
        w = m.weight.detach().clone()
        with torch.no_grad():
            m.weight.copy_(quantize(w.float(), low, args.group_size, method=args.method).dequantize().to(w.dtype))
        p = ppl()
        with torch.no_grad():
            m.weight.copy_(w)
        lines.append(f"| {label} | {n} | {scores[n][low]:.3g} | {p:.3f} | {p - base:+.3f} |")
        print(lines[-1], flush=True)
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    raise SystemExit(main())
