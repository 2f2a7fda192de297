"""Package discovery for the wheel; everything else is in pyproject.toml.

Two top-level folders install under `automix` (`kernels/` as `automix.kernels`, `dashboards/` as
`automix.dashboards`; the design keeps them at the top). pyproject's `packages.find` cannot
rename a folder, so the packages are found here, by walking each folder, never listed by hand:
a new sub-package is in the wheel without anyone remembering to add it
(tests/test_wheel.py checks that every module is).
"""

from setuptools import find_packages, setup

FOLDERS = {"automix": "automix", "automix.kernels": "kernels", "automix.dashboards": "dashboards"}

packages = [name + (f".{sub}" if sub else "") for name, folder in FOLDERS.items() for sub in ["", *find_packages(folder)]]

setup(package_dir=FOLDERS, packages=packages)
