"""GGUF files as a model source: converted once (content-addressed cache), loaded like a directory."""

from __future__ import annotations

import json
import shutil
import sys

import pytest
import torch

from automix.arch import ModelLoadError
from automix.trial import gguf_convert, models
from automix.config.locations import cache_root
from tests.trial.tiny_gguf import write_tiny_llama_gguf


@pytest.fixture(autouse=True)
def _own_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("AUTOMIX_CACHE_DIR", str(tmp_path / "cache"))


@pytest.fixture
def tiny_gguf(tmp_path):
    path = tmp_path / "files" / "tiny.gguf"
    path.parent.mkdir()
    ref = write_tiny_llama_gguf(path)
    return path, ref


def test_gguf_loads_like_the_original(tiny_gguf):
    path, ref = tiny_gguf
    model_dir = models.resolve_model_dir(str(path))
    assert model_dir.parent == cache_root() / "gguf" and (model_dir / "config.json").is_file()
    manifest = json.loads((model_dir / gguf_convert.MANIFEST).read_text())
    assert manifest["architecture"] == "llama" and len(manifest["sha256"]) == 64
    cfg = models.check_model_config(model_dir)
    assert getattr(cfg, "quantization_config", None) is None  # saved as a plain dense model
    model, tok = models.load_model(str(path))
    ids = torch.randint(0, ref.config.vocab_size, (2, 13))
    with torch.no_grad():
        torch.testing.assert_close(model(ids).logits, ref(ids).logits, rtol=1e-5, atol=1e-5)
    assert tok is not None
    enc = tok("the cat then")["input_ids"]
    assert tok.decode(enc) == "the cat then" and 256 in enc  # the "Ġt" merge is applied
    assert tok.pad_token is not None
    # everything downstream sees a directory: fingerprints agree with the directory's
    assert models.model_fingerprint(str(path)) == models.model_fingerprint(model_dir)


def test_second_load_hits_the_cache(tiny_gguf, monkeypatch):
    path, _ = tiny_gguf
    first = models.resolve_model_dir(str(path))
    stamp = (first / "model.safetensors").stat().st_mtime_ns

    def no_conversion(*a, **k):
        raise AssertionError("converted again")

    monkeypatch.setattr(gguf_convert, "_convert", no_conversion)
    assert models.resolve_model_dir(str(path)) == first
    # content-addressed: the same bytes under another name and place are the same entry
    other = path.parent.parent / "elsewhere" / "renamed.GGUF"
    other.parent.mkdir()
    shutil.copy(path, other)
    assert models.resolve_model_dir(str(other)) == first
    assert (first / "model.safetensors").stat().st_mtime_ns == stamp


def test_a_failed_conversion_leaves_nothing(tiny_gguf, monkeypatch):
    path, _ = tiny_gguf

    def broken(src, dest, tokenizer=True):
        (dest / "config.json").write_text("{}")
        raise ModelLoadError("conversion broke")

    monkeypatch.setattr(gguf_convert, "_convert", broken)
    with pytest.raises(ModelLoadError, match="conversion broke"):
        models.resolve_model_dir(str(path))
    assert list((cache_root() / "gguf").iterdir()) == []


def test_gguf_without_tokenizer(tmp_path):
    path = tmp_path / "bare.gguf"
    write_tiny_llama_gguf(path, tokenizer=False)
    model, tok = models.load_model(str(path))
    assert tok is None and model.config.model_type == "llama"


def test_missing_file():
    with pytest.raises(ModelLoadError, match=r"'/nonexistent/m\.gguf' does not exist.*\.gguf file"):
        models.resolve_model_dir("/nonexistent/m.gguf")
    with pytest.raises(ModelLoadError, match="does not exist"):
        gguf_convert.converted_model_dir("/nonexistent/m.gguf")


def test_not_a_gguf_file(tmp_path):
    bad = tmp_path / "weights.gguf"
    bad.write_bytes(b"PK\x03\x04 this is not a gguf file at all" * 10)
    with pytest.raises(ModelLoadError, match=r"weights\.gguf is not a readable GGUF file"):
        models.resolve_model_dir(str(bad))
    empty = tmp_path / "empty.gguf"
    empty.write_bytes(b"")
    with pytest.raises(ModelLoadError, match="not a readable GGUF file"):
        models.load_model(str(empty))


def test_unsupported_architecture(tmp_path):
    path = tmp_path / "other.gguf"
    write_tiny_llama_gguf(path, arch="phi3")
    with pytest.raises(ModelLoadError) as err:
        models.resolve_model_dir(str(path))
    msg = str(err.value)
    assert "unsupported architecture 'phi3'" in msg and "other.gguf" in msg
    assert "llama" in msg and "qwen2" in msg  # names what is supported
    assert set(gguf_convert.gguf_architectures()) <= set(models.supported_architectures())


def test_missing_gguf_package(tiny_gguf, monkeypatch):
    path, _ = tiny_gguf
    monkeypatch.setitem(sys.modules, "gguf", None)  # `import gguf` now raises ImportError
    with pytest.raises(ModelLoadError, match=r"pip install gguf"):
        models.resolve_model_dir(str(path))
