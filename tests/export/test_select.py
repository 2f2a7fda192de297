"""Choosing and writing the configuration to keep: pick modes under a memory limit, the layer
file `automix trial --layers` reads, study artifacts, and the error for impossible limits."""

from __future__ import annotations

import csv

import optuna
import pytest
from optuna.distributions import CategoricalDistribution
from optuna.trial import TrialState, create_trial

from automix.export import ExportError, export_trial, select_trial
from automix.study.artifacts import write_study_artifacts
from automix.config.layers import LayerConfig
from automix.config.study import StudyConfig

NAMES = [f"model.layers.{i}.mlp.down_proj" for i in range(3)]


def layers(bits: int) -> dict:
    return {n: {"bits": bits if i else 8, "group_size": 32, "prune": 0.0, "rank": 4} for i, n in enumerate(NAMES)}


def make(tmp_path, quality="accuracy", points=None):
    cfg = StudyConfig(name="ex", task="boolq" if quality == "accuracy" else "lm", methods=["qlora"],
                      search_space={"path": "x"}, memory_budget=1000, n_trials=5,
                      objectives={"quality": quality}, storage=f"sqlite:///{tmp_path}/o.db",
                      tracking_uri=f"sqlite:///{tmp_path}/m.db")
    study = optuna.create_study(study_name="ex", storage=cfg.storage_url, directions=cfg.directions)
    # (quality, memory): a convex front 0-3, a dominated point 4, one over the budget 5, one failure
    points = points or [(0.50, 100), (0.70, 200), (0.74, 400), (0.75, 800), (0.60, 600), (0.90, 5000)]
    for i, (q, m) in enumerate(points):
        study.add_trial(create_trial(
            params={"method": "qlora"}, distributions={"method": CategoricalDistribution(["qlora"])},
            values=[q, m], user_attrs={"method": "qlora", "layers": layers(2 + i % 3), "memory_objective": m,
                                       "predicted_memory": m, "result": {"accuracy": q, "avg_bits": 3.0},
                                       "spec": {"model": "builtin:tiny", "layers": layers(2 + i % 3)}}))
    study.add_trial(create_trial(state=TrialState.FAIL, params={"method": "qlora"},
                                 distributions={"method": CategoricalDistribution(["qlora"])},
                                 user_attrs={"method": "qlora", "failure_reason": "nan: loss is nan"}))
    return cfg, study


def test_pick_modes(tmp_path):
    cfg, study = make(tmp_path)
    assert select_trial(study, cfg, None, "accuracy").number == 3  # best within the 1000 B budget
    assert select_trial(study, cfg, 450, "accuracy").number == 2
    assert select_trial(study, cfg, None, "memory").number == 0
    assert select_trial(study, cfg, None, "knee").number == 1  # where the front bends
    assert select_trial(study, cfg, 10_000, "accuracy").number == 5  # a larger limit than the budget
    with pytest.raises(ExportError, match=r"fits in 50 B: the smallest memory found is 100 B \(trial 0\)"):
        select_trial(study, cfg, 50)
    with pytest.raises(ExportError, match="--pick must be best, memory, knee"):
        select_trial(study, cfg, None, "speed")


def test_perplexity_is_minimised(tmp_path):
    cfg, study = make(tmp_path, "perplexity", [(30.0, 100), (12.0, 300), (11.0, 900), (40.0, 200)])
    assert select_trial(study, cfg, None, "accuracy").number == 2
    assert select_trial(study, cfg, 400, "accuracy").number == 1


def test_export_trial_writes_a_layer_file(tmp_path):
    cfg, study = make(tmp_path)
    t = select_trial(study, cfg, None, "accuracy")
    out = export_trial(study, cfg, t, tmp_path / "out")
    lc = LayerConfig.from_yaml(out / "layers.yaml")
    assert {n: s.to_dict() for n, s in lc.resolve(NAMES).items()} == t.user_attrs["layers"]
    assert "layers" in (out / "manifest.json").read_text()


def test_study_artifacts(tmp_path):
    cfg, study = make(tmp_path)
    names = write_study_artifacts(study, cfg, None, tmp_path / "art")
    assert {"trials.csv", "front.csv", "hypervolume.csv", "front.html"} <= set(names)
    front = list(csv.DictReader((tmp_path / "art" / "front.csv").open()))
    assert [int(r["number"]) for r in front] == [0, 1, 2, 3]  # sorted by memory, budget respected
    rows = list(csv.DictReader((tmp_path / "art" / "trials.csv").open()))
    assert len(rows) == 7 and rows[-1]["state"] == "FAIL" and "nan" in rows[-1]["failure_reason"]
    hv = list(csv.DictReader((tmp_path / "art" / "hypervolume.csv").open()))
    values = [float(r["hypervolume"]) for r in hv]
    assert values == sorted(values) and values[-1] > 0
    assert ("front.png" in names) or ("front_png.txt" in names)  # PNG, or the reason it is missing
