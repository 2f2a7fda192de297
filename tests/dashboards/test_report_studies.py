"""`automix report` on studies other than the shared two: one that records less (messages, not
empty axes), one from the real study backend (real layer names, the memory model's breakdown),
and a perplexity study (fronts fall, hypervolume as the driver computes it)."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("mlflow")
pytest.importorskip("plotly")

import optuna  # noqa: E402

from automix.dashboards.data import load_study_data  # noqa: E402
from automix.dashboards.report import build_report  # noqa: E402
from automix.study.executors import LocalExecutor  # noqa: E402
from automix.testing import SyntheticBackend  # noqa: E402
from automix.config.study import StudyConfig  # noqa: E402
from tests.dashboards.test_report import (LayeredBackend, _fast_tmp, complete_trials, html_figures,  # noqa: E402
                         mlflow_trial_tags)


@pytest.fixture
def fast_dir(tmp_path_factory):
    """A tmpfs directory for the study's SQLite stores (seconds, not a minute), removed after."""
    d = _fast_tmp(tmp_path_factory, "study")
    yield d
    shutil.rmtree(d, ignore_errors=True)


def test_study_that_records_less_degrades_to_messages(fast_dir, capsys):
    """The orchestration benchmark's backend records no predicted accuracy, no memory breakdown
    and block (not layer) settings: the report says so instead of drawing empty axes."""
    from automix.cli import main
    from automix.study.loop import run_study

    d = fast_dir
    cfg = StudyConfig(name="plain", task="boolq", methods=["lora", "qlora"], search_space={"path": "synthetic"},
                      memory_budget=5000, n_trials=6, workers=1, sampler="random",
                      storage=f"sqlite:///{d}/optuna.db", tracking_uri=f"sqlite:///{d}/mlflow.db")
    backend = SyntheticBackend(cfg.methods, n_blocks=3, cols=32)
    run_study(cfg, backend, executor=LocalExecutor(backend.function), progress=False, write_artifacts=False)
    out = d / "rep"
    assert main(["report", "--study", "plain", "--storage", cfg.storage_url, "--out", str(out), "--no-png"]) == 0
    printed = capsys.readouterr().out
    assert f"report: {out / 'report.html'}" in printed and "no predicted accuracy is recorded" in printed
    assert "logged under 'report/'" in printed
    figs = html_figures(out / "report.html")
    calib = figs["calibration"]
    titles = [a["text"] for a in calib["layout"]["annotations"]]
    assert "accuracy: no predicted value recorded" in titles
    assert "no trial records a predicted accuracy" in titles
    assert sum(len(tr["x"]) for tr in calib["data"] if tr["meta"]["kind"] == "points") == len(complete_trials(cfg))
    mem = figs["memory"]
    assert mem["data"] == [] and "no memory breakdown" in mem["layout"]["annotations"][0]["text"]
    layers = figs["layers"]["data"]  # the synthetic backend's per-block bits still show
    assert [tr["name"] for tr in layers] == ["bits"] and list(layers[0]["x"]) == ["block0", "block1", "block2"]


