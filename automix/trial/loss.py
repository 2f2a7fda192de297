"""The language-model loss and the held-out scores, without batch x tokens x vocabulary logits.

A causal LM's logits are the largest tensors of a small model's step: 4 rows x 128 tokens x
49,152 words of SmolLM2 are 100 MB in fp32, and the loss keeps its log-softmax for backward, its
gradient another copy. Careful fine-tuning code computes the loss from the final hidden states
in chunks of tokens instead (Liger's fused linear cross-entropy, torchtune's chunked loss);
:func:`causal_lm_loss` does: the backbone's last hidden states (:func:`lm_hidden`), then the LM
head and the cross-entropy chunk by chunk, at most :data:`CHUNK_BYTES` of fp32 logits at a time,
in forward and again in backward (:class:`ChunkedCrossEntropy` keeps only the hidden states and
the targets). The value is the token mean over the labels that are not -100, shifted by one
position as transformers' causal-LM loss is; it equals that loss up to the order of
floating-point additions.

Evaluation scores the same way (:func:`token_nll`, :func:`continuation_logprobs`): logits of one
chunk at a time, and only at the positions a score reads.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from automix.methods.base import backbone_hidden, causal_lm, has_backbone
from automix.trial.memory import CHUNK_BYTES, chunk_tokens

__all__ = ["CHUNK_BYTES", "ChunkedCrossEntropy", "causal_lm_loss", "chunk_tokens", "continuation_logprobs",
           "lm_hidden", "shifted_targets", "token_nll"]


def lm_hidden(model: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None
              ) -> tuple[torch.Tensor, nn.Module]:
    """(last hidden states ``[batch, tokens, hidden]``, the LM head) of a causal LM: a Hugging
    Face model's backbone without its head (no KV cache), or a method's wrapper that defines
    ``lm_hidden_states`` (QST's side network)."""
    own = getattr(model, "lm_hidden_states", None)
    if own is not None:
        return own(input_ids, attention_mask), model.get_output_embeddings()
    return backbone_hidden(model, input_ids, attention_mask), causal_lm(model).get_output_embeddings()


def _logits_only(model: nn.Module) -> bool:
    """A model that only gives logits (no backbone to run without its head): scored whole."""
    if getattr(model, "lm_hidden_states", None) is not None:
        return False
    return not has_backbone(model)


def _logits(model: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor | None) -> torch.Tensor:
    out = model(input_ids=input_ids, attention_mask=attention_mask)
    return (out.logits if hasattr(out, "logits") else out[0]).float()


def shifted_targets(labels: torch.Tensor) -> torch.Tensor:
    """The next token's label at each position, -100 after the last (transformers' shift)."""
    return F.pad(labels, (0, 1), value=-100)[..., 1:]


class ChunkedCrossEntropy(torch.autograd.Function):
    """Sum over tokens of ``cross_entropy(head(hidden), targets)`` (targets -100 skipped), the
    head applied to ``chunk`` tokens at a time; backward recomputes each chunk's logits. Saves
    the hidden states and the targets only (and the head's own parameters, which are the
    model's)."""

    @staticmethod
    def forward(ctx: Any, hidden: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                targets: torch.Tensor, chunk: int) -> torch.Tensor:
        dev = hidden.device.type
        ctx.autocast = (torch.is_autocast_enabled(dev), torch.get_autocast_dtype(dev))
        ctx.chunk = chunk
        total = torch.zeros((), dtype=torch.float32, device=hidden.device)
        for i in range(0, hidden.shape[0], chunk):
            logits = F.linear(hidden[i:i + chunk], weight, bias).float()
            total += F.cross_entropy(logits, targets[i:i + chunk], ignore_index=-100, reduction="sum")
            del logits
        ctx.save_for_backward(hidden, weight, bias, targets)
        return total

    @staticmethod
    def backward(ctx: Any, grad_total: torch.Tensor) -> tuple[Any, ...]:
        hidden, weight, bias, targets = ctx.saved_tensors
        need_h, need_w, need_b = ctx.needs_input_grad[:3]
        grad_h = torch.empty_like(hidden) if need_h else None
        grad_w = torch.zeros_like(weight, dtype=torch.float32) if need_w else None
        grad_b = torch.zeros_like(bias, dtype=torch.float32) if need_b and bias is not None else None
        enabled, dtype = ctx.autocast
        with torch.autocast(hidden.device.type, dtype=dtype, enabled=enabled):
            for i in range(0, hidden.shape[0], ctx.chunk):
                h, t = hidden[i:i + ctx.chunk], targets[i:i + ctx.chunk]
                g = F.linear(h, weight, bias).float().softmax(-1)  # d(sum CE)/d logits = p - onehot
                valid = (t != -100).nonzero().flatten()
                g[valid, t[valid]] -= 1.0
                g[t == -100] = 0.0
                g *= grad_total
                if grad_h is not None:
                    grad_h[i:i + ctx.chunk] = F.linear(g.to(weight.dtype), weight.t())
                if grad_w is not None:
                    grad_w += g.t() @ h.float()
                if grad_b is not None:
                    grad_b += g.sum(0)
                del g
        return (grad_h, None if grad_w is None else grad_w.to(weight.dtype),
                None if grad_b is None else grad_b.to(bias.dtype), None, None)


def causal_lm_loss(model: nn.Module, batch: dict[str, torch.Tensor], chunk_bytes: int | None = None) -> torch.Tensor:
    """The mean next-token cross-entropy of ``batch`` (``input_ids``, ``labels``, optional
    ``attention_mask``), as ``model(**batch).loss`` gives it, in chunks (module docstring)."""
    hidden, head = lm_hidden(model, batch["input_ids"], batch.get("attention_mask"))
    targets = shifted_targets(batch["labels"]).reshape(-1)
    flat = hidden.reshape(-1, hidden.shape[-1])
    chunk = chunk_tokens(head.weight.shape[0], flat.shape[0], chunk_bytes or CHUNK_BYTES)
    total = ChunkedCrossEntropy.apply(flat, head.weight, getattr(head, "bias", None), targets, chunk)
    return total / (targets != -100).sum()


@torch.no_grad()
def token_nll(model: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor | None,
              labels: torch.Tensor, chunk_bytes: int | None = None) -> tuple[float, int]:
    """(summed next-token negative log-likelihood in fp64, number of scored tokens) of a batch,
    the logits made a chunk of tokens at a time (a model that only gives logits: all at once)."""
    if _logits_only(model):
        flat = _logits(model, input_ids, attention_mask)
        head = None
    else:
        hidden, head = lm_hidden(model, input_ids, attention_mask)
        flat = hidden
    targets = shifted_targets(labels.to(flat.device)).reshape(-1)
    flat = flat.reshape(-1, flat.shape[-1])
    chunk = chunk_tokens(head.weight.shape[0] if head is not None else flat.shape[1], flat.shape[0],
                         chunk_bytes or CHUNK_BYTES)
    nll = 0.0
    for i in range(0, flat.shape[0], chunk):
        logits = head(flat[i:i + chunk]).float() if head is not None else flat[i:i + chunk]
        nll += float(F.cross_entropy(logits, targets[i:i + chunk], ignore_index=-100, reduction="sum"))
    return nll, int((targets != -100).sum())


@torch.no_grad()
def continuation_logprobs(model: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor | None,
                          positions: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """``log p(tokens[r, j] | prefix)`` read at ``positions[r, j]`` of each row (the logits of
    those positions only; a model that only gives logits: all of them): ``[rows, j]`` fp32."""
    if _logits_only(model):
        hidden, head = _logits(model, input_ids, attention_mask), None
    else:
        hidden, head = lm_hidden(model, input_ids, attention_mask)
    rows = torch.arange(hidden.shape[0], device=hidden.device)[:, None].expand_as(positions)
    picked = hidden[rows.reshape(-1), positions.reshape(-1).to(hidden.device)]
    logp = torch.log_softmax((head(picked) if head is not None else picked).float(), dim=-1)
    return logp.gather(1, tokens.reshape(-1, 1).to(logp.device)).view(positions.shape)
