"""Building blocks shared by the LoRA-family methods: the LoRA wrapper, module replacement by
name, and per-layer quantization from layer settings.

Typical use inside a method's ``prepare`` (this is what ``qlora`` does)::

    freeze(model)                                              # automix.methods.base.freeze
    quantize_layers(model, layer_settings, method="rtn")       # bits < 16 -> QuantLinear
    adapters = inject_lora(model, layer_settings, alpha=16.0)  # rank > 0 -> LoRALinear
    # LoftQ / QuAILoRA / ApiQ then overwrite adapters[name].lora_A / lora_B (and may replace
    # adapters[name].base with their own QuantLinear via QuantLinear.from_quantized).

Names are the stable target-layer names of ``automix.arch.target_layers`` (e.g.
"model.layers.3.mlp.down_proj"); after injection that name holds the ``LoRALinear`` and the
original layer lives at "<name>.base".
"""

from __future__ import annotations

import math
from typing import Mapping

import torch
from torch import nn

from automix.arch import linear_shape
from automix.config.layers import LayerSettings
from automix.quant import DEFAULT_METHOD, QuantLinear


def _module_dtype_device(module: nn.Module) -> tuple[torch.dtype, torch.device]:
    dtype = getattr(module, "dtype", None)
    for t in list(module.parameters()) + list(module.buffers()):
        if t.is_floating_point():
            return (dtype if isinstance(dtype, torch.dtype) else t.dtype), t.device
    return (dtype if isinstance(dtype, torch.dtype) else torch.float32), torch.device("cpu")


def module_dtype(module: nn.Module) -> torch.dtype:
    """The compute dtype of a layer (its ``dtype`` attribute, else its first float tensor's)."""
    return _module_dtype_device(module)[0]


class LoRALinear(nn.Module):
    """``y = base(x) + scaling * B(A(dropout(x)))`` with ``scaling = alpha / rank``.

    ``base`` is any frozen linear-like layer (nn.Linear, Conv1D, QuantLinear). ``lora_A``
    ``[rank, in]`` starts Kaiming-uniform (as in PEFT), ``lora_B`` ``[out, rank]`` at zero, so the
    wrapped layer initially computes exactly ``base``. Initialisers (LoftQ, QuAILoRA, ApiQ) assign
    ``lora_A.data`` / ``lora_B.data`` in float32 with the scaling already accounted for.
    """

    def __init__(self, base: nn.Module, rank: int, alpha: float = 16.0, dropout: float = 0.0,
                 dtype: torch.dtype | None = None) -> None:
        super().__init__()
        out_f, in_f = linear_shape(base)
        if rank < 1 or rank > min(out_f, in_f):
            raise ValueError(f"LoRA rank must be in [1, {min(out_f, in_f)}] for a "
                             f"({out_f}, {in_f}) layer, got {rank}")
        base_dtype, device = _module_dtype_device(base)
        dtype = dtype or base_dtype
        self.base = base
        self.in_features, self.out_features, self.rank = in_f, out_f, rank
        self.alpha = float(alpha)
        self.scaling = self.alpha / rank
        self.lora_A = nn.Parameter(torch.empty(rank, in_f, dtype=dtype, device=device))
        self.lora_B = nn.Parameter(torch.zeros(out_f, rank, dtype=dtype, device=device))
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()

    def delta_weight(self) -> torch.Tensor:
        """The dense ``scaling * B @ A`` ``[out, in]`` the adapter adds."""
        return self.scaling * (self.lora_B @ self.lora_A)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        base = self.base
        y = base(x)  # a QuantLinear saves nothing for backward (quant_matmul re-dequantizes)
        h = nn.functional.linear(self.dropout(x).to(self.lora_A.dtype), self.lora_A)
        return y + (nn.functional.linear(h, self.lora_B) * self.scaling).to(y.dtype)

    def extra_repr(self) -> str:
        return f"rank={self.rank}, alpha={self.alpha}, scaling={self.scaling:g}"


def replace_module(model: nn.Module, name: str, new: nn.Module) -> nn.Module:
    """Put ``new`` at dotted path ``name``; returns the module it replaced."""
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    old = getattr(parent, child)
    setattr(parent, child, new)
    return old


def _unwrap(module: nn.Module) -> nn.Module:
    return module.base if isinstance(module, LoRALinear) else module


def quantize_layers(model: nn.Module, layer_settings: Mapping[str, LayerSettings],
                    method: str = DEFAULT_METHOD, **quant_kwargs: object) -> dict[str, nn.Module]:
    """Replace every target layer with ``bits < 16`` by a ``QuantLinear`` (its group size; its
    backward re-dequantizes the weight instead of saving it); layers already wrapped by ``LoRALinear`` get their ``base`` replaced. Returns name -> QuantLinear.
    Layers already quantized are left alone."""
    done: dict[str, nn.Module] = {}
    for name, s in layer_settings.items():
        if s.bits >= 16:
            continue
        module = model.get_submodule(name)
        base = _unwrap(module)
        if isinstance(base, QuantLinear):
            done[name] = base
            continue
        try:
            q = QuantLinear.from_linear(base, s.bits, s.group_size, method, **quant_kwargs)
        except ValueError as err:
            raise ValueError(f"layer {name}: {err}") from err
        q.requires_grad_(False)
        if isinstance(module, LoRALinear):
            module.base = q
        else:
            replace_module(model, name, q)
        done[name] = q
    return done


def inject_lora(model: nn.Module, layer_settings: Mapping[str, LayerSettings], alpha: float = 16.0,
                dropout: float = 0.0, dtype: torch.dtype | None = None) -> dict[str, LoRALinear]:
    """Wrap every target layer with ``rank > 0`` in a ``LoRALinear``; returns name -> wrapper.

    Only ``lora_A`` / ``lora_B`` of the new wrappers require grad; the base stays as it was
    (call ``freeze(model)`` first). A fixed seed before the call makes the A init deterministic.
    """
    out: dict[str, LoRALinear] = {}
    for name, s in layer_settings.items():
        if s.rank <= 0:
            continue
        module = model.get_submodule(name)
        if isinstance(module, LoRALinear):
            raise ValueError(f"layer {name} already has a LoRA adapter")
        wrapper = LoRALinear(module, s.rank, alpha, dropout, dtype)
        replace_module(model, name, wrapper)
        out[name] = wrapper
    return out


def lora_layers(model: nn.Module) -> dict[str, LoRALinear]:
    """All LoRALinear wrappers of a model by name."""
    return {n: m for n, m in model.named_modules() if isinstance(m, LoRALinear)}
