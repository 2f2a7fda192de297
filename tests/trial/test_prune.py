"""Structured pruning really shrinks tensors and keeps the model runnable; unstructured masks."""

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from automix.config.layers import LayerConfig
from automix.arch import target_layer_names
from automix.trial.prune import PruneError, prune_structured, prune_unstructured
from automix.arch import block_ratios, kept_units


def tiny(kv=2, seed=0):
    torch.manual_seed(seed)
    return LlamaForCausalLM(LlamaConfig(vocab_size=97, hidden_size=64, intermediate_size=160,
                                        num_hidden_layers=2, num_attention_heads=4,
                                        num_key_value_heads=kv, max_position_embeddings=64))


def block_params(model):
    return sum(p.numel() for n, p in model.named_parameters() if ".layers." in n and "norm" not in n)


@pytest.mark.parametrize("kv", [4, 2])
def test_structured_pruning_shrinks_by_the_requested_ratio_and_runs(kv):
    model = tiny(kv)
    names = target_layer_names(model)
    before = block_params(model)
    ls = LayerConfig({"prune": 0.5}).resolve(names)
    calib = torch.randint(0, 97, (4, 16))
    kept = prune_structured(model, ls, calib=calib)
    assert kept[0] == (2, kv // 2, 80)
    after = block_params(model)
    assert after == pytest.approx(before * 0.5, rel=0.01)
    q = model.get_submodule("model.layers.0.self_attn.q_proj")
    assert q.weight.shape == (32, 64) and model.get_submodule("model.layers.1.mlp.down_proj").weight.shape == (64, 80)
    out = model(input_ids=calib, labels=calib)
    assert torch.isfinite(out.loss) and out.logits.shape == (4, 16, 97)
    out.loss.backward()  # and it still trains


def test_taylor_keeps_the_units_that_matter():
    model = tiny(4)
    # Make MLP channel 7 of block 0 dominant: it must survive heavy pruning.
    with torch.no_grad():
        mlp = model.model.layers[0].mlp
        mlp.gate_proj.weight[7] *= 30
        mlp.up_proj.weight[7] *= 30
        mlp.down_proj.weight[:, 7] *= 30
        keep_col = mlp.down_proj.weight[:, 7].clone()
    ls = LayerConfig({}, {"model.layers.0.mlp.*": {"prune": 0.9}}).resolve(target_layer_names(model))
    prune_structured(model, ls, calib=torch.randint(0, 97, (4, 16)))
    down = model.model.layers[0].mlp.down_proj.weight
    assert down.shape[1] == 16
    assert any(torch.equal(down[:, j], keep_col) for j in range(16))
    assert model.model.layers[1].mlp.down_proj.weight.shape[1] == 160  # block 1 untouched


def test_block_ratio_is_the_mean_of_its_layers():
    model = tiny(4)
    ls = LayerConfig({}, {"model.layers.0.self_attn.q_proj": {"prune": 0.8},
                          "model.layers.0.mlp.down_proj": {"prune": 0.3}}).resolve(target_layer_names(model))
    assert block_ratios(model.config, ls)[0] == pytest.approx((0.2, 0.1))
    assert kept_units(model.config, ls) == {0: (3, 3, 144), 1: (4, 4, 160)}


def test_pruning_after_quantization_is_refused():
    from automix.methods import get_method

    model = tiny()
    ls = LayerConfig({"bits": 4, "group_size": 32, "prune": 0.3, "rank": 2}).resolve(target_layer_names(model))
    get_method("qlora").prepare(model, ls)
    with pytest.raises(PruneError, match="prune before quantizing"):
        prune_structured(model, ls)


@pytest.mark.parametrize("method", ["magnitude", "wanda"])
def test_unstructured_masks_the_requested_fraction(method):
    model = tiny()
    ls = LayerConfig({"prune": 0.4}).resolve(target_layer_names(model))
    calib = torch.randint(0, 97, (2, 16))
    sparsity = prune_unstructured(model, ls, method, calib=calib)
    assert all(abs(s - 0.4) < 0.02 for s in sparsity.values())
    assert torch.isfinite(model(input_ids=calib).logits).all()
    with pytest.raises(PruneError, match="wanda pruning needs calibration"):
        prune_unstructured(tiny(), ls, "wanda")


def test_structured_pruning_of_an_unsupported_family_is_a_clear_error():
    from transformers import OPTConfig, OPTForCausalLM

    model = OPTForCausalLM(OPTConfig(vocab_size=50, hidden_size=32, ffn_dim=64, num_hidden_layers=1,
                                     num_attention_heads=2, word_embed_proj_dim=32))
    ls = LayerConfig({"prune": 0.3}).resolve(target_layer_names(model))
    with pytest.raises(PruneError, match="structured pruning supports llama.*'opt'.*magnitude or wanda"):
        prune_structured(model, ls)
    assert prune_unstructured(model, ls, "magnitude")  # the alternative works
