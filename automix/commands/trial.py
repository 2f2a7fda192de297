"""`automix trial`: run one trial by hand (prune + quantize + adapters + fine-tune + evaluate)."""

from __future__ import annotations

import argparse
import json
import sys



def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("trial", help="run one trial: prepare, fine-tune, evaluate, measure memory",
                       description="Run one trial. Without --data the task's built-in synthetic data "
                                   "is used; --steps 0 evaluates right after preparation.")
    p.add_argument("--model", default="builtin:tiny",
                   help="local save_pretrained directory or builtin:tiny|builtin:small (default: builtin:tiny)")
    src = p.add_mutually_exclusive_group()
    src.add_argument("--layers", metavar="FILE.yaml", help="per-layer settings (default + glob overrides)")
    src.add_argument("--bits", type=int, help="same bit width for every layer (2, 3, 4, 8 or 16)")
    p.add_argument("--rank", type=int, default=8, help="LoRA rank with --bits (default 8)")
    p.add_argument("--group-size", type=int, default=64, help="quantization group size with --bits")
    p.add_argument("--prune", type=float, default=0.0, help="prune ratio with --bits (default 0)")
    p.add_argument("--prune-mode", default="structured", choices=["structured", "magnitude", "wanda"])
    p.add_argument("--method", default="qlora", help="fine-tuning method (default qlora)")
    p.add_argument("--option", action="append", default=[], metavar="KEY=VALUE",
                   help="method option, repeatable (e.g. --option loftq_iters=2)")
    p.add_argument("--lora-alpha", type=float, default=None)
    p.add_argument("--task", default="lm", help="lm or boolq (default lm)")
    p.add_argument("--data", help="JSONL file or datasets.save_to_disk directory")
    p.add_argument("--eval-data", help="separate evaluation data")
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--seq-len", type=int, default=128)
    p.add_argument("--eval-batches", type=int, default=None)
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    p.add_argument("--device", default="auto")
    p.add_argument("--save-state", help="write the trained method state (safetensors) here")
    p.add_argument("--json", action="store_true", help="print the result as one JSON object")
    p.set_defaults(func=run)


def _spec(args: argparse.Namespace) -> dict:
    if args.layers:
        layers: dict | str = args.layers
    else:
        bits = 4 if args.bits is None else args.bits
        layers = {"default": {"bits": bits, "group_size": args.group_size, "prune": args.prune, "rank": args.rank}}
    options = {}
    for kv in args.option:
        key, eq, value = kv.partition("=")
        if not eq:
            raise ValueError(f"--option expects KEY=VALUE, got {kv!r}")
        options[key] = value
    method_settings: dict = {"options": options} if options else {}
    if args.lora_alpha is not None:
        method_settings["lora_alpha"] = args.lora_alpha
    return {"model": args.model, "task": args.task, "data": args.data, "eval_data": args.eval_data,
            "method": args.method, "method_settings": method_settings, "layers": layers,
            "prune_mode": args.prune_mode, "steps": args.steps, "seed": args.seed, "lr": args.lr,
            "batch_size": args.batch_size, "seq_len": args.seq_len, "eval_batches": args.eval_batches,
            "dtype": args.dtype, "device": args.device, "save_state": args.save_state}


def _mib(n: int | None) -> str:
    return "-" if n is None else f"{n / 2**20:.2f} MiB"


def run(args: argparse.Namespace) -> int:
    from automix.trial import run_trial  # lazy: CLI start-up (a command loads only what it runs)

    try:
        spec = _spec(args)
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    result = run_trial(spec)
    if args.json:
        print(json.dumps(result.to_dict()))
    elif result.status == "ok":
        metric = (f"accuracy {result.accuracy:.4f}" if result.accuracy is not None
                  else f"perplexity {result.perplexity:.3f}")
        print(f"{result.method} on {result.task}: {metric}")
        print(f"  loss {result.first_loss} -> {result.last_loss} over {result.steps} steps"
              if result.steps else "  no fine-tuning (--steps 0)")
        print(f"  memory: measured {_mib(result.peak_memory_bytes)}, predicted {_mib(result.predicted_memory_bytes)}")
        print(f"  trainable params {result.trainable_params}, avg bits {result.avg_bits}")
        print(f"  time: prepare {result.prepare_seconds:.1f}s, train {result.train_seconds:.1f}s, "
              f"eval {result.eval_seconds:.1f}s")
    if result.status != "ok":
        if not args.json:
            print(f"error: trial failed ({result.failure_kind}): {result.failure_reason}", file=sys.stderr)
        return 2 if result.failure_kind == "invalid_input" else 1
    return 0
