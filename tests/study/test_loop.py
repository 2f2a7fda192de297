"""The driver on a synthetic objective (fast): Optuna and MLflow agree, the pareto tags are exactly
the front, failures are recorded and the study continues, stale trials are requeued."""

from __future__ import annotations

import pytest

pytest.importorskip("ray")
pytest.importorskip("mlflow")

import optuna  # noqa: E402
from optuna.trial import TrialState  # noqa: E402

from automix.study.results import finished_trials, pareto_numbers  # noqa: E402
from automix.study.storage import requeue_stale  # noqa: E402
from automix.study.loop import run_study  # noqa: E402
from automix.study.executors import LocalExecutor, RayExecutor  # noqa: E402
from automix.testing import SyntheticBackend  # noqa: E402
from automix.config.study import StudyConfig  # noqa: E402
from automix.study.tracking import Tracker  # noqa: E402


def make_cfg(tmp_path, **kw):
    base = dict(name="synth", methods=["lora", "qlora"], task="boolq", search_space={"path": "synthetic"},
                memory_budget=5000, n_trials=8, workers=2, sampler="random",
                storage=f"sqlite:///{tmp_path}/optuna.db", tracking_uri=f"sqlite:///{tmp_path}/mlflow.db")
    base.update(kw)
    return StudyConfig(**base)


def mlflow_runs(cfg):
    t = Tracker(cfg.tracking, cfg.name)
    runs = t.client.search_runs([t.experiment_id], filter_string="tags.`automix.role` = 'trial'")
    return {int(r.data.tags["automix.trial"]): r for r in runs}


@pytest.fixture(scope="module")
def ray_ex():
    ex = RayExecutor(SyntheticBackend(["lora"]).function, workers=2, cpus=1, timeout_s=60)
    yield ex
    ex.shutdown()


def test_study_optuna_and_mlflow_agree(tmp_path, ray_ex):
    cfg = make_cfg(tmp_path)
    backend = SyntheticBackend(cfg.methods, n_blocks=3, cols=32, fail_bits=3)
    run = run_study(cfg, backend, executor=ray_ex, progress=False)
    study = optuna.load_study(study_name=cfg.name, storage=cfg.storage_url)
    trials = study.get_trials()
    assert len(trials) == 8 and run.done == 8
    runs = mlflow_runs(cfg)
    assert set(runs) == {t.number for t in trials}
    for t in trials:
        r = runs[t.number]
        assert r.data.tags["method"] == t.params["method"]
        if t.state == TrialState.COMPLETE:
            assert r.data.metrics["accuracy"] == pytest.approx(t.values[0])
            assert r.data.metrics["memory_objective"] == pytest.approx(t.values[1])
            assert r.info.status == "FINISHED"
        else:  # the synthetic trial fails when block 0 gets 3 bits: recorded, study went on
            assert t.params["bits_0"] == 3 and "synthetic failure" in t.user_attrs["failure_reason"]
            assert r.info.status == "FAILED"
    overall, per_method = pareto_numbers(trials, cfg.directions, cfg.memory_budget)
    # Optuna's own notion of the constrained front is the same set
    assert overall == {t.number for t in study.best_trials}
    assert {n for n, r in runs.items() if r.data.tags["pareto"] == "true"} == overall
    assert {n for n, r in runs.items() if r.data.tags["pareto_method"] == "true"} == per_method
    assert overall <= per_method and overall
    # hypervolume history on the parent run, non-decreasing
    t = Tracker(cfg.tracking, cfg.name)
    hist = [m.value for m in t.client.get_metric_history(t.parent_id, "hypervolume")]
    assert hist and all(b >= a - 1e-12 for a, b in zip(hist, hist[1:]))
    names = {a.path for a in t.client.list_artifacts(t.parent_id)}
    assert {"front.csv", "trials.csv", "front.html", "study.resolved.yaml"} <= names


def test_stale_running_trials_are_requeued_and_resume_completes(tmp_path):
    cfg = make_cfg(tmp_path, n_trials=5, workers=1)
    backend = SyntheticBackend(cfg.methods, n_blocks=2, cols=16)
    run_study(cfg, backend, executor=LocalExecutor(backend.function), n_trials=3, progress=False,
              write_artifacts=False)
    study = optuna.load_study(study_name=cfg.name, storage=cfg.storage_url)
    # a driver that died mid-trial leaves a RUNNING trial behind
    orphan = study.ask({k: v for k, v in backend.distributions.items()})
    params = dict(orphan.params)
    run = run_study(cfg, backend, executor=LocalExecutor(backend.function), progress=False,
                    write_artifacts=False)
    assert run.requeued == [orphan.number]
    study = optuna.load_study(study_name=cfg.name, storage=cfg.storage_url)
    done = finished_trials(study)
    assert len(done) == 5 and all(t.state == TrialState.COMPLETE for t in done)
    assert any(t.params == params and t.user_attrs.get("requeued_from") == orphan.number for t in done)
    assert study.trials[orphan.number].user_attrs["stale"] is True
    assert requeue_stale(study) == []  # idempotent
    assert set(mlflow_runs(cfg)) == {t.number for t in done}
