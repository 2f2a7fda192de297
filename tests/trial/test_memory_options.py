"""The memory model equals the CPU accounting for every training set-up: gradient checkpointing,
pure fp32 / bf16, fp16 autocast with fp32 trainable weights, each optimizer, micro-batches."""

import importlib.util

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from automix.arch import arch_info, target_layer_names
from automix.config.layers import LayerConfig
from automix.methods import get_method
from automix.trial import checkpoint, memory, meter
from automix.trial.prune import prune_structured
from automix.trial.run import grad_scaler, make_optimizer, train_step
from automix.trial.spec import TrialFailure, TrialSpec

VOCAB = 97
HAS_BNB = importlib.util.find_spec("bitsandbytes") is not None
EXACT = ("weights", "quant_metadata", "adapters", "gradients", "optimizer_states")


def tiny(dtype=torch.float32, seed=0):
    torch.set_default_dtype(dtype)  # as from_pretrained(dtype=...): rotary buffers stay fp32
    try:
        torch.manual_seed(seed)
        return LlamaForCausalLM(LlamaConfig(vocab_size=VOCAB, hidden_size=64, intermediate_size=160,
                                            num_hidden_layers=3, num_attention_heads=4, num_key_value_heads=2,
                                            max_position_embeddings=64, use_cache=False))
    finally:
        torch.set_default_dtype(torch.float32)


def one_step(model, method_name, ls, *, dtype="float32", ckpt=False, optimizer="adamw", accum=1,
             batch=4, seq=16, padded=False, dropout=0.0, options=None):
    """Prepare like run_trial does, run one optimizer step with its train_step, account memory."""
    settings = {"lora_dropout": dropout, "calib_samples": 4, "options": options or {}}
    ids = torch.randint(0, VOCAB, (batch, seq), generator=torch.Generator().manual_seed(1))
    if any(s.prune > 0 for s in ls.values()):
        prune_structured(model, ls, calib=ids)
    method = get_method(method_name)
    calib = ids if method.needs_calibration else None
    prepared = method.prepare(model, ls, settings, calib)
    params = [p for _, p in method.trainable_parameters(prepared)]
    if memory.mixed_precision(dtype):
        for p in params:
            p.data = p.data.float()
    if ckpt:
        assert checkpoint.enable(prepared) == 3
    prepared.train()
    spec = TrialSpec(dtype=dtype, optimizer=optimizer, grad_accum_steps=accum, batch_size=batch,
                     gradient_checkpointing=ckpt)
    opt = make_optimizer(optimizer, params, 1e-3, 0.0)
    data = {"input_ids": ids, "labels": ids.clone()}
    if padded:
        mask = torch.ones_like(ids)
        mask[0, seq - 5:] = 0
        data["attention_mask"] = mask
    meters = []
    loss = train_step(prepared, data, params, opt, grad_scaler(spec, "cpu"), spec, meters)
    assert len(meters) == accum
    got = meter.measured_breakdown(prepared, params, opt, max(m.total for m in meters))
    est = memory.estimate(model.config, ls, method.memory_profile(arch_info(model.config), ls, settings),
                          batch_size=batch, seq_len=seq, dtype=dtype, padded=padded, gradient_checkpointing=ckpt,
                          optimizer=optimizer, grad_accum_steps=accum)
    return est, got, loss


def check(est, got, rel=0.02):
    for key in EXACT:
        assert getattr(est, key) == getattr(got, key), (key, getattr(est, key), getattr(got, key))
    assert est.activations == pytest.approx(got.activations, rel=rel), (est.activations, got.activations)
    assert est.accounted == pytest.approx(got.total, rel=rel)


def layers(model, default, overrides=None):
    return LayerConfig(dict(default, group_size=32), overrides or {}).resolve(target_layer_names(model))


MIXED = {"model.layers.1.mlp.*": {"bits": 8, "rank": 6}, "model.layers.2.self_attn.o_proj": {"rank": 2},
         "model.layers.0.*": {"prune": 0.5, "bits": 16}}


@pytest.mark.parametrize("dtype", ["float32", "bfloat16", "float16"])
@pytest.mark.parametrize("ckpt", [False, True])
@pytest.mark.parametrize("method,default,over", [
    ("qlora", {"bits": 4, "rank": 8}, None),
    ("lora", {"bits": 16, "rank": 4}, None),
    ("qlora", {"bits": 3, "rank": 0}, MIXED),
    ("qeft", {"bits": 4, "rank": 1}, None),
    ("qst", {"bits": 4, "rank": 4}, None),
], ids=["qlora", "lora", "qlora-mixed", "qeft", "qst"])
def test_every_method_dtype_and_checkpointing_matches(method, default, over, ckpt, dtype):
    torch_dtype = getattr(torch, dtype)
    model = tiny(torch_dtype)
    est, got, loss = one_step(model, method, layers(model, default, over), dtype=dtype, ckpt=ckpt)
    assert loss == loss  # finite
    check(est, got)


@pytest.mark.parametrize("dtype", ["float32", "bfloat16", "float16"])
@pytest.mark.parametrize("reduction", [4, 2, 1])
def test_qst_side_network_is_exact(reduction, dtype):
    """Every byte of QST's side network, in each dtype: 1, 2 and 4 side heads (with more than one
    the o input is a copy of the attention output, not a view), fp32 gates next to bf16 layers,
    fp16 weight casts under autocast, RoPE tables per sequence."""
    model = tiny(getattr(torch, dtype))
    est, got, _ = one_step(model, "qst", layers(model, {"bits": 4, "rank": 0}), dtype=dtype, batch=3, seq=12,
                           options={"reduction": reduction, "downsample_rank": 8})
    assert {**est.to_dict(), "transient": 0, "total": est.accounted} == got.to_dict()


