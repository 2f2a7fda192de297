"""``automix``: the layer configuration (``layers.yaml``, which ``automix trial --layers`` re-runs
alone) and the manifest; with ``--with-weights`` also the quantized checkpoint and trained state
that ``automix.load(DIR)`` rebuilds. ``automix.export.export_trial`` writes these for every
format; this one adds nothing to them."""

from __future__ import annotations

from typing import Any

from automix.export.format import ExportContext, ExportFormat, TrialFacts


def _check(facts: TrialFacts) -> str | None:
    return None  # every trial has a layer configuration; every method a checkpoint


def _write(ctx: ExportContext) -> dict[str, Any]:
    return {}


FORMAT = ExportFormat("automix", "layers.yaml (+ the quantized checkpoint with --with-weights) for automix.load",
                      needs_weights=False, check=_check, write=_write)
