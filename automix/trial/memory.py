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

The training set-up (``TrialSpec``'s options) is part of the model: gradient checkpointing per
decoder block (``automix.trial.checkpoint``: each block that takes part in backward keeps its
input; the largest block's recomputation is added), the dtype (fp32; pure bf16; fp16 autocast with
fp32 trainable weights, whose fp16 weight casts and per-adapter input copies are counted), the
optimizer's state bytes (:func:`optimizer_state_bytes`) and gradient accumulation (activations
of one micro-batch). On CPU the accounting of all of these equals the prediction
(``tests/trial/test_memory_options.py``, ``benchmarks/memory_model.md``).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from typing import Any, Iterable, Mapping

from automix.config.layers import LayerSettings
from automix.config.study import micro_batch_size
from automix.arch import as_arch_info, block_index, kept_units, layer_kind, layer_shapes
from automix.methods import get_method
from automix.methods.base import MemoryProfile


def _block_kind(name: str) -> tuple[int, str]:
    return block_index(name), layer_kind(name)


META_BYTES = 2  # QuantLinear stores scales and zeros in fp16
_DTYPE_BYTES = {"float32": 4, "float16": 2, "bfloat16": 2, "float64": 8}


@dataclass(frozen=True)
class MemoryBreakdown:
    """Bytes per category; ``total`` is their sum (``transient`` is 0 on CPU).

    ``recompute`` (not a category: not in ``to_dict``, not compared) is the structure of the
    activations under gradient checkpointing, one entry per decoder block: the bytes that block's
    recomputation adds (0 for a block that is not checkpointed; all 0 when none is), so that
    ``activations = A + max(recompute)`` with ``A`` a sum of per-layer and per-block terms (the
    kept block inputs, the loss...). Empty without checkpointing (``activations`` is then itself
    such a sum). The search uses it to tabulate the model exactly (``automix.search.batch``).
    """

    weights: int
    quant_metadata: int
    adapters: int
    gradients: int
    optimizer_states: int
    activations: int
    transient: int = 0
    total: int = 0
    recompute: tuple[float, ...] = field(default=(), compare=False, repr=False)

    def to_dict(self) -> dict[str, int]:
        return {k: v for k, v in asdict(self).items() if k != "recompute"}

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
                     padded: bool = False, config: Any = None, checkpointing: bool = False,
                     autocast: bool = False, shapes: Mapping[str, tuple[int, int]] | None = None) -> int:
    """Bytes autograd saves for backward in one training step (see the module docstring and
    :func:`activation_parts`, which also returns the per-block recomputation terms)."""
    return activation_parts(arch, layer_settings, profile, batch_size, seq_len, abytes, device, padded, config,
                            checkpointing, autocast, shapes)[0]


