"""`automix profile`: calibrates on the task data it is given and caches by model and data."""

from __future__ import annotations

import json
from pathlib import Path

from automix.cli import main
from automix.trial.sensitivity import SensitivityProfile, data_identity

from tests.trial.test_sensitivity import _tiny_model_dir


def test_profile_command_uses_the_given_data_and_caches(tmp_path: Path, capsys) -> None:
    mdir = _tiny_model_dir(tmp_path / "m")
    data = tmp_path / "text.jsonl"
    data.write_text("\n".join(json.dumps({"text": "the a of and to in is was for on " * 4}) for _ in range(30)))
    argv = ["profile", "--model", str(mdir), "--task", "lm", "--data", str(data), "--bits", "2", "4",
            "--group-size", "32", "--samples", "2", "--seq-len", "16", "--draws", "2",
            "--cache-dir", str(tmp_path / "cache"), "--out", str(tmp_path / "p.json"), "--top", "3"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "computed in" in out and "14/14 layers" in out and "fisher_kl at 2-bit" in out
    prof = SensitivityProfile.load(tmp_path / "p.json")
    assert prof.task == "lm" and prof.data == data_identity(str(data)) and prof.bits == [2, 4]
    assert main(argv) == 0
    assert "cached: profile" in capsys.readouterr().out
