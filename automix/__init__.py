"""automix: search the per-layer mix of quantization bits, pruning ratios and adapter ranks
that gives the best accuracy per byte for an LLM, a task and a memory budget."""

__version__ = "0.1.0"


def load(path):  # noqa: ANN001, ANN201 - thin lazy re-export, see automix.export.load
    """Rebuild an exported model (`automix export --with-weights`) from its directory."""
    from automix.export import load as _load  # lazy: import automix stays cheap (torch loads on first use)

    return _load(path)
