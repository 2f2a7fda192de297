"""GGUF files as a model source: converted once into a `save_pretrained` directory, then cached.

`converted_model_dir(path)` returns ``<cache_root>/gguf/<sha256[:16]>/``: the file's weights
dequantized to float32 by transformers (``from_pretrained(..., gguf_file=...)``, which needs the
`gguf` package), saved with its tokenizer, keyed by the file's content hash, so the second use of
the same file (any name, any place) loads the directory directly. The conversion is written to
a temporary directory and renamed into place (`cache.atomic_dir`). ``automix-gguf.json`` in the
directory records where it came from.

Only the architectures both automix (`automix.arch`) and transformers' GGUF reader know are
accepted; the check reads the file's header before any conversion.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

from automix.arch import ModelLoadError, supported_architectures
from automix.config.locations import cache_root
from automix.trial.cache import atomic_dir, file_sha256

__all__ = ["GGUF_SUFFIX", "is_gguf_path", "gguf_architecture", "gguf_architectures", "gguf_cache_dir",
           "cached_conversion", "converted_model_dir"]

GGUF_SUFFIX = ".gguf"
MANIFEST = "automix-gguf.json"
_COMPLETE = ("config.json", MANIFEST)  # the manifest is written last, before the rename


def is_gguf_path(spec: str | os.PathLike) -> bool:
    return str(spec).lower().endswith(GGUF_SUFFIX)


def _gguf_module() -> Any:
    try:
        import gguf  # lazy: optional at import time; the error below says how to install it
    except ImportError:
        raise ModelLoadError("reading GGUF model files needs the `gguf` package: pip install gguf") from None
    return gguf


def gguf_architectures() -> list[str]:
    """GGUF `general.architecture` values automix loads: its own families that transformers'
    GGUF reader converts."""
    try:
        from transformers.modeling_gguf_pytorch_utils import GGUF_SUPPORTED_ARCHITECTURES
    except ImportError:  # an older transformers: these families have been readable since 4.45
        GGUF_SUPPORTED_ARCHITECTURES = ["llama", "mistral", "qwen2", "gpt2"]
    return [a for a in supported_architectures() if a in GGUF_SUPPORTED_ARCHITECTURES]


def _header(path: str | os.PathLike) -> tuple[str, bool]:
    """(`general.architecture`, whether it describes a tokenizer) of a GGUF file; memory-mapped,
    so fast on large files."""
    gguf = _gguf_module()
    try:
        reader = gguf.GGUFReader(str(path), "r")
        field = reader.fields.get("general.architecture")
        if field is None:
            raise ValueError("no general.architecture key in its header")
        return bytes(field.parts[field.data[0]]).decode("utf-8"), "tokenizer.ggml.model" in reader.fields
    except (ValueError, OSError, IndexError, KeyError, UnicodeDecodeError) as err:
        raise ModelLoadError(f"{path} is not a readable GGUF file: {err}") from None


def gguf_architecture(path: str | os.PathLike) -> str:
    """`general.architecture` of a GGUF file."""
    return _header(path)[0]


def gguf_cache_dir() -> Path:
    return cache_root() / "gguf"


def _complete(d: Path) -> bool:
    return all((d / f).is_file() for f in _COMPLETE)


def cached_conversion(sha256: str) -> Path | None:
    """The converted directory of the GGUF file with this content digest, if made already."""
    out = gguf_cache_dir() / sha256[:16]
    return out if _complete(out) else None


def converted_model_dir(path: str | os.PathLike, sha256: str | None = None) -> Path:
    """The save_pretrained directory of a GGUF file, converting it the first time.

    `sha256` may be passed when the caller has just verified the file's digest (saves a hash).
    """
    p = Path(path).expanduser()
    if not p.is_file():
        raise ModelLoadError(f"GGUF file {str(path)!r} does not exist")
    digest = sha256 or file_sha256(p)
    out = gguf_cache_dir() / digest[:16]
    if _complete(out):
        return out
    arch, has_tokenizer = _header(p)
    supported = gguf_architectures()
    if arch not in supported:
        raise ModelLoadError(f"{p}: unsupported architecture {arch!r} in this GGUF file; automix loads GGUF "
                             f"files of: {', '.join(supported)}")
    if out.exists():  # an incomplete entry left by an older version or by hand: rebuild it
        shutil.rmtree(out)
    with atomic_dir(out) as tmp:
        _convert(p, tmp, has_tokenizer)
        (tmp / MANIFEST).write_text(json.dumps(
            {"source": str(p.resolve()), "sha256": digest, "architecture": arch}, indent=1))
    return out


def _convert(src: Path, dest: Path, tokenizer: bool = True) -> None:
    """Dequantize `src` to float32 and save it (and its tokenizer, when the file describes one)
    as a save_pretrained directory."""
    _gguf_module()
    import torch  # lazy: keeps this module light for `automix models list`
    import transformers  # lazy: as above

    kw: dict[str, Any] = {}
    if hasattr(transformers, "GgufConfig"):  # newer transformers may keep GGUF blocks; we want dense weights
        kw["quantization_config"] = transformers.GgufConfig(dequantize=True)
    try:
        model = transformers.AutoModelForCausalLM.from_pretrained(
            src.parent, gguf_file=src.name, dtype=torch.float32, **kw)
        tok = transformers.AutoTokenizer.from_pretrained(src.parent, gguf_file=src.name) if tokenizer else None
    except Exception as err:  # noqa: BLE001 - re-raised naming the file
        raise ModelLoadError(f"cannot convert GGUF file {src}: {type(err).__name__}: {err}") from err
    # the dequantized model is a plain dense one: no GGUF quantization config may follow it
    if getattr(model.config, "quantization_config", None) is not None:
        del model.config.quantization_config
    if getattr(model, "hf_quantizer", None) is not None:
        model.hf_quantizer = None
    bad = sorted({p.dtype for p in model.parameters() if not p.dtype.is_floating_point}, key=str)
    if bad:
        raise ModelLoadError(f"{src}: conversion left quantized ({bad}) parameters; expected dense weights")
    model.save_pretrained(dest)
    if tok is not None:
        tok.save_pretrained(dest)
