"""`automix trial`: run one trial by hand (prune + quantize + adapters + fine-tune + evaluate)."""

from __future__ import annotations

import argparse
import json
import sys

from automix.config.training import DTYPES, OPTIMIZERS, QUANTIZERS, TrainingSettings
from automix.commands import Subparsers

# The fine-tuning methods of automix.methods.REGISTRY (which imports torch: `automix --help` must
# not), with what each does; tests/test_cli_trial.py checks they agree.
METHODS = {
    "lora": "LoRA on the full-precision (never quantized) base: the upper reference",
    "qlora": "quantized base + zero-initialised LoRA",
    "loftq": "LoRA started from a low-rank correction of the quantization error (alpha/r scaling)",
    "quailora": "LoftQ-like start refined on calibration inputs",
    "apiq": "quantization and LoRA fitted block by block to the full-precision outputs",
    "apiq-lw": "ApiQ per linear layer (cheaper)",
    "qst": "quantized side tuning: a thin side network beside the frozen quantized backbone",
    "qeft": "quantize all but a few weak input columns, fine-tune only those",
}


# Each option's value when neither the command line nor the layer file (--layers) gives one: the
# training settings' one-off defaults (automix.config.training, where a study's differ and why).
DEFAULTS = {"model": "builtin:tiny", "task": "lm", "data": None, "eval_data": None, "method": "qlora",
            **{k: f.default for k, f in TrainingSettings.model_fields.items()}}
VALID_BITS = (2, 3, 4, 8, 16)  # automix.config.layers.VALID_BITS (tests/test_cli_trial.py checks they agree)


def _description() -> str:
    import textwrap

    intro = textwrap.fill(
        "Run one trial: prune, quantize per layer, initialise the method, fine-tune, evaluate and "
        "measure memory. Without --data the task's built-in synthetic data is used; --steps 0 "
        "evaluates right after preparation. A layer file written by `automix export` also says how "
        "the trial ran (model, task, method, steps, batch, ...): `automix trial --layers FILE` alone "
        "re-runs it; an option given here wins over the file.", 88)
    methods = "\n".join(f"  {name:<9} {what}" for name, what in METHODS.items())
    return f"{intro}\n\nmethods (--method):\n{methods}"


def add_parser(sub: Subparsers) -> None:
    p = sub.add_parser("trial", help="run one trial: prepare, fine-tune, evaluate, measure memory",
                       description=_description(), formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=None,
                   help="local save_pretrained directory or builtin:tiny|builtin:small (default: the layer "
                        "file's, else builtin:tiny)")
    src = p.add_mutually_exclusive_group()
    src.add_argument("--layers", metavar="FILE.yaml", help="per-layer settings (default + glob overrides)")
    src.add_argument("--bits", type=int, choices=VALID_BITS, metavar="N",
                     help="same bit width for every layer: 2, 3, 4, 8 or 16 (16 keeps it unquantized)")
    p.add_argument("--rank", type=int, default=8, help="LoRA rank with --bits (default 8)")
    p.add_argument("--group-size", type=int, default=64, help="quantization group size with --bits")
    p.add_argument("--prune", type=float, default=0.0, help="prune ratio with --bits (default 0)")
    p.add_argument("--prune-mode", default=None, choices=["structured", "magnitude", "wanda"],
                   help="how --prune removes weights: structured (whole heads and MLP channels; "
                        "default), magnitude or wanda (unstructured)")
    p.add_argument("--method", default=None, choices=list(METHODS), metavar="METHOD",
                   help="fine-tuning method, one of: " + ", ".join(METHODS) + " (default: the layer file's, "
                        "else qlora; see above)")
    p.add_argument("--option", action="append", default=[], metavar="KEY=VALUE",
                   help="method option, repeatable (e.g. --option loftq_iters=2)")
    p.add_argument("--lora-alpha", type=float, default=None,
                   help="LoRA scaling numerator: adapters are scaled by alpha / rank (default 16)")
    p.add_argument("--task", default=None, help="lm or boolq (default lm)")
    p.add_argument("--data", help="JSONL file or datasets.save_to_disk directory")
    p.add_argument("--eval-data", help="separate evaluation data")
    p.add_argument("--steps", type=int, default=None, help=f"fine-tuning steps (default {DEFAULTS['steps']}; 0: evaluate only)")
    p.add_argument("--seed", type=int, default=None, help=f"seed of data order, initialisation and sampling (default {DEFAULTS['seed']})")
    p.add_argument("--lr", type=float, default=None, help=f"learning rate of the trainable parameters (default {DEFAULTS['lr']:g})")
    p.add_argument("--batch-size", type=int, default=None, help=f"rows per optimizer step (default {DEFAULTS['batch_size']})")
    p.add_argument("--seq-len", type=int, default=None, help=f"tokens per training row (default {DEFAULTS['seq_len']})")
    p.add_argument("--eval-batches", type=int, default=None,
                   help="held-out batches scored (default: the task's own evaluation size)")
    p.add_argument("--dtype", default=None, choices=list(DTYPES),
                   help="float32; bfloat16 (pure bf16); float16 (fp16 autocast, fp32 trainable weights)")
    p.add_argument("--gradient-checkpointing", action=argparse.BooleanOptionalAction, default=None,
                   help="recompute each decoder block in backward instead of keeping its activations "
                        "(default off for a single trial; studies turn it on)")
    p.add_argument("--optimizer", default=None, choices=list(OPTIMIZERS),
                   help="adamw (default), sgd (momentum 0.9), or bitsandbytes' adamw-8bit, paged-adamw, "
                        "paged-adamw-8bit (pip install 'automix[bnb]')")
    p.add_argument("--grad-accum-steps", type=int, default=None,
                   help="micro-batches per optimizer step (must divide --batch-size; default 1)")
    p.add_argument("--quantizer", choices=list(QUANTIZERS), default=None,
                   help="how base weights are quantized (default: automix.quant.DEFAULT_METHOD, rtn)")
    p.add_argument("--device", default="auto",
                   help="auto (CUDA when available; default), cpu, cuda or cuda:N")
    p.add_argument("--save-state", help="write the trained method state (safetensors) here")
    p.add_argument("--json", action="store_true", help="print the result as one JSON object")
    p.set_defaults(func=run)


