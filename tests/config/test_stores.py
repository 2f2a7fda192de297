"""Where a study's stores are: the working directory's by default, relative SQLite paths from the
study file's directory, and a recorded store followed into a copied project (or not written to)."""

from __future__ import annotations

from automix.config.locations import relocate_recorded_store, resolve_store
from automix.config.study import load_study

STUDY = """name: s
methods: [qlora]
search_space: {path: search_spaces/quickstart.yaml}
objectives: {quality: perplexity}
memory_budget: 5MiB
n_trials: 2
"""


def test_stores_default_to_the_working_directory_and_relative_paths_to_the_study_file(tmp_path, monkeypatch):
    (tmp_path / "studies").mkdir()
    f = tmp_path / "studies" / "s.yaml"
    f.write_text(STUDY)
    monkeypatch.chdir(tmp_path)
    cfg = load_study(f)
    assert cfg.storage_url == f"sqlite:///{tmp_path}/automix-optuna.db"
    assert cfg.tracking == f"sqlite:///{tmp_path}/automix-mlflow.db"
    f.write_text(STUDY + "storage: sqlite:///stores/o.db\ntracking_uri: sqlite:////abs/m.db\n")
    cfg = load_study(f)
    assert cfg.storage_url == f"sqlite:///{tmp_path}/studies/stores/o.db"
    assert cfg.tracking == "sqlite:////abs/m.db"
    assert resolve_store("postgresql+psycopg2://u@h/db", tmp_path) == "postgresql+psycopg2://u@h/db"


def test_a_recorded_store_follows_a_copied_project_or_is_not_used():
    same = relocate_recorded_store("sqlite:////p/m.db", "sqlite:////p/o.db", "sqlite:////p/o.db")
    assert same == ("sqlite:////p/m.db", "")
    moved, note = relocate_recorded_store("sqlite:////p/sub/m.db", "sqlite:////p/o.db", "sqlite:////c/o.db")
    assert moved == "sqlite:////c/sub/m.db" and "copied or moved" in note
    other, note = relocate_recorded_store("sqlite:////shared/m.db", "sqlite:////p/o.db", "sqlite:////c/o.db")
    assert other is None and "belongs to another project and is not written to" in note
    assert relocate_recorded_store("http://mlflow:5000", "sqlite:////p/o.db", "sqlite:////c/o.db") == (
        "http://mlflow:5000", "")