def activation_parts(arch: Any, layer_settings: Mapping[str, LayerSettings], profile: Any,
                     batch_size: int, seq_len: int, abytes: int, device: str = "cpu",
                     padded: bool = False, config: Any = None, checkpointing: bool = False,
                     autocast: bool = False, shapes: Mapping[str, tuple[int, int]] | None = None
                     ) -> tuple[int, tuple[float, ...]]:
    """(bytes autograd saves for backward in one training step, per-block recomputation terms).

    Walks the blocks in order tracking whether the residual stream needs gradients yet (it does
    from the first trained layer on); frozen linears save nothing, adapters save their input
    (once per group of layers reading the same tensor) and rank-r intermediates.

    ``checkpointing``: every decoder block that takes part in backward keeps only its input
    (``automix.trial.checkpoint``); the block's own saved tensors come back, one block at a time,
    when backward recomputes it: the largest block's (minus its input, already kept) is added.
    ``autocast``: fp16 autocast with fp32 trainable weights; each LoRA adapter then saves its own
    fp16 copy of its input (no sharing) and the fp16 casts of its weights that backward needs.

    The terms: with ``checkpointing``, one per decoder block, ``m_b = (s_b - i_b) * T + c_b``
    for a checkpointed block (``s_b``: its saved bytes per token, ``i_b``: its input when a norm
    saves it, ``c_b``: its per-step bytes, ``T``: tokens of the micro-batch) and 0 for the others;
    the bytes are then ``A + max_b m_b`` with ``A`` (kept inputs, outside-block and loss terms) a
    sum of per-block terms. Without checkpointing: no terms, the bytes are such a sum.
    """
    info = as_arch_info(arch)
    no_terms = (0.0,) * info.n_layers if checkpointing else ()
    if profile.trainable_params <= 0:
        return 0, no_terms

    fam = _family(info, config)
    T = batch_size * seq_len
    h, hd, V = info.hidden_size, info.head_dim, info.vocab_size
    if autocast and shapes is None:
        shapes = layer_shapes(info, layer_settings)
    kept = kept_units(info, layer_settings)
    by_block: dict[int, dict[str, LayerSettings]] = {}
    names: dict[tuple[int, str], str] = {}
    for name, s in layer_settings.items():
        b, kind = _block_kind(name)
        by_block.setdefault(b, {})[kind] = s
        names[(b, kind)] = name
    grad_kinds = {_block_kind(n) for n in (getattr(profile, "grad_layers", None) or ())}
    lora = getattr(profile, "lora", False)
    dropout = getattr(profile, "lora_dropout", 0.0) if lora else 0.0
    mask_bytes = 1 if device.startswith("cuda") else abytes  # CPU dropout keeps a float mask
    norm = (h * 4 + 4) if fam.norm_fp32 else (h * abytes + 8)
    # the norm's saved input is the block input itself (already kept under checkpointing)
    norm_saves_input = (not fam.norm_fp32) or abytes == 4
    resid_mask = h * mask_bytes if fam.resid_dropout > 0 else 0
    shared_inputs = not autocast  # autocast: every adapter saves its own fp16 copy of its input

    def lora_on(b: int, kind: str) -> bool:
        s = by_block.get(b, {}).get(kind)
        return bool(lora and s is not None and s.rank > 0)

    def trains(b: int, kind: str) -> bool:
        return (b, kind) in grad_kinds or lora_on(b, kind)

    def dropped(b: int, kinds: Iterable[str], in_f: int, input_grad: bool) -> float:
        """LoRA dropout: each adapter saves its dropped input, plus the mask when grad flows in."""
        if dropout <= 0:
            return 0.0
        n = sum(1 for k in kinds if lora_on(b, k))
        return n * in_f * (abytes + (mask_bytes if input_grad else 0))

    def dense_k(b: int, kind: str) -> int:
        """Columns a trained base layer keeps dense (QEFT's weak block); 0 for none."""
        if (b, kind) not in grad_kinds or (b, kind) not in names:
            return 0
        return int(profile.dense_columns.get(names[(b, kind)], 0))

    def adapter_inputs(b: int, kinds: Iterable[str], in_f: int, share_ok: bool = True) -> float:
        """Inputs the trained layers of ``kinds`` save (LoRA dropout 0): LoRA adapters (and base
        layers training whole) one shared tensor, or under autocast a copy each; a trained weak
        block (QEFT) its own gathered ``k`` columns. ``share_ok=False``: the shared tensor is
        already saved by something else (attention's output)."""
        full = [k for k in kinds if trains(b, k) and not dense_k(b, k)]
        private = sum(dense_k(b, k) for k in kinds if trains(b, k)) * abytes
        if full and dropout == 0:
            if not shared_inputs:
                private += len(full) * in_f * abytes
            elif share_ok:
                private += in_f * abytes
        return float(private)

    def casts(b: int, kinds: Iterable[str], input_grad: bool) -> float:
        """Autocast: fp16 copies of fp32 trainable weights that backward keeps (bytes, not per token):
        B always (its input needs grad), A only when gradient flows into the adapter's input."""
        if not autocast:
            return 0.0
        total = 0.0
        for k in kinds:
            if lora_on(b, k):
                out_f, in_f = shapes[names[(b, k)]]
                r = by_block[b][k].rank
                total += 2 * r * out_f + (2 * r * in_f if input_grad else 0)
            elif dense_k(b, k) and input_grad:  # the weak block's fp16 copy
                total += 2 * shapes[names[(b, k)]][0] * dense_k(b, k)
        return total

    def attention(nh: int, nkv: int) -> float:
        if fam.attn_dropout > 0:  # math path: q k v, softmax output, dropout mask and output
            return 3 * nh * hd * abytes + nh * seq_len * (2 * abytes + mask_bytes)
        if padded:  # explicit mask: k/v repeated to all heads (a view when one kv head), mask kept
            kv_saved = nkv if nkv in (1, nh) else nh
            return (2 * nh * hd + 2 * kv_saved * hd) * abytes + nh * 4 + seq_len * abytes
        return (2 * nh * hd + 2 * nkv * hd) * abytes + nh * 4  # flash: q k v out lse

    blocks: list[tuple[float, float, bool, bool]] = []  # (per token, bytes, keeps input, input saved)
    rope = 0
    r = False  # does the residual stream require grad here?
    if profile.backprop_through_backbone:
        for b in range(info.n_layers):
            nh, nkv, inter = kept[b]
            kinds_b = by_block.get(b, {})
            active = r or any(trains(b, k) for k in kinds_b)
            r_in = r
            tok = 0.0
            fixed = 0.0
            if r:
                tok += norm
            attn_in = [k for k in _ATTN_IN if k in kinds_b]
            tok += adapter_inputs(b, attn_in, h)  # normed input saved for the q/k/v adapters
            tok += dropped(b, attn_in, h, r)
            fixed += casts(b, attn_in, r)
            qkv_grad = r or any(trains(b, k) for k in attn_in)
            if qkv_grad:
                tok += attention(nh, nkv)
                if fam.rope:
                    rope = 2 * seq_len * hd * abytes
            o_train = trains(b, "attn_o")
            shared = fam.o_input_shared and fam.attn_dropout == 0 and qkv_grad and shared_inputs
            tok += adapter_inputs(b, ("attn_o",), nh * hd, share_ok=not shared)  # (else SDPA's out)
            tok += dropped(b, ("attn_o",), nh * hd, qkv_grad)
            fixed += casts(b, ("attn_o",), qkv_grad)
            r = r or qkv_grad or o_train
            if r:
                tok += resid_mask + norm  # residual dropout, post-attention norm
            up_kinds = ("mlp_gate", "mlp_up") if fam.gated_mlp else ("mlp_up",)
            ups = [trains(b, k) for k in up_kinds]
            tok += adapter_inputs(b, up_kinds, h)
            tok += dropped(b, up_kinds, h, r)
            fixed += casts(b, up_kinds, r)
            d_train = trains(b, "mlp_down")
            if fam.gated_mlp:
                g_grad, u_grad = r or ups[0], r or ups[1]
                if g_grad:
                    tok += inter * abytes * 2  # SiLU input; its output saved by the product
                if u_grad:
                    tok += inter * abytes  # up output saved by the product
                mid_grad = g_grad or u_grad
                tok += adapter_inputs(b, ("mlp_down",), inter)  # product (input of down_proj)
            else:
                mid_grad = r or ups[0]
                if mid_grad:
                    tok += fam.act_saves * inter * abytes
                relu_keeps = mid_grad and fam.act_saves == 1 and shared_inputs  # relu keeps fc2's input
                tok += adapter_inputs(b, ("mlp_down",), inter, share_ok=not relu_keeps)
            tok += dropped(b, ("mlp_down",), inter, mid_grad)
            fixed += casts(b, ("mlp_down",), mid_grad)
            r = r or mid_grad or d_train
            if r:
                tok += resid_mask
            if lora:
                tok += lora_activation_bytes_per_token(kinds_b, abytes)
            blocks.append((tok, fixed, active, r_in and norm_saves_input))
    elif lora:  # (no backbone backprop and LoRA cannot happen together; kept for completeness)
        blocks.append((lora_activation_bytes_per_token(layer_settings, abytes), 0.0, False, False))
    outside = 0.0
    if r:
        outside += norm  # final norm
    loss = T * V * 4 + T * 8 + 4  # log-softmax output (fp32), targets, weight total
    extra = getattr(profile, "extra_activations", None)  # the method's own modules (side network)
    loss += int(round(extra(batch_size, seq_len, abytes, autocast))) if extra is not None else 0  # (+ them)
    if not checkpointing or not any(k for _, _, k, _ in blocks):
        per_tok = sum(t for t, _, _, _ in blocks) + outside
        return int(round(per_tok * T + sum(f for _, f, _, _ in blocks))) + rope + loss, no_terms
    # checkpointing: kept block inputs (+ the shared rotary tables and padding mask they take as
    # arguments) for the whole step, plus the largest block recomputation
    n_kept = sum(1 for _, _, k, _ in blocks if k)
    kept_args = (2 * seq_len * hd * abytes if fam.rope else 0) + (batch_size * seq_len * seq_len if padded else 0)
    terms = tuple(float((t - (h * abytes if saves_input else 0)) * T + f) if k else 0.0
                  for t, f, k, saves_input in blocks)
    recompute = max(m for m, (_, _, k, _) in zip(terms, blocks) if k)
    return int(round(n_kept * h * abytes * T + outside * T + recompute)) + kept_args + loss, terms


