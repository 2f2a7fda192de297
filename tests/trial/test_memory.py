"""The analytic memory model agrees with exact CPU accounting of a real training step."""

import time

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from automix.trial import memory, meter
from automix.config.layers import LayerConfig
from automix.methods import get_method
from automix.arch import arch_info, target_layer_names
from automix.trial.prune import prune_structured

VOCAB = 97


def tiny(seed=0, kv=2):
    torch.manual_seed(seed)
    return LlamaForCausalLM(LlamaConfig(vocab_size=VOCAB, hidden_size=64, intermediate_size=160,
                                        num_hidden_layers=3, num_attention_heads=4,
                                        num_key_value_heads=kv, max_position_embeddings=64))


def measure(model, method_name, ls, batch=2, seq=16, dropout=0.0):
    ids = torch.randint(0, VOCAB, (batch, seq))
    prune_structured(model, ls, calib=ids)
    method = get_method(method_name)
    prepared = method.prepare(model, ls, {"lora_dropout": dropout})
    prepared.train()
    params = [p for _, p in method.trainable_parameters(prepared)]
    opt = torch.optim.AdamW(params, lr=1e-3)
    with meter.SavedTensorMeter(prepared) as saved:
        loss = prepared(input_ids=ids, labels=ids).loss
    loss.backward()
    opt.step()
    return meter.measured_breakdown(prepared, params, opt, saved.bytes)


CASES = {
    "lora": ("lora", {"bits": 16, "rank": 4}, {}),
    "qlora-4": ("qlora", {"bits": 4, "rank": 8}, {}),
    "qlora-2-pruned": ("qlora", {"bits": 2, "rank": 4, "prune": 0.3}, {}),
    "qlora-mixed": ("qlora", {"bits": 3, "rank": 0}, {"model.layers.1.mlp.*": {"bits": 8, "rank": 6},
                                                     "model.layers.2.self_attn.o_proj": {"rank": 2},
                                                     "model.layers.0.*": {"prune": 0.5, "bits": 16}}),
}


@pytest.mark.parametrize("case", list(CASES))
def test_estimate_matches_measurement(case):
    method, default, layers = CASES[case]
    model = tiny()
    ls = LayerConfig(dict(default, group_size=32), layers).resolve(target_layer_names(model))
    est = memory.estimate(arch_info(model), ls, method, batch_size=2, seq_len=16, config=model.config)
    got = measure(model, method, ls)
    for key in ("weights", "quant_metadata", "adapters", "gradients", "optimizer_states"):
        assert getattr(est, key) == getattr(got, key), key
    assert est.accounted == pytest.approx(got.total, rel=0.10)
    assert est.activations == pytest.approx(got.activations, rel=0.10)


def test_dropout_adds_the_dropped_inputs():
    model = tiny()
    ls = LayerConfig({"bits": 4, "group_size": 32, "rank": 4}).resolve(target_layer_names(model))
    est = memory.estimate(model.config, ls, get_method("qlora").memory_profile(
        arch_info(model), ls, {"lora_dropout": 0.1}), batch_size=2, seq_len=16)
    got = measure(model, "qlora", ls, dropout=0.1)
    base = memory.estimate(model.config, ls, "qlora", batch_size=2, seq_len=16)
    assert est.activations > base.activations
    assert est.accounted == pytest.approx(got.total, rel=0.10)


def test_fewer_bits_and_pruning_predict_less_memory_and_estimate_is_fast():
    cfg = tiny().config
    names = target_layer_names(cfg)
    totals = [memory.estimate(cfg, LayerConfig({"bits": b, "rank": 4}).resolve(names), "qlora").weights
              for b in (2, 3, 4, 8, 16)]
    assert totals == sorted(totals) and len(set(totals)) == 5
    pruned = memory.estimate(cfg, LayerConfig({"bits": 2, "rank": 4, "prune": 0.3}).resolve(names), "qlora")
    assert pruned.total < memory.estimate(cfg, LayerConfig({"bits": 2, "rank": 4}).resolve(names), "qlora").total
    info = arch_info(cfg)
    ls = LayerConfig({"bits": 4, "rank": 8}).resolve(names)
    t0 = time.perf_counter()
    for _ in range(200):
        memory.estimate(info, ls, "qlora", config=cfg)
    assert (time.perf_counter() - t0) / 200 < 0.005  # the sampler calls it thousands of times


