"""What a supported decoder model looks like: its blocks, their linear layers, their shapes.

Everything downstream (quantization, pruning, adapters, the memory model, search spaces)
addresses layers by the stable dotted names produced here ("model.layers.3.mlp.down_proj"), so
the names come from a per-architecture table rather than from module types: a layer keeps its
name after another module (a QuantLinear, an adapter wrapper) replaces it. GPT-2's transposed
``Conv1D`` is handled here and only here (`linear_weight`, `linear_shape`, `as_linear`).
Structured pruning's unit counts (`kept_units`) and the resulting layer shapes
(`layer_shapes`) are arithmetic on these facts, shared by pruning, the methods and the memory
model. Needs a model's config (or the model), never its weights.
"""

from __future__ import annotations

import functools

from dataclasses import dataclass, field
from typing import Any, Mapping

import torch
from torch import nn
from transformers.pytorch_utils import Conv1D

from automix.config.layers import LayerSettings

__all__ = [
    "ARCHITECTURES", "ArchInfo", "CoupledGroup", "ModelLoadError", "arch_info", "as_arch_info",
    "as_linear", "block_index", "block_ratios", "coupled_groups", "is_transposed", "kept_units",
    "layer_kind", "layer_shapes", "linear_shape", "linear_weight", "supported_architectures",
    "target_layer_names", "target_layers", "ATTENTION_KINDS", "MLP_KINDS",
]

ATTENTION_KINDS = ("attn_q", "attn_k", "attn_v", "attn_qkv", "attn_o")
MLP_KINDS = ("mlp_gate", "mlp_up", "mlp_down")


class ModelLoadError(ValueError):
    """A model spec, directory or architecture that automix cannot load, with the reason."""


@dataclass(frozen=True)
class _ArchSpec:
    """Where the decoder blocks live and which linear layers each block holds."""

    blocks: str  # dotted path of the ModuleList of decoder blocks
    linears: tuple[tuple[str, str], ...]  # (path inside a block, layer kind), in forward order
    transposed: bool = False  # True for GPT-2's Conv1D: weight stored as (in, out)


_LLAMA_LIKE = _ArchSpec(
    blocks="model.layers",
    linears=(
        ("self_attn.q_proj", "attn_q"),
        ("self_attn.k_proj", "attn_k"),
        ("self_attn.v_proj", "attn_v"),
        ("self_attn.o_proj", "attn_o"),
        ("mlp.gate_proj", "mlp_gate"),
        ("mlp.up_proj", "mlp_up"),
        ("mlp.down_proj", "mlp_down"),
    ),
)

ARCHITECTURES: dict[str, _ArchSpec] = {
    "llama": _LLAMA_LIKE,
    "mistral": _LLAMA_LIKE,
    "qwen2": _LLAMA_LIKE,
    "opt": _ArchSpec(
        blocks="model.decoder.layers",
        linears=(
            ("self_attn.q_proj", "attn_q"),
            ("self_attn.k_proj", "attn_k"),
            ("self_attn.v_proj", "attn_v"),
            ("self_attn.out_proj", "attn_o"),
            ("fc1", "mlp_up"),
            ("fc2", "mlp_down"),
        ),
    ),
    "gpt2": _ArchSpec(
        blocks="transformer.h",
        linears=(
            ("attn.c_attn", "attn_qkv"),
            ("attn.c_proj", "attn_o"),
            ("mlp.c_fc", "mlp_up"),
            ("mlp.c_proj", "mlp_down"),
        ),
        transposed=True,
    ),
}


def supported_architectures() -> list[str]:
    """Model types (`config.model_type`) whose layers automix knows how to enumerate."""
    return sorted(ARCHITECTURES)




@dataclass(frozen=True)
class ArchInfo:
    """Shape facts the memory model, pruning and search space need, independent of the family."""

    model_type: str
    hidden_size: int
    n_layers: int
    n_heads: int
    n_kv_heads: int
    head_dim: int
    intermediate_size: int
    vocab_size: int
    tied_embeddings: bool
    max_positions: int
    block_prefix: str
    layer_kinds: tuple[str, ...] = field(default=())


def _config_of(model_or_config: Any) -> Any:
    return getattr(model_or_config, "config", model_or_config)


def _spec_for(model_type: str) -> _ArchSpec:
    if model_type not in ARCHITECTURES:
        raise ModelLoadError(
            f"unsupported architecture {model_type!r}; supported: {', '.join(supported_architectures())}"
        )
    return ARCHITECTURES[model_type]


