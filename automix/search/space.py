"""Search spaces: which per-layer settings are searched, and how layers share decisions.

A space file (``search_spaces/*.yaml``)::

    fixed: {bits: 16, group_size: 64, prune: 0.0, rank: 0}   # layers / fields not searched
    choices:                                                # per-layer options
      bits: [2, 3, 4, 8, 16]
      rank: [0, 8, 16]
      group_size: [64]            # one choice: a constant, not a decision variable
    groups: per_linear            # per_linear | per_block | per_kind | global | custom list
    group_by: {rank: per_block}   # optional: another grouping for some fields
    methods: [qlora, loftq]       # optional: the fine-tuning methods to choose from

A custom grouping is a list of ``{name, layers: [globs], choices: {...}}``; the first group
whose glob matches a layer owns it, layers matching no group keep ``fixed``.

``load_space(path, layer_names)`` turns a file plus the model's target layer names into a
:class:`SearchSpace`: Optuna distributions (one per field and group, named
``"<field>.<group>"``) and the mapping between those parameters and per-layer
``LayerSettings``, both ways. Errors raise :class:`SearchSpaceError` naming the file, the key
and its line.
"""

from __future__ import annotations

import fnmatch
import re
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
from optuna.distributions import BaseDistribution, CategoricalDistribution

from automix.config.layers import FIELDS, LayerConfigError, LayerSettings, check_settings

__all__ = ["SearchSpace", "SearchSpaceError", "load_space", "GROUPINGS"]

GROUPINGS = ("per_linear", "per_block", "per_kind", "global")
_TOP_KEYS = {"name", "description", "fixed", "choices", "groups", "group_by", "methods"}
_BLOCK = re.compile(r"^(.*?\.\d+)\.(.+)$")  # "model.layers.3" + "mlp.down_proj"


