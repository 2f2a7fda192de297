"""Per-layer settings (bits, group size, prune ratio, adapter rank) and their YAML form.

A layer configuration is what a search trial proposes and what a user exports::

    default: {bits: 4, group_size: 64, prune: 0.0, rank: 8}
    layers:
      "model.layers.*.mlp.down_proj": {bits: 8}     # glob
      "model.layers.0.self_attn.q_proj": {rank: 0}  # exact name; later entries win

``resolve(layer_names)`` expands it into one ``LayerSettings`` per target layer. A name or glob
that matches no layer is an error listing close matches, so a typo never silently does nothing.
"""

from __future__ import annotations

import difflib
import fnmatch
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Iterable, Mapping

VALID_BITS = (2, 3, 4, 8, 16)
COMMON_GROUP_SIZES = (32, 64, 128)
FIELDS = ("bits", "group_size", "prune", "rank")


class LayerConfigError(ValueError):
    """A layer configuration that is invalid; the message names the file and key."""


@dataclass(frozen=True)
class LayerSettings:
    """Settings of one linear layer. ``bits=16`` keeps it unquantized; ``rank=0`` means no adapter.

    ``prune`` is the fraction of the layer's structured units (heads / MLP channels) to remove;
    ``automix.arch.block_ratios`` explains how a block's ratio derives from its layers.
    """

    bits: int = 16
    group_size: int = 64
    prune: float = 0.0
    rank: int = 0

    def __post_init__(self) -> None:
        check_settings(asdict(self), "LayerSettings")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def check_settings(d: Mapping[str, Any], where: str) -> None:
    """Validate a (possibly partial) settings mapping; errors say ``where`` and which key."""
    unknown = sorted(set(d) - set(FIELDS))
    if unknown:
        raise LayerConfigError(f"{where}: unknown key(s) {unknown}; expected some of {list(FIELDS)}")
    if "bits" in d:
        b = d["bits"]
        if isinstance(b, bool) or not isinstance(b, int) or b not in VALID_BITS:
            raise LayerConfigError(f"{where}: bits must be one of {list(VALID_BITS)}, got {b!r}")
    if "group_size" in d:
        g = d["group_size"]
        if isinstance(g, bool) or not isinstance(g, int) or g <= 0 or g % 8:
            raise LayerConfigError(f"{where}: group_size must be a positive multiple of 8 "
                                   f"(usually one of {list(COMMON_GROUP_SIZES)}), got {g!r}")
    if "prune" in d:
        p = d["prune"]
        if isinstance(p, bool) or not isinstance(p, (int, float)) or not 0.0 <= float(p) < 1.0:
            raise LayerConfigError(f"{where}: prune must be a fraction in [0, 1), got {p!r}")
    if "rank" in d:
        r = d["rank"]
        if isinstance(r, bool) or not isinstance(r, int) or r < 0:
            raise LayerConfigError(f"{where}: rank must be an integer >= 0, got {r!r}")


def _is_glob(pattern: str) -> bool:
    return any(c in pattern for c in "*?[")


class LayerConfig:
    """A default ``LayerSettings`` plus ordered overrides by exact name or glob."""

    def __init__(self, default: Mapping[str, Any] | LayerSettings | None = None,
                 layers: Mapping[str, Mapping[str, Any]] | None = None, source: str = "<dict>") -> None:
        self.source = source
        if isinstance(default, LayerSettings):
            default = default.to_dict()
        default = dict(default or {})
        check_settings(default, f"{source}: default")
        if "prune" in default:
            default["prune"] = float(default["prune"])
        self.default = LayerSettings(**default)
        self.layers: list[tuple[str, dict[str, Any]]] = []
        for pattern, over in (layers or {}).items():
            if not isinstance(over, Mapping):
                raise LayerConfigError(f"{source}: layers.{pattern}: expected a mapping of "
                                       f"{list(FIELDS)}, got {type(over).__name__}")
            check_settings(over, f"{source}: layers.{pattern}")
            over = dict(over)
            if "prune" in over:
                over["prune"] = float(over["prune"])
            self.layers.append((str(pattern), over))

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_dict(cls, d: Mapping[str, Any], source: str = "<dict>") -> "LayerConfig":
        if not isinstance(d, Mapping):
            raise LayerConfigError(f"{source}: expected a mapping with 'default' and 'layers', "
                                   f"got {type(d).__name__}")
        unknown = sorted(set(d) - {"default", "layers"})
        if unknown:
            raise LayerConfigError(f"{source}: unknown top-level key(s) {unknown}; "
                                   "expected 'default' and 'layers'")
        layers = d.get("layers") or {}
        if not isinstance(layers, Mapping):
            raise LayerConfigError(f"{source}: layers: expected a mapping name-or-glob -> settings")
        return cls(d.get("default"), layers, source)

    @classmethod
    def from_yaml(cls, path: str | Path) -> "LayerConfig":
        import yaml

        path = Path(path)
        if not path.is_file():
            raise LayerConfigError(f"layer configuration file {path} does not exist")
        try:
            data = yaml.safe_load(path.read_text())
        except yaml.YAMLError as err:
            raise LayerConfigError(f"{path}: not valid YAML: {err}") from err
        return cls.from_dict(data or {}, source=str(path))

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
            if _is_glob(pattern):
                hits = [n for n in names if fnmatch.fnmatchcase(n, pattern)]
            else:
                hits = [pattern] if pattern in out else []
            if not hits:
                close = difflib.get_close_matches(pattern, names, n=5, cutoff=0.5)
                hint = f"; close matches: {close}" if close else f"; layers look like {names[:3]}"
                raise LayerConfigError(f"{self.source}: layers.{pattern!r} matches no layer of the "
                                       f"model{hint}")
            for n in hits:
                out[n] = replace(out[n], **over)
        return out


def resolved_from_dict(d: Mapping[str, Any], layer_names: Iterable[str], source: str = "<dict>"
                       ) -> dict[str, LayerSettings]:
    """Accept either a LayerConfig dict (``default``/``layers``) or an already resolved
    ``{layer_name: {bits, group_size, prune, rank}}`` dict (what the search proposes)."""
    names = list(layer_names)
    if set(d) <= {"default", "layers"}:
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
