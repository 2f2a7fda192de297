"""Measure the built-in model's quantization sensitivity and task accuracies (markdown tables).

    automix bench tiny-model [--model builtin:tiny] [--bits-single 2]

Round-to-nearest (min-max, asymmetric, group 64) through `automix.quant.quantize`. Perplexity is the `lm` task's held-out perplexity
(the built-in mixture `corpus.LM_TASK_MIX`); a second table breaks it down per document kind.
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import sys
import time
from datetime import datetime, timezone

import torch

from automix.arch import linear_weight, target_layers
from automix.builtin import corpus
from automix.trial.pretrain import probe_accuracies
from automix.quant import quantize
from automix.trial.data import LMTask, get_task
from automix.trial.models import load_model


def rtn_dequant(w: torch.Tensor, bits: int, group_size: int = 64) -> tuple[torch.Tensor, str]:
    return quantize(w, bits, group_size=group_size).dequantize(w.dtype), "automix.quant.quantize"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="automix bench tiny-model", description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="builtin:tiny")
    ap.add_argument("--bits-single", type=int, default=2)
    ap.add_argument("--group-size", type=int, default=64)
    ap.add_argument("--probe-n", type=int, default=200)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    model, tok = load_model(args.model)
    lm = get_task("lm")
    layers = target_layers(model)
    originals = {n: linear_weight(m).detach().clone() for n, m in layers.items()}

    def set_bits(names: list[str], bits: int | None) -> str:
        how = "none"
        with torch.no_grad():
            for n in names:
                w = originals[n]
                if bits is None:
                    linear_weight(layers[n]).copy_(w)
                else:
                    dq, how = rtn_dequant(w, bits, args.group_size)
                    linear_weight(layers[n]).copy_(dq)
        return how

    base = lm.evaluate(model, tok)
    base_acc = probe_accuracies(model, tok, args.probe_n)
    print(f"# Built-in model quantization sensitivity ({args.model})\n")
    print(f"date: {datetime.now(timezone.utc):%Y-%m-%d %H:%M UTC}; machine: {platform.machine()} "
          f"{os.cpu_count()}-core CPU, torch {torch.__version__}, {args.threads} threads")
    print(f"command: `automix bench tiny-model {' '.join(argv or sys.argv[1:])}`\n")
    n_params = sum(p.numel() for p in model.parameters())
    print(f"parameters: {n_params:,}; target layers: {len(layers)}; held-out lm tokens: {int(base['tokens'])}\n")

    print("## All layers, round-to-nearest, group", args.group_size, "\n")
    print("| bits | perplexity | change | copy | recall | facts | add | boolq plain | boolq negated |")
    print("|---|---|---|---|---|---|---|---|---|")

    def acc_cells(a: dict) -> str:
        return " | ".join(f"{a[k]:.3f}" for k in ("copy", "recall", "facts", "add", "boolq_plain", "boolq_negated"))

    print(f"| 16 (none) | {base['perplexity']:.4f} | - | {acc_cells(base_acc)} |")
    how = "none"
    for bits in (8, 4, 3, 2):
        how = set_bits(list(layers), bits)
        r = lm.evaluate(model, tok)
        a = probe_accuracies(model, tok, args.probe_n)
        print(f"| {bits} | {r['perplexity']:.4f} | {100 * (r['perplexity'] / base['perplexity'] - 1):+.2f}% "
              f"| {acc_cells(a)} |")
        set_bits(list(layers), None)
    print(f"\nquantizer: {how}\n")

    print("## Per corpus document kind, all layers (perplexity change on 24 rows of each kind)\n")
    kinds = list(corpus.DOC_KINDS)
    kind_tasks = {}
    for k in kinds:
        t = LMTask(eval_rows=24)
        t._eval = corpus.sample_documents(200, seed=corpus.HELDOUT_SEED, mix={k: 1.0})
        kind_tasks[k] = t
    print("| kind | in lm task | nats/token (16) | " + " | ".join(f"{b}-bit" for b in (8, 4, 3, 2)) + " |")
    print("|---|---|---|" + "---|" * 4)
    kind_res: dict[int, dict[str, float]] = {}
    for bits in (None, 8, 4, 3, 2):
        set_bits(list(layers), bits)
        kind_res[bits or 16] = {k: t.evaluate(model, tok)["loss"] for k, t in kind_tasks.items()}
        set_bits(list(layers), None)
    for k in kinds:
        b0 = kind_res[16][k]
        cells = " | ".join(f"{100 * (math.exp(kind_res[b][k] - b0) - 1):+.2f}%" for b in (8, 4, 3, 2))
        print(f"| {k} | {'yes' if k in corpus.LM_TASK_MIX else 'no'} | {b0:.3f} | {cells} |")
    print()

    print(f"## One layer at a time at {args.bits_single}-bit (all others full precision)\n")
    print("| layer | perplexity | change |")
    print("|---|---|---|")
    changes = {}
    for n in layers:
        set_bits([n], args.bits_single)
        r = lm.evaluate(model, tok)
        set_bits([n], None)
        changes[n] = r["perplexity"] / base["perplexity"] - 1
        print(f"| {n} | {r['perplexity']:.4f} | {100 * changes[n]:+.3f}% |")
    pos = sorted(v for v in changes.values())
    hi, lo = pos[-1], min((v for v in pos if v > 0), default=float("nan"))
    print(f"\nlargest / smallest positive single-layer change: {hi:.4f} / {lo:.6f} = {hi / lo:.1f}x; "
          f"median {pos[len(pos) // 2]:.4f}")
    print(f"\ntotal benchmark time {time.perf_counter() - t0:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
