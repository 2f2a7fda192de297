"""Streamed loading: the model without its full-precision linear weights computes exactly what
`from_pretrained` gives, and never holds more than one of those weights."""

from __future__ import annotations

import pytest
import torch

from automix import arch
from automix.config.layers import LayerSettings
from automix.methods.adapters import quantize_layers
from automix.quant import QuantLinear, quantization_chunk, quantize
from automix.trial import memory, models, stream
from automix.trial.allocator import AllocatorMeter
from tests.tiny_models import tiny_config


@pytest.fixture(params=["llama", "mistral", "qwen2", "opt", "gpt2"])
def saved(request, tmp_path):
    from transformers import AutoModelForCausalLM

    cfg = tiny_config(request.param)
    if request.param == "llama":
        cfg.tie_word_embeddings = True  # one family with tied embeddings saved once
    AutoModelForCausalLM.from_config(cfg).save_pretrained(tmp_path)
    return request.param, tmp_path


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_streamed_model_equals_the_loaded_one(saved, dtype):
    kind, path = saved
    eager, _ = models.load_model(str(path), dtype=dtype)
    lazy = stream.load_streamed(path, models.check_model_config(path), dtype)
    assert lazy is not None
    streamed = stream.streamed_layers(lazy)
    assert set(streamed) == set(arch.target_layer_names(lazy))
    assert all(not any(True for _ in m.parameters()) for m in streamed.values())
    ids = torch.randint(0, 97, (2, 12))
    with torch.no_grad():
        want = eager(input_ids=ids).logits
        assert torch.equal(lazy(input_ids=ids).logits, want)  # each layer read at its forward
        for name, layer in streamed.items():  # the (out, in) weight, whatever the storage layout
            assert torch.equal(layer.weight, arch.linear_weight(eager.get_submodule(name)))
        assert stream.materialize(lazy) == len(streamed) and not stream.streamed_layers(lazy)
        assert torch.equal(lazy(input_ids=ids).logits, want)
    assert set(lazy.state_dict()) == set(eager.state_dict())
    for key, value in eager.state_dict().items():
        assert value.dtype == lazy.state_dict()[key].dtype and torch.equal(value, lazy.state_dict()[key]), key
    tied = eager.get_output_embeddings().weight is eager.get_input_embeddings().weight
    assert (lazy.get_output_embeddings().weight is lazy.get_input_embeddings().weight) == tied


def _saved_llama(path, **sizes):
    from transformers import AutoModelForCausalLM

    cfg = tiny_config("llama")
    for k, v in sizes.items():
        setattr(cfg, k, v)
    AutoModelForCausalLM.from_config(cfg).save_pretrained(path)
    return cfg


def test_a_streamed_load_holds_only_the_tensors_that_are_not_streamed(tmp_path):
    cfg = _saved_llama(tmp_path, hidden_size=128, intermediate_size=512, vocab_size=64)
    layer_bytes = 4 * cfg.hidden_size * cfg.intermediate_size  # one full-precision MLP weight
    meter = AllocatorMeter("cpu")
    with meter:
        with meter.phase("load"):
            model = stream.load_streamed(tmp_path, models.check_model_config(tmp_path))
        with meter.phase("quantize"), quantization_chunk(layer_bytes // 8):
            quantize_layers(model, {n: LayerSettings(4, 64, 0.0, 0) for n in arch.target_layer_names(model)})
    assert not stream.streamed_layers(model)
    held = sum(t.untyped_storage().nbytes() for t in list(model.parameters()) + list(model.buffers()))
    embeddings = 2 * 4 * cfg.vocab_size * cfg.hidden_size
    assert meter.peaks["load"] < embeddings + 4096  # the norms, the rotary tables
    assert meter.held["quantize"] == held  # nothing but the quantized model stays allocated
    # one chunk of rows (an eighth of a layer) and its temporaries at a time (memory.QUANT_TRANSIENT)
    assert meter.peaks["quantize"] < held + memory.QUANT_TRANSIENT * layer_bytes // 8


@pytest.mark.parametrize("method,kw", [("rtn", {}), ("minmax", {}), ("hqq", {"iters": 3}),
                                       ("rtn", {"clip_max_logit": True})])
def test_quantizing_a_chunk_of_rows_at_a_time_gives_the_same_layer(tmp_path, method, kw):
    _saved_llama(tmp_path, hidden_size=96, intermediate_size=160)
    model = stream.load_streamed(tmp_path, models.check_model_config(tmp_path))
    name = "model.layers.1.mlp.down_proj"  # (96, 160): 96 rows, groups of 64 and a short one
    layer = model.get_submodule(name)
    if kw.get("clip_max_logit"):
        logits = torch.randn(96, 3)
        kw = {"clip_max_logit": logits, "clip_min_logit": logits.flip(0)}
    whole = QuantLinear.from_linear(layer, 3, 64, method, **kw)
    with quantization_chunk(4 * 160 * 10):  # 10 rows at a time
        parts = QuantLinear.from_linear(layer, 3, 64, method, **kw)
    for key, value in whole.state_dict().items():
        assert torch.equal(value, parts.state_dict()[key]), key
    weight = layer.weight  # a whole matrix (LoftQ's, ApiQ's) quantized a chunk of rows at a time
    with quantization_chunk(4 * 160 * 7):
        rows = quantize(weight, 3, 64, method, **kw)
    flat = quantize(weight, 3, 64, method, **kw)
    assert all(torch.equal(getattr(flat, a), getattr(rows, a)) for a in ("packed", "scales", "zeros"))
    streamed_rows = layer.weight_rows(10, 30)
    assert torch.equal(streamed_rows, layer.weight[10:30])


def test_a_conversion_reads_the_file_a_chunk_at_a_time(tmp_path, monkeypatch):
    _saved_llama(tmp_path, hidden_size=128, intermediate_size=512, vocab_size=64)
    source = stream.WeightSource.of(tmp_path)
    monkeypatch.setattr(stream, "READ_CHUNK", 4 * 512 * 4)  # four fp32 rows
    key = "model.layers.0.mlp.down_proj.weight"  # (128, 512)
    meter = AllocatorMeter("cpu")
    with meter, meter.phase("read"):
        half = source.get(key, torch.bfloat16)
    assert torch.equal(half, source.get(key).to(torch.bfloat16))
    assert meter.peaks["read"] <= half.nbytes + 2 * 4 * 512 * 4  # a chunk read, and converted


def test_weights_outside_safetensors_are_not_streamed(tmp_path):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_config(tiny_config("llama"))
    model.save_pretrained(tmp_path)
    (tmp_path / "model.safetensors").unlink()  # a .bin checkpoint instead
    torch.save(model.state_dict(), tmp_path / "pytorch_model.bin")
    assert stream.load_streamed(tmp_path, models.check_model_config(tmp_path)) is None
