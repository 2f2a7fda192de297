"""Load local Hugging Face causal LMs, their tokenizers, and fingerprint them for on-disk caches.

A model spec is one of: 'builtin:tiny' / 'builtin:small' (the built-in model), a registry name
such as 'smollm2-135m' or 'registry:smollm2-135m' (`registry`, after `automix models get`), a
`.gguf` file (converted once, `gguf_convert`) or a local `save_pretrained` directory.
`resolve_model_dir` turns each into a directory; everything else here starts from it.

What a loaded model looks like (blocks, layer names, shapes) is `automix.arch`.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from pathlib import Path
from typing import Any, Iterator

import torch
from torch import nn
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer
from transformers.utils import logging as hf_logging

from automix.arch import ModelLoadError, arch_info, supported_architectures
from automix.builtin import BUILTIN_SIZES, builtin_model_dir
from automix.trial.cache import hash_file
from automix.trial.gguf_convert import converted_model_dir, is_gguf_path
from automix.trial.registry import MODELS as REGISTRY_MODELS, PREFIX as REGISTRY_PREFIX, registry_name
from automix.trial.registry import model_dir as registry_model_dir
from automix.trial.stream import load_streamed

__all__ = ["ModelLoadError", "is_named_model", "resolve_model_dir", "check_model_config", "load_model",
           "load_streamed_model", "quiet_loading", "load_tokenizer", "model_fingerprint"]

MODEL_SPECS = ("'builtin:tiny' / 'builtin:small', a registry name (" + ", ".join(sorted(REGISTRY_MODELS))
               + "), a .gguf file or a save_pretrained directory")


def is_named_model(spec: str | os.PathLike) -> bool:
    """Whether a model spec is a name (built-in or registry) rather than a path: a study file
    resolves paths against its own folder, names are left as they are."""
    s = str(spec)
    return s.startswith(("builtin:", REGISTRY_PREFIX)) or s in BUILTIN_SIZES or s in REGISTRY_MODELS


def resolve_model_dir(spec: str | os.PathLike) -> Path:
    """A model spec (see the module docstring) -> an existing directory with a config.json.

    Registry models and .gguf files resolve to their converted directory in the cache
    (converting on first use)."""
    s = str(spec)
    if s.startswith("builtin:") or s in BUILTIN_SIZES:
        try:
            return builtin_model_dir(s.split(":", 1)[-1] or "tiny")
        except ValueError as err:  # unknown size, or not trained yet: says which command makes it
            raise ModelLoadError(str(err)) from None
    name = registry_name(s)
    if name is not None:
        return registry_model_dir(name)
    path = Path(s).expanduser()
    if not path.exists():
        raise ModelLoadError(f"model {s!r} does not exist (expected {MODEL_SPECS})")
    if path.is_file() and is_gguf_path(path):
        return converted_model_dir(path)
    if not path.is_dir() or not (path / "config.json").is_file():
        raise ModelLoadError(f"{s!r} is not a Hugging Face model directory: no config.json in it")
    return path


def check_model_config(path: Path) -> Any:
    try:
        cfg = AutoConfig.from_pretrained(path)
    except Exception as err:  # noqa: BLE001 - re-raised with the path
        raise ModelLoadError(f"cannot read the model config in {path}: {err}") from err
    archs = list(getattr(cfg, "architectures", None) or [])
    if archs and not any(a.endswith("ForCausalLM") or a.endswith("LMHeadModel") for a in archs):
        raise ModelLoadError(f"{path} holds {', '.join(archs)}, not a causal language model; "
                             f"automix needs a *ForCausalLM model of: {', '.join(supported_architectures())}")
    arch_info(cfg)  # raises ModelLoadError naming the supported types
    return cfg


def load_model(spec: str | os.PathLike = "builtin:tiny", dtype: torch.dtype = torch.float32,
               device: str | torch.device = "cpu") -> tuple[nn.Module, Any]:
    """Load a causal LM and its tokenizer (None when the directory has no tokenizer files).

    `spec` is 'builtin:tiny', 'builtin:small' or a local `save_pretrained` directory. The model
    is returned in eval mode.
    """
    path = resolve_model_dir(spec)
    check_model_config(path)
    try:
        with quiet_loading():
            model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype)
    except Exception as err:  # noqa: BLE001
        raise ModelLoadError(f"cannot load the model weights in {path}: {err}") from err
    model.to(device).eval()
    return model, load_tokenizer(path)


def load_streamed_model(spec: str | os.PathLike, dtype: torch.dtype = torch.float32,
                        device: str | torch.device = "cpu") -> tuple[nn.Module, Any]:
    """A trial's model and tokenizer: the decoder's linear weights left in the file
    (:func:`automix.trial.stream.load_streamed`, read when a method quantizes or materializes
    them), everything else loaded; :func:`load_model` when the weights are not in safetensors."""
    path = resolve_model_dir(spec)
    cfg = check_model_config(path)
    try:
        with quiet_loading():
            model = load_streamed(path, cfg, dtype, device)
    except Exception as err:  # noqa: BLE001
        raise ModelLoadError(f"cannot load the model weights in {path}: {err}") from err
    if model is None:
        return load_model(path, dtype, device)
    return model, load_tokenizer(path)


@contextlib.contextmanager
def quiet_loading() -> Iterator[None]:
    """transformers' "Loading weights" progress bar off while a model loads: every trial loads
    its model, and on Ray workers each bar lands in the driver's output (its warnings still show)."""
    was_on = hf_logging.is_progress_bar_enabled()
    if was_on:
        hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was_on:
            hf_logging.enable_progress_bar()


def load_tokenizer(spec: str | os.PathLike) -> Any:
    """The tokenizer of a model directory (or 'builtin:...'), None when it has no tokenizer
    files; a missing pad token falls back to EOS, as batches need one."""
    path = resolve_model_dir(spec)
    if not any((path / f).is_file() for f in ("tokenizer.json", "tokenizer_config.json", "vocab.json",
                                                "tokenizer.model")):
        return None
    tokenizer = AutoTokenizer.from_pretrained(path)
    if tokenizer.pad_token is None and tokenizer.eos_token is not None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


# ----------------------------------------------------------------------------- fingerprints

def model_fingerprint(model_dir_or_model: str | os.PathLike | nn.Module) -> str:
    """Stable 16-hex-digit hash of a model's config and weights: the key for on-disk caches."""
    h = hashlib.sha256()
    if isinstance(model_dir_or_model, nn.Module):
        cfg = getattr(model_dir_or_model, "config", None)
        if cfg is not None:
            d = cfg.to_dict()
            for k in ("_name_or_path", "transformers_version", "dtype", "torch_dtype"):
                d.pop(k, None)
            h.update(json.dumps(d, sort_keys=True, default=str).encode())
        for name, t in model_dir_or_model.state_dict().items():
            t = t.detach().cpu().contiguous()
            h.update(f"{name}:{t.dtype}:{tuple(t.shape)}".encode())
            h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
        return h.hexdigest()[:16]
    path = resolve_model_dir(model_dir_or_model)
    files = sorted(p for p in path.iterdir() if p.is_file() and (
        p.name == "config.json" or p.suffix in (".safetensors", ".bin", ".pt")))
    for p in files:
        hash_file(h, p)
    return h.hexdigest()[:16]
