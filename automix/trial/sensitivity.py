"""Per-layer, per-bits sensitivity profiles: cheap proxies of how much quantizing one layer hurts.

Computed once per model, task data and settings, and cached on disk. Three metrics:

* ``fisher_kl`` (the default, what the search uses): a second-order estimate of the mean
  per-token KL divergence of the next-token distribution when that one layer alone is quantized.
  The quantized layer's effect is computed exactly inside its own decoder block (the block is
  re-run on its cached inputs, so attention, gating and norms inside the block are not
  linearised), and carried to the output through the Fisher information of the model's own
  predictive distribution: KL ~= 1/2 E_y[(g_y . dh)^2], where dh is the change of the block's
  output and g_y the gradient of log p(y) w.r.t. that output for labels y drawn from the model.
  Cost: one forward and `n_draws` backward passes for the whole model, then one block forward
  per layer and bit width (about 1/n_blocks of a model forward each); every weight is
  quantized once per bit width. Cross-sequence terms vanish, so the square is taken per sequence.
* ``weighted_error``: the quantization error weighted by input-activation energy,
  sum_ij (W - Q(W))_ij^2 * E[x_j^2] -- the diagonal-Hessian (OBS/GPTQ-style) estimate of the
  layer's output error, with no model-level weighting;
* ``kl``: the exact single-layer KL, one full model forward per layer and bit width (the
  reference the cheap metric is measured against; `automix bench sensitivity`).

Calibration text comes from the task's own training data (`Task.train_texts`: the study's
`lm` text or its BoolQ prompts with answers), so the cache key holds the data's identity.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import torch

from automix.arch import arch_info, block_index, linear_weight, target_layers
from automix.quant import DEFAULT_METHOD, quantize
from automix.config.locations import cache_root
from automix.trial.cache import hash_file
from automix.trial.data import calibration_batches, get_task, is_named_data, resolve_data
from automix.trial.models import load_model, model_fingerprint

__all__ = ["SensitivityProfile", "profile_model", "load_or_profile", "profile_job", "profile_path",
           "data_identity", "cache_dir", "METRICS", "DEFAULT_METRIC"]

METRICS = ("fisher_kl", "weighted_error", "kl")
DEFAULT_METRIC = "fisher_kl"
# Bump when a metric's definition changes: cached profiles of other versions are not reused.
PROFILE_VERSION = 2


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
    task: str = "lm"
    data: str = "builtin"  # `data_identity` of the calibration data
    seconds: float = 0.0  # wall time of the computation
    cpu_seconds: float = 0.0  # its CPU time (all threads of the process)

    def scores(self, metric: str = DEFAULT_METRIC) -> dict[str, dict[int, float]]:
        """layer -> bits -> score of one metric (what ``SearchSpace.feature_fn`` takes)."""
        if metric not in METRICS:
            raise ValueError(f"unknown sensitivity metric {metric!r}; choose from {list(METRICS)}")
        out = {name: dict(m[metric]) for name, m in self.layers.items() if metric in m}
        if self.layers and not out:
            have = sorted({k for m in self.layers.values() for k in m})
            raise ValueError(f"this profile has no {metric!r} scores (it has {have})")
        return out

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
        tmp = Path(f"{path}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(self.to_dict(), indent=1))
        tmp.replace(path)

    @classmethod
    def load(cls, path: str | Path) -> "SensitivityProfile":
        try:
            return cls.from_dict(json.loads(Path(path).read_text()))
        except (KeyError, TypeError, json.JSONDecodeError) as err:
            raise ValueError(f"{path}: not a sensitivity profile ({err})") from None


def cache_dir() -> Path:
    """Where profiles are cached: ``sensitivity/`` under the automix cache root
    (`automix.config.locations.cache_root`: $AUTOMIX_CACHE_DIR or the user cache dir)."""
    return cache_root() / "sensitivity"


# ----------------------------------------------------------------------------- the measurement


def _kl(logp_ref: torch.Tensor, logits: torch.Tensor) -> float:
    """Summed per-token KL(ref || model) over the rows of a chunk."""
    logq = torch.log_softmax(logits.float(), dim=-1)
    return float((logp_ref.exp() * (logp_ref - logq)).sum(-1).sum())


def _first(output: Any) -> torch.Tensor:
    return output[0] if isinstance(output, (tuple, list)) else output


class _Progress:
    """Prints 'layers done / total, elapsed, ETA' about every `every` seconds (and at the end)."""

    def __init__(self, total: int, label: str, every: float = 10.0, stream: Any = None) -> None:
        self.total, self.label, self.every = total, label, every
        self.stream = stream if stream is not None else sys.stdout
        self.t0 = self.last = time.perf_counter()

    def __call__(self, done: int) -> None:
        now = time.perf_counter()
        if done < self.total and now - self.last < self.every:
            return
        self.last = now
        elapsed = now - self.t0
        eta = elapsed / done * (self.total - done) if done else float("nan")
        print(f"{self.label}: {done}/{self.total} layers, {elapsed:.0f} s elapsed, ETA {eta:.0f} s",
              file=self.stream, flush=True)


@dataclass
class _Chunk:
    """What one chunk of calibration rows leaves behind for the per-layer loop."""

    args: list[tuple]  # per block: positional args of its forward (hidden states detached)
    kwargs: list[dict]  # per block: keyword args of its forward
    grads: list[torch.Tensor]  # per block: (n_draws, rows, seq, hidden) d log p(y) / d output
    logp: torch.Tensor | None  # reference log-probabilities (only for the exact `kl`)


def _capture(model: Any, blocks: Sequence[Any], ids: torch.Tensor, n_draws: int, want_kl: bool,
             gen: torch.Generator) -> _Chunk:
    """One forward of the chunk, recording each block's inputs and outputs, then `n_draws`
    backward passes of log p(y) for labels y drawn from the model's own distribution."""
    args: list[tuple] = [()] * len(blocks)
    kwargs: list[dict] = [{}] * len(blocks)
    outs: list[torch.Tensor | None] = [None] * len(blocks)

    def pre(i):
        def fn(module, a, kw):
            args[i] = tuple(v.detach() if torch.is_tensor(v) else v for v in a)
            kwargs[i] = {k: (v.detach() if torch.is_tensor(v) else v) for k, v in kw.items()}
            if i > 0:
                return None
            # The graph starts at block 0's input: no parameter needs a gradient.
            if a:
                return (a[0].detach().requires_grad_(True),) + tuple(a[1:]), kw
            return a, {**kw, "hidden_states": kw["hidden_states"].detach().requires_grad_(True)}
        return fn

    def post(i):
        def fn(module, a, output):
            outs[i] = _first(output)
        return fn

    handles = [b.register_forward_pre_hook(pre(i), with_kwargs=True) for i, b in enumerate(blocks)]
    handles += [b.register_forward_hook(post(i)) for i, b in enumerate(blocks)]
    try:
        with torch.enable_grad():
            logits = model(input_ids=ids, use_cache=False).logits
            logp = torch.log_softmax(logits.float(), dim=-1)
            probs = logp.detach().exp().reshape(-1, logp.shape[-1])
            grads: list[list[torch.Tensor]] = [[] for _ in blocks]
            for k in range(n_draws):
                y = torch.multinomial(probs.cpu(), 1, generator=gen).to(logp.device)
                loss = logp.reshape(-1, logp.shape[-1]).gather(1, y).sum()
                gs = torch.autograd.grad(loss, outs, retain_graph=k < n_draws - 1)
                for i, g in enumerate(gs):
                    grads[i].append(g.detach())
    finally:
        for h in handles:
            h.remove()
    return _Chunk(args, kwargs, [torch.stack(g) for g in grads], logp.detach() if want_kl else None)


