"""LoftQ: alternate quantization and a rank-r SVD of the residual so that Q + s*B@A ~ W.

LoftQ (Li et al., 2023) starts LoRA from the best low-rank correction of the quantization
error instead of B = 0. Each iteration quantizes what the current adapter does not explain,
then fits the adapter to what the quantizer lost. The adapter is applied at run time as
``s * B @ A`` with ``s = alpha / r``; the factors are divided by ``sqrt(s)`` here so that the
product *including the scaling* matches the residual (PEFT's implementation leaves the scaling
out, see huggingface/peft#1982, which makes its init wrong whenever alpha != r).

Only the top ``r`` singular triplets of the residual are needed, so by default they come from a
randomized range finder with power iterations (Halko, Martinsson & Tropp, 2011, algorithm 4.4)
instead of a full SVD: on SmolLM2-135M's quantization residuals (2 and 4 bits, ranks 8 and 32)
its rank-r error is within 0.5% of the exact truncation's and it is 7-22x faster, which is
most of LoftQ's preparation time on a CPU (``benchmarks/real_model.md``). ``loftq_svd: exact``
keeps the full SVD.
"""

from __future__ import annotations

import math
from dataclasses import replace
from typing import Any, Mapping

import torch
from torch import Tensor, nn

from automix.config.layers import LayerSettings
from automix.methods.base import (InitMemory, MemoryProfile, Method, MethodError, MethodSettings, freeze,
                                  lora_memory_profile)
from automix.arch import linear_weight
from automix.methods.adapters import inject_lora, module_dtype, quantize_layers, replace_module
from automix.quant import DEFAULT_METHOD, QuantizedWeight, QuantLinear, quantize



def check_rank(rank: int, shape: tuple[int, ...] | torch.Size) -> None:
    """A LoRA rank must be positive and at most min(out, in) of the layer."""
    if rank < 1 or rank > min(shape):
        raise ValueError(f"LoRA rank must be in [1, {min(shape)}] for a {tuple(shape)} weight, got {rank}")


SVD_CHOICES = ("randomized", "exact")
LOFTQ_LAYER_FACTOR = 6.0  # bytes LoftQ holds per fp32 byte of the layer it initialises (benchmarks/memory_model.md)
OVERSAMPLE = 8        # extra columns of the random sketch beyond the rank
POWER_ITERS = 4       # subspace iterations; 2 left up to 1.3% more error at rank 32, 4 at most 0.5%


def truncated_svd(matrix: Tensor, rank: int, svd: str = "randomized", seed: int = 0) -> tuple[Tensor, Tensor, Tensor]:
    """The top-``rank`` singular triplets ``(U [m, r], S [r], Vh [r, n])`` of a float matrix.

    ``svd="exact"`` truncates a full SVD. ``"randomized"`` sketches the range with a Gaussian
    test matrix of ``rank + OVERSAMPLE`` columns drawn from its own generator (``seed``; the
    global RNG is left alone, so trials stay reproducible), sharpens it with ``POWER_ITERS``
    re-orthonormalised subspace iterations and takes the SVD of the small projected matrix. Where
    the sketch would cover half the smaller dimension or more it saves nothing, and the exact SVD
    runs instead.
    """
    check_svd(svd)
    m, n = matrix.shape
    width = rank + OVERSAMPLE
    if svd == "exact" or 2 * width >= min(m, n):
        u, s, vh = torch.linalg.svd(matrix, full_matrices=False)
        return u[:, :rank], s[:rank], vh[:rank]
    generator = torch.Generator().manual_seed(seed)
    sketch = torch.randn(n, width, generator=generator, dtype=matrix.dtype).to(matrix.device)
    basis = torch.linalg.qr(matrix @ sketch).Q
    for _ in range(POWER_ITERS):
        basis = torch.linalg.qr(matrix.T @ basis).Q
        basis = torch.linalg.qr(matrix @ basis).Q
    u_small, s, vh = torch.linalg.svd(basis.T @ matrix, full_matrices=False)
    return basis @ u_small[:, :rank], s[:rank], vh[:rank]