def arch_info(model_or_config: Any) -> ArchInfo:
    """Architecture facts from a model or its config (any supported family)."""
    cfg = _config_of(model_or_config)
    mt = getattr(cfg, "model_type", None)
    spec = _spec_for(mt)
    if mt == "gpt2":
        hidden, layers, heads = cfg.n_embd, cfg.n_layer, cfg.n_head
        inter = cfg.n_inner if cfg.n_inner is not None else 4 * hidden
        kv, max_pos = heads, cfg.n_positions
    elif mt == "opt":
        hidden, layers, heads = cfg.hidden_size, cfg.num_hidden_layers, cfg.num_attention_heads
        inter, kv, max_pos = cfg.ffn_dim, heads, cfg.max_position_embeddings
    else:
        hidden, layers, heads = cfg.hidden_size, cfg.num_hidden_layers, cfg.num_attention_heads
        inter = cfg.intermediate_size
        kv = getattr(cfg, "num_key_value_heads", None) or heads
        max_pos = cfg.max_position_embeddings
    head_dim = getattr(cfg, "head_dim", None) or hidden // heads
    return ArchInfo(
        model_type=mt,
        hidden_size=int(hidden),
        n_layers=int(layers),
        n_heads=int(heads),
        n_kv_heads=int(kv),
        head_dim=int(head_dim),
        intermediate_size=int(inter),
        vocab_size=int(cfg.vocab_size),
        tied_embeddings=bool(getattr(cfg, "tie_word_embeddings", True)),
        max_positions=int(max_pos),
        block_prefix=spec.blocks,
        layer_kinds=tuple(k for _, k in spec.linears),
    )


def as_arch_info(arch: Any) -> ArchInfo:
    """An `ArchInfo` from an `ArchInfo`, a model or a config."""
    return arch if isinstance(arch, ArchInfo) else arch_info(arch)


# ----------------------------------------------------------------------------- layer enumeration


def target_layers(model: nn.Module) -> dict[str, nn.Module]:
    """The linear layers inside decoder blocks, in forward order, keyed by stable dotted name.

    Embeddings and the LM head are never targets. Works on a model whose layers were replaced
    (e.g. by QuantLinear) because names come from the architecture table.
    """
    spec = _spec_for(getattr(_config_of(model), "model_type", None))
    blocks = model.get_submodule(spec.blocks)
    out: dict[str, nn.Module] = {}
    for i, block in enumerate(blocks):
        for rel, _ in spec.linears:
            out[f"{spec.blocks}.{i}.{rel}"] = block.get_submodule(rel)
    return out


def target_layer_names(model_or_config: Any) -> list[str]:
    """Layer names from a config alone (no weights needed): what a search space is built on."""
    info = arch_info(model_or_config)
    spec = ARCHITECTURES[info.model_type]
    return [f"{spec.blocks}.{i}.{rel}" for i in range(info.n_layers) for rel, _ in spec.linears]


@functools.lru_cache(maxsize=1 << 16)  # pure in the name; the memory model asks for every layer, every call
def _split_name(name: str) -> tuple[str, int, str]:
    for spec in ARCHITECTURES.values():
        prefix = spec.blocks + "."
        if name.startswith(prefix):
            idx, _, rel = name[len(prefix):].partition(".")
            if idx.isdigit():
                for r, kind in spec.linears:
                    if r == rel:
                        return kind, int(idx), rel
    raise ValueError(f"{name!r} is not a decoder linear-layer name (e.g. 'model.layers.0.mlp.down_proj')")


def block_index(name: str) -> int:
    """Decoder block index of a target layer name: 'model.layers.3.mlp.down_proj' -> 3."""
    return _split_name(name)[1]


def layer_kind(name: str) -> str:
    """Family-independent role of a layer: attn_q/k/v/qkv/o, mlp_gate/up/down."""
    return _split_name(name)[0]


def is_transposed(module: nn.Module) -> bool:
    """True for GPT-2's Conv1D, whose weight is stored (in_features, out_features)."""
    return isinstance(module, Conv1D)


def linear_weight(module: nn.Module) -> torch.Tensor:
    """The layer's weight as an (out_features, in_features) view, whatever the storage layout."""
    if is_transposed(module):
        return module.weight.t()
    if not hasattr(module, "weight") or module.weight.dim() != 2:
        raise ValueError(f"{type(module).__name__} has no 2-D weight")
    return module.weight


def linear_shape(module: nn.Module) -> tuple[int, int]:
    """(out_features, in_features) of a target layer (nn.Linear, Conv1D, or a replacement)."""
    if hasattr(module, "out_features") and hasattr(module, "in_features"):
        return int(module.out_features), int(module.in_features)
    w = linear_weight(module)
    return int(w.shape[0]), int(w.shape[1])


def as_linear(module: nn.Module) -> nn.Linear:
    """An nn.Linear computing the same function (same tensors for nn.Linear, a copy for Conv1D)."""
    if isinstance(module, nn.Linear):
        return module
    if is_transposed(module):
        w = module.weight
        lin = nn.Linear(w.shape[0], w.shape[1], bias=module.bias is not None, device=w.device, dtype=w.dtype)
        with torch.no_grad():
            lin.weight.copy_(w.t())
            if module.bias is not None:
                lin.bias.copy_(module.bias)
        return lin
    raise ValueError(f"cannot view {type(module).__name__} as nn.Linear")