def _block_out(block: Any, chunk: _Chunk, i: int) -> torch.Tensor:
    return _first(block(*chunk.args[i], **chunk.kwargs[i]))


@torch.no_grad()
def profile_model(
    model: Any,
    calib: torch.Tensor,
    bits: Sequence[int] = (2, 3, 4, 8),
    group_size: int = 64,
    method: str = DEFAULT_METHOD,
    metrics: Sequence[str] = ("fisher_kl", "weighted_error"),
    fingerprint: str = "",
    layers: Sequence[str] | None = None,
    n_draws: int = 16,
    chunk_rows: int = 4,
    seed: int = 0,
    progress: Callable[[int], None] | bool | None = None,
) -> SensitivityProfile:
    """Profile `model` on calibration token ids `calib` (n, L) for the given `metrics` (see the
    module doc). Every weight is quantized once per bit width; the model's weights are restored
    afterwards. `progress`: a callable taking the number of layers done, or True to print."""
    unknown_m = [m for m in metrics if m not in METRICS]
    if unknown_m or not metrics:
        raise ValueError(f"unknown sensitivity metric(s) {unknown_m}; choose from {list(METRICS)}")
    targets = target_layers(model)
    names = list(layers) if layers is not None else list(targets)
    unknown = [n for n in names if n not in targets]
    if unknown:
        raise ValueError(f"layers {unknown[:3]} are not target layers of the model")
    if n_draws < 1:
        raise ValueError(f"n_draws must be >= 1, got {n_draws}")
    device = next(model.parameters()).device
    calib = calib.to(device)
    blocks = list(model.get_submodule(arch_info(model).block_prefix))
    want_fisher, want_kl = "fisher_kl" in metrics, "kl" in metrics
    t_start, cpu_start = time.perf_counter(), time.process_time()

    # Pass 1, per chunk of rows: input energy of every target layer (weighted_error), block
    # inputs and the Fisher gradients (fisher_kl), reference log-probabilities (kl).
    energy: dict[str, torch.Tensor] = {}
    counts: dict[str, int] = {}

    def hook(name):
        def fn(module, inputs, output):
            x = inputs[0].detach().float().reshape(-1, inputs[0].shape[-1])
            energy[name] = energy.get(name, 0) + (x * x).sum(0)
            counts[name] = counts.get(name, 0) + x.shape[0]
        return fn

    handles = [targets[n].register_forward_hook(hook(n)) for n in names]
    gen = torch.Generator().manual_seed(seed)
    chunks: list[_Chunk] = []
    trainable = [p for p in model.parameters() if p.requires_grad]
    for p in trainable:  # gradients flow to block outputs only
        p.requires_grad_(False)
    try:
        for start in range(0, calib.shape[0], max(1, chunk_rows)):
            ids = calib[start:start + max(1, chunk_rows)]
            if want_fisher:
                chunks.append(_capture(model, blocks, ids, n_draws, want_kl, gen))
            else:
                logits = model(input_ids=ids, use_cache=False).logits
                chunks.append(_Chunk([], [], [], torch.log_softmax(logits.float(), -1) if want_kl else None))
    finally:
        for h in handles:
            h.remove()
        for p in trainable:
            p.requires_grad_(True)
    n_tokens = int(calib.numel())

    prof = SensitivityProfile(fingerprint, [int(b) for b in bits], group_size, method,
                              int(calib.shape[0]), int(calib.shape[1]))
    report = _Progress(len(names), "profile") if progress is True else (progress or None)
    by_block: dict[int, list[str]] = {}
    for n in names:
        by_block.setdefault(block_index(n), []).append(n)
    done = 0
    for bi, block_names in sorted(by_block.items()):
        ref = [_block_out(blocks[bi], c, bi) for c in chunks] if want_fisher else []
        for name in block_names:
            weight = linear_weight(targets[name])
            original = weight.detach().clone()
            act = energy[name] / max(1, counts[name])
            entry: dict[str, dict[int, float]] = {m: {} for m in metrics}
            try:
                for b in bits:
                    if b >= 16:
                        for m in metrics:
                            entry[m][b] = 0.0
                        continue
                    deq = quantize(original.float(), int(b), group_size, method).dequantize(torch.float32)
                    if "weighted_error" in entry:
                        entry["weighted_error"][b] = float(((original.float() - deq) ** 2 * act[None, :]).sum())
                    weight.copy_(deq.to(weight.dtype))
                    if want_fisher:
                        total = 0.0
                        for c, h_ref in zip(chunks, ref):
                            dh = (_block_out(blocks[bi], c, bi) - h_ref).float()
                            s = (c.grads[bi].float() * dh.unsqueeze(0)).flatten(2).sum(-1)  # (draws, rows)
                            total += float((s * s).mean(0).sum())
                        entry["fisher_kl"][b] = 0.5 * total / n_tokens
                    if want_kl:
                        total = 0.0
                        for start, c in zip(range(0, calib.shape[0], max(1, chunk_rows)), chunks):
                            ids = calib[start:start + max(1, chunk_rows)]
                            total += _kl(c.logp, model(input_ids=ids, use_cache=False).logits)
                        entry["kl"][b] = max(0.0, total / n_tokens)  # >= 0 up to rounding
                    weight.copy_(original)
            finally:
                weight.copy_(original)
            prof.layers[name] = entry
            done += 1
            if report:
                report(done)
    prof.layers = {n: prof.layers[n] for n in names}  # forward order, as given
    prof.seconds = time.perf_counter() - t_start
    prof.cpu_seconds = time.process_time() - cpu_start
    return prof


