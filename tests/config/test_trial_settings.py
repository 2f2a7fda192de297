"""The study's `trial:` training set-up: defaults, values, clear errors, and the same vocabulary as the trial."""

from __future__ import annotations

import textwrap
from typing import get_args

import pytest

from automix.config.study import DTYPES, OPTIMIZERS, QUANTIZERS, TASKS, StudyConfigError, TrialSettings, load_study

GOOD = """\
name: t1
model: builtin:tiny
task: boolq
methods: [qlora]
search_space:
  path: search_spaces/quickstart.yaml
memory_budget: 6GiB
n_trials: 4
trial:
"""


def write(tmp_path, body: str):
    p = tmp_path / "s.yaml"
    p.write_text(GOOD + textwrap.indent(textwrap.dedent(body), "  "))
    return p


def test_defaults_are_the_practitioners_set_up():
    t = TrialSettings()
    assert t.gradient_checkpointing is True and t.optimizer == "adamw" and t.grad_accum_steps == 1
    assert t.quantizer is None  # automix.quant.DEFAULT_METHOD
    assert t.memory_options() == {"gradient_checkpointing": True, "optimizer": "adamw", "grad_accum_steps": 1}
    assert "quantizer" not in t.spec_fields()


def test_values_round_trip_to_the_trial_spec(tmp_path):
    cfg = load_study(write(tmp_path, """\
        batch_size: 8
        grad_accum_steps: 4
        gradient_checkpointing: false
        optimizer: paged-adamw-8bit
        dtype: float16
        quantizer: hqq
        """))
    assert cfg.trial.spec_fields() == {"steps": 20, "seed": 0, "lr": 2e-4, "batch_size": 8, "seq_len": 64,
                                       "dtype": "float16", "gradient_checkpointing": False,
                                       "optimizer": "paged-adamw-8bit", "grad_accum_steps": 4, "quantizer": "hqq"}


@pytest.mark.parametrize("body,line,key,words", [
    ("optimizer: adam\n", 10, "trial.optimizer", "adamw-8bit"),
    ("quantizer: gptq\n", 10, "trial.quantizer", "rtn"),
    ("dtype: fp16\n", 10, "trial.dtype", "float16"),
    ("gradient_checkpointing: maybe\n", 10, "trial.gradient_checkpointing", "bool"),
    ("grad_accum_steps: 0\n", 10, "trial.grad_accum_steps", "greater than or equal to 1"),
])
def test_bad_values_name_file_line_and_key(tmp_path, body, line, key, words):
    p = write(tmp_path, body)
    with pytest.raises(StudyConfigError) as e:
        load_study(p)
    msg = str(e.value)
    assert f"{p}:{line}: {key}" in msg and words in msg, msg


def test_accumulation_must_divide_the_batch(tmp_path):
    p = write(tmp_path, "batch_size: 6\ngrad_accum_steps: 4\n")
    with pytest.raises(StudyConfigError, match=r"grad_accum_steps \(4\) must divide batch_size \(6\)"):
        load_study(p)


def test_vocabulary_matches_the_trial_layer():
    from automix.quant import METHODS
    from automix.trial.memory import OPTIMIZERS as TRIAL_OPTIMIZERS
    from automix.trial.spec import TrialSpec

    from automix.trial.data import available_tasks

    assert QUANTIZERS == METHODS and OPTIMIZERS == TRIAL_OPTIMIZERS
    assert list(TASKS) == sorted(available_tasks())
    assert DTYPES == get_args(TrialSpec.model_fields["dtype"].annotation)
    spec_fields = set(TrialSpec.model_fields)
    assert set(TrialSettings().spec_fields()) | {"quantizer"} <= spec_fields


def test_training_settings_are_declared_once():
    """A study, a one-off trial and a layer file share one declaration; only the defaults
    named in STUDY_DEFAULTS differ, and a training key cannot hide in trial.extra."""
    from automix.config.training import STUDY_DEFAULTS, RunSettings, TrainingSettings
    from automix.trial.spec import TrialSpec

    names = set(TrainingSettings.model_fields)
    assert names <= set(TrialSpec.model_fields) and names <= set(TrialSettings.model_fields)
    assert set(RunSettings.model_fields) == names
    study, one_off = TrialSettings(), TrialSpec()
    differ = {k for k in names if getattr(study, k) != getattr(one_off, k)}
    assert differ == set(STUDY_DEFAULTS)
    for k in names:  # same bounds: what one rejects, the other rejects
        assert TrialSettings.model_fields[k].metadata == TrialSpec.model_fields[k].metadata
    # a training key under trial.extra (older study files) is that setting, not a second copy
    moved = TrialSettings(extra={"eval_batch_size": 2, "report_every": 1})
    assert moved.eval_batch_size == 2 and moved.extra == {"report_every": 1}
    assert moved.spec_fields()["eval_batch_size"] == 2
    with pytest.raises(ValueError, match="steps: given both in trial and in trial.extra"):
        TrialSettings(steps=4, extra={"steps": 3})