def file_settings(path: str) -> dict:
    """How the layer file says to run its trial (`model`, `method`, `trial: {steps, ...}`; {} when
    it says nothing)."""
    from automix.config.layers import LayerConfig  # lazy: CLI start-up (a command loads only what it runs)

    return LayerConfig.from_yaml(path).run


def spec_from_args(args: argparse.Namespace) -> dict:
    """The trial spec (a `TrialSpec` dict) the parsed `automix trial` arguments describe: each
    setting from the command line, else from the layer file (--layers), else `DEFAULTS`."""
    given = {k: getattr(args, k) for k in DEFAULTS if getattr(args, k, None) is not None}
    from_file = file_settings(args.layers) if args.layers else {}
    settings = {**DEFAULTS, **{k: v for k, v in from_file.items() if k != "method_settings"}, **given}
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
    method_settings: dict = dict(from_file.get("method_settings") or {}) if "method" not in given else {}
    if options:
        method_settings["options"] = {**method_settings.get("options", {}), **options}
    if args.lora_alpha is not None:
        method_settings["lora_alpha"] = args.lora_alpha
    quantizer = settings.pop("quantizer")
    return {**settings, "method_settings": method_settings, "layers": layers, "device": args.device,
            "save_state": args.save_state, **({"quantizer": quantizer} if quantizer else {})}


def _invalid(spec: dict) -> str | None:
    """Why the spec is not a valid TrialSpec, as `--option: reason` (None when it is)."""
    from pydantic import ValidationError

    from automix.trial import TrialSpec  # lazy: CLI start-up (a command loads only what it runs)

    try:
        TrialSpec.model_validate(spec)
    except ValidationError as err:
        out = []
        for e in err.errors():
            field = str(e["loc"][0]) if e["loc"] else ""
            msg = str(e["msg"]).removeprefix("Value error, ")
            out.append(f"--{field.replace('_', '-')}: {msg}" if field else msg)
        return "; ".join(out)
    return None


def _layer_file_problem(args: argparse.Namespace) -> str | None:
    """Why --layers FILE cannot be read, as one line (None when it can)."""
    if not args.layers:
        return None
    from automix.config.layers import LayerConfigError  # lazy: CLI start-up (a command loads only what it runs)

    try:
        file_settings(args.layers)
    except LayerConfigError as err:
        return f"--layers: {err}"
    return None


def _mib(n: int | None) -> str:
    return "-" if n is None else f"{n / 2**20:.2f} MiB"


def _cheap_problem(spec: dict) -> str | None:
    """What can be told wrong before torch is imported (a few seconds): the task's name."""
    from automix.config.study import TASKS  # lazy: CLI start-up (a command loads only what it runs)

    if spec["task"] not in TASKS:
        return f"--task: unknown task {spec['task']!r}; available: {', '.join(sorted(TASKS))}"
    return None


def run(args: argparse.Namespace) -> int:
    try:
        problem = _layer_file_problem(args)
        spec = spec_from_args(args) if problem is None else None
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    problem = problem or _cheap_problem(spec) or _invalid(spec)
    if problem:  # one line per wrong option, not pydantic's report
        if args.json:
            from automix.trial import TrialResult  # lazy: CLI start-up (a command loads only what it runs)

            print(json.dumps(TrialResult(status="failed", method=args.method or "", task=args.task or "",
                                         failure_kind="invalid_input", failure_reason=problem).to_dict()))
        else:
            print(f"error: {problem}", file=sys.stderr)
        return 2
    from automix.trial import run_trial  # lazy: CLI start-up (a command loads only what it runs)

    result = run_trial(spec)
    if args.json:
        print(json.dumps(result.to_dict()))
    elif result.status == "ok":
        metric = (f"accuracy {result.accuracy:.4f}" if result.accuracy is not None
                  else f"perplexity {result.perplexity:.3f}")
        print(f"{result.method} on {result.task}: {metric}")
        print(f"  loss {result.first_loss} -> {result.last_loss} over {result.steps} steps"
              if result.steps else "  no fine-tuning (--steps 0)")
        predicted = result.memory_phases_predicted
        phase = max(predicted, key=lambda k: predicted[k]) if predicted else ""
        measured = f" (allocator, at the {result.peak_phase})" if result.peak_phase else ""
        print(f"  memory: measured {_mib(result.peak_memory_bytes)}{measured}, predicted "
              f"{_mib(result.predicted_memory_bytes)}" + (f" (at the {phase})" if phase else ""))
        print(f"  trainable params {result.trainable_params}, avg bits {result.avg_bits}")
        print(f"  time: prepare {result.prepare_seconds:.1f}s, train {result.train_seconds:.1f}s, "
              f"eval {result.eval_seconds:.1f}s")
    if result.status != "ok":
        if not args.json:
            print(f"error: trial failed ({result.failure_kind}): {result.failure_reason}", file=sys.stderr)
        return 2 if result.failure_kind == "invalid_input" else 1
    return 0
