"""What the trackers show a person: a training curve over time in MLflow (not a vertical line),
and optuna-dashboard notes that give the memory objective's unit and say what the companion
study of a pruned search is."""

from __future__ import annotations

import optuna
from optuna_dashboard import get_note

from automix.config.study import StudyConfig
from automix.study.fidelity import FidelityLedger, make_pruner
from automix.study.tracking import Tracker
from tests.dashboards.test_report import run_small_study


def test_training_curve_points_are_spread_over_the_run(tmp_path):
    t = Tracker(f"sqlite:///{tmp_path}/m.db", "curve")
    run_id = t.log_trial(0, method="qlora", status="ok", params={}, metrics={"perplexity": 3.0},
                         histories={"train_loss": [(1, 2.0), (2, 1.5), (3, 1.2), (4, 1.1)]},
                         started=1000.0, finished=1040.0)
    points = t.client.get_metric_history(run_id, "train_loss")
    stamps = [p.timestamp for p in sorted(points, key=lambda p: p.step)]
    assert stamps == sorted(set(stamps)) and len(stamps) == 4      # one time per step, increasing
    assert 1_000_000 <= stamps[0] and stamps[-1] == 1_040_000      # within the run


def test_optuna_dashboard_notes_say_units_and_what_the_companion_is(tmp_path):
    cfg = run_small_study(tmp_path, "notes", "random", n_trials=3)
    study = optuna.load_study(study_name="notes", storage=cfg.storage_url)
    note = get_note(study)
    assert "**memory_bytes**, the training step's peak memory in bytes" in note and "`memory_mib`" in note
    done = [t for t in study.trials if t.state.name == "COMPLETE"]
    assert done and all(t.user_attrs["memory_mib"] == round(t.values[1] / 2**20, 4) for t in done)

    pruned = StudyConfig(**{**cfg.model_dump(exclude={"source"}), "name": "withpruner", "pruner": "median"})
    main = optuna.create_study(study_name="withpruner", storage=cfg.storage_url, directions=pruned.directions)
    ledger = FidelityLedger(pruned, main, make_pruner(pruned))
    assert ledger.study.study_name == "withpruner.fidelity"
    assert "companion of the automix study withpruner" in get_note(ledger.study)
    assert "Not a search of its own" in get_note(ledger.study)
