"""`automix report` on small finished studies run through the real driver (local executor,
temp SQLite stores): every view with the right traces and points, a browser shows the page
(not blank, no console errors), the artifacts land on the MLflow parent run, and a study
without finished trials gives a clear message."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import pytest

pytest.importorskip("mlflow")
pytest.importorskip("plotly")

import optuna  # noqa: E402

from automix.dashboards.data import NoFinishedTrialsError, ReportDataError, load_study_data  # noqa: E402
from automix.dashboards.report import build_report  # noqa: E402
from automix.study.executors import LocalExecutor  # noqa: E402
from automix.testing import SyntheticBackend, synthetic_trial  # noqa: E402
from automix.config.study import StudyConfig  # noqa: E402
from automix.study.tracking import Tracker  # noqa: E402

LAYERS = [f"model.layers.{b}.{n}" for b in range(2) for n in ("self_attn.q_proj", "mlp.down_proj")]
PRUNES = (0.0, 0.25)
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def layered_trial(payload: Mapping[str, Any]) -> dict:
    """The orchestration benchmark's synthetic trial plus what a real trial reports: a memory
    breakdown, and a (noisy) predicted accuracy as a predictor would give."""
    out = synthetic_trial(payload)
    if out.get("status") != "ok":
        return out
    prune = float(np.mean(payload["prunes"]))
    out["accuracy"] = out["accuracy"] * (1.0 - 0.3 * prune)
    weights = out["predicted_memory_bytes"] * (1.0 - prune)
    parts = dict(weights=int(weights * 0.8), quant_metadata=int(weights * 0.2), adapters=2048,
                 gradients=2048, optimizer_states=4096, activations=8192 if payload["method"] == "lora" else 6144,
                 transient=0)
    parts["total"] = sum(parts.values())
    out["memory_predicted"] = parts
    out["predicted_memory_bytes"] = parts["total"]
    out["peak_memory_bytes"] = int(parts["total"] * (1.02 + 0.01 * (sum(payload["bits"]) % 3)))
    noise = np.random.default_rng(sum(payload["bits"]) * 7 + int(10 * prune)).normal(0, 0.02)
    out["predicted_accuracy"] = float(out["accuracy"] + noise)
    return out


class LayeredBackend(SyntheticBackend):
    """Bits and prune ratio per named layer, recorded as the real backend records them."""

    function = staticmethod(layered_trial)

    def __init__(self, methods: list[str]) -> None:
        super().__init__(methods, n_blocks=len(LAYERS), cols=32)
        from optuna.distributions import CategoricalDistribution

        for i in range(len(LAYERS)):
            self.distributions[f"prune_{i}"] = CategoricalDistribution(list(PRUNES))

    def _settings(self, params: Mapping[str, Any]) -> dict[str, dict]:
        return {n: {"bits": int(params[f"bits_{i}"]), "group_size": 64,
                    "prune": float(params[f"prune_{i}"]), "rank": 8} for i, n in enumerate(LAYERS)}

    def predicted_memory(self, params: Mapping[str, Any]) -> float:
        prune = float(np.mean([params[f"prune_{i}"] for i in range(len(LAYERS))]))
        base = super().predicted_memory(params) * (1.0 - prune)
        act = 8192 if params["method"] == "lora" else 6144
        return float(int(base * 0.8) + int(base * 0.2) + 2048 + 2048 + 4096 + act)

    def payload(self, params: Mapping[str, Any]) -> dict:
        out = super().payload(params)
        out["prunes"] = [float(params[f"prune_{i}"]) for i in range(len(LAYERS))]
        return out

    def describe(self, params: Mapping[str, Any]) -> tuple[str, dict, dict]:
        from automix.config.layers import compact_layers

        s = self._settings(params)
        summary = {"avg_bits": float(np.mean([v["bits"] for v in s.values()])),
                   "avg_prune": float(np.mean([v["prune"] for v in s.values()])), "avg_rank": 8.0,
                   "n_layers": len(s)}
        return params["method"], summary, compact_layers(s)


def run_small_study(tmp: Path, name: str, sampler: str, n_trials: int = 14, seed: int = 3) -> StudyConfig:
    from automix.study.loop import run_study

    # The synthetic backend loads no model: name none on disk, so the report takes the layer
    # names the trials recorded (with builtin:tiny it would rightly show all 28 of its layers).
    cfg = StudyConfig(name=name, model=str(tmp / "synthetic-model"), task="boolq", methods=["lora", "qlora"],
                      search_space={"path": "synthetic"},
                      memory_budget=22500, n_trials=n_trials, workers=1, sampler=sampler, sampler_seed=seed,
                      storage=f"sqlite:///{tmp}/optuna.db", tracking_uri=f"sqlite:///{tmp}/mlflow.db")
    backend = LayeredBackend(cfg.methods)
    run_study(cfg, backend, executor=LocalExecutor(backend.function), progress=False, write_artifacts=False)
    return cfg


# -- shared studies and reports ----------------------------------------------------------------

def _fast_tmp(factory: pytest.TempPathFactory, name: str) -> Path:
    """SQLite commits cost ~20 ms each on a busy disk; tmpfs makes the studies take seconds."""
    import os
    import tempfile

    shm = Path("/dev/shm")
    if shm.is_dir() and os.access(shm, os.W_OK):
        return Path(tempfile.mkdtemp(prefix=f"automix-{name}-", dir=shm))
    return factory.mktemp(name)


@pytest.fixture(scope="module")
def stores(tmp_path_factory):
    d = _fast_tmp(tmp_path_factory, "report")
    try:
        cfgs = {"random": run_small_study(d, "cmp-random", "random"),
                "tpe": run_small_study(d, "cmp-tpe", "tpe", seed=5)}
        # a study that exists but has no finished trial (a search that is just starting)
        storage = f"sqlite:///{d}/optuna.db"
        empty = optuna.create_study(study_name="empty", storage=storage, directions=["maximize", "minimize"])
        empty.set_user_attr("config", {"name": "empty", "memory_budget": 30000, "sampler": "random"})
        empty.ask()  # RUNNING, not finished
        yield d, cfgs
    finally:
        if str(d).startswith("/dev/shm/"):
            shutil.rmtree(d, ignore_errors=True)


@pytest.fixture(scope="module")
def single(stores):
    d, cfgs = stores
    cfg = cfgs["random"]
    rep = build_report(cfg.name, storage=cfg.storage_url, out=d / "single")
    return cfg, rep


@pytest.fixture(scope="module")
def compared(stores):
    d, cfgs = stores
    cfg = cfgs["random"]
    rep = build_report(cfg.name, storage=cfg.storage_url, out=d / "compare", compare=["cmp-tpe"], png=False)
    return cfgs, rep


def _decode(v: Any) -> Any:
    """plotly serialises numpy arrays as {"dtype", "bdata"} (base64); lists stay lists."""
    import base64

    if isinstance(v, dict) and "bdata" in v:
        arr = np.frombuffer(base64.b64decode(v["bdata"]), dtype=np.dtype(v["dtype"]))
        return arr.reshape(v["shape"]) if "shape" in v and isinstance(v["shape"], list) else (
            arr.reshape([int(x) for x in str(v["shape"]).split(",")]) if "shape" in v else arr)
    return v


def html_figures(path: Path) -> dict[str, dict]:
    """The figures embedded in a report page: view name -> {"data": [...], "layout": {...}}."""
    text = path.read_text()
    dec = json.JSONDecoder()
    out = {}
    for m in re.finditer(r'Plotly\.newPlot\(\s*"view-([\w.-]+)",\s*', text):
        data, end = dec.raw_decode(text, m.end())
        rest = re.match(r"\s*,\s*", text[end:])
        layout, _ = dec.raw_decode(text, end + rest.end())
        for tr in data:
            for k in ("x", "y", "z"):
                if k in tr:
                    tr[k] = _decode(tr[k])
        out[m.group(1)] = {"data": data, "layout": layout}
    return out


def complete_trials(cfg: StudyConfig) -> list:
    study = optuna.load_study(study_name=cfg.name, storage=cfg.storage_url)
    return [t for t in study.get_trials() if t.state.name == "COMPLETE"]


def mlflow_trial_tags(cfg: StudyConfig) -> dict[int, dict]:
    t = Tracker(cfg.tracking, cfg.name)
    runs = t.client.search_runs([t.experiment_id], filter_string="tags.`automix.role` = 'trial'")
    return {int(r.data.tags["automix.trial"]): r.data.tags for r in runs}


# -- the views -----------------------------------------------------------------------------------

def test_report_has_every_view_inlined(single):
    _, rep = single
    text = rep.html.read_text()
    figs = html_figures(rep.html)
    assert set(figs) == {"pareto", "hypervolume", "calibration", "layers", "memory"}
    assert "<script src" not in text  # opens offline: plotly.js is inlined
    assert len(text) > 1_000_000 and "Plotly.newPlot" in text
    assert rep.notes == []  # this study records everything the views need


def test_pareto_view_points_fronts_budget_and_hover(single):
    cfg, rep = single
    fig = html_figures(rep.html)["pareto"]
    trials = complete_trials(cfg)
    traces = fig["data"]
    methods = sorted({t.params["method"] for t in trials})
    assert [tr["meta"]["kind"] for tr in traces] == ["trials", "front"] * len(methods)
    tags = mlflow_trial_tags(cfg)
    scale = 1024.0  # the studies are tens of KiB
    for m, (pts, front) in zip(methods, zip(traces[::2], traces[1::2])):
        mine = [t for t in trials if t.params["method"] == m]
        assert len(pts["x"]) == len(mine)  # every trial a faint point
        assert pts["marker"]["opacity"] < 0.5
        assert sorted(np.round(np.asarray(pts["x"]) * scale)) == sorted(round(t.values[1]) for t in mine)
        # the step line is exactly the method's front the driver tagged in MLflow
        tagged = {n for n, tg in tags.items() if tg["method"] == m and tg["pareto_method"] == "true"}
        assert len(front["x"]) == len(tagged) > 0
        assert front["line"]["shape"] == "hv" and list(front["x"]) == sorted(front["x"])
        by_mem = {round(t.values[1]): t for t in mine if t.number in tagged}
        for x, y in zip(front["x"], front["y"]):
            assert by_mem[round(x * scale)].values[0] == pytest.approx(y)
        assert all(f"· {m}" in h for h in front["hovertext"])
    assert any(t.values[1] > cfg.memory_budget for t in trials)  # some trials break the budget...
    fronts = np.concatenate([np.asarray(tr["x"]) for tr in traces[1::2]])
    assert fronts.max() * scale <= cfg.memory_budget  # ...and no front point does
    hover = traces[0]["hovertext"][0]
    for word in ("trial", "avg bits", "prune", "rank", "memory", "KiB", "accuracy"):
        assert word in hover
    budget_lines = [s for s in fig["layout"]["shapes"] if s["x0"] == s["x1"]]
    assert [s["x0"] for s in budget_lines] == [pytest.approx(cfg.memory_budget / scale)]
    assert fig["layout"]["xaxis"]["title"]["text"] == "memory (KiB, lower is better)"
    assert fig["layout"]["yaxis"]["title"]["text"] == "accuracy (higher is better)"


def test_hypervolume_view_matches_the_driver(single):
    from automix.study.results import finished_trials, normalized_hypervolume

    cfg, rep = single
    fig = html_figures(rep.html)["hypervolume"]
    study = optuna.load_study(study_name=cfg.name, storage=cfg.storage_url)
    done = finished_trials(study)
    methods = sorted({t.params["method"] for t in done})
    assert [tr["name"] for tr in fig["data"]] == ["all methods", *methods]
    for tr in fig["data"]:
        y = np.asarray(tr["y"])
        assert len(y) == len(done) and np.all(np.diff(y) >= -1e-12)
    assert fig["data"][0]["y"][-1] == pytest.approx(normalized_hypervolume(done, cfg))
    # the same number the driver logged on the parent run
    t = Tracker(cfg.tracking, cfg.name)
    logged = [m.value for m in t.client.get_metric_history(t.parent_id, "hypervolume")]
    assert fig["data"][0]["y"][-1] == pytest.approx(logged[-1])
    for m, tr in zip(methods, fig["data"][1:]):
        mine = [x for x in done if x.params["method"] == m]
        assert tr["y"][-1] == pytest.approx(normalized_hypervolume(mine, cfg))
        assert tr["y"][-1] <= fig["data"][0]["y"][-1] + 1e-12


def test_calibration_view_pairs_and_rank_correlation(single):
    from scipy.stats import kendalltau

    cfg, rep = single
    fig = html_figures(rep.html)["calibration"]
    trials = complete_trials(cfg)
    points = [tr for tr in fig["data"] if tr["meta"]["kind"] == "points"]
    ident = [tr for tr in fig["data"] if tr["meta"]["kind"] == "identity"]
    assert len(ident) == 2 and all(list(tr["x"]) == list(tr["y"]) for tr in ident)
    for panel in ("accuracy", "memory"):
        mine = [tr for tr in points if tr["meta"]["panel"] == panel]
        assert sum(len(tr["x"]) for tr in mine) == len(trials)
    pred = [t.user_attrs["result"]["predicted_accuracy"] for t in trials]
    meas = [t.values[0] for t in trials]
    acc = [tr for tr in points if tr["meta"]["panel"] == "accuracy"]
    assert sorted(np.concatenate([tr["x"] for tr in acc])) == pytest.approx(sorted(pred))
    titles = [a["text"] for a in fig["layout"]["annotations"]]
    tau = kendalltau(pred, meas).statistic
    assert any(s.startswith("accuracy: Kendall τ = " + f"{tau:.2f}") for s in titles)
    assert any(s.startswith("memory: Kendall τ = ") for s in titles)


def test_layers_heatmap_shows_front_settings(single):
    cfg, rep = single
    fig = html_figures(rep.html)["layers"]
    data = load_study_data(cfg.name, cfg.storage_url)
    front = data.front_frame
    assert [tr["name"] for tr in fig["data"]] == ["bits", "prune"]  # every rank is 8: not drawn
    study = optuna.load_study(study_name=cfg.name, storage=cfg.storage_url)
    order = sorted(LAYERS, key=lambda n: [int(p) if p.isdigit() else p for p in re.split(r"(\d+)", n)])
    for tr in fig["data"]:
        z = np.asarray(tr["z"], dtype=float)
        assert z.shape == (len(front), len(LAYERS))
        assert list(tr["x"]) == [n.removeprefix("model.layers.") for n in order]
        for row, number in zip(z, front.number):
            p = study.trials[int(number)].params
            want = {"bits": [p[f"bits_{LAYERS.index(n)}"] for n in order],
                    "prune": [p[f"prune_{LAYERS.index(n)}"] for n in order]}[tr["name"]]
            assert list(row) == pytest.approx(want)
        assert all(y.startswith(f"#{int(n)} ") for y, n in zip(tr["y"], front.number))


def test_memory_breakdown_stacks_to_the_memory_model(single):
    cfg, rep = single
    fig = html_figures(rep.html)["memory"]
    bars = [tr for tr in fig["data"] if tr["type"] == "bar"]
    assert [tr["meta"]["part"] for tr in bars] == ["weights", "quant_metadata", "adapters", "gradients",
                                                   "optimizer_states", "activations"]  # transient is 0
    assert fig["layout"]["barmode"] == "stack"
    study = optuna.load_study(study_name=cfg.name, storage=cfg.storage_url)
    front = load_study_data(cfg.name, cfg.storage_url).front_frame
    totals = np.sum([np.asarray(tr["y"], dtype=float) for tr in bars], axis=0) * 1024
    for total, number in zip(totals, front.number):
        assert total == pytest.approx(study.trials[int(number)].user_attrs["result"]["memory_predicted"]["total"])
    measured = [tr for tr in fig["data"] if tr["meta"]["kind"] == "measured"]
    assert len(measured) == 1 and len(measured[0]["y"]) == len(front)


def test_pngs_written_and_logged_on_the_parent_run(single):
    cfg, rep = single
    assert rep.png_error is None
    assert sorted(p.name for p in rep.pngs) == sorted(f"{k}.png" for k in
                                                       ("pareto", "hypervolume", "calibration", "layers", "memory"))
    for p in rep.pngs:
        assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and p.stat().st_size > 10_000
    t = Tracker(cfg.tracking, cfg.name)
    assert rep.mlflow_run_id == t.parent_id
    logged = {Path(a.path).name for a in t.client.list_artifacts(t.parent_id, "report")}
    assert {"report.html", *(p.name for p in rep.pngs)} <= logged


def test_compare_studies_in_one_report(compared):
    cfgs, rep = compared
    figs = html_figures(rep.html)
    assert set(figs) == {"pareto", "hypervolume", "calibration", "layers-cmp-random", "memory-cmp-random",
                         "layers-cmp-tpe", "memory-cmp-tpe"}
    pareto = figs["pareto"]["data"]
    assert len(pareto) == 2 * 2 * 2  # studies x methods x (points, front)
    for cfg in cfgs.values():
        mine = [tr for tr in pareto if tr["meta"]["study"] == cfg.name and tr["meta"]["kind"] == "trials"]
        assert sum(len(tr["x"]) for tr in mine) == len(complete_trials(cfg))
        assert all(tr["name"].startswith(cfg.name + " · ") for tr in mine)
    hv = figs["hypervolume"]["data"]
    assert [tr["meta"]["kind"] for tr in hv] == ["study", "method", "method"] * 2
    assert "cmp-random (random)" in hv[0]["name"] and "cmp-tpe (tpe)" in hv[3]["name"]
    assert rep.pngs == [] and rep.mlflow_path == "report/compare-cmp-tpe"
    t = Tracker(cfgs["random"].tracking, "cmp-random")
    assert "report.html" in {Path(a.path).name for a in t.client.list_artifacts(t.parent_id, rep.mlflow_path)}


# -- in a browser -------------------------------------------------------------------------------

needs_chromium = pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (`make setup` "
                                    "or `apt-get install chromium` installs it)")
_BROWSER = ["--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--enable-logging=stderr",
            "--v=0", "--virtual-time-budget=8000"]


def browse(page: Path, *args: str) -> tuple[str, list[str]]:
    """Open `page` in headless Chromium: (stdout, the page's console messages)."""
    proc = subprocess.run([CHROMIUM, *_BROWSER, *args, page.resolve().as_uri()], capture_output=True,
                          text=True, timeout=180)
    return proc.stdout, [line for line in proc.stderr.splitlines() if ":CONSOLE" in line]


@needs_chromium
def test_console_check_catches_a_broken_page(tmp_path):
    page = tmp_path / "broken.html"
    page.write_text("<html><body><script>console.error('bad'); notDefined();</script></body></html>")
    _, console = browse(page, "--dump-dom")
    assert any("Uncaught ReferenceError" in line for line in console)


@needs_chromium
def test_browser_shows_the_plots_without_console_errors(single):
    from PIL import Image

    cfg, rep = single
    shot = rep.out_dir / "screenshot.png"
    _, console = browse(rep.html, f"--screenshot={shot}", "--window-size=1280,2600")
    assert console == []
    img = np.asarray(Image.open(shot).convert("RGB"))
    colours = len(np.unique(img.reshape(-1, 3), axis=0))
    ink = (img.min(axis=2) < 200).mean()
    assert colours > 500 and ink > 0.03, (colours, ink)  # plots drawn, not a blank page
    dom, console = browse(rep.html, "--dump-dom")
    assert console == []
    starts = [(m.start(), m.group(1)) for m in re.finditer(r'id="view-([\w.-]+)"', dom)]
    sections = {name: dom[a:(starts[i + 1][0] if i + 1 < len(starts) else len(dom))]
                for i, (a, name) in enumerate(starts)}
    assert set(sections) == {"pareto", "hypervolume", "calibration", "layers", "memory"}
    for seg in sections.values():
        assert "js-plotly-plot" in seg[:200] and "main-svg" in seg  # Plotly rendered every view
    data = load_study_data(cfg.name, cfg.storage_url)
    drawn = data.complete.front_method.sum() + len(data.complete)
    assert sections["pareto"].count('class="point"') == drawn
    assert sections["calibration"].count('class="point"') == 2 * len(data.complete)
    assert sections["layers"].count('class="hm"') == 2
    assert sections["hypervolume"].count('class="js-line"') >= 3


def test_report_read_from_mlflow_matches_the_optuna_one(single):
    cfg, rep = single
    ml = build_report(cfg.name, tracking_uri=cfg.tracking, out=rep.out_dir / "from-mlflow", png=False,
                      log_mlflow=False, source="mlflow")
    a, b = html_figures(rep.html), html_figures(ml.html)
    for view in ("pareto", "hypervolume", "layers"):
        assert len(a[view]["data"]) == len(b[view]["data"])
        for ta, tb in zip(a[view]["data"], b[view]["data"]):
            for k in ("x", "y", "z"):
                if k in ta:
                    assert np.asarray(ta[k], dtype=object).tolist() == np.asarray(tb[k], dtype=object).tolist() \
                        or np.allclose(np.asarray(ta[k], dtype=float), np.asarray(tb[k], dtype=float)), (view, k)
    calib = [tr for tr in b["calibration"]["data"] if tr["meta"]["kind"] == "points"]
    assert sum(len(tr["x"]) for tr in calib) == 2 * len(complete_trials(cfg))  # predicted accuracy is a metric
    assert b["memory"]["data"] == [] and any("Optuna storage only" in n for n in ml.notes)


# -- optuna-dashboard (`automix ui --optuna`) --------------------------------------------------

def test_optuna_dashboard_serves_history_and_importances_of_our_storage(stores):
    """optuna-dashboard's own API, called through its WSGI app on the driver's storage."""
    import io
    import sys

    optuna_dashboard = pytest.importorskip("optuna_dashboard")
    _, cfgs = stores
    app = optuna_dashboard.wsgi(cfgs["random"].storage_url)

    def get(path: str) -> dict:
        status = {}
        env = {"REQUEST_METHOD": "GET", "PATH_INFO": path, "QUERY_STRING": "", "SERVER_NAME": "localhost",
               "SERVER_PORT": "80", "SERVER_PROTOCOL": "HTTP/1.1", "wsgi.url_scheme": "http",
               "wsgi.input": io.BytesIO(), "wsgi.errors": sys.stderr}
        body = b"".join(app(env, lambda s, h, e=None: status.setdefault("s", s)))
        assert status["s"].startswith("200"), (path, status, body[:300])
        return json.loads(body)

    studies = {s["study_name"]: s["study_id"] for s in get("/api/studies")["study_summaries"]}
    assert {"cmp-random", "cmp-tpe", "empty"} <= set(studies)
    detail = get(f"/api/studies/{studies['cmp-random']}")
    assert len([t for t in detail["trials"] if t["state"] == "Complete"]) == len(complete_trials(cfgs["random"]))
    assert any(u["key"] == "config" for u in detail["user_attrs"])
    importances = get(f"/api/studies/{studies['cmp-random']}/param_importances")["param_importances"]
    assert len(importances) == 2 and {p["name"] for p in importances[0]} >= {"method", "bits_0", "prune_0"}


# -- errors and missing data ---------------------------------------------------------------------

def test_study_without_finished_trials_is_a_clear_error(stores, tmp_path):
    d, cfgs = stores
    storage = cfgs["random"].storage_url
    with pytest.raises(NoFinishedTrialsError, match="study 'empty' .* has no finished trials yet"):
        build_report("empty", storage=storage, out=tmp_path / "empty", png=False)
    page = (tmp_path / "empty" / "report.html").read_text()
    assert "has no finished trials yet" in page and "Plotly" not in page and 'id=no-trials' in page


def test_cli_errors_on_unknown_and_empty_studies(stores, tmp_path, capsys):
    from automix.cli import main

    d, cfgs = stores
    storage = cfgs["random"].storage_url
    assert main(["report", "--study", "empty", "--storage", storage, "--out", str(tmp_path / "e")]) == 2
    err = capsys.readouterr().err
    assert "no finished trials" in err and str(tmp_path / "e" / "report.html") in err
    assert main(["report", "--study", "nope", "--storage", storage, "--no-png"]) == 2
    err = capsys.readouterr().err
    assert "study 'nope' not found" in err and "'cmp-random'" in err
    with pytest.raises(ReportDataError, match="no Optuna storage at"):
        load_study_data("x", f"sqlite:///{tmp_path}/missing.db")


def test_compare_leaves_out_an_empty_study_with_a_note(stores, tmp_path):
    d, cfgs = stores
    rep = build_report("cmp-random", storage=cfgs["random"].storage_url, out=tmp_path / "c",
                       compare=["empty"], png=False, log_mlflow=False)
    assert any("left out" in n and "'empty'" in n for n in rep.notes)
    assert "left out" in rep.html.read_text() and rep.mlflow_run_id is None


def test_page_never_shows_a_database_password(single):
    from automix.dashboards.report import render_html

    cfg, rep = single
    data = load_study_data(cfg.name, cfg.storage_url)
    data.storage = "postgresql://automix:s3cret-pw@db.example:5432/optuna"
    page = render_html([data], {"pareto": rep.figures["pareto"]})
    assert "s3cret-pw" not in page and "postgresql://automix:***@db.example:5432/optuna" in page


def test_exported_pick_is_marked_and_captions_fit_the_study(stores, tmp_path):
    from automix.export import select_trial

    d, cfgs = stores
    cfg = cfgs["tpe"]
    study = optuna.load_study(study_name=cfg.name, storage=cfg.storage_url)
    pick = select_trial(study, cfg)
    study.set_user_attr("exported", {str(pick.number): str(tmp_path / "out")})  # what export_trial records
    rep = build_report(cfg.name, storage=cfg.storage_url, out=tmp_path / "rep", png=False, log_mlflow=False)
    text = rep.html.read_text()
    stars = [tr for tr in html_figures(rep.html)["pareto"]["data"] if tr.get("meta", {}).get("kind") == "exported"]
    assert len(stars) == 1 and list(stars[0]["y"]) == [pytest.approx(pick.values[0])]
    assert f"<td>{pick.number} (exported)</td>" in text
    assert "quality is the accuracy" in text and "full accuracy" not in text
    assert text.count("<h2>front configurations</h2>") == 1 and "<h3>" not in text  # one heading, not two


def test_report_on_a_missing_store_writes_nothing(tmp_path, monkeypatch, capsys):
    from automix.cli import main

    monkeypatch.chdir(tmp_path)
    assert main(["report", "nothere", "--no-mlflow"]) == 2
    assert "no Optuna storage" in capsys.readouterr().err
    assert not (tmp_path / "reports").exists()
