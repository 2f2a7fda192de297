"""`automix bench trial --compare`: full precision and quantized trials side by side."""

from __future__ import annotations

import json
from pathlib import Path

from automix.bench import trial as bench_trial


def test_compare_runs_every_row_interleaved_and_writes_ratios(tmp_path: Path, monkeypatch) -> None:
    order = []
    real = bench_trial.run_trial

    def recording(spec):
        order.append((spec["layers"]["default"]["bits"], spec["method"]))
        return real(spec)

    monkeypatch.setattr(bench_trial, "run_trial", recording)
    out, raw = tmp_path / "trial.md", tmp_path / "trial.json"
    argv = ["--skip-speed", "--skip-memory", "--compare", "4,16", "--compare-methods", "qlora,loftq",
            "--repeats", "2", "--steps", "1", "--batch-size", "2", "--seq-len", "32",
            "--out", str(out), "--json", str(raw)]
    assert bench_trial.main(argv) == 0
    # full precision first, then every quantized row, the whole round repeated
    round_ = [(16, "lora"), (4, "qlora"), (4, "loftq")]
    assert order == round_ * 2
    rows = json.loads(raw.read_text())["compare"]
    assert [(r["bits"], r["method"]) for r in rows] == round_
    assert all(len(r["runs"]) == 2 and r["train_seconds"] > 0 for r in rows)
    text = out.read_text()
    assert "| 16 | lora |" in text and "| 4 | loftq |" in text
    fp32_row = next(line for line in text.splitlines() if line.startswith("| 16 | lora |"))
    assert fp32_row.rstrip(" |").endswith("1.00 | 1.00")
