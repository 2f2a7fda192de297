"""Analytic memory model of one fine-tuning step, and its measurement.

``estimate`` predicts, from architecture facts, per-layer settings and a method's
``MemoryProfile``, the bytes a training step holds: weights (dense and packed codes), quantization
metadata (scales, zeros), adapters, gradients, AdamW states and the activations autograd saves for
backward. It is plain arithmetic (no model is built) because the search sampler calls it for
every candidate. ``measure_*`` account the same quantities on a real model so the two can be
compared term by term (tests and ``automix bench trial`` do).

The activation model follows what autograd actually saves in each family's block with the
base weights frozen: a frozen linear (dense or quantized) saves nothing, a LoRA adapter saves its
input (shared by layers reading the same tensor) and its rank-r intermediate, nothing is saved
before the first layer that trains, and norms, SDPA attention (flash path, masked path, or the
math path when attention dropout is on), the MLP activation and residual dropout masks add what
they keep. It was derived from ``torch.autograd.graph.saved_tensors_hooks`` on Llama, Mistral,
Qwen2, OPT and GPT-2 (CPU, SDPA attention, transformers 5.x) and matches them exactly there; on CUDA
the fused kernels save the same tensors (dropout masks as bytes) and a transient term covers the
logits' gradient.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Iterable, Mapping

from automix.config.layers import LayerSettings
from automix.arch import as_arch_info, block_index, kept_units, layer_kind, layer_shapes
from automix.methods import get_method
from automix.methods.base import MemoryProfile


def _block_kind(name: str) -> tuple[int, str]:
    return block_index(name), layer_kind(name)


META_BYTES = 2  # QuantLinear stores scales and zeros in fp16
_DTYPE_BYTES = {"float32": 4, "float16": 2, "bfloat16": 2, "float64": 8}


@dataclass(frozen=True)
class MemoryBreakdown:
    """Bytes per category; ``total`` is their sum (``transient`` is 0 on CPU)."""

    weights: int
    quant_metadata: int
    adapters: int
    gradients: int
    optimizer_states: int
    activations: int
    transient: int = 0
    total: int = 0

    def to_dict(self) -> dict[str, int]:
        return asdict(self)

    @staticmethod
    def of(**parts: int) -> "MemoryBreakdown":
        parts = {k: int(v) for k, v in parts.items()}
        return MemoryBreakdown(**parts, total=sum(parts.values()))


def dtype_bytes(dtype: Any) -> int:
    name = str(dtype).replace("torch.", "")
    if name not in _DTYPE_BYTES:
        raise ValueError(f"unsupported dtype {dtype!r}; expected one of {sorted(_DTYPE_BYTES)}")
    return _DTYPE_BYTES[name]


def _packed_bytes(out_f: int, in_f: int, bits: int, group_size: int) -> tuple[int, int]:
    """(code bytes, metadata bytes) of a QuantLinear weight (see automix.quant.packing)."""
    words = ((in_f + 31) // 32) * bits
    groups = (in_f + group_size - 1) // group_size
    return words * out_f * 4, 2 * groups * out_f * META_BYTES


def _non_target_bytes(info: Any, config: Any, wbytes: int) -> int:
    """Embeddings, LM head, norms, biases of non-target modules, rotary buffers."""
    h, v, L = info.hidden_size, info.vocab_size, info.n_layers
    n = v * h * (1 if info.tied_embeddings else 2)
    if info.model_type in ("llama", "mistral", "qwen2"):
        n_el = (2 * L + 1) * h
        rotary = 2 * (info.head_dim // 2) * 4  # inv_freq + original_inv_freq, float32
        return (n + n_el) * wbytes + rotary
    if info.model_type == "opt":
        return (n + (info.max_positions + 2) * h + (4 * L + 2) * h) * wbytes
    return (n + info.max_positions * h + (4 * L + 2) * h) * wbytes  # gpt2


def _layer_has_bias(info: Any, config: Any, kind: str) -> bool:
    if info.model_type in ("opt", "gpt2"):
        return True
    if info.model_type == "qwen2" and kind in ("attn_q", "attn_k", "attn_v"):
        return True
    if config is None:
        return False
    if kind.startswith("attn"):
        return bool(getattr(config, "attention_bias", False))
    return bool(getattr(config, "mlp_bias", False))


# ----------------------------------------------------------------------------- activations

_ATTN_IN = ("attn_q", "attn_k", "attn_v", "attn_qkv")
_MLP_IN = ("mlp_gate", "mlp_up")


def lora_activation_bytes_per_token(layer_settings: Mapping[str, LayerSettings], abytes: int = 4) -> float:
    """Bytes per token of the LoRA intermediates ``A x`` (rank r each). Adapter inputs (and
    dropout masks) are counted by the block model in :func:`activation_bytes` because they are
    shared with, or depend on, what the backbone saves."""
    return float(sum(s.rank for s in layer_settings.values() if s.rank > 0) * abytes)


@dataclass(frozen=True)
class _Family:
    """What a decoder block of one model family saves for backward (see activation_bytes)."""

    norm_fp32: bool  # RMSNorm upcasting to fp32 (h*4 + rstd) vs LayerNorm (h*dtype + mean + rstd)
    gated_mlp: bool  # SwiGLU (gate, up, down) vs fc1 -> act -> fc2
    act_saves: int  # plain MLP: intermediate-sized tensors the activation keeps (relu 1, gelu_new 4)
    rope: bool
    o_input_shared: bool  # o_proj input is SDPA's output storage (else a merged-heads copy)
    resid_dropout: float
    attn_dropout: float


def _family(info: Any, config: Any) -> _Family:
    g = (lambda k, d: getattr(config, k, d) if config is not None else d)
    if info.model_type == "gpt2":
        act = str(g("activation_function", "gelu_new"))
        return _Family(False, False, 4 if act in ("gelu_new", "gelu_pytorch_tanh", "gelu_fast") else 1,
                       False, False, float(g("resid_pdrop", 0.1)), float(g("attn_pdrop", 0.1)))
    if info.model_type == "opt":
        act = str(g("activation_function", "relu"))
        return _Family(False, False, 1 if act == "relu" else 4, False, True,
                       float(g("dropout", 0.1)), float(g("attention_dropout", 0.0)))
    return _Family(True, True, 0, True, True, 0.0, float(g("attention_dropout", 0.0)))


def activation_bytes(arch: Any, layer_settings: Mapping[str, LayerSettings], profile: Any,
                     batch_size: int, seq_len: int, abytes: int, device: str = "cpu",
                     padded: bool = False, config: Any = None) -> int:
    """Bytes autograd saves for backward in one training step (see the module docstring).

    Walks the blocks in order tracking whether the residual stream needs gradients yet (it does
    from the first trained layer on); frozen linears save nothing, adapters save their input
    (once per group of layers reading the same tensor) and rank-r intermediates.
    """
    info = as_arch_info(arch)
    if profile.trainable_params <= 0:
        return 0

    fam = _family(info, config)
    T = batch_size * seq_len
    h, hd, V = info.hidden_size, info.head_dim, info.vocab_size
    kept = kept_units(info, layer_settings)
    by_block: dict[int, dict[str, LayerSettings]] = {}
    for name, s in layer_settings.items():
        b, kind = _block_kind(name)
        by_block.setdefault(b, {})[kind] = s
    grad_kinds = {_block_kind(n) for n in (getattr(profile, "grad_layers", None) or ())}
    lora = getattr(profile, "lora", False)
    dropout = getattr(profile, "lora_dropout", 0.0) if lora else 0.0
    mask_bytes = 1 if device.startswith("cuda") else abytes  # CPU dropout keeps a float mask
    norm = (h * 4 + 4) if fam.norm_fp32 else (h * abytes + 8)
    resid_mask = h * mask_bytes if fam.resid_dropout > 0 else 0

    def trains(b: int, kind: str) -> bool:
        s = by_block.get(b, {}).get(kind)
        return (b, kind) in grad_kinds or bool(lora and s is not None and s.rank > 0)

    def dropped(b: int, kinds: Iterable[str], in_f: int, input_grad: bool) -> float:
        """LoRA dropout: each adapter saves its dropped input, plus the mask when grad flows in."""
        if dropout <= 0:
            return 0.0
        n = sum(1 for k in kinds if k in by_block.get(b, {}) and by_block[b][k].rank > 0)
        return n * in_f * (abytes + (mask_bytes if input_grad else 0))

    def attention(nh: int, nkv: int) -> float:
        if fam.attn_dropout > 0:  # math path: q k v, softmax output, dropout mask and output
            return 3 * nh * hd * abytes + nh * seq_len * (2 * abytes + mask_bytes)
        if padded:  # explicit mask: k/v repeated to all heads (a view when one kv head), mask kept
            kv_saved = nkv if nkv in (1, nh) else nh
            return (2 * nh * hd + 2 * kv_saved * hd) * abytes + nh * 4 + seq_len * abytes
        return (2 * nh * hd + 2 * nkv * hd) * abytes + nh * 4  # flash: q k v out lse

    per_tok = 0.0
    rope = 0
    r = False  # does the residual stream require grad here?
    if profile.backprop_through_backbone:
        for b in range(info.n_layers):
            nh, nkv, inter = kept[b]
            if r:
                per_tok += norm
            attn_in = [k for k in _ATTN_IN if k in by_block.get(b, {})]
            t_in = [k for k in attn_in if trains(b, k)]
            if t_in and dropout == 0:
                per_tok += h * abytes  # normed input saved once for the q/k/v adapters
            per_tok += dropped(b, attn_in, h, r)
            qkv_grad = r or bool(t_in)
            if qkv_grad:
                per_tok += attention(nh, nkv)
                if fam.rope:
                    rope = 2 * seq_len * hd * abytes
            o_train = trains(b, "attn_o")
            shared = fam.o_input_shared and fam.attn_dropout == 0 and qkv_grad
            if o_train and dropout == 0 and not shared:
                per_tok += nh * hd * abytes  # attention output (else shared with SDPA's out)
            per_tok += dropped(b, ("attn_o",), nh * hd, qkv_grad)
            r = r or qkv_grad or o_train
            if r:
                per_tok += resid_mask + norm  # residual dropout, post-attention norm
            up_kinds = ("mlp_gate", "mlp_up") if fam.gated_mlp else ("mlp_up",)
            ups = [trains(b, k) for k in up_kinds]
            if any(ups) and dropout == 0:
                per_tok += h * abytes
            per_tok += dropped(b, up_kinds, h, r)
            d_train = trains(b, "mlp_down")
            if fam.gated_mlp:
                g_grad, u_grad = r or ups[0], r or ups[1]
                if g_grad:
                    per_tok += inter * abytes * 2  # SiLU input; its output saved by the product
                if u_grad:
                    per_tok += inter * abytes  # up output saved by the product
                mid_grad = g_grad or u_grad
                if d_train and dropout == 0:
                    per_tok += inter * abytes  # product (input of down_proj)
            else:
                mid_grad = r or ups[0]
                if mid_grad:
                    per_tok += fam.act_saves * inter * abytes
                if d_train and dropout == 0 and not (mid_grad and fam.act_saves == 1):
                    per_tok += inter * abytes  # fc2 input (relu keeps the same tensor)
            per_tok += dropped(b, ("mlp_down",), inter, mid_grad)
            r = r or mid_grad or d_train
            if r:
                per_tok += resid_mask
        if r:
            per_tok += norm  # final norm
    if lora:
        per_tok += lora_activation_bytes_per_token(layer_settings, abytes)
    per_tok += profile.extra_activation_bytes_per_token
    loss = T * V * 4 + T * 8 + 4  # log-softmax output (fp32), targets, weight total
    return int(round(per_tok * T)) + rope + loss


# ----------------------------------------------------------------------------- the estimate


def estimate(arch: Any, layer_settings: Mapping[str, LayerSettings], method: Any = "qlora",
             batch_size: int = 8, seq_len: int = 128, dtype: Any = "float32",
             settings: Any = None, device: str = "cpu", config: Any = None,
             padded: bool = False) -> MemoryBreakdown:
    """Predicted bytes of one AdamW fine-tuning step.

    ``arch``: an ``ArchInfo``, an HF config or a model. ``method``: a name, a ``Method`` or a
    ``MemoryProfile``. ``layer_settings`` must cover every target layer (pruning included).
    On ``device="cuda"`` AdamW's step counters (host tensors) are not counted and a transient
    term for the logits and their gradient is added to approximate ``max_memory_allocated``.
    ``padded``: batches carry padding, so attention gets an explicit mask (more is saved).
    """
    info = as_arch_info(arch)
    if config is None and not isinstance(arch, type(info)):
        config = getattr(arch, "config", arch)
    if isinstance(method, MemoryProfile):
        profile = method
    else:
        if isinstance(method, str):
            method = get_method(method)
        profile = method.memory_profile(info, layer_settings, settings)
    wb = dtype_bytes(dtype)
    shapes = layer_shapes(info, layer_settings)
    weights = _non_target_bytes(info, config, wb) + profile.extra_frozen_bytes
    meta = 0
    for name, s in layer_settings.items():
        out_f, in_f = shapes[name]
        kind = _block_kind(name)[1]
        if _layer_has_bias(info, config, kind):
            weights += out_f * wb
        dense = int(profile.dense_columns.get(name, 0))
        if profile.quantize_base and s.bits < 16:
            codes, md = _packed_bytes(out_f, in_f - dense, s.bits, s.group_size)
            weights += codes + dense * out_f * wb
            meta += md
        else:
            weights += out_f * in_f * wb
    pb = profile.param_bytes or wb
    # "adapters" reports every trainable parameter; trainable parts of base layers (QEFT's weak
    # block) move there from "weights", as the measurement categorises them.
    base_trainable = max(0, profile.trainable_params - profile.adapter_params)
    weights -= base_trainable * pb
    adapters = profile.trainable_params * pb
    grads = profile.trainable_params * pb
    steps = 0 if device.startswith("cuda") else 4 * profile.trainable_tensors
    optim = 2 * profile.trainable_params * pb + steps
    acts = activation_bytes(info, layer_settings, profile, batch_size, seq_len, wb, device, padded, config)
    transient = 0
    if device.startswith("cuda") and profile.trainable_params > 0:
        transient = 2 * batch_size * seq_len * info.vocab_size * 4
    return MemoryBreakdown.of(weights=weights, quant_metadata=meta, adapters=adapters, gradients=grads,
                              optimizer_states=optim, activations=acts, transient=transient)


# ----------------------------------------------------------------------------- measurement


def _storage_key(t: Any) -> tuple[str, int]:
    s = t.untyped_storage()
    return (str(t.device), s.data_ptr())


def model_bytes(model: Any, trainable: Iterable[Any] = ()) -> dict[str, int]:
    """Exact bytes of a model's tensors by category: ``weights`` (frozen parameters and buffers
    except quantization metadata), ``quant_metadata`` (QuantLinear scales and zeros),
    ``adapters`` (the trainable parameters). Shared storages (tied embeddings) count once."""
    import torch

    trainable_ids = {id(p) for p in trainable}
    meta_ids: set[int] = set()
    for m in model.modules():
        if all(isinstance(getattr(m, a, None), torch.Tensor) for a in ("packed", "scales", "zeros")):
            meta_ids.update(id(t) for t in (m.scales, m.zeros))
    seen: set[tuple[str, int]] = set()
    out = {"weights": 0, "quant_metadata": 0, "adapters": 0}
    for t in list(model.parameters()) + list(model.buffers()):
        key = _storage_key(t)
        if key in seen:
            continue
        seen.add(key)
        n = t.untyped_storage().nbytes()
        cat = "adapters" if id(t) in trainable_ids else "quant_metadata" if id(t) in meta_ids else "weights"
        out[cat] += n
    return out


class SavedTensorMeter:
    """Context manager summing the bytes of tensors autograd saves for backward, once per
    storage, excluding the model's own parameters and buffers (already counted as weights)."""

    def __init__(self, model: Any) -> None:
        self._exclude = {_storage_key(t) for t in list(model.parameters()) + list(model.buffers())}
        self._seen: set[tuple[str, int]] = set()
        self.bytes = 0
        self._ctx = None

    def _pack(self, t: Any) -> Any:
        key = _storage_key(t)
        if key not in self._exclude and key not in self._seen:
            self._seen.add(key)
            self.bytes += t.untyped_storage().nbytes()
        return t

    def __enter__(self) -> "SavedTensorMeter":
        import torch

        self._ctx = torch.autograd.graph.saved_tensors_hooks(self._pack, lambda t: t)
        self._ctx.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._ctx.__exit__(*exc)


