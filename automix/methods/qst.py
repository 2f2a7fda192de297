"""QST: quantized side tuning — train a thin side network next to a frozen quantized backbone.

QST (Zhang et al., ACL 2024): the (4-bit) backbone runs under ``torch.no_grad()``, so neither its
weights nor its activations take part in backpropagation. A side network of small decoder layers
(hidden d/r, r = 16) follows the backbone layer by layer: before side layer i, a trainable
low-rank downsampler (d -> 16 -> d/r) reads backbone layer i's hidden state and a learnable gate
sigmoid(z_i) mixes it with the side state. At the end the side state is upsampled to d and
combined with the backbone's final (normed) hidden state through a learnable weight alpha,
``h = alpha * h_backbone + (1 - alpha) * up(side)``, then the frozen LM head produces logits.
Only the side network trains. As in the paper, alpha starts at 1, so the prepared model computes
exactly the quantized backbone's logits at step 0.
"""

from __future__ import annotations

from functools import partial
from types import SimpleNamespace
from typing import Any, Mapping

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from automix.config.layers import LayerSettings
from automix.methods.base import MemoryProfile, Method, MethodSettings, freeze
from automix.arch import arch_info
from automix.methods.adapters import quantize_layers


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x: Tensor) -> Tensor:
        xf = x.float()  # one fp32 copy (x itself in fp32), saved with the rstd
        return (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)).to(x.dtype) * self.weight


def _rope(x: Tensor, base: float = 10000.0) -> Tensor:
    """Rotary position embedding on [B, H, L, hd] (hd even; odd trailing dim left unrotated)."""
    _, _, length, hd = x.shape
    half = hd // 2
    if half == 0:
        return x
    inv = 1.0 / (base ** (torch.arange(half, device=x.device, dtype=torch.float32) / half))
    ang = torch.arange(length, device=x.device, dtype=torch.float32)[:, None] * inv[None]
    cos, sin = ang.cos().to(x.dtype), ang.sin().to(x.dtype)
    x1, x2, rest = x[..., :half], x[..., half:2 * half], x[..., 2 * half:]
    return torch.cat([x1 * cos - x2 * sin, x1 * sin + x2 * cos, rest], dim=-1)


class SideBlock(nn.Module):
    """A reduced-width pre-norm decoder layer (causal self-attention with RoPE + SwiGLU MLP)."""

    def __init__(self, dim: int, n_heads: int, intermediate: int) -> None:
        super().__init__()
        if dim % n_heads:
            raise ValueError(f"side hidden size {dim} not divisible by {n_heads} heads")
        self.n_heads, self.head_dim = n_heads, dim // n_heads
        self.attn_norm = RMSNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim, bias=False)
        self.o = nn.Linear(dim, dim, bias=False)
        self.mlp_norm = RMSNorm(dim)
        self.gate_up = nn.Linear(dim, 2 * intermediate, bias=False)
        self.down = nn.Linear(intermediate, dim, bias=False)

    def forward(self, x: Tensor, attn_mask: Tensor | None) -> Tensor:
        b, length, d = x.shape
        q, k, v = self.qkv(self.attn_norm(x)).view(b, length, 3, self.n_heads, self.head_dim).unbind(2)
        q, k, v = (t.transpose(1, 2) for t in (q, k, v))
        q, k = _rope(q), _rope(k)
        if attn_mask is None:
            a = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        else:
            a = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask)
        x = x + self.o(a.transpose(1, 2).reshape(b, length, d))
        g, u = self.gate_up(self.mlp_norm(x)).chunk(2, dim=-1)
        return x + self.down(F.silu(g) * u)


class LowRankDown(nn.Module):
    """d -> rank -> d_side, no nonlinearity (QST's low-rank downsampler)."""

    def __init__(self, dim: int, rank: int, side_dim: int) -> None:
        super().__init__()
        self.a = nn.Linear(dim, rank, bias=False)
        self.b = nn.Linear(rank, side_dim, bias=False)

    def forward(self, h: Tensor) -> Tensor:
        return self.b(self.a(h))


