"""The wheel built from the repository is complete and works without the repository.

Every other test runs against the editable install, which reads the source folders directly; a
package missing from the wheel (as automix/export once was) shows only here: the wheel is built,
checked module by module against the source tree, installed without `-e` into a fresh virtual
environment, and used from a directory outside the repository: `automix --help`, a 2-trial
quickstart-like study and `automix export`.

The fresh environment borrows this one's installed dependencies (the lock's versions: `make
setup` installed them) through a `.pth` file, so nothing is downloaded or installed twice; only
automix itself comes from the wheel.
"""

from __future__ import annotations

import os
import shutil
import site
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
# Source folder -> the package it installs as (setup.py FOLDERS).
FOLDERS = {"automix": "automix", "kernels": "automix/kernels", "dashboards": "automix/dashboards"}

pytestmark = pytest.mark.slow


def expected_files() -> set[str]:
    """Every module and every built-in asset of the source tree, as wheel paths."""
    out = set()
    for folder, package in FOLDERS.items():
        for f in (ROOT / folder).rglob("*"):
            if "__pycache__" in f.parts or not f.is_file():
                continue
            rel = f.relative_to(ROOT / folder).as_posix()
            if f.suffix == ".py" or rel.startswith("builtin/assets/"):
                out.add(f"{package}/{rel}")
    return out


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    # built from a copy of the sources alone: setuptools' build/ folder in a checkout keeps files
    # of earlier builds, which would hide a package the build no longer finds
    src, out = tmp_path_factory.mktemp("src"), tmp_path_factory.mktemp("wheel")
    for name in ("pyproject.toml", "setup.py", "README.md"):
        if (ROOT / name).exists():
            shutil.copy2(ROOT / name, src / name)
    for folder in FOLDERS:
        shutil.copytree(ROOT / folder, src / folder, ignore=shutil.ignore_patterns("__pycache__"))
    build = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(out), str(src)],
                           capture_output=True, text=True, timeout=600)
    assert build.returncode == 0, build.stderr[-3000:]
    (whl,) = out.glob("automix-*.whl")
    return whl


@pytest.fixture(scope="module")
def venv(wheel, tmp_path_factory) -> Path:
    env = tmp_path_factory.mktemp("venv") / "env"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(env)], check=True, timeout=120)
    py = env / "bin" / "python"
    purelib = Path(subprocess.run([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                                  capture_output=True, text=True, check=True).stdout.strip())
    # this environment's dependencies, read-only; its .pth files (the editable automix) are not run
    ours = {sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"], *site.getsitepackages()}
    (purelib / "_automix_test_deps.pth").write_text("\n".join(sorted(p for p in ours if Path(p).is_dir())) + "\n")
    install = subprocess.run([sys.executable, "-m", "pip", "--python", str(py), "install", "-q", "--no-deps",
                              "--no-index", str(wheel)], capture_output=True, text=True, timeout=600)
    assert install.returncode == 0, install.stderr[-3000:]
    return env


def test_the_wheel_holds_every_module_and_asset(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    missing = sorted(expected_files() - names)
    assert not missing, f"{wheel.name} lacks {len(missing)} file(s) of the source tree: {missing[:20]}"
    assert not [n for n in names if n.split("/")[0] in ("kernels", "dashboards", "tests")], \
        "the wheel installs a top-level package other than automix"


def test_installed_wheel_runs_a_study_and_exports_outside_the_repository(venv, tmp_path):
    work = tmp_path / "project"
    (work / "spaces").mkdir(parents=True)
    space = yaml.safe_load((ROOT / "search_spaces" / "quickstart.yaml").read_text())
    (work / "spaces" / "quickstart.yaml").write_text(yaml.safe_dump(space))
    study = yaml.safe_load((ROOT / "studies" / "quickstart.yaml").read_text())
    study.update(name="wheel", n_trials=2, workers=1, search_space={"path": "spaces/quickstart.yaml"},
                 trial={**study["trial"], "steps": 2})
    (work / "study.yaml").write_text(yaml.safe_dump(study))

    env = {**os.environ, "PATH": f"{venv / 'bin'}{os.pathsep}{os.environ.get('PATH', '')}"}
    env.pop("PYTHONPATH", None)

    def automix(*args: str) -> str:
        out = subprocess.run([str(venv / "bin" / "automix"), *args], cwd=work, env=env,
                             capture_output=True, text=True, timeout=900)
        assert out.returncode == 0, f"automix {' '.join(args)} failed:\n{out.stdout[-2000:]}\n{out.stderr[-3000:]}"
        return out.stdout

    where = subprocess.run([str(venv / "bin" / "python"), "-c", "import automix, automix.export; print(automix.__file__)"],
                           cwd=work, env=env, capture_output=True, text=True, timeout=300)
    assert where.returncode == 0, where.stderr[-2000:]
    assert where.stdout.strip().startswith(str(venv)), f"automix came from {where.stdout.strip()}, not the wheel"

    assert "usage: automix" in automix("--help")
    automix("search", "study.yaml")
    automix("export", "wheel", "--out", "exported")
    assert (work / "exported" / "layers.yaml").is_file()