def check_svd(svd: str) -> str:
    """``svd`` if it is one of :data:`SVD_CHOICES`, else a ValueError naming ``loftq_svd``."""
    if svd not in SVD_CHOICES:
        raise ValueError(f"loftq_svd must be one of {list(SVD_CHOICES)}, got {svd!r}")
    return svd


def check_svd_option(method: str, svd: str) -> str:
    """The ``loftq_svd`` option of ``method``, or a :class:`MethodError` naming the method."""
    try:
        return check_svd(svd)
    except ValueError as err:
        raise MethodError(f"{method}: option {err}") from None


def lowrank_factors(residual: Tensor, rank: int, scaling: float, svd: str = "randomized") -> tuple[Tensor, Tensor]:
    """Best rank-r factors of ``residual`` with ``scaling * B @ A`` equal to its truncated SVD.

    The singular values are split evenly between the factors (sqrt on each side), as LoftQ does,
    so A and B start with comparable norms and train at comparable rates. ``svd``: see
    :func:`truncated_svd`.
    """
    u, s, vh = truncated_svd(residual.float(), rank, svd)
    root = s.sqrt() / math.sqrt(scaling)
    b = u * root
    a = root[:, None] * vh
    return a.contiguous(), b.contiguous()


@torch.no_grad()
def loftq_init(
    weight: Tensor,
    bits: int,
    group_size: int,
    rank: int,
    scaling: float = 1.0,
    iters: int = 1,
    quantizer: str = DEFAULT_METHOD,
    svd: str = "randomized",
) -> tuple[Any, Tensor, Tensor]:
    """LoftQ initialisation of one ``[out, in]`` weight.

    Returns ``(qweight, A, B)`` with ``A: [rank, in]``, ``B: [out, rank]`` (float32) such that
    ``qweight.dequantize() + scaling * B @ A`` approximates ``weight``. ``iters`` >= 1 rounds of
    quantize(W - s*B@A) -> truncated SVD(W - Q) (``svd``: ``randomized`` or ``exact``, see
    :func:`truncated_svd`).
    """
    if iters < 1:
        raise ValueError(f"loftq_iters must be >= 1, got {iters}")
    if scaling <= 0:
        raise ValueError(f"LoRA scaling alpha/r must be > 0, got {scaling}")
    w = weight.detach().float()
    check_rank(rank, w.shape)
    out_f, in_f = w.shape
    a = w.new_zeros(rank, in_f)
    b = w.new_zeros(out_f, rank)
    qweight = None
    for _ in range(iters):
        qweight = quantize(w - scaling * (b @ a), bits, group_size, quantizer)
        residual = w - qweight.dequantize(torch.float32)
        a, b = lowrank_factors(residual, rank, scaling, svd)
    return qweight, a, b


def as_dtype(qweight: Any, dtype: torch.dtype) -> Any:
    """The same QuantizedWeight, labelled with the model's compute dtype (no copy)."""
    return QuantizedWeight(qweight.packed, qweight.scales, qweight.zeros, qweight.bits,
                           qweight.group_size, qweight.shape, dtype)