def test_checkpointing_saves_memory_and_keeps_gradients_exact():
    grads = {}
    totals = {}
    for ckpt in (False, True):
        model = tiny()
        ls = layers(model, {"bits": 4, "rank": 4})
        est, got, _ = one_step(model, "qlora", ls, ckpt=ckpt, dropout=0.1)
        check(est, got)
        totals[ckpt] = got.activations
        grads[ckpt] = [p.grad.clone() for n, p in model.named_parameters() if p.requires_grad and p.grad is not None]
    assert totals[True] < 0.6 * totals[False]
    assert len(grads[True]) == len(grads[False]) > 0
    for a, b in zip(grads[True], grads[False]):
        torch.testing.assert_close(a, b)  # recomputation (dropout RNG included) reproduces the step


@pytest.mark.parametrize("ckpt", [False, True])
def test_padded_batches_match(ckpt):
    model = tiny()
    est, got, _ = one_step(model, "qlora", layers(model, {"bits": 4, "rank": 4}), ckpt=ckpt, padded=True)
    check(est, got)


@pytest.mark.parametrize("optimizer", ["adamw", "sgd", "adamw-8bit", "paged-adamw", "paged-adamw-8bit"])
def test_optimizer_state_bytes_match(optimizer):
    if optimizer != "adamw" and optimizer != "sgd" and not HAS_BNB:
        pytest.skip("bitsandbytes is not installed")
    model = tiny()
    # rank 32 on a 64-wide model: A and B have 2048 / 2048-5120 elements, around bnb's 4096 threshold
    ls = layers(model, {"bits": 4, "rank": 32})
    est, got, _ = one_step(model, "qlora", ls, optimizer=optimizer)
    check(est, got)


def test_optimizer_state_formula():
    sizes = [100, 5000]
    assert memory.optimizer_state_bytes("adamw", sizes, 4) == 2 * 5100 * 4 + 8
    assert memory.optimizer_state_bytes("adamw", sizes, 2, device="cuda") == 2 * 5100 * 2
    assert memory.optimizer_state_bytes("sgd", sizes, 2) == 5100 * 2
    assert memory.optimizer_state_bytes("paged-adamw", sizes, 2) == 2 * 5100 * 4
    assert memory.optimizer_state_bytes("adamw-8bit", sizes, 2) == 800 + 2 * 5000 + 2 * 4 * 20 + 2048
    with pytest.raises(ValueError, match="optimizer must be one of"):
        memory.optimizer_state_bytes("adam", sizes, 4)


@pytest.mark.parametrize("ckpt", [False, True])
def test_accumulation_measures_the_micro_batch(ckpt):
    model = tiny()
    ls = layers(model, {"bits": 4, "rank": 4})
    est, got, _ = one_step(model, "qlora", ls, ckpt=ckpt, accum=2, batch=4)
    check(est, got)
    full = memory.estimate(model.config, ls, "qlora", batch_size=4, seq_len=16, gradient_checkpointing=ckpt)
    half = memory.estimate(model.config, ls, "qlora", batch_size=2, seq_len=16, gradient_checkpointing=ckpt)
    assert est.activations == half.activations < full.activations
    with pytest.raises(ValueError, match=r"grad_accum_steps \(3\) must divide batch_size \(4\)"):
        memory.estimate(model.config, ls, "qlora", batch_size=4, seq_len=16, grad_accum_steps=3)


def _family(name):
    from transformers import GPT2Config, GPT2LMHeadModel, OPTConfig, OPTForCausalLM, Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(0)
    if name == "opt":
        return OPTForCausalLM(OPTConfig(vocab_size=VOCAB, hidden_size=64, ffn_dim=128, num_hidden_layers=3,
                                        num_attention_heads=4, max_position_embeddings=64, word_embed_proj_dim=64))
    if name == "gpt2":
        return GPT2LMHeadModel(GPT2Config(vocab_size=VOCAB, n_embd=64, n_layer=3, n_head=4, n_positions=64,
                                          bos_token_id=0, eos_token_id=0))
    return Qwen2ForCausalLM(Qwen2Config(vocab_size=VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=3,
                                        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64))


@pytest.mark.parametrize("family", ["opt", "gpt2", "qwen2"])
def test_checkpointing_matches_on_other_families(family):
    model = _family(family)
    est, got, _ = one_step(model, "qlora", layers(model, {"bits": 4, "rank": 4}), ckpt=True, seq=12)
    check(est, got)


def test_bitsandbytes_missing_is_a_clear_failure(monkeypatch):
    import builtins

    real = builtins.__import__

    def no_bnb(name, *a, **k):
        if name == "bitsandbytes":
            raise ImportError("No module named 'bitsandbytes'")
        return real(name, *a, **k)

    monkeypatch.setattr(builtins, "__import__", no_bnb)
    with pytest.raises(TrialFailure, match=r"adamw-8bit.*needs bitsandbytes.*automix\[bnb\]"):
        make_optimizer("adamw-8bit", [torch.nn.Parameter(torch.zeros(3))], 1e-3, 0.0)


def test_checkpointing_is_a_no_op_without_grad():
    model = tiny()
    checkpoint.enable(model)
    ids = torch.randint(0, VOCAB, (2, 8))
    with torch.no_grad():
        a = model(input_ids=ids).logits
    model2 = tiny()
    with torch.no_grad():
        b = model2(input_ids=ids).logits
    torch.testing.assert_close(a, b)
