"""Loading local save_pretrained directories (every supported family), errors, fingerprints."""

from __future__ import annotations

import json

import pytest
import torch

from automix import arch, builtin
from automix.trial import models
from tests.tiny_models import tiny_config


EXPECTED = {
    "llama": ("model.layers", ["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj",
                               "self_attn.o_proj", "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj"]),
    "opt": ("model.decoder.layers", ["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj",
                                     "self_attn.out_proj", "fc1", "fc2"]),
    "gpt2": ("transformer.h", ["attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj"]),
}
EXPECTED["mistral"] = EXPECTED["qwen2"] = EXPECTED["llama"]


@pytest.fixture(params=["llama", "mistral", "qwen2", "opt", "gpt2"])
def saved_model(request, tmp_path):
    from transformers import AutoModelForCausalLM

    cfg = tiny_config(request.param)
    model = AutoModelForCausalLM.from_config(cfg)
    model.save_pretrained(tmp_path)
    return request.param, tmp_path, cfg


def test_load_and_enumerate_each_architecture(saved_model):
    kind, path, cfg = saved_model
    model, tok = models.load_model(str(path))
    assert tok is None  # no tokenizer files were saved
    layers = arch.target_layers(model)
    prefix, rels = EXPECTED[kind]
    n_layers = arch.arch_info(model).n_layers
    assert list(layers) == [f"{prefix}.{i}.{r}" for i in range(n_layers) for r in rels]
    assert list(layers) == arch.target_layer_names(cfg)
    info = arch.arch_info(model)
    assert (info.hidden_size, info.intermediate_size, info.vocab_size) == (64, 96, 97)
    # every reported layer is a real linear map with the (out, in) shape the helpers report
    x = torch.randn(3, 64)
    for name, mod in layers.items():
        out_f, in_f = arch.linear_shape(mod)
        w = arch.linear_weight(mod)
        assert tuple(w.shape) == (out_f, in_f)
        lin = arch.as_linear(mod)
        xi = torch.randn(3, in_f)
        torch.testing.assert_close(lin(xi), mod(xi))
        assert arch.is_transposed(mod) == (kind == "gpt2")
        assert arch.block_index(name) == int(name[len(prefix) + 1:].split(".")[0])
    # the model runs
    with torch.no_grad():
        out = model(torch.randint(0, 97, (2, 9)))
    assert out.logits.shape == (2, 9, 97)
    del x


def test_missing_dir_and_non_causal_and_unsupported(tmp_path):
    with pytest.raises(ValueError, match="does not exist"):
        models.load_model(str(tmp_path / "nope"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no config.json"):
        models.load_model(str(tmp_path / "empty"))
    from transformers import BertConfig, BertModel

    BertModel(BertConfig(vocab_size=50, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                         intermediate_size=37)).save_pretrained(tmp_path / "bert")
    with pytest.raises(ValueError, match="not a causal language model"):
        models.load_model(str(tmp_path / "bert"))
    d = tmp_path / "weird"
    d.mkdir()
    (d / "config.json").write_text(json.dumps({"model_type": "gptj", "architectures": ["GPTJForCausalLM"]}))
    with pytest.raises(ValueError, match="supported: gpt2, llama, mistral, opt, qwen2"):
        models.load_model(str(d))
    with pytest.raises(ValueError, match="unknown built-in model size"):
        builtin.builtin_model_dir("huge")


def test_fingerprint_tracks_weights(tmp_path):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_config(tiny_config("llama"))
    model.save_pretrained(tmp_path / "a")
    fa = models.model_fingerprint(str(tmp_path / "a"))
    assert fa == models.model_fingerprint(str(tmp_path / "a")) and len(fa) == 16
    fm = models.model_fingerprint(model)
    with torch.no_grad():
        model.model.layers[0].mlp.up_proj.weight[0, 0] += 1e-3
    assert models.model_fingerprint(model) != fm
    model.save_pretrained(tmp_path / "b")
    assert models.model_fingerprint(str(tmp_path / "b")) != fa
