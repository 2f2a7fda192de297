"""ApiQ: activation-preserving initialisation of a quantized base and its LoRA.

ApiQ (Liao et al., 2024) fits, block by block and in order, the quantized block + LoRA to the
full-precision block: target = FP block output on FP inputs, prediction = the block whose linears
are fake-quantized (learnable per-group clipping, OmniQuant style, logits init 4.0, straight-
through rounding) plus LoRA (A Kaiming, B zero), fed with the outputs of the blocks already
quantized before it. It minimises the MSE with AdamW (clipping lr 5e-3, LoRA lr 5e-4), then bakes
the clipped quantization into the weights: the baked weight dequantizes to exactly the weight the
fit saw (:func:`automix.quant.grid.fake_quantize` is :func:`automix.quant.quantize`'s
straight-through twin). Because each block sees the error the previous
quantized blocks made, the LoRA learns to undo accumulated error, which is what keeps 2-bit
models usable.

``apiq-lw`` is the cheaper layer-wise variant: each linear layer's output (on the quantized
stream's input to that layer) is fitted to the FP layer's output on the FP stream, one small
problem per layer; within a block the layer inputs are taken with that block still in full
precision (one capture pass per block instead of one per layer).

The clipping is learned on the grid of the trial's quantizer (:func:`clipping_grid`): ``rtn``
(the default) on the integer-zero-point grid, as OmniQuant's LWC quantizer that ApiQ uses rounds
its zero point; ``minmax`` on the fractional-zero-point min/max grid; ``hqq`` on the ``rtn`` grid.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Any, Iterable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from automix.methods.adapters import replace_module
from automix.methods.base import InitMemory, MethodError, MethodSettings
from automix.methods.loftq import LowRankInitMethod
from automix.arch import block_index, linear_weight
from automix.quant import DEFAULT_METHOD, check_method, fake_quantize, quantize
from automix.quant.grid import clip_logits_init

APIQ_LAYER_FACTOR = 8.0  # bytes a block's fit holds per fp32 byte of its largest layer (benchmarks/memory_model.md)


def clipping_grid(quantizer: str) -> str:
    """The grid ApiQ learns its clipping on for the trial's ``quantizer`` (an automix.quant method).

    ``rtn`` and ``minmax`` keep their own grid. ``hqq`` learns on the ``rtn`` grid: HQQ's
    refinement (Badri & Shaji, 2023) is a data-free, non-differentiable search over the same
    range and zero point that ApiQ's clipping fits on calibration data, so it cannot be trained
    through and the learned logits would overwrite it anyway; of the differentiable grids, the
    integer-zero one is OmniQuant's (whose LWC ApiQ reuses) and the best at 2-3 bits on a real
    model (benchmarks/real_model.md, section 1: hqq and minmax are 3-4x worse than rtn at 3 bits).
    """
    return "minmax" if check_method(quantizer) == "minmax" else "rtn"


@dataclass
class ApiQPlan:
    """What ApiQ does to one layer: bits (16 = keep FP), group size, LoRA rank and scaling, and
    the grid its clipping is learned and baked on (``rtn`` or ``minmax``, see :func:`clipping_grid`)."""

    bits: int
    group_size: int
    rank: int
    scaling: float
    grid: str = clipping_grid(DEFAULT_METHOD)


class ApiQLinear(nn.Module):
    """Calibration-time layer: fake-quantized weight (learnable clipping) + LoRA.

    Only ``clip_max``/``clip_min`` (per group) and ``lora_A``/``lora_B`` are trainable; the FP
    weight is a frozen buffer. :meth:`bake` returns the real quantized weight.
    """

    def __init__(self, weight: Tensor, bias: Tensor | None, plan: ApiQPlan,
                 clip_init: float = 4.0) -> None:
        super().__init__()

        out_f, in_f = weight.shape
        self.in_features, self.out_features = in_f, out_f
        self.plan = plan
        self.register_buffer("weight", weight.detach().float().clone(), persistent=False)
        self.register_buffer("bias", None if bias is None else bias.detach().float().clone(), persistent=False)
        self.quantized = plan.bits < 16
        if self.quantized:
            init = clip_logits_init((out_f, in_f), plan.group_size, clip_init, device=weight.device)
            self.clip_max = nn.Parameter(init.clone())
            self.clip_min = nn.Parameter(init.clone())
        self.rank = plan.rank
        if self.rank > 0:
            self.lora_A = nn.Parameter(torch.empty(self.rank, in_f, device=weight.device))
            nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))
            self.lora_B = nn.Parameter(torch.zeros(out_f, self.rank, device=weight.device))
        self._frozen_weight: Tensor | None = None

    def clip_parameters(self) -> list[nn.Parameter]:
        return [self.clip_max, self.clip_min] if self.quantized else []

    def lora_parameters(self) -> list[nn.Parameter]:
        return [self.lora_A, self.lora_B] if self.rank > 0 else []

    def effective_weight(self) -> Tensor:
        if self._frozen_weight is not None:
            return self._frozen_weight
        if not self.quantized:
            return self.weight

        return fake_quantize(self.weight, self.plan.bits, self.plan.group_size, self.clip_max, self.clip_min,
                             grid=self.plan.grid)

    def forward(self, x: Tensor) -> Tensor:
        y = F.linear(x, self.effective_weight().to(x.dtype), None if self.bias is None else self.bias.to(x.dtype))
        if self.rank > 0:
            y = y + self.plan.scaling * F.linear(F.linear(x, self.lora_A.to(x.dtype)), self.lora_B.to(x.dtype))
        return y

    @torch.no_grad()
    def bake(self) -> tuple[Any, Tensor | None, Tensor | None]:
        """(QuantizedWeight or None for 16-bit, A, B) and switch forward to the baked weight, which
        on the ``rtn`` grid is bit for bit the fake-quantized weight the fit trained."""
        qweight = None
        if self.quantized:
            qweight = quantize(self.weight, self.plan.bits, self.plan.group_size, method=self.plan.grid,
                               clip_max_logit=self.clip_max.detach(), clip_min_logit=self.clip_min.detach())
            self._frozen_weight = qweight.dequantize(torch.float32).to(self.weight.device)
        a = self.lora_A.detach().clone() if self.rank > 0 else None
        b = self.lora_B.detach().clone() if self.rank > 0 else None
        return qweight, a, b


# ---------------------------------------------------------------------------------------------
# block discovery and input capture
# ---------------------------------------------------------------------------------------------
class _StopForward(Exception):
    pass


def group_by_block(names: Iterable[str]) -> list[tuple[str, list[str]]]:
    """[(block_path, [layer names in it])] in model order, from stable layer names."""
    blocks: dict[str, list[str]] = {}
    for n in names:
        i = block_index(n)
        marker = f".{i}."
        prefix = n[: n.index(marker) + len(marker) - 1]
        blocks.setdefault(prefix, []).append(n)
    return list(blocks.items())


@torch.no_grad()
def capture_block_inputs(model: nn.Module, block: nn.Module, calib: Tensor, batch_size: int
                         ) -> list[tuple[Tensor, dict]]:
    """Hidden states and keyword arguments entering ``block`` for each calibration mini-batch."""
    device = next(model.parameters()).device
    captured: list[tuple[Tensor, dict]] = []

    def hook(_mod, args, kwargs):
        hidden = args[0] if args else kwargs.pop("hidden_states")
        kw = {k: v for k, v in kwargs.items() if k not in ("cache", "past_key_values", "layer_past", "past_key_value")}
        kw["use_cache"] = False
        captured.append((hidden.detach(), kw))
        raise _StopForward

    handle = block.register_forward_pre_hook(hook, with_kwargs=True)
    try:
        for start in range(0, calib.shape[0], batch_size):
            try:
                model(input_ids=calib[start:start + batch_size].to(device), use_cache=False)
            except _StopForward:
                pass
    finally:
        handle.remove()
    return captured


def _all_blocks_from(planned: list[tuple[str, list[str]]]) -> list[tuple[str, list[str]]]:
    """Every block from the first to the last planned one (unplanned ones with no layers), so
    the quantized stream also flows through blocks that stay in full precision."""
    if not planned:
        return []
    by_name = dict(planned)
    prefix, _, _ = planned[0][0].rpartition(".")
    idx = [int(b.rpartition(".")[2]) for b, _ in planned]
    return [(f"{prefix}.{i}", by_name.get(f"{prefix}.{i}", [])) for i in range(min(idx), max(idx) + 1)]


def _block_out(out: Any) -> Tensor:
    return out[0] if isinstance(out, (tuple, list)) else out


def _apiq_module(layer: nn.Module, plan: ApiQPlan) -> ApiQLinear:
    return ApiQLinear(linear_weight(layer), getattr(layer, "bias", None), plan)


def _optimizer(modules: list[ApiQLinear], lr_clip: float, lr_lora: float, weight_decay: float
               ) -> torch.optim.Optimizer | None:
    clips = [p for m in modules for p in m.clip_parameters()]
    loras = [p for m in modules for p in m.lora_parameters()]
    groups = []
    if clips:
        groups.append({"params": clips, "lr": lr_clip, "weight_decay": 0.0})
    if loras:
        groups.append({"params": loras, "lr": lr_lora, "weight_decay": weight_decay})
    return torch.optim.AdamW(groups) if groups else None


# ---------------------------------------------------------------------------------------------
# the two calibration drivers
# ---------------------------------------------------------------------------------------------
def apiq_calibrate(
    model: nn.Module,
    plans: dict[str, ApiQPlan],
    calib: Tensor,
    *,
    layerwise: bool = False,
    epochs: int = 5,
    batch_size: int = 4,
    lr_clip: float = 5e-3,
    lr_lora: float = 5e-4,
    weight_decay: float = 0.0,
) -> dict[str, tuple[Any, Tensor | None, Tensor | None]]:
    """Run ApiQ (block-wise, or layer-wise with ``layerwise=True``) over ``model`` in place.

    ``plans`` maps target layer names to their settings (layers not in it stay FP and are not
    touched). Returns ``{name: (qweight | None, A | None, B | None)}``; the model's own modules
    are left unchanged (full precision) so the caller can build its final layers.
    """
    if calib is None or calib.ndim != 2 or calib.shape[0] == 0:
        raise ValueError("ApiQ needs a calibration batch [n_samples, seq_len] of token ids")
    if epochs < 0:
        raise ValueError(f"apiq_epochs must be >= 0, got {epochs}")
    grad_state = {n: p.requires_grad for n, p in model.named_parameters()}
    for p in model.parameters():
        p.requires_grad_(False)
    was_training = model.training
    model.eval()
    results: dict[str, tuple[Any, Tensor | None, Tensor | None]] = {}
    try:
        blocks = _all_blocks_from(group_by_block(plans))
        if not blocks:
            return results
        first = model.get_submodule(blocks[0][0])
        captured = capture_block_inputs(model, first, calib, batch_size)
        kws = [kw for _, kw in captured]
        x_fp = [h for h, _ in captured]
        del captured
        x_q = [h.clone() for h in x_fp]
        for block_name, names in blocks:
            block = model.get_submodule(block_name)
            fit = _fit_layers if layerwise else _fit_block
            with torch.no_grad():
                # the block-wise fit reads the full-precision stream's outputs only: they replace its
                # inputs one batch at a time (two copies of the calibration set's states, not three)
                y_fp = [_block_out(block(x, **kw)) for x, kw in zip(x_fp, kws)] if layerwise else \
                    _through(block, x_fp, kws)
                if not names:  # a block with nothing to quantize: both streams pass through it
                    _through(block, x_q, kws)
                    x_fp = y_fp
                    continue
            modules = {n: _apiq_module(model.get_submodule(n), plans[n]) for n in names}
            originals = {}
            if layerwise:
                fit(model, block, modules, x_fp, x_q, kws, epochs, lr_clip, lr_lora, weight_decay)
                for n, m in modules.items():
                    originals[n] = replace_module(model, n, m)
            else:
                for n, m in modules.items():
                    originals[n] = replace_module(model, n, m)
                fit(model, block, modules, x_fp, x_q, kws, epochs, lr_clip, lr_lora, weight_decay, y_fp)
            for n, m in modules.items():
                results[n] = m.bake()
            with torch.no_grad():
                _through(block, x_q, kws)
            for n, orig in originals.items():
                replace_module(model, n, orig)
            x_fp = y_fp
    finally:
        for n, p in model.named_parameters():
            p.requires_grad_(grad_state.get(n, p.requires_grad))
        model.train(was_training)
    return results


def _through(block: nn.Module, states: list[Tensor], kws: list[dict]) -> list[Tensor]:
    """Each hidden state of ``states`` replaced by ``block``'s output on it, in place (one batch's
    output is the only extra state alive at a time); returns the list."""
    for i, kw in enumerate(kws):
        states[i] = _block_out(block(states[i], **kw))
    return states


def _fit_block(model, block, modules, x_fp, x_q, kws, epochs, lr_clip, lr_lora, wd, y_fp) -> None:
    """Block-wise ApiQ: min MSE(block_q(x_q), block_fp(x_fp)) over clipping + LoRA."""
    opt = _optimizer(list(modules.values()), lr_clip, lr_lora, wd)
    if opt is None:
        return
    with torch.enable_grad():
        for _ in range(epochs):
            for x, kw, y in zip(x_q, kws, y_fp):
                opt.zero_grad(set_to_none=True)
                loss = F.mse_loss(_block_out(block(x, **kw)), y)
                loss.backward()
                opt.step()


def _fit_layers(model, block, modules, x_fp, x_q, kws, epochs, lr_clip, lr_lora, wd) -> None:
    """Layer-wise ApiQ: per linear, min MSE(layer_q(in_q), layer_fp(in_fp)); inputs captured
    from the FP block on the FP stream and on the quantized stream."""
    names = list(modules)
    in_fp: dict[str, list[Tensor]] = {n: [] for n in names}
    in_q: dict[str, list[Tensor]] = {n: [] for n in names}
    store: list[dict[str, list[Tensor]]] = [in_fp]

    def make_hook(n):
        def hook(_m, args):
            store[0][n].append(args[0].detach())
        return hook

    handles = [model.get_submodule(n).register_forward_pre_hook(make_hook(n)) for n in names]
    try:
        with torch.no_grad():
            for x, kw in zip(x_fp, kws):
                block(x, **kw)
            store[0] = in_q
            for x, kw in zip(x_q, kws):
                block(x, **kw)
    finally:
        for h in handles:
            h.remove()
    for n, m in modules.items():
        opt = _optimizer([m], lr_clip, lr_lora, wd)
        if opt is None:
            continue
        with torch.no_grad():
            targets = [F.linear(x, m.weight, m.bias) for x in in_fp[n]]
        with torch.enable_grad():
            for _ in range(epochs):
                for x, y in zip(in_q[n], targets):
                    opt.zero_grad(set_to_none=True)
                    F.mse_loss(m(x), y).backward()
                    opt.step()


class ApiQ(LowRankInitMethod):
    """Quantized base + LoRA from block-wise activation-preserving calibration (needs calib).

    Options (paper values in brackets): ``epochs`` 5 [20] passes over the calibration set,
    ``batch_size`` 4 sequences per step, ``lr_clip`` 5e-3, ``lr_lora`` 5e-4, ``weight_decay`` 0.
    The calibration size is ``MethodSettings.calib_samples`` x ``calib_seq_len`` [128 x 1024].
    """

    name = "apiq"
    needs_calibration = True
    layerwise = False
    option_defaults = {"epochs": 5, "batch_size": 4, "lr_clip": 5e-3, "lr_lora": 5e-4, "weight_decay": 0.0}

    def init_memory(self, arch: Any, settings: MethodSettings) -> InitMemory:
        # the calibration set's hidden states (the full-precision stream, replaced by the block's
        # outputs; the quantized stream), one block's fit with gradients, its fake-quantized weights
        return InitMemory(layer_factor=APIQ_LAYER_FACTOR, states=2, calib_rows=settings.calib_samples,
                          calib_seq_len=settings.calib_seq_len,
                          fit_tokens=int(settings.options["batch_size"]) * settings.calib_seq_len)

    def initialise(self, model, layer_settings, settings, calib):
        opts = settings.options
        grid = clipping_grid(settings.quantizer)
        plans = {n: ApiQPlan(s.bits, s.group_size, s.rank, settings.lora_alpha / max(s.rank, 1), grid)
                 for n, s in layer_settings.items() if s.bits < 16 or s.rank > 0}
        try:
            res = apiq_calibrate(model, plans, calib, layerwise=self.layerwise, epochs=int(opts["epochs"]),
                                 batch_size=int(opts["batch_size"]), lr_clip=float(opts["lr_clip"]),
                                 lr_lora=float(opts["lr_lora"]), weight_decay=float(opts["weight_decay"]))
        except ValueError as err:
            raise MethodError(f"{self.name}: {err}") from err
        return res


class ApiQLayerwise(ApiQ):
    """``apiq-lw``: the same objective per linear layer (cheaper, slightly weaker)."""

    name = "apiq-lw"
    layerwise = True

    def init_memory(self, arch: Any, settings: MethodSettings) -> InitMemory:
        # three copies of the states (full-precision inputs and outputs, the quantized stream) and
        # each layer's inputs on both streams for one block (q/k/v and gate/up share theirs)
        init = super().init_memory(arch, settings)
        per_block = 3 + arch.intermediate_size / arch.hidden_size
        return replace(init, states=3 + 2 * per_block)

__all__ = ["ApiQ", "ApiQLayerwise", "ApiQPlan", "ApiQLinear", "apiq_calibrate", "clipping_grid", "group_by_block",
           "capture_block_inputs"]