def optimizer_bytes(optimizer: Any) -> int:
    """Exact bytes of an optimizer's state tensors (AdamW: exp_avg, exp_avg_sq, step)."""
    import torch

    total = 0
    for state in optimizer.state.values():
        for v in state.values():
            if isinstance(v, torch.Tensor):
                total += v.untyped_storage().nbytes()
    return total


def measured_breakdown(model: Any, params: Iterable[Any], optimizer: Any, saved_bytes: int) -> MemoryBreakdown:
    """The CPU accounting after a step: tensors of the model, gradients, optimizer state and the
    activations measured by a :class:`SavedTensorMeter` during that step's forward."""
    params = list(params)
    parts = model_bytes(model, params)
    grads = sum(p.grad.untyped_storage().nbytes() for p in params if p.grad is not None)
    return MemoryBreakdown.of(weights=parts["weights"], quant_metadata=parts["quant_metadata"],
                              adapters=parts["adapters"], gradients=grads,
                              optimizer_states=optimizer_bytes(optimizer), activations=saved_bytes)


def relative_error(predicted: int, measured: int) -> float:
    return abs(predicted - measured) / max(1, measured)


__all__ = ["MemoryBreakdown", "SavedTensorMeter", "activation_bytes", "dtype_bytes", "estimate",
           "layer_shapes", "lora_activation_bytes_per_token", "measured_breakdown", "model_bytes",
           "optimizer_bytes", "relative_error"]
