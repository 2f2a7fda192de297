"""``lora``: LoRA adapters on a full-precision (never quantized) base — the upper reference.

Every target layer with ``rank > 0`` gets a :class:`~automix.methods.adapters.LoRALinear`
(A Kaiming, B zero, scaling alpha/r); the per-layer bits are ignored because the base stays
dense. Everything else is frozen.
"""

from __future__ import annotations

from typing import Any, Mapping

import torch
from torch import nn

from automix.config.layers import LayerSettings
from automix.methods.base import Method, MemoryProfile, MethodSettings, freeze, lora_memory_profile
from automix.methods.adapters import inject_lora, quantize_layers


class LoRA(Method):
    name = "lora"
    quantize_base = False

    def prepare(self, model: nn.Module, layer_settings: Mapping[str, LayerSettings],
                settings: MethodSettings | Mapping[str, Any] | None = None,
                calib: torch.Tensor | None = None) -> nn.Module:
        settings = self.check_settings(settings)
        freeze(model)
        if self.quantize_base:
            quantize_layers(model, layer_settings, method=settings.quantizer)
        inject_lora(model, layer_settings, alpha=settings.lora_alpha, dropout=settings.lora_dropout)
        return model

    def memory_profile(self, arch: Any, layer_settings: Mapping[str, LayerSettings],
                       settings: MethodSettings | Mapping[str, Any] | None = None) -> MemoryProfile:
        settings = self.check_settings(settings)
        return lora_memory_profile(arch, layer_settings, settings, quantize_base=self.quantize_base)
