"""The method interface: registry, LoRA / QLoRA preparation, trained-state round trip."""

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from automix.config.layers import LayerConfig
from automix.methods import MethodError, available_methods, get_method
from automix.methods.adapters import LoRALinear, lora_layers
from automix.arch import target_layer_names
from automix.quant import QuantLinear


def tiny_llama(seed: int = 0) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=97, hidden_size=64, intermediate_size=160, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)
    return LlamaForCausalLM(cfg)


def settings(model, **kw):
    d = {"bits": 4, "group_size": 32, "prune": 0.0, "rank": 4}
    d.update(kw)
    return LayerConfig(d).resolve(target_layer_names(model))


def test_registry_lists_all_methods_and_rejects_unknown():
    assert available_methods() == ["lora", "qlora", "loftq", "quailora", "apiq", "apiq-lw", "qst", "qeft"]
    with pytest.raises(ValueError, match="available methods: lora, qlora"):
        get_method("qlroa")


def test_unknown_option_is_an_error_naming_the_method():
    with pytest.raises(MethodError, match="qlora.*no option"):
        get_method("qlora").check_settings({"options": {"rank_pattern": 3}})


def test_qlora_quantizes_per_layer_bits_and_starts_at_the_quantized_base():
    model = tiny_llama()
    ls = settings(model)
    ls["model.layers.1.mlp.down_proj"] = ls["model.layers.1.mlp.down_proj"].__class__(16, 32, 0.0, 0)
    ids = torch.randint(0, 97, (2, 12))
    method = get_method("qlora")
    prepared = method.prepare(model, ls)
    layers = dict(prepared.named_modules())
    assert isinstance(layers["model.layers.0.self_attn.q_proj"], LoRALinear)
    assert isinstance(layers["model.layers.0.self_attn.q_proj"].base, QuantLinear)
    assert isinstance(layers["model.layers.1.mlp.down_proj"], torch.nn.Linear)  # 16 bits, rank 0
    names = [n for n, _ in method.trainable_parameters(prepared)]
    assert len(names) == 2 * 13 and all(n.endswith(("lora_A", "lora_B")) for n in names)
    # B = 0: the adapters add nothing yet, so the output is the quantized base's
    with torch.no_grad():
        out = prepared(input_ids=ids).logits
        for w in lora_layers(prepared).values():
            w.lora_A.zero_()
        assert torch.equal(out, prepared(input_ids=ids).logits)


def test_only_adapters_get_gradients_and_state_round_trips_bit_exactly(tmp_path):
    model = tiny_llama()
    method = get_method("qlora")
    prepared = method.prepare(model, settings(model))
    ids = torch.randint(0, 97, (2, 12))
    prepared(input_ids=ids, labels=ids).loss.backward()
    for n, p in prepared.named_parameters():
        assert (p.grad is not None) == n.endswith(("lora_A", "lora_B")), n
    opt = torch.optim.AdamW([p for _, p in method.trainable_parameters(prepared)], lr=1e-2)
    opt.step()
    path = method.save(prepared, tmp_path / "state.safetensors")
    other = tiny_llama()
    torch.manual_seed(123)  # different A init
    other = method.prepare(other, settings(other))
    method.load(other, path)
    for (n, a), (_, b) in zip(method.trainable_parameters(prepared), method.trainable_parameters(other)):
        assert torch.equal(a, b), n
    with pytest.raises(MethodError, match="not 'lora'"):
        get_method("lora").load(other, path)


def test_lora_keeps_the_base_dense_whatever_the_bits():
    model = tiny_llama()
    prepared = get_method("lora").prepare(model, settings(model, bits=2))
    assert not any(isinstance(m, QuantLinear) for m in prepared.modules())
    assert isinstance(prepared.get_submodule("model.layers.0.mlp.up_proj.base"), torch.nn.Linear)


def test_quantized_layers_keep_no_dense_weight_for_backward():
    model = tiny_llama()
    prepared = get_method("qlora").prepare(model, settings(model))
    ids = torch.randint(0, 97, (2, 12))
    big = []

    def pack(t):
        big.append(tuple(t.shape))
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss = prepared(input_ids=ids, labels=ids).loss
    assert (64, 160) not in big and (160, 64) not in big  # no dequantized MLP weight kept
    loss.backward()  # and backward still works through the recomputed weights
    assert prepared.get_submodule("model.layers.0.self_attn.q_proj").lora_B.grad.abs().sum() > 0


def test_registered_method_without_module_is_a_clear_error(monkeypatch):
    from automix import methods

    monkeypatch.setitem(methods.REGISTRY, "future", "automix.methods.not_written_yet:Future")
    with pytest.raises(MethodError, match="'future' is registered but its module"):
        get_method("future")