# ----------------------------------------------------------------------------- cache and jobs


def _hash_path(h: "hashlib._Hash", path: Path) -> None:
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    for p in files:
        h.update(str(p.relative_to(path) if path.is_dir() else p.name).encode())
        hash_file(h, p)


def data_identity(data: str | os.PathLike | None) -> str:
    """What the calibration data is, for cache keys: 'builtin' for a task's built-in data, else a
    content hash of the file(s) (a named data set such as builtin:python-docs by the files it is
    built into, which differ between Python versions), else the name itself."""
    if data is None:
        return "builtin"
    if is_named_data(data):
        train, evl = resolve_data(data, ())
        h = hashlib.sha256(str(data).encode())
        for p in (train, evl):
            if p is not None:
                _hash_path(h, p)
        return f"{data}:sha256:{h.hexdigest()[:16]}"
    path = Path(data).expanduser()
    if path.exists():
        h = hashlib.sha256()
        _hash_path(h, path)
        return f"sha256:{h.hexdigest()[:16]}"
    return str(data)


def _settings(bits: Sequence[int], group_size: int, method: str, n_samples: int, seq_len: int,
              metrics: Sequence[str], n_draws: int, task: str, data_id: str) -> dict[str, Any]:
    return dict(version=PROFILE_VERSION, bits=[int(b) for b in bits], group_size=int(group_size),
                method=method, n_samples=int(n_samples), seq_len=int(seq_len),
                metrics=sorted(metrics), n_draws=int(n_draws), task=task, data=data_id)


