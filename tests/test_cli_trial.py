"""`automix trial --help` explains every option and lists the methods; a wrong method or option
value is one line of error, not pydantic's report; `automix ui --host` has its help too."""

from __future__ import annotations

import argparse
import json

import pytest

from automix.cli import build_parser, main
from automix.commands.trial import METHODS


def subparser(name: str) -> argparse.ArgumentParser:
    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    return sub.choices[name]


def test_methods_agree_with_the_registry():
    from automix.methods import available_methods

    assert list(METHODS) == available_methods()


@pytest.mark.parametrize("command", ["trial", "ui", "status"])
def test_every_option_has_help(command):
    missing = [a.option_strings or a.dest for a in subparser(command)._actions
               if not a.help or a.help == argparse.SUPPRESS]
    assert not missing, f"automix {command}: options without help: {missing}"


def test_trial_help_lists_the_methods(capsys):
    with pytest.raises(SystemExit):
        main(["trial", "--help"])
    out = capsys.readouterr().out
    assert "methods (--method):" in out
    for name in METHODS:
        assert f"\n  {name} " in out
    for opt in ("--steps", "--seed", "--lr", "--batch-size", "--seq-len", "--eval-batches", "--dtype",
                "--device", "--lora-alpha", "--prune-mode"):
        assert opt in out


def test_unknown_method_is_one_line_listing_the_methods(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["trial", "--method", "qlorra"])
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert "invalid choice: 'qlorra'" in err and all(m in err for m in METHODS)


def test_invalid_values_are_one_line_per_option(capsys):
    assert main(["trial", "--task", "nope", "--steps", "0"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == "error: --task: unknown task 'nope'; available: boolq, lm"
    assert main(["trial", "--batch-size", "0", "--steps", "0"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: --batch-size:") and "\n" not in err and "pydantic" not in err
    # --json still prints one JSON object, with the same short reason
    assert main(["trial", "--task", "nope", "--json"]) == 2
    result = json.loads(capsys.readouterr().out)
    assert result["failure_kind"] == "invalid_input" and result["failure_reason"].startswith("--task: unknown task")


def test_ui_host_help(capsys):
    with pytest.raises(SystemExit):
        main(["ui", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert "--host HOST address the UI listens on (default 127.0.0.1" in out


def test_cli_vocabulary_agrees_with_the_trial_spec():
    from automix.commands.trial import DEFAULTS, VALID_BITS
    from automix.config.layers import RUN_KEYS, RunSettings, VALID_BITS as LAYER_BITS
    from automix.trial import TrialSpec

    assert VALID_BITS == LAYER_BITS
    fields = TrialSpec.model_fields
    assert {k: fields[k].default for k in DEFAULTS} == DEFAULTS
    assert set(RunSettings.model_fields) | set(RUN_KEYS) <= set(fields)


def test_the_exported_layer_file_alone_reproduces_the_trial(tmp_path, capsys):
    """`automix trial --layers exported/layers.yaml` re-runs the pick with its method and settings
    (not automix trial's defaults): the same perplexity and peak memory."""
    from automix.export import export_trial, trial_by_number
    from automix.trial import run_trial
    from tests.export.test_formats import spec, study_of

    s = {**spec({"default": {"bits": 3, "group_size": 32, "rank": 2}}, "loftq"), "steps": 3}
    cfg, study = study_of(tmp_path, [s])
    reference = run_trial(s)
    out = export_trial(study, cfg, trial_by_number(study, cfg, 0), tmp_path / "exp")
    capsys.readouterr()
    assert main(["trial", "--layers", str(out / "layers.yaml"), "--json"]) == 0
    rerun = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert (rerun["method"], rerun["steps"]) == ("loftq", 3)
    assert rerun["perplexity"] == reference.perplexity
    assert rerun["predicted_memory_bytes"] == reference.predicted_memory_bytes
    assert rerun["peak_memory_bytes"] == reference.peak_memory_bytes


def test_a_bad_layer_file_and_unitless_sizes_are_one_line(tmp_path, capsys):
    bad = tmp_path / "layers.yaml"
    bad.write_text("methd: qlora\ndefault: {bits: 4}\n")
    assert main(["trial", "--layers", str(bad), "--steps", "0"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: --layers:") and "did you mean 'method'?" in err and "\n" not in err
    from automix.config.study import parse_size

    with pytest.raises(ValueError, match=r"'5' has no unit: write e.g. '5GiB' or '5MiB'.*below 1024 are refused"):
        parse_size("5")
