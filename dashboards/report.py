"""`automix report`: one self-contained HTML page (plotly.js inlined, opens offline) and a PNG
per view, logged on the study's MLflow parent run so they open inside the MLflow UI.

The report is built from the Optuna storage alone (see `automix.dashboards.data`); comparing
studies (e.g. the same model under different samplers) overlays them in the shared views and
adds a per-study heatmap and memory breakdown. A study with no finished trials is an error
(`NoFinishedTrialsError`), and the page written for it says so instead of showing empty plots.
"""

from __future__ import annotations

import html
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import plotly.graph_objects as go

from automix.dashboards import views
from automix.dashboards.data import (NoFinishedTrialsError, ReportDataError, StudyData, find_parent_run,
                                     load_study_data)
from automix.config.study import default_tracking_uri
from automix.study.tracking import adopt_artifact_roots
from automix.dashboards.mlflow_data import load_mlflow_study

__all__ = ["Report", "build_report", "study_figures", "render_html", "render_empty_html", "write_pngs"]

ARTIFACT_DIR = "report"

_HEADINGS = {"pareto": "Pareto fronts per method", "hypervolume": "Hypervolume over trials",
             "calibration": "Predictor and memory-model calibration", "layers": "Per-layer settings on the front",
             "memory": "Memory breakdown of the front"}
_CAPTIONS = {
    "pareto": "Every complete trial is a faint point; each method's front (within the memory budget, "
              "the trials the MLflow <code>pareto_method</code> tag marks) is a step line. Hover a point "
              "for its configuration.",
    "hypervolume": "Hypervolume of the feasible front after each finished trial, for all methods "
                   "together and each method alone, as a fraction of the box between quality 0 at the "
                   "memory budget and perfect quality at no memory; {quality_note}. Higher is better.",
    "calibration": "How well the search's accuracy predictor and the analytic memory model ranked the "
                   "configurations they proposed: points on the dashed line are exact.",
    "layers": "Per-layer settings of the configurations on the overall front, by increasing memory.",
    "memory": "Where the memory of each front configuration goes, according to the memory model; "
              "the black bars mark the measured peak.{device_note}",
}


@dataclass
class Report:
    """What `build_report` wrote."""

    out_dir: Path
    html: Path
    figures: dict[str, go.Figure]
    pngs: list[Path] = field(default_factory=list)
    png_error: str | None = None
    mlflow_run_id: str | None = None
    mlflow_path: str | None = None          # artifact folder on that run ("report", ...)
    mlflow_note: str | None = None
    notes: list[str] = field(default_factory=list)


def study_figures(studies: Sequence[StudyData]) -> dict[str, go.Figure]:
    """Every view, keyed by a file-safe name (per-study views carry the study's name)."""
    figs = {
        "pareto": views.pareto_view(studies),
        "hypervolume": views.hypervolume_view(studies),
        "calibration": views.calibration_view(studies),
    }
    many = len(studies) > 1
    for s in studies:
        suffix = f"-{s.name}" if many else ""
        figs[f"layers{suffix}"] = views.layers_view(s)
        figs[f"memory{suffix}"] = views.memory_breakdown_view(s)
    return figs


