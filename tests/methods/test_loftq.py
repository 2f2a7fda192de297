"""LoftQ init: the adapter cancels quantization error, with the alpha/r scaling respected."""

import pytest
import torch

from automix.methods.loftq import loftq_init, lowrank_factors, truncated_svd, weight_space_error
from automix.quant import quantize
from tests.methods.helpers import check_memory_prediction, check_method_end_to_end, prepare, structured_layer, tiny_llama


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


@pytest.mark.parametrize("shape", [(97, 161), (301, 67)])
def test_randomized_svd_is_as_good_as_the_exact_truncation_and_reproducible(shape):
    """The default range finder: near-optimal rank-r error on a quantization residual of an
    odd-sized heavy-tailed weight, the same factors on every call, and the global RNG untouched
    (a trial's seed must decide its dropout and data order alone)."""
    w = structured_layer(*shape, seed=3)
    residual = w - quantize(w, 2, 32).dequantize(torch.float32)
    ue, se, vhe = truncated_svd(residual, 8, "exact")
    exact = residual - (ue * se) @ vhe
    torch.manual_seed(123)
    before = torch.get_rng_state()
    u, s, vh = truncated_svd(residual, 8)
    assert torch.equal(torch.get_rng_state(), before)
    approx = residual - (u * s) @ vh
    assert u.shape == (shape[0], 8) and vh.shape == (8, shape[1])
    assert float(approx.norm()) <= 1.01 * float(exact.norm())
    torch.testing.assert_close(u.T @ u, torch.eye(8), atol=1e-4, rtol=0)  # orthonormal columns
    u2, s2, vh2 = truncated_svd(residual, 8)
    assert torch.equal(u, u2) and torch.equal(s, s2) and torch.equal(vh, vh2)


def test_randomized_svd_recovers_an_exactly_low_rank_matrix():
    g = torch.Generator().manual_seed(0)
    m = torch.randn(203, 5, generator=g) @ torch.randn(5, 131, generator=g)
    a, b = lowrank_factors(m, 5, 0.5)
    torch.testing.assert_close(0.5 * b @ a, m, atol=1e-3, rtol=1e-4)


def test_loftq_svd_option_is_validated_and_exact_matches_full_svd():
    w = structured_layer(seed=4)
    q, a, b = loftq_init(w, 3, 32, 8, 2.0, svd="exact")
    residual = w - q.dequantize(torch.float32)
    u, s, vh = torch.linalg.svd(residual, full_matrices=False)
    torch.testing.assert_close(2.0 * b @ a, (u[:, :8] * s[:8]) @ vh[:8], atol=1e-5, rtol=1e-4)
    with pytest.raises(ValueError, match="loftq_svd.*randomized.*exact"):
        loftq_init(w, 3, 32, 8, 2.0, svd="lanczos")
    for method in ("loftq", "quailora"):
        with pytest.raises(ValueError, match=f"^{method}: option loftq_svd must be one of"):
            prepare(method, settings={"options": {"loftq_svd": "lanczos"}})


def test_bad_arguments_raise():
    w = structured_layer()
    with pytest.raises(ValueError, match="loftq_iters"):
        loftq_init(w, 4, 32, 8, 1.0, iters=0)
    with pytest.raises(ValueError, match="rank"):
        loftq_init(w, 4, 32, 500, 1.0)


# ---------------------------------------------------------------------------------------------
# shared end-to-end checks for every method (imported by the other tests/test_method_*.py)
# ---------------------------------------------------------------------------------------------


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


def test_loftq_memory_prediction_matches_measurement():
    check_memory_prediction("loftq")
