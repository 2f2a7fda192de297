"""A prepared automix model as a standard Hugging Face model: quantized weights dequantized,
adapters merged (or kept apart for PEFT), pruned shapes written into the config.

The rebuilt model is a plain ``AutoModelForCausalLM`` of the original architecture: every target
layer's weight is replaced by the dense weight the automix layer computes with (what
``QuantLinear.dequantize``, ``QEFTLinear.dense_weight`` and ``LoRALinear.delta_weight`` give), so it
scores what ``automix.load`` scores up to floating-point summation order.

**Pruned models.** Structured pruning leaves smaller q/k/v/o and MLP matrices. When every block
kept the same number of heads and channels, and the head count still divides the hidden size,
the standard config holds the pruned sizes (``layout: pruned``: the memory saving carries over).
Otherwise no standard config can (one head count and one MLP width for every block, and
transformers refuses a hidden size that the head count does not divide): the model is written at
its original sizes with the pruned heads and channels as zeros (``layout: zero-padded``). The kept
units come first in each block and keep their grouping (query heads after their kv head), so the
zero rows and columns add exactly nothing: same scores, no memory saving in that format.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from transformers import AutoConfig, AutoModelForCausalLM

from automix.arch import arch_info, is_transposed, layer_kind, linear_weight, target_layer_names
from automix.methods.adapters import LoRALinear
from automix.methods.qeft import QEFTLinear
from automix.quant import QuantLinear

__all__ = ["ExportFormatError", "DenseLayout", "dense_weight", "dense_layout", "dense_model", "lora_adapters",
           "padded_shape", "pad_to", "NOT_MERGEABLE"]

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


@dataclass(frozen=True)
class DenseLayout:
    """How a (possibly pruned) model is written as a standard one.

    ``config``: the standard config written; ``padded``: pruned units written as zeros at the
    original sizes; ``reason``: why padding was needed (empty when not)."""

    config: Any
    padded: bool = False
    reason: str = ""
    pruned: bool = False

    @property
    def name(self) -> str:
        """``zero-padded``, ``pruned`` (the pruned sizes in the config) or ``dense`` (no pruning)."""
        return "zero-padded" if self.padded else ("pruned" if self.pruned else "dense")


def _clean(cfg_dict: dict) -> dict:
    return {k: v for k, v in cfg_dict.items() if k not in ("automix_pruned", "quantization_config")}


def _standard_problem(pruned: dict, hidden: int) -> str:
    """Why the pruned sizes cannot be written in a standard config ('' when they can)."""
    widths = {tuple(v) for v in pruned.values()}
    if len(widths) > 1:
        sample = ", ".join(f"block {b}: {v[0]} heads / {v[2]} MLP channels" for b, v in list(pruned.items())[:3])
        return (f"structured pruning left blocks of different widths ({sample}, ...); a standard config "
                "holds one head count and one MLP width for every block")
    heads = next(iter(widths))[0]
    if hidden % heads:
        return (f"structured pruning left {heads} attention heads, which do not divide the hidden size "
                f"({hidden}); transformers refuses such a config")
    return ""


def dense_layout(model: nn.Module, original_config: Any | None = None) -> DenseLayout:
    """The standard config to write ``model`` with: its pruned sizes when a standard config can
    hold them, else the original (unpruned) sizes with the pruned units as zeros.

    ``original_config`` is the unpruned model's config (needed only for a pruned model whose
    config already carries the pruned sizes: every block pruned alike)."""
    pruned = getattr(model.config, "automix_pruned", None)
    cfg_dict = _clean(model.config.to_dict())
    if not pruned:
        return DenseLayout(AutoConfig.for_model(**cfg_dict))
    problem = _standard_problem(pruned, int(cfg_dict.get("hidden_size") or 0) or arch_info(model).hidden_size)
    if not problem:
        try:
            cfg = AutoConfig.for_model(**cfg_dict)
        except Exception as err:  # noqa: BLE001 - transformers' config validation (not a ValueError in 5.x)
            problem = f"transformers refuses the pruned config: {err}"
        else:
            return DenseLayout(cfg, pruned=True)
    if original_config is None:
        if len({tuple(v) for v in pruned.values()}) == 1:  # the model's config holds the pruned sizes
            raise ExportFormatError("writing this pruned model at its original sizes needs the original "
                                    "model's config (original_config)")
        original_config = model.config
    base = _clean(original_config.to_dict() if hasattr(original_config, "to_dict") else dict(original_config))
    return DenseLayout(AutoConfig.for_model(**base), padded=True, reason=problem, pruned=True)


def padded_shape(name: str, config: Any) -> tuple[int, int]:
    """``(out, in)`` of target layer ``name`` at the sizes of ``config`` (unpruned)."""
    info = arch_info(config)
    h, hd, inter = info.hidden_size, info.head_dim, info.intermediate_size
    return {"attn_q": (info.n_heads * hd, h), "attn_k": (info.n_kv_heads * hd, h),
            "attn_v": (info.n_kv_heads * hd, h), "attn_qkv": (3 * info.n_heads * hd, h),
            "attn_o": (h, info.n_heads * hd), "mlp_gate": (inter, h), "mlp_up": (inter, h),
            "mlp_down": (h, inter)}[layer_kind(name)]


def pad_to(t: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
    """``t`` zero-extended at the end of each dimension to ``shape`` (kept units come first)."""
    if tuple(t.shape) == tuple(shape):
        return t
    if any(have > want for have, want in zip(t.shape, shape)):
        raise ExportFormatError(f"cannot pad a {tuple(t.shape)} tensor to {tuple(shape)}")
    out = t.new_zeros(shape)
    out[tuple(slice(0, n) for n in t.shape)] = t
    return out


def dense_model(model: nn.Module, method: str, merge_adapters: bool = True, dtype: torch.dtype = torch.float32,
                original_config: Any | None = None, layout: DenseLayout | None = None) -> nn.Module:
    """A standard ``AutoModelForCausalLM`` holding the weights ``model`` computes with (pruned
    units as zeros when ``dense_layout`` says the pruned sizes cannot be written)."""
    if method in NOT_MERGEABLE:
        raise ExportFormatError(f"method {method!r} has no dense Hugging Face form: {NOT_MERGEABLE[method]}. "
                                "Use automix's own format (`automix export --with-weights`, `automix.load`)")
    layout = layout or dense_layout(model, original_config)
    cfg = layout.config
    state = {k: v for k, v in model.state_dict().items()}
    for name in target_layer_names(model.config):
        module = model.get_submodule(name)
        weight, bias = dense_weight(module, merge_adapters)
        if layout.padded:
            weight = pad_to(weight, padded_shape(name, cfg))
            if bias is not None:
                bias = pad_to(bias.detach().float(), (weight.shape[0],))
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
    out.automix_layout = layout
    return out.eval()


def _is_tied(model: nn.Module, key: str) -> bool:
    return bool(getattr(model.config, "tie_word_embeddings", False)) and "lm_head" in key


def lora_adapters(model: nn.Module) -> dict[str, LoRALinear]:
    """Target layers that carry a LoRA adapter, by name."""
    return {n: m for n, m in model.named_modules() if isinstance(m, LoRALinear)}
