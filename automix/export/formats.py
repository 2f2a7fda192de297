"""Export formats other tools read: a merged Hugging Face checkpoint, a PEFT LoRA adapter on a
dense base, and llama.cpp per-tensor quantization overrides.

* ``hf``: ``AutoModelForCausalLM.from_pretrained(DIR)`` loads it (quantized weights dequantized,
  adapters merged, pruned sizes in ``config.json``).
* ``peft``: ``base/`` (the quantized-then-dequantized base, HF format) and ``adapter/`` (PEFT's
  ``adapter_config.json`` with per-layer ``rank_pattern`` / ``alpha_pattern`` and
  ``adapter_model.safetensors``), so ``PeftModel.from_pretrained(base, adapter_dir)`` rebuilds it.
* ``llama-cpp``: the chosen bit width of every linear as ``llama-quantize --tensor-type`` overrides
  on GGUF tensor names (``tensor-types.txt``, one ``NAME=TYPE`` per line, also readable with
  ``--tensor-type-file``) and ``quantize.sh`` with the whole command. Bits map to GGUF types by
  ``GGUF_TYPES``; llama.cpp's k-quants use their own 256-weight super-blocks, so group sizes are
  not carried over.
"""

from __future__ import annotations

import shlex
from collections import Counter
from pathlib import Path
from typing import Any, Mapping

from automix.arch import block_index, layer_kind
from automix.export.dense import ExportFormatError, dense_model, lora_adapters

__all__ = ["FORMATS", "GGUF_TYPES", "GGUF_TENSOR_KINDS", "write_hf", "write_peft", "llama_cpp_overrides",
           "write_llama_cpp"]

FORMATS = ("automix", "hf", "peft", "llama-cpp")

# automix bit width -> llama.cpp (ggml) quantization type: the k-quant of that width (the
# types llama.cpp's own mixes use), Q8_0 for 8 bits, F16 for layers kept in 16 bits.
GGUF_TYPES = {2: "q2_k", 3: "q3_k", 4: "q4_k", 5: "q5_k", 6: "q6_k", 8: "q8_0", 16: "f16"}
# automix layer kind (automix.arch) -> GGUF tensor name inside block N ("blk.N.<name>.weight").
GGUF_TENSOR_KINDS = {"attn_q": "attn_q", "attn_k": "attn_k", "attn_v": "attn_v", "attn_qkv": "attn_qkv",
                     "attn_o": "attn_output", "mlp_gate": "ffn_gate", "mlp_up": "ffn_up", "mlp_down": "ffn_down"}


def _save_hf(model: Any, tokenizer: Any, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out, safe_serialization=True)
    if tokenizer is not None:
        tokenizer.save_pretrained(out)


def write_hf(exported: Any, out: str | Path) -> Path:
    """A merged, dense checkpoint of an :class:`~automix.export.ExportedModel` in ``out``."""
    out = Path(out)
    model = dense_model(exported.model, exported.spec.method, merge_adapters=True)
    _save_hf(model, exported.tokenizer, out)
    return out


