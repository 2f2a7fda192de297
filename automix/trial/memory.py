"""Analytic memory model of a fine-tuning step (driver side: no model is built).

``estimate`` predicts, from architecture facts, per-layer settings and a method's
``MemoryProfile``, the bytes a training step holds: weights (dense and packed codes), quantization
metadata (scales, zeros), adapters, gradients, AdamW states and the activations autograd saves for
backward. It is plain arithmetic because the search sampler calls it for every candidate. The
worker-side accounting of the same quantities is :mod:`automix.trial.meter`; the activation part
is :mod:`automix.trial.activations`.

The activation model follows what autograd actually saves in each family's block with the
base weights frozen: a frozen linear (dense or quantized) saves nothing, a LoRA adapter saves its
input (shared by layers reading the same tensor) and its rank-r intermediate, nothing is saved
before the first layer that trains, and norms, SDPA attention (flash path, masked path, or the
math path when attention dropout is on), the MLP activation and residual dropout masks add what
they keep. It was derived from ``torch.autograd.graph.saved_tensors_hooks`` on Llama, Mistral,
Qwen2, OPT and GPT-2 (CPU, SDPA attention, transformers 5.x) and matches them exactly there; on CUDA
the fused kernels save the same tensors (dropout masks as bytes) and a transient term covers the
logits' gradient.

The training set-up (``TrialSpec``'s options, :class:`StepShape`) is part of the model: gradient
checkpointing per decoder block (``automix.trial.checkpoint``: each block that takes part in
backward keeps its input; the largest block's recomputation is added), the dtype (fp32; pure
bf16; fp16 autocast with fp32 trainable weights, whose fp16 weight casts and per-adapter input
copies are counted), the optimizer's state bytes (:func:`optimizer_state_bytes`) and gradient
accumulation (activations of one micro-batch). On CPU the accounting of all of these equals the
prediction (``tests/trial/test_memory_options.py``, ``benchmarks/memory_model.md``).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any, Iterable, Mapping

from automix.config.layers import LayerSettings
from automix.config.training import micro_batch_size
from automix.arch import as_arch_info, layer_shapes
from automix.methods import get_method
from automix.methods.base import MemoryProfile
from automix.trial.activations import StepShape, activation_parts, block_kind, lora_activation_bytes_per_token


META_BYTES = 2  # QuantLinear stores scales and zeros in fp16
_DTYPE_BYTES = {"float32": 4, "float16": 2, "bfloat16": 2, "float64": 8}


@dataclass(frozen=True)
class MemoryBreakdown:
    """Bytes per category of the training step; ``total`` is their sum. ``transient``: what the
    step holds beyond the tensors it keeps, at its peak (the chunked loss's logits, a block's
    gradients in backward: :func:`step_transient`); ``accounted`` is the rest, what the CPU
    accounting of :mod:`automix.trial.meter` counts.

    ``phases``: the predicted peak of each phase of a trial (:func:`trial_phases`: load,
    prepare, train, evaluate); ``peak`` is the largest, what a budget must cover.
    ``peak_terms``: ``peak = s + max(peak_terms)`` with ``s`` and every term sums of per-layer and
    per-block terms (the search tabulates them exactly, ``automix.search.batch``): the per-block
    recomputations (a single 0 without checkpointing) and, for a method whose initialisation can
    hold more than the step, that phase's excess over ``s``. ``eval_rows``: rows per evaluation
    forward, sized to fit under the training step; ``quant_chunk``: fp32 bytes of weight rows
    quantized at a time, sized likewise.

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
    phases: Mapping[str, int] = field(default_factory=dict, compare=False, repr=False)
    peak_terms: tuple[float, ...] = field(default=(), compare=False, repr=False)
    eval_rows: int = field(default=0, compare=False, repr=False)
    quant_chunk: int = field(default=0, compare=False, repr=False)

    @property
    def peak(self) -> int:
        """The largest phase peak (the training step's ``total`` without phases)."""
        return max(self.phases.values()) if self.phases else self.total

    @property
    def peak_phase(self) -> str:
        """The phase whose predicted peak is :attr:`peak` (the first of equals)."""
        return max(self.phases, key=lambda k: self.phases[k]) if self.phases else "train"

    @property
    def accounted(self) -> int:
        """The step's tensors as the CPU accounting (:mod:`automix.trial.meter`) counts them:
        ``total`` without the transient."""
        return self.total - self.transient

    def to_dict(self) -> dict[str, int]:
        return {k: getattr(self, k) for k in ("weights", "quant_metadata", "adapters", "gradients", "optimizer_states",
                                               "activations", "transient", "total")}

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
    """(code bytes, metadata bytes) of a QuantLinear weight (see automix.kernels.packing)."""
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
             grad_accum_steps: int = 1, eval_rows: int = 16, eval_seq_len: int | None = None,
             eval_with_optimizer: bool = False, train: bool = True,
             prune_scoring: tuple[int, int] | None = None) -> MemoryBreakdown:
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
    The phases of a trial (:func:`trial_phases`): ``eval_rows`` rows of ``eval_seq_len``
    tokens (default ``seq_len``) per evaluation forward at most (fewer when they would not fit
    under the step), with the optimizer states alive when ``eval_with_optimizer`` (evaluations
    during training); ``train=False``: a trial that only evaluates (no step, no sizing);
    ``prune_scoring``: (rows, tokens) of the Taylor pass when the trial must compute the pruning
    scores (none cached): a "prune" phase (:func:`prune_scoring_peak`).
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
        kind = block_kind(name)[1]
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
    step = StepShape(micro, seq_len, wb, device, padded, gradient_checkpointing, autocast)
    acts, recompute = activation_parts(info, layer_settings, profile, step, config, shapes)
    transient = step_transient(info, layer_settings, profile, step, shapes) if profile.trainable_params > 0 else 0
    step_total = MemoryBreakdown.of(weights=weights, quant_metadata=meta, adapters=adapters, gradients=grads,
                                    optimizer_states=optim, activations=acts, transient=transient)
    model = weights + meta + adapters
    ev = EvalShape(eval_rows, eval_seq_len or seq_len, optim if eval_with_optimizer else 0)
    phases, terms, rows, chunk = trial_phases(info, layer_settings, profile, step, shapes, config,
                                              _non_target_bytes(info, config, wb), model,
                                              step_total.total if train else None, recompute, ev)
    if prune_scoring is not None:
        phases = {"load": phases["load"],
                  "prune": prune_scoring_peak(info, layer_settings, wb, config, *prune_scoring,
                                              _non_target_bytes(info, config, wb)),
                  **{k: v for k, v in phases.items() if k != "load"}}
    return replace(step_total, recompute=recompute, phases=phases, peak_terms=terms, eval_rows=rows, quant_chunk=chunk)


