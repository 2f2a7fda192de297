"""MLflow tracking: one experiment and one parent run per study (reused on resume), idempotent
nested trial runs, pareto tags that follow the front exactly, and a clear error for stores that
cannot be used."""

from __future__ import annotations

from pathlib import Path

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
    assert sorted(a.path for a in t.client.list_artifacts(run.info.run_id)) == ["layers.json", "layers.yaml"]

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


def test_trial_run_reads_well(tmp_path):
    """MiB beside bytes, rounded parameters, no value as both parameter and metric, the layers as
    the YAML file `automix trial --layers` takes, and a classic (not GenAI) experiment."""
    import yaml

    from automix.config.layers import LayerConfig

    t = Tracker(f"sqlite:///{tmp_path}/m.db", "views")
    assert t.client.get_experiment(t.experiment_id).tags["mlflow.experimentKind"] == "custom_model_development"
    layers = {"default": {"bits": 4, "group_size": 64, "prune": 0.0, "rank": 8},
              "layers": {"model.layers.0.mlp.down_proj": {"bits": 8, "group_size": 64, "prune": 0.0, "rank": 8}}}
    run_id = t.log_trial(
        0, method="qlora", status="ok",
        params={"avg_prune": 0.13333333333333333, "avg_bits": 4.266666666666667, "n_layers": 7, "p.lr": 1.23456e-05},
        metrics={"accuracy": 0.61, "avg_bits": 4.266666666666667, "peak_memory_bytes": 3 * 2**20,
                 "predicted_memory_bytes": 1.5 * 2**20, "memory_objective": 2**21},
        layers=layers)
    run = t.client.get_run(run_id)
    assert run.data.params == {"avg_prune": "0.1333", "n_layers": "7", "p.lr": "1.235e-05"}
    m = run.data.metrics
    assert m["avg_bits"] == pytest.approx(4.266666666666667)
    assert (m["peak_memory_mib"], m["predicted_memory_mib"], m["memory_mib"]) == (3.0, 1.5, 2.0)
    assert m["peak_memory_bytes"] == 3 * 2**20
    text = Path(t.client.download_artifacts(run_id, "layers.yaml", str(tmp_path))).read_text()
    assert yaml.safe_load(text) == layers
    lc = LayerConfig.from_yaml(tmp_path / "layers.yaml")
    assert lc.resolve(["model.layers.0.mlp.down_proj", "model.layers.0.mlp.up_proj"])[
        "model.layers.0.mlp.down_proj"].bits == 8

    # an experiment made before the kind was set gets it when the study is opened again
    t.client.delete_experiment_tag(t.experiment_id, "mlflow.experimentKind")
    t2 = Tracker(f"sqlite:///{tmp_path}/m.db", "views")
    assert t2.client.get_experiment(t2.experiment_id).tags["mlflow.experimentKind"] == "custom_model_development"


def test_ui_prints_each_studys_front_link(monkeypatch, tmp_path, capsys):
    """`automix ui` gives, per study, the runs page that shows the front's trial runs (checked in
    a real browser with MLflow 3.17: the model-training view, the filter, and a sort other than
    by date, without which the UI nests the matching trial runs under one collapsed study row)."""
    from urllib.parse import parse_qs

    from automix.cli import main

    uri = f"sqlite:///{tmp_path}/m.db"
    t = Tracker(uri, "quick")
    assert main(["ui", "--tracking-uri", uri, "--port", "5077", "--dry-run"]) == 0
    out = capsys.readouterr().out
    link = next(line.split("quick: ", 1)[1] for line in out.splitlines() if "quick: " in line)
    page, query = link.split("?", 1)
    assert page == f"http://127.0.0.1:5077/#/experiments/{t.experiment_id}/runs"
    assert {k: v[0] for k, v in parse_qs(query).items()} == {
        "workflowType": "machine_learning", "searchFilter": "tags.pareto = 'true'",
        "orderByKey": "metrics.`memory_mib`", "orderByAsc": "true"}
    # no store yet: no links, and nothing is created
    assert main(["ui", "--tracking-uri", f"sqlite:///{tmp_path}/none.db", "--dry-run"]) == 0
    assert "Pareto" not in capsys.readouterr().out and not (tmp_path / "none.db").exists()


def test_full_layer_map_is_written_compact(tmp_path):
    import yaml

    t = Tracker(f"sqlite:///{tmp_path}/m.db", "full")
    full = {f"block{i}": {"bits": 8 if i == 2 else 4} for i in range(4)}
    run_id = t.log_trial(0, method="qlora", status="ok", params={}, metrics={"accuracy": 1.0}, layers=full)
    doc = yaml.safe_load(Path(t.client.download_artifacts(run_id, "layers.yaml", str(tmp_path))).read_text())
    assert doc == {"default": {"bits": 4}, "layers": {"block2": {"bits": 8}}}
