"""`automix bench methods`: every fine-tuning method on one model at several bit widths.

For each (bits, method): prepare the model from a uniform layer configuration (all target layers
at ``bits``, LoRA rank ``--rank``), measure the initialisation time and the perplexity right after
it, fine-tune ``--steps`` AdamW steps on the LM task (measuring the first step's memory exactly as
``run_trial`` does: parameters, gradients, optimizer state, saved activations), then perplexity
and BoolQ accuracy again. A full-precision row gives the reference perplexity, and PEFT's own
LoftQ initialisation is tried as an outside reference (it needs bitsandbytes and CUDA; when it
cannot run, the table says why). Prints a markdown table; ``--out`` also writes it to a file
(rewritten after every row, so a stopped run keeps its finished rows).

On a real model and real text::

    automix bench methods --model smollm2-135m --data builtin:python-docs --quantizer rtn \
        --methods lora qlora loftq quailora apiq apiq-lw qst qeft --boolq-n 0 --no-peft

``--data`` replaces the LM task's built-in text (training, calibration and the held-out rows);
``--quantizer`` is the base-weight quantizer of every method. A method that never quantizes its
base (``lora``) is run once, at the first ``--bits``, and shown as 16-bit.
"""

from __future__ import annotations

import argparse
import platform
import sys
import time
from datetime import datetime, timezone
from typing import Any

from automix.arch import arch_info, target_layer_names, target_layers
from automix.config.layers import LayerSettings
from automix.methods import MethodSettings, get_method
from automix.trial import memory, meter
from automix.trial.data import calibration_batches, get_task
from automix.trial.models import load_model

DEFAULT_METHODS = ["qlora", "loftq", "quailora", "apiq", "apiq-lw", "qst", "qeft"]


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="automix bench methods", description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="builtin:tiny", help="model spec or directory (default builtin:tiny)")
    p.add_argument("--data", default=None,
                   help="LM task data (JSONL, saved dataset or builtin:python-docs; default: built-in synthetic)")
    p.add_argument("--quantizer", default=None, help="base-weight quantizer (rtn, minmax, hqq; default automix's)")
    p.add_argument("--bits", type=int, nargs="+", default=[2, 3, 4], help="bit widths to compare")
    p.add_argument("--methods", nargs="+", default=DEFAULT_METHODS, help="methods to run")
    p.add_argument("--rank", type=int, default=16, help="LoRA rank of every layer")
    p.add_argument("--group-size", type=int, default=64)
    p.add_argument("--steps", type=int, default=30, help="fine-tuning steps after initialisation")
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--seq-len", type=int, default=128)
    p.add_argument("--calib-samples", type=int, default=64)
    p.add_argument("--calib-seq-len", type=int, default=128)
    p.add_argument("--eval-rows", type=int, default=32, help="held-out LM rows for perplexity")
    p.add_argument("--boolq-n", type=int, default=64, help="held-out BoolQ examples for accuracy")
    p.add_argument("--option", action="append", default=[], metavar="METHOD.KEY=VALUE",
                   help="method option, e.g. apiq.epochs=10 (repeatable)")
    p.add_argument("--gap-bits", type=int, nargs=2, default=[4, 8], metavar=("LOW", "HIGH"),
                   help="QuAILoRA target: fraction of the LOW->HIGH-bit perplexity gap closed at init")
    p.add_argument("--no-peft", action="store_true", help="skip the PEFT LoftQ reference")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=None, help="also write the markdown report here")
    return p


def _options(items: list[str]) -> dict[str, dict[str, str]]:
    out: dict[str, dict[str, str]] = {}
    for item in items:
        key, sep, value = item.partition("=")
        method, dot, name = key.partition(".")
        if not sep or not dot:
            raise ValueError(f"--option expects METHOD.KEY=VALUE, got {item!r}")
        out.setdefault(method, {})[name] = value
    return out


def _seed(seed: int) -> None:
    import random

    import torch

    random.seed(seed)
    torch.manual_seed(seed)


def _evaluate(model: Any, tokenizer: Any, lm: Any, boolq: Any, args: argparse.Namespace) -> tuple[float, float]:
    import torch

    model.eval()
    with torch.no_grad():
        ppl = lm.evaluate(model, tokenizer, n_rows=args.eval_rows)["perplexity"]
        acc = boolq.evaluate(model, tokenizer, n=args.boolq_n)["accuracy"] if args.boolq_n else float("nan")
    return float(ppl), float(acc)


