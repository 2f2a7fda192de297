"""What an export format is, and what a format's writer is handed.

A format is one module under ``automix/export/`` exposing ``FORMAT`` (an :class:`ExportFormat`)
and one line in :data:`automix.config.registry.EXPORT_FORMATS`; the CLI's choices and the
validation of ``--format`` read that table, :func:`get_format` imports the module on use.

Each format says, before anything is re-run, whether it can hold a trial (``check`` on the
trial's :class:`TrialFacts`: method, resolved layer settings, the original model's config), and
writes it from an :class:`ExportContext` (the rebuilt model, shared dense forms, the staging
directory). ``write`` returns the format's manifest entry.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from functools import cached_property
from pathlib import Path
from typing import Any, Callable, Mapping

from automix.arch import target_layer_names
from automix.config.layers import resolved_from_dict
from automix.config.registry import EXPORT_FORMATS, load

__all__ = ["ExportFormat", "TrialFacts", "ExportContext", "get_format"]


@dataclass
class TrialFacts:
    """What a format needs to decide, before any re-run, whether it can hold a trial."""

    number: int
    method: str
    spec: Mapping[str, Any]
    recorded_layers: Mapping[str, Any]  # as the study recorded them (a layer file or per-layer settings)
    model_config: Any                    # the original (unpruned) model's config, no weights

    @cached_property
    def layers(self) -> dict[str, dict[str, Any]]:
        """Every target layer -> {bits, group_size, prune, rank}."""
        names = target_layer_names(self.model_config)
        return {n: s.to_dict() for n, s in
                resolved_from_dict(self.recorded_layers, names, f"trial {self.number}'s layers").items()}

    @property
    def pruned(self) -> bool:
        return any(float(s.get("prune", 0.0)) > 0 for s in self.layers.values())

    @property
    def structured_pruning(self) -> bool:
        return self.pruned and self.spec.get("prune_mode", "structured") == "structured"


@dataclass
class ExportContext:
    """A format writer's inputs: the staging directory (renamed into place when every format is
    written), the trial's facts and, for formats that need weights, the model rebuilt from the
    saved checkpoint (``automix.load``) with its score."""

    out: Path
    facts: TrialFacts
    exported: Any = None
    _dense: dict = field(default_factory=dict)
    _reference: dict | None = None

    @property
    def metric(self) -> str:
        return self.exported.task.metric

    @property
    def reference(self) -> dict[str, float]:
        """What ``automix.load`` scores (computed once)."""
        if self._reference is None:
            self._reference = self.exported.evaluate()
        return self._reference

    def dense(self, merge_adapters: bool = True) -> Any:
        """The trial as a standard transformers model (:func:`automix.export.dense.dense_model`),
        adapters merged or not; built once per form and shared between formats."""
        if merge_adapters not in self._dense:
            from automix.export.dense import dense_model  # lazy: format.py is imported to validate names; torch only here

            self._dense[merge_adapters] = dense_model(self.exported.model, self.facts.method, merge_adapters,
                                                      original_config=self.facts.model_config)
        return self._dense[merge_adapters]

    def score(self, model: Any) -> float:
        """``model`` scored the way the trial was (same task, split and size)."""
        return replace(self.exported, model=model).evaluate()[self.metric]

    def scores(self, model: Any) -> dict[str, float]:
        """The manifest's check of a written model: its score beside automix.load's."""
        return {self.metric: self.score(model), f"automix_{self.metric}": self.reference[self.metric]}


@dataclass(frozen=True)
class ExportFormat:
    """One export format (see the module docstring)."""

    name: str
    summary: str
    needs_weights: bool
    check: Callable[[TrialFacts], str | None]
    write: Callable[[ExportContext], dict[str, Any]]


def get_format(name: str) -> ExportFormat:
    """The format registered under ``name`` (imported now)."""
    if name not in EXPORT_FORMATS:
        raise ValueError(f"unknown export format {name!r}; choose from {', '.join(EXPORT_FORMATS)}")
    fmt = load(EXPORT_FORMATS, name)
    if not isinstance(fmt, ExportFormat) or fmt.name != name:
        raise TypeError(f"{EXPORT_FORMATS[name]} is not the ExportFormat {name!r}")
    return fmt
