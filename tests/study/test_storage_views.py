"""What optuna-dashboard shows of a study: the objectives by name (not "Objective 0/1"), on new
studies and on ones created before the names were set, and small, readable trial attributes."""

from __future__ import annotations

import json

import optuna
import pytest

from automix.config.study import StudyConfig
from automix.study.storage import metric_names, open_study


def make_cfg(tmp_path, **kw):
    base = dict(name="views", methods=["lora", "qlora"], task="boolq", search_space={"path": "synthetic"},
                memory_budget=5000, n_trials=4, workers=1, sampler="random",
                storage=f"sqlite:///{tmp_path}/optuna.db", tracking_uri=f"sqlite:///{tmp_path}/mlflow.db")
    base.update(kw)
    return StudyConfig(**base)


def test_new_study_names_its_objectives(tmp_path):
    cfg = make_cfg(tmp_path)
    study = open_study(cfg)
    assert study.metric_names == ["accuracy", "memory_bytes"]
    # what optuna-dashboard reads: the names stored with the study
    assert optuna.load_study(study_name="views", storage=cfg.storage_url).metric_names == ["accuracy", "memory_bytes"]


def test_perplexity_and_throughput_names(tmp_path):
    cfg = make_cfg(tmp_path, name="ppl", task="lm", objectives={"quality": "perplexity", "throughput": True})
    assert metric_names(cfg) == ["perplexity", "memory_bytes", "throughput"]
    assert open_study(cfg).metric_names == ["perplexity", "memory_bytes", "throughput"]


def test_existing_study_gets_names_on_resume(tmp_path):
    cfg = make_cfg(tmp_path)
    optuna.create_study(study_name=cfg.name, storage=cfg.storage_url, directions=cfg.directions)
    assert optuna.load_study(study_name=cfg.name, storage=cfg.storage_url).metric_names is None
    open_study(cfg, create=False)  # reading (status, export) writes nothing
    assert optuna.load_study(study_name=cfg.name, storage=cfg.storage_url).metric_names is None
    open_study(cfg)  # the driver opening it again (resume)
    assert optuna.load_study(study_name=cfg.name, storage=cfg.storage_url).metric_names == ["accuracy", "memory_bytes"]


def test_trial_attributes_are_small_and_readable(tmp_path):
    pytest.importorskip("mlflow")
    from automix.study.executors import LocalExecutor
    from automix.study.loop import run_study
    from automix.testing import SyntheticBackend

    cfg = make_cfg(tmp_path, n_trials=3)
    backend = SyntheticBackend(cfg.methods, n_blocks=3, cols=16)
    run_study(cfg, backend, executor=LocalExecutor(backend.function), progress=False, write_artifacts=False)
    study = optuna.load_study(study_name=cfg.name, storage=cfg.storage_url)
    done = [t for t in study.trials if t.state.name == "COMPLETE"]
    assert done
    for t in done:
        result = t.user_attrs["result"]
        assert all(v not in (None, "", [], {}) for v in result.values())
        for k, v in result.items():  # floats to 6 significant digits: no 0.13333333333333333
            if isinstance(v, float) and k not in ("accuracy", "perplexity"):
                assert len(repr(v).replace("-", "").replace(".", "").lstrip("0").split("e")[0]) <= 6, (k, v)
        # the objectives are stored as measured: the result agrees with the values told
        assert result["accuracy"] == t.values[0]
        assert len(json.dumps(t.user_attrs["summary"])) < 200
        assert isinstance(t.user_attrs["layers"], dict)  # structured, not a one-line string
