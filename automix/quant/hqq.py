"""`method="hqq"`: refine each group's scale and zero point without calibration data.

Three stages, each keeping, per group, the best grid seen so far by squared reconstruction error
(so the result is never worse than round-to-nearest on the min/max grid):

1. *Range shrinking*: try ``x_max, x_min`` scaled by ratios below 1 (cheap clipping search; heavy
   tails make the full range wasteful).
2. *Half-quadratic proximal updates of the zero point* (HQQ, Badri & Shaji 2023): with
   ``W_e = shrink_p(W - dequant(W))`` the generalised soft-threshold for an l_p (p < 1) error,
   the zero point is the closed-form minimiser ``mean(q - (W - W_e) / s)``; ``beta`` grows by
   ``kappa`` per step.
3. *Alternating least squares*: for fixed codes the l2-optimal affine grid ``w ~ a*q + c`` is a
   per-group linear regression (``scale = a``, ``zero = -c / a``); then the codes are re-rounded.
   Each half-step cannot increase the error.
"""

from __future__ import annotations

import torch

from automix.quant.grid import clipped_grid, dequantize_codes, quantize_codes

SHRINK_RATIOS = (0.95, 0.9, 0.85, 0.8, 0.75, 0.7, 0.65, 0.6, 0.55, 0.5)


def _group_mask(wg: torch.Tensor, k: int | None) -> torch.Tensor:
    """1 for real entries, 0 for the padding of a short last group (shape (G, gs))."""
    _, g, gs = wg.shape
    idx = torch.arange(g * gs, device=wg.device).view(g, gs)
    return (idx < (k if k is not None else g * gs)).to(wg.dtype)


def _sq_error(wg, scale, zero, bits, mask):
    q = quantize_codes(wg, scale, zero, bits)
    return (((wg - dequantize_codes(q, scale, zero)) ** 2) * mask).sum(-1), q


def _shrink_lp(x: torch.Tensor, beta: float, p: float) -> torch.Tensor:
    """Generalised soft-thresholding: proximal operator of |x|^p / beta (p < 1)."""
    ax = x.abs()
    return torch.sign(x) * torch.relu(ax - ax.clamp_min(1e-12).pow(p - 1.0) / beta)


def refine_grid(
    wg: torch.Tensor,
    bits: int,
    scale: torch.Tensor,
    zero: torch.Tensor,
    k: int | None = None,
    iters: int = 20,
    lp_norm: float = 0.7,
    beta: float = 10.0,
    kappa: float = 1.01,
    ls_iters: int = 10,
    shrink_ratios: tuple[float, ...] = SHRINK_RATIOS,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Refined ``(scale, zero)`` (N, G) for grouped weights ``wg`` (N, G, gs) in fp32."""
    if iters < 0 or ls_iters < 0 or not 0 < lp_norm <= 1 or beta <= 0 or kappa < 1:
        raise ValueError(
            "hqq options: expected iters >= 0, ls_iters >= 0, 0 < lp_norm <= 1, beta > 0, kappa >= 1; "
            f"got iters={iters}, ls_iters={ls_iters}, lp_norm={lp_norm}, beta={beta}, kappa={kappa}"
        )
    mask = _group_mask(wg, k)
    count = mask.sum(-1)  # (G,)
    best_s, best_z = scale.clone(), zero.clone()
    best_err, _ = _sq_error(wg, best_s, best_z, bits, mask)

    def consider(s: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        nonlocal best_err
        ok = torch.isfinite(s) & torch.isfinite(z) & (s > 0)
        s = torch.where(ok, s, best_s)
        z = torch.where(ok, z, best_z)
        err, q = _sq_error(wg, s, z, bits, mask)
        better = err < best_err
        best_s.copy_(torch.where(better, s, best_s))
        best_z.copy_(torch.where(better, z, best_z))
        best_err = torch.where(better, err, best_err)
        return q

    # 1. range shrinking: scaling both ends by r keeps the zero point and scales the step
    for r in shrink_ratios:
        consider(scale * r, zero)

    # 2. half-quadratic proximal updates of the zero point (scale fixed)
    s = best_s.clone()
    z = best_z.clone()
    b = beta
    for _ in range(iters):
        q = quantize_codes(wg, s, z, bits)
        w_e = _shrink_lp(wg - dequantize_codes(q, s, z), b, lp_norm)
        z = ((q - (wg - w_e) / s.unsqueeze(-1)) * mask).sum(-1) / count
        b *= kappa
        consider(s, z)

    # 3. alternating least squares on (scale, zero) given the codes
    for _ in range(ls_iters):
        q = quantize_codes(wg, best_s, best_z, bits)
        mq = (q * mask).sum(-1) / count
        mw = (wg * mask).sum(-1) / count
        dq = (q - mq.unsqueeze(-1)) * mask
        var = (dq * dq).sum(-1)
        cov = (dq * (wg - mw.unsqueeze(-1))).sum(-1)
        a = cov / var.clamp_min(1e-12)
        c = mw - a * mq
        ok = (var > 0) & (a > 0)
        s = torch.where(ok, a, best_s)
        z = torch.where(ok, -c / torch.where(ok, a, torch.ones_like(a)), best_z)
        before = best_err.clone()
        consider(s, z)
        if bool((best_err >= before).all()):
            break
    return best_s, best_z


def hqq_grid(wg: torch.Tensor, bits: int, *, clip_max_logit: torch.Tensor | None = None,
             clip_min_logit: torch.Tensor | None = None, round_zero: bool = False, k: int | None = None,
             **options: object) -> tuple[torch.Tensor, torch.Tensor]:
    """Quantizer ``hqq`` (``automix.config.registry.QUANTIZERS``): the (optionally clipped)
    min/max grid refined by :func:`refine_grid` (``options`` are its keyword arguments)."""
    scale, zero = clipped_grid(wg, bits, "minmax", clip_max_logit, clip_min_logit, round_zero)
    return refine_grid(wg, bits, scale, zero, k=k, **options)