# ----------------------------------------------------------------------------- a trial's phases

CHUNK_BYTES = 8 << 20  # fp32 logits of one chunk of tokens in the loss and the evaluation (automix.trial.loss)
QUANT_CHUNK = 1 << 20  # fp32 bytes of weight rows quantized at a time, at most (automix.quant.quantization_chunk)
QUANT_TRANSIENT = 10  # bytes a quantization holds per fp32 byte of the rows it works on (read, codes, packing)
_GROUPS = (("attn_q", "attn_k", "attn_v", "attn_qkv"), ("mlp_gate", "mlp_up"))  # layers reading one tensor


def chunk_tokens(vocab_size: int, tokens: int, chunk_bytes: int = CHUNK_BYTES) -> int:
    """Tokens per chunk of the loss: as many as ``chunk_bytes`` of fp32 logits hold (1 to all)."""
    return max(1, min(int(tokens), int(chunk_bytes) // (4 * int(vocab_size))))


@dataclass(frozen=True)
class EvalShape:
    """The evaluation forwards a trial runs: at most ``rows`` rows of ``seq_len`` tokens each;
    ``optimizer`` bytes of optimizer states alive meanwhile (evaluations during training)."""

    rows: int
    seq_len: int
    optimizer: int = 0


def _largest_layer(info: Any, layer_settings: Mapping[str, LayerSettings], quantized_only: bool = False,
                   profile: Any = None) -> int:
    """Elements of the largest target layer, unpruned (a bound that does not depend on which
    layers a configuration prunes or quantizes, so that phases stay sums of per-layer terms)."""
    full = layer_shapes(info, {n: LayerSettings(s.bits, s.group_size, 0.0, s.rank) for n, s in layer_settings.items()})
    if quantized_only and not (profile is not None and profile.quantize_base):
        return 0
    return max((o * i for o, i in full.values()), default=0)


def head_transient(info: Any, tokens: int, abytes: int) -> int:
    """The LM head over ``tokens`` (chunked loss or evaluation): one chunk's logits (in the
    model dtype and in fp32) and their (log-)softmax, and the hidden states (or their gradient)."""
    c = chunk_tokens(info.vocab_size, tokens)
    return c * info.vocab_size * (8 + (abytes if abytes != 4 else 0)) + tokens * info.hidden_size * abytes


def step_transient(info: Any, layer_settings: Mapping[str, LayerSettings], profile: Any, step: StepShape,
                   shapes: Mapping[str, tuple[int, int]] | None = None) -> int:
    """What a training step holds beyond the tensors it keeps, at its peak (allocator-counted on
    CPU; ``torch.profiler`` memory timelines of Llama steps, ``benchmarks/memory_model.md``).

    The chunked loss's backward (:func:`head_transient`), where an unchecked step peaks. With
    checkpointing a block's backward can hold more, next to its recomputed tensors: the MLP's
    gradients (three intermediate-sized tensors at once: the product's and both branches'), or
    two of them and a quantized layer's two dequantized temporaries (``QuantLinear``'s backward
    re-dequantizes its weight). Unpruned sizes: a bound independent of the configuration."""
    loss = head_transient(info, step.tokens, step.abytes)
    if not (step.checkpointing and profile.backprop_through_backbone):
        return loss
    inter = step.tokens * info.intermediate_size * step.abytes
    deq = _largest_layer(info, layer_settings, quantized_only=True, profile=profile) * step.abytes
    return max(loss, 2 * inter + max(inter, 2 * deq))


def forward_transient(info: Any, tokens: int, abytes: int, padded_rows: int = 0, seq_len: int = 0) -> int:
    """What a forward without gradients (evaluation, calibration) holds beyond the model: the
    larger of the head over its tokens (:func:`head_transient`) and a block's MLP
    (gate and up outputs, the activation and their product) next to the residual stream, its
    norm and the attention output; with padding, the attention mask of ``padded_rows`` rows."""
    mlp = tokens * (4 * info.intermediate_size + 4 * info.hidden_size) * abytes
    mask = padded_rows * seq_len * seq_len
    return max(head_transient(info, tokens, abytes), mlp) + mask


def _hessian_bytes(info: Any, layer_settings: Mapping[str, LayerSettings]) -> int:
    """fp32 X^T X of every input group of the target layers (layers reading one tensor share
    one), with the pruned input widths."""
    shapes = layer_shapes(info, layer_settings)
    seen: set[tuple[int, int]] = set()
    total = 0
    for name in layer_settings:
        b, kind = block_kind(name)
        group = next((i for i, g in enumerate(_GROUPS) if kind in g), None)
        if group is not None:
            if (b, group) in seen:
                continue
            seen.add((b, group))
        total += 4 * shapes[name][1] ** 2
    return total


def init_peak(info: Any, layer_settings: Mapping[str, LayerSettings], profile: Any, abytes: int,
              non_target: int, model: int) -> int:
    """The predicted peak of a method's initialisation (:class:`automix.methods.base.InitMemory`).

    With a calibration forward, at its end: the model's tensors other than the quantized layers
    (embeddings, norms, layers kept dense), every input group's X^T X, and the larger of the
    forward's own transient (plus one X^T X product) and the first layer's initialisation
    (matrices are then freed group by group, faster than quantized layers arrive). Otherwise at the
    last layer: the built model and the largest layer's initialisation, next to the calibration
    hidden states a block-wise fit keeps and that fit's own transient."""
    init = profile.init
    layer = init.layer_factor * 4 * _largest_layer(info, layer_settings)
    if init.hessians:
        dense = non_target  # and the target layers kept dense
        shapes = layer_shapes(info, layer_settings)
        for name, s in layer_settings.items():
            if not (profile.quantize_base and s.bits < 16):
                dense += shapes[name][0] * shapes[name][1] * abytes
        inter = info.intermediate_size
        return int(dense + _hessian_bytes(info, layer_settings)
                   + max(forward_transient(info, init.calib_tokens, abytes) + 4 * inter * inter, layer))
    states = init.states * init.calib_rows * init.calib_seq_len * info.hidden_size * abytes
    fit = 0
    if init.fit_tokens:  # one block's fit: its saved tensors and gradients, like an unchecked step's
        fit = forward_transient(info, init.fit_tokens, 4) + 2 * init.fit_tokens * info.intermediate_size * 4
    return int(model + states + max(layer, fit + layer))


def prune_scoring_peak(info: Any, layer_settings: Mapping[str, LayerSettings], abytes: int, config: Any,
                       rows: int, seq_len: int, non_target: int) -> int:
    """The Taylor pass of structured pruning (``automix.trial.prune.cached_unit_scores``), run
    once per model and calibration set when its scores are not cached: a full-precision copy of
    the model loaded whole, the gradients of every decoder linear weight, what an unchecked
    forward with all of them trainable saves, transformers' loss over ``rows`` x ``seq_len``
    tokens (fp32 log-softmax saved, the logits and their gradient in backward), next to the
    trial's own streamed model (``non_target``)."""
    full = {n: LayerSettings(16, s.group_size, 0.0, 0) for n, s in layer_settings.items()}
    linears = sum(o * i for o, i in layer_shapes(info, full).values()) * abytes
    weights = _non_target_bytes(info, config, abytes) + linears
    profile = MemoryProfile(quantize_base=False, trainable_params=1, trainable_tensors=1,
                            grad_layers=frozenset(full))
    step = StepShape(rows, seq_len, abytes)
    acts, _ = activation_parts(info, full, profile, step, config)
    T, V, h = step.tokens, info.vocab_size, info.hidden_size
    loss = T * V * 4 - T * h * abytes  # the full log-softmax in place of the chunked loss's hidden states
    logits = 2 * T * V * 4  # the logits and their gradient, when backward starts
    return int(non_target + weights + linears + acts + loss + logits)


def quantization_chunk_bytes(headroom: int, largest_layer_bytes: int) -> int:
    """fp32 bytes of rows quantized at a time: :data:`QUANT_CHUNK`, less when the step has less
    room beyond the model (its gradients, states, activations) than its temporaries need."""
    return max(1, min(QUANT_CHUNK, largest_layer_bytes, headroom // QUANT_TRANSIENT))


def trial_phases(info: Any, layer_settings: Mapping[str, LayerSettings], profile: Any, step: StepShape,
                 shapes: Mapping[str, tuple[int, int]], config: Any, non_target: int, model: int,
                 train: int | None, recompute: tuple[float, ...], ev: EvalShape
                 ) -> tuple[dict[str, int], tuple[float, ...], int, int]:
    """(predicted peak per phase, the peak's terms, evaluation rows, quantization chunk) of a trial.

    * ``load``: the tensors that are not decoder linear weights (those stay in the file,
      :mod:`automix.trial.stream`).
    * ``prepare``: the built model (``model``: weights, metadata, adapters) and the quantization
      of a chunk of rows, sized so that it fits in what the step holds beyond the model; with a
      method's initialisation (:func:`init_peak`) the larger.
    * ``train``: the step (``train``; None for a trial that only evaluates).
    * ``evaluate``: the model, the optimizer states when they are alive, and a forward
      (:func:`forward_transient`) of as many rows as fit under the step.
    The budget is the largest; the load, the quantization and the evaluation fit under the step
    by construction, so only an initialisation can add a term to the step's (``peak_terms``).
    """
    a = step.abytes
    largest = 4 * _largest_layer(info, layer_settings, quantized_only=True, profile=profile)
    phases: dict[str, int] = {"load": int(non_target)}
    if train is not None:
        chunk = quantization_chunk_bytes(train - model, largest) if largest else 0
    else:
        chunk = min(QUANT_CHUNK, largest)
    prepare = model + QUANT_TRANSIENT * chunk
    init = None
    if profile.init is not None:
        init = init_peak(info, layer_settings, profile, a, non_target, model)
        prepare = max(prepare, init)
    phases["prepare"] = int(prepare)
    if train is not None:
        phases["train"] = int(train)

    extra = getattr(profile, "extra_forward", None)  # the method's own forward (QST's side network)

    def evaluation(r: int) -> int:
        own = int(extra(r * ev.seq_len, a)) if extra is not None else 0
        return int(model + ev.optimizer + own + forward_transient(info, r * ev.seq_len, a, r if step.padded else 0,
                                                                  ev.seq_len))

    rows = max(1, int(ev.rows))
    if train is not None:
        while rows > 1 and evaluation(rows) > train:
            rows -= 1
    phases["evaluate"] = evaluation(rows)
    terms = tuple(recompute) if recompute else ((0.0,) if init is not None else ())
    if init is not None and train is not None:
        base = train - (max(recompute) if recompute else 0.0)
        terms = terms + (float(init - base),)
    return phases, terms, rows, chunk


def mixed_precision(dtype: Any) -> bool:
    """float16 means fp16 autocast with fp32 trainable weights (pure fp16 training diverges)."""
    return str(dtype).replace("torch.", "") == "float16"


def relative_error(predicted: int, measured: int) -> float:
    return abs(predicted - measured) / max(1, measured)


__all__ = ["CHUNK_BYTES", "OPTIMIZERS", "QUANT_CHUNK", "QUANT_TRANSIENT", "EvalShape", "MemoryBreakdown", "StepShape",
           "activation_parts", "chunk_tokens", "dtype_bytes", "estimate", "forward_transient", "head_transient",
           "init_peak", "quantization_chunk_bytes", "step_transient", "trial_phases",
           "mixed_precision", "optimizer_state_bytes", "layer_shapes", "lora_activation_bytes_per_token",
           "relative_error"]
