"""``hf``: a merged, dense checkpoint that ``AutoModelForCausalLM.from_pretrained(DIR/hf)`` loads:
quantized weights dequantized, adapters (and QEFT's weak columns) merged, pruned sizes in
``config.json``, or the pruned units as zeros where no standard config holds them
(:mod:`automix.export.dense`). Re-scored after writing: the manifest holds both numbers."""

from __future__ import annotations

from typing import Any

from automix.export.dense import NOT_MERGEABLE
from automix.export.format import ExportContext, ExportFormat, TrialFacts


def _check(facts: TrialFacts) -> str | None:
    if facts.method in NOT_MERGEABLE:
        return f"method {facts.method!r} has no dense Hugging Face form: {NOT_MERGEABLE[facts.method]}"
    return None


def save_hf(model: Any, tokenizer: Any, out: Any) -> None:
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out, safe_serialization=True)
    if tokenizer is not None:
        tokenizer.save_pretrained(out)


def layout_entry(model: Any) -> dict[str, Any]:
    """The manifest's note on how a dense model holds the pruning (see automix.export.dense)."""
    layout = model.automix_layout
    out: dict[str, Any] = {"layout": layout.name}
    if layout.padded:
        out["note"] = (f"{layout.reason}: written at the original sizes with the pruned heads and channels "
                       "as zeros (same scores, no memory saving in this format)")
    return out


def _write(ctx: ExportContext) -> dict[str, Any]:
    from transformers import AutoModelForCausalLM  # lazy: the format modules load with their writer

    model = ctx.dense(merge_adapters=True)
    save_hf(model, ctx.exported.tokenizer, ctx.out / "hf")
    reloaded = AutoModelForCausalLM.from_pretrained(ctx.out / "hf")
    return {"path": "hf", **ctx.scores(reloaded), **layout_entry(model),
            "load": ['model = AutoModelForCausalLM.from_pretrained("{dir}/hf")']}


FORMAT = ExportFormat("hf", "merged dense checkpoint for transformers", needs_weights=True,
                      check=_check, write=_write)
