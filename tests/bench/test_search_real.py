"""`automix bench search --problem builtin`: real trials on the built-in model, memoised."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from automix.bench import search as bench, search_real as bench_real


def test_real_mode_runs_trials_once_and_writes_tables(tmp_path: Path, monkeypatch) -> None:
    calls = []
    real = bench_real.run_trial

    def counting(spec):
        calls.append(spec)
        return real(spec)

    monkeypatch.setattr(bench_real, "run_trial", counting)
    cache, out = tmp_path / "cache.json", tmp_path / "real.md"
    argv = ["--problem", "builtin", "--seeds", "1", "--trials", "2", "--samplers", "random",
            "--short", "", "--steps", "1", "--eval-batches", "1", "--cache", str(cache),
            "--out", str(out)]
    assert bench.main(argv) == 0
    n_first = len(calls)
    assert 1 <= n_first <= 2  # two asks; a repeated configuration would run once
    data = json.loads(cache.read_text())
    assert len(data["trials"]) == n_first and len(data["runs"]) == 1
    (trials,) = data["runs"].values()
    assert [set(t) >= {"params", "perplexity", "memory"} for t in trials[:2]] == [True, True]
    text = out.read_text()
    assert "automix bench search --problem builtin" in text
    assert "| random |" in text and "Hypervolume" in text
    # resumed from the cache: nothing runs again
    assert bench.main(argv) == 0
    assert len(calls) == n_first


def test_hypervolume_normalisation_uses_every_run() -> None:
    budget = 10.0
    a = [{"params": {"x": 1}, "perplexity": 4.0, "memory": 5.0},
         {"params": {"x": 2}, "perplexity": 3.0, "memory": 9.0},
         {"params": {"x": 3}, "perplexity": 2.0, "memory": 11.0}]  # over budget: ignored
    b = [{"params": {"x": 4}, "perplexity": 3.5, "memory": 6.0},
         {"params": {"x": 5}, "perplexity": None, "memory": 4.0}]  # failed: ignored
    bounds = bench_real.hv_bounds([a, b], budget)
    hv_a = bench_real.normalized_hv(a, 3, budget, bounds)
    hv_b = bench_real.normalized_hv(b, 2, budget, bounds)
    assert 0.0 < hv_a < 1.0 and 0.0 < hv_b < 1.0  # each run holds part of the reference set
    assert bench_real.normalized_hv(a + b, 5, budget, bounds) == pytest.approx(1.0)
    assert bench_real.normalized_hv(a, 1, budget, bounds) < hv_a
    with pytest.raises(ValueError, match="no feasible"):
        bench_real.hv_bounds([[a[2]]], budget)
    # the best feasible perplexity skips over-budget and failed trials
    assert bench_real.best_feasible(a, budget) == 3.0 and bench_real.best_feasible(b, budget) == 3.5
    assert bench_real.best_feasible([a[2]], budget) == float("inf")
    assert bench_real.format_best([3.0, 3.5, float("inf")]) == "3.50 (3.00..inf)"
    assert bench_real.format_best([float("inf")] * 2) == "none feasible"


def test_unknown_sampler_is_rejected() -> None:
    with pytest.raises(ValueError, match="unknown sampler"):
        bench.main(["--problem", "builtin", "--samplers", "cmaes", "--seeds", "1"])


def test_problem_presets_set_the_study_and_flags_override_them() -> None:
    args = bench_real.parse_args(["--problem", "smollm2", "--steps", "3"])
    cfg = bench_real.make_config(args, "oneshot", seed=1)
    assert (cfg.model, cfg.data, cfg.sampler) == ("smollm2-135m", "builtin:python-docs", "oneshot")
    assert cfg.search_space.path.endswith("smollm2-135m.yaml")
    assert cfg.trial.steps == 3 and cfg.trial.seq_len == 128  # the flag over the preset's 12
    builtin = bench_real.make_config(bench_real.parse_args([]))
    assert builtin.model == "builtin:tiny" and builtin.search_space.path.endswith("quickstart.yaml")