def side_dims(hidden: int, n_heads: int, intermediate: int, reduction: int) -> tuple[int, int, int]:
    """(side hidden, side heads, side intermediate) for reduction factor r (>= 1 head)."""
    if reduction < 1:
        raise ValueError(f"qst_reduction must be >= 1, got {reduction}")
    side = max(1, hidden // reduction)
    heads = max(1, n_heads // reduction)
    while side % heads:
        heads -= 1
    return side, heads, max(1, intermediate // reduction)


def _right_padded(attention_mask: Tensor) -> bool:
    """True when every row is ones then zeros (no padding counts as right-padded)."""
    m = attention_mask.to(torch.int8)
    return bool((m[:, 1:] <= m[:, :-1]).all())


class QSTModel(nn.Module):
    """Frozen backbone (HF causal LM, usually quantized) + trainable side network.

    ``forward(input_ids, attention_mask=None, labels=None)`` returns an object with ``.loss``
    (mean next-token cross-entropy over labels != -100) and ``.logits``.
    """

    def __init__(self, backbone: nn.Module, block_prefix: str, hidden: int, n_heads: int,
                 intermediate: int, reduction: int = 16, down_rank: int = 16,
                 out_gate_init: float = 1.0) -> None:
        super().__init__()
        self.backbone = backbone
        for p in backbone.parameters():
            p.requires_grad_(False)
        self.block_prefix = block_prefix
        blocks = backbone.get_submodule(block_prefix)
        n_layers = len(blocks)
        side, heads, inter = side_dims(hidden, n_heads, intermediate, reduction)
        self.side_hidden = side
        self.reduction = reduction
        self.down_emb = LowRankDown(hidden, down_rank, side)
        self.down = nn.ModuleList(LowRankDown(hidden, down_rank, side) for _ in range(n_layers))
        self.gates = nn.Parameter(torch.zeros(n_layers))
        self.side_layers = nn.ModuleList(SideBlock(side, heads, inter) for _ in range(n_layers))
        self.side_norm = RMSNorm(side)
        self.up = nn.Linear(side, hidden, bias=False)
        self.out_gate = nn.Parameter(torch.tensor(float(out_gate_init)))
        dtype = next(backbone.parameters()).dtype
        dev = next(backbone.parameters()).device
        # the side layers take the backbone's dtype; the n + 1 gate scalars stay fp32 in every dtype
        # (in bf16, alpha = 1 could not move by a small step), and mix in the other operand's dtype
        self._side_modules().to(device=dev, dtype=dtype)
        self.gates.data = self.gates.data.to(device=dev, dtype=torch.float32)
        self.out_gate.data = self.out_gate.data.to(device=dev, dtype=torch.float32)

    @property
    def config(self) -> Any:
        return self.backbone.config

    def _side_modules(self) -> nn.ModuleList:
        return nn.ModuleList([self.down_emb, self.down, self.side_layers, self.side_norm, self.up])

    def side_parameters(self) -> list[tuple[str, nn.Parameter]]:
        return [(n, p) for n, p in self.named_parameters() if not n.startswith("backbone.")]

    @torch.no_grad()
    def _backbone_states(self, input_ids: Tensor, attention_mask: Tensor | None) -> tuple[Tensor, list[Tensor], Tensor]:
        blocks = self.backbone.get_submodule(self.block_prefix)
        states: list[Tensor] = []
        emb: list[Tensor] = []

        def pre(_m, args, kwargs):
            if not emb:
                emb.append(args[0] if args else kwargs["hidden_states"])

        def post(_m, _args, out):
            states.append(out[0] if isinstance(out, (tuple, list)) else out)

        handles = [blocks[0].register_forward_pre_hook(pre, with_kwargs=True)]
        handles += [blk.register_forward_hook(post) for blk in blocks]
        try:
            base = self.backbone.base_model
            out = base(input_ids=input_ids, attention_mask=attention_mask, use_cache=False)
        finally:
            for h in handles:
                h.remove()
        return emb[0], states, out.last_hidden_state

    def get_output_embeddings(self) -> nn.Module:
        return self.backbone.get_output_embeddings()

    def lm_hidden_states(self, input_ids: Tensor, attention_mask: Tensor | None = None) -> Tensor:
        """The final hidden state the LM head reads: ``alpha * h_backbone + (1 - alpha) * up(side)``."""
        emb, states, final = self._backbone_states(input_ids, attention_mask)
        mask = None
        # right padding needs no mask: under causal attention a valid query never sees the padded
        # keys after it (padded positions carry label -100). Only other padding builds a mask
        # (SDPA then keeps the attention probabilities: more memory than the profile counts).
        if attention_mask is not None and not _right_padded(attention_mask):
            length = input_ids.shape[1]
            causal = torch.ones(length, length, dtype=torch.bool, device=input_ids.device).tril()
            mask = causal[None, None] & attention_mask.bool()[:, None, None, :]
            mask = mask | torch.eye(length, dtype=torch.bool, device=mask.device)[None, None]
        side_dtype = self.up.weight.dtype
        if torch.is_autocast_enabled(input_ids.device.type):
            side = (lambda t: t)  # fp16 autocast: the backbone's fp16 states go in as they are
        else:
            side = (lambda t: t.to(side_dtype))
        s = self.down_emb(side(emb))
        for i, layer in enumerate(self.side_layers):
            g = torch.sigmoid(self.gates[i])
            s = layer(g * self.down[i](side(states[i])) + (1 - g) * s, mask)
        alpha = self.out_gate
        h = alpha * side(final) + (1 - alpha) * self.up(self.side_norm(s))
        return h.to(self.get_output_embeddings().weight.dtype)

    def forward(self, input_ids: Tensor, attention_mask: Tensor | None = None,
                labels: Tensor | None = None, **_: Any) -> SimpleNamespace:
        logits = self.get_output_embeddings()(self.lm_hidden_states(input_ids, attention_mask))
        loss = None
        if labels is not None:  # as transformers' causal-LM loss: labels shifted, every logit row kept
            shifted = F.pad(labels, (0, 1), value=-100)[:, 1:]
            loss = F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), shifted.reshape(-1),
                                   ignore_index=-100)
        return SimpleNamespace(loss=loss, logits=logits)


def side_param_count(hidden: int, n_layers: int, n_heads: int, intermediate: int,
                     reduction: int = 16, down_rank: int = 16) -> int:
    """Trainable parameters of the side network (what the memory model needs)."""
    side, _, inter = side_dims(hidden, n_heads, intermediate, reduction)
    down = down_rank * (hidden + side)
    block = 2 * side + 3 * side * side + side * side + 2 * inter * side + inter * side
    return (n_layers + 1) * down + n_layers + n_layers * block + side + side * hidden + 1


class QST(Method):
    """``qst``: quantize the backbone per layer bits, freeze it, train only a side network.

    Options: ``reduction`` r (side width d/r, default 16), ``downsample_rank`` (16),
    ``out_gate_init`` (initial weight alpha of the backbone state in the final mix, 1). The per-layer LoRA rank is not used.
    """

    name = "qst"
    needs_calibration = False
    option_defaults = {"reduction": 16, "downsample_rank": 16, "out_gate_init": 1.0}

    def prepare(self, model: nn.Module, layer_settings: Mapping[str, LayerSettings],
                settings: MethodSettings | Mapping[str, Any] | None = None,
                calib: Tensor | None = None) -> nn.Module:
        settings = self.check_settings(settings)
        opts = settings.options
        freeze(model)
        quantize_layers(model, layer_settings, method=settings.quantizer)
        info = arch_info(model)
        return QSTModel(model, info.block_prefix, info.hidden_size, info.n_heads, info.intermediate_size,
                        int(opts["reduction"]), int(opts["downsample_rank"]), float(opts["out_gate_init"]))

    def memory_profile(self, arch: Any, layer_settings: Mapping[str, LayerSettings],
                       settings: MethodSettings | Mapping[str, Any] | None = None) -> MemoryProfile:
        opts = self.check_settings(settings).options
        r, dr = int(opts["reduction"]), int(opts["downsample_rank"])
        n, d = arch.n_layers, arch.hidden_size
        side, _, inter = side_dims(d, arch.n_heads, arch.intermediate_size, r)
        down = [dr * d, side * dr]  # a, b of one downsampler
        block = [side, 3 * side * side, side * side, side, 2 * inter * side, inter * side]
        sizes = tuple(down * (n + 1) + block * n + [side, d * side])
        gates = (n, 1)  # the per-layer gates and the output weight alpha: fp32 in every dtype
        params = sum(sizes) + sum(gates)  # = side_param_count(...)
        return MemoryProfile(quantize_base=True, adapter_params=params, trainable_params=params,
                             trainable_tensors=len(sizes) + len(gates), trainable_sizes=sizes + gates,
                             fp32_sizes=gates, backprop_through_backbone=False,
                             extra_activations=partial(side_activation_bytes, d, n, arch.n_heads,
                                                       arch.intermediate_size, r, dr),
                             extra_forward=partial(side_forward_bytes, d, n))


def side_forward_bytes(hidden: int, n_layers: int, tokens: int, elem: int = 4) -> int:
    """What QST's forward holds beyond the backbone's when nothing trains (an evaluation): the
    embedding output and every block's hidden state, which the side network reads in turn, and
    the final hidden state."""
    return (n_layers + 2) * tokens * hidden * elem


def side_activation_bytes(hidden: int, n_layers: int, n_heads: int, intermediate: int, reduction: int,
                          down_rank: int, batch_size: int, seq_len: int, elem: int = 4,
                          autocast: bool = False) -> int:
    """Bytes the side network saves for backward in one (micro-)batch (the LM head/loss excluded).

    ``elem``: bytes of an activation element (the model dtype's; 2 under fp16 autocast, where the
    side network's weights are fp32 but its linears compute in fp16). Counted from what autograd
    keeps (CPU, ``saved_tensors_hooks``), per token in ``elem`` bytes: each downsampler its
    backbone input (d) and rank-r middle; each gate mix the two mixed states; per side block each
    RMSNorm's pre-scale output and output (the next linear's input), q and k after RoPE, the packed
    qkv (v is a view), the attention output, the o input when there is more than one head (with
    one the merged heads are a view), the SwiGLU gate/up output, SiLU output and down input; the
    output mix's backbone state and upsampled side state (2*d). Per token in fp32: each RMSNorm's
    fp32 input copy (the input itself in fp32) and rstd, attention's log-sum-exp per head. Per
    sequence: the cos/sin tables of each RoPE call (q and k of every block). Fixed: the 2n + 1
    gate scalars (fp32) and, under autocast, the fp16 casts of the weights whose input needs a
    gradient (every side-block linear, each downsampler's second factor, the upsampler).
    """
    n = n_layers
    side, heads, inter = side_dims(hidden, n_heads, intermediate, reduction)
    down = (n + 1) * (hidden + down_rank)
    mix = n * 2 * side
    block = n * (2 * 2 * side + 2 * side + 3 * side + side + (side if heads > 1 else 0) + 4 * inter)
    final = 2 * side + 2 * hidden
    fp32 = (2 * n + 1) * (side + 1) + n * heads
    rope = n * 2 * 2 * seq_len * ((side // heads) // 2)
    fixed = 4 * (2 * n + 1)
    if autocast:
        fixed += 2 * (n * (4 * side * side + 3 * inter * side) + (n + 1) * down_rank * side + side * hidden)
    tokens = batch_size * seq_len
    return tokens * (elem * (down + mix + block + final) + 4 * fp32) + elem * rope + fixed


__all__ = ["QST", "side_activation_bytes", "side_forward_bytes", "QSTModel", "SideBlock", "LowRankDown", "side_dims", "side_param_count"]