def profile_path(model_spec: str, *, bits: Sequence[int] = (2, 3, 4, 8), group_size: int = 64,
                 method: str = DEFAULT_METHOD, n_samples: int = 4, seq_len: int = 128,
                 metrics: Sequence[str] = ("fisher_kl", "weighted_error"), n_draws: int = 16,
                 task: str = "lm", data: str | None = None, cache: str | Path | None = None
                 ) -> tuple[Path, str]:
    """(cache file, model fingerprint) of a profile: named by the model's fingerprint (config +
    weights) and a hash of the settings, the task and the data's identity."""
    fp = model_fingerprint(model_spec)
    s = _settings(bits, group_size, method, n_samples, seq_len, metrics, n_draws, task, data_identity(data))
    key = hashlib.sha256(json.dumps(s, sort_keys=True).encode()).hexdigest()[:10]
    root = Path(cache) if cache is not None else cache_dir()
    return root / f"{fp}-{key}.json", fp


def load_or_profile(
    model_spec: str,
    bits: Sequence[int] = (2, 3, 4, 8),
    group_size: int = 64,
    method: str = DEFAULT_METHOD,
    n_samples: int = 4,
    seq_len: int = 128,
    metrics: Sequence[str] = ("fisher_kl", "weighted_error"),
    n_draws: int = 16,
    task: str = "lm",
    data: str | None = None,
    cache: str | Path | None = None,
    refresh: bool = False,
    device: str = "cpu",
    progress: bool = False,
) -> tuple[SensitivityProfile, Path, bool]:
    """The cached profile of a model directory (or 'builtin:tiny') calibrated on `task`'s
    training text from `data` (None: the task's built-in data), computing it if missing.
    Returns (profile, cache path, whether it was computed)."""
    path, fp = profile_path(model_spec, bits=bits, group_size=group_size, method=method,
                            n_samples=n_samples, seq_len=seq_len, metrics=metrics, n_draws=n_draws,
                            task=task, data=data, cache=cache)
    if path.is_file() and not refresh:
        prof = SensitivityProfile.load(path)
        if prof.fingerprint == fp:
            return prof, path, False
    t = get_task(task, data)  # bad data fails here, before the model loads
    model, tokenizer = load_model(model_spec, dtype=torch.float32, device=device)
    if tokenizer is None:
        raise ValueError(f"{model_spec}: no tokenizer files; profiling needs calibration text")
    calib = calibration_batches(tokenizer, n_samples=n_samples, seq_len=seq_len, seed=0, task=t)
    prof = profile_model(model, calib, bits, group_size, method, metrics=metrics, fingerprint=fp,
                         n_draws=n_draws, progress=progress)
    prof.task, prof.data = task, data_identity(data)
    prof.save(path)
    return prof, path, True


def profile_job(payload: dict[str, Any]) -> dict[str, Any]:
    """What a Ray worker runs for a study's profile: `load_or_profile(**payload)` with progress
    printed, on the worker's device; returns the profile as a dict (the driver caches it too,
    since a cluster worker's cache directory need not be the driver's). `threads` sets the
    CPU threads torch uses there."""
    kw = dict(payload)
    threads = kw.pop("threads", None)
    if threads:
        torch.set_num_threads(int(threads))
    if kw.get("device", "cpu") == "cuda" and not torch.cuda.is_available():
        kw["device"] = "cpu"
    prof, _, _ = load_or_profile(**kw, progress=True)
    return prof.to_dict()