def run_one(method_name: str, bits: int, args: argparse.Namespace, opts: dict[str, dict[str, str]],
            steps: int | None = None) -> dict[str, Any]:
    """Prepare, evaluate, fine-tune, evaluate; one row of the table."""
    import torch

    steps = args.steps if steps is None else steps
    _seed(args.seed)
    model, tokenizer = load_model(args.model)
    info = arch_info(model)
    layers = {n: LayerSettings(bits, args.group_size, 0.0, args.rank) for n in target_layer_names(model)}
    lm, boolq = get_task("lm", args.data), get_task("boolq")
    row: dict[str, Any] = {"method": method_name, "bits": bits}
    if method_name == "fp16":  # the unquantized model, no adapter: the reference
        t0 = time.perf_counter()
        row["ppl_init"], row["acc_init"] = _evaluate(model, tokenizer, lm, boolq, args)
        row["eval_s"] = time.perf_counter() - t0
        return row
    method = get_method(method_name)
    quant = {"quantizer": args.quantizer} if args.quantizer else {}
    settings = method.check_settings(MethodSettings(calib_samples=args.calib_samples, calib_seq_len=args.calib_seq_len,
                                                    options=opts.get(method_name, {}), **quant))
    if not getattr(method, "quantize_base", True):
        row["bits"] = 16
    t0 = time.perf_counter()
    calib = None
    if method.needs_calibration:
        calib = calibration_batches(tokenizer, args.calib_samples, args.calib_seq_len, args.seed, lm)
    _seed(args.seed)
    model = method.prepare(model, layers, settings, calib)
    row["init_s"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    row["ppl_init"], row["acc_init"] = _evaluate(model, tokenizer, lm, boolq, args)
    row["eval_s"] = time.perf_counter() - t0
    params = [p for _, p in method.trainable_parameters(model)]
    row["trainable"] = sum(p.numel() for p in params)
    opt = torch.optim.AdamW(params, lr=args.lr)
    batches = lm.train_batches(tokenizer, args.batch_size, args.seq_len, args.seed)
    model.train()
    t_train = time.perf_counter()
    times, cpu_times = [], []
    for step in range(steps):
        batch = next(batches)
        t, c = time.perf_counter(), time.process_time()
        if step == 0:
            with meter.SavedTensorMeter(model) as saved:
                loss = model(**batch).loss
        else:
            loss = model(**batch).loss
        loss.backward()
        opt.step()
        if step == 0:
            measured = meter.measured_breakdown(model, params, opt, saved.bytes)
            predicted = memory.estimate(info, layers, method.memory_profile(info, layers, settings),
                                        batch_size=batch["input_ids"].shape[0], seq_len=batch["input_ids"].shape[1],
                                        config=model.config,
                                        padded="attention_mask" in batch and not bool(batch["attention_mask"].all()))
            row["mem_total"], row["mem_pred"] = measured.total, predicted.accounted
            row["opt_act"] = measured.optimizer_states + measured.activations
        opt.zero_grad(set_to_none=True)
        times.append(time.perf_counter() - t)
        cpu_times.append(time.process_time() - c)  # robust to other jobs on a shared machine
        row.setdefault("first_loss", float(loss.detach()))
        row["last_loss"] = float(loss.detach())
    if times:
        steady = times[1:] or times
        row["step_s"] = sum(steady) / len(steady)
        steady_cpu = cpu_times[1:] or cpu_times
        row["step_cpu_s"] = sum(steady_cpu) / len(steady_cpu)
    row["train_s"] = time.perf_counter() - t_train
    if steps:
        row["ppl_ft"], row["acc_ft"] = _evaluate(model, tokenizer, lm, boolq, args)
    return row


def peft_loftq_reference(args: argparse.Namespace, bits: int) -> dict[str, Any]:
    """PEFT's LoftQ on the same weights (NF4 via bitsandbytes; CUDA only). Returns a row or
    the reason it cannot run here."""
    row: dict[str, Any] = {"method": "peft-loftq", "bits": bits}
    try:
        import torch
        from peft.utils.loftq_utils import loftq_init

        model, _ = load_model(args.model)
        w = next(iter(target_layers(model).values())).weight
        t0 = time.perf_counter()
        loftq_init(w, bits, args.rank, 1)
        row["init_s"] = time.perf_counter() - t0
        row["note"] = "ran on one layer only"
        del torch
    except Exception as exc:  # any failure is the reference's, reported in the table
        row["note"] = f"not runnable here: {type(exc).__name__}: {str(exc).splitlines()[0][:120]}"
    return row


def _fmt(v: Any, kind: str = "") -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        if v != v:
            return "-"
        if kind == "s":
            return f"{v:.3f}" if v < 10 else f"{v:.1f}"
        return f"{v:.3f}" if abs(v) < 100 else f"{v:.1f}"
    if isinstance(v, int) and kind == "kb":
        return f"{v / 1024:.0f}"
    return str(v)


def render(rows: list[dict[str, Any]], args: argparse.Namespace, argv: list[str], targets: list[str]) -> str:
    cols = [("bits", "bits", ""), ("method", "method", ""), ("ppl_init", "ppl init", ""),
            ("ppl_ft", f"ppl after {args.steps} steps", "")]
    if args.boolq_n:
        cols += [("acc_init", "BoolQ acc init", ""), ("acc_ft", "BoolQ acc after", "")]
    cols += [("first_loss", "loss step 1", ""), ("last_loss", "loss last step", ""),
             ("trainable", "trainable params", ""),
            ("mem_total", "peak mem KiB (meas.)", "kb"), ("mem_pred", "predicted KiB", "kb"),
            ("opt_act", "optim+act KiB", "kb"), ("step_s", "step s", "s"), ("step_cpu_s", "step CPU s", "s"), ("init_s", "prepare s", "s"),
            ("train_s", "train s", "s"), ("eval_s", "eval s", "s"), ("note", "note", "")]
    lines = [
        "# Methods benchmark", "",
        f"Command: `automix bench methods {' '.join(argv)}`  ",
        f"Date: {datetime.now(timezone.utc).strftime('%Y-%m-%d %H:%M UTC')}  ",
        f"Machine: {platform.machine()} CPU, {_cores()} cores available to torch, shared with other jobs "
        f"(timings are noisy); python {platform.python_version()}", "",
        f"Model `{args.model}`, data `{args.data or 'built-in'}`, quantizer `{args.quantizer or 'default'}`, "
        f"every target layer at the row's bits, group size {args.group_size}, LoRA rank "
        f"{args.rank} (alpha 16); calibration {args.calib_samples} x {args.calib_seq_len} tokens; fine-tuning "
        f"{args.steps} AdamW steps (lr {args.lr}) on the LM task, batch {args.batch_size} x {args.seq_len}; "
        f"perplexity on {args.eval_rows} held-out LM rows, accuracy on {args.boolq_n} BoolQ examples. Memory is "
        "the exact CPU accounting of the first step (weights + metadata + trainable + grads + AdamW + "
        "saved activations), next to the analytic prediction. prepare s = calibration sampling + the "
        "method's prepare (quantization, initialisation); train s = all steps, including the first step's "
        "memory accounting; eval s = one perplexity evaluation.", "",
        "| " + " | ".join(c[1] for c in cols) + " |",
        "|" + "|".join("---" for _ in cols) + "|",
    ]
    for r in rows:
        lines.append("| " + " | ".join(_fmt(r.get(k), kind) for k, _, kind in cols) + " |")
    lines += ["", "## Targets", ""] + [f"- {t}" for t in targets]
    return "\n".join(lines) + "\n"


def _cores() -> int:
    import torch

    return torch.get_num_threads()


def check_targets(rows: list[dict[str, Any]], args: argparse.Namespace) -> list[str]:
    """The issue's targets, evaluated on the rows (numbers, pass/fail and by how much)."""
    by = {(r["method"], r["bits"]): r for r in rows}
    out = []
    fp = by.get(("fp16", 16), {}).get("ppl_init")
    if fp and ("apiq", 2) in by:
        a, q = by[("apiq", 2)]["ppl_init"], by.get(("qlora", 2), {}).get("ppl_init")
        ok = a <= 1.5 * fp
        out.append(f"2-bit `apiq` post-init perplexity {a:.3f} vs full precision {fp:.3f} = {a / fp:.2f}x "
                   f"(target <= 1.5x: {'met' if ok else 'MISSED'}); `qlora` {q:.3f} = {q / fp:.2f}x" if q else "")
    lo, hi = args.gap_bits
    for b in sorted({lo, *args.bits}):
        if ("quailora", b) not in by or ("qlora", b) not in by or ("qlora", hi) not in by or b >= hi:
            continue
        ql, qh, qa = by[("qlora", b)]["ppl_init"], by[("qlora", hi)]["ppl_init"], by[("quailora", b)]["ppl_init"]
        gap = ql - qh
        what = "target" if b == lo else "for reference"
        if gap <= 1e-3 * qh:
            out.append(f"`quailora` at {b}-bit: no {b}->{hi}-bit gap to close ({b}-bit {ql:.3f} vs {hi}-bit "
                       f"{qh:.3f}; quailora {qa:.3f}); {what} not measurable on this model")
            continue
        frac = (ql - qa) / gap
        verdict = ("met" if frac >= 0.5 else "MISSED") if b == lo else ("would be met" if frac >= 0.5 else "below 50%")
        out.append(f"`quailora` at {b}-bit closes {frac:.0%} of the {b}->{hi}-bit perplexity gap at init "
                   f"({ql:.3f} -> {qa:.3f}, {hi}-bit {qh:.3f}; {what} >= 50%: {verdict})")
    for b in args.bits:
        if ("qst", b) in by and ("qlora", b) in by and "opt_act" in by[("qst", b)]:
            s, q = by[("qst", b)]["opt_act"], by[("qlora", b)]["opt_act"]
            out.append(f"{b}-bit `qst` optimizer+activation memory {s / 1024:.0f} KiB = {s / q:.2f}x of `qlora` "
                       f"{q / 1024:.0f} KiB (target < 0.5x: {'met' if s < 0.5 * q else 'MISSED'})")
        if ("qeft", b) in by and ("qlora", b) in by and "step_s" in by[("qeft", b)]:
            e, q = by[("qeft", b)], by[("qlora", b)]
            ek, qk = ("step_cpu_s", "step_cpu_s") if "step_cpu_s" in e and "step_cpu_s" in q else ("step_s", "step_s")
            out.append(f"{b}-bit `qeft` trains {e['trainable']} params vs `qlora` {q['trainable']} "
                       f"({'fewer' if e['trainable'] < q['trainable'] else 'NOT fewer'}); step {e[ek]:.3f} s vs "
                       f"{q[qk]:.3f} s ({ek}: {'not slower' if e[ek] <= 1.05 * q[qk] else 'SLOWER'}, "
                       "5% timing tolerance)")
    return [t for t in out if t]


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = _parser().parse_args(argv)
    import torch

    torch.set_num_threads(max(1, min(2, torch.get_num_threads())))
    opts = _options(args.option)
    rows = [run_one("fp16", 16, args, opts)]
    print(f"full precision: ppl {rows[0]['ppl_init']:.3f}", file=sys.stderr)
    need_gap = "quailora" in args.methods and "qlora" in args.methods
    extra_bits = [b for b in args.gap_bits if need_gap and b not in args.bits]
    for b in extra_bits:  # reference rows for the QuAILoRA gap, initialisation only
        rows.append(run_one("qlora", b, args, opts, steps=0))
    def write(final: bool) -> str:
        report = render(rows, args, argv, check_targets(rows, args))
        if not final:
            report += "\n(partial: the run is still going)\n"
        if args.out:
            from pathlib import Path

            Path(args.out).parent.mkdir(parents=True, exist_ok=True)
            Path(args.out).write_text(report)
        return report

    for bits in args.bits:
        for name in args.methods:
            if not getattr(get_method(name), "quantize_base", True) and bits != args.bits[0]:
                continue  # full-precision base: the same run at every bits
            row = run_one(name, bits, args, opts)
            rows.append(row)
            print(f"{bits}-bit {name}: " + ", ".join(f"{k}={_fmt(v)}" for k, v in row.items()
                                                   if k not in ("method", "bits")), file=sys.stderr)
            write(final=False)
        if not args.no_peft:
            rows.append(peft_loftq_reference(args, bits))
    print(write(final=True))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