def test_padded_batches_with_gqa_match_measurement():
    model = tiny(kv=2)
    ls = LayerConfig({"bits": 4, "group_size": 32, "rank": 4}).resolve(target_layer_names(model))
    method = get_method("qlora")
    prepared = method.prepare(model, ls)
    prepared.train()
    ids = torch.randint(0, VOCAB, (3, 20))
    mask = torch.ones_like(ids)
    mask[0, 15:] = 0
    params = [p for _, p in method.trainable_parameters(prepared)]
    opt = torch.optim.AdamW(params)
    with meter.SavedTensorMeter(prepared) as saved:
        loss = prepared(input_ids=ids, attention_mask=mask, labels=ids).loss
    loss.backward()
    opt.step()
    got = meter.measured_breakdown(prepared, params, opt, saved.bytes)
    est = memory.estimate(model.config, ls, "qlora", batch_size=3, seq_len=20, padded=True)
    assert est.activations == pytest.approx(got.activations, rel=0.02)
    assert est.activations > memory.estimate(model.config, ls, "qlora", batch_size=3, seq_len=20).activations


def _family_model(name):
    from transformers import (GPT2Config, GPT2LMHeadModel, MistralConfig, MistralForCausalLM, OPTConfig,
                              OPTForCausalLM, Qwen2Config, Qwen2ForCausalLM)

    torch.manual_seed(0)
    if name == "opt":  # dropout 0.1 and ReLU MLP by default
        return OPTForCausalLM(OPTConfig(vocab_size=VOCAB, hidden_size=64, ffn_dim=128, num_hidden_layers=2,
                                        num_attention_heads=4, max_position_embeddings=64, word_embed_proj_dim=64))
    if name == "gpt2":  # Conv1D layers, packed qkv, gelu_new, attention dropout
        return GPT2LMHeadModel(GPT2Config(vocab_size=VOCAB, n_embd=64, n_layer=2, n_head=4, n_positions=64,
                                          bos_token_id=0, eos_token_id=0))
    if name == "qwen2":  # q/k/v biases
        return Qwen2ForCausalLM(Qwen2Config(vocab_size=VOCAB, hidden_size=64, intermediate_size=128,
                                            num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                                            max_position_embeddings=64))
    return MistralForCausalLM(MistralConfig(vocab_size=VOCAB, hidden_size=64, intermediate_size=128,
                                            num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                                            max_position_embeddings=64))


@pytest.mark.parametrize("family", ["opt", "gpt2", "qwen2", "mistral"])
def test_other_families_match_measurement(family):
    model = _family_model(family)
    ls = LayerConfig({"bits": 4, "group_size": 32, "rank": 4}).resolve(target_layer_names(model))
    est = memory.estimate(model.config, ls, "qlora", batch_size=2, seq_len=12)
    got = measure(model, "qlora", ls, batch=2, seq=12)
    for key in ("weights", "quant_metadata", "adapters", "gradients", "optimizer_states"):
        assert getattr(est, key) == getattr(got, key), key
    assert est.accounted == pytest.approx(got.total, rel=0.10)


def test_bfloat16_model_matches_measurement():
    torch.set_default_dtype(torch.bfloat16)  # as from_pretrained(dtype=bf16): rotary buffers stay fp32
    try:
        model = tiny()
    finally:
        torch.set_default_dtype(torch.float32)
    ls = LayerConfig({"bits": 4, "group_size": 32, "rank": 4, "prune": 0.25}).resolve(target_layer_names(model))
    est = memory.estimate(model.config, ls, "qlora", batch_size=2, seq_len=16, dtype=torch.bfloat16)
    got = measure(model, "qlora", ls)
    for key in ("weights", "quant_metadata", "adapters", "gradients", "optimizer_states"):
        assert getattr(est, key) == getattr(got, key), key
    assert est.accounted == pytest.approx(got.total, rel=0.10)
    assert est.total < memory.estimate(model.config, ls, "qlora", batch_size=2, seq_len=16).total
