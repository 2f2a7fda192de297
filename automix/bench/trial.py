"""`automix bench trial`: how long a trial takes and whether the memory model tells the truth.

Two tables:

1. Speed: a 4-bit QLoRA trial of ``--steps`` (50) steps on the built-in tiny model
   (target: under 30 s of training on a 2-core CPU), with prepare / train / eval seconds.
2. Memory: one training step at 2, 3, 4, 8 and 16 bits, and 2 bits with 30% structured pruning,
   measured (CPU: exact accounting; CUDA: ``max_memory_allocated``) against
   ``automix.trial.memory.estimate``, with the parameter and optimizer bytes checked for equality.

``--compare 16,4,3`` adds a side-by-side speed table: full-precision LoRA against quantized
trials (``--compare-methods``, QLoRA by default) on the same model and data, run interleaved
``--repeats`` times (fp32, 4, 3, fp32, 4, 3, ...) so that a shared machine's load falls on all of
them alike; per row the run with the least trial CPU time (the least disturbed by other jobs: on
a shared machine a starved run's OpenMP threads spin and inflate even its CPU time), with its
prepare / train / eval wall seconds and each row's ratio to full precision.

``--out FILE.md`` also writes the tables as markdown with the command, date and machine.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import platform
import sys
import time

from automix.arch import target_layer_names
from automix.config.layers import LayerConfig
from automix.methods import available_methods, get_method
from automix.trial import memory, meter, run_trial


def _row(cells: list[str]) -> str:
    return "| " + " | ".join(cells) + " |"


def _mib(n: int | None) -> str:
    return "-" if n is None else f"{n / 2**20:.3f}"


def _machine() -> str:
    import torch

    if torch.cuda.is_available():
        return f"{torch.cuda.get_device_name(0)}, torch {torch.__version__}"
    return f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__} CPU, {torch.get_num_threads()} threads"


def _family_models() -> dict:
    from transformers import (GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM, MistralConfig,
                              MistralForCausalLM, OPTConfig, OPTForCausalLM, Qwen2Config, Qwen2ForCausalLM)

    common = dict(vocab_size=512, hidden_size=128, intermediate_size=352, num_hidden_layers=4,
                  num_attention_heads=8, num_key_value_heads=2, max_position_embeddings=256)
    return {
        "llama (GQA)": lambda: LlamaForCausalLM(LlamaConfig(**common)),
        "mistral": lambda: MistralForCausalLM(MistralConfig(**common)),
        "qwen2 (qkv bias)": lambda: Qwen2ForCausalLM(Qwen2Config(**common)),
        "opt (dropout 0.1)": lambda: OPTForCausalLM(OPTConfig(vocab_size=512, hidden_size=128, ffn_dim=352,
                                                              num_hidden_layers=4, num_attention_heads=8,
                                                              max_position_embeddings=256, word_embed_proj_dim=128)),
        "gpt2 (attn dropout)": lambda: GPT2LMHeadModel(GPT2Config(vocab_size=512, n_embd=128, n_layer=4, n_head=8,
                                                                  n_positions=256, bos_token_id=0, eos_token_id=0)),
    }


def _families(emit) -> None:
    """Memory model vs exact CPU accounting on one step of random models of each family."""
    import torch

    emit("## Memory model on other families (random init, batch 4 x 64, rank 8, group 64), bytes")
    emit()
    emit(_row(["family", "method", "measured", "predicted", "error", "params & optimizer exact"]))
    emit(_row(["---"] * 6))
    for fam, build in _family_models().items():
        for meth, bits in (("lora", 16), ("qlora", 4), ("qlora", 2)):
            torch.manual_seed(0)
            model = build()
            ls = LayerConfig({"bits": bits, "rank": 8, "group_size": 64}).resolve(target_layer_names(model))
            est = memory.estimate(model.config, ls, meth, batch_size=4, seq_len=64)
            method = get_method(meth)
            prepared = method.prepare(model, ls)
            prepared.train()
            params = [p for _, p in method.trainable_parameters(prepared)]
            opt = torch.optim.AdamW(params)
            ids = torch.randint(0, 512, (4, 64))
            with meter.SavedTensorMeter(prepared) as saved:
                loss = prepared(input_ids=ids, labels=ids).loss
            loss.backward()
            opt.step()
            got = meter.measured_breakdown(prepared, params, opt, saved.bytes)
            exact = all(getattr(est, k) == getattr(got, k) for k in
                        ("weights", "quant_metadata", "adapters", "gradients", "optimizer_states"))
            emit(_row([fam, f"{meth} {bits}-bit", str(got.total), str(est.accounted),
                       f"{100 * (est.accounted - got.total) / got.total:+.2f}%", "yes" if exact else "NO"]))


def _compare(base: dict, args: argparse.Namespace, emit) -> list[dict]:
    """Full precision vs quantized trials, interleaved; a row per (bits, method): its least
    disturbed run (least trial CPU time)."""
    bits_list = [int(b) for b in args.compare.split(",")]
    rows = [(16, "lora")] if 16 in bits_list else []
    rows += [(b, m) for b in bits_list if b != 16 for m in args.compare_methods.split(",")]
    runs: dict[tuple[int, str], list[dict]] = {row: [] for row in rows}
    for _ in range(args.repeats):
        for bits, method in rows:
            c0 = time.process_time()
            r = run_trial({**base, "method": method, "steps": args.steps,
                           "layers": {"default": {"bits": bits, "group_size": 64, "rank": args.rank}}})
            d = r.to_dict()
            d["trial_cpu_seconds"] = time.process_time() - c0
            runs[(bits, method)].append(d)
    emit(f"## Side by side: full precision vs quantized trials ({args.steps} steps, batch {args.batch_size} x "
         f"{args.seq_len}, rank {args.rank}, group 64; per row the least disturbed of {args.repeats} interleaved runs)")
    emit()
    emit(_row(["bits", "method", "perplexity", "prepare s", "train s", "train CPU s", "eval s",
               "total s", "trial CPU s", "total / fp32", "trial CPU / fp32"]))
    emit(_row(["---"] * 11))
    out = []
    ref: dict | None = None
    for (bits, method), ds in runs.items():
        ok = [d for d in ds if d["status"] == "ok"]
        if not ok:
            emit(_row([str(bits), method, "failed"] + ["-"] * 7 + [str(ds[-1]["failure_reason"])[:60]]))
            continue
        best = min(ok, key=lambda d: d["trial_cpu_seconds"])
        row = {k: best[k] for k in ("perplexity", "prepare_seconds", "train_seconds", "train_cpu_seconds",
                                    "eval_seconds", "trial_cpu_seconds")}
        row["total_seconds"] = row["prepare_seconds"] + row["train_seconds"] + row["eval_seconds"]
        if bits == 16:
            ref = row
        ratio = (lambda k: f"{row[k] / ref[k]:.2f}" if ref else "-")
        emit(_row([str(bits), method, f"{row['perplexity']:.3f}", f"{row['prepare_seconds']:.2f}",
                   f"{row['train_seconds']:.2f}", f"{row['train_cpu_seconds']:.2f}",
                   f"{row['eval_seconds']:.2f}", f"{row['total_seconds']:.2f}",
                   f"{row['trial_cpu_seconds']:.2f}", ratio("total_seconds"), ratio("trial_cpu_seconds")]))
        out.append({"bits": bits, "method": method, **row, "runs": ds})
    emit()
    emit("total s = prepare + train + eval wall seconds (prepare includes loading the model from its "
         "converted copy, quantizing, pruning and initialising adapters); trial CPU s is this process's "
         "CPU time over the whole `run_trial` call.")
    emit()
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="automix bench trial", description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="builtin:tiny")
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--seq-len", type=int, default=128)
    p.add_argument("--rank", type=int, default=8)
    p.add_argument("--device", default="auto")
    p.add_argument("--dtype", default="float32")
    p.add_argument("--skip-speed", action="store_true")
    p.add_argument("--skip-memory", action="store_true")
    p.add_argument("--methods", action="store_true",
                   help="also measure one step of every registered method against its memory profile")
    p.add_argument("--families", action="store_true",
                   help="also check the memory model on small random Llama/Mistral/Qwen2/OPT/GPT-2 models")
    p.add_argument("--compare", metavar="BITS",
                   help="side-by-side speed of full precision and quantized trials, e.g. 16,4,3")
    p.add_argument("--compare-methods", default="qlora", metavar="M1,M2",
                   help="methods of the quantized rows of --compare (default qlora; 16 bits is always lora)")
    p.add_argument("--repeats", type=int, default=2, help="interleaved repeats of each --compare row")
    p.add_argument("--data", default=None, help="task data (a JSONL file or builtin:python-docs)")
    p.add_argument("--out", help="write the tables to this markdown file")
    p.add_argument("--json", help="write raw results to this JSON file")
    args = p.parse_args(argv)

    base = {"model": args.model, "task": "lm", "batch_size": args.batch_size, "seq_len": args.seq_len,
            "device": args.device, "dtype": args.dtype, "eval_batches": 2, "eval_batch_size": 16}
    if args.data:
        base["data"] = args.data
    lines: list[str] = []
    raw: dict = {}

    def emit(s: str = "") -> None:
        print(s, flush=True)
        lines.append(s)

    if not args.skip_speed:
        t0 = time.perf_counter()
        r = run_trial({**base, "method": "qlora", "steps": args.steps,
                       "layers": {"default": {"bits": 4, "group_size": 64, "rank": args.rank}}})
        wall = time.perf_counter() - t0
        raw["speed"] = r.to_dict()
        emit(f"## 4-bit QLoRA trial, {args.steps} steps, batch {args.batch_size} x {args.seq_len}, rank {args.rank}")
        emit()
        emit(_row(["status", "first loss", "last loss", "perplexity", "prepare s", "train s",
                   "train CPU s", "eval s", "wall s (incl. imports)", "tokens/s", "load avg"]))
        emit(_row(["---"] * 11))
        emit(_row([r.status, f"{r.first_loss:.4f}" if r.first_loss else "-",
                   f"{r.last_loss:.4f}" if r.last_loss else "-",
                   f"{r.perplexity:.3f}" if r.perplexity else "-", f"{r.prepare_seconds:.2f}",
                   f"{r.train_seconds:.2f}", f"{r.train_cpu_seconds:.2f}", f"{r.eval_seconds:.2f}",
                   f"{wall:.1f}", f"{r.tokens_per_second:.0f}" if r.tokens_per_second else "-",
                   " ".join(f"{x:.1f}" for x in os.getloadavg())]))
        emit()
        emit("train CPU s is the process CPU time over all threads; on a machine shared with other "
             "jobs it bounds what the training costs better than wall time does.")
        if r.status != "ok":
            emit(f"failure: {r.failure_reason}")
        emit()

    if args.compare:
        raw["compare"] = _compare(base, args, emit)

    configs = [] if args.skip_memory else [("2-bit", 2, 0.0), ("3-bit", 3, 0.0), ("4-bit", 4, 0.0), ("8-bit", 8, 0.0),
               ("16-bit", 16, 0.0), ("2-bit + 30% pruned", 2, 0.3), ("4-bit + 30% pruned", 4, 0.3)]
    if configs:
        emit(f"## Memory of one QLoRA training step (rank {args.rank}, group 64, batch {args.batch_size} x "
             f"{args.seq_len}), MiB")
        emit()
        emit(_row(["config", "measured", "predicted", "error", "weights+meta", "adapters+grads+optim",
                   "activations (meas / pred)", "params & optimizer exact"]))
        emit(_row(["---"] * 8))
    raw["memory"] = {}
    for label, bits, prune in configs:
        r = run_trial({**base, "method": "qlora", "steps": 1,
                       "layers": {"default": {"bits": bits, "group_size": 64, "rank": args.rank, "prune": prune}}})
        raw["memory"][label] = r.to_dict()
        if r.status != "ok":
            emit(_row([label, "failed", "-", "-", "-", "-", "-", str(r.failure_reason)[:80]]))
            continue
        m, q = r.memory_measured, r.memory_predicted
        exact = all(m[k] == q[k] for k in ("weights", "quant_metadata", "adapters", "gradients", "optimizer_states"))
        err = (r.predicted_memory_bytes - r.peak_memory_bytes) / r.peak_memory_bytes
        emit(_row([label, _mib(r.peak_memory_bytes), _mib(r.predicted_memory_bytes), f"{100 * err:+.1f}%",
                   _mib(m["weights"] + m["quant_metadata"]),
                   _mib(m["adapters"] + m["gradients"] + m["optimizer_states"]),
                   f"{_mib(m['activations'])} / {_mib(q['activations'])}", "yes" if exact else "NO"]))
    mem = raw["memory"]
    ok = [k for k in ("2-bit", "4-bit", "8-bit", "16-bit") if k in mem and mem[k]["status"] == "ok"]
    if len(ok) == 4 and mem["2-bit + 30% pruned"]["status"] == "ok":
        peaks = [mem[k]["peak_memory_bytes"] for k in ok]
        order = all(a < b for a, b in zip(peaks, peaks[1:]))
        pr = mem["2-bit + 30% pruned"]
        saved_meas = mem["2-bit"]["peak_memory_bytes"] - pr["peak_memory_bytes"]
        saved_pred = mem["2-bit"]["predicted_memory_bytes"] - pr["predicted_memory_bytes"]
        emit()
        emit(f"Ordering 2 < 4 < 8 < 16 bits (measured): {'yes' if order else 'NO'}. "
             f"30% pruning at 2 bits saves {_mib(saved_meas)} MiB measured vs {_mib(saved_pred)} MiB predicted.")

    if args.methods:
        emit()
        emit(f"## Memory of one training step per method (4-bit, rank {args.rank}, group 64, batch "
             f"{args.batch_size} x {args.seq_len}, calibration 16 x 64), MiB")
        emit()
        emit(_row(["method", "status", "measured", "predicted", "error", "trainable params",
                   "activations (meas / pred)", "prepare s"]))
        emit(_row(["---"] * 8))

        for name in available_methods():
            r = run_trial({**base, "method": name, "steps": 1,
                           "method_settings": {"calib_samples": 16, "calib_seq_len": 64},
                           "layers": {"default": {"bits": 4, "group_size": 64, "rank": args.rank}}})
            raw.setdefault("methods", {})[name] = r.to_dict()
            if r.status != "ok":
                emit(_row([name, "failed", "-", "-", "-", "-", "-", str(r.failure_reason)[:80]]))
                continue
            err = (r.predicted_memory_bytes - r.peak_memory_bytes) / r.peak_memory_bytes
            emit(_row([name, r.status, _mib(r.peak_memory_bytes), _mib(r.predicted_memory_bytes),
                       f"{100 * err:+.1f}%", str(r.trainable_params),
                       f"{_mib(r.memory_measured['activations'])} / {_mib(r.memory_predicted['activations'])}",
                       f"{r.prepare_seconds:.1f}"]))

    if args.families:
        emit()
        _families(emit)

    if args.out:
        cmd = "automix bench trial " + " ".join(argv if argv is not None else sys.argv[1:])
        header = [f"# Trial benchmark", "", f"Command: `{cmd.strip()}`", "",
                  f"Date: {_dt.datetime.now(_dt.timezone.utc).strftime('%Y-%m-%d %H:%M UTC')}", "",
                  f"Machine: {_machine()}", ""]
        with open(args.out, "w") as f:
            f.write("\n".join(header + lines) + "\n")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(raw, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
