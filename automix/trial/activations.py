"""The activation model of a training step: what autograd saves for backward in each decoder
block (:func:`activation_parts`), for one micro-batch (:class:`StepShape`).

Part of the analytic memory model (:mod:`automix.trial.memory`, whose docstring describes the
rules: frozen linears save nothing, LoRA adapters save their input and rank-r intermediate,
norms, attention paths, the MLP activation and dropout masks add what they keep; gradient
checkpointing keeps each block's input and adds the largest recomputation). Plain arithmetic
over architecture facts: no model is built.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable, Mapping

from automix.arch import as_arch_info, block_index, kept_units, layer_kind, layer_shapes
from automix.config.layers import LayerSettings

__all__ = ["StepShape", "activation_parts", "block_kind", "lora_activation_bytes_per_token"]


def block_kind(name: str) -> tuple[int, str]:
    """(decoder block index, layer kind) of a layer name."""
    return block_index(name), layer_kind(name)


_ATTN_IN = ("attn_q", "attn_k", "attn_v", "attn_qkv")


def lora_activation_bytes_per_token(layer_settings: Mapping[str, LayerSettings], abytes: int = 4) -> float:
    """Bytes per token of the LoRA intermediates ``A x`` (rank r each). Adapter inputs (and
    dropout masks) are counted by the block walk of :func:`activation_parts` because they are
    shared with, or depend on, what the backbone saves."""
    return float(sum(s.rank for s in layer_settings.values() if s.rank > 0) * abytes)


@dataclass(frozen=True)
class StepShape:
    """One training micro-batch as the activation model sees it."""

    batch_size: int
    seq_len: int
    abytes: int  # bytes of an activation element (the model dtype's; 2 under fp16 autocast)
    device: str = "cpu"
    padded: bool = False  # batches carry padding: attention gets an explicit mask (more is saved)
    checkpointing: bool = False  # per decoder block (automix.trial.checkpoint)
    autocast: bool = False  # fp16 autocast with fp32 trainable weights

    @property
    def tokens(self) -> int:
        return self.batch_size * self.seq_len

    @property
    def mask_bytes(self) -> int:
        """Bytes of a dropout-mask element: CUDA keeps bytes, CPU a float mask."""
        return 1 if self.device.startswith("cuda") else self.abytes


@dataclass(frozen=True)
class _Family:
    """What a decoder block of one model family saves for backward (see activation_parts)."""

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


@dataclass(frozen=True)
class _Block:
    """What one decoder block saves: per token, per step (autocast's weight casts), whether it
    takes part in backward (it then keeps its input under checkpointing) and whether its first
    norm saves that input itself."""

    per_token: float
    fixed: float
    active: bool
    input_saved: bool


class _Walk:
    """The blocks in order, tracking whether the residual stream needs gradients yet (it does
    from the first trained layer on): frozen linears save nothing, trained layers save their
    input (LoRA adapters: once per group of layers reading the same tensor, plus their rank-r
    intermediates), and norms, SDPA attention, the MLP activation and residual dropout masks
    add what they keep. ``blocks()`` walks; ``rope`` and ``grad_out`` (does the stream need
    gradients after the last block) are then set."""

    def __init__(self, info: Any, fam: _Family, layer_settings: Mapping[str, LayerSettings], profile: Any,
                 step: StepShape, shapes: Mapping[str, tuple[int, int]] | None) -> None:
        self.info, self.fam, self.profile, self.step = info, fam, profile, step
        self.layer_settings, self.shapes = layer_settings, shapes
        self.by_block: dict[int, dict[str, LayerSettings]] = {}
        self.names: dict[tuple[int, str], str] = {}
        for name, s in layer_settings.items():
            b, kind = block_kind(name)
            self.by_block.setdefault(b, {})[kind] = s
            self.names[(b, kind)] = name
        self.grad_kinds = {block_kind(n) for n in (getattr(profile, "grad_layers", None) or ())}
        self.lora = getattr(profile, "lora", False)
        self.dropout = getattr(profile, "lora_dropout", 0.0) if self.lora else 0.0
        a = step.abytes
        self.norm = (info.hidden_size * 4 + 4) if fam.norm_fp32 else (info.hidden_size * a + 8)
        # the norm's saved input is the block input itself (already kept under checkpointing)
        self.norm_saves_input = (not fam.norm_fp32) or a == 4
        self.resid_mask = info.hidden_size * step.mask_bytes if fam.resid_dropout > 0 else 0
        self.shared_inputs = not step.autocast  # autocast: every adapter saves its own fp16 copy of its input
        self.rope = 0
        self.grad_out = False

    # ------------------------------------------------------------------ which layers train
    def lora_on(self, b: int, kind: str) -> bool:
        s = self.by_block.get(b, {}).get(kind)
        return bool(self.lora and s is not None and s.rank > 0)

    def trains(self, b: int, kind: str) -> bool:
        return (b, kind) in self.grad_kinds or self.lora_on(b, kind)

    def dense_k(self, b: int, kind: str) -> int:
        """Columns a trained base layer keeps dense (QEFT's weak block); 0 for none."""
        if (b, kind) not in self.grad_kinds or (b, kind) not in self.names:
            return 0
        return int(self.profile.dense_columns.get(self.names[(b, kind)], 0))

    # ------------------------------------------------------------------ what trained layers save
    def trained_inputs(self, b: int, kinds: Iterable[str], in_f: int, input_grad: bool,
                       share_ok: bool = True) -> tuple[float, float]:
        """(per token, per step) bytes the trained layers of ``kinds`` (reading one ``in_f``-wide
        tensor) save. ``input_grad``: gradient flows into that tensor. ``share_ok=False``: the
        shared tensor is already saved by something else (attention's output, ReLU's)."""
        kinds = list(kinds)
        a, mask = self.step.abytes, self.step.mask_bytes
        full = [k for k in kinds if self.trains(b, k) and not self.dense_k(b, k)]
        tok = float(sum(self.dense_k(b, k) for k in kinds if self.trains(b, k)) * a)  # QEFT's gathered columns
        if full and self.dropout == 0:  # LoRA adapters / whole trained layers: one shared input, or a copy each
            tok += (len(full) * in_f * a if not self.shared_inputs else in_f * a if share_ok else 0)
        if self.dropout > 0:  # each adapter saves its dropped input, plus the mask when grad flows in
            tok += sum(1 for k in kinds if self.lora_on(b, k)) * in_f * (a + (mask if input_grad else 0))
        return tok, self._casts(b, kinds, input_grad)

    def _casts(self, b: int, kinds: list[str], input_grad: bool) -> float:
        """Autocast: fp16 copies of fp32 trainable weights that backward keeps (bytes, not per token):
        B always (its input needs grad), A only when gradient flows into the adapter's input."""
        if not self.step.autocast:
            return 0.0
        total = 0.0
        for k in kinds:
            if self.lora_on(b, k):
                out_f, in_f = self.shapes[self.names[(b, k)]]
                r = self.by_block[b][k].rank
                total += 2 * r * out_f + (2 * r * in_f if input_grad else 0)
            elif self.dense_k(b, k) and input_grad:  # the weak block's fp16 copy
                total += 2 * self.shapes[self.names[(b, k)]][0] * self.dense_k(b, k)
        return total

    # ------------------------------------------------------------------ the block's parts
    def sdpa(self, nh: int, nkv: int) -> float:
        """Per token: what SDPA attention saves (flash path, masked path, or the math path when
        attention dropout is on)."""
        a, L, hd = self.step.abytes, self.step.seq_len, self.info.head_dim
        if self.fam.attn_dropout > 0:  # math path: q k v, softmax output, dropout mask and output
            return 3 * nh * hd * a + nh * L * (2 * a + self.step.mask_bytes)
        if self.step.padded:  # explicit mask: k/v repeated to all heads (a view when one kv head), mask kept
            kv_saved = nkv if nkv in (1, nh) else nh
            return (2 * nh * hd + 2 * kv_saved * hd) * a + nh * 4 + L * a
        return (2 * nh * hd + 2 * nkv * hd) * a + nh * 4  # flash: q k v out lse

    def attention(self, b: int, r: bool, nh: int, nkv: int) -> tuple[float, float, bool]:
        """(per token, per step, grad after) of the attention half of block ``b``; ``r``:
        the residual stream needs gradients on entry."""
        h, hd, kinds = self.info.hidden_size, self.info.head_dim, self.by_block.get(b, {})
        tok = self.norm if r else 0.0
        attn_in = [k for k in _ATTN_IN if k in kinds]
        t, fixed = self.trained_inputs(b, attn_in, h, r)  # the normed input, for the q/k/v adapters
        tok += t
        qkv_grad = r or any(self.trains(b, k) for k in attn_in)
        if qkv_grad:
            tok += self.sdpa(nh, nkv)
            if self.fam.rope:
                self.rope = 2 * self.step.seq_len * hd * self.step.abytes
        shared = self.fam.o_input_shared and self.fam.attn_dropout == 0 and qkv_grad and self.shared_inputs
        t, f = self.trained_inputs(b, ("attn_o",), nh * hd, qkv_grad, share_ok=not shared)  # (else SDPA's out)
        r = r or qkv_grad or self.trains(b, "attn_o")
        if r:
            t += self.resid_mask + self.norm  # residual dropout, post-attention norm
        return tok + t, fixed + f, r

    def mlp(self, b: int, r: bool, inter: int) -> tuple[float, float, bool]:
        """(per token, per step, grad after) of the MLP half of block ``b``."""
        a, fam = self.step.abytes, self.fam
        up_kinds = ("mlp_gate", "mlp_up") if fam.gated_mlp else ("mlp_up",)
        ups = [self.trains(b, k) for k in up_kinds]
        tok, fixed = self.trained_inputs(b, up_kinds, self.info.hidden_size, r)
        if fam.gated_mlp:
            g_grad, u_grad = r or ups[0], r or ups[1]
            tok += (inter * a * 2 if g_grad else 0) + (inter * a if u_grad else 0)  # SiLU input (its output
            mid_grad = g_grad or u_grad  # is saved by the product), up's output (saved by the product)
            share_ok = True  # the product, input of down_proj
        else:
            mid_grad = r or ups[0]
            tok += fam.act_saves * inter * a if mid_grad else 0
            share_ok = not (mid_grad and fam.act_saves == 1 and self.shared_inputs)  # relu keeps fc2's input
        t, f = self.trained_inputs(b, ("mlp_down",), inter, mid_grad, share_ok=share_ok)
        r = r or mid_grad or self.trains(b, "mlp_down")
        return tok + t + (self.resid_mask if r else 0), fixed + f, r

    def blocks(self) -> list[_Block]:
        if not self.profile.backprop_through_backbone:  # (and then no LoRA in the backbone)
            return []
        kept = kept_units(self.info, self.layer_settings)
        out: list[_Block] = []
        r = False  # does the residual stream require grad here?
        for b in range(self.info.n_layers):
            nh, nkv, inter = kept[b]
            kinds = self.by_block.get(b, {})
            active = r or any(self.trains(b, k) for k in kinds)
            t1, f1, r_mid = self.attention(b, r, nh, nkv)
            t2, f2, r_out = self.mlp(b, r_mid, inter)
            lora = lora_activation_bytes_per_token(kinds, self.step.abytes) if self.lora else 0.0
            out.append(_Block(t1 + t2 + lora, f1 + f2, active, r and self.norm_saves_input))
            r = r_out
        self.grad_out = r
        return out


def activation_parts(arch: Any, layer_settings: Mapping[str, LayerSettings], profile: Any, step: StepShape,
                     config: Any = None, shapes: Mapping[str, tuple[int, int]] | None = None
                     ) -> tuple[int, tuple[float, ...]]:
    """(bytes autograd saves for backward in one training step, per-block recomputation terms).

    The blocks as :class:`_Walk` sees them, then the final norm, the loss (the chunked loss of
    :mod:`automix.trial.loss` keeps the final hidden states and the targets) and what the
    method's own modules save (``extra_activations``).

    ``step.checkpointing``: every decoder block that takes part in backward keeps only its input
    (``automix.trial.checkpoint``); the block's own saved tensors come back, one block at a time,
    when backward recomputes it: the largest block's (minus its input, already kept) is added.
    ``step.autocast``: fp16 autocast with fp32 trainable weights; each LoRA adapter then saves
    its own fp16 copy of its input (no sharing) and the fp16 casts of its weights that backward
    needs.

    The terms: with checkpointing, one per decoder block, ``m_b = (s_b - i_b) * T + c_b``
    for a checkpointed block (``s_b``: its saved bytes per token, ``i_b``: its input when a norm
    saves it, ``c_b``: its per-step bytes, ``T``: tokens of the micro-batch) and 0 for the others;
    the bytes are then ``A + max_b m_b`` with ``A`` (kept inputs, outside-block and loss terms) a
    sum of per-block terms. Without checkpointing: no terms, the bytes are such a sum.
    """
    info = as_arch_info(arch)
    no_terms = (0.0,) * info.n_layers if step.checkpointing else ()
    if profile.trainable_params <= 0:
        return 0, no_terms
    fam = _family(info, config)
    if step.autocast and shapes is None:
        shapes = layer_shapes(info, layer_settings)
    walk = _Walk(info, fam, layer_settings, profile, step, shapes)
    blocks = walk.blocks()
    if not blocks and walk.lora:  # (no backbone backprop and LoRA cannot happen together; kept for completeness)
        blocks = [_Block(lora_activation_bytes_per_token(layer_settings, step.abytes), 0.0, False, False)]
    T, h, a = step.tokens, info.hidden_size, step.abytes
    outside = walk.norm if walk.grad_out else 0.0  # the final norm
    loss = T * (h * a + 8) + 8  # the chunked loss (automix.trial.loss): hidden states, targets, token count
    extra = getattr(profile, "extra_activations", None)  # the method's own modules (side network)
    loss += int(round(extra(step.batch_size, step.seq_len, a, step.autocast))) if extra is not None else 0
    if not step.checkpointing or not any(blk.active for blk in blocks):
        per_tok = sum(blk.per_token for blk in blocks) + outside
        return int(round(per_tok * T + sum(blk.fixed for blk in blocks))) + walk.rope + loss, no_terms
    # checkpointing: kept block inputs (+ the shared rotary tables and padding mask they take as
    # arguments) for the whole step, plus the largest block recomputation
    n_kept = sum(1 for blk in blocks if blk.active)
    kept_args = (2 * step.seq_len * info.head_dim * a if fam.rope else 0) + \
        (step.batch_size * step.seq_len * step.seq_len if step.padded else 0)
    terms = tuple(float((blk.per_token - (h * a if blk.input_saved else 0)) * T + blk.fixed) if blk.active else 0.0
                  for blk in blocks)
    recompute = max(m for m, blk in zip(terms, blocks) if blk.active)
    return int(round(n_kept * h * a * T + outside * T + recompute)) + kept_args + loss, terms
