"""Python started in the repository root must still import transformers and automix.kernels.

The `kernels/` directory is then importable as a top-level `kernels`, the name of Hugging Face's
`kernels` package that transformers probes for on import; it must look absent, not break it.
"""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_transformers_and_kernels_import_from_repo_root():
    code = (
        "from transformers import LlamaConfig\n"
        "import transformers.utils.import_utils as iu\n"
        "assert not iu.is_kernels_available(), 'repo kernels/ mistaken for HF kernels'\n"
        "import automix.kernels as k\n"
        "assert callable(k.quant_matmul)\n"
        "print('ok')\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().endswith("ok")
