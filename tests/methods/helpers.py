"""Shared builders and checks for the method tests: structured random layers and inputs, a tiny
Llama, and the end-to-end / memory-prediction checks every method must pass."""

import torch


def correlated_inputs(n: int = 512, in_f: int = 160, seed: int = 0) -> torch.Tensor:
    """Low-dimensional correlated activations with a few outlier channels."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 24, generator=g) @ torch.randn(24, in_f, generator=g) + 0.1 * torch.randn(n, in_f, generator=g)
    x[:, [3, 50, 77]] *= 20
    return x


def structured_layer(out_f: int = 96, in_f: int = 160, seed: int = 0):
    """Low-rank signal + heavy-tailed noise (the shape of real LLM weights)."""
    g = torch.Generator().manual_seed(seed)
    low = torch.randn(out_f, 8, generator=g) @ torch.randn(8, in_f, generator=g) * 0.05
    noise = torch.distributions.StudentT(3.0).sample((out_f, in_f)) * 0.02
    return low + noise


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

    from automix.arch import target_layers

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
    from automix.config.layers import LayerSettings
    from automix.methods import get_method
    from automix.arch import target_layers

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


def measure_vs_predict(name: str, bits: int = 4, rank: int = 4, settings=None, batch: int = 4, seq: int = 16):
    """(measured, predicted) MemoryBreakdown of one AdamW step, as ``run_trial`` accounts it."""
    from automix.trial import memory, meter
    from automix.arch import arch_info

    method, model, layers = prepare(name, bits=bits, rank=rank, settings=settings)
    info = arch_info(tiny_llama(0))
    params = [p for _, p in method.trainable_parameters(model)]
    opt = torch.optim.AdamW(params, lr=1e-3)
    ids = tokens(batch, seq, 11)
    with meter.SavedTensorMeter(model) as saved:
        loss = model(input_ids=ids, labels=ids).loss
    loss.backward()
    opt.step()
    measured = meter.measured_breakdown(model, params, opt, saved.bytes)
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
    assert abs(predicted.accounted - measured.total) <= 0.1 * measured.total