class SearchSpaceError(ValueError):
    """An invalid search space; the message names the file, key and (if known) line."""


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
    """Decision variables over a model's layers; see the module docstring for the file format.

    Attributes:
        distributions: parameter name -> Optuna distribution (only real decisions).
        layer_names: the model's target layers, in order.
        methods: fine-tuning methods to choose from (empty: not part of this space).
    """

    def __init__(self, spec: Mapping[str, Any], layer_names: Iterable[str],
                 source: str = "<dict>", lines: Mapping[tuple, int] | None = None,
                 known_methods: Iterable[str] | None = None) -> None:
        self.source = source
        self._lines = dict(lines or {})
        self.layer_names = list(layer_names)
        if not self.layer_names:
            raise SearchSpaceError(f"{source}: no layer names given to build the space for")
        spec = dict(spec or {})
        unknown = sorted(set(spec) - _TOP_KEYS)
        if unknown:
            self._fail((unknown[0],), f"unknown key(s) {unknown}; expected some of {sorted(_TOP_KEYS)}")
        fixed = dict(spec.get("fixed") or {})
        self._check_settings(fixed, ("fixed",))
        try:
            self.fixed = LayerSettings(**{**LayerSettings().to_dict(), **fixed})
        except LayerConfigError as err:
            self._fail(("fixed",), str(err))
        self.choices = self._check_choices(spec.get("choices") or {}, ("choices",))
        self.methods = self._check_methods(spec.get("methods"), known_methods)
        # layer -> {field: group} and group -> choices per field
        self._owner: dict[str, dict[str, str]] = {n: {} for n in self.layer_names}
        self._group_choices: dict[str, dict[str, list]] = {}
        groups = spec.get("groups", "per_linear")
        group_by = spec.get("group_by") or {}
        if not isinstance(group_by, Mapping):
            self._fail(("group_by",), "expected a mapping field -> grouping")
        for field in group_by:
            if field not in FIELDS:
                self._fail(("group_by", field), f"unknown field; expected one of {list(FIELDS)}")
        for field in FIELDS:
            mode = group_by.get(field, groups)
            key = ("group_by", field) if field in group_by else ("groups",)
            self._assign(field, mode, key)
        self.distributions: dict[str, BaseDistribution] = {}
        for group, per_field in sorted(self._group_choices.items()):
            for field, options in per_field.items():
                if len(options) > 1:
                    self.distributions[f"{field}.{group}"] = CategoricalDistribution(options)

    # ------------------------------------------------------------------ validation
    def _fail(self, key: tuple, message: str):
        dotted = ".".join(str(k) for k in key)
        line = self._lines.get(tuple(key))
        where = f"{self.source}:{line}" if line else self.source
        raise SearchSpaceError(f"{where}: {dotted}: {message}")

    def _check_settings(self, d: Any, key: tuple) -> None:
        if not isinstance(d, Mapping):
            self._fail(key, f"expected a mapping of {list(FIELDS)}, got {type(d).__name__}")
        try:
            check_settings(d, "settings")
        except LayerConfigError as err:
            bad = next((k for k in d if k not in FIELDS), None)
            self._fail(key + ((bad,) if bad else ()), str(err).split(": ", 1)[1])

    def _check_choices(self, d: Any, key: tuple) -> dict[str, list]:
        if not isinstance(d, Mapping):
            self._fail(key, f"expected a mapping field -> list of options, got {type(d).__name__}")
        out = {}
        for field, options in d.items():
            if field not in FIELDS:
                self._fail(key + (field,), f"unknown field; expected one of {list(FIELDS)}")
            if not isinstance(options, list) or not options:
                self._fail(key + (field,), f"expected a non-empty list of options, got {options!r}")
            for i, value in enumerate(options):
                try:
                    check_settings({field: value}, "choice")
                except LayerConfigError as err:
                    self._fail(key + (field,), f"option {i}: " + str(err).split(": ", 1)[1])
            if len(set(options)) != len(options):
                self._fail(key + (field,), f"duplicate options in {options}")
            out[field] = [float(v) if field == "prune" else v for v in options]
        return out

    def _check_methods(self, methods: Any, known: Iterable[str] | None) -> list[str]:
        """The space's method list; checked against ``known`` (the method registry) when given."""
        if methods is None:
            return []
        if not isinstance(methods, list) or not all(isinstance(m, str) for m in methods):
            self._fail(("methods",), f"expected a list of method names, got {methods!r}")
        if known is not None:
            known = list(known)
            bad = [m for m in methods if m not in known]
            if bad:
                self._fail(("methods",), f"unknown method(s) {bad}; available: {known}")
        return list(methods)

    def _assign(self, field: str, mode: Any, key: tuple) -> None:
        if isinstance(mode, str):
            if mode not in GROUPINGS:
                self._fail(key, f"unknown grouping {mode!r}; expected one of {list(GROUPINGS)} "
                                "or a list of custom groups")
            options = self.choices.get(field)
            if options is None:
                return
            for layer in self.layer_names:
                group = _group_of(layer, mode)
                self._owner[layer][field] = group
                self._group_choices.setdefault(group, {})[field] = options
            return
        if not isinstance(mode, list):
            self._fail(key, f"expected a grouping name or a list of groups, got {type(mode).__name__}")
        for i, g in enumerate(mode):
            gkey = key + (i,)
            if not isinstance(g, Mapping) or "name" not in g or "layers" not in g:
                self._fail(gkey, "each custom group needs 'name' and 'layers' (list of globs)")
            extra = sorted(set(g) - {"name", "layers", "choices"})
            if extra:
                self._fail(gkey + (extra[0],), "unknown key; expected name, layers, choices")
            globs = g["layers"] if isinstance(g["layers"], list) else [g["layers"]]
            local = {**self.choices, **self._check_choices(g.get("choices") or {}, gkey + ("choices",))}
            options = local.get(field)
            hits = [n for n in self.layer_names if any(fnmatch.fnmatchcase(n, p) for p in globs)]
            if not hits:
                self._fail(gkey + ("layers",), f"{globs} match no layer of the model "
                                               f"(layers look like {self.layer_names[:2]})")
            if options is None:
                continue
            name = str(g["name"])
            for layer in hits:
                if field not in self._owner[layer]:  # first matching group wins
                    self._owner[layer][field] = name
                    self._group_choices.setdefault(name, {})[field] = options

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
    ) -> Callable[[Mapping[str, Any]], np.ndarray]:
        """Engineered predictor features: per bits group, sum over its layers of
        sensitivity(layer, bits) (or the relative quantization error 4^-(bits-2) without a
        profile), plus their total -- the additive structure a ridge/GP can then exploit."""
        groups = self.groups("bits")

        def score(layer: str, bits: int) -> float:
            if bits >= 16:
                return 0.0
            if sensitivity is not None and layer in sensitivity:
                per = sensitivity[layer]
                if bits in per:
                    return float(per[bits])
                if str(bits) in per:
                    return float(per[str(bits)])
            return 4.0 ** -(bits - 2)

        def features(params: Mapping[str, Any]) -> np.ndarray:
            layers = self.params_to_layers(params)
            f = np.array([sum(score(n, layers[n].bits) for n in members)
                          for members in groups.values()])
            return np.concatenate([f, [f.sum()]])

        return features


def _key_lines(text: str) -> dict[tuple, int]:
    """Line (1-based) of every key path in a YAML document, for error messages."""
    import yaml

    lines: dict[tuple, int] = {}

    def walk(node: Any, path: tuple) -> None:
        if isinstance(node, yaml.MappingNode):
            for k, v in node.value:
                p = path + (k.value,)
                lines[p] = k.start_mark.line + 1
                walk(v, p)
        elif isinstance(node, yaml.SequenceNode):
            for i, v in enumerate(node.value):
                lines[path + (i,)] = v.start_mark.line + 1
                walk(v, path + (i,))

    try:
        walk(yaml.compose(text), ())
    except yaml.YAMLError:
        pass
    return lines


def load_space(path: str | Path, layer_names: Iterable[str], known_methods: Iterable[str] | None = None) -> SearchSpace:
    """Read a search space YAML file for a model's target layer names."""
    import yaml

    path = Path(path)
    if not path.is_file():
        raise SearchSpaceError(f"search space file {path} does not exist")
    text = path.read_text()
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark else str(path)
        raise SearchSpaceError(f"{where}: not valid YAML: {getattr(err, 'problem', err)}") from None
    if data is None:
        data = {}
    if not isinstance(data, Mapping):
        raise SearchSpaceError(f"{path}: expected a mapping at the top level, got {type(data).__name__}")
    return SearchSpace(data, layer_names, source=str(path), lines=_key_lines(text), known_methods=known_methods)
