"""Python started in the repository root must import Hugging Face's `kernels`, transformers and
automix.kernels as anywhere else.

The root is then first on sys.path, and `kernels/` (our Triton kernels, installed as
`automix.kernels`) sits there under the name of Hugging Face's `kernels` package, which
transformers >= 5.25 imports on load. Every way a user or Ray starts Python there is tried.
"""

from __future__ import annotations

import importlib.metadata
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
TINY = ROOT / "automix" / "builtin" / "assets" / "tiny"


def _hf_kernels_installed() -> bool:
    try:
        importlib.metadata.distribution("kernels")
    except importlib.metadata.PackageNotFoundError:
        return False
    return True


# What `import kernels` must give from the root: Hugging Face's package (transformers >= 5.25
# depends on it), or nothing at all when it is not installed; never our folder.
CHECK_KERNELS = textwrap.dedent(f"""
    import importlib.metadata, os
    try:
        import kernels
    except ModuleNotFoundError:
        assert not {_hf_kernels_installed()!r}, "Hugging Face's kernels is installed but did not import"
    else:
        got = os.path.realpath(getattr(kernels, "__file__", None) or "<no file: the repository's folder?>")
        want = os.path.realpath(importlib.metadata.distribution("kernels").locate_file("kernels/__init__.py"))
        assert got == want, f"`import kernels` gave {{got}}, not Hugging Face's {{want}}"
""")


def run_in_root(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    out = subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True, timeout=timeout)
    assert out.returncode == 0, f"{args[:2]} from the repository root failed:\n{out.stderr[-3000:]}"
    return out


def test_python_c_in_the_root_imports_hf_kernels_and_transformers():
    code = CHECK_KERNELS + textwrap.dedent(f"""
        import transformers.models.llama
        from transformers import AutoConfig, AutoModelForCausalLM
        config = AutoConfig.from_pretrained({str(TINY)!r})
        model = AutoModelForCausalLM.from_config(config)
        import automix.kernels as k
        assert callable(k.quant_matmul) and k.__name__ == "automix.kernels"
        print("ok", type(model).__name__)
    """)
    assert run_in_root("-c", code).stdout.split() == ["ok", "LlamaForCausalLM"]


def test_python_m_automix_and_pytest_run_in_the_root(tmp_path):
    assert "usage: automix" in run_in_root("-m", "automix", "--help").stdout
    probe = tmp_path / "test_probe.py"
    probe.write_text("def test_probe():\n" + textwrap.indent(CHECK_KERNELS + "import transformers.models.llama\n", "    "))
    run_in_root("-m", "pytest", "-q", "-p", "no:cacheprovider", "--rootdir", str(ROOT), str(probe))


@pytest.mark.slow
def test_ray_workers_started_in_the_root_import_hf_kernels():
    code = textwrap.dedent("""
        import ray
        ROOT = {root!r}
        ray.init(num_cpus=1, include_dashboard=False, log_to_driver=False)

        @ray.remote
        def probe():
            import os, sys
    """).format(root=str(ROOT)) + textwrap.indent(CHECK_KERNELS, "    ") + textwrap.dedent("""
            import transformers.models.llama
            return os.path.realpath(os.getcwd()) == ROOT or ROOT in map(os.path.realpath, sys.path)

        print("worker-ok", "root-on-path" if ray.get(probe.remote()) else "root-not-on-path")
        ray.shutdown()
    """)
    # the worker must really start with the root on its path, or this test would prove nothing
    assert "worker-ok root-on-path" in run_in_root("-c", code).stdout
