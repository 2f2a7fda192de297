"""Multi-fidelity in a study: reports reach the driver, the pruner stops trials (in the driver's
process and in Ray workers), pruned trials are PRUNED in Optuna and KILLED in MLflow with their
curves, the companion study holds the learning curves, and resume never re-runs them."""

from __future__ import annotations

import time

import pytest

pytest.importorskip("ray")
pytest.importorskip("mlflow")

import optuna  # noqa: E402
from optuna.trial import TrialState  # noqa: E402

from automix.config.study import StudyConfig, StudyConfigError  # noqa: E402
from automix.search.pruners import ParetoPruner  # noqa: E402
from automix.study.executors import LocalExecutor, RayExecutor  # noqa: E402
from automix.study.fidelity import fidelity_study_name, make_pruner  # noqa: E402
from automix.study.loop import run_study  # noqa: E402
from automix.study.tracking import Tracker  # noqa: E402
from automix.testing import SyntheticBackend, synthetic_trial  # noqa: E402


def make_cfg(tmp_path, **kw):
    base = dict(name="mf", methods=["lora", "qlora"], task="boolq", search_space={"path": "synthetic"},
                memory_budget=5000, n_trials=12, workers=1, sampler="random", trial={"steps": 60},
                pruner={"name": "pareto", "options": {"n_startup_trials": 2}},
                storage=f"sqlite:///{tmp_path}/optuna.db", tracking_uri=f"sqlite:///{tmp_path}/mlflow.db")
    base.update(kw)
    return StudyConfig(**base)


def test_pruner_settings_and_errors(tmp_path):
    assert make_pruner(make_cfg(tmp_path, pruner="none")) is None
    pareto = make_pruner(make_cfg(tmp_path))
    assert isinstance(pareto, ParetoPruner) and pareto.memory_reference == 5000  # the front ends at the budget
    assert make_pruner(make_cfg(tmp_path, pruner={"name": "pareto", "options": {"min_gain": 0.01}})).min_gain == 0.01
    hb = make_pruner(make_cfg(tmp_path, pruner="hyperband"))
    assert isinstance(hb, optuna.pruners.HyperbandPruner)
    cfg = make_cfg(tmp_path, pruner={"name": "median", "eval_every": 7})
    assert cfg.pruner.report_every(60) == 7 and make_cfg(tmp_path, pruner="median").pruner.report_every(60) == 15
    with pytest.raises(StudyConfigError, match=r"pruner\.options.*n_warmup"):
        make_pruner(make_cfg(tmp_path, pruner={"name": "median", "options": {"n_warmup": 3}}))
    with pytest.raises(ValueError, match="pruner"):
        make_cfg(tmp_path, pruner="asha")


def test_local_executor_stops_a_trial_on_the_drivers_word():
    ex = LocalExecutor(synthetic_trial)
    ex.on_report = lambda key, kind, step, value: kind == "eval" and step >= 20
    ex.submit(0, {"bits": [4, 4], "curve_steps": 6})
    (out,) = ex.poll()
    assert out.status == "pruned" and out.value is None


@pytest.mark.slow
def test_ray_executor_cancels_a_pruned_trial_and_reads_every_report():
    ex = RayExecutor(synthetic_trial, workers=2, cpus=1, timeout_s=60)
    try:
        reports = []

        def on_report(key, kind, step, value):
            reports.append((key, kind, step))
            return key == "stop" and kind == "eval" and step >= 10

        ex.on_report = on_report
        # "stop" would report evaluations at steps 0, 10, ..., 590 for a minute if never stopped
        ex.submit("stop", {"bits": [4, 4], "curve_steps": 60, "step_sleep": 1.0})
        ex.submit("full", {"bits": [4, 4], "curve_steps": 3, "step_sleep": 0.1})
        out, t0 = {}, time.time()
        while len(out) < 2:
            assert time.time() - t0 < 120, f"only {sorted(out)} ended within 120 s"
            out.update({o.key: o for o in ex.poll(0.5)})
        assert out["stop"].status == "pruned" and out["stop"].value is None
        stop_steps = [step for key, kind, step in reports if key == "stop" and kind == "eval"]
        assert 10 in stop_steps and max(stop_steps) < 590  # stopped after step 10, before its end
        assert out["full"].status == "ok" and out["full"].value["eval_curve"]
        assert ("full", "eval", 20) in reports
    finally:
        ex.shutdown()


def test_study_prunes_records_curves_and_resumes_without_rerunning(tmp_path):
    cfg = make_cfg(tmp_path)
    backend = SyntheticBackend(cfg.methods, n_blocks=3, cols=16, curve_steps=6)
    run = run_study(cfg, backend, executor=LocalExecutor(backend.function), progress=False)
    study = optuna.load_study(study_name=cfg.name, storage=cfg.storage_url)
    pruned = [t for t in study.trials if t.state == TrialState.PRUNED]
    complete = [t for t in study.trials if t.state == TrialState.COMPLETE]
    assert pruned and complete and run.pruned == len(pruned) and run.done == 12
    for t in pruned:
        assert t.values is None and "pruned at step" in t.user_attrs["failure_reason"]
        assert t.user_attrs["eval_curve"]
    # the companion study: one trial per search trial, the learning curves, the same outcome
    shadow = optuna.load_study(study_name=fidelity_study_name(cfg.name), storage=cfg.storage_url)
    by_trial = {s.user_attrs["trial"]: s for s in shadow.trials}
    assert set(by_trial) == {t.number for t in study.trials}
    for t in study.trials:
        assert by_trial[t.number].state == t.state and by_trial[t.number].intermediate_values
    # MLflow: pruned runs are KILLED and tagged, every run has its curves as metric histories
    tr = Tracker(cfg.tracking, cfg.name)
    runs = {int(r.data.tags["automix.trial"]): r for r in
            tr.client.search_runs([tr.experiment_id], filter_string="tags.`automix.role` = 'trial'")}
    for t in pruned:
        assert runs[t.number].info.status == "KILLED" and runs[t.number].data.tags["status"] == "pruned"
    for t in pruned + complete:
        hist = tr.client.get_metric_history(runs[t.number].info.run_id, "eval_accuracy")
        assert [m.step for m in hist] == [s for s, _ in t.user_attrs["eval_curve"]]
        assert tr.client.get_metric_history(runs[t.number].info.run_id, "train_loss")
    # resume: pruned trials are finished, never re-run
    run_study(cfg, backend, executor=LocalExecutor(backend.function), n_trials=14, progress=False)
    study = optuna.load_study(study_name=cfg.name, storage=cfg.storage_url)
    assert len(study.trials) == 14
    assert {t.number for t in study.trials if t.state == TrialState.PRUNED} >= {t.number for t in pruned}
