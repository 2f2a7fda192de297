"""`automix status` after Ctrl-C: interrupted and waiting trials are shown as they are (not
"0 finished, 2 running or queued" over empty tables), and the study is named positionally or
with --study."""

from __future__ import annotations

import optuna
import pytest
from optuna.distributions import CategoricalDistribution
from rich.console import Console

from automix.cli import main
from automix.commands.status import print_status
from automix.config.study import StudyConfig
from automix.study.results import trials_table
from automix.study.storage import open_study, requeue_stale

DIST = {"method": CategoricalDistribution(["lora", "qlora"]), "bits": CategoricalDistribution([2, 4, 8])}


def interrupted_study(tmp_path, complete: int = 1):
    cfg = StudyConfig(name="stopped", methods=["lora", "qlora"], task="boolq", search_space={"path": "synthetic"},
                      memory_budget=5000, n_trials=6, workers=2, sampler="random",
                      storage=f"sqlite:///{tmp_path}/optuna.db", tracking_uri=f"sqlite:///{tmp_path}/mlflow.db")
    study = open_study(cfg)
    study.set_user_attr("config", {**cfg.model_dump(mode="json"), "storage": cfg.storage_url})
    for i in range(complete):
        t = study.ask(DIST)
        t.set_user_attr("method", t.params["method"])
        t.set_user_attr("summary", {"avg_bits": float(t.params["bits"])})
        t.set_user_attr("result", {"accuracy": 0.5 + i / 10, "avg_bits": float(t.params["bits"])})
        t.set_user_attr("memory_objective", 1000.0 + i)
        study.tell(t, [0.5 + i / 10, 1000.0 + i])
    for _ in range(2):  # what Ctrl-C leaves: the trials in flight marked interrupted, then requeued
        t = study.ask(DIST)
        t.set_user_attr("method", t.params["method"])
        t.set_user_attr("predicted_memory", 2000.0)
        t.set_user_attr("interrupted", True)
        t.set_user_attr("failure_reason", "interrupted by the user (re-run on resume)")
    assert len(requeue_stale(study)) == 2
    return cfg, study


def render(cfg) -> str:
    console = Console(record=True, width=200)
    print_status(cfg, console=console, show_all=True)
    return console.export_text()


def test_table_shows_interrupted_and_waiting_trials(tmp_path):
    cfg, study = interrupted_study(tmp_path)
    rows = trials_table(study, cfg, unfinished=True)
    assert [r["state"] for r in rows] == ["COMPLETE", "INTERRUPTED", "INTERRUPTED", "WAITING", "WAITING"]
    assert [r["failure_reason"] for r in rows[3:]] == ["queued: re-run of trial 1", "queued: re-run of trial 2"]
    assert rows[3]["method"] == study.trials[1].params["method"]  # an enqueued trial's fixed parameters
    # without `unfinished` the table is still only the finished trials (artifacts, trials.csv)
    assert [r["state"] for r in trials_table(study, cfg)] == ["COMPLETE"]


def test_status_after_ctrl_c(tmp_path):
    cfg, study = interrupted_study(tmp_path, complete=0)
    out = render(cfg)
    assert "stopped: 0 finished (0 failed), 2 interrupted, 2 waiting" in out
    assert out.count("INTERRUPTED") == 2 and out.count("WAITING") == 2
    assert "interrupted by the user (re-run on resume)" in out and "queued: re-run of trial 0" in out
    assert "no complete trial within the budget yet" in out
    assert "re-runs the interrupted trials" in out


def test_status_orphaned_running_trial(tmp_path):
    cfg, study = interrupted_study(tmp_path)
    study.ask(DIST)  # a driver killed with SIGKILL leaves its trial RUNNING (and no live lease)
    out = render(cfg)  # (the trial it asked was the first waiting one, the re-run of trial 1)
    assert "1 finished (0 failed), 2 interrupted, 1 waiting, 1 left running by a stopped driver" in out
    assert "ORPHANED" in out and "left running by a stopped driver (re-run on resume)" in out
    assert "Pareto front within the budget" in out and "*" in out


@pytest.mark.parametrize("argv", [["stopped"], ["--study", "stopped"], ["stopped", "--study", "stopped"]])
def test_study_positional_or_option(tmp_path, capsys, argv):
    cfg, _ = interrupted_study(tmp_path)
    assert main(["status", *argv, "--storage", cfg.storage_url]) == 0
    assert "2 interrupted" in capsys.readouterr().out


def test_study_missing_or_two_different(tmp_path, capsys):
    cfg, _ = interrupted_study(tmp_path)
    assert main(["status", "--storage", cfg.storage_url]) == 2
    assert "which study?" in capsys.readouterr().err
    assert main(["status", "stopped", "--study", "other", "--storage", cfg.storage_url]) == 2
    assert "two different studies" in capsys.readouterr().err
    assert optuna.load_study(study_name="stopped", storage=cfg.storage_url).trials  # untouched


def test_status_with_a_live_driver(tmp_path):
    from automix.study.storage import StudyLease

    cfg, study = interrupted_study(tmp_path)
    lease = StudyLease(cfg.storage_url, cfg.name, heartbeat_s=60)
    lease.acquire()
    try:
        study.ask(DIST)
        out = render(cfg)
    finally:
        lease.release()
    assert "2 interrupted, 1 waiting, 1 running" in out and "driven by PID" in out
    assert "RUNNING" in out and "ORPHANED" not in out and "re-runs the interrupted" not in out


def test_piped_status_keeps_one_line_per_trial(tmp_path, capsys, monkeypatch):
    """`automix status NAME > file` (or into `grep`): rows are not wrapped at rich's 80 columns,
    so each trial stays on one line; COLUMNS still sets the width."""
    cfg, _ = interrupted_study(tmp_path)
    monkeypatch.delenv("COLUMNS", raising=False)
    assert main(["status", "stopped", "--storage", cfg.storage_url]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert max(map(len, lines)) > 80
    assert sum("INTERRUPTED" in line for line in lines) == 2
    assert sum("WAITING" in line for line in lines) == 2
    monkeypatch.setenv("COLUMNS", "70")
    assert main(["status", "stopped", "--storage", cfg.storage_url]) == 0
    assert max(map(len, capsys.readouterr().out.splitlines())) <= 70
