"""Shared test set-up.

TRITON_INTERPRET must be set before any Triton kernel is defined so that `@triton.jit`
functions run on CPU tensors through the interpreter. The kernel dispatcher still uses its
torch path on CPU unless a test asks for the Triton backend explicitly.
"""

import os

os.environ.setdefault("TRITON_INTERPRET", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
