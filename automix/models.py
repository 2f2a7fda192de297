"""Load local Hugging Face causal LMs and describe their decoder linear layers.

Everything downstream (quantization, pruning, adapters, memory model, search space) addresses
layers by the stable dotted names produced here ("model.layers.3.mlp.down_proj"), so the names
come from a per-architecture table rather than from module types: a layer keeps its name after
another module (a QuantLinear, an adapter wrapper) replaces it.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

BUILTIN_SIZES = ("tiny", "small")


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


class ModelLoadError(ValueError):
    """A model spec or directory that automix cannot load, with the reason."""


# ----------------------------------------------------------------------------- architecture info


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
    from transformers.pytorch_utils import Conv1D

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


# ----------------------------------------------------------------------------- loading


def builtin_model_dir(size: str = "tiny") -> Path:
    """Directory of the built-in model: shipped in the package, else trained once and cached."""
    if size not in BUILTIN_SIZES:
        raise ValueError(f"unknown built-in model size {size!r}; choose one of {', '.join(BUILTIN_SIZES)}")
    shipped = Path(__file__).parent / "assets" / size
    if (shipped / "config.json").is_file() and (shipped / "model.safetensors").is_file():
        return shipped
    from automix.pretrain import cached_model_dir, pretrain

    cached = cached_model_dir(size)
    if (cached / "model.safetensors").is_file() and (cached / "config.json").is_file():
        return cached
    pretrain(size=size, out=cached)
    return cached


def resolve_model_dir(spec: str | os.PathLike) -> Path:
    """'builtin:tiny' / 'builtin:small' / a path -> an existing directory with a config.json."""
    s = str(spec)
    if s.startswith("builtin:") or s in BUILTIN_SIZES:
        return builtin_model_dir(s.split(":", 1)[-1] or "tiny")
    path = Path(s).expanduser()
    if not path.exists():
        raise ModelLoadError(f"model directory {s!r} does not exist (expected a save_pretrained "
                             "directory or 'builtin:tiny' / 'builtin:small')")
    if not path.is_dir() or not (path / "config.json").is_file():
        raise ModelLoadError(f"{s!r} is not a Hugging Face model directory: no config.json in it")
    return path


def _check_config(path: Path) -> Any:
    from transformers import AutoConfig

    try:
        cfg = AutoConfig.from_pretrained(path)
    except Exception as err:  # noqa: BLE001 - re-raised with the path
        raise ModelLoadError(f"cannot read the model config in {path}: {err}") from err
    mt = getattr(cfg, "model_type", None)
    archs = list(getattr(cfg, "architectures", None) or [])
    if archs and not any(a.endswith("ForCausalLM") or a.endswith("LMHeadModel") for a in archs):
        raise ModelLoadError(f"{path} holds {', '.join(archs)}, not a causal language model; "
                             f"automix needs a *ForCausalLM model of: {', '.join(supported_architectures())}")
    _spec_for(mt)  # raises for unsupported types
    return cfg


def load_model(spec: str | os.PathLike = "builtin:tiny", dtype: torch.dtype = torch.float32,
               device: str | torch.device = "cpu") -> tuple[nn.Module, Any]:
    """Load a causal LM and its tokenizer (None when the directory has no tokenizer files).

    `spec` is 'builtin:tiny', 'builtin:small' or a local `save_pretrained` directory. The model
    is returned in eval mode.
    """
    from transformers import AutoModelForCausalLM

    path = resolve_model_dir(spec)
    _check_config(path)
    try:
        model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype)
    except Exception as err:  # noqa: BLE001
        raise ModelLoadError(f"cannot load the model weights in {path}: {err}") from err
    model.to(device).eval()
    return model, load_tokenizer(path)


def load_tokenizer(spec: str | os.PathLike) -> Any:
    """The tokenizer of a model directory (or 'builtin:...'), None when it has no tokenizer
    files; a missing pad token falls back to EOS, as batches need one."""
    from transformers import AutoTokenizer

    path = resolve_model_dir(spec)
    if not any((path / f).is_file() for f in ("tokenizer.json", "tokenizer_config.json", "vocab.json",
                                                "tokenizer.model")):
        return None
    tokenizer = AutoTokenizer.from_pretrained(path)
    if tokenizer.pad_token is None and tokenizer.eos_token is not None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


# ----------------------------------------------------------------------------- fingerprints

_FULL_HASH_LIMIT = 1 << 30  # files above 1 GiB are hashed by sampled 1 MiB chunks every 64 MiB


def _hash_file(h: "hashlib._Hash", path: Path) -> None:
    size = path.stat().st_size
    h.update(f"{path.name}:{size}".encode())
    with open(path, "rb") as f:
        if size <= _FULL_HASH_LIMIT:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
        else:
            for off in range(0, size, 64 << 20):
                f.seek(off)
                h.update(f.read(1 << 20))


def model_fingerprint(model_dir_or_model: str | os.PathLike | nn.Module) -> str:
    """Stable 16-hex-digit hash of a model's config and weights: the key for on-disk caches."""
    h = hashlib.sha256()
    if isinstance(model_dir_or_model, nn.Module):
        cfg = getattr(model_dir_or_model, "config", None)
        if cfg is not None:
            d = cfg.to_dict()
            for k in ("_name_or_path", "transformers_version", "dtype", "torch_dtype"):
                d.pop(k, None)
            h.update(json.dumps(d, sort_keys=True, default=str).encode())
        for name, t in model_dir_or_model.state_dict().items():
            t = t.detach().cpu().contiguous()
            h.update(f"{name}:{t.dtype}:{tuple(t.shape)}".encode())
            h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
        return h.hexdigest()[:16]
    path = resolve_model_dir(model_dir_or_model)
    files = sorted(p for p in path.iterdir() if p.is_file() and (
        p.name == "config.json" or p.suffix in (".safetensors", ".bin", ".pt")))
    for p in files:
        _hash_file(h, p)
    return h.hexdigest()[:16]