# ----------------------------------------------------------------------------- the estimate


OPTIMIZERS = ("adamw", "adamw-8bit", "paged-adamw", "paged-adamw-8bit", "sgd")
BNB_MIN_8BIT_SIZE = 4096  # bitsandbytes keeps 32-bit states for smaller tensors
BNB_BLOCK = 256  # blockwise quantization of 8-bit states: one fp32 absmax per block


def optimizer_state_bytes(optimizer: str, sizes: Iterable[int], param_bytes: int, device: str = "cpu") -> int:
    """Bytes of optimizer state for trainable tensors of ``sizes`` elements.

    ``adamw`` (torch): two states in the parameter dtype and a 4-byte step tensor per tensor (a
    host tensor on CUDA, not counted there). ``sgd``: momentum 0.9, one state in the parameter
    dtype. bitsandbytes: ``paged-adamw`` two fp32 states; ``adamw-8bit`` / ``paged-adamw-8bit``
    one byte per state element plus an fp32 absmax per 256-element block (tensors under 4096
    elements keep fp32 states), and the two 256-entry fp32 quantization maps all tensors share.
    Paged states live in CUDA unified memory (they can spill to host memory under pressure); the
    estimate counts them on the device, the conservative choice for a budget.
    """
    if optimizer not in OPTIMIZERS:
        raise ValueError(f"optimizer must be one of {', '.join(OPTIMIZERS)}; got {optimizer!r}")
    sizes = [int(n) for n in sizes]
    if optimizer == "adamw":
        return sum(2 * n * param_bytes for n in sizes) + (0 if device.startswith("cuda") else 4 * len(sizes))
    if optimizer == "sgd":
        return sum(n * param_bytes for n in sizes)
    if optimizer == "paged-adamw":
        return sum(2 * n * 4 for n in sizes)
    total, any8 = 0, False
    for n in sizes:
        if n >= BNB_MIN_8BIT_SIZE:
            total += 2 * n + 2 * 4 * ((n + BNB_BLOCK - 1) // BNB_BLOCK)
            any8 = True
        else:
            total += 2 * n * 4
    return total + (2 * 256 * 4 if any8 else 0)


def _trainable_sizes(profile: MemoryProfile) -> list[int]:
    sizes = getattr(profile, "trainable_sizes", None)
    if sizes is not None:
        return list(sizes)
    n = profile.trainable_tensors
    if n <= 0:
        return []
    base, extra = divmod(profile.trainable_params, n)  # unknown split: equal sizes
    return [base + (1 if i < extra else 0) for i in range(n)]


def estimate(arch: Any, layer_settings: Mapping[str, LayerSettings], method: Any = "qlora",
             batch_size: int = 8, seq_len: int = 128, dtype: Any = "float32",
             settings: Any = None, device: str = "cpu", config: Any = None,
             padded: bool = False, gradient_checkpointing: bool = False, optimizer: str = "adamw",
             grad_accum_steps: int = 1) -> MemoryBreakdown:
    """Predicted bytes of one fine-tuning step.

    ``arch``: an ``ArchInfo``, an HF config or a model. ``method``: a name, a ``Method`` or a
    ``MemoryProfile``. ``layer_settings`` must cover every target layer (pruning included).
    ``dtype``: float32, bfloat16 (pure bf16: trainable parameters and optimizer states too) or
    float16 (fp16 autocast over fp16 frozen weights, fp32 trainable parameters).
    ``gradient_checkpointing``: per decoder block (see :func:`activation_bytes`).
    ``optimizer``: see :func:`optimizer_state_bytes`. ``grad_accum_steps``: ``batch_size`` rows per
    optimizer step in micro-batches of ``batch_size / grad_accum_steps`` (activations follow the
    micro-batch; gradients are accumulated in place).
    On ``device="cuda"`` AdamW's step counters (host tensors) are not counted and a transient
    term for the logits and their gradient is added to approximate ``max_memory_allocated``.
    ``padded``: batches carry padding, so attention gets an explicit mask (more is saved).
    The result's ``recompute``: the per-block recomputation terms of the activations
    (:class:`MemoryBreakdown`, :func:`activation_parts`).
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
    micro = micro_batch_size(batch_size, grad_accum_steps)
    wb = dtype_bytes(dtype)
    autocast = mixed_precision(dtype)
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
    # frozen parts in the model dtype; trainable ones fp32 under autocast (else the model dtype),
    # those of profile.fp32_sizes fp32 in every dtype
    pb = 4 if autocast else (profile.param_bytes or wb)
    fp32_sizes = list(getattr(profile, "fp32_sizes", ()))
    n32 = sum(fp32_sizes)
    # "adapters" reports every trainable parameter; trainable parts of base layers (QEFT's weak
    # block) move there from "weights", as the measurement categorises them.
    base_trainable = max(0, profile.trainable_params - profile.adapter_params)
    weights -= base_trainable * (profile.param_bytes or wb)
    adapters = (profile.trainable_params - n32) * pb + n32 * 4
    grads = adapters
    sizes = _trainable_sizes(profile)
    if fp32_sizes and optimizer in ("adamw", "sgd"):  # (bitsandbytes' states ignore the param dtype)
        # these count elements and tensors only: the others are the rest, whatever their split
        n_rest = max(0, profile.trainable_tensors - len(fp32_sizes))
        rest = [profile.trainable_params - n32] + [0] * (n_rest - 1) if n_rest else []
        optim = (optimizer_state_bytes(optimizer, rest, pb, device)
                 + optimizer_state_bytes(optimizer, fp32_sizes, 4, device))
    else:
        optim = optimizer_state_bytes(optimizer, sizes, pb, device)
    acts, recompute = activation_parts(info, layer_settings, profile, micro, seq_len, wb, device, padded, config,
                                       checkpointing=gradient_checkpointing, autocast=autocast, shapes=shapes)
    transient = 0
    if device.startswith("cuda") and profile.trainable_params > 0:
        transient = 2 * micro * seq_len * info.vocab_size * 4
    return replace(MemoryBreakdown.of(weights=weights, quant_metadata=meta, adapters=adapters, gradients=grads,
                                      optimizer_states=optim, activations=acts, transient=transient),
                   recompute=recompute)


def mixed_precision(dtype: Any) -> bool:
    """float16 means fp16 autocast with fp32 trainable weights (pure fp16 training diverges)."""
    return str(dtype).replace("torch.", "") == "float16"


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


_ACTIVE: list["SavedTensorMeter"] = []


def active_meter() -> "SavedTensorMeter | None":
    """The innermost :class:`SavedTensorMeter` now entered (checkpointed blocks report to it)."""
    return _ACTIVE[-1] if _ACTIVE else None


class SavedTensorMeter:
    """Context manager summing the bytes of tensors autograd saves for backward, once per
    storage, excluding the model's own parameters and buffers (already counted as weights).

    With gradient checkpointing (:mod:`automix.trial.checkpoint`) a checkpointed block saves
    nothing during the forward; it reports the inputs it keeps (:meth:`keep`, counted like saved
    tensors) and, in backward, each recomputation's saved tensors (:meth:`recomputed`: the bytes
    of storages not already counted; the largest recomputation is ``recompute_peak``).
    ``total`` = ``bytes`` + ``recompute_peak`` is the step's activation accounting.
    """

    def __init__(self, model: Any) -> None:
        self._exclude = {_storage_key(t) for t in list(model.parameters()) + list(model.buffers())}
        self._seen: set[tuple[str, int]] = set()
        self.bytes = 0
        self.recompute_peak = 0
        self._ctx = None

    @property
    def total(self) -> int:
        return self.bytes + self.recompute_peak

    def _pack(self, t: Any) -> Any:
        key = _storage_key(t)
        if key not in self._exclude and key not in self._seen:
            self._seen.add(key)
            self.bytes += t.untyped_storage().nbytes()
        return t

    def keep(self, tensors: Iterable[Any]) -> None:
        """Count tensors kept alive for backward outside autograd's saving (checkpoint inputs)."""
        for t in tensors:
            self._pack(t)

    def recomputed(self, tensors: Iterable[Any], inputs: Iterable[Any] = ()) -> None:
        """Bytes one block recomputation holds beyond the block's kept ``inputs`` (and the model's
        own tensors); keeps the largest. (Storages counted earlier may be freed by now and their
        addresses reused, so only the inputs, alive for sure, are matched.)"""
        fresh = {_storage_key(t) for t in inputs}
        n = 0
        for t in tensors:
            key = _storage_key(t)
            if key in self._exclude or key in fresh:
                continue
            fresh.add(key)
            n += t.untyped_storage().nbytes()
        self.recompute_peak = max(self.recompute_peak, n)

    def __enter__(self) -> "SavedTensorMeter":
        import torch

        self._ctx = torch.autograd.graph.saved_tensors_hooks(self._pack, lambda t: t)
        self._ctx.__enter__()
        _ACTIVE.append(self)
        return self

    def __exit__(self, *exc: Any) -> None:
        _ACTIVE.remove(self)
        self._ctx.__exit__(*exc)


