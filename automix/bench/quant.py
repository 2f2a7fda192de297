"""Quantization-error benchmark: automix minmax / hqq vs the HQQ library, same bits and groups.

    python -m automix.bench.quant [--rows 1024 --cols 4096] [--out benchmarks/quant_error.md]
    python -m automix.bench.quant --quantizers [--bits 2 3 4 --groups 64 128]

``--quantizers`` compares automix's own quantizers (rtn, minmax, hqq) by relative Frobenius error
``||W - W_hat||_F / ||W||_F`` and time: the table that chose ``automix.quant.DEFAULT_METHOD``.

``--model SPEC [--data DATA]`` measures a real model instead: every target linear quantized at
each (quantizer, bits, group) and the held-out LM perplexity a trial reports (the task's own
evaluation rows, ``--eval-rows`` of them, 16 per batch), one row per setting, written to
``--out`` as each row comes in::

    automix bench quant --model smollm2-135m --data builtin:python-docs --bits 16 8 4 3 2 \
        --groups 64 128 --methods rtn minmax hqq --eval-rows 32 --out FILE.md

The weights are replaced by their dequantized values (the same ``quantize(...).dequantize()``
that a ``QuantLinear`` computes in its forward), so the perplexity is that of a ``--steps 0``
qlora trial without the adapter's (zero) contribution, at plain-matmul speed.

Weights are synthetic (no model downloads): Student-t with 3 degrees of freedom (heavy tails,
like LLM weight outliers), Laplace and Gaussian. Errors are on the dequantized weight:
relative squared error ``||W - W_hat||^2 / ||W||^2`` (what the layer output sees on white
inputs) and mean absolute error. The HQQ library runs its own proximal optimiser
(``optimize=True``, axis=1 = groups along input features, fp32 metadata); automix stores its
scales/zeros in fp16, so it carries the slightly coarser metadata.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import platform
import time

import torch

from automix.quant.quantizer import DEFAULT_METHOD, METHODS, quantize


def hqq_library(w: torch.Tensor, bits: int, group_size: int) -> torch.Tensor | None:
    """Dequantized weight from the HQQ library, or None when it is not installed."""
    try:
        from hqq.core.quantize import Quantizer
    except ImportError:
        return None
    wq, meta = Quantizer.quantize(w.clone(), nbits=bits, group_size=group_size, optimize=True, axis=1,
                                  bitpack=False, compute_dtype=torch.float32, device="cpu")
    return Quantizer.dequantize(wq, meta).reshape(w.shape).float()


def errors(w: torch.Tensor, w_hat: torch.Tensor) -> tuple[float, float]:
    d = w_hat.float() - w
    return float(d.pow(2).sum() / w.pow(2).sum()), float(d.abs().mean())


def weights(kind: str, rows: int, cols: int, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    if kind == "student-t(3)":
        z = torch.randn(rows, cols, generator=gen)
        chi2 = torch.randn(rows, cols, 3, generator=gen).pow(2).sum(-1)
        return z / (chi2 / 3).sqrt() * 0.02
    if kind == "laplace":
        u = torch.rand(rows, cols, generator=gen) - 0.5
        return -torch.sign(u) * torch.log1p(-2 * u.abs()) * 0.02
    if kind == "gaussian":
        return torch.randn(rows, cols, generator=gen) * 0.02
    raise ValueError(f"unknown weight distribution {kind!r}")


def run(rows: int, cols: int, bits_list: list[int], groups: list[int], kinds: list[str]) -> list[dict]:
    out = []
    for kind in kinds:
        w = weights(kind, rows, cols)
        for bits in bits_list:
            for gs in groups:
                row = {"weights": kind, "bits": bits, "group": gs}
                for name, fn in (
                    ("minmax", lambda: quantize(w, bits, gs, method="minmax").dequantize()),
                    ("hqq", lambda: quantize(w, bits, gs, method="hqq").dequantize()),
                    ("hqq-lib", lambda: hqq_library(w, bits, gs)),
                ):
                    t0 = time.perf_counter()
                    w_hat = fn()
                    row[f"{name}_s"] = time.perf_counter() - t0
                    row[name] = errors(w, w_hat) if w_hat is not None else (float("nan"),) * 2
                out.append(row)
    return out


def quantizer_table(rows: int, cols: int, bits_list: list[int], groups: list[int], kinds: list[str]) -> str:
    """Relative Frobenius error and seconds of each automix quantizer (markdown)."""
    head = "| weights | bits | group | " + " | ".join(f"{m} rel. Frobenius" for m in METHODS) + " | " + \
        " | ".join(f"{m} s" for m in METHODS) + " | minmax / rtn | hqq / rtn |"
    lines = [head, "|" + "---|" * (3 + 2 * len(METHODS) + 2)]
    for kind in kinds:
        w = weights(kind, rows, cols)
        for bits in bits_list:
            for gs in groups:
                err, sec = {}, {}
                for m in METHODS:
                    t0 = time.perf_counter()
                    w_hat = quantize(w, bits, gs, method=m).dequantize()
                    sec[m] = time.perf_counter() - t0
                    err[m] = errors(w, w_hat)[0] ** 0.5
                lines.append(f"| {kind} | {bits} | {gs} | " + " | ".join(f"{err[m]:.4f}" for m in METHODS) + " | "
                             + " | ".join(f"{sec[m]:.2f}" for m in METHODS)
                             + f" | {err['minmax'] / err['rtn']:.3f} | {err['hqq'] / err['rtn']:.3f} |")
    return "\n".join(lines)


def table(rows: list[dict]) -> str:
    head = ("| weights | bits | group | rel. sq. err minmax | hqq (automix) | HQQ library | automix/library "
            "| MAE automix hqq | MAE library | time automix / library (s) |")
    lines = [head, "|" + "---|" * 10]
    for r in rows:
        ratio = r["hqq"][0] / r["hqq-lib"][0] if r["hqq-lib"][0] == r["hqq-lib"][0] else float("nan")
        lines.append(
            f"| {r['weights']} | {r['bits']} | {r['group']} | {r['minmax'][0]:.3e} | {r['hqq'][0]:.3e} | "
            f"{r['hqq-lib'][0]:.3e} | {ratio:.3f} | {r['hqq'][1]:.3e} | {r['hqq-lib'][1]:.3e} | "
            f"{r['hqq_s']:.2f} / {r['hqq-lib_s']:.2f} |"
        )
    return "\n".join(lines)


def model_perplexity(argv: list[str], args: argparse.Namespace) -> int:
    """Held-out perplexity of a real model quantized uniformly per (quantizer, bits, group)."""
    from pathlib import Path

    # lazy: only the --model mode needs a real model (transformers); the synthetic tables do not
    from automix.arch import target_layers  # lazy: see above
    from automix.trial.data import get_task  # lazy: see above
    from automix.trial.models import load_model  # lazy: see above

    torch.set_num_threads(max(1, min(args.threads, torch.get_num_threads())))
    model, tokenizer = load_model(args.model)
    task = get_task("lm", args.data)
    layers = target_layers(model)
    orig = {n: m.weight.detach().clone() for n, m in layers.items()}
    n_params = sum(w.numel() for w in orig.values())
    cmd = "automix bench quant " + " ".join(argv)
    lines = ["| quantizer | bits | group | perplexity | x fp | quantize s | eval s |", "|---|---|---|---|---|---|---|"]

    def evaluate() -> tuple[float, float]:
        t0 = time.perf_counter()
        with torch.no_grad():
            out = task.evaluate(model, tokenizer, n_rows=args.eval_rows, batch_size=16)
        return float(out["perplexity"]), time.perf_counter() - t0

    def write(final: bool) -> None:
        text = "\n".join(lines)
        print(lines[-1], flush=True)
        if args.out:
            Path(args.out).parent.mkdir(parents=True, exist_ok=True)
            Path(args.out).write_text(
                f"Command: `{cmd}`  \nDate: {_dt.datetime.now(_dt.timezone.utc):%Y-%m-%d %H:%M} UTC  \n"
                f"Machine: {platform.machine()} CPU, {torch.get_num_threads()} torch threads, torch "
                f"{torch.__version__}  \nModel `{args.model}`: all {len(orig)} target linears "
                f"({n_params / 1e6:.1f} M weights) quantized; perplexity on {args.eval_rows} held-out rows of "
                f"`{args.data}`.\n\n{text}\n" + ("" if final else "\n(partial: the run is still going)\n"))

    fp, fp_s = evaluate()
    lines.append(f"| - | 16 | - | {fp:.3f} | 1.000 | - | {fp_s:.1f} |")
    write(False)
    for method in args.methods:
        for bits in args.bits:
            if bits >= 16:
                continue
            for gs in args.groups:
                t0 = time.perf_counter()
                with torch.no_grad():
                    for n, m in layers.items():
                        w_hat = quantize(orig[n].float(), bits, gs, method=method).dequantize()
                        m.weight.copy_(w_hat.to(m.weight.dtype))
                q_s = time.perf_counter() - t0
                ppl, e_s = evaluate()
                lines.append(f"| {method} | {bits} | {gs} | {ppl:.3f} | {ppl / fp:.3f} | {q_s:.1f} | {e_s:.1f} |")
                write(False)
    with torch.no_grad():
        for n, m in layers.items():
            m.weight.copy_(orig[n])
    write(True)
    return 0


def main(argv: list[str] | None = None) -> int:
    import sys

    argv = list(sys.argv[1:] if argv is None else argv)
    p = argparse.ArgumentParser(prog="automix bench quant", description=__doc__.splitlines()[0])
    p.add_argument("--rows", type=int, default=1024)
    p.add_argument("--cols", type=int, default=4096)
    p.add_argument("--bits", type=int, nargs="+", default=[2, 3, 4, 8])
    p.add_argument("--groups", type=int, nargs="+", default=[64, 128])
    p.add_argument("--weights", nargs="+", default=["student-t(3)", "laplace", "gaussian"])
    p.add_argument("--out", help="also write the markdown report here")
    p.add_argument("--quantizers", action="store_true",
                   help=f"compare automix's quantizers ({', '.join(METHODS)}; default {DEFAULT_METHOD}) only")
    p.add_argument("--model", default=None,
                   help="a real model (spec or directory): held-out perplexity per quantizer, bits and group")
    p.add_argument("--data", default=None, help="with --model: the LM task's data (e.g. builtin:python-docs)")
    p.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS),
                   help="with --model: quantizers to compare")
    p.add_argument("--eval-rows", type=int, default=32, help="with --model: held-out rows scored")
    p.add_argument("--threads", type=int, default=2, help="with --model: torch threads (at most)")
    args = p.parse_args(argv)
    if args.model:
        return model_perplexity(argv, args)
    if args.quantizers:
        print(quantizer_table(args.rows, args.cols, args.bits, args.groups, args.weights))
        return 0
    rows = run(args.rows, args.cols, args.bits, args.groups, args.weights)
    text = table(rows)
    print(text)
    if args.out:
        cmd = "python -m automix.bench.quant " + " ".join(argv or [])
        with open(args.out, "w") as f:
            f.write(
                f"# Quantization error: automix `minmax` / `hqq` vs the HQQ library\n\n"
                f"Command: `{cmd.strip()}`  \nDate: {_dt.datetime.now(_dt.timezone.utc):%Y-%m-%d %H:%M} UTC  \n"
                f"Machine: {platform.machine()} CPU, {torch.get_num_threads()} torch threads, torch "
                f"{torch.__version__}  \nWeight matrix: {args.rows} x {args.cols}, groups along input "
                f"features. `automix/library` < 1 means automix's hqq has the lower error.\n"
                f"Relative squared error = ||W - W_hat||^2 / ||W||^2; MAE = mean |W - W_hat|.\n\n"
                f"{text}\n"
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
