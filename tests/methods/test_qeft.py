"""QEFT: weak columns from diag(X^T X), GPTQ with compensation, only the weak block trains."""

import pytest
import torch

from automix.methods.qeft import QEFTLinear, gptq_quantize_with_weak, select_weak_columns, weak_column_count
from automix.quant import quantize
from tests.methods.helpers import check_method_end_to_end, prepare, tokens
from tests.methods.helpers import correlated_inputs, structured_layer


def test_weak_columns_are_the_outlier_channels():
    x = correlated_inputs()
    rest, weak = select_weak_columns(x.T @ x, 3)
    assert weak.tolist() == [3, 50, 77]
    assert sorted(rest.tolist() + weak.tolist()) == list(range(160))


@pytest.mark.parametrize("bits", [2, 4])
def test_gptq_with_weak_columns_beats_round_to_nearest(bits):
    w, x = structured_layer(), correlated_inputs()
    h = x.T @ x
    _, weak = select_weak_columns(h, weak_column_count(160))
    q, weak_w, rest = gptq_quantize_with_weak(w, h, weak, bits, 32, block_size=48)
    layer = QEFTLinear(q, weak_w, rest, weak, None)
    with torch.no_grad():
        y = layer(x)
        torch.testing.assert_close(y, x @ layer.dense_weight().T, atol=1e-3, rtol=1e-4)
    rtn = (x @ (w - quantize(w, bits, 32).dequantize(torch.float32)).T).norm()
    assert (x @ w.T - y).norm() < 0.3 * rtn
    # error compensation really moved the weak columns away from their original values
    assert not torch.allclose(weak_w, w[:, weak])


def test_only_the_weak_block_gets_gradients():
    w, x = structured_layer(), correlated_inputs(n=32)
    h = x.T @ x
    _, weak = select_weak_columns(h, 5)
    layer = QEFTLinear(*gptq_quantize_with_weak(w, h, weak, 4, 32)[:1], *gptq_quantize_with_weak(w, h, weak, 4, 32)[1:],
                       weak, None)
    xin = x.clone().requires_grad_(True)
    layer(xin).pow(2).sum().backward()
    assert layer.weak.grad is not None and layer.weak.grad.shape == (96, 5)
    assert xin.grad is not None  # gradient still flows to the input
    assert [n for n, p in layer.named_parameters() if p.grad is not None] == ["weak"]


def test_qeft_method_end_to_end(tmp_path):
    check_method_end_to_end("qeft", tmp_path)


def test_qeft_trains_fewer_parameters_than_qlora_at_rank_16():
    from automix.config.layers import LayerSettings
    from automix.methods import get_method
    from automix.arch import target_layers
    from tests.methods.helpers import tiny_llama

    counts = {}
    for name in ("qlora", "qeft"):
        model = tiny_llama(0)
        layers = {n: LayerSettings(4, 32, 0.0, 16) for n in target_layers(model)}
        m = get_method(name)
        prepared = m.prepare(model, layers, None, tokens(4, 16, 1))
        counts[name] = sum(p.numel() for _, p in m.trainable_parameters(prepared))
    assert counts["qeft"] < counts["qlora"] / 4


def test_weak_columns_shared_within_input_groups_and_bad_k():
    _, model, _ = prepare("qeft", bits=4)
    q = model.get_submodule("model.layers.0.self_attn.q_proj")
    v = model.get_submodule("model.layers.0.self_attn.v_proj")
    assert isinstance(q, QEFTLinear) and torch.equal(q.weak_idx, v.weak_idx)
    with pytest.raises(ValueError, match="weak columns"):
        weak_column_count(64, k=64)
    with pytest.raises(ValueError, match="weak columns"):
        prepare("qeft", settings={"options": {"weak_columns": 500}})


def test_qeft_memory_prediction_matches_measurement():
    from tests.methods.helpers import check_memory_prediction

    check_memory_prediction("qeft")