def optimizer_bytes(optimizer: Any) -> int:
    """Exact bytes of an optimizer's state tensors, once per storage (AdamW: exp_avg, exp_avg_sq,
    step; 8-bit AdamW: codes, block absmax and the quantization maps all parameters share)."""
    import torch

    seen: set[tuple[str, int]] = set()
    total = 0
    for state in optimizer.state.values():
        for v in state.values():
            if isinstance(v, torch.Tensor) and _storage_key(v) not in seen:
                seen.add(_storage_key(v))
                total += v.untyped_storage().nbytes()
    return total


def measured_breakdown(model: Any, params: Iterable[Any], optimizer: Any,
                       saved_bytes: "int | SavedTensorMeter") -> MemoryBreakdown:
    """The CPU accounting after a step: tensors of the model, gradients, optimizer state and the
    activations measured by a :class:`SavedTensorMeter` during that step (its ``total``: what
    the forward saved plus, with checkpointing, the largest block recomputation)."""
    if isinstance(saved_bytes, SavedTensorMeter):
        saved_bytes = saved_bytes.total
    params = list(params)
    parts = model_bytes(model, params)
    grads = sum(p.grad.untyped_storage().nbytes() for p in params if p.grad is not None)
    return MemoryBreakdown.of(weights=parts["weights"], quant_metadata=parts["quant_metadata"],
                              adapters=parts["adapters"], gradients=grads,
                              optimizer_states=optimizer_bytes(optimizer), activations=saved_bytes)


def relative_error(predicted: int, measured: int) -> float:
    return abs(predicted - measured) / max(1, measured)


__all__ = ["OPTIMIZERS", "MemoryBreakdown", "SavedTensorMeter", "active_meter", "activation_bytes", "activation_parts",
           "dtype_bytes",
           "estimate", "mixed_precision", "optimizer_state_bytes",
           "layer_shapes", "lora_activation_bytes_per_token", "measured_breakdown", "model_bytes",
           "optimizer_bytes", "relative_error"]