# ----------------------------------------------------------------------------- pruning couplings


@dataclass(frozen=True)
class CoupledGroup:
    """Layers that must be pruned together in one block.

    `out_pruned` layers lose output rows, `in_pruned` layers lose input columns. Units are heads
    (`unit` = head_dim rows each) or MLP channels (`unit` = 1). For GQA, query heads
    `h*q_per_kv .. (h+1)*q_per_kv-1` share kv head `h`; pruning removes whole kv groups.
    `packed_qkv`: GPT-2's c_attn holds q, k, v stacked along its output dim (offsets 0, d, 2d).
    """

    block: int
    kind: str  # "attention_heads" | "mlp_channels"
    out_pruned: tuple[str, ...]
    in_pruned: tuple[str, ...]
    n_units: int
    unit: int
    n_kv_units: int = 0
    packed_qkv: bool = False


def coupled_groups(model_or_config: Any) -> list[CoupledGroup]:
    """Per block: the attention-head group and the MLP-channel group for structured pruning."""
    info = arch_info(model_or_config)
    spec = ARCHITECTURES[info.model_type]
    groups: list[CoupledGroup] = []
    for i in range(info.n_layers):
        p = f"{spec.blocks}.{i}."
        by_kind = {kind: p + rel for rel, kind in spec.linears}
        if "attn_qkv" in by_kind:
            attn_out: tuple[str, ...] = (by_kind["attn_qkv"],)
        else:
            attn_out = (by_kind["attn_q"], by_kind["attn_k"], by_kind["attn_v"])
        groups.append(CoupledGroup(i, "attention_heads", attn_out, (by_kind["attn_o"],),
                                   info.n_heads, info.head_dim, info.n_kv_heads, "attn_qkv" in by_kind))
        mlp_out = tuple(by_kind[k] for k in ("mlp_gate", "mlp_up") if k in by_kind)
        groups.append(CoupledGroup(i, "mlp_channels", mlp_out, (by_kind["mlp_down"],),
                                   info.intermediate_size, 1))
    return groups


# ----------------------------------------------------------------------------- structured pruning units

def _kept(n: int, ratio: float) -> int:
    return max(1, min(n, int(n * (1.0 - ratio) + 0.5)))


def block_ratios(arch: Any, layer_settings: Mapping[str, LayerSettings]) -> dict[int, tuple[float, float]]:
    """Per block: (attention ratio, MLP ratio) = mean ``prune`` of the block's layers of each kind."""
    sums: dict[int, list[float]] = {}
    for name, s in layer_settings.items():
        b, kind = block_index(name), layer_kind(name)
        acc = sums.setdefault(b, [0.0, 0, 0.0, 0])
        i = 0 if kind in ATTENTION_KINDS else 2
        acc[i] += s.prune
        acc[i + 1] += 1
    return {b: (a[0] / a[1] if a[1] else 0.0, a[2] / a[3] if a[3] else 0.0) for b, a in sums.items()}


def kept_units(arch: Any, layer_settings: Mapping[str, LayerSettings]) -> dict[int, tuple[int, int, int]]:
    """Per block: (query heads, kv heads, MLP channels) left after structured pruning."""
    info = as_arch_info(arch)
    ratios = block_ratios(info, layer_settings)
    q_per_kv = info.n_heads // info.n_kv_heads
    out = {}
    for b in range(info.n_layers):
        ra, rm = ratios.get(b, (0.0, 0.0))
        kv = _kept(info.n_kv_heads, ra) if ra > 0 else info.n_kv_heads
        inter = _kept(info.intermediate_size, rm) if rm > 0 else info.intermediate_size
        out[b] = (kv * q_per_kv, kv, inter)
    return out


def layer_shapes(arch: Any, layer_settings: Mapping[str, LayerSettings]) -> dict[str, tuple[int, int]]:
    """(out_features, in_features) of every target layer after structured pruning."""
    info = as_arch_info(arch)
    kept = kept_units(info, layer_settings)
    h, hd = info.hidden_size, info.head_dim
    out: dict[str, tuple[int, int]] = {}
    for name in layer_settings:
        b, kind = block_index(name), layer_kind(name)
        nh, nkv, inter = kept[b]
        out[name] = {
            "attn_q": (nh * hd, h), "attn_k": (nkv * hd, h), "attn_v": (nkv * hd, h),
            "attn_qkv": (3 * nh * hd, h), "attn_o": (h, nh * hd),
            "mlp_gate": (inter, h), "mlp_up": (inter, h), "mlp_down": (h, inter),
        }[kind]
    return out
