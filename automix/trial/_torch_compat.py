"""Every use of PyTorch's private API, in one place (as `automix.search._optuna_compat` is for
Optuna's): a new torch release that renames one of these is checked here first."""

from __future__ import annotations

import torch

__all__ = ["cpu_has_bf16", "profiler_active"]


def cpu_has_bf16() -> bool:
    """Native bf16 matmuls on this CPU (AVX512-BF16 / AMX), where bf16 autocast is faster than
    fp32 (elsewhere it is slower)."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def profiler_active() -> bool:
    """Whether a torch profiler session is running in this process (a second one cannot start)."""
    try:
        return bool(torch.autograd.profiler._is_profiler_enabled)
    except AttributeError:
        return False