def write_peft(exported: Any, out: str | Path) -> tuple[Path, Path]:
    """``out/base`` (dense, adapters not merged) and ``out/adapter`` (a PEFT LoRA adapter)."""
    try:
        from peft import LoraConfig, get_peft_model  # lazy: optional dependency, only this format needs it
    except ImportError:
        raise ExportFormatError("--format peft needs the peft package: pip install peft") from None
    import torch  # lazy: torch only when weights are written

    method = exported.spec.method
    adapters = lora_adapters(exported.model)
    if not adapters:
        raise ExportFormatError(f"method {method!r} has no LoRA adapters to write as a PEFT adapter "
                                "(QST trains a side network, QEFT a dense block of weak columns); use "
                                "--format hf for a merged checkpoint where the method allows it")
    out = Path(out)
    base = dense_model(exported.model, method, merge_adapters=False)
    _save_hf(base, exported.tokenizer, out / "base")
    ranks = {n: m.rank for n, m in adapters.items()}
    alphas = {n: m.alpha for n, m in adapters.items()}
    r = Counter(ranks.values()).most_common(1)[0][0]
    alpha = Counter(alphas.values()).most_common(1)[0][0]
    config = LoraConfig(
        r=r, lora_alpha=alpha, target_modules=sorted(adapters), bias="none", task_type="CAUSAL_LM",
        rank_pattern={n: v for n, v in ranks.items() if v != r},
        alpha_pattern={n: v for n, v in alphas.items() if v != alpha},
        fan_in_fan_out=any(type(m.base).__name__ == "Conv1D" for m in adapters.values()))
    peft_model = get_peft_model(base, config)
    with torch.no_grad():
        for name, module in adapters.items():
            target = peft_model.base_model.model.get_submodule(name)
            target.lora_A["default"].weight.copy_(module.lora_A.detach())
            target.lora_B["default"].weight.copy_(module.lora_B.detach())
    peft_model.save_pretrained(out / "adapter", safe_serialization=True)
    return out / "base", out / "adapter"


def llama_cpp_overrides(layers: Mapping[str, Mapping[str, Any]]) -> dict[str, str]:
    """GGUF tensor name -> llama.cpp type for a resolved layer map ``{name: {bits, ...}}``."""
    out: dict[str, str] = {}
    for name, settings in layers.items():
        bits = int(settings["bits"])
        if bits not in GGUF_TYPES:
            raise ExportFormatError(f"layer {name}: {bits}-bit has no llama.cpp type (known: "
                                    f"{', '.join(map(str, sorted(GGUF_TYPES)))})")
        kind = layer_kind(name)
        if kind not in GGUF_TENSOR_KINDS:
            raise ExportFormatError(f"layer {name}: no GGUF tensor name for layer kind {kind!r}")
        out[f"blk.{block_index(name)}.{GGUF_TENSOR_KINDS[kind]}.weight"] = GGUF_TYPES[bits]
    return out


def write_llama_cpp(layers: Mapping[str, Mapping[str, Any]], out: str | Path, hf_dir: str | None = None
                    ) -> Path:
    """``tensor-types.txt`` and ``quantize.sh`` for llama.cpp; ``hf_dir`` is the checkpoint the
    script converts to GGUF first (default: the original model, converted by the user)."""
    pruned = sorted(n for n, s in layers.items() if float(s.get("prune", 0.0)) > 0)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    overrides = llama_cpp_overrides(layers)
    (out / "tensor-types.txt").write_text("".join(f"{k.replace('.', chr(92) + '.')}={v}\n"
                                                  for k, v in overrides.items()))
    base_type = Counter(overrides.values()).most_common(1)[0][0].upper()
    source = hf_dir or "MODEL_DIR"
    args = " ".join(f"--tensor-type {shlex.quote(k.replace('.', chr(92) + '.') + '=' + v)}"
                    for k, v in overrides.items())
    script = [
        "#!/bin/sh",
        "# The per-tensor quantization types automix chose, applied with llama.cpp.",
        "# 1. convert the checkpoint to a 16-bit GGUF (llama.cpp's convert_hf_to_gguf.py);",
        "# 2. quantize with one --tensor-type override per linear layer (regex on GGUF tensor names).",
        "set -e",
        f"python convert_hf_to_gguf.py {shlex.quote(source)} --outtype f16 --outfile model-f16.gguf",
        f"llama-quantize {args} model-f16.gguf model-automix.gguf {base_type}",
    ]
    if pruned and hf_dir is None:
        script.insert(2, f"# note: {len(pruned)} layers are pruned; convert the exported hf/ checkpoint "
                         "(automix export --format hf), not the original model")
    (out / "quantize.sh").write_text("\n".join(script) + "\n")
    (out / "quantize.sh").chmod(0o755)
    return out
