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
