"""Shared test set-up.

TRITON_INTERPRET must be set before any Triton kernel is defined so that `@triton.jit`
functions run on CPU tensors through the interpreter. The kernel dispatcher still uses its
torch path on CPU unless a test asks for the Triton backend explicitly.
"""

import atexit
import os
import shutil
import tempfile

os.environ.setdefault("TRITON_INTERPRET", "1")
# Sensitivity profiles computed by studies under test go to a fresh cache, not the user's,
# removed when the test session ends.
if "AUTOMIX_CACHE_DIR" not in os.environ:
    os.environ["AUTOMIX_CACHE_DIR"] = tempfile.mkdtemp(prefix="automix-test-cache-")
    atexit.register(shutil.rmtree, os.environ["AUTOMIX_CACHE_DIR"], ignore_errors=True)
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
