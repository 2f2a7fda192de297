"""The chunked loss and scores: transformers' values and gradients, without the whole logits."""

from __future__ import annotations

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from automix.trial import loss
from automix.trial.allocator import AllocatorMeter
from automix.trial.data import LMTask

VOCAB = 4096


def tiny(seed: int = 0) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    return LlamaForCausalLM(LlamaConfig(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64))


def batch(rows: int = 3, length: int = 16, pad: int = 4) -> dict[str, torch.Tensor]:
    ids = torch.randint(0, VOCAB, (rows, length), generator=torch.Generator().manual_seed(1))
    mask = torch.ones_like(ids)
    mask[0, length - pad:] = 0
    labels = ids.masked_fill(mask == 0, -100)
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


@pytest.mark.parametrize("chunk_bytes", [None, 4 * VOCAB * 5])  # all tokens in one chunk, or 5 at a time
def test_the_chunked_loss_is_transformers_loss_with_its_gradients(chunk_bytes):
    model, b = tiny(), batch()
    model.lm_head.weight.requires_grad_(True)  # (a trainable head gets its gradient too)
    want = model(**b).loss
    want.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()
    got = loss.causal_lm_loss(model, b, chunk_bytes)
    got.backward()
    assert got.item() == pytest.approx(want.item(), rel=1e-6)
    for n, p in model.named_parameters():
        assert torch.allclose(p.grad, grads[n], rtol=1e-4, atol=1e-7), n


def test_the_chunked_loss_keeps_the_hidden_states_not_the_logits(monkeypatch):
    model, b = tiny(), batch(rows=4, length=32, pad=0)
    for name, p in model.named_parameters():  # only the final norm trains: gradients are tiny
        p.requires_grad_(name == "model.norm.weight")
    monkeypatch.setattr(loss, "CHUNK_BYTES", 4 * VOCAB * 8)  # 8 tokens of fp32 logits at a time
    logits = 4 * 32 * VOCAB * 4
    meter = AllocatorMeter("cpu")
    with meter, meter.phase("step"):
        loss.causal_lm_loss(model, b).backward()
    with AllocatorMeter("cpu") as whole, whole.phase("step"):
        model(**b).loss.backward()
    assert whole.peaks["step"] > 2 * logits  # transformers' loss: the logits and their log-softmax
    assert meter.peaks["step"] < logits / 2


def test_held_out_perplexity_is_scored_a_chunk_of_logits_at_a_time(monkeypatch):
    from automix.trial.models import load_tokenizer

    model, tokenizer = tiny(), load_tokenizer("builtin:tiny")  # (its ids are all below VOCAB)
    task = LMTask()
    full = task.evaluate(model, tokenizer, n_rows=8, batch_size=8)
    monkeypatch.setattr(loss, "CHUNK_BYTES", 4 * VOCAB * 16)  # 16 tokens at a time
    meter = AllocatorMeter("cpu")
    with meter, meter.phase("evaluate"):
        chunked = task.evaluate(model, tokenizer, n_rows=8, batch_size=8)
    assert chunked["tokens"] == full["tokens"]
    assert chunked["perplexity"] == pytest.approx(full["perplexity"], rel=1e-6)
    logits = 8 * task.eval_seq_len * VOCAB * 4
    assert meter.peaks["evaluate"] < logits / 4  # the logits of 8 rows never exist at once


def test_continuation_scores_read_only_their_positions():
    model, b = tiny(), batch(rows=2, length=10, pad=0)
    pos = torch.tensor([[3, 4], [7, 8]])
    tokens = torch.tensor([[5, 6], [7, 8]])
    got = loss.continuation_logprobs(model, b["input_ids"], b["attention_mask"], pos, tokens)
    with torch.no_grad():
        logp = torch.log_softmax(model(input_ids=b["input_ids"]).logits.float(), -1)
    want = torch.stack([logp[r, pos[r], tokens[r]] for r in range(2)])
    assert torch.allclose(got, want, atol=1e-5)


def test_a_peft_model_is_scored_through_the_model_it_wraps():
    """A PEFT model's backbone is the wrapped model's (its LoRA layers injected there): its
    chunked scores and loss are those of its own logits (``PeftModel.base_model`` is PEFT's
    LoraModel, whose forward gives logits, not hidden states)."""
    from peft import LoraConfig, get_peft_model

    model, b = tiny(), batch()
    peft = get_peft_model(model, LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False))
    with torch.no_grad():
        want = peft(input_ids=b["input_ids"], attention_mask=b["attention_mask"], labels=b["labels"]).loss
    nll, n = loss.token_nll(peft, b["input_ids"], b["attention_mask"], b["labels"])
    assert nll / n == pytest.approx(want.item(), rel=1e-5)
    assert loss.causal_lm_loss(peft, b).item() == pytest.approx(want.item(), rel=1e-5)
