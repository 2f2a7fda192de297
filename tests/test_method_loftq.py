"""LoftQ init: the adapter cancels quantization error, with the alpha/r scaling respected."""

import pytest
import torch

from automix.methods.loftq import loftq_init, lowrank_factors, weight_space_error
from automix.quant import quantize


def structured_layer(out_f: int = 96, in_f: int = 160, seed: int = 0):
    """Low-rank signal + heavy-tailed noise (the shape of real LLM weights)."""
    g = torch.Generator().manual_seed(seed)
    low = torch.randn(out_f, 8, generator=g) @ torch.randn(8, in_f, generator=g) * 0.05
    noise = torch.distributions.StudentT(3.0).sample((out_f, in_f)) * 0.02
    return low + noise


@pytest.mark.parametrize("bits", [2, 4])
def test_loftq_reduces_weight_and_output_error_vs_zero_init(bits):
    w = structured_layer()
    x = torch.randn(256, w.shape[1])
    zero = quantize(w, bits, 32)
    err_zero = (w - zero.dequantize(torch.float32)).norm() / w.norm()
    q, a, b = loftq_init(w, bits, 32, rank=8, scaling=2.0, iters=3)
    assert a.shape == (8, 160) and b.shape == (96, 8)
    assert weight_space_error(w, q, a, b, 2.0) < 0.85 * float(err_zero)
    out_zero = (x @ (w - zero.dequantize(torch.float32)).T).norm()
    out_loftq = (x @ (w - q.dequantize(torch.float32) - 2.0 * b @ a).T).norm()
    assert out_loftq < 0.85 * out_zero


def test_scaling_is_taken_into_account():
    """s*B@A must equal the residual's truncated SVD whatever alpha/r is (PEFT #1982)."""
    w = structured_layer(seed=1)
    q1, a1, b1 = loftq_init(w, 2, 32, rank=4, scaling=1.0, iters=1)
    q4, a4, b4 = loftq_init(w, 2, 32, rank=4, scaling=4.0, iters=1)
    torch.testing.assert_close(1.0 * b1 @ a1, 4.0 * b4 @ a4, atol=1e-5, rtol=1e-4)
    # and the factors shrink by sqrt(s) rather than staying at the unscaled SVD
    assert abs(float(a4.norm() / a1.norm()) - 0.5) < 1e-4


def test_more_iterations_do_not_hurt():
    w = structured_layer(seed=2)
    errs = [weight_space_error(w, *loftq_init(w, 2, 32, 8, 1.0, it), 1.0) for it in (1, 4)]
    assert errs[1] <= errs[0] + 1e-6


def test_lowrank_factors_are_balanced_and_exact():
    r = torch.randn(40, 6) @ torch.randn(6, 30)
    a, b = lowrank_factors(r, 6, 2.0)
    torch.testing.assert_close(2.0 * b @ a, r, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(a.norm(dim=1), b.norm(dim=0), atol=1e-4, rtol=1e-4)


def test_bad_arguments_raise():
    w = structured_layer()
    with pytest.raises(ValueError, match="loftq_iters"):
        loftq_init(w, 4, 32, 8, 1.0, iters=0)
    with pytest.raises(ValueError, match="rank"):
        loftq_init(w, 4, 32, 500, 1.0)


# ---------------------------------------------------------------------------------------------
# shared end-to-end checks for every method (imported by the other tests/test_method_*.py)
# ---------------------------------------------------------------------------------------------
def tiny_llama(seed: int = 0):
    """A 2-block random Llama small enough for seconds-long method tests."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=128, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)
    return LlamaForCausalLM(cfg)


def structured_llama(seed: int = 0, n_layers: int = 2):
    """tiny_llama whose linear weights are low-rank signal + heavy-tailed noise (like real LLMs),
    so that quantization hurts and a good initialisation has something to recover."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from automix.models import target_layers

    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=128, hidden_size=64, intermediate_size=128, num_hidden_layers=n_layers,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)
    model = LlamaForCausalLM(cfg)
    g = torch.Generator().manual_seed(seed)
    t = torch.distributions.StudentT(2.5)
    with torch.no_grad():
        for m in target_layers(model).values():
            o, i = m.weight.shape
            low = torch.randn(o, 4, generator=g) @ torch.randn(4, i, generator=g) / (4 * i) ** 0.5
            m.weight.copy_(low + t.sample((o, i)) * 0.3 / i ** 0.5)
    return model


def tokens(n: int, length: int, seed: int) -> torch.Tensor:
    return torch.randint(0, 128, (n, length), generator=torch.Generator().manual_seed(seed))


def prepare(name: str, bits: int = 4, rank: int = 4, settings=None, seed: int = 0):
    from automix.layer_config import LayerSettings
    from automix.methods import get_method
    from automix.models import target_layers

    model = tiny_llama(seed)
    layers = {n: LayerSettings(bits, 32, 0.0, rank) for n in target_layers(model)}
    method = get_method(name)
    torch.manual_seed(seed)
    return method, method.prepare(model, layers, settings, tokens(8, 16, seed + 1)), layers


