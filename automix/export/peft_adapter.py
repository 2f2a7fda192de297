"""``peft``: ``peft/base/`` (the quantized-then-dequantized base, a standard checkpoint) and
``peft/adapter/`` (a PEFT LoRA adapter: per-layer ``rank_pattern`` / ``alpha_pattern``,
``adapter_model.safetensors``).

The adapter names its base by the relative path ``../base`` (``base_model_name_or_path``), never
the original full-precision model: loading the adapter on that model would silently score
something else. PEFT resolves that path against the working directory, so the two ways to load it
are: ``PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(BASE), ADAPTER)`` from
anywhere, and ``AutoPeftModelForCausalLM.from_pretrained(".")`` run in the adapter directory (the
lines the export prints do both, with ``contextlib.chdir`` for the second). A pruned base follows
:mod:`automix.export.dense` (zero-padded where no standard config holds the pruning); the
adapters are padded the same way.
"""

from __future__ import annotations

import json
from collections import Counter
from typing import Any

from automix.export.dense import ExportFormatError, lora_adapters, pad_to, padded_shape
from automix.export.format import ExportContext, ExportFormat, TrialFacts
from automix.export.hf import layout_entry, save_hf

BASE_REF = "../base"  # base_model_name_or_path, relative to the adapter directory
# methods that train a LoRA adapter on the (quantized) base; the others have none to write
NO_LORA = {"qst": "QST trains a side network", "qeft": "QEFT trains a dense block of weak columns"}


def _check(facts: TrialFacts) -> str | None:
    if facts.method in NO_LORA:
        return (f"method {facts.method!r} has no LoRA adapter to write as a PEFT adapter ({NO_LORA[facts.method]}); "
                "--format hf writes a merged checkpoint where the method allows it")
    if not any(int(s.get("rank", 0)) > 0 for s in facts.layers.values()):
        return "every layer has rank 0: no LoRA adapter to write (--format hf writes the model)"
    return None


def load_lines(adapter: str, base: str) -> list[str]:
    """The two Python lines that load the written adapter (paths as given)."""
    return [f'model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained("{base}"), "{adapter}")',
            f'with contextlib.chdir("{adapter}"): model = AutoPeftModelForCausalLM.from_pretrained(".")']


def _write(ctx: ExportContext) -> dict[str, Any]:
    try:
        from peft import LoraConfig, PeftModel, get_peft_model  # lazy: optional dependency, this format only
    except ImportError:
        raise ExportFormatError("--format peft needs the peft package: pip install peft") from None
    import torch
    from transformers import AutoModelForCausalLM

    out = ctx.out / "peft"
    adapters = lora_adapters(ctx.exported.model)
    base = ctx.dense(merge_adapters=False)
    save_hf(base, ctx.exported.tokenizer, out / "base")
    ranks = {n: m.rank for n, m in adapters.items()}
    alphas = {n: m.alpha for n, m in adapters.items()}
    r = Counter(ranks.values()).most_common(1)[0][0]
    alpha = Counter(alphas.values()).most_common(1)[0][0]
    config = LoraConfig(
        r=r, lora_alpha=alpha, target_modules=sorted(adapters), bias="none", task_type="CAUSAL_LM",
        rank_pattern={n: v for n, v in ranks.items() if v != r},
        alpha_pattern={n: v for n, v in alphas.items() if v != alpha},
        fan_in_fan_out=any(type(m.base).__name__ == "Conv1D" for m in adapters.values()))
    fresh = AutoModelForCausalLM.from_pretrained(out / "base")  # get_peft_model changes the model it wraps
    peft_model = get_peft_model(fresh, config)
    padded = base.automix_layout.padded
    with torch.no_grad():
        for name, module in adapters.items():
            target = peft_model.base_model.model.get_submodule(name)
            a, b = module.lora_A.detach().float(), module.lora_B.detach().float()
            if padded:
                n_out, n_in = padded_shape(name, base.config)
                a, b = pad_to(a, (a.shape[0], n_in)), pad_to(b, (n_out, b.shape[1]))
            target.lora_A["default"].weight.copy_(a)
            target.lora_B["default"].weight.copy_(b)
    peft_model.save_pretrained(out / "adapter", safe_serialization=True)
    cfg_file = out / "adapter" / "adapter_config.json"
    cfg = json.loads(cfg_file.read_text())
    cfg["base_model_name_or_path"] = BASE_REF
    cfg_file.write_text(json.dumps(cfg, indent=2, sort_keys=True))
    # what the user loads, re-scored: the adapter on the written base, read back from disk
    reloaded = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(out / "base"), out / "adapter")
    return {"path": "peft", **ctx.scores(reloaded), **layout_entry(base),
            "base_model_name_or_path": BASE_REF, "load": load_lines("{dir}/peft/adapter", "{dir}/peft/base")}


FORMAT = ExportFormat("peft", "dense base + PEFT LoRA adapter", needs_weights=True, check=_check, write=_write)
