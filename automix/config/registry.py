"""Extension points by name: where each implementation lives, as ``"module:callable"``.

A study file, the CLI and the trial spec validate names against these tables, so they live here,
in the torch-free and Optuna-free layer; the implementation is imported only when it is used
(:func:`load`). Adding a sampler is one new module plus one line in ``SAMPLERS``; adding an export
format is one module under ``automix/export/`` (its ``FORMAT``) plus one line in ``EXPORT_FORMATS``;
adding a quantizer is one module under ``automix/quant/`` (its grid function, see
:func:`automix.quant.quantize`) plus one line in ``QUANTIZERS``.
"""

from __future__ import annotations

import importlib
from typing import Any

__all__ = ["DEFAULT_QUANTIZER", "EXPORT_FORMATS", "QUANTIZERS", "SAMPLERS", "SAMPLER_ALIASES", "load"]

# sampler name -> factory (automix.search.factory.SamplerInputs, options) -> optuna sampler
SAMPLERS: dict[str, str] = {
    "automix": "automix.search.factory:automix_sampler",
    "oneshot": "automix.search.factory:oneshot_sampler",
    "tpe": "automix.search.factory:tpe_sampler",
    "nsga2": "automix.search.factory:nsga2_sampler",
    "random": "automix.search.factory:random_sampler",
}
# old names still accepted in study files: old -> current
SAMPLER_ALIASES: dict[str, str] = {"knapsack": "oneshot"}

# export format name -> its automix.export.format.ExportFormat (`automix export --format NAME`)
EXPORT_FORMATS: dict[str, str] = {
    "automix": "automix.export.native:FORMAT",
    "hf": "automix.export.hf:FORMAT",
    "peft": "automix.export.peft_adapter:FORMAT",
    "llama-cpp": "automix.export.llama_cpp:FORMAT",
}

# quantizer name -> grid function (wg, bits, *, clip_max_logit, clip_min_logit, round_zero, k, **options)
# -> (scale, zero) per group; automix.quant.quantize rounds and packs with that grid
QUANTIZERS: dict[str, str] = {
    "rtn": "automix.quant.grid:rtn_quantizer_grid",
    "minmax": "automix.quant.grid:minmax_quantizer_grid",
    "hqq": "automix.quant.hqq:hqq_grid",
}
# the one every default in automix follows (benchmarks/quant_error.md records why)
DEFAULT_QUANTIZER = "rtn"


def load(table: dict[str, str], name: str) -> Any:
    """The implementation registered under ``name`` in ``table`` (imported now)."""
    module, _, attr = table[name].partition(":")
    return getattr(importlib.import_module(module), attr)
