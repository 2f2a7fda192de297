"""A copied project writes only into its own stores: `automix report` and a resumed study's
tracker in a copy of a project log into the copy's MLflow database and artifact directory, and
leave every file of the original untouched."""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

from automix.cli import main
from automix.study.storage import study_from_ref
from automix.study.tracking import Tracker
from tests.dashboards.test_report import run_small_study


def snapshot(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def test_a_copied_project_writes_only_into_its_own_stores(tmp_path, monkeypatch, capsys):
    project, copy = tmp_path / "project", tmp_path / "copy"
    project.mkdir()
    run_small_study(project, "cp", "random", n_trials=4)
    shutil.copytree(project, copy)
    before = snapshot(project)

    monkeypatch.chdir(copy)
    storage = f"sqlite:///{copy}/optuna.db"
    assert main(["report", "cp", "--storage", storage, "--no-png", "--out", str(copy / "reports")]) == 0
    out = capsys.readouterr().out
    assert f"using the MLflow store sqlite:///{copy}/mlflow.db, not sqlite:///{project}/mlflow.db" in out
    assert f"now go to {(copy / 'automix-mlartifacts').as_uri()}" in out
    assert list((copy / "automix-mlartifacts" / "cp").rglob("report/report.html"))

    cfg = study_from_ref("cp", storage)  # what status, export and a resumed search read
    assert cfg.tracking == f"sqlite:///{copy}/mlflow.db"
    tracker = Tracker(cfg.tracking, "cp")
    tracker.log_trial(99, method="qlora", status="ok", params={}, metrics={"memory_objective": 1.0},
                      layers={"default": {"bits": 4}})
    assert [p for p in (copy / "automix-mlartifacts" / "cp").rglob("layers.yaml")]
    assert snapshot(project) == before  # the original project: not one byte written
