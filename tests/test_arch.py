"""automix.arch: layer names, kinds, Conv1D views and pruning couplings from a config alone."""

from __future__ import annotations

import pytest
from torch import nn
from transformers import AutoModelForCausalLM

from automix import arch
from tests.tiny_models import tiny_config


def test_gpt2_weight_view_is_transposed_and_shared(tmp_path):
    model = AutoModelForCausalLM.from_config(tiny_config("gpt2"))
    c_fc = arch.target_layers(model)["transformer.h.0.mlp.c_fc"]
    w = arch.linear_weight(c_fc)
    assert tuple(w.shape) == (96, 64) and tuple(c_fc.weight.shape) == (64, 96)
    assert w.data_ptr() == c_fc.weight.data_ptr()  # a view, not a copy


def test_layer_kinds_and_coupled_groups():
    cfg = tiny_config("llama")
    groups = arch.coupled_groups(cfg)
    assert len(groups) == 4
    attn, mlp = groups[0], groups[1]
    assert attn.kind == "attention_heads" and attn.n_units == 4 and attn.n_kv_units == 2 and attn.unit == 16
    assert attn.in_pruned == ("model.layers.0.self_attn.o_proj",)
    assert mlp.out_pruned == ("model.layers.0.mlp.gate_proj", "model.layers.0.mlp.up_proj")
    assert mlp.in_pruned == ("model.layers.0.mlp.down_proj",) and mlp.n_units == 96
    g2 = arch.coupled_groups(tiny_config("gpt2"))
    assert g2[0].packed_qkv and g2[0].out_pruned == ("transformer.h.0.attn.c_attn",)
    assert g2[1].out_pruned == ("transformer.h.0.mlp.c_fc",)
    opt = arch.coupled_groups(tiny_config("opt"))
    assert opt[1].out_pruned == ("model.decoder.layers.0.fc1",)
    assert arch.layer_kind("model.decoder.layers.1.fc2") == "mlp_down"
    assert arch.layer_kind("transformer.h.0.attn.c_attn") == "attn_qkv"
    with pytest.raises(ValueError, match="not a decoder linear-layer name"):
        arch.block_index("lm_head")


def test_names_survive_layer_replacement():
    model = AutoModelForCausalLM.from_config(tiny_config("llama"))
    names = list(arch.target_layers(model))
    model.model.layers[1].mlp.down_proj = nn.Identity()
    assert list(arch.target_layers(model)) == names
