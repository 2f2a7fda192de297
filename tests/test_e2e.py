"""A real study end to end on the built-in tiny model: `automix search` with local Ray and temp
SQLite stores, then `automix status`, `automix export --with-weights` and `automix.load`.

Checks what users rely on: Optuna and MLflow agree on every trial, the `pareto` tags are exactly
the front, the exported layer file is the trial's configuration, the rebuilt model reproduces
the recorded metric, and impossible budgets are clear errors before any trial runs.
"""

from __future__ import annotations

import json
import os
import textwrap
from pathlib import Path

import pytest

pytest.importorskip("ray")
pytest.importorskip("mlflow")

REPO = Path(__file__).resolve().parents[1]
MODEL = os.environ.get("AUTOMIX_TEST_MODEL", "builtin:tiny")


def study_file(tmp_path: Path, **over) -> Path:
    d = dict(name="e2e", budget="64MiB", n_trials=4, workers=2, sampler="automix", model=MODEL, extra="")
    d.update(over)
    p = tmp_path / f"{d['name']}.yaml"
    p.write_text(textwrap.dedent(f"""\
        name: {d['name']}
        model: {d['model']}
        task: lm
        methods: [qlora, lora]
        search_space: {{path: {REPO / 'search_spaces' / 'quickstart.yaml'}}}
        objectives: {{quality: perplexity}}
        memory_budget: {d['budget']}
        n_trials: {d['n_trials']}
        sampler: {d['sampler']}
        trial: {{steps: 3, batch_size: 2, seq_len: 32, eval_batches: 2, extra: {{eval_batch_size: 8{d['extra']}}}}}
        resources: {{cpus: 1}}
        workers: {d['workers']}
        timeout_per_trial: 600
        storage: sqlite:///{tmp_path}/optuna.db
        tracking_uri: sqlite:///{tmp_path}/mlflow.db
        """))
    return p


@pytest.fixture()
def config_only_model(tmp_path) -> str:
    """A Llama model directory with only its config: all a study needs before trials run."""
    from transformers import LlamaConfig

    LlamaConfig(vocab_size=256, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                num_attention_heads=4, num_key_value_heads=2,
                architectures=["LlamaForCausalLM"]).save_pretrained(tmp_path / "cfg-model")
    return str(tmp_path / "cfg-model")


def test_bad_trial_settings_fail_before_trials(tmp_path, config_only_model):
    from automix.config.study import StudyConfigError, load_study
    from automix.study.backend import AutomixBackend, preflight

    cfg = load_study(study_file(tmp_path, model=config_only_model, extra=", eval_batchsize: 8"))
    with pytest.raises(StudyConfigError, match=r"trial: the trial spec is not valid \(eval_batchsize: Extra inputs"):
        preflight(cfg, AutomixBackend(cfg))


def test_budget_below_smallest_configuration(tmp_path, config_only_model):
    from automix.config.study import StudyConfigError, load_study
    from automix.study.backend import AutomixBackend, preflight

    cfg = load_study(study_file(tmp_path, budget="1KiB", model=config_only_model))
    backend = AutomixBackend(cfg)
    smallest, params = backend.smallest_memory()
    assert smallest > 1024
    with pytest.raises(StudyConfigError, match=r"memory_budget: 1.00 KiB is below the smallest possible "
                                               r"configuration \(.*iB, method q?lora\)"):
        preflight(cfg, backend)
    # the smallest configuration is a real one: every other choice of one parameter costs more
    for name, dist in backend.space.distributions.items():
        for v in getattr(dist, "choices", []):
            assert backend.predicted_memory({**params, name: v}) >= smallest


def test_sampler_memory_is_the_memory_the_trial_reports(tmp_path):
    """The known memory objective the sampler filters proposals with must be the one the trial
    records (padding, which adds an attention mask, included), or proposals the sampler deemed
    within the budget come back over it."""
    from automix.config.study import load_study
    from automix.study.backend import AutomixBackend
    from automix.trial import run_trial

    cfg = load_study(study_file(tmp_path, model="builtin:tiny"))
    backend = AutomixBackend(cfg)
    _, params = backend.smallest_memory()
    for method in ("qlora", "lora"):
        spec = {**backend.payload({**params, "method": method}), "steps": 1, "eval_batches": 1}
        result = run_trial(spec)
        assert result.status == "ok", result.failure_reason
        assert backend.predicted_memory({**params, "method": method}) == result.predicted_memory_bytes


