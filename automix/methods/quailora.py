"""QuAILoRA: calibration-aware LoRA initialisation for a quantized base.

QuAILoRA (Lawton et al., 2024) starts like LoftQ (rank-r SVD of the quantization residual
E = W - Q) and then refines the factors so that the adapter cancels the quantization error
*where the inputs actually are*: it minimises the calibrated error

    || X (E - s*B@A)^T ||_F^2 = tr((E - s*B@A) H (E - s*B@A)^T),   H = X^T X,

by alternating closed-form ridge least-squares solves for B (the step that sees H) and for A.
The quantized weight Q itself stays the plain quantization of W. The same input statistics
(H per layer, shared by layers that read the same tensor) feed QEFT's weak-column choice, so the
collector lives here.
"""

from __future__ import annotations

import math
import weakref
from typing import Any

import torch
from torch import Tensor, nn

from automix.methods.base import InitMemory, MethodError, MethodSettings, backbone_hidden
from automix.methods.loftq import LowRankInitMethod, check_rank, check_svd_option, loftq_init
from automix.arch import linear_weight
from automix.quant import DEFAULT_METHOD

QUAILORA_LAYER_FACTOR = 12.0  # bytes held per fp32 byte of the layer initialised (benchmarks/memory_model.md)


# ---------------------------------------------------------------------------------------------
# calibration statistics
# ---------------------------------------------------------------------------------------------
@torch.no_grad()
def collect_input_hessians(
    model: nn.Module,
    layers: dict[str, nn.Module],
    calib: Tensor,
    batch_size: int = 8,
) -> tuple[dict[str, Tensor], list[list[str]]]:
    """Run ``calib`` (``[n, L]`` token ids) through ``model`` and sum X^T X of each layer's input.

    Layers that receive the very same input tensor (q/k/v after the attention norm, gate/up
    after the MLP norm) share one matrix and form one *input group*; returns
    ``(hessians_by_layer, groups)`` with ``groups`` in model order. Matrices are float32
    ``[in, in]`` sums over all calibration tokens (not averaged).
    """
    if calib is None or calib.ndim != 2 or calib.numel() == 0:
        raise ValueError(f"calibration batch must be a non-empty [n, seq_len] tensor, got {None if calib is None else tuple(calib.shape)}")
    device = next(model.parameters()).device
    leader: dict[str, str] = {}
    sums: dict[str, Tensor] = {}
    first_pass = [True]
    seen: dict[tuple, tuple[str, weakref.ref]] = {}

    def make_hook(name: str):
        def hook(_mod, args, _out=None):
            x = args[0]
            if first_pass[0]:
                # the same input: the same tensor, still alive (a weak reference: holding every
                # input would keep all of them, and a freed tensor's address can be reused)
                key = (x.data_ptr(), tuple(x.shape), x.dtype)
                if key in seen and seen[key][1]() is x:
                    leader[name] = seen[key][0]
                    return
                seen[key] = (name, weakref.ref(x))
                leader[name] = name
            elif leader.get(name) != name:
                return
            flat = x.detach().reshape(-1, x.shape[-1]).float()
            h = flat.T @ flat
            if name in sums:
                sums[name] += h
            else:
                sums[name] = h
        return hook

    handles = [m.register_forward_pre_hook(make_hook(n)) for n, m in layers.items()]
    was_training = model.training
    model.eval()
    try:
        for start in range(0, calib.shape[0], batch_size):
            seen.clear()
            backbone_hidden(model, calib[start:start + batch_size].to(device))  # the layers' inputs; no logits
            first_pass[0] = False
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    missing = [n for n in layers if n not in leader]
    if missing:
        raise ValueError(f"calibration forward never reached layers {missing[:5]} (are they inside the model?)")
    hessians = {n: sums[leader[n]] for n in layers}
    groups: dict[str, list[str]] = {}
    for n in layers:
        groups.setdefault(leader[n], []).append(n)
    return hessians, list(groups.values())


# ---------------------------------------------------------------------------------------------
# the alternating least-squares refinement
# ---------------------------------------------------------------------------------------------
def calibrated_error(residual: Tensor, a: Tensor, b: Tensor, hessian: Tensor, scaling: float) -> float:
    """tr((E - s*B@A) H (E - s*B@A)^T): squared output error of the adapter-corrected layer."""
    d = residual.double() - scaling * (b.double() @ a.double())
    return float(((d @ hessian.double()) * d).sum())


def _rebalance(bs: Tensor, a: Tensor, rank: int, scaling: float) -> tuple[Tensor, Tensor]:
    """Re-split the rank-r product bs @ a into SVD-balanced factors (cheap: two QRs + r x r SVD)."""
    qb, rb = torch.linalg.qr(bs)
    qa, ra = torch.linalg.qr(a.T)
    u, s, vh = torch.linalg.svd(rb @ ra.T)
    root = s.clamp_min(0).sqrt() / math.sqrt(scaling)
    b_new = (qb @ u) * root
    a_new = root[:, None] * (vh @ qa.T)
    return a_new[:rank], b_new[:, :rank]


