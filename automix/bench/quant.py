"""Quantization-error benchmark: automix minmax / hqq vs the HQQ library, same bits and groups.

    python -m automix.bench.quant [--rows 1024 --cols 4096] [--out benchmarks/quant_error.md]
    python -m automix.bench.quant --quantizers [--bits 2 3 4 --groups 64 128]

``--quantizers`` compares automix's own quantizers (rtn, minmax, hqq) by relative Frobenius error
``||W - W_hat||_F / ||W||_F`` and time: the table that chose ``automix.quant.DEFAULT_METHOD``.

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


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m automix.bench.quant", description=__doc__.splitlines()[0])
    p.add_argument("--rows", type=int, default=1024)
    p.add_argument("--cols", type=int, default=4096)
    p.add_argument("--bits", type=int, nargs="+", default=[2, 3, 4, 8])
    p.add_argument("--groups", type=int, nargs="+", default=[64, 128])
    p.add_argument("--weights", nargs="+", default=["student-t(3)", "laplace", "gaussian"])
    p.add_argument("--out", help="also write the markdown report here")
    p.add_argument("--quantizers", action="store_true",
                   help=f"compare automix's quantizers ({', '.join(METHODS)}; default {DEFAULT_METHOD}) only")
    args = p.parse_args(argv)
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
