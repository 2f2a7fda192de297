"""The report's views: one function per view, each returning a plotly Figure.

Every view takes the loaded studies (`automix.dashboards.data.StudyData`); comparing studies is
the same call with more of them. A view that has nothing to show (e.g. a study that records no
predicted accuracy) returns a figure that says so in words rather than empty axes.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.colors import qualitative
from plotly.subplots import make_subplots

from automix.dashboards.data import BREAKDOWN_PARTS, StudyData, hypervolume_history

__all__ = ["memory_unit", "pareto_view", "hypervolume_view", "calibration_view",
           "layers_view", "memory_breakdown_view", "message_figure"]

_SYMBOLS = ("circle", "diamond", "square", "triangle-up", "x", "star", "cross", "pentagon")
_DASHES = ("solid", "dash", "dot", "dashdot", "longdash")
_PART_COLORS = {"weights": "#4C78A8", "quant_metadata": "#9ECAE9", "adapters": "#F58518",
                "gradients": "#E45756", "optimizer_states": "#72B7B2", "activations": "#54A24B",
                "transient": "#BAB0AC"}
_TEMPLATE = "plotly_white"


def memory_unit(studies: Sequence[StudyData]) -> tuple[str, float]:
    """A readable binary unit for the largest memory in the studies: (name, bytes per unit)."""
    vals = [s.frame[c].max() for s in studies for c in ("memory", "measured_memory", "predicted_memory")
            if c in s.frame and s.frame[c].notna().any()]
    top = max([v for v in vals if v == v] + [s.budget or 0 for s in studies] + [1.0])
    for name, size in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if top >= size:
            return name, float(size)
    return "B", 1.0


def _method_colors(studies: Sequence[StudyData]) -> dict[str, str]:
    methods = sorted({m for s in studies for m in s.frame.method.dropna().unique()} |
                     {m for s in studies for m in s.methods})
    palette = qualitative.D3
    return {m: palette[i % len(palette)] for i, m in enumerate(methods)}


def message_figure(title: str, text: str) -> go.Figure:
    """A figure that states why there is nothing to plot (no empty axes)."""
    fig = go.Figure()
    fig.add_annotation(text=text, x=0.5, y=0.5, xref="paper", yref="paper", showarrow=False,
                       font=dict(size=15))
    fig.update_layout(title=title, template=_TEMPLATE, height=260,
                      xaxis=dict(visible=False), yaxis=dict(visible=False))
    return fig


def _budget_label(budget: float, unit: tuple[str, float]) -> str:
    """The budget with as many digits as it has (11 MiB, 10.5 MiB; never a rounded front value)."""
    return f"{budget / unit[1]:.6g} {unit[0]}"


def _fmt(v: float | None, spec: str = ".3g") -> str:
    return "—" if v is None or pd.isna(v) else format(float(v), spec)


def _hover(rows: pd.DataFrame, quality: str, unit: tuple[str, float], study: str | None) -> list[str]:
    out = []
    for _, r in rows.iterrows():
        head = f"<b>trial {int(r.number)}</b> · {r.method}" + (f" · {study}" if study else "")
        out.append(
            f"{head}<br>avg bits {_fmt(r.avg_bits)} · prune {_fmt(r.avg_prune, '.2f')} · "
            f"rank {_fmt(r.avg_rank, '.3g')}<br>memory {_fmt(r.memory / unit[1], '.4g')} {unit[0]} · "
            f"{quality} {_fmt(r.quality, '.4g')}"
        )
    return out


def _trace_name(study: StudyData, what: str, many: bool) -> str:
    return f"{study.name} · {what}" if many else what


def pareto_view(studies: Sequence[StudyData]) -> go.Figure:
    """Memory/quality fronts of each method overlaid: every trial a faint point, each method's
    front (within the budget) a step line, the budget a vertical line.

    Traces: per study and method, one marker trace of its complete trials and one front line.
    """
    unit = memory_unit(studies)
    colors = _method_colors(studies)
    many = len(studies) > 1
    fig = go.Figure()
    for si, s in enumerate(studies):
        c = s.complete
        for m in sorted(c.method.dropna().unique()):
            rows = c[c.method == m].sort_values("number")
            fig.add_trace(go.Scatter(
                x=rows.memory / unit[1], y=rows.quality, mode="markers",
                name=_trace_name(s, f"{m} trials", many), legendgroup=f"{s.name}-{m}",
                marker=dict(color=colors[m], size=8, opacity=0.3, symbol=_SYMBOLS[si % len(_SYMBOLS)]),
                hovertext=_hover(rows, s.quality, unit, s.name if many else None),
                hovertemplate="%{hovertext}<extra></extra>",
                meta=dict(kind="trials", study=s.name, method=m),
            ))
            front = rows[rows.front_method].sort_values(["memory", "number"])
            fig.add_trace(go.Scatter(
                x=front.memory / unit[1], y=front.quality, mode="lines+markers", line_shape="hv",
                name=_trace_name(s, f"{m} front", many), legendgroup=f"{s.name}-{m}",
                line=dict(color=colors[m], width=2.5, dash=_DASHES[si % len(_DASHES)]),
                marker=dict(color=colors[m], size=10, symbol=_SYMBOLS[si % len(_SYMBOLS)],
                            line=dict(color="white", width=1)),
                hovertext=_hover(front, s.quality, unit, s.name if many else None),
                hovertemplate="%{hovertext}<extra></extra>",
                meta=dict(kind="front", study=s.name, method=m),
            ))
    for si, s in enumerate(studies):
        picked = s.complete[s.complete.number.isin(list(s.exported))]
        if len(picked):
            fig.add_trace(go.Scatter(
                x=picked.memory / unit[1], y=picked.quality, mode="markers",
                name=_trace_name(s, "exported", many),
                marker=dict(symbol="star", size=18, color="gold", line=dict(color="black", width=1.5)),
                hovertext=_hover(picked, s.quality, unit, s.name if many else None),
                hovertemplate="%{hovertext}<br>exported<extra></extra>",
                meta=dict(kind="exported", study=s.name),
            ))
    for b in sorted({s.budget for s in studies if s.budget}):
        fig.add_vline(x=b / unit[1], line_dash="dash", line_color="#444",
                      annotation_text=f"budget {_budget_label(b, unit)}", annotation_position="top left")
    n = sum(len(s.complete) for s in studies)
    failed = sum(int((s.frame.state == "FAIL").sum()) for s in studies)
    quality = studies[0].quality
    title = f"{quality} vs memory: Pareto fronts per method ({n} trials" + (
        f", {failed} failed, not shown)" if failed else ")")
    better = "higher" if studies[0].maximize else "lower"
    fig.update_layout(title=title, template=_TEMPLATE, xaxis_title=f"memory ({unit[0]}, lower is better)",
                      yaxis_title=f"{quality} ({better} is better)", legend_title_text="method",
                      hovermode="closest", height=520)
    return fig


def hypervolume_view(studies: Sequence[StudyData]) -> go.Figure:
    """Normalised hypervolume (fraction of the budget box) over finished trials: all methods of
    each study as a solid line, each method alone dashed. Traces: per study 1 + its methods."""
    colors = _method_colors(studies)
    study_colors = qualitative.Dark2
    many = len(studies) > 1
    fig = go.Figure()
    for si, s in enumerate(studies):
        h = hypervolume_history(s)
        fig.add_trace(go.Scatter(
            x=h.trials, y=h.hypervolume, mode="lines", line_shape="hv",
            name=_trace_name(s, "all methods", many) if not many else f"{s.label} · all methods",
            line=dict(color=study_colors[si % len(study_colors)] if many else "#222", width=3),
            meta=dict(kind="study", study=s.name),
        ))
        for m in sorted(s.complete.method.dropna().unique()):
            hm = hypervolume_history(s, m)
            fig.add_trace(go.Scatter(
                x=hm.trials, y=hm.hypervolume, mode="lines", line_shape="hv",
                name=_trace_name(s, m, many),
                line=dict(color=colors[m], width=2, dash=_DASHES[(si + 1) % len(_DASHES)]),
                meta=dict(kind="method", study=s.name, method=m),
            ))
    ref = "budget" if all(s.budget for s in studies) else "largest memory"
    fig.update_layout(
        title=f"hypervolume over trials (quality × memory saved, memory reference = {ref})",
        template=_TEMPLATE, xaxis_title="trials finished", yaxis_title="normalised hypervolume",
        height=420, hovermode="x unified",
    )
    return fig


def _rank_title(what: str, pred: np.ndarray, meas: np.ndarray) -> str:
    from scipy.stats import kendalltau, spearmanr

    if len(pred) < 3 or np.ptp(pred) == 0 or np.ptp(meas) == 0:
        return f"{what}: rank correlation needs 3+ varied points (n={len(pred)})"
    tau = kendalltau(pred, meas).statistic
    rho = spearmanr(pred, meas).statistic
    return f"{what}: Kendall τ = {tau:.2f}, Spearman ρ = {rho:.2f} (n={len(pred)})"


def calibration_view(studies: Sequence[StudyData]) -> go.Figure:
    """Predicted vs measured quality (the search's predictor) and memory (the memory model),
    each with the y = x line and the rank correlation in the panel title.

    Traces per panel: one marker trace per study and method with both values, then y = x.
    A panel with no recorded pair shows a sentence instead.
    """
    unit = memory_unit(studies)
    colors = _method_colors(studies)
    many = len(studies) > 1
    quality = studies[0].quality
    panels = [("predicted_quality", "quality", quality, 1.0, ""),
              ("predicted_memory", "measured_memory", "memory", unit[1], f" ({unit[0]})")]
    titles = []
    for pcol, mcol, what, scale, _ in panels:
        pairs = pd.concat([s.complete[[pcol, mcol]] for s in studies]).dropna()
        titles.append(_rank_title(what, pairs[pcol].to_numpy(float), pairs[mcol].to_numpy(float))
                      if len(pairs) else f"{what}: no predicted value recorded")
    has_quality = any(s.complete[["predicted_quality", "quality"]].dropna().size for s in studies)
    legend_col = 1 if has_quality else 2
    fig = make_subplots(rows=1, cols=2, subplot_titles=titles, horizontal_spacing=0.12)
    for col, (pcol, mcol, what, scale, suffix) in enumerate(panels, start=1):
        lo, hi = np.inf, -np.inf
        for si, s in enumerate(studies):
            c = s.complete.dropna(subset=[pcol, mcol])
            for m in sorted(c.method.dropna().unique()):
                rows = c[c.method == m]
                x, y = rows[pcol] / scale, rows[mcol] / scale
                lo, hi = min(lo, x.min(), y.min()), max(hi, x.max(), y.max())
                fig.add_trace(go.Scatter(
                    x=x, y=y, mode="markers", name=_trace_name(s, m, many), legendgroup=f"{s.name}-{m}",
                    showlegend=col == legend_col,
                    marker=dict(color=colors[m], size=8, opacity=0.8, symbol=_SYMBOLS[si % len(_SYMBOLS)]),
                    hovertext=[f"trial {int(n)} · {m}" for n in rows.number],
                    hovertemplate="%{hovertext}<br>predicted %{x:.4g}<br>measured %{y:.4g}<extra></extra>",
                    meta=dict(kind="points", panel=what, study=s.name, method=m),
                ), row=1, col=col)
        if lo <= hi:
            pad = 0.03 * (hi - lo or abs(hi) or 1.0)
            fig.add_trace(go.Scatter(
                x=[lo - pad, hi + pad], y=[lo - pad, hi + pad], mode="lines", name="y = x",
                line=dict(color="#888", dash="dash"), showlegend=col == legend_col, hoverinfo="skip",
                meta=dict(kind="identity", panel=what),
            ), row=1, col=col)
            fig.update_xaxes(title_text=f"predicted {what}{suffix}", row=1, col=col)
            fig.update_yaxes(title_text=f"measured {what}{suffix}", row=1, col=col)
        else:  # say so in the panel's place, no empty axes
            domain = fig.layout[f"xaxis{col if col > 1 else ''}"].domain
            fig.add_annotation(text=f"no trial records a predicted {what}", showarrow=False, xref="paper",
                               yref="paper", x=sum(domain) / 2, y=0.45, font=dict(size=14))
            fig.update_xaxes(visible=False, row=1, col=col)
            fig.update_yaxes(visible=False, row=1, col=col)
    fig.update_layout(title="calibration: predicted vs measured", template=_TEMPLATE, height=460)
    return fig


def _short(name: str) -> str:
    return name.removeprefix("model.layers.").removeprefix("model.decoder.layers.").removeprefix(
        "transformer.h.")


def _no_front(study: StudyData) -> str:
    unit = memory_unit([study])
    return (f"no complete trial fits the budget of {(study.budget or 0) / unit[1]:.4g} {unit[0]} "
            f"(smallest: {study.complete.memory.min() / unit[1]:.4g} {unit[0]}), so the front is empty")


def _block_ticks(short: list[str], most: int = 24) -> list[tuple[str, str]]:
    """(first layer name, "block N") for every k-th decoder block so at most `most` ticks show."""
    firsts: dict[str, str] = {}
    for nm in short:
        block = nm.split(".", 1)[0]
        if block.isdigit():
            firsts.setdefault(block, nm)
    if not firsts:
        step = max(1, len(short) // most)
        return [(nm, nm) for nm in short[::step]]
    step = max(1, -(-len(firsts) // most))
    return [(nm, f"block {b}") for i, (b, nm) in enumerate(firsts.items()) if i % step == 0]


def layers_view(study: StudyData) -> go.Figure:
    """Heatmaps of per-layer settings (bits, then prune ratio and adapter rank when they vary on
    the front) for the configurations on the front, by increasing memory.

    One heatmap trace per setting; rows are front trials, columns layers.
    """
    front = study.front_frame
    if front.empty:
        return message_figure(f"{study.name}: per-layer settings on the front", _no_front(study))
    front = front[front.number.isin(list(study.layers))]
    if front.empty:
        return message_figure(f"{study.name}: per-layer settings on the front",
                              "no per-layer configuration is recorded for the front trials")
    names = list(dict.fromkeys(n for t in front.number for n in study.layers[int(t)]))
    values = {k: {study.layers[int(t)][n].get(k) for t in front.number for n in study.layers[int(t)]} - {None}
              for k in ("bits", "prune", "rank")}
    # bits always (when recorded); prune ratio and rank only when they vary on the front
    settings = [k for k in ("bits", "prune", "rank") if values[k] and (k == "bits" or len(values[k]) > 1)]
    if not settings:
        settings = [k for k in ("prune", "rank") if values[k]][:1]
    unit = memory_unit([study])
    rows = [f"#{int(r.number)} {r.method} · {r.memory / unit[1]:.4g} {unit[0]}" for _, r in front.iterrows()]
    fig = make_subplots(rows=len(settings), cols=1, shared_xaxes=True, vertical_spacing=0.06,
                        subplot_titles=[{"bits": "bits", "prune": "prune ratio", "rank": "adapter rank"}[k]
                                        for k in settings])
    scales = {"bits": "Viridis", "prune": "Reds", "rank": "Blues"}
    show_text = len(names) * len(rows) <= 600
    n = len(settings)
    for i, k in enumerate(settings):
        z = [[study.layers[int(t)].get(nm, {}).get(k, np.nan) for nm in names] for t in front.number]
        fig.add_trace(go.Heatmap(
            z=z, x=[_short(nm) for nm in names], y=rows, coloraxis=f"coloraxis{i + 1 if i else ''}",
            texttemplate="%{z:.3~g}" if show_text else None, xgap=1, ygap=1,
            hovertemplate="%{y}<br>%{x}<br>" + k + " %{z}<extra></extra>", name=k, meta=dict(kind=k),
        ), row=i + 1, col=1)
        top = 1 - i / n
        fig.update_layout({f"coloraxis{i + 1 if i else ''}": dict(
            colorscale=scales[k], colorbar=dict(title=k, len=0.9 / n, y=top - 0.5 / n, yanchor="middle"))})
        fig.update_yaxes(autorange="reversed", row=i + 1, col=1)
    fig.update_xaxes(title_text="layer", tickangle=-45, row=n, col=1)
    if len(names) > 48:  # a real model: label decoder blocks, not each of hundreds of layers
        ticks = _block_ticks([_short(nm) for nm in names])
        fig.update_xaxes(tickmode="array", tickvals=[t for t, _ in ticks], ticktext=[b for _, b in ticks],
                         tickangle=0)
        fig.update_xaxes(title_text="layer (ticks at the first layer of each decoder block)", row=n, col=1)
    fig.update_layout(title=f"{study.name}: per-layer settings of the {len(rows)} front configurations",
                      template=_TEMPLATE, height=max(320, 140 + n * (60 + 26 * len(rows))))
    return fig


def memory_breakdown_view(study: StudyData) -> go.Figure:
    """Stacked bars of the memory model's breakdown per front configuration (weights, quant
    metadata, adapters, gradients, optimizer states, activations), with the measured peak.

    Traces: one bar per category that is non-zero somewhere, plus the measured peak markers
    when recorded.
    """
    front = study.front_frame
    if front.empty:
        return message_figure(f"{study.name}: memory breakdown on the front", _no_front(study))
    front = front[front.number.isin(list(study.breakdown))]
    if front.empty:
        return message_figure(f"{study.name}: memory breakdown on the front",
                              "no memory breakdown (result.memory_predicted) is recorded for the front trials")
    unit = memory_unit([study])
    labels = [f"#{int(r.number)} {r.method}" for _, r in front.iterrows()]
    fig = go.Figure()
    for part in BREAKDOWN_PARTS:
        vals = np.array([study.breakdown[int(t)].get(part, 0.0) for t in front.number]) / unit[1]
        if not vals.any():
            continue
        fig.add_trace(go.Bar(x=labels, y=vals, name=part.replace("_", " "), marker_color=_PART_COLORS[part],
                             hovertemplate="%{x}<br>" + part.replace("_", " ") + " %{y:.4g} " + unit[0]
                             + "<extra></extra>", meta=dict(kind="part", part=part)))
    meas = front.measured_memory
    if meas.notna().any():
        fig.add_trace(go.Scatter(x=labels, y=meas / unit[1], mode="markers", name="measured peak",
                                 marker=dict(symbol="line-ew-open", size=28, color="black", line_width=3),
                                 hovertemplate="%{x}<br>measured %{y:.4g} " + unit[0] + "<extra></extra>",
                                 meta=dict(kind="measured")))
    if study.budget:
        fig.add_hline(y=study.budget / unit[1], line_dash="dash", line_color="#444",
                      annotation_text=f"budget {_budget_label(study.budget, unit)}")
    fig.update_layout(barmode="stack", template=_TEMPLATE, height=460,
                      title=f"{study.name}: predicted memory breakdown of the front configurations",
                      xaxis_title="front configuration (by increasing memory)",
                      yaxis_title=f"memory ({unit[0]})", legend_title_text="memory model")
    return fig
