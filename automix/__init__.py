"""automix: search the per-layer mix of quantization bits, pruning ratios and adapter ranks
that gives the best accuracy per byte for an LLM, a task and a memory budget."""

__version__ = "0.1.0"
