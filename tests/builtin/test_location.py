"""Where the built-in model lives: shipped tiny model found, a missing one is an error, never trained."""

from __future__ import annotations

import pytest

from automix import builtin
from automix.trial import pretrain
from automix.trial import models


def test_shipped_tiny_model_is_found_without_training(monkeypatch, tmp_path):
    monkeypatch.setenv("AUTOMIX_CACHE_DIR", str(tmp_path))
    d = builtin.builtin_model_dir("tiny")
    assert d == builtin.shipped_model_dir("tiny") and (d / "model.safetensors").is_file()
    assert models.resolve_model_dir("builtin:tiny") == d


def test_missing_builtin_model_says_how_to_make_it_and_does_not_train(monkeypatch, tmp_path):
    monkeypatch.setenv("AUTOMIX_CACHE_DIR", str(tmp_path))

    def no_training(*args, **kwargs):  # loading a study's model must never train one
        raise AssertionError("pretrain was called while resolving a model")

    monkeypatch.setattr(pretrain, "pretrain", no_training)
    with pytest.raises(builtin.BuiltinModelMissing, match=r"automix pretrain --size small"):
        builtin.builtin_model_dir("small")
    with pytest.raises(models.ModelLoadError, match=r"run `automix pretrain --size small`"):
        models.resolve_model_dir("builtin:small")
    assert not any(tmp_path.iterdir())  # nothing written


def test_pretrained_small_model_in_the_cache_is_used(monkeypatch, tmp_path):
    monkeypatch.setenv("AUTOMIX_CACHE_DIR", str(tmp_path))
    cached = builtin.cached_model_dir("small")
    cached.mkdir(parents=True)
    (cached / "config.json").write_text("{}")
    (cached / "model.safetensors").write_bytes(b"")
    assert builtin.builtin_model_dir("small") == cached
