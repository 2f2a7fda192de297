"""The one report helper of the benchmarks: print a benchmark's markdown and keep it with ``--out``."""

from __future__ import annotations

from pathlib import Path

__all__ = ["emit_report"]


def emit_report(lines: list[str], out: Path | None) -> None:
    """Print the benchmark's markdown and, with ``--out``, keep it in that file."""
    text = "\n".join(lines)
    print(text)
    if out:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(text + "\n")
