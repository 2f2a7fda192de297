"""The sampler's vectorised memory: tables of the analytic model (and, with gradient
checkpointing, a maximum over per-block tables), exact against it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from automix.config.study import StudyConfig
from automix.search.batch import DecomposedFunction, Shifted
from automix.study.backend import AutomixBackend, make_sampler
from tests.tiny_models import tiny_config

SPACES = Path(__file__).resolve().parents[2] / "search_spaces"


# two shapes of the Llama family, shrunk to 3 blocks: Llama-7B's (as many KV heads as heads,
# untied embeddings) and SmolLM2-135M's (9 heads over 3 KV heads, tied embeddings)
SHAPES = {
    "llama-7b": dict(hidden_size=64, intermediate_size=96, num_attention_heads=4, num_key_value_heads=4,
                     tie_word_embeddings=False),
    "smollm2": dict(hidden_size=72, intermediate_size=96, num_attention_heads=9, num_key_value_heads=3,
                    tie_word_embeddings=True),
}


def _backend(tmp_path: Path, space: str, methods: list[str], trial: dict | None = None,
             shape: str = "llama-7b") -> AutomixBackend:
    cfg = tiny_config("llama")
    cfg.num_hidden_layers = 3
    for k, v in SHAPES[shape].items():
        setattr(cfg, k, v)
    cfg.head_dim = cfg.hidden_size // cfg.num_attention_heads
    cfg.save_pretrained(tmp_path / "model")
    return AutomixBackend(StudyConfig.model_validate({
        "name": "mem", "model": str(tmp_path / "model"), "task": "lm", "methods": methods,
        "search_space": {"path": str(SPACES / space)}, "memory_budget": 10**9, "n_trials": 10,
        "objectives": {"quality": "perplexity"}, "sensitivity": "off",
        "trial": {"batch_size": 2, "seq_len": 16, **(trial or {})}}))


CKPT, NO_CKPT = {"gradient_checkpointing": True}, {"gradient_checkpointing": False}


@pytest.mark.parametrize("shape,space,methods,trial", [
    ("llama-7b", "llama-7b.yaml", ["qlora", "lora"], NO_CKPT),
    ("llama-7b", "per_block.yaml", ["qlora"], NO_CKPT),
    ("llama-7b", "llama-7b.yaml", ["qlora", "lora"], CKPT),
    ("llama-7b", "per_block.yaml", ["qlora"], CKPT),
    ("llama-7b", "llama-7b.yaml", ["qlora"], {**CKPT, "dtype": "float16", "grad_accum_steps": 2}),
    ("smollm2", "smollm2-135m.yaml", ["qlora", "lora"], NO_CKPT),
    ("smollm2", "smollm2-135m.yaml", ["qlora", "lora"], CKPT),
    ("smollm2", "smollm2-135m.yaml", ["qlora"], {**CKPT, "dtype": "bfloat16", "optimizer": "adamw-8bit"}),
])
def test_vectorised_memory_equals_the_model_on_random_configurations(tmp_path, shape, space, methods,
                                                                     trial) -> None:
    backend = _backend(tmp_path, space, methods, trial, shape)
    fn = backend.memory_function()
    assert isinstance(fn, DecomposedFunction) and fn.use_tables, fn.max_error
    # exact, checkpointing too: its largest block recomputation is a max over per-block tables
    assert fn.exact and fn.max_error <= 1e-9 and fn.error_bound == 0.0, fn.max_error
    assert fn.n_terms == (3 if trial["gradient_checkpointing"] else 0)
    if space != "per_block.yaml":  # a layer's packed size depends on its block's pruning
        assert ("bits.model.layers.0.mlp.gate_proj", "prune.model.layers.0") in fn.pairs
        assert not any(a.endswith(".0") and b.endswith(".1") for a, b in fn.pairs)
    rng = np.random.default_rng(0)
    dists = backend.distributions
    n = 300
    cols = {k: np.array([d.choices[i] for i in rng.integers(0, len(d.choices), n)], dtype=object)
            for k, d in dists.items()}
    got = fn.batch(cols)
    want = np.array([backend.predicted_memory({k: cols[k][i] for k in dists}) for i in range(n)])
    assert np.max(np.abs(got - want) / want) <= 1e-9
    if trial["gradient_checkpointing"]:  # the maximum matters: not always the same block's
        peaks = {int(np.argmax(backend._estimate({k: cols[k][i] for k in dists}).recompute)) for i in range(40)}
        assert len(peaks) > 1, peaks
    # feasibility under a budget is exact, and without calling the model again
    calls = fn.n_calls
    limit = float(np.median(want))
    assert ((Shifted(fn, limit).batch(cols) <= 0) == (want <= limit)).all()
    assert fn.n_calls == calls
    assert backend.memory_function() is fn  # built once per backend


def test_make_sampler_gets_the_vectorised_memory_and_the_one_shot(tmp_path) -> None:
    backend = _backend(tmp_path, "llama-7b.yaml", ["qlora"])
    sampler = make_sampler(backend.cfg, backend)
    assert all(hasattr(c, "batch") for c in sampler._known_constraints)
    assert hasattr(sampler._features, "batch")
    for name in ("oneshot", "knapsack"):  # knapsack: the old name
        cfg = backend.cfg.model_copy(update={"sampler": name})
        p = make_sampler(cfg, backend).proposals(1)[0]
        assert backend.predicted_memory(p) <= cfg.memory_budget
