"""Benchmark of `quant_matmul` against a dense matmul, with a measured copy bandwidth.

    automix bench kernels [--quick] [--shapes 4096x4096 ...] [--m 1 16] [--bits 4]

Shapes are ``in_features x out_features`` of real layers (Llama-2-7B/70B: 4096 and 8192 square,
4096x11008 MLP, 8192x28672 MLP); ``M`` is the number of activation rows (tokens). Reported:
time per call, effective GB/s (packed weight + scales/zeros + activations + output), that as a
percentage of the measured device copy bandwidth, and the speedup over the dense baseline.

On CUDA the quantized path is the Triton kernel and the baseline is an fp16 ``torch.matmul``.
On CPU the quantized path is the torch one (dequantize + matmul, what CPU trials run) and the
baseline is fp32 ``torch.matmul`` (CPU fp16/bf16 matmul is slower than fp32 here, so fp32 is the
fair dense baseline); the large shapes take minutes there, so the CPU default is a reduced set.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import platform
import statistics
import time
from typing import Callable

import torch

from automix.kernels import quant_matmul
from automix.quant import quantize

FULL_SHAPES = ["4096x4096", "8192x8192", "4096x11008", "8192x28672"]
FULL_M = [1, 16, 128, 4096]
CPU_SHAPES = ["4096x4096", "4096x11008"]
CPU_M = [1, 16, 128]
QUICK_SHAPES = ["2048x2048"]
QUICK_M = [1, 16]
BITS = [2, 3, 4, 8]


def _time(fn: Callable[[], object], device: torch.device, min_time: float) -> float:
    """Median seconds per call."""
    if device.type == "cuda":
        import triton.testing

        return triton.testing.do_bench(fn, warmup=25, rep=max(100, int(min_time * 1000))) / 1e3
    fn()  # warm-up (allocations, first-call overheads)
    samples: list[float] = []
    start = time.perf_counter()
    while len(samples) < 3 or (time.perf_counter() - start < min_time and len(samples) < 50):
        t0 = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - t0)
    return statistics.median(samples)


def copy_bandwidth(device: torch.device, mib: int) -> float:
    """Measured device copy bandwidth in bytes/s (read + write of a `mib` MiB buffer)."""
    src = torch.empty(mib * 2**20 // 4, dtype=torch.float32, device=device).uniform_()
    dst = torch.empty_like(src)
    t = _time(lambda: dst.copy_(src), device, 0.5)
    return 2 * src.numel() * 4 / t


def parse_shape(text: str) -> tuple[int, int]:
    try:
        k, n = (int(v) for v in text.lower().split("x"))
    except ValueError as exc:
        raise ValueError(f"shape {text!r}: expected IN_FEATURESxOUT_FEATURES, e.g. 4096x11008") from exc
    return k, n


def bench(shapes: list[str], ms: list[int], bits_list: list[int], group_size: int,
          device: torch.device, backend: str, min_time: float,
          copy_mib: int | None = None) -> tuple[list[dict], float]:
    cuda = device.type == "cuda"
    act_dtype = torch.float16 if cuda else torch.float32
    bw = copy_bandwidth(device, copy_mib or (1024 if cuda else 256))
    rows = []
    for shape in shapes:
        k, n = parse_shape(shape)
        w = (torch.randn(n, k, device=device) * 0.02).to(act_dtype)
        qws = {b: quantize(w, b, group_size) for b in bits_list}
        for m in ms:
            x = torch.randn(m, k, device=device, dtype=act_dtype)
            t_dense = _time(lambda: torch.matmul(x, w.t()), device, min_time)
            ref = torch.matmul(x.float(), w.float().t())
            for b, qw in qws.items():
                fn = lambda: quant_matmul(x, qw, backend=backend)  # noqa: E731
                y = fn()
                deq_ref = torch.matmul(x.float(), qw.dequantize(torch.float32).t())
                err = float((y.float() - deq_ref).norm() / deq_ref.norm())
                t = _time(fn, device, min_time)
                moved = qw.nbytes + x.numel() * x.element_size() + m * n * x.element_size()
                rows.append(dict(shape=shape, m=m, bits=b, group=group_size, time_us=t * 1e6,
                                 gbps=moved / t / 1e9, pct_bw=100 * moved / t / bw,
                                 speedup=t_dense / t, dense_us=t_dense * 1e6, kernel_err=err,
                                 quant_err=float((deq_ref - ref).norm() / ref.norm())))
        del w, qws
    return rows, bw


def table(rows: list[dict]) -> str:
    lines = ["| shape (in x out) | M | bits | group | time (us) | GB/s | % copy BW | dense (us) "
             "| speedup vs dense | kernel rel. err |", "|" + "---|" * 10]
    for r in rows:
        lines.append(f"| {r['shape']} | {r['m']} | {r['bits']} | {r['group']} | {r['time_us']:.1f} | "
                     f"{r['gbps']:.3g} | {r['pct_bw']:.3g} | {r['dense_us']:.1f} | {r['speedup']:.2f}x | "
                     f"{r['kernel_err']:.1e} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="automix bench kernels", description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="one small shape, M in {1,16}: < 1 min on CPU")
    p.add_argument("--shapes", nargs="+", help="IN_xOUT shapes (default: full set on CUDA, reduced on CPU)")
    p.add_argument("--m", type=int, nargs="+", help="activation rows")
    p.add_argument("--bits", type=int, nargs="+", default=BITS)
    p.add_argument("--group-size", type=int, default=128)
    p.add_argument("--device", default="auto", help="auto | cpu | cuda")
    p.add_argument("--backend", default="auto", choices=["auto", "torch", "triton"])
    p.add_argument("--min-time", type=float, default=0.3, help="seconds of timing per measurement")
    p.add_argument("--copy-mib", type=int, help="buffer size for the copy bandwidth (default 1024 CUDA, 256 CPU)")
    p.add_argument("--out", help="also write a markdown report here")
    args = p.parse_args(argv)

    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available() else
                          ("cpu" if args.device == "auto" else args.device))
    cuda = device.type == "cuda"
    if args.quick:
        shapes, ms, set_name = args.shapes or QUICK_SHAPES, args.m or QUICK_M, "quick"
    elif cuda:
        shapes, ms, set_name = args.shapes or FULL_SHAPES, args.m or FULL_M, "full"
    else:
        shapes, ms, set_name = args.shapes or CPU_SHAPES, args.m or CPU_M, "reduced CPU set"
    if not cuda and args.shapes is None and not args.quick:
        print(f"CPU: running the reduced set {CPU_SHAPES} x M={CPU_M}; the full set "
              f"{FULL_SHAPES} x M={FULL_M} is for CUDA (pass --shapes/--m to override).")
    rows, bw = bench(shapes, ms, args.bits, args.group_size, device, args.backend, args.min_time,
                     args.copy_mib)
    if cuda:
        name = torch.cuda.get_device_name(device)
        path = "Triton kernel" if args.backend != "torch" else "torch dequantize+matmul"
        baseline = "torch fp16 matmul"
    else:
        name = f"{platform.machine()} CPU, {torch.get_num_threads()} torch threads"
        path = "Triton interpreter" if args.backend == "triton" else "torch dequantize+matmul (CPU path)"
        baseline = "torch fp32 matmul (fp16/bf16 matmul is slower on this CPU)"
    header = (f"device: {name}; measured copy bandwidth {bw / 1e9:.1f} GB/s; quantized path: {path}; "
              f"dense baseline: {baseline}; shape set: {set_name}")
    text = table(rows)
    print(header)
    print(text)
    if args.out:
        cmd = "automix bench kernels " + " ".join(argv or [])
        with open(args.out, "w") as f:
            f.write(f"# Dequantize-matmul benchmark\n\nCommand: `{cmd.strip()}`  \n"
                    f"Date: {_dt.datetime.now(_dt.timezone.utc):%Y-%m-%d %H:%M} UTC  \n"
                    f"torch {torch.__version__}  \n{header}\n\n{text}\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
