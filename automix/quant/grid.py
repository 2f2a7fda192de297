"""Per-group grid primitives: groups, the min/max grid with learnable clipping, codes, fake quantization.

The grid of a group is ``[x_min, x_max]`` split into ``2**bits - 1`` steps:
``scale = (x_max - x_min) / qmax`` and a *float* zero point ``zero = -x_min / scale`` (stored
like the scale, so both grid ends are reproduced exactly; ``round_zero=True`` gives the integer
zero point). Codes are ``clamp(round(w / scale + zero), 0, qmax)``. :func:`rtn_grid` is the
standard asymmetric round-to-nearest of GPTQ-style formats: the range widened to contain 0 and an
integer zero point, so 0 is exactly representable.

OmniQuant / ApiQ learnable weight clipping shrinks the ends per group:
``x_max = sigmoid(gamma) * max(w)``, ``x_min = sigmoid(beta) * min(w)``; the logits start at 4.0
(``sigmoid(4) = 0.982``). Both grids take them (:func:`clipped_grid` picks one by name).
:func:`fake_quantize` is the differentiable (straight-through) version used to train them; it
runs the same grid rule, rounds the grid to the stored metadata dtype and computes the same codes
as :func:`automix.quant.quantize`, so a weight baked with the trained logits dequantizes to
exactly the fake-quantized one on the integer-zero (``rtn``) grid. The quantizers built on these
are in :mod:`automix.quant.quantizer`.
"""

from __future__ import annotations

import torch

from automix.kernels.packing import check_bits

CLIP_LOGIT_INIT = 4.0
GRIDS = ("rtn", "minmax")  # the grid rules that take clipping logits (hqq refines "minmax")
_FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def num_groups(in_features: int, group_size: int) -> int:
    return (in_features + group_size - 1) // group_size


def check_weight(weight: torch.Tensor, name: str = "weight") -> None:
    """Raise ValueError unless `weight` is a finite 2-D floating tensor."""
    if not isinstance(weight, torch.Tensor):
        raise ValueError(f"{name}: expected a torch.Tensor, got {type(weight).__name__}")
    if weight.dtype not in _FLOAT_DTYPES:
        raise ValueError(
            f"{name}: expected a floating dtype (float16, bfloat16, float32, float64), got {weight.dtype}"
        )
    if weight.dim() != 2 or weight.numel() == 0:
        raise ValueError(
            f"{name}: expected a non-empty 2-D (out_features, in_features) tensor, got shape {tuple(weight.shape)}"
        )
    if not bool(torch.isfinite(weight).all()):
        bad = int((~torch.isfinite(weight)).sum())
        raise ValueError(f"{name}: expected finite values, found {bad} NaN/Inf entries")


def check_group_size(group_size: int) -> int:
    if isinstance(group_size, bool) or not isinstance(group_size, int) or group_size <= 0:
        raise ValueError(f"group_size must be a positive int (e.g. 32, 64, 128), got {group_size!r}")
    return group_size


def grouped(weight: torch.Tensor, group_size: int) -> torch.Tensor:
    """View ``(N, K)`` as ``(N, G, group_size)`` in fp32; a short last group is padded by
    repeating its last value, which leaves its min/max unchanged."""
    n, k = weight.shape
    g = num_groups(k, group_size)
    w = weight.to(torch.float32)  # differentiable when weight requires grad (fake_quantize)
    if g * group_size != k:
        w = torch.cat([w, w[:, -1:].expand(n, g * group_size - k)], dim=1)
    return w.reshape(n, g, group_size)


def clip_logits_init(shape: tuple[int, int], group_size: int, value: float = CLIP_LOGIT_INIT,
                     device: torch.device | str | None = None) -> torch.Tensor:
    """Initial per-group clipping logits ``(out_features, num_groups)`` (OmniQuant: 4.0)."""
    return torch.full((shape[0], num_groups(shape[1], group_size)), float(value), device=device)


def _check_logits(logit: torch.Tensor | None, n: int, g: int, name: str) -> torch.Tensor | None:
    if logit is None:
        return None
    if not isinstance(logit, torch.Tensor) or logit.numel() != n * g:
        got = tuple(logit.shape) if isinstance(logit, torch.Tensor) else type(logit).__name__
        raise ValueError(f"{name}: expected a tensor of shape (out_features, num_groups) = ({n}, {g}), got {got}")
    return logit.reshape(n, g)


