"""Pruning: structured (really smaller tensors) and unstructured (masks).

Structured pruning removes whole attention heads and MLP intermediate channels, in the spirit of
LLM-Pruner (Ma et al., 2023): the layers that share a unit are pruned together (q/k/v rows and
o_proj columns of a head; gate/up rows and down_proj columns of a channel), and a unit's
importance is the first-order Taylor estimate of the loss change when it is removed,
``sum |w * dL/dw|`` over all its weights, accumulated on calibration batches. With grouped-query
attention a unit is a whole kv group (one k/v head and the query heads that read it), so the
number of query heads per kv head, and thus the attention code, stays unchanged.

**Block ratios.** Pruning is decided per decoder block, not per layer: a block's attention ratio
is the mean ``prune`` of its attention layers (q, k, v, o) and its MLP ratio the mean ``prune`` of
its MLP layers (gate, up, down). The kept count is ``max(1, round(n * (1 - ratio)))`` units (kv
groups for attention, channels for the MLP). :func:`automix.arch.kept_units` is the single source of that rule
and the memory model uses it too, so predictions and the pruned model always agree.

Unstructured pruning (``magnitude`` or ``wanda``) zeroes the given fraction of each layer's
weights, per output row, keeping shapes (memory does not shrink; accuracy effects are real).
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any, Iterable, Mapping

import torch
from torch import nn

from automix.config.layers import LayerSettings
from automix.arch import arch_info, kept_units, linear_weight
from automix.config.locations import cache_root
from automix.trial.models import load_model, model_fingerprint
from automix.trial.stream import StreamedLinear

STRUCTURED_FAMILIES = ("llama", "mistral", "qwen2")


class PruneError(ValueError):
    """Pruning cannot be applied as asked; the message says why."""


def _slice_linear(lin: nn.Linear, idx: torch.Tensor, dim: int) -> nn.Linear:
    """A new nn.Linear keeping rows (dim 0) or columns (dim 1) ``idx`` of ``lin``."""
    idx = idx.to(lin.weight.device)
    w = lin.weight.detach().index_select(dim, idx).clone()
    out_f, in_f = w.shape
    new = nn.Linear(in_f, out_f, bias=lin.bias is not None, device=w.device, dtype=w.dtype)
    with torch.no_grad():
        new.weight.copy_(w)
        if lin.bias is not None:
            new.bias.copy_(lin.bias.detach() if dim == 1 else lin.bias.detach().index_select(0, idx))
    new.weight.requires_grad_(lin.weight.requires_grad)
    return new


def _check_structured(model: nn.Module, streamed_ok: bool = False) -> Any:
    info = arch_info(model)
    if info.model_type not in STRUCTURED_FAMILIES:
        raise PruneError(f"structured pruning supports {', '.join(STRUCTURED_FAMILIES)}; "
                         f"{info.model_type!r} can use unstructured pruning (magnitude or wanda)")
    allowed = (nn.Linear, StreamedLinear) if streamed_ok else (nn.Linear,)
    for name, m in _blocks(model):
        for rel in ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
                    "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj"):
            if type(m.get_submodule(rel)) not in allowed:
                raise PruneError(f"{name}.{rel} is a {type(m.get_submodule(rel)).__name__}; prune "
                                 "before quantizing or adding adapters")
    return info


def _slice(lin: nn.Module, idx: torch.Tensor, dim: int) -> nn.Module:
    """``lin`` keeping rows (dim 0) or columns (dim 1) ``idx``: a new nn.Linear, or the same
    streamed layer reading only those (:meth:`automix.trial.stream.StreamedLinear.select`)."""
    if isinstance(lin, StreamedLinear):
        lin.select(idx, dim)
        return lin
    return _slice_linear(lin, idx, dim)


def _blocks(model: nn.Module) -> list[tuple[str, nn.Module]]:
    prefix = arch_info(model).block_prefix
    return [(f"{prefix}.{i}", b) for i, b in enumerate(model.get_submodule(prefix))]


def _unit_scores(block: nn.Module, info: Any, taylor: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """(kv-group scores [n_kv], channel scores [intermediate]) of one block."""
    hd, nkv = info.head_dim, block.self_attn.k_proj.out_features // info.head_dim
    q_per_kv = info.n_heads // info.n_kv_heads

    def s(lin: nn.Linear) -> torch.Tensor:
        w = lin.weight.detach().float()
        if taylor:
            if lin.weight.grad is None:
                raise PruneError("no gradient for Taylor importance (empty calibration data?)")
            return (w * lin.weight.grad.float()).abs()
        return w.pow(2)

    at = block.self_attn
    q = s(at.q_proj).sum(1).view(nkv, q_per_kv * hd).sum(1)
    k = s(at.k_proj).sum(1).view(nkv, hd).sum(1)
    v = s(at.v_proj).sum(1).view(nkv, hd).sum(1)
    o = s(at.o_proj).sum(0).view(nkv, q_per_kv * hd).sum(1)
    mlp = block.mlp
    ch = s(mlp.gate_proj).sum(1) + s(mlp.up_proj).sum(1) + s(mlp.down_proj).sum(0)
    return q + k + v + o, ch


def taylor_gradients(model: nn.Module, calib: torch.Tensor, batch_size: int = 8) -> None:
    """Accumulate dL/dW of every block linear weight over ``calib`` ([n, L] token ids)."""
    if calib is None or calib.ndim != 2 or calib.shape[0] == 0 or calib.shape[1] < 2:
        raise PruneError(f"calibration data must be a non-empty [n, seq_len>=2] tensor, got "
                         f"{None if calib is None else tuple(calib.shape)}")
    weights = [m.weight for _, b in _blocks(model) for m in b.modules() if isinstance(m, nn.Linear)]
    prev = [w.requires_grad for w in weights]
    others = [p for p in model.parameters() if all(p is not w for w in weights)]
    prev_o = [p.requires_grad for p in others]
    for w in weights:
        w.requires_grad_(True)
        w.grad = None
    for p in others:
        p.requires_grad_(False)
    was_training = model.training
    model.eval()
    device = weights[0].device
    try:
        for i in range(0, calib.shape[0], batch_size):
            ids = calib[i:i + batch_size].to(device)
            model(input_ids=ids, labels=ids).loss.backward()
    finally:
        for w, r in zip(weights, prev):
            w.requires_grad_(r)
        for p, r in zip(others, prev_o):
            p.requires_grad_(r)
        model.train(was_training)


@torch.no_grad()
def _apply_block(block: nn.Module, info: Any, kv_keep: torch.Tensor, ch_keep: torch.Tensor) -> None:
    hd, q_per_kv = info.head_dim, info.n_heads // info.n_kv_heads
    at, mlp = block.self_attn, block.mlp
    heads = (kv_keep[:, None] * q_per_kv + torch.arange(q_per_kv, device=kv_keep.device)).flatten()
    q_rows = (heads[:, None] * hd + torch.arange(hd, device=kv_keep.device)).flatten()
    kv_rows = (kv_keep[:, None] * hd + torch.arange(hd, device=kv_keep.device)).flatten()
    at.q_proj = _slice(at.q_proj, q_rows, 0)
    at.k_proj = _slice(at.k_proj, kv_rows, 0)
    at.v_proj = _slice(at.v_proj, kv_rows, 0)
    at.o_proj = _slice(at.o_proj, q_rows, 1)
    for attr, n in (("num_heads", len(heads)), ("num_key_value_heads", len(kv_keep))):
        if hasattr(at, attr):
            setattr(at, attr, n)
    mlp.gate_proj = _slice(mlp.gate_proj, ch_keep, 0)
    mlp.up_proj = _slice(mlp.up_proj, ch_keep, 0)
    mlp.down_proj = _slice(mlp.down_proj, ch_keep, 1)
    mlp.intermediate_size = len(ch_keep)


UnitScores = dict[int, tuple[torch.Tensor, torch.Tensor]]


def unit_scores(model: nn.Module, calib: torch.Tensor | None = None, batch_size: int = 8) -> UnitScores:
    """Per block, the importance of each kv group and each MLP channel: first-order Taylor on
    ``calib`` when given (the gradients are dropped after), else weight magnitude (L2)."""
    info = _check_structured(model)
    taylor = calib is not None
    if taylor:
        taylor_gradients(model, calib, batch_size)
    try:
        return {b: tuple(t.detach().float().cpu() for t in _unit_scores(block, info, taylor))
                for b, (_, block) in enumerate(_blocks(model))}
    finally:
        for p in model.parameters():
            p.grad = None


def scores_path(model_dir: Path, calib: torch.Tensor, dtype: torch.dtype = torch.float32,
                batch_size: int = 8) -> Path:
    """Where :func:`cached_unit_scores` keeps the Taylor scores of a model on ``calib``."""
    h = hashlib.sha256()
    h.update(f"taylor-v1:{model_fingerprint(model_dir)}:{dtype}:{batch_size}:{tuple(calib.shape)}".encode())
    h.update(calib.to(torch.int64).contiguous().numpy().tobytes())
    return cache_root() / "prune" / f"{h.hexdigest()[:24]}.pt"


def cached_unit_scores(model_dir: Path, calib: torch.Tensor, dtype: torch.dtype = torch.float32,
                       batch_size: int = 8) -> UnitScores:
    """The Taylor :func:`unit_scores` of the model in ``model_dir`` on ``calib``. They depend on
    the weights and the calibration data only, not on how much a trial prunes, so they are
    computed once (on a full-precision copy of the model on the CPU, where pruning always ran)
    and kept at :func:`scores_path`: a trial then prunes its streamed layers as they are read,
    holding nothing more."""
    path = scores_path(model_dir, calib, dtype, batch_size)
    if path.is_file():
        try:
            return {int(b): (v[0], v[1]) for b, v in torch.load(path).items()}
        except Exception:  # noqa: BLE001 - an unreadable entry is computed again
            pass
    model, _ = load_model(model_dir, dtype=dtype)
    try:
        scores = unit_scores(model, calib, batch_size)
    finally:
        del model
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    torch.save(scores, tmp)
    os.replace(tmp, path)  # atomic: a concurrent trial reads the whole entry or none
    return scores


def prune_structured(model: nn.Module, layer_settings: Mapping[str, LayerSettings],
                     calib: torch.Tensor | None = None, batch_size: int = 8,
                     scores: UnitScores | None = None) -> dict[int, tuple[int, int, int]]:
    """Remove heads and MLP channels per block as :func:`kept_units` says, in place.

    Importance (:func:`unit_scores`) is first-order Taylor on ``calib`` when given, else weight
    magnitude (L2); ``scores`` computed before (the same model and calibration, e.g. cached)
    are used as they are, and then the layers may be streamed ones (:mod:`automix.trial.stream`,
    sliced when they are read). Returns the kept (heads, kv heads, channels) per block; the
    counts are also stored on the config as ``automix_pruned`` (and the global config sizes
    updated when every block agrees).
    """
    info = arch_info(model)
    kept = kept_units(info, layer_settings)
    if all(k == (info.n_heads, info.n_kv_heads, info.intermediate_size) for k in kept.values()):
        return kept
    _check_structured(model, streamed_ok=scores is not None)
    if scores is None:
        scores = unit_scores(model, calib, batch_size)
    for (name, block), b in zip(_blocks(model), range(info.n_layers)):
        nh, nkv, inter = kept[b]
        attn_s, ch_s = scores[b]
        kv_keep = torch.sort(torch.topk(attn_s, nkv).indices).values
        ch_keep = torch.sort(torch.topk(ch_s, inter).indices).values
        _apply_block(block, info, kv_keep, ch_keep)
    cfg = model.config
    cfg.automix_pruned = {str(b): list(v) for b, v in kept.items()}
    if len(set(kept.values())) == 1:
        nh, nkv, inter = next(iter(kept.values()))
        cfg.num_attention_heads, cfg.num_key_value_heads, cfg.intermediate_size = nh, nkv, inter
        cfg.head_dim = info.head_dim
    return kept


# ----------------------------------------------------------------------------- unstructured


@torch.no_grad()
def input_norms(model: nn.Module, names: Iterable[str], calib: torch.Tensor, batch_size: int = 8
                ) -> dict[str, torch.Tensor]:
    """Per target layer, the L2 norm of each input feature over ``calib`` (Wanda's ||X_j||)."""
    sq: dict[str, torch.Tensor] = {}
    hooks = []
    for n in names:
        def hook(_m, args, _o, n=n):
            x = args[0].detach().float().reshape(-1, args[0].shape[-1])
            sq[n] = sq.get(n, 0) + x.pow(2).sum(0)
        hooks.append(model.get_submodule(n).register_forward_hook(hook))
    try:
        device = next(model.parameters()).device
        for i in range(0, calib.shape[0], batch_size):
            model(input_ids=calib[i:i + batch_size].to(device))
    finally:
        for h in hooks:
            h.remove()
    return {n: v.sqrt() for n, v in sq.items()}


@torch.no_grad()
def prune_unstructured(model: nn.Module, layer_settings: Mapping[str, LayerSettings], method: str = "magnitude",
                       calib: torch.Tensor | None = None) -> dict[str, float]:
    """Zero the ``prune`` fraction of each layer's weights per output row (|W| or |W|*||X||).

    Returns the achieved sparsity per pruned layer.
    """
    if method not in ("magnitude", "wanda"):
        raise PruneError(f"unstructured method must be 'magnitude' or 'wanda', got {method!r}")
    todo = {n: s.prune for n, s in layer_settings.items() if s.prune > 0}
    if method == "wanda":
        if calib is None:
            raise PruneError("wanda pruning needs calibration data")
        norms = input_norms(model, todo, calib)
    out = {}
    for n, ratio in todo.items():
        w = linear_weight(model.get_submodule(n))
        score = w.detach().abs().float()
        if method == "wanda":
            score = score * norms[n][None, :]
        k = int(w.shape[1] * ratio)
        if k == 0:
            out[n] = 0.0
            continue
        idx = torch.topk(score, k, dim=1, largest=False).indices
        w.scatter_(1, idx, 0.0)
        out[n] = float((w == 0).float().mean())
    return out


def prune_model(model: nn.Module, layer_settings: Mapping[str, LayerSettings], mode: str = "structured",
                calib: torch.Tensor | None = None) -> Any:
    """Dispatch: ``structured`` (Taylor with calib, else magnitude), ``magnitude`` or ``wanda``."""
    if not any(s.prune > 0 for s in layer_settings.values()):
        return None
    if mode == "structured":
        return prune_structured(model, layer_settings, calib)
    return prune_unstructured(model, layer_settings, mode, calib)
