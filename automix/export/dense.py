"""A prepared automix model as a standard Hugging Face model: quantized weights dequantized,
adapters merged (or kept apart for PEFT), pruned shapes written into the config.

The rebuilt model is a plain ``AutoModelForCausalLM`` of the original architecture: every target
layer's weight is replaced by the dense weight the automix layer computes with (what
``QuantLinear.dequantize``, ``QEFTLinear.dense_weight`` and ``LoRALinear.delta_weight`` give), so it
scores what ``automix.load`` scores up to floating-point summation order.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from transformers import AutoConfig, AutoModelForCausalLM

from automix.arch import is_transposed, linear_weight, target_layer_names
from automix.methods.adapters import LoRALinear
from automix.methods.qeft import QEFTLinear
from automix.quant import QuantLinear

__all__ = ["ExportFormatError", "dense_weight", "hf_config", "dense_model", "lora_adapters"]

# Methods whose trained state lives outside the model's own linears: no dense equivalent.
NOT_MERGEABLE = {"qst": "QST trains a side network next to the frozen backbone; its output is not "
                        "a change of the backbone's weights"}


class ExportFormatError(ValueError):
    """The exported trial cannot be written in the asked format; the message says why and what to do."""


def _base_weight(module: nn.Module) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(weight [out, in] float32, bias) of a frozen base layer: dense, quantized or QEFT."""
    if isinstance(module, QuantLinear):
        return module.dequantize(torch.float32), module.bias
    if isinstance(module, QEFTLinear):
        return module.dense_weight().float(), module.quant.bias
    return linear_weight(module).detach().float(), getattr(module, "bias", None)


def dense_weight(module: nn.Module, merge_adapter: bool = True) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The ``[out, in]`` float32 weight (and bias) a target layer computes with; a LoRA adapter's
    ``scaling * B @ A`` is added when ``merge_adapter``."""
    if isinstance(module, LoRALinear):
        weight, bias = _base_weight(module.base)
        if merge_adapter:
            weight = weight + module.delta_weight().detach().float()
        return weight, bias
    return _base_weight(module)


def _source_layer(module: nn.Module) -> nn.Module:
    return module.base if isinstance(module, LoRALinear) else module


def hf_config(model: nn.Module) -> Any:
    """The model's config as the standard one of its architecture, with pruned sizes; an error
    when structured pruning left blocks of different widths (the standard configs hold one
    head count and one MLP width for all blocks)."""
    cfg = AutoConfig.for_model(**{k: v for k, v in model.config.to_dict().items() if k != "automix_pruned"})
    pruned = getattr(model.config, "automix_pruned", None)
    if pruned:
        widths = {tuple(v) for v in pruned.values()}
        if len(widths) > 1:
            sample = ", ".join(f"block {b}: {v[0]} heads / {v[2]} MLP channels"
                               for b, v in list(pruned.items())[:3])
            raise ExportFormatError(
                f"structured pruning left blocks of different widths ({sample}, ...): the standard "
                f"{model.config.model_type} config holds one width for every block, so transformers "
                "cannot load it. Keep it in automix's own format (`automix export --with-weights`, "
                "`automix.load`), or pick a trial whose blocks are pruned alike (or with "
                "`prune_mode: magnitude`/`wanda`, which keep shapes)")
    for key in ("quantization_config", "automix_pruned"):
        if hasattr(cfg, key):
            delattr(cfg, key)
    return cfg


def dense_model(model: nn.Module, method: str, merge_adapters: bool = True,
                dtype: torch.dtype = torch.float32) -> nn.Module:
    """A standard ``AutoModelForCausalLM`` holding the weights ``model`` computes with."""
    if method in NOT_MERGEABLE:
        raise ExportFormatError(f"method {method!r} has no dense Hugging Face form: {NOT_MERGEABLE[method]}. "
                                "Use automix's own format (`automix export --with-weights`, `automix.load`)")
    cfg = hf_config(model)
    state = {k: v for k, v in model.state_dict().items()}
    for name in target_layer_names(model.config):
        module = model.get_submodule(name)
        weight, bias = dense_weight(module, merge_adapters)
        for key in [k for k in state if k.startswith(name + ".")]:
            del state[key]
        state[f"{name}.weight"] = weight.t().contiguous() if is_transposed(_source_layer(module)) else weight
        if bias is not None:
            state[f"{name}.bias"] = bias.detach().float()
    out = AutoModelForCausalLM.from_config(cfg, dtype=dtype)
    expected = out.state_dict()
    unknown = sorted(set(state) - set(expected))
    missing = sorted(k for k in set(expected) - set(state) if not _is_tied(out, k))
    if unknown or missing:
        raise ExportFormatError(f"the rebuilt {cfg.model_type} model does not match the automix model: "
                                f"unexpected {unknown[:4]}, missing {missing[:4]}")
    for key, value in state.items():
        if tuple(value.shape) != tuple(expected[key].shape):
            raise ExportFormatError(f"{key}: automix holds shape {tuple(value.shape)}, the standard "
                                    f"config expects {tuple(expected[key].shape)}")
    out.load_state_dict({k: v.to(dtype) for k, v in state.items()}, strict=False)
    if getattr(cfg, "tie_word_embeddings", False):
        out.tie_weights()
    return out.eval()


def _is_tied(model: nn.Module, key: str) -> bool:
    return bool(getattr(model.config, "tie_word_embeddings", False)) and "lm_head" in key


def lora_adapters(model: nn.Module) -> dict[str, LoRALinear]:
    """Target layers that carry a LoRA adapter, by name."""
    return {n: m for n, m in model.named_modules() if isinstance(m, LoRALinear)}
