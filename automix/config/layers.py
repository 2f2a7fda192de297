"""Per-layer settings (bits, group size, prune ratio, adapter rank) and their YAML form.

A layer configuration is what a search trial proposes and what a user exports::

    default: {bits: 4, group_size: 64, prune: 0.0, rank: 8}
    layers:
      "model.layers.*.mlp.down_proj": {bits: 8}     # glob
      "model.layers.0.self_attn.q_proj": {rank: 0}  # exact name; later entries win

``resolve(layer_names)`` expands it into one ``LayerSettings`` per target layer. A name or glob
that matches no layer is an error listing close matches, so a typo never silently does nothing.

A file may also say how to run the trial, so that ``automix trial --layers FILE`` alone re-runs
it (``automix export`` writes them; a flag given on the command line wins)::

    model: builtin:tiny
    task: lm
    method: loftq
    method_settings: {lora_alpha: 16}
    trial: {steps: 40, batch_size: 4, seq_len: 64, lr: 0.001, gradient_checkpointing: true, ...}
"""

from __future__ import annotations

import dataclasses
import difflib
import fnmatch
import json
from collections import Counter
from pathlib import Path
from typing import Annotated, Any, Iterable, Mapping


from pydantic import AfterValidator, BaseModel, ConfigDict, Field, Strict, ValidationError, field_validator
from pydantic.dataclasses import dataclass
from typing_extensions import TypedDict

from automix.config._yaml import Expect, Lines, describe, error_text, format_errors, read_yaml
from automix.config.training import RunSettings

VALID_BITS = (2, 3, 4, 8, 16)
COMMON_GROUP_SIZES = (32, 64, 128)
FIELDS = ("bits", "group_size", "prune", "rank")


class LayerConfigError(ValueError):
    """A layer configuration that is invalid; the message names the file and key."""


def _valid_bits(b: int) -> int:
    if b not in VALID_BITS:
        raise ValueError(b)
    return b


# One setting each; the constraints are pydantic's, the wording (", got X" added) is ours.
Bits = Annotated[int, Strict(), AfterValidator(_valid_bits), Expect(f"bits must be one of {list(VALID_BITS)}")]
GroupSize = Annotated[int, Strict(), Field(gt=0, multiple_of=8), Expect(
    f"group_size must be a positive multiple of 8 (usually one of {list(COMMON_GROUP_SIZES)})")]
Prune = Annotated[float, Strict(), Field(ge=0.0, lt=1.0), Expect("prune must be a fraction in [0, 1)")]
Rank = Annotated[int, Strict(), Field(ge=0), Expect("rank must be an integer >= 0")]


@dataclass(frozen=True, config=ConfigDict(extra="forbid"))
class LayerSettings:
    """Settings of one linear layer. ``bits=16`` keeps it unquantized; ``rank=0`` means no adapter.

    ``prune`` is the fraction of the layer's structured units (heads / MLP channels) to remove;
    ``automix.arch.block_ratios`` explains how a block's ratio derives from its layers.

    A small immutable value (hashable, ``dataclasses.replace`` / ``asdict`` work), validated by
    pydantic on construction; an invalid value raises :class:`LayerConfigError`.
    """

    bits: Bits = 16
    group_size: GroupSize = 64
    prune: Prune = 0.0
    rank: Rank = 0

    def to_dict(self) -> dict[str, Any]:
        return {"bits": self.bits, "group_size": self.group_size, "prune": self.prune, "rank": self.rank}


_pydantic_init = LayerSettings.__init__


def _init_settings(self: LayerSettings, *args: Any, **kwargs: Any) -> None:
    # pydantic's own __init__ (validation in pydantic-core), raising our error type instead
    try:
        _pydantic_init(self, *args, **kwargs)
    except ValidationError as err:
        whats = []
        for e in err.errors():
            if e["type"] == "unexpected_keyword_argument":
                whats.append(f"unknown key {e['loc'][-1]!r}; expected some of {list(FIELDS)}")
            else:
                whats.append(describe(e))
        raise LayerConfigError("LayerSettings: " + "; ".join(whats)) from None


_init_settings.__qualname__ = "LayerSettings.__init__"
LayerSettings.__init__ = _init_settings  # type: ignore[method-assign]


