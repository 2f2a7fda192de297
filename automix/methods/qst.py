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
        var = x.float().pow(2).mean(-1, keepdim=True)
        return (x.float() * torch.rsqrt(var + self.eps)).to(x.dtype) * self.weight


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
        self._side_modules().to(device=dev, dtype=torch.float32 if dtype == torch.float32 else dtype)

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

    def forward(self, input_ids: Tensor, attention_mask: Tensor | None = None,
                labels: Tensor | None = None, **_: Any) -> SimpleNamespace:
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
        s = self.down_emb(emb.to(side_dtype))
        for i, layer in enumerate(self.side_layers):
            g = torch.sigmoid(self.gates[i])
            s = layer(g * self.down[i](states[i].to(side_dtype)) + (1 - g) * s, mask)
        alpha = self.out_gate
        h = alpha * final.to(side_dtype) + (1 - alpha) * self.up(self.side_norm(s))
        head = self.backbone.get_output_embeddings()
        logits = head(h.to(head.weight.dtype))
        loss = None
        if labels is not None:
            loss = F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]).float(),
                                   labels[:, 1:].reshape(-1), ignore_index=-100)
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
        quantize_layers(model, layer_settings, method=settings.quant_method)
        info = arch_info(model)
        return QSTModel(model, info.block_prefix, info.hidden_size, info.n_heads, info.intermediate_size,
                        int(opts["reduction"]), int(opts["downsample_rank"]), float(opts["out_gate_init"]))

    def memory_profile(self, arch: Any, layer_settings: Mapping[str, LayerSettings],
                       settings: MethodSettings | Mapping[str, Any] | None = None) -> MemoryProfile:
        opts = self.check_settings(settings).options
        r, dr = int(opts["reduction"]), int(opts["downsample_rank"])
        n = arch.n_layers
        params = side_param_count(arch.hidden_size, n, arch.n_heads, arch.intermediate_size, r, dr)
        tensors = 2 * (n + 1) + 6 * n + 1 + 1 + 1 + 1  # downsamplers, blocks, gates, norm, up, out gate
        return MemoryProfile(quantize_base=True, adapter_params=params, trainable_params=params,
                             trainable_tensors=tensors, backprop_through_backbone=False,
                             extra_activation_bytes_per_token=side_activation_bytes_per_token(
                                 arch.hidden_size, n, arch.n_heads, arch.intermediate_size, r, dr))


def side_activation_bytes_per_token(hidden: int, n_layers: int, n_heads: int, intermediate: int,
                                    reduction: int = 16, down_rank: int = 16, elem: int = 4) -> float:
    """Bytes per token the side network saves for backward (the LM head/loss excluded).

    Counted from what autograd keeps: each downsampler its backbone input (d) and rank-r middle;
    each gate mix the two mixed states; each side block 3*ds+1 per RMSNorm (input, rstd, pre-scale
    output, output), q and k after RoPE, the packed qkv (v is a view), the attention output and
    log-sum-exp, the o input, the SwiGLU gate/up output, SiLU output and down input; the final
    side norm and the two mixed states of the output combination (2*d).
    """
    side, heads, inter = side_dims(hidden, n_heads, intermediate, reduction)
    down = (n_layers + 1) * (hidden + down_rank)
    mix = n_layers * 2 * side
    block = n_layers * (2 * (3 * side + 1) + 7 * side + heads + 4 * inter)
    final = 2 * hidden + 3 * side + 1
    return float(elem * (down + mix + block + final))


__all__ = ["QST", "side_activation_bytes_per_token", "QSTModel", "SideBlock", "LowRankDown", "side_dims", "side_param_count"]
