"""Search spaces: which per-layer settings are searched, and how layers share decisions.

The file format and its schema are ``automix.config.space`` (``fixed``, ``choices``, ``groups``,
``group_by``, ``methods``). Here a validated space meets a model: ``SearchSpace(spec,
layer_names)`` (``spec`` a :class:`~automix.config.space.SpaceFile` or a plain mapping) builds
the Optuna distributions (one per field and group, named ``"<field>.<group>"``) and maps those
parameters to per-layer ``LayerSettings`` and back. ``load_space(path, layer_names)`` reads a
file. Errors raise :class:`SearchSpaceError` naming the file, the key and its line.
"""

from __future__ import annotations

import fnmatch
import re
from collections import Counter
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
from optuna.distributions import BaseDistribution, CategoricalDistribution

from automix.config.layers import FIELDS, LayerSettings
from automix.config.space import (GROUPINGS, CustomGroup, Lines, SearchSpaceError, SpaceFile, parse_space,
                                  read_space_file)
from automix.search.batch import choice_indices

__all__ = ["SearchSpace", "SearchSpaceError", "load_space", "GROUPINGS"]

_BLOCK = re.compile(r"^(.*?\.\d+)\.(.+)$")  # "model.layers.3" + "mlp.down_proj"


def _group_of(layer: str, mode: str) -> str:
    m = _BLOCK.match(layer)
    if mode == "per_linear":
        return layer
    if mode == "per_block":
        return m.group(1) if m else layer
    if mode == "per_kind":
        return m.group(2) if m else layer
    return "all"


