"""QuAILoRA init: calibrated ALS beats LoftQ on the activation-weighted error."""

import pytest
import torch

from transformers import LlamaConfig, LlamaForCausalLM

from automix.methods.loftq import loftq_init
from automix.methods.quailora import calibrated_error, collect_input_hessians, quailora_init, quailora_refine
from automix.arch import target_layers
from automix.quant import quantize
from tests.methods.helpers import check_memory_prediction, correlated_inputs, structured_layer


@pytest.mark.parametrize("bits", [2, 4])
def test_quailora_reduces_output_error_vs_zero_init_and_loftq(bits):
    w, x = structured_layer(), correlated_inputs()
    h = x.T @ x
    zero = quantize(w, bits, 32)
    e0 = w - zero.dequantize(torch.float32)
    out_zero = (x @ e0.T).norm()
    q, a, b = quailora_init(w, h, bits, 32, rank=8, scaling=2.0, iters=10)
    torch.testing.assert_close(q.dequantize(torch.float32), zero.dequantize(torch.float32))
    out_q = (x @ (e0 - 2.0 * b @ a).T).norm()
    assert out_q < 0.5 * out_zero
    _, la, lb = loftq_init(w, bits, 32, rank=8, scaling=2.0, iters=1)
    assert calibrated_error(e0, a, b, h, 2.0) < 0.5 * calibrated_error(e0, la, lb, h, 2.0)


def test_als_decreases_the_objective_monotonically():
    w, x = structured_layer(seed=3), correlated_inputs(seed=3)
    h = x.T @ x
    q, a, b = loftq_init(w, 3, 32, 6, 1.0)
    e = w - q.dequantize(torch.float32)
    errs = [calibrated_error(e, a, b, h, 1.0)]
    for it in (1, 2, 5, 20):
        a2, b2 = quailora_refine(e, a, b, h, 1.0, iters=it, damp=0.0)
        errs.append(calibrated_error(e, a2, b2, h, 1.0))
    assert all(e1 <= e0 * (1 + 1e-6) for e0, e1 in zip(errs, errs[1:]))
    assert errs[-1] < 0.5 * errs[0]


def test_hessians_are_shared_by_layers_reading_the_same_input():
    cfg = LlamaConfig(vocab_size=100, hidden_size=32, intermediate_size=48, num_hidden_layers=1,
                      num_attention_heads=2, num_key_value_heads=2)
    model = LlamaForCausalLM(cfg)
    layers = target_layers(model)
    calib = torch.randint(0, 100, (5, 12))
    hess, groups = collect_input_hessians(model, layers, calib, batch_size=2)
    p = "model.layers.0."
    assert [p + "self_attn.q_proj", p + "self_attn.k_proj", p + "self_attn.v_proj"] in groups
    assert [p + "mlp.gate_proj", p + "mlp.up_proj"] in groups
    assert hess[p + "self_attn.q_proj"] is hess[p + "self_attn.v_proj"]
    # the sum over all 60 tokens of x x^T, checked against a direct capture
    seen = []
    h = layers[p + "mlp.down_proj"].register_forward_pre_hook(lambda m, a: seen.append(a[0].reshape(-1, 48)))
    with torch.no_grad():
        model(calib)
    h.remove()
    x = seen[0]
    torch.testing.assert_close(hess[p + "mlp.down_proj"], x.T @ x, atol=1e-3, rtol=1e-4)


def test_bad_inputs_raise():
    w = structured_layer()
    with pytest.raises(ValueError, match="hessian"):
        quailora_refine(w, torch.zeros(4, 160), torch.zeros(96, 4), torch.eye(10))
    cfg = LlamaConfig(vocab_size=50, hidden_size=16, intermediate_size=16, num_hidden_layers=1,
                      num_attention_heads=2)
    model = LlamaForCausalLM(cfg)
    with pytest.raises(ValueError, match="calibration"):
        collect_input_hessians(model, target_layers(model), torch.zeros(0, 4, dtype=torch.long))


def test_quailora_memory_prediction_matches_measurement():
    from tests.methods.helpers import check_memory_prediction

    check_memory_prediction("quailora")