def test_report_on_the_real_backend_records(fast_dir):
    """The production path: `AutomixBackend` on a config-only Llama directory with the quickstart
    search space (compact layer configurations with real layer names), a stand-in trial
    function reporting the memory model's breakdown as `run_trial` does."""
    pytest.importorskip("transformers")
    from transformers import LlamaConfig

    from automix.trial import memory
    from automix.study.loop import run_study
    from automix.config.layers import LayerConfig
    from automix.study.backend import AutomixBackend

    d = fast_dir
    LlamaConfig(hidden_size=128, intermediate_size=256, num_hidden_layers=4, num_attention_heads=4,
                num_key_value_heads=2, vocab_size=512, architectures=["LlamaForCausalLM"]
                ).save_pretrained(d / "model")
    space = Path(__file__).resolve().parents[2] / "search_spaces" / "quickstart.yaml"
    cfg = StudyConfig(name="real", model=str(d / "model"), task="boolq", methods=["qlora", "loftq"],
                      search_space={"path": str(space)}, memory_budget="11MiB", n_trials=6, workers=1,
                      sampler="random", storage=f"sqlite:///{d}/optuna.db", tracking_uri=f"sqlite:///{d}/mlflow.db")
    backend = AutomixBackend(cfg)

    def trial(payload: dict) -> dict:
        ls = LayerConfig.from_dict(payload["layers"]).resolve(backend.layer_names)
        est = memory.estimate(backend.arch, ls, payload["method"], batch_size=4, seq_len=64, config=backend.hf_config)
        bits = np.mean([s.bits for s in ls.values()])
        prune = np.mean([s.prune for s in ls.values()])
        return {"status": "ok", "accuracy": float(0.5 + 0.4 * (1 - np.exp(-bits / 3)) * (1 - prune)),
                "peak_memory_bytes": int(est.total * 1.03), "predicted_memory_bytes": est.total,
                "memory_predicted": est.to_dict()}

    run_study(cfg, backend, executor=LocalExecutor(trial), progress=False, write_artifacts=False)
    rep = build_report("real", storage=cfg.storage_url, out=d / "rep", png=False)
    assert not any("per-layer" in n or "breakdown" in n for n in rep.notes)
    figs = html_figures(rep.html)
    data = load_study_data("real", cfg.storage_url)
    assert len(data.front_frame) > 0
    study = optuna.load_study(study_name="real", storage=cfg.storage_url)
    bits = next(tr for tr in figs["layers"]["data"] if tr["name"] == "bits")
    assert list(bits["x"]) == [n.removeprefix("model.layers.") for n in backend.layer_names]  # all 28 layers
    for row, number in zip(np.asarray(bits["z"], dtype=float), data.front_frame.number):
        want = LayerConfig.from_dict(study.trials[int(number)].user_attrs["layers"]).resolve(backend.layer_names)
        assert list(row) == [s.bits for s in want.values()]
    bars = [tr for tr in figs["memory"]["data"] if tr["type"] == "bar"]
    assert {"weights", "activations", "optimizer_states"} <= {tr["meta"]["part"] for tr in bars}


def test_perplexity_study_fronts_fall_and_hypervolume_matches_the_driver(fast_dir):
    from automix.study.results import finished_trials, normalized_hypervolume
    from automix.study.loop import run_study

    d = fast_dir
    cfg = StudyConfig(name="ppl", task="lm", objectives={"quality": "perplexity"}, methods=["lora", "qlora"],
                      search_space={"path": "synthetic"}, memory_budget=22500, n_trials=10, workers=1,
                      sampler="random", storage=f"sqlite:///{d}/optuna.db", tracking_uri=f"sqlite:///{d}/mlflow.db")
    backend = LayeredBackend(cfg.methods)
    run_study(cfg, backend, executor=LocalExecutor(backend.function), progress=False, write_artifacts=False)
    rep = build_report("ppl", storage=cfg.storage_url, out=d / "rep", png=False, log_mlflow=False)
    figs = html_figures(rep.html)
    assert figs["pareto"]["layout"]["yaxis"]["title"]["text"] == "perplexity (lower is better)"
    tags = mlflow_trial_tags(cfg)
    for tr in (t for t in figs["pareto"]["data"] if t["meta"]["kind"] == "front"):
        y = np.asarray(tr["y"])
        assert np.all(np.diff(y) < 0)  # more memory buys lower perplexity along a front
        m = tr["meta"]["method"]
        assert len(y) == sum(tg["method"] == m and tg["pareto_method"] == "true" for tg in tags.values())
    done = finished_trials(optuna.load_study(study_name="ppl", storage=cfg.storage_url))
    assert figs["hypervolume"]["data"][0]["y"][-1] == pytest.approx(normalized_hypervolume(done, cfg))
    assert any("predicted perplexity" in n for n in rep.notes)