def _group_range(wg: torch.Tensor, clip_max_logit: torch.Tensor | None,
                 clip_min_logit: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-group ``(x_max, x_min)`` ``(N, G)``, shrunk by the learnable clipping logits if given."""
    x_max = wg.amax(dim=-1)
    x_min = wg.amin(dim=-1)
    n, g = x_max.shape
    gamma = _check_logits(clip_max_logit, n, g, "clip_max_logit")
    beta = _check_logits(clip_min_logit, n, g, "clip_min_logit")
    if gamma is not None:
        x_max = torch.sigmoid(gamma.to(x_max.dtype)) * x_max
    if beta is not None:
        x_min = torch.sigmoid(beta.to(x_min.dtype)) * x_min
    return x_max, x_min


def _span_scale(x_max: torch.Tensor, x_min: torch.Tensor, qmax: int) -> torch.Tensor:
    # a flat (or, after clipping, inverted) group gets a scale that maps x_min exactly to code 0
    span = x_max - x_min
    flat = torch.maximum(x_max.abs(), x_min.abs()).clamp_min(1e-8)
    return torch.where(span > 1e-8, span / qmax, flat)


def minmax_grid(
    wg: torch.Tensor,
    bits: int,
    clip_max_logit: torch.Tensor | None = None,
    clip_min_logit: torch.Tensor | None = None,
    round_zero: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Scale and zero point ``(N, G)`` of the (optionally clipped) min/max grid of ``wg``."""
    qmax = 2**bits - 1
    x_max, x_min = _group_range(wg, clip_max_logit, clip_min_logit)
    scale = _span_scale(x_max, x_min, qmax)
    zero = -x_min / scale
    if round_zero:
        zero = _round_ste(zero).clamp(0, qmax)
    return scale, zero


def rtn_grid(
    wg: torch.Tensor,
    bits: int,
    clip_max_logit: torch.Tensor | None = None,
    clip_min_logit: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Standard asymmetric round-to-nearest grid (GPTQ / AutoGPTQ / bitsandbytes-style int zero).

    The group range is widened to contain 0 (``x_min <= 0 <= x_max``), ``scale = (x_max - x_min)
    / qmax`` and the zero point is the *integer* ``round(-x_min / scale)``, so 0 is exactly on the
    grid (a symmetric, peaked weight distribution keeps its many near-zero weights near zero) at
    the price of shifting the grid by up to half a step at its ends.
    """
    qmax = 2**bits - 1
    x_max, x_min = _group_range(wg, clip_max_logit, clip_min_logit)
    x_max = x_max.clamp_min(0.0)
    x_min = x_min.clamp_max(0.0)
    scale = _span_scale(x_max, x_min, qmax)
    zero = _round_ste(-x_min / scale).clamp(0, qmax)
    return scale, zero


def clipped_grid(
    wg: torch.Tensor,
    bits: int,
    grid: str,
    clip_max_logit: torch.Tensor | None = None,
    clip_min_logit: torch.Tensor | None = None,
    round_zero: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Scale and zero point ``(N, G)`` of grid rule ``grid`` (:data:`GRIDS`) with optional clipping.

    ``"rtn"``: :func:`rtn_grid` (integer zero point); ``"minmax"``: :func:`minmax_grid`
    (fractional zero point, ``round_zero=True`` rounds it). The one dispatch that
    :func:`fake_quantize` and :func:`automix.quant.quantize` share.
    """
    if grid not in GRIDS:
        raise ValueError(f"clipping grid must be one of {', '.join(GRIDS)}; got {grid!r}")
    if grid == "rtn":
        if round_zero:
            raise ValueError("round_zero applies to method='minmax'; 'rtn' always rounds its zero point")
        return rtn_grid(wg, bits, clip_max_logit, clip_min_logit)
    return minmax_grid(wg, bits, clip_max_logit, clip_min_logit, round_zero)


def rtn_quantizer_grid(wg: torch.Tensor, bits: int, *, clip_max_logit: torch.Tensor | None = None,
                       clip_min_logit: torch.Tensor | None = None, round_zero: bool = False,
                       k: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Quantizer ``rtn`` (``automix.config.registry.QUANTIZERS``): the :func:`rtn_grid`."""
    return clipped_grid(wg, bits, "rtn", clip_max_logit, clip_min_logit, round_zero)


def minmax_quantizer_grid(wg: torch.Tensor, bits: int, *, clip_max_logit: torch.Tensor | None = None,
                          clip_min_logit: torch.Tensor | None = None, round_zero: bool = False,
                          k: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Quantizer ``minmax``: the :func:`minmax_grid` (``round_zero=True`` rounds its zero point)."""
    return clipped_grid(wg, bits, "minmax", clip_max_logit, clip_min_logit, round_zero)


def check_meta_dtype(meta_dtype: torch.dtype) -> torch.dtype:
    """Raise ValueError unless ``meta_dtype`` (the dtype scales and zeros are stored in) is floating."""
    if meta_dtype not in _FLOAT_DTYPES:
        raise ValueError(f"meta_dtype must be a floating dtype, got {meta_dtype}")
    return meta_dtype


def _round_ste(x: torch.Tensor) -> torch.Tensor:
    """round() forward, identity backward (straight-through estimator).

    The forward value is exactly ``torch.round(x)``: ``round(x) - x`` and ``x + (round(x) - x)``
    are exact in floating point (Sterbenz), so straight-through codes equal the baked ones.
    """
    return x + (torch.round(x) - x).detach()


def _cast_ste(x: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """``x`` rounded to ``dtype`` and back in the forward, identity backward (straight-through):
    the grid a :class:`~automix.quant.weight.QuantizedWeight` stores, kept differentiable."""
    return x + (x.detach().to(dtype).to(x.dtype) - x.detach())


def quantize_codes(wg: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, bits: int,
                   ste: bool = False) -> torch.Tensor:
    """Codes ``clamp(round(w / scale + zero), 0, qmax)`` for grouped ``wg`` (N, G, gs); a zero
    scale (a flat group whose step underflowed the metadata dtype) divides by 1. ``ste=True``
    rounds straight-through (same values, gradients pass)."""
    safe = torch.where(scale > 0, scale, torch.ones_like(scale))
    x = wg / safe.unsqueeze(-1) + zero.unsqueeze(-1)
    return torch.clamp(_round_ste(x) if ste else torch.round(x), 0, 2**bits - 1)


def dequantize_codes(q: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor) -> torch.Tensor:
    """``(q - zero) * scale`` for grouped codes ``q`` (N, G, gs) and a grid (N, G)."""
    return (q - zero.unsqueeze(-1)) * scale.unsqueeze(-1)


def fake_quantize(
    weight: torch.Tensor,
    bits: int,
    group_size: int = 64,
    clip_max_logit: torch.Tensor | None = None,
    clip_min_logit: torch.Tensor | None = None,
    round_zero: bool = False,
    *,
    grid: str = "rtn",
    meta_dtype: torch.dtype = torch.float16,
) -> torch.Tensor:
    """Differentiable quantize-dequantize of ``weight`` (N, K) with the straight-through estimator.

    The learnable weight clipping of OmniQuant (Shao et al., 2024), trained by ApiQ (Liao et al.,
    2024): the grid is ``grid``'s rule (``"rtn"``, the default as in :func:`automix.quant.quantize`,
    or ``"minmax"``) on the clipped range, its scale and zero point are rounded to ``meta_dtype``
    as a stored grid is, and the codes are those :func:`automix.quant.quantize` computes. Hence
    ``quantize(weight, ..., method=grid, clip_*_logit=..., meta_dtype=...).dequantize()`` equals
    this output bit for bit on the ``rtn`` grid (an integer zero point times an fp16 scale is
    exact in fp32) and to rounding on ``minmax``'s fractional one.
    Gradients reach ``weight`` (through the STE) and the clipping logits (through the scale, and
    through the zero point straight-through). Output has ``weight``'s shape and dtype.
    """
    check_bits(bits)
    check_group_size(group_size)
    check_weight(weight)
    check_meta_dtype(meta_dtype)
    n, k = weight.shape
    wg = grouped(weight, group_size)
    scale, zero = clipped_grid(wg, bits, grid, clip_max_logit, clip_min_logit, round_zero)
    scale, zero = _cast_ste(scale, meta_dtype), _cast_ste(zero, meta_dtype)
    q = quantize_codes(wg, scale, zero, bits, ste=True)
    return dequantize_codes(q, scale, zero).reshape(n, -1)[:, :k].to(weight.dtype)
