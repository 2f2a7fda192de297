"""The allocator's count of a trial, phase by phase, against the memory model's phases."""

from __future__ import annotations

import json

import pytest
import torch

from automix.arch import target_layer_names
from automix.config.layers import LayerSettings
from automix.trial import memory, run_trial
from automix.trial.allocator import AllocatorMeter
from automix.trial.spec import TrialResult

MIB = 1 << 20


def test_the_meter_counts_what_each_phase_holds_at_most():
    meter = AllocatorMeter("cpu")
    with meter:
        with meter.phase("a"):
            x = torch.empty(MIB, dtype=torch.uint8)
            del x
        with meter.phase("b"):
            y = torch.empty(2 * MIB, dtype=torch.uint8)
            z = torch.empty(MIB, dtype=torch.uint8)
            del z
        with meter.phase("c"):
            pass
    del y
    assert list(meter.peaks) == ["a", "b", "c"]
    assert meter.peaks["a"] == MIB and meter.held["a"] == 0
    assert meter.peaks["b"] == 3 * MIB and meter.held["b"] == 2 * MIB
    assert meter.peaks["c"] == 2 * MIB  # what an earlier phase left counts in a later one
    assert meter.peak == ("b", 3 * MIB)
    with pytest.raises(ValueError, match="twice"):
        with AllocatorMeter("cpu") as again:
            with again.phase("a"):
                pass
            with again.phase("a"):
                pass


def test_a_meter_that_is_off_measures_nothing():
    with AllocatorMeter("cpu", enabled=False) as meter, meter.phase("a"):
        torch.empty(MIB, dtype=torch.uint8)
    assert meter.peaks == {} and meter.peak is None


def _kind(phase: str) -> str:
    return "train" if phase.startswith("step") else "evaluate" if phase.startswith("evaluate") else phase


@pytest.mark.parametrize("ckpt", [False, True])
def test_a_trial_records_the_allocator_peak_of_each_phase_within_ten_percent_of_the_prediction(ckpt):
    r = run_trial({"model": "builtin:tiny", "method": "qlora", "steps": 2, "batch_size": 4, "seq_len": 64,
                   "eval_batches": 1, "gradient_checkpointing": ckpt, "device": "cpu", "allocator_meter": True})
    assert r.status == "ok", r.failure_reason
    assert list(r.memory_phases) == ["load", "prepare", "step 1", "step 2", "evaluate"]
    assert set(r.memory_phases_predicted) == {"load", "prepare", "train", "evaluate"}
    for phase, got in r.memory_phases.items():  # no phase holds more than its prediction (+10%)
        assert got <= 1.1 * r.memory_phases_predicted[_kind(phase)], (phase, got, r.memory_phases_predicted)
    assert r.peak_phase in r.memory_phases and r.allocator_peak_bytes == max(r.memory_phases.values())
    assert r.peak_memory_bytes == r.allocator_peak_bytes
    assert r.predicted_memory_bytes == max(r.memory_phases_predicted.values())
    assert abs(r.allocator_peak_bytes - r.predicted_memory_bytes) <= 0.1 * r.predicted_memory_bytes
    # the loading holds the embeddings and norms only, never the full-precision model
    assert r.memory_phases["load"] < r.memory_phases["prepare"]
    again = TrialResult.from_dict(json.loads(json.dumps(r.to_dict())))
    assert again.memory_phases == r.memory_phases and again.peak_phase == r.peak_phase


def test_a_failed_trial_still_records_the_phases_it_ran():
    r = run_trial({"model": "builtin:tiny", "method": "qlora", "steps": 1, "lr": 1e30, "batch_size": 2,
                   "seq_len": 32, "eval_batches": 1, "device": "cpu", "grad_clip": None, "allocator_meter": True})
    if r.status == "ok":  # (the loss may survive one step; then nothing to check)
        pytest.skip("the step did not diverge")
    assert "load" in r.memory_phases and r.peak_phase


def test_evaluation_rows_are_sized_to_fit_under_the_training_step():
    cfg = _tiny_config()
    ls = {n: LayerSettings(4, 32, 0.0, 4) for n in target_layer_names(cfg)}
    small = memory.estimate(cfg, ls, "qlora", batch_size=4, seq_len=64, gradient_checkpointing=True,
                            eval_rows=64, eval_seq_len=128)
    assert 1 < small.eval_rows < 64
    assert small.phases["evaluate"] <= small.phases["train"] and small.peak == small.total
    assert small.phases["prepare"] <= small.phases["train"]  # the quantization's chunk is sized alike
    tiny = memory.estimate(cfg, ls, "qlora", batch_size=1, seq_len=16, gradient_checkpointing=True,
                           eval_rows=64, eval_seq_len=128)
    assert tiny.eval_rows == 1 and tiny.peak_phase == "evaluate"  # one row is more than such a step
    roomy = memory.estimate(cfg, ls, "qlora", batch_size=16, seq_len=128, eval_rows=4, eval_seq_len=128)
    assert roomy.eval_rows == 4
    only_eval = memory.estimate(cfg, ls, "qlora", batch_size=1, seq_len=16, eval_rows=64, eval_seq_len=128,
                                train=False)
    assert only_eval.eval_rows == 64 and "train" not in only_eval.phases


def _tiny_config():
    from transformers import LlamaConfig

    return LlamaConfig(vocab_size=384, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                       num_attention_heads=4, num_key_value_heads=2)