class LowRankInitMethod(Method):
    """Shared ``prepare`` of the methods that only change how Q and (A, B) start (LoftQ,
    QuAILoRA, ApiQ): compute ``{layer: (qweight | None, A | None, B | None)}`` with
    :meth:`initialise`, install ``QuantLinear.from_quantized`` bases and LoRA adapters, copy the
    factors in. Memory is that of QLoRA (same modules, different numbers)."""

    def initialise(self, model: nn.Module, layer_settings: Mapping[str, LayerSettings],
                   settings: MethodSettings, calib: Tensor | None) -> dict[str, tuple[Any, Tensor | None, Tensor | None]]:
        raise NotImplementedError

    def prepare(self, model: nn.Module, layer_settings: Mapping[str, LayerSettings],
                settings: MethodSettings | Mapping[str, Any] | None = None,
                calib: Tensor | None = None) -> nn.Module:
        settings = self.check_settings(settings)
        if self.needs_calibration and (calib is None or calib.ndim != 2 or calib.shape[0] == 0):
            raise MethodError(f"method {self.name!r} needs a calibration batch [n_samples, seq_len] of token ids")
        freeze(model)
        inits = self.initialise(model, layer_settings, settings, calib)
        for name, (qweight, a, b) in list(inits.items()):
            if qweight is None:
                continue
            old = model.get_submodule(name)
            dtype = module_dtype(old)  # (a streamed layer's weight is not read for its dtype)
            bias = getattr(old, "bias", None)
            # the layer takes the quantized weight's tensors over: no second copy of them
            layer = QuantLinear.from_quantized(as_dtype(qweight, dtype), bias if isinstance(bias, Tensor) else None,
                                               copy=False)
            layer.requires_grad_(False)
            replace_module(model, name, layer)
            inits[name] = (None, a, b)
            del qweight, old, layer
        # layers the initialiser left alone (e.g. rank 0 for LoftQ) get plain quantization
        quantize_layers(model, layer_settings, method=settings.quantizer)
        adapters = inject_lora(model, layer_settings, alpha=settings.lora_alpha, dropout=settings.lora_dropout)
        with torch.no_grad():
            for name, wrapper in adapters.items():
                _, a, b = inits.pop(name, (None, None, None))
                if a is not None:
                    wrapper.lora_A.copy_(a.to(wrapper.lora_A.dtype))
                    wrapper.lora_B.copy_(b.to(wrapper.lora_B.dtype))
        return model

    def memory_profile(self, arch: Any, layer_settings: Mapping[str, LayerSettings],
                       settings: MethodSettings | Mapping[str, Any] | None = None) -> MemoryProfile:
        settings = self.check_settings(settings)
        return replace(lora_memory_profile(arch, layer_settings, settings, quantize_base=True),
                       init=self.init_memory(arch, settings))

    def init_memory(self, arch: Any, settings: MethodSettings) -> InitMemory | None:
        """What :meth:`initialise` holds beyond the model (:class:`InitMemory`)."""
        return None


class LoftQ(LowRankInitMethod):
    """Quantized base + LoRA initialised by LoftQ (weight space, ``loftq_iters`` rounds;
    ``loftq_svd``: ``randomized`` truncated SVD or the ``exact`` full one)."""

    name = "loftq"
    needs_calibration = False
    option_defaults = {"loftq_iters": 1, "loftq_svd": "randomized"}

    def init_memory(self, arch: Any, settings: MethodSettings) -> InitMemory:
        # the weight, W - s*B@A and the residual in fp32, the quantization (a chunk at a time)
        # and the dequantized weight; the sketch and its QR are rank-sized
        return InitMemory(layer_factor=LOFTQ_LAYER_FACTOR)

    def initialise(self, model, layer_settings, settings, calib):
        out = {}
        iters = int(settings.options["loftq_iters"])
        svd = check_svd_option(self.name, settings.options["loftq_svd"])
        for name, s in layer_settings.items():
            if s.bits >= 16 or s.rank <= 0:
                continue
            weight = linear_weight(model.get_submodule(name))
            try:
                out[name] = loftq_init(weight, s.bits, s.group_size, s.rank, settings.lora_alpha / s.rank,
                                       iters, settings.quantizer, svd)
            except ValueError as err:
                raise MethodError(f"loftq: layer {name}: {err}") from err
        return out


def weight_space_error(weight: Tensor, qweight: Any, a: Tensor, b: Tensor, scaling: float) -> float:
    """Relative Frobenius error ||W - Q - s*B@A|| / ||W|| (for tests and the benchmark)."""
    w = weight.float()
    err = w - qweight.dequantize(torch.float32) - scaling * (b @ a)
    return float(err.norm() / w.norm().clamp_min(1e-12))


__all__ = ["loftq_init", "truncated_svd", "SVD_CHOICES", "check_svd", "check_svd_option", "LoftQ", "LowRankInitMethod", "as_dtype", "weight_space_error", "lowrank_factors", "check_rank"]