@pytest.mark.slow
def test_study_end_to_end_export_and_load(tmp_path, capsys):
    import optuna
    from optuna.trial import TrialState

    from automix.cli import main
    from automix.study.results import pareto_numbers
    from automix.export import load
    from automix.config.layers import LayerConfig
    from automix.arch import target_layer_names
    from automix.study.tracking import Tracker

    path = study_file(tmp_path)
    assert main(["search", str(path), "--no-progress", "--export", str(tmp_path / "quick")]) == 0
    assert (tmp_path / "quick" / "layers.yaml").is_file()
    url = f"sqlite:///{tmp_path}/optuna.db"
    study = optuna.load_study(study_name="e2e", storage=url)
    trials = study.get_trials()
    assert len(trials) == 4 and all(t.state == TrialState.COMPLETE for t in trials), \
        [t.user_attrs.get("failure_reason") for t in trials]

    # Optuna and MLflow agree
    tracker = Tracker(f"sqlite:///{tmp_path}/mlflow.db", "e2e")
    runs = {int(r.data.tags["automix.trial"]): r for r in tracker.client.search_runs(
        [tracker.experiment_id], filter_string="tags.`automix.role` = 'trial'")}
    assert sorted(runs) == [t.number for t in trials]
    for t in trials:
        r = runs[t.number]
        assert r.data.tags["method"] == t.params["method"]
        assert r.data.metrics["perplexity"] == pytest.approx(t.values[0])
        assert r.data.metrics["memory_objective"] == pytest.approx(t.values[1])
        assert r.data.metrics["predicted_memory_bytes"] == pytest.approx(t.user_attrs["result"]["predicted_memory_bytes"])
        layers = json.loads(Path(tracker.client.download_artifacts(r.info.run_id, "layers.json", str(tmp_path))).read_text())
        assert layers == t.user_attrs["layers"]
    overall, per_method = pareto_numbers(trials, ["minimize", "minimize"], 64 * 2**20)
    assert overall == {t.number for t in study.best_trials}
    assert {n for n, r in runs.items() if r.data.tags["pareto"] == "true"} == overall
    assert {n for n, r in runs.items() if r.data.tags["pareto_method"] == "true"} == per_method

    assert main(["status", "e2e", "--storage", url]) == 0
    out = capsys.readouterr().out
    assert "Pareto front within the budget" in out and "4 finished (0 failed)" in out

    # export the best front configuration under the smallest front memory, with weights
    best_small = min(trials, key=lambda t: t.values[1])
    limit = str(int(best_small.values[1]) + 1)
    dest = tmp_path / "exported"
    assert main(["export", "--study", "e2e", "--storage", url, "--max-memory", limit, "--out", str(dest),
                 "--with-weights"]) == 0
    manifest = json.loads((dest / "manifest.json").read_text())
    chosen = study.trials[manifest["trial"]]
    assert chosen.values[1] <= best_small.values[1] + 1
    from transformers import AutoConfig

    from automix.trial.models import resolve_model_dir

    # the layer file is the chosen trial's configuration, on the model's layer names
    names = target_layer_names(AutoConfig.from_pretrained(resolve_model_dir(MODEL)))
    want = LayerConfig.from_dict(chosen.user_attrs["layers"]).resolve(names)
    assert LayerConfig.from_yaml(dest / "layers.yaml").resolve(names) == want
    exported = load(dest)
    # the rebuilt model reproduces the recorded metric
    assert exported.evaluate()["perplexity"] == pytest.approx(chosen.values[0], rel=1e-4)

    # a budget nothing meets: clear error with the smallest memory found
    assert main(["export", "--study", "e2e", "--storage", url, "--max-memory", "1KiB"]) == 2
    err = capsys.readouterr().err
    assert "no configuration of study 'e2e' fits in 1.00 KiB" in err and "smallest memory found" in err
