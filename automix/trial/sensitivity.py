"""Per-layer, per-bits sensitivity profiles: cheap proxies of how much quantizing one layer hurts.

Two proxies, computed once per model and cached on disk under the model's fingerprint:

* ``weighted_error``: the quantization error weighted by input-activation energy,
  sum_ij (W - Q(W))_ij^2 * E[x_j^2] -- the diagonal-Hessian (OBS/GPTQ-style) estimate of the
  layer's output error on calibration text;
* ``kl``: the mean per-token KL divergence of the model's next-token distribution when that one
  layer alone is quantized (all others in full precision).

The search uses them as engineered predictor features (``SearchSpace.feature_fn``): the sum of
``kl`` over the layers quantized to each bit width is close to additive in practice.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from automix.arch import linear_weight, target_layers
from automix.quant import quantize
from automix.trial.data import calibration_batches
from automix.trial.models import load_model, model_fingerprint

__all__ = ["SensitivityProfile", "profile_model", "load_or_profile", "cache_dir"]

METRICS = ("weighted_error", "kl")


@dataclass
class SensitivityProfile:
    """Per-layer proxies: ``layers[name][metric][bits] -> float``."""

    fingerprint: str
    bits: list[int]
    group_size: int
    method: str
    n_samples: int
    seq_len: int
    layers: dict[str, dict[str, dict[int, float]]] = field(default_factory=dict)

    def scores(self, metric: str = "kl") -> dict[str, dict[int, float]]:
        """layer -> bits -> score of one metric (what ``SearchSpace.feature_fn`` takes)."""
        if metric not in METRICS:
            raise ValueError(f"unknown sensitivity metric {metric!r}; choose from {list(METRICS)}")
        return {name: dict(m[metric]) for name, m in self.layers.items() if metric in m}

    def to_dict(self) -> dict[str, Any]:
        d = dict(self.__dict__)
        d["layers"] = {n: {m: {str(b): v for b, v in per.items()} for m, per in ms.items()}
                       for n, ms in self.layers.items()}
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "SensitivityProfile":
        d = dict(d)
        d["layers"] = {n: {m: {int(b): float(v) for b, v in per.items()} for m, per in ms.items()}
                       for n, ms in d["layers"].items()}
        return cls(**d)

    def save(self, path: str | Path) -> None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(str(path) + ".tmp")
        tmp.write_text(json.dumps(self.to_dict(), indent=1))
        tmp.replace(path)

    @classmethod
    def load(cls, path: str | Path) -> "SensitivityProfile":
        try:
            return cls.from_dict(json.loads(Path(path).read_text()))
        except (KeyError, TypeError, json.JSONDecodeError) as err:
            raise ValueError(f"{path}: not a sensitivity profile ({err})") from None


def cache_dir() -> Path:
    """Where profiles are cached: $AUTOMIX_CACHE_DIR/sensitivity or the user cache dir."""
    root = os.environ.get("AUTOMIX_CACHE_DIR")
    if root:
        return Path(root) / "sensitivity"
    from platformdirs import user_cache_dir

    return Path(user_cache_dir("automix")) / "sensitivity"


def _kl(logp_ref, logits):
    import torch

    logq = torch.log_softmax(logits.float(), dim=-1)
    return max(0.0, float((logp_ref.exp() * (logp_ref - logq)).sum(-1).mean()))  # >= 0 up to rounding


def profile_model(
    model: Any,
    calib: Any,
    bits: Sequence[int] = (2, 3, 4, 8),
    group_size: int = 64,
    method: str = "minmax",
    kl: bool = True,
    fingerprint: str = "",
    layers: Sequence[str] | None = None,
) -> SensitivityProfile:
    """Profile `model` on calibration token ids `calib` (n, L): one pass to collect activation
    energy per input channel, then per layer and bits the weighted error and (optionally) the
    logits KL with only that layer quantized. The model's weights are restored afterwards."""
    import torch

    targets = target_layers(model)
    names = list(layers) if layers is not None else list(targets)
    unknown = [n for n in names if n not in targets]
    if unknown:
        raise ValueError(f"layers {unknown[:3]} are not target layers of the model")
    energy: dict[str, torch.Tensor] = {}
    counts: dict[str, int] = {}

    def hook(name):
        def fn(module, inputs, output):
            x = inputs[0].detach().float().reshape(-1, inputs[0].shape[-1])
            energy[name] = energy.get(name, 0) + (x * x).sum(0)
            counts[name] = counts.get(name, 0) + x.shape[0]
        return fn

    handles = [targets[n].register_forward_hook(hook(n)) for n in names]
    try:
        with torch.no_grad():
            ref = model(input_ids=calib).logits
    finally:
        for h in handles:
            h.remove()
    logp_ref = torch.log_softmax(ref.float(), dim=-1)
    prof = SensitivityProfile(fingerprint, [int(b) for b in bits], group_size, method,
                              int(calib.shape[0]), int(calib.shape[1]))
    for name in names:
        weight = linear_weight(targets[name])
        original = weight.detach().clone()
        act = energy[name] / max(1, counts[name])
        entry: dict[str, dict[int, float]] = {"weighted_error": {}, "kl": {}} if kl else {
            "weighted_error": {}}
        try:
            for b in bits:
                if b >= 16:
                    entry["weighted_error"][b] = 0.0
                    if kl:
                        entry["kl"][b] = 0.0
                    continue
                deq = quantize(original.float(), int(b), group_size, method).dequantize(torch.float32)
                err = ((original.float() - deq) ** 2 * act[None, :]).sum()
                entry["weighted_error"][b] = float(err)
                if kl:
                    with torch.no_grad():
                        weight.copy_(deq.to(weight.dtype))
                        entry["kl"][b] = _kl(logp_ref, model(input_ids=calib).logits)
                        weight.copy_(original)
        finally:
            with torch.no_grad():
                weight.copy_(original)
        prof.layers[name] = entry
    return prof


def _settings_key(**settings: Any) -> str:
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:10]


def load_or_profile(
    model_spec: str,
    bits: Sequence[int] = (2, 3, 4, 8),
    group_size: int = 64,
    method: str = "minmax",
    n_samples: int = 16,
    seq_len: int = 128,
    kl: bool = True,
    cache: str | Path | None = None,
    refresh: bool = False,
) -> tuple[SensitivityProfile, Path, bool]:
    """The cached profile of a model directory (or 'builtin:tiny'), computing it if missing.

    The cache file is named by the model fingerprint (config + weights) and the settings, so a
    changed model is profiled again. Returns (profile, cache path, whether it was computed)."""
    fp = model_fingerprint(model_spec)
    key = _settings_key(bits=[int(b) for b in bits], group_size=group_size, method=method,
                        n_samples=n_samples, seq_len=seq_len, kl=kl)
    path = Path(cache) if cache is not None else cache_dir()
    path = path / f"{fp}-{key}.json"
    if path.is_file() and not refresh:
        prof = SensitivityProfile.load(path)
        if prof.fingerprint == fp:
            return prof, path, False
    import torch

    model, tokenizer = load_model(model_spec, dtype=torch.float32)
    if tokenizer is None:
        raise ValueError(f"{model_spec}: no tokenizer files; profiling needs calibration text")
    calib = calibration_batches(tokenizer, n_samples=n_samples, seq_len=seq_len, seed=0)
    prof = profile_model(model, calib, bits, group_size, method, kl=kl, fingerprint=fp)
    prof.save(path)
    return prof, path, True