class SettingsPatch(TypedDict, total=False):
    """Some of a layer's settings (a ``layers`` entry): only the keys given override."""

    __pydantic_config__ = ConfigDict(extra="forbid")  # type: ignore[misc]
    bits: Bits
    group_size: GroupSize
    prune: Prune
    rank: Rank


# the trial-spec keys a layer file carries outside `trial:` (model and data, method)
RUN_KEYS = ("model", "task", "data", "eval_data", "method", "method_settings")


class LayerConfigFile(BaseModel):
    """The layer configuration file: ``default`` settings and ordered overrides by name or glob,
    and optionally how to run the trial (``model`` ... ``trial``)."""

    model_config = ConfigDict(extra="forbid")

    model: str | None = None
    task: str | None = None
    data: str | None = None
    eval_data: str | None = None
    method: str | None = None
    method_settings: dict[str, Any] | None = None
    trial: RunSettings | None = None
    default: LayerSettings = LayerSettings()
    layers: dict[str, SettingsPatch] = Field(default_factory=dict)

    def run(self) -> dict[str, Any]:
        """The trial-spec settings the file gives (flat: ``steps``, not ``trial.steps``)."""
        out = {k: getattr(self, k) for k in RUN_KEYS if k in self.model_fields_set}
        if self.trial is not None:
            out.update(self.trial.model_dump(exclude_unset=True))
        return out

    @field_validator("default", "layers", mode="before")
    @classmethod
    def _empty(cls, v: Any) -> Any:  # `layers:` with nothing under it
        return {} if v is None else v

    @field_validator("layers", mode="before")
    @classmethod
    def _names(cls, v: Any) -> Any:  # a YAML key may read as a number
        return {str(k): o for k, o in v.items()} if isinstance(v, Mapping) else v


def _parse(d: Any, lines: Lines) -> LayerConfigFile:
    try:
        return LayerConfigFile.model_validate(d)
    except ValidationError as err:
        raise LayerConfigError(error_text("invalid layer configuration",
                                          format_errors(err, d, lines, LayerConfigFile))) from None


def _is_glob(pattern: str) -> bool:
    return any(c in pattern for c in "*?[")


class LayerConfig:
    """A default ``LayerSettings`` plus ordered overrides by exact name or glob."""

    def __init__(self, default: Mapping[str, Any] | LayerSettings | None = None,
                 layers: Mapping[str, Mapping[str, Any]] | None = None, source: str = "<dict>") -> None:
        self._set(_parse({"default": default, "layers": layers}, Lines(source)), Lines(source))

    def _set(self, spec: LayerConfigFile, lines: Lines) -> None:
        self.source = lines.source
        self._lines = lines
        self.default: LayerSettings = spec.default
        self.layers: list[tuple[str, dict[str, Any]]] = [(p, dict(o)) for p, o in spec.layers.items()]
        self.run: dict[str, Any] = spec.run()  # how to run the trial, when the file says

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_dict(cls, d: Mapping[str, Any], source: str = "<dict>", lines: Lines | None = None) -> "LayerConfig":
        """From a ``{default, layers}`` mapping; ``lines`` (where its keys are) points errors at lines."""
        if not isinstance(d, Mapping):
            raise LayerConfigError(f"{source}: expected a mapping with 'default' and 'layers', "
                                   f"got {type(d).__name__}")
        lines = lines or Lines(source)
        self = cls.__new__(cls)
        self._set(_parse(d, lines), lines)
        return self

    @classmethod
    def from_yaml(cls, path: str | Path) -> "LayerConfig":
        path = Path(path)
        if not path.is_file():
            raise LayerConfigError(f"layer configuration file {path} does not exist")
        doc = read_yaml(path, LayerConfigError)
        return cls.from_dict(doc.data or {}, source=str(path), lines=doc.lines)

    @classmethod
    def uniform(cls, bits: int = 16, group_size: int = 64, prune: float = 0.0, rank: int = 0) -> "LayerConfig":
        """Same settings for every layer (the CLI's ``--bits N``)."""
        return cls({"bits": bits, "group_size": group_size, "prune": prune, "rank": rank})

    def to_dict(self) -> dict[str, Any]:
        return {"default": self.default.to_dict(), "layers": {p: dict(o) for p, o in self.layers}}

    # ------------------------------------------------------------------ resolution
    def resolve(self, layer_names: Iterable[str]) -> dict[str, LayerSettings]:
        """One ``LayerSettings`` per name (order kept); every override must match a layer."""
        names = list(layer_names)
        out = {n: self.default for n in names}
        for pattern, over in self.layers:
            hits = matching_layers(pattern, names)
            if not hits:
                close = difflib.get_close_matches(pattern, names, n=5, cutoff=0.5)
                hint = f"; close matches: {close}" if close else f"; layers look like {names[:3]}"
                where, _ = self._lines.locate(("layers", pattern))
                raise LayerConfigError(f"{where}: layers.{pattern!r} matches no layer of the model{hint}")
            for n in hits:
                out[n] = dataclasses.replace(out[n], **over)
        return out


