"""The files a finished study leaves: trials.csv, front.csv, hypervolume.csv and the front plot,
written to a folder and logged on the study's MLflow parent run."""

from __future__ import annotations

import csv
import io
import tempfile
from pathlib import Path
from typing import Any, Sequence

import plotly.graph_objects as go

from automix.study.results import finished_trials, front_table, normalized_hypervolume_history, trials_table

__all__ = ["write_study_artifacts"]

_COLUMNS = ["number", "state", "method", "quality", "memory_bytes", "feasible", "pareto",
            "pareto_method", "avg_bits", "accuracy", "perplexity", "peak_memory_bytes",
            "predicted_memory_bytes", "trainable_params", "train_seconds", "failure_reason"]


def _csv(rows: Sequence[dict]) -> str:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=_COLUMNS, extrasaction="ignore")
    w.writeheader()
    w.writerows(rows)
    return buf.getvalue()


def _front_figure(rows: Sequence[dict], cfg: Any) -> Any:
    fig = go.Figure()
    ok = [r for r in rows if r["state"] == "COMPLETE"]
    for m in sorted({r["method"] for r in ok}, key=str):  # a trial may record no method
        pts = [r for r in ok if r["method"] == m]
        fig.add_trace(go.Scatter(
            x=[r["memory_bytes"] / 2**20 for r in pts], y=[r["quality"] for r in pts], mode="markers",
            name=f"{m} trials", opacity=0.5, text=[f"trial {r['number']}, avg bits {r['avg_bits']}" for r in pts],
        ))
    front = front_table(rows)
    fig.add_trace(go.Scatter(x=[r["memory_bytes"] / 2**20 for r in front], y=[r["quality"] for r in front],
                             mode="lines+markers", line_shape="hv", name="Pareto front",
                             text=[f"trial {r['number']} ({r['method']})" for r in front]))
    fig.add_vline(x=cfg.memory_budget / 2**20, line_dash="dash", annotation_text="budget")
    fig.update_layout(title=f"{cfg.name}: {cfg.objectives.quality} vs memory",
                      xaxis_title="memory (MiB)", yaxis_title=cfg.objectives.quality)
    return fig


def write_study_artifacts(study: Any, cfg: Any, tracker: Any = None, out_dir: str | Path | None = None
                          ) -> list[str]:
    """trials.csv, front.csv, front.html (+ front.png when kaleido can render), hypervolume.csv.

    Written to `out_dir` (default: a temp dir) and logged on the study's MLflow parent run.
    Returns the names written; a missing PNG renderer is reported in `front_png.txt`.
    """
    rows = trials_table(study, cfg)
    tmp = None
    if out_dir is None:
        tmp = tempfile.TemporaryDirectory()
        out_dir = tmp.name
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "trials.csv").write_text(_csv(rows))
    (out / "front.csv").write_text(_csv(front_table(rows)))
    trials = sorted(finished_trials(study), key=lambda t: t.number)
    hv = enumerate(normalized_hypervolume_history(trials, cfg), start=1)
    (out / "hypervolume.csv").write_text("trials,hypervolume\n" + "".join(f"{n},{v:.6g}\n" for n, v in hv))
    fig = _front_figure(rows, cfg)
    fig.write_html(out / "front.html", include_plotlyjs="cdn")
    written = ["trials.csv", "front.csv", "hypervolume.csv", "front.html"]
    try:
        fig.write_image(out / "front.png")
        written.append("front.png")
    except Exception as err:  # kaleido or its browser missing: HTML only
        (out / "front_png.txt").write_text(f"front.png not rendered (HTML only): {type(err).__name__}: {err}\n")
        written.append("front_png.txt")
    if tracker is not None:
        for name in written:
            tracker.log_file(out / name)
    if tmp is not None:
        tmp.cleanup()
    return written