@torch.no_grad()
def quailora_refine(
    residual: Tensor,
    a: Tensor,
    b: Tensor,
    hessian: Tensor,
    scaling: float = 1.0,
    iters: int = 10,
    damp: float = 0.01,
) -> tuple[Tensor, Tensor]:
    """Alternating ridge least squares on tr((E - s*B@A) H (E - s*B@A)^T).

    * B-step (A fixed):  s*B (A H A^T + eps I) = E H A^T
    * A-step (B fixed):  s*(B^T B + eps I) A  = B^T E   (H cancels for a full-rank H)
    ``H`` is normalised to unit mean diagonal and damped by ``damp`` (a weight-space term that
    keeps directions the calibration set never excites from drifting). Returns float32
    ``(A, B)``, re-balanced so both factors carry sqrt of the singular values.
    """
    rank = a.shape[0]
    check_rank(rank, residual.shape)
    if hessian.shape != (residual.shape[1], residual.shape[1]):
        raise ValueError(f"hessian must be [{residual.shape[1]}, {residual.shape[1]}], got {tuple(hessian.shape)}")
    e = residual.double()
    h = hessian.double()
    h = h / h.diagonal().mean().clamp_min(1e-30)
    h = h + damp * torch.eye(h.shape[0], dtype=h.dtype, device=h.device)
    a_ = a.double()
    bs = b.double() * scaling  # bs = s*B, so the product is simply bs @ a_
    eye = torch.eye(rank, dtype=e.dtype, device=e.device)
    for _ in range(max(0, iters)):
        ah = a_ @ h                                     # [r, in]
        g = ah @ a_.T                                   # [r, r]
        ridge = 1e-8 * g.diagonal().mean().clamp_min(1e-30)
        bs = torch.linalg.solve(g + ridge * eye, ah @ e.T).T
        gb = bs.T @ bs
        ridge = 1e-8 * gb.diagonal().mean().clamp_min(1e-30)
        a_ = torch.linalg.solve(gb + ridge * eye, bs.T @ e)
    a_new, b_new = _rebalance(bs, a_, rank, scaling)
    return a_new.float().contiguous(), b_new.float().contiguous()


@torch.no_grad()
def quailora_init(
    weight: Tensor,
    hessian: Tensor,
    bits: int,
    group_size: int,
    rank: int,
    scaling: float = 1.0,
    iters: int = 10,
    loftq_iters: int = 1,
    damp: float = 0.01,
    quantizer: str = DEFAULT_METHOD,
    loftq_svd: str = "randomized",
) -> tuple[Any, Tensor, Tensor]:
    """LoftQ start then calibrated ALS refinement; returns ``(qweight, A, B)``."""
    qweight, a, b = loftq_init(weight, bits, group_size, rank, scaling, loftq_iters, quantizer, loftq_svd)
    residual = weight.detach().float() - qweight.dequantize(torch.float32)
    a, b = quailora_refine(residual, a, b, hessian.to(residual.device), scaling, iters, damp)
    return qweight, a, b


class QuAILoRA(LowRankInitMethod):
    """Quantized base + LoRA initialised by QuAILoRA (needs a calibration batch).

    Options: ``als_iters`` alternating solves, ``damp`` weight-space regularisation of H,
    ``loftq_iters`` and ``loftq_svd`` for the LoftQ start, ``calib_batch_size`` sequences per
    statistics pass.
    """

    name = "quailora"
    needs_calibration = True
    option_defaults = {"als_iters": 10, "damp": 0.01, "loftq_iters": 1, "loftq_svd": "randomized",
                       "calib_batch_size": 8}

    def init_memory(self, arch: Any, settings: MethodSettings) -> InitMemory:
        # the X^T X of every input group, the calibration forward, then per layer LoftQ's start
        # and the float64 least squares (residual, H and their products)
        return InitMemory(layer_factor=QUAILORA_LAYER_FACTOR, hessians=True,
                          calib_tokens=int(settings.options["calib_batch_size"]) * settings.calib_seq_len)

    def initialise(self, model, layer_settings, settings, calib):
        opts = settings.options
        svd = check_svd_option(self.name, opts["loftq_svd"])
        chosen = {n: model.get_submodule(n) for n, s in layer_settings.items() if s.bits < 16 and s.rank > 0}
        if not chosen:
            return {}
        hessians, _ = collect_input_hessians(model, chosen, calib, int(opts["calib_batch_size"]))
        out = {}
        for name, module in chosen.items():
            s = layer_settings[name]
            hessian = hessians.pop(name)  # a group's matrix is freed with its last layer's use
            try:
                out[name] = quailora_init(linear_weight(module), hessian, s.bits, s.group_size, s.rank,
                                          settings.lora_alpha / s.rank, int(opts["als_iters"]),
                                          int(opts["loftq_iters"]), float(opts["damp"]), settings.quantizer,
                                          svd)
            except ValueError as err:
                raise MethodError(f"quailora: layer {name}: {err}") from err
        return out


__all__ = ["QuAILoRA", "collect_input_hessians", "quailora_refine", "quailora_init", "calibrated_error"]
