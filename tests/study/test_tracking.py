"""MLflow tracking: one experiment and one parent run per study (reused on resume), idempotent
nested trial runs, pareto tags that follow the front exactly, and a clear error for stores that
cannot be used."""

from __future__ import annotations

import pytest

pytest.importorskip("mlflow")

from automix.study.tracking import Tracker, TrackingError, check_tracking_uri  # noqa: E402


def tags(t: Tracker) -> dict[int, tuple[str, str]]:
    runs = t.client.search_runs([t.experiment_id], filter_string="tags.`automix.role` = 'trial'")
    return {int(r.data.tags["automix.trial"]): (r.data.tags["pareto"], r.data.tags["pareto_method"])
            for r in runs}


def test_runs_params_metrics_and_pareto_tags(tmp_path):
    uri = f"sqlite:///{tmp_path}/m.db"
    t = Tracker(uri, "s1")
    layers = {"default": {"bits": 4, "group_size": 64, "prune": 0.0, "rank": 8}, "layers": {}}
    for n in range(4):
        t.log_trial(n, method="qlora" if n % 2 else "loftq", status="ok",
                    params={"avg_bits": 4.0 + n, "p.method": "qlora"},
                    metrics={"accuracy": 0.5 + n / 10, "perplexity": float("nan"), "peak_memory_bytes": 1e6},
                    layers=layers)
    # logging the same trial again (e.g. after a resume) does not duplicate it
    t.log_trial(0, method="loftq", status="ok", params={}, metrics={"accuracy": 0.0})
    t.set_pareto({1, 3}, {1, 2, 3})
    assert tags(t) == {0: ("false", "false"), 1: ("true", "true"), 2: ("false", "true"), 3: ("true", "true")}
    # the front moves: only changed runs are written
    assert t.set_pareto({3}, {2, 3}) == 2
    assert t.set_pareto({3}, {2, 3}) == 0
    assert tags(t) == {0: ("false", "false"), 1: ("false", "false"), 2: ("false", "true"), 3: ("true", "true")}

    run = t.client.get_run(t.logged_trials()[2])
    assert run.data.tags["mlflow.parentRunId"] == t.parent_id
    assert run.data.metrics["accuracy"] == pytest.approx(0.7)
    assert "perplexity" not in run.data.metrics  # NaN is not logged
    assert run.data.params["avg_bits"] == "6.0"
    assert [a.path for a in t.client.list_artifacts(run.info.run_id)] == ["layers.json"]

    # a second tracker on the same study (resume) reuses experiment and parent run, and sees tags
    t2 = Tracker(uri, "s1")
    assert (t2.experiment_id, t2.parent_id) == (t.experiment_id, t.parent_id)
    assert set(t2.logged_trials()) == {0, 1, 2, 3}
    assert t2.set_pareto({3}, {2, 3}) == 0
    t2.log_hypervolume(1, 0.1)
    t2.log_hypervolume(2, 0.3)
    assert [m.value for m in t2.client.get_metric_history(t2.parent_id, "hypervolume")] == [0.1, 0.3]


def test_many_params_are_batched(tmp_path):
    t = Tracker(f"sqlite:///{tmp_path}/m.db", "big")
    params = {f"layer{i}": i for i in range(250)}
    run_id = t.log_trial(0, method="qlora", status="ok", params=params, metrics={"accuracy": 1.0})
    assert len(t.client.get_run(run_id).data.params) == 250


def test_check_tracking_uri(tmp_path):
    check_tracking_uri(f"sqlite:///{tmp_path}/ok.db")
    check_tracking_uri(str(tmp_path))
    with pytest.raises(TrackingError, match="does not exist"):
        check_tracking_uri("sqlite:////no/such/dir/x.db")
    with pytest.raises(TrackingError, match="cannot be reached"):
        check_tracking_uri("http://127.0.0.1:9", timeout=2)
    with pytest.raises(TrackingError, match="cannot be reached"):
        check_tracking_uri("postgresql://nobody@127.0.0.1:9/none")


def test_ui_command(monkeypatch, tmp_path):
    import argparse

    from automix.commands import ui

    monkeypatch.chdir(tmp_path)
    args = argparse.Namespace(tracking_uri=None, optuna=False, storage=None, host="127.0.0.1", port=None)
    cmd = ui.command(args)
    assert cmd[1:4] == ["-m", "mlflow", "ui"]
    assert cmd[cmd.index("--backend-store-uri") + 1] == f"sqlite:///{tmp_path.resolve()}/automix-mlflow.db"
    # optuna-dashboard missing: a clear message saying how to install it
    monkeypatch.setattr("shutil.which", lambda name: None)
    monkeypatch.setattr("importlib.util.find_spec", lambda name: None)
    args.optuna = True
    with pytest.raises(SystemExit, match="optuna-dashboard is not installed: `pip install optuna-dashboard`"):
        ui.command(args)