class SearchSpace:
    """Decision variables over a model's layers (see ``automix.config.space`` for the file).

    ``source`` is the file errors name, or its :class:`~automix.config.space.Lines` (where each
    key is, as ``read_space_file`` returns them) so that errors name the line too.

    Attributes:
        distributions: parameter name -> Optuna distribution (only real decisions).
        layer_names: the model's target layers, in order.
        methods: fine-tuning methods to choose from (empty: not part of this space).
    """

    def __init__(self, spec: SpaceFile | Mapping[str, Any] | None, layer_names: Iterable[str],
                 source: str | Lines = "<dict>", known_methods: Iterable[str] | None = None) -> None:
        self._lines = source if isinstance(source, Lines) else Lines(source)
        self.source = self._lines.source
        self.layer_names = list(layer_names)
        if not self.layer_names:
            raise SearchSpaceError(f"{self.source}: no layer names given to build the space for")
        if not isinstance(spec, SpaceFile):
            spec = parse_space(spec, self._lines)
        self.fixed: LayerSettings = spec.fixed
        self.choices: dict[str, list] = dict(spec.choices)
        self.methods = self._check_methods(spec.methods, known_methods)
        # layer -> {field: group} and group -> choices per field
        self._owner: dict[str, dict[str, str]] = {n: {} for n in self.layer_names}
        self._group_choices: dict[str, dict[str, list]] = {}
        for field in FIELDS:
            if field in spec.group_by:
                self._assign(field, spec.group_by[field], ("group_by", field))
            else:
                self._assign(field, spec.groups, ("groups",))
        self.distributions: dict[str, BaseDistribution] = {}
        for group, per_field in sorted(self._group_choices.items()):
            for field, options in per_field.items():
                if len(options) > 1:
                    self.distributions[f"{field}.{group}"] = CategoricalDistribution(options)

    # ------------------------------------------------------------------ validation
    def _fail(self, key: tuple, message: str):
        raise SearchSpaceError(f"{self._lines.where(key)}: {message}")

    def _check_methods(self, methods: list[str] | None, known: Iterable[str] | None) -> list[str]:
        """The space's method list; checked against ``known`` (the method registry) when given."""
        if methods is None:
            return []
        if known is not None:
            known = list(known)
            bad = [m for m in methods if m not in known]
            if bad:
                self._fail(("methods",), f"unknown method(s) {bad}; available: {known}")
        return list(methods)

    def _assign(self, field: str, mode: str | list[CustomGroup], key: tuple) -> None:
        """Give each layer its group for ``field``: a named grouping, or the first custom group
        whose globs match it (layers matching none keep ``fixed``)."""
        if isinstance(mode, str):
            options = self.choices.get(field)
            if options is None:
                return
            for layer in self.layer_names:
                group = _group_of(layer, mode)
                self._owner[layer][field] = group
                self._group_choices.setdefault(group, {})[field] = options
            return
        for i, g in enumerate(mode):
            options = {**self.choices, **g.choices}.get(field)
            hits = [n for n in self.layer_names if any(fnmatch.fnmatchcase(n, p) for p in g.layers)]
            if not hits:
                self._fail(key + (i, "layers"), f"{g.layers} match no layer of the model "
                                                f"(layers look like {self.layer_names[:2]})")
            if options is None:
                continue
            for layer in hits:
                if field not in self._owner[layer]:  # first matching group wins
                    self._owner[layer][field] = g.name
                    self._group_choices.setdefault(g.name, {})[field] = options

    # ------------------------------------------------------------------ mapping
    @property
    def param_names(self) -> list[str]:
        return list(self.distributions)

    def _value(self, params: Mapping[str, Any], field: str, group: str) -> Any:
        options = self._group_choices[group][field]
        if len(options) == 1:
            return options[0]
        name = f"{field}.{group}"
        if name not in params:
            raise SearchSpaceError(f"{self.source}: parameter {name!r} missing from params")
        value = params[name]
        if value not in options:
            raise SearchSpaceError(f"{self.source}: parameter {name!r}={value!r} is not one of {options}")
        return value

    def params_to_layers(self, params: Mapping[str, Any]) -> dict[str, LayerSettings]:
        """Per-layer settings for a set of parameters (extra keys such as 'method' ignored)."""
        base = self.fixed.to_dict()
        out = {}
        for layer in self.layer_names:
            d = dict(base)
            for field, group in self._owner[layer].items():
                d[field] = self._value(params, field, group)
            out[layer] = LayerSettings(**d)
        return out

    def layers_to_params(self, layers: Mapping[str, Any]) -> dict[str, Any]:
        """Parameters for per-layer settings (LayerSettings or dicts); a group whose layers
        disagree takes its most common value."""
        votes: dict[str, Counter] = {}
        for layer in self.layer_names:
            if layer not in layers:
                raise SearchSpaceError(f"{self.source}: layer settings miss layer {layer!r}")
            s = layers[layer]
            s = s.to_dict() if hasattr(s, "to_dict") else dict(s)
            for field, group in self._owner[layer].items():
                name = f"{field}.{group}"
                if name in self.distributions:
                    votes.setdefault(name, Counter())[s[field]] += 1
        params = {}
        for name, counter in votes.items():
            value = counter.most_common(1)[0][0]
            if value not in self.distributions[name].choices:
                raise SearchSpaceError(f"{self.source}: {name}: value {value!r} is not one of "
                                       f"{list(self.distributions[name].choices)}")
            params[name] = value
        return params

    def suggest(self, trial: Any) -> dict[str, LayerSettings]:
        """Ask an Optuna trial for every decision; returns the per-layer settings."""
        params = {n: trial.suggest_categorical(n, list(d.choices)) for n, d in self.distributions.items()}
        return self.params_to_layers(params)

    def suggest_method(self, trial: Any) -> str | None:
        """The fine-tuning method, when the space lists several (else the only one or None)."""
        if len(self.methods) > 1:
            return trial.suggest_categorical("method", list(self.methods))
        return self.methods[0] if self.methods else None

    def groups(self, field: str = "bits") -> dict[str, list[str]]:
        """Group name -> its layers, for one field."""
        out: dict[str, list[str]] = {}
        for layer in self.layer_names:
            group = self._owner[layer].get(field)
            if group is not None:
                out.setdefault(group, []).append(layer)
        return out

    def feature_fn(
        self, sensitivity: Mapping[str, Mapping[int, float]] | None = None
    ) -> "_GroupFeatures":
        """Engineered predictor features: per bits group, sum over its layers of
        sensitivity(layer, bits) (or the relative quantization error 4^-(bits-2) without a
        profile), plus their total -- the additive structure a ridge/GP can then exploit.
        The result is a function of the params with a vectorised ``batch(columns)`` form
        (``automix.search.batch``): tables per group and bits choice, computed once."""
        return _GroupFeatures(self, sensitivity)

    def held_values(self) -> dict[str, Any]:
        """Parameter -> the space's ``fixed`` value of its field, where that value is one of the
        parameter's choices: where a one-shot allocation holds the parameters a profile does not
        score (prune ratios, ranks), i.e. where the user put them."""
        fixed = self.fixed.to_dict()
        out = {}
        for name, dist in self.distributions.items():
            field = name.split(".", 1)[0]
            if field in fixed and fixed[field] in dist.choices:
                out[name] = fixed[field]
        return out

    def param_layers(self) -> dict[str, list[str]]:
        """Parameter name -> the layers it sets (the study backend's hint of which parameters
        can interact in the memory model)."""
        out: dict[str, list[str]] = {n: [] for n in self.distributions}
        for layer in self.layer_names:
            for field, group in self._owner[layer].items():
                name = f"{field}.{group}"
                if name in out:
                    out[name].append(layer)
        return out