def resolved_from_dict(d: Mapping[str, Any], layer_names: Iterable[str], source: str = "<dict>"
                       ) -> dict[str, LayerSettings]:
    """Accept either a LayerConfig dict (``default``/``layers``) or an already resolved
    ``{layer_name: {bits, group_size, prune, rank}}`` dict (what the search proposes)."""
    names = list(layer_names)
    if is_layer_file(d):
        return LayerConfig.from_dict(d, source).resolve(names)
    layers = {}
    for k, v in d.items():
        if not isinstance(v, Mapping):
            raise LayerConfigError(f"{source}: {k}: expected a mapping of {list(FIELDS)}")
        layers[k] = v
    # Every layer must be covered when no default is given.
    missing = [n for n in names if n not in layers]
    if missing:
        raise LayerConfigError(f"{source}: resolved layer settings miss {len(missing)} layer(s), "
                               f"e.g. {missing[:3]}; give all layers or a 'default'")
    return LayerConfig(None, layers, source).resolve(names)


def is_layer_file(d: Mapping[str, Any]) -> bool:
    """Whether ``d`` is a layer file's mapping (``default`` / ``layers`` and run settings) rather
    than resolved per-layer settings."""
    return set(d) <= set(LayerConfigFile.model_fields)


def layer_file(layers: Mapping[str, Any], run: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """A layer file's mapping: the run settings first (``RUN_KEYS`` at the top, the training keys
    under ``trial``), then ``default`` and ``layers`` (compacted from resolved settings)."""
    doc = dict(layers) if is_layer_file(layers) else compact_layers(layers)
    run = dict(run or {})
    head = {k: run.pop(k) for k in RUN_KEYS if run.get(k) not in (None, {}, [])}
    trial = {k: v for k, v in run.items() if k in RunSettings.model_fields and v is not None}
    out = {**head, **({"trial": trial} if trial else {}),
           **{k: v for k, v in doc.items() if k not in RUN_KEYS and k != "trial"}}
    LayerConfigFile.model_validate(out)  # what is written reads back
    return out


def average_bits(layer_settings: Mapping[str, LayerSettings], shapes: Mapping[str, tuple[int, int]] | None = None
                 ) -> float:
    """Parameter-weighted average bit width of the target layers (unweighted without shapes)."""
    if not layer_settings:
        return 0.0
    total = weight = 0.0
    for n, s in layer_settings.items():
        w = float(shapes[n][0] * shapes[n][1]) if shapes else 1.0
        total += s.bits * w
        weight += w
    return total / weight if weight else 0.0


def matching_layers(pattern: str, layer_names: Iterable[str]) -> list[str]:
    """The names among `layer_names` that an override `pattern` selects in ``LayerConfig.resolve``:
    a glob matches case-sensitively, an exact name only itself ([] when it matches none)."""
    names = list(layer_names)
    if _is_glob(pattern):
        return [n for n in names if fnmatch.fnmatchcase(n, pattern)]
    return [pattern] if pattern in names else []


def compact_layers(resolved: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    """A LayerConfig dict from per-layer settings: the most common settings as the default and
    only the other layers listed (what `automix trial --layers` reads)."""
    if not resolved:
        raise ValueError("no layer settings to write")
    key = lambda s: json.dumps(dict(s), sort_keys=True)  # noqa: E731
    common = Counter(key(s) for s in resolved.values()).most_common(1)[0][0]
    return {"default": json.loads(common),
            "layers": {name: dict(s) for name, s in resolved.items() if key(s) != common}}