def check_method_end_to_end(name: str, tmp_path, settings=None, steps: int = 8, lr: float = 1e-2) -> None:
    """Forward+backward, gradients only on declared params, loss goes down, bit-exact save/load."""
    method, model, _ = prepare(name, settings=settings)
    declared = dict(method.trainable_parameters(model))
    assert declared, f"{name} declares no trainable parameters"
    batch = tokens(4, 16, 7)
    opt = torch.optim.AdamW(declared.values(), lr=lr)
    losses = []
    for step in range(steps):
        out = model(input_ids=batch, labels=batch)
        assert out.logits.shape == (4, 16, 128)
        opt.zero_grad(set_to_none=True)
        out.loss.backward()
        if step == 0:
            got = {n for n, p in model.named_parameters() if p.grad is not None}
            assert got == set(declared), f"gradients on {sorted(got ^ set(declared))[:5]}"
            assert all(float(p.grad.abs().sum()) > 0 for p in declared.values() if p.numel() > 1) or name == "qst"
        opt.step()
        losses.append(float(out.loss.detach()))
    assert losses[-1] < losses[0] - 1e-3, losses
    # save / load into a freshly prepared model: bit-exact state and identical outputs
    path = method.save(model, tmp_path / f"{name}.safetensors")
    method2, model2, _ = prepare(name, settings=settings)
    method2.load(model2, path)
    s1, s2 = method.state_dict(model), method2.state_dict(model2)
    assert s1.keys() == s2.keys()
    assert all(torch.equal(s1[k], s2[k]) for k in s1)
    model.eval()
    model2.eval()
    with torch.no_grad():
        assert torch.equal(model(input_ids=batch).logits, model2(input_ids=batch).logits)


def test_loftq_method_end_to_end(tmp_path):
    check_method_end_to_end("loftq", tmp_path, settings={"options": {"loftq_iters": 2}})


def test_loftq_prepared_layers_hold_the_init():
    from automix.methods.adapters import LoRALinear

    method, model, layers = prepare("loftq", bits=2, rank=4)
    ref = tiny_llama(0)
    name = "model.layers.1.mlp.down_proj"
    lora = model.get_submodule(name)
    assert isinstance(lora, LoRALinear)
    w = ref.get_submodule(name).weight.detach()
    deq = lora.base.dequantize(torch.float32)
    q, a, b = loftq_init(w, 2, 32, 4, lora.scaling, iters=1)
    torch.testing.assert_close(deq, q.dequantize(torch.float32))
    torch.testing.assert_close(lora.delta_weight(), lora.scaling * b @ a)
    assert (w - deq - lora.delta_weight()).norm() < (w - deq).norm()


def test_unknown_method_name_lists_methods():
    from automix.methods import get_method

    with pytest.raises(ValueError, match="loftq.*quailora.*apiq.*qst.*qeft"):
        get_method("loftqq")
    with pytest.raises(ValueError, match="loftq_iters"):
        prepare("loftq", settings={"options": {"iters": 3}})


def measure_vs_predict(name: str, bits: int = 4, rank: int = 4, settings=None, batch: int = 4, seq: int = 16):
    """(measured, predicted) MemoryBreakdown of one AdamW step, as ``run_trial`` accounts it."""
    from automix import memory
    from automix.models import arch_info

    method, model, layers = prepare(name, bits=bits, rank=rank, settings=settings)
    info = arch_info(tiny_llama(0))
    params = [p for _, p in method.trainable_parameters(model)]
    opt = torch.optim.AdamW(params, lr=1e-3)
    ids = tokens(batch, seq, 11)
    with memory.SavedTensorMeter(model) as meter:
        loss = model(input_ids=ids, labels=ids).loss
    loss.backward()
    opt.step()
    measured = memory.measured_breakdown(model, params, opt, meter.bytes)
    predicted = memory.estimate(info, layers, method.memory_profile(info, layers, settings), batch_size=batch,
                                seq_len=seq, dtype="float32", device="cpu", config=model.config)
    return measured, predicted


def check_memory_prediction(name: str, settings=None) -> None:
    """Parameter, gradient and optimizer bytes exact; activations and total within 10%."""
    measured, predicted = measure_vs_predict(name, settings=settings)
    assert predicted.adapters == measured.adapters
    assert predicted.gradients == measured.gradients
    assert predicted.optimizer_states == measured.optimizer_states
    assert predicted.quant_metadata == measured.quant_metadata
    assert abs(predicted.activations - measured.activations) <= 0.1 * measured.activations, (predicted, measured)
    assert abs(predicted.total - measured.total) <= 0.1 * measured.total


def test_loftq_memory_prediction_matches_measurement():
    check_memory_prediction("loftq")