def _raw_score(sensitivity: Mapping[str, Mapping[int, float]] | None, layer: str, bits: int) -> float | None:
    if bits >= 16:
        return 0.0
    if sensitivity is not None and layer in sensitivity:
        per = sensitivity[layer]
        if bits in per:
            return float(per[bits])
        if str(bits) in per:
            return float(per[str(bits)])
    return None


def _score(sensitivity: Mapping[str, Mapping[int, float]] | None, layer: str, bits: int) -> float:
    """A layer's damage at ``bits``: the profile's, never below its damage at more bits (the
    largest score the profile gives the layer at ``bits`` or more), else the relative
    quantization error 4^-(bits-2).

    Fewer bits cannot do less damage, but a profile estimated from a few calibration sequences
    can say so (on SmolLM2, 3.self_attn.v_proj scored 0.029 at 2 bits and 0.035 at 3): taken as
    they are, such scores have an allocator put 2 bits exactly where the estimate is noisiest."""
    own = _raw_score(sensitivity, layer, bits)
    if own is None:
        return 4.0 ** -(bits - 2)
    higher = [v for b in _profiled_bits(sensitivity, layer) if b > bits
              for v in [_raw_score(sensitivity, layer, b)] if v is not None]
    return max([own, *higher])


def _profiled_bits(sensitivity: Mapping[str, Mapping[int, float]] | None, layer: str) -> list[int]:
    if sensitivity is None or layer not in sensitivity:
        return []
    return [int(b) for b in sensitivity[layer]]


class _GroupFeatures:
    """``SearchSpace.feature_fn``'s features: per bits group the summed layer scores of its
    bits choice, then their total; ``batch`` evaluates many configurations by table lookup
    (one lookup for all the groups that offer the same choices)."""

    def __init__(self, space: SearchSpace, sensitivity: Mapping[str, Mapping[int, float]] | None) -> None:
        self._columns: list[tuple[str | None, dict[Any, float] | float]] = []
        for group, members in space.groups("bits").items():
            name = f"bits.{group}"
            if name in space.distributions:
                table = {c: sum(_score(sensitivity, n, int(c)) for n in members)
                         for c in space.distributions[name].choices}
                self._columns.append((name, table))
            else:
                bits = space._group_choices[group]["bits"][0]
                self._columns.append((None, sum(_score(sensitivity, n, int(bits)) for n in members)))
        # batch's lookups: the fixed columns' values, and per tuple of choices (keys) the
        # searched columns with those choices and their tables' values, one row per column
        self._fixed = [(k, table) for k, (name, table) in enumerate(self._columns) if name is None]
        by_keys: dict[tuple, list[int]] = {}
        for k, (name, table) in enumerate(self._columns):
            if name is not None:
                by_keys.setdefault(tuple(float(c) for c in table), []).append(k)
        # (choices, where the columns go: a slice when consecutive, their names, their values
        # per choice, their choices in table order, choice_indices' memo)
        self._lookups = [(np.asarray(keys), slice(ks[0], ks[-1] + 1) if ks == list(range(ks[0], ks[-1] + 1))
                          else np.array(ks), [self._columns[k][0] for k in ks],
                          np.array([list(self._columns[k][1].values()) for k in ks], dtype=float),
                          [list(self._columns[k][1]) for k in ks], {})
                         for keys, ks in by_keys.items()]

    def __call__(self, params: Mapping[str, Any]) -> np.ndarray:
        f = np.array([table[params[name]] if name is not None else table
                      for name, table in self._columns], dtype=float)
        return np.concatenate([f, [f.sum()]])

    def batch(self, columns: Mapping[str, Any]) -> np.ndarray:
        n = len(next(iter(columns.values()))) if columns else 1
        f = np.empty((n, len(self._columns)))
        for k, value in self._fixed:
            f[:, k] = value
        for keys, where, names, values, choices, memo in self._lookups:
            got = choice_indices(columns, names, choices, memo, values)  # a sampler's: by level
            if got is None:
                col = np.array([columns[name] for name in names], dtype=float).reshape(len(names), n)
                # the nearest choice of each value (the first of equally near ones)
                at = np.argmin(np.abs(col[:, :, None] - keys), axis=2).T  # (n, columns)
                got = values[np.arange(len(names)), at]
            f[:, where] = got
        return np.concatenate([f, f.sum(axis=1, keepdims=True)], axis=1)


def load_space(path: str | Path, layer_names: Iterable[str], known_methods: Iterable[str] | None = None) -> SearchSpace:
    """Read a search space YAML file for a model's target layer names."""
    doc = read_space_file(path)
    return SearchSpace(doc.data, layer_names, source=doc.lines, known_methods=known_methods)
