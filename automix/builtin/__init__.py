"""The built-in model and its data: a tiny Llama trained here on a synthetic corpus.

`builtin_model_dir` is the one place that knows where a built-in model lives: shipped in the
package (``assets/tiny``) or trained by ``automix pretrain --size SIZE`` into the user cache.
Loading never trains: a missing model is an error that says which command makes it.
`corpus` generates the documents and the BoolQ-style examples; `automix.trial.pretrain` trains
the model.
"""

from __future__ import annotations

from pathlib import Path

from automix.config.locations import cache_root

__all__ = ["BUILTIN_SIZES", "BuiltinModelMissing", "builtin_model_dir", "cached_model_dir", "shipped_model_dir"]

BUILTIN_SIZES = ("tiny", "small")


class BuiltinModelMissing(ValueError):
    """A built-in model that is neither shipped nor trained yet; the message says how to make it."""


def _check_size(size: str) -> None:
    if size not in BUILTIN_SIZES:
        raise ValueError(f"unknown built-in model size {size!r}; choose one of {', '.join(BUILTIN_SIZES)}")


def shipped_model_dir(size: str) -> Path:
    """Where a built-in model ships inside the package (only ``tiny`` does)."""
    _check_size(size)
    return Path(__file__).parent / "assets" / size


def cached_model_dir(size: str) -> Path:
    """Where `automix pretrain` puts a built-in model by default (``models/`` in the cache root)."""
    _check_size(size)
    return cache_root() / "models" / size


def _complete(d: Path) -> bool:
    return (d / "config.json").is_file() and (d / "model.safetensors").is_file()


def builtin_model_dir(size: str = "tiny") -> Path:
    """Directory of the built-in model: shipped in the package, else trained earlier by
    ``automix pretrain --size SIZE``. Raises `BuiltinModelMissing` (never trains) otherwise."""
    for d in (shipped_model_dir(size), cached_model_dir(size)):
        if _complete(d):
            return d
    raise BuiltinModelMissing(
        f"the built-in model 'builtin:{size}' is not trained yet: run `automix pretrain --size {size}` "
        f"once (it writes {cached_model_dir(size)})"
    )
