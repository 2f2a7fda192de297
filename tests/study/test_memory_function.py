"""The sampler's vectorised memory: tables of the analytic model, exact against it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from automix.config.study import StudyConfig, TrialSettings
from automix.search.batch import DecomposedFunction, Shifted
from automix.study.backend import AutomixBackend, make_sampler
from tests.tiny_models import tiny_config

SPACES = Path(__file__).resolve().parents[2] / "search_spaces"


def _backend(tmp_path: Path, space: str, methods: list[str], trial: dict | None = None) -> AutomixBackend:
    cfg = tiny_config("llama")
    cfg.num_hidden_layers = 3
    cfg.save_pretrained(tmp_path / "model")
    return AutomixBackend(StudyConfig.model_validate({
        "name": "mem", "model": str(tmp_path / "model"), "task": "lm", "methods": methods,
        "search_space": {"path": str(SPACES / space)}, "memory_budget": 10**9, "n_trials": 10,
        "objectives": {"quality": "perplexity"}, "sensitivity": "off",
        "trial": {"batch_size": 2, "seq_len": 16, **(trial or {})}}))


CHECKPOINTING = "gradient_checkpointing" in TrialSettings.model_fields


NO_CKPT = {"gradient_checkpointing": False} if CHECKPOINTING else {}


@pytest.mark.parametrize("space,methods,trial", [
    ("llama-7b.yaml", ["qlora", "lora"], NO_CKPT),
    ("per_block.yaml", ["qlora"], NO_CKPT),
    pytest.param("llama-7b.yaml", ["qlora"], {"gradient_checkpointing": True},
                 marks=pytest.mark.skipif(not CHECKPOINTING, reason="no gradient checkpointing option")),
])
def test_vectorised_memory_equals_the_model_on_random_configurations(tmp_path, space, methods, trial) -> None:
    backend = _backend(tmp_path, space, methods, trial)
    fn = backend.memory_function()
    assert isinstance(fn, DecomposedFunction) and fn.use_tables, fn.max_error
    if space == "llama-7b.yaml" and trial == NO_CKPT:  # a layer's packed size depends on its block's pruning
        assert fn.exact, fn.max_error
        assert ("bits.model.layers.0.mlp.gate_proj", "prune.model.layers.0") in fn.pairs
        assert not any(a.endswith(".0") and b.endswith(".1") for a, b in fn.pairs)
    rng = np.random.default_rng(0)
    dists = backend.distributions
    n = 200
    cols = {k: np.array([d.choices[i] for i in rng.integers(0, len(d.choices), n)], dtype=object)
            for k, d in dists.items()}
    got = fn.batch(cols)
    want = np.array([backend.predicted_memory({k: cols[k][i] for k in dists}) for i in range(n)])
    if fn.exact:
        assert (got == want).all()
    else:  # a term that is not additive (e.g. one checkpointed block at a time): a bound
        assert np.max(np.abs(got - want)) <= fn.error_bound
    # feasibility under a budget is exact either way
    limit = float(np.median(want))
    assert ((Shifted(fn, limit).batch(cols) <= 0) == (want <= limit)).all()
    assert backend.memory_function() is fn  # built once per backend


def test_make_sampler_gets_the_vectorised_memory_and_knapsack(tmp_path) -> None:
    backend = _backend(tmp_path, "llama-7b.yaml", ["qlora"])
    sampler = make_sampler(backend.cfg, backend)
    assert all(hasattr(c, "batch") for c in sampler._known_constraints)
    assert hasattr(sampler._features, "batch")
    cfg = backend.cfg.model_copy(update={"sampler": "knapsack"})
    knap = make_sampler(cfg, backend)
    p = knap.proposals(1)[0]
    assert backend.predicted_memory(p) <= cfg.memory_budget
