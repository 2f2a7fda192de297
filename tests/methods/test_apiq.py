"""ApiQ: activation-preserving init beats zero-init QLoRA on the quantized model's output."""

import pytest
import torch

from automix.methods.apiq import ApiQLinear, ApiQPlan, apiq_calibrate, group_by_block
from automix.arch import target_layers
from tests.methods.helpers import (
    check_method_end_to_end,
    structured_layer,
    structured_llama,
    tiny_llama,
    tokens,
)


def logit_error(name: str, bits: int = 2, settings=None, n_layers: int = 1) -> float:
    """Relative logit error of the prepared (quantized + adapter) model vs full precision, on
    held-out tokens, for a structured tiny Llama."""
    from automix.config.layers import LayerSettings
    from automix.methods import get_method

    ref = structured_llama(0, n_layers).eval()
    test = tokens(4, 32, 99)
    with torch.no_grad():
        want = ref(test).logits
    model = structured_llama(0, n_layers)
    layers = {n: LayerSettings(bits, 32, 0.0, 8) for n in target_layers(model)}
    torch.manual_seed(0)
    prepared = get_method(name).prepare(model, layers, settings, tokens(16, 32, 1)).eval()
    with torch.no_grad():
        got = prepared(input_ids=test).logits
    return float((got - want).norm() / want.norm())


@pytest.mark.slow  # ~10-15 s of CPU, longer on a loaded machine
@pytest.mark.parametrize("name", ["apiq", "apiq-lw"])
def test_apiq_reduces_output_error_vs_zero_init(name):
    # few steps, so learning rates 10x the paper's (which assume ~2500 steps per block)
    settings = {"options": {"epochs": 6, "batch_size": 4, "lr_clip": 5e-2, "lr_lora": 5e-3}}
    zero = logit_error("qlora")
    fitted = logit_error(name, settings=settings)
    assert fitted < 0.85 * zero, (fitted, zero)


def test_apiq_linear_learns_clipping_and_bakes_what_it_trained():
    w = structured_layer()
    x = torch.randn(64, w.shape[1])
    plan = ApiQPlan(bits=2, group_size=32, rank=4, scaling=1.0)
    layer = ApiQLinear(w, None, plan)
    assert torch.all(layer.clip_max == 4.0)
    target = x @ w.T
    opt = torch.optim.AdamW(layer.clip_parameters() + layer.lora_parameters(), lr=5e-3)
    first = None
    for _ in range(60):
        opt.zero_grad()
        loss = torch.nn.functional.mse_loss(layer(x), target)
        first = first if first is not None else float(loss.detach())
        loss.backward()
        opt.step()
    assert float(loss.detach()) < 0.8 * first
    assert not torch.all(layer.clip_max == 4.0)
    with torch.no_grad():
        trained = layer(x)
    qweight, a, b = layer.bake()
    baked = x @ qweight.dequantize(torch.float32).T + plan.scaling * (x @ a.T) @ b.T
    # baking only rounds the per-group grid to fp16 metadata (flips a handful of 2-bit codes)
    assert float((baked - trained).norm() / trained.norm()) < 3e-2


def test_calibration_leaves_the_model_unchanged_and_covers_all_layers():
    model = tiny_llama(0).eval()
    layers = target_layers(model)
    plans = {n: ApiQPlan(3, 32, 4, 2.0) for n in layers}
    test = tokens(2, 12, 5)
    with torch.no_grad():
        before = model(test).logits
    res = apiq_calibrate(model, plans, tokens(4, 12, 1), epochs=1, batch_size=2)
    assert set(res) == set(layers)
    assert all(q.bits == 3 and a.shape[0] == 4 for q, a, _ in res.values())
    with torch.no_grad():
        assert torch.equal(model(test).logits, before)
    assert all(p.requires_grad for p in model.parameters())
    assert [b for b, _ in group_by_block(layers)] == ["model.layers.0", "model.layers.1"]


def test_apiq_method_end_to_end(tmp_path):
    check_method_end_to_end("apiq", tmp_path, settings={"options": {"epochs": 1}})


def test_apiq_lw_method_end_to_end(tmp_path):
    check_method_end_to_end("apiq-lw", tmp_path, settings={"options": {"epochs": 1}})


def test_apiq_needs_calibration():
    from automix.config.layers import LayerSettings
    from automix.methods import MethodError, get_method

    model = tiny_llama(0)
    layers = {n: LayerSettings(2, 32, 0.0, 4) for n in target_layers(model)}
    with pytest.raises(MethodError, match="calibration"):
        get_method("apiq").prepare(model, layers, None, None)


def test_apiq_memory_prediction_matches_measurement():
    from tests.methods.helpers import check_memory_prediction

    check_memory_prediction("apiq", settings={"options": {"epochs": 1}})


def test_blocks_left_in_full_precision_still_carry_the_quantized_stream():
    """With block 0 untouched, block 1 must be fitted on block 0's outputs, not on embeddings."""
    model = tiny_llama(0).eval()
    layers = target_layers(model)
    only_b1 = {n: ApiQPlan(3, 32, 4, 2.0) for n in layers if n.startswith("model.layers.1.")}
    seen = []
    h = model.model.layers[1].register_forward_pre_hook(lambda m, a, kw: seen.append((a[0] if a else kw["hidden_states"]).clone()), with_kwargs=True)
    calib = tokens(2, 12, 1)
    with torch.no_grad():
        model(calib)
    want = seen[0]
    seen.clear()
    apiq_calibrate(model, only_b1, calib, epochs=0, batch_size=2)
    h.remove()
    assert torch.allclose(seen[0], want, atol=1e-6)