_STYLE = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:24px auto;max-width:1200px;
color:#222;padding:0 16px} h1{font-size:1.6em;margin-bottom:4px} h2{font-size:1.2em;margin-top:32px}
.meta{color:#555} table{border-collapse:collapse;font-size:.9em;margin:8px 0} td,th{border:1px solid #ddd;
padding:4px 8px;text-align:right} th{background:#f4f4f4} td.l,th.l{text-align:left} .note{color:#8a5a00}
.empty{font-size:1.2em;padding:24px;border:2px dashed #c66;background:#fff6f6;color:#822}
"""


def _summary_table(studies: Sequence[StudyData], unit: tuple[str, float]) -> str:
    head = ("<tr><th class=l>study</th><th class=l>sampler</th><th class=l>methods</th><th>complete</th>"
            f"<th>failed</th><th>budget ({unit[0]})</th><th>front size</th><th>best {studies[0].quality} "
            "in budget</th></tr>")
    body = []
    for s in studies:
        c, f = s.complete, s.front_frame
        best = (f.quality.max() if s.maximize else f.quality.min()) if len(f) else None
        body.append(
            f"<tr><td class=l>{html.escape(s.name)}</td><td class=l>{html.escape(s.sampler)}</td>"
            f"<td class=l>{html.escape(', '.join(s.methods))}</td><td>{len(c)}</td>"
            f"<td>{int((s.frame.state == 'FAIL').sum())}</td>"
            f"<td>{'—' if not s.budget else f'{s.budget / unit[1]:.4g}'}</td><td>{len(f)}</td>"
            f"<td>{'—' if best is None else f'{best:.4g}'}</td></tr>")
    return f"<table>{head}{''.join(body)}</table>"


def _front_table(s: StudyData, unit: tuple[str, float], titled: bool = False) -> str:
    """The front's configurations (the exported pick marked); under the study's name when the
    page shows several studies."""
    cols = ("number", "method", "quality", "memory", "measured_memory", "avg_bits", "avg_prune", "avg_rank")
    names = ("trial", "method", s.quality, f"memory ({unit[0]})", f"measured ({unit[0]})", "avg bits",
             "avg prune", "avg rank")
    rows = []
    for _, r in s.front_frame.iterrows():
        cells = []
        for c in cols:
            v = r[c]
            if c in ("memory", "measured_memory") and v == v and v is not None:
                v = f"{v / unit[1]:.4g}"
            elif isinstance(v, float):
                v = "—" if v != v else f"{v:.4g}"
            if c == "number" and int(v) in s.exported:
                v = f"{int(v)} (exported)"
            cells.append(f"<td{' class=l' if c == 'method' else ''}>{html.escape(str(v))}</td>")
        rows.append(f"<tr>{''.join(cells)}</tr>")
    head = "".join(f"<th{' class=l' if n == 'method' else ''}>{html.escape(n)}</th>" for n in names)
    title = f"<h3>{html.escape(s.name)}</h3>" if titled else ""
    return f"{title}<table><tr>{head}</tr>{''.join(rows)}</table>"


def _hide_password(url: str) -> str:
    """The page is shared (and logged to MLflow): never print a database password."""
    return re.sub(r"://([^:/@]+):[^@/]*@", r"://\1:***@", url)


def _caption_notes(studies: Sequence[StudyData]) -> dict[str, str]:
    """The parts of the captions that depend on the studies: what quality means in the
    hypervolume, and what "measured" memory is on the devices the trials ran on."""
    if all(s.maximize for s in studies):
        quality_note = f"quality is the {studies[0].quality} (1 = every answer right)"
    else:
        quality_note = (f"quality is 1 / {studies[0].quality} (1 = perplexity 1, a perfect model; "
                        "lower perplexity is better)")
    devices = {d.split(":")[0] for s in studies for d in s.devices}
    device_note = (" On CPU, the measured peak is automix's accounting of the live tensors (weights, "
                   "adapters, gradients, optimizer states, saved activations), not an allocator reading; "
                   "on CUDA it is torch.cuda.max_memory_allocated." if "cpu" in devices else "")
    return {"quality_note": quality_note, "device_note": device_note}


def render_html(studies: Sequence[StudyData], figures: dict[str, go.Figure],
                notes: Sequence[str] = ()) -> str:
    """The self-contained page: plotly.js inlined once, one section per view."""
    from plotly.offline import get_plotlyjs

    unit = views.memory_unit(studies)
    title = "automix report: " + ", ".join(s.name for s in studies)
    sections = []
    for key, fig in figures.items():
        base, _, who = key.partition("-")
        heading = _HEADINGS.get(base, key) + (f": {who}" if who else "")
        div = fig.to_html(full_html=False, include_plotlyjs=False, div_id=f"view-{key}",
                          config={"displaylogo": False, "responsive": True})
        caption = _CAPTIONS.get(base, "").format(**_caption_notes(studies))
        sections.append(f'<section id="section-{html.escape(key)}"><h2>{html.escape(heading)}</h2>'
                        f'<p class=meta>{caption}</p>{div}</section>')
    note_html = "".join(f"<li class=note>{html.escape(n)}</li>" for n in notes)
    fronts = "".join(_front_table(s, unit, titled=len(studies) > 1) for s in studies)
    stamp = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    return (
        f"<!doctype html><html lang=en><head><meta charset=utf-8><title>{html.escape(title)}</title>"
        f"<meta name=viewport content='width=device-width,initial-scale=1'><style>{_STYLE}</style>"
        f"<script type='text/javascript'>{get_plotlyjs()}</script></head><body>"
        f"<h1>{html.escape(title)}</h1><p class=meta>generated {stamp} from "
        f"{html.escape(', '.join(sorted({_hide_password(s.storage) for s in studies})))}</p>"
        f"{_summary_table(studies, unit)}"
        + (f"<ul>{note_html}</ul>" if note_html else "")
        + "".join(sections) + f"<h2>front configurations</h2>{fronts}</body></html>"
    )


def render_empty_html(names: Sequence[str], message: str) -> str:
    """The page for studies with nothing to plot: the reason, no empty axes."""
    title = "automix report: " + ", ".join(names)
    return (f"<!doctype html><html lang=en><head><meta charset=utf-8><title>{html.escape(title)}</title>"
            f"<style>{_STYLE}</style></head><body><h1>{html.escape(title)}</h1>"
            f"<p class=empty id=no-trials>{html.escape(message)}</p></body></html>")


def write_pngs(figures: dict[str, go.Figure], out_dir: Path, width: int = 1100) -> list[Path]:
    """One PNG per view (kaleido; one browser for all of them)."""
    import plotly.io as pio

    paths = [out_dir / f"{k}.png" for k in figures]
    figs = list(figures.values())
    pio.write_images(figs, paths, width=width, height=[int(f.layout.height or 500) for f in figs], scale=1)
    return paths


def _log_to_mlflow(report: Report, study: StudyData, tracking_uri: str | None, others: Sequence[str]) -> None:
    uri = tracking_uri or study.tracking_uri or default_tracking_uri()
    if uri.startswith("sqlite:///") and not Path(uri[len("sqlite:///"):]).is_file():
        report.mlflow_note = f"not logged to MLflow: no tracking database at {uri}"
        return
    try:
        found = find_parent_run(uri, study.name)
    except Exception as err:  # noqa: BLE001 - the files are written either way
        report.mlflow_note = f"not logged to MLflow: {uri} cannot be read ({type(err).__name__}: {err})"
        return
    if found is None:
        report.mlflow_note = f"not logged to MLflow: {uri} has no parent run for study {study.name!r}"
        return
    client, run_id = found
    adopted = adopt_artifact_roots(uri)  # a copied project logs into its own artifact directory
    where = ARTIFACT_DIR + ("/compare-" + "-".join(others) if others else "")
    for path in [report.html, *report.pngs]:
        client.log_artifact(run_id, str(path), where)
    report.mlflow_run_id, report.mlflow_path = run_id, where
    notes = [n for n in (study.store_note if not tracking_uri else "", adopted) if n]
    report.mlflow_note = "\n".join([*notes, f"logged under '{where}/' of MLflow run {run_id} ({uri})"])


def build_report(
    study: str,
    *,
    storage: str | None = None,
    tracking_uri: str | None = None,
    out: str | Path | None = None,
    compare: Sequence[str] = (),
    png: bool = True,
    log_mlflow: bool = True,
    source: str = "optuna",
) -> Report:
    """Write `report.html` and one PNG per view to `out` (default `reports/<study>`) and log
    them on the MLflow parent run of `study` (under `report/`; a comparison under
    `report/compare-<other names>/`).

    Raises ReportDataError for an unknown study, and NoFinishedTrialsError (after writing a page
    that says so) when none of the studies has a finished trial. A compared study without
    finished trials is left out with a note. `source="mlflow"` reads the studies from their
    MLflow experiments (`tracking_uri`) instead of the Optuna storage (no memory breakdown there).
    """
    if source not in ("optuna", "mlflow"):
        raise ValueError(f"source must be 'optuna' or 'mlflow', got {source!r}")
    names = list(dict.fromkeys([study, *compare]))
    out_dir = Path(out) if out is not None else Path("reports") / "-vs-".join(names)
    loaded, notes = [], []
    for name in names:
        try:
            if source == "mlflow":
                loaded.append(load_mlflow_study(name, tracking_uri))
            else:
                loaded.append(load_study_data(name, storage))
        except NoFinishedTrialsError as err:
            if name == study:
                out_dir.mkdir(parents=True, exist_ok=True)
                (out_dir / "report.html").write_text(render_empty_html(names, str(err)))
                raise
            notes.append(f"left out: {err}")
    for s in loaded:
        notes.extend(f"{s.name}: {m}" for m in s.missing)
    out_dir.mkdir(parents=True, exist_ok=True)
    figures = study_figures(loaded)
    report = Report(out_dir=out_dir, html=out_dir / "report.html", figures=figures, notes=notes)
    report.html.write_text(render_html(loaded, figures, notes))
    if png:
        try:
            report.pngs = write_pngs(figures, out_dir)
        except Exception as err:  # noqa: BLE001 - kaleido / chromium missing: the HTML stands alone
            report.png_error = f"PNG images not written ({type(err).__name__}: {err}); the HTML is complete"
    if log_mlflow:
        _log_to_mlflow(report, loaded[0], tracking_uri, [s.name for s in loaded[1:]])
    return report


def main(args: Any) -> int:
    """The `automix report` command (arguments parsed by `automix.commands.report`)."""
    import sys

    try:
        rep = build_report(args.study, storage=args.storage, tracking_uri=args.tracking_uri,
                           out=args.out, compare=args.compare or (), png=not args.no_png,
                           log_mlflow=not args.no_mlflow, source="mlflow" if args.from_mlflow else "optuna")
    except NoFinishedTrialsError as err:
        page = Path(args.out or Path("reports") / "-vs-".join(dict.fromkeys([args.study, *(args.compare or ())])))
        print(f"error: {err} (a page saying so: {page / 'report.html'})", file=sys.stderr)
        return 2
    except ReportDataError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"report: {rep.html}")
    for p in rep.pngs:
        print(f"image:  {p}")
    if rep.png_error:
        print(f"warning: {rep.png_error}", file=sys.stderr)
    for n in rep.notes:
        print(f"note: {n}")
    if rep.mlflow_note:
        print(rep.mlflow_note)
    return 0
