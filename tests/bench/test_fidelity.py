"""`automix bench fidelity`: pruned arms are charged the steps they ran, and stay within their share."""

from __future__ import annotations

from pathlib import Path

import pytest

from automix.bench import fidelity, search_real


@pytest.mark.slow
def test_pruned_arms_charge_partial_steps_and_respect_the_step_budget(tmp_path: Path) -> None:
    out = tmp_path / "mf.md"
    argv = ["--seeds", "1", "--trials", "6", "--steps", "2", "--report-every", "1", "--eval-batches", "1",
            "--arms", "tpe,tpe+hyperband", "--cache", str(tmp_path / "c.json"), "--out", str(out)]
    assert fidelity.main(argv) == 0
    text = out.read_text()
    assert "| tpe |" in text and "| tpe+hyperband |" in text and "automix bench fidelity" in text
    args = fidelity.parser().parse_args(argv)
    cache = search_real.TrialCache(tmp_path / "c.json", "x")
    runs = {k: v for k, v in cache.runs.items()}
    assert len(runs) == 2
    for key, run in runs.items():
        steps = [t["steps"] for t in run]
        if "tpe+hyperband" in key:  # within half the full arm's 12 steps (the last trial may cross it)
            assert sum(steps[:-1]) < args.share * args.trials * args.steps
            assert all(t["steps"] < args.steps for t in run if t["state"] == "PRUNED")
        else:
            assert len(run) == 6 and set(steps) == {2}
