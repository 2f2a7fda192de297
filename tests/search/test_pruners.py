"""ParetoPruner and the sampler's use of pruned trials (low-fidelity observations)."""

import optuna
import pytest

from automix.search._fidelity import impute_final
from automix.search.pruners import ParetoPruner


def _trial(study, memory, value, step=0):
    t = study.ask()
    t.set_user_attr("memory", memory)
    t.report(value, step)
    return t


def test_pareto_pruner_stops_only_dominated_trials():
    study = optuna.create_study(direction="minimize", pruner=ParetoPruner(n_startup_trials=2))
    for mem, ppl in [(1.0, 30.0), (2.0, 20.0), (3.0, 10.0)]:
        study.tell(_trial(study, mem, ppl), ppl)
    assert not _trial(study, 0.5, 99.0).should_prune()   # the cheapest: worse, but nothing cheaper beats it
    assert _trial(study, 2.5, 25.0).should_prune()       # dominated by (2.0, 20.0)
    assert not _trial(study, 2.5, 15.0).should_prune()   # between the front's points: kept
    assert not _trial(study, 4.0, 9.0).should_prune()    # the best quality: kept
    # a median pruner would have stopped the low-memory trial
    assert optuna.pruners.MedianPruner(n_startup_trials=2).prune(study, study.trials[3])


def test_pareto_pruner_waits_for_enough_peers_and_respects_warmup_and_margin():
    study = optuna.create_study(direction="maximize", pruner=ParetoPruner(n_startup_trials=3, n_warmup_steps=1))
    study.tell(_trial(study, 1.0, 0.9, step=0), 0.9)
    assert not _trial(study, 2.0, 0.5, step=0).should_prune()  # before the warm-up step, and 1 peer < 3
    margin = optuna.create_study(direction="maximize", pruner=ParetoPruner(n_startup_trials=1, margin=0.1, min_gain=0))
    margin.tell(_trial(margin, 1.0, 0.80), 0.80)
    assert not _trial(margin, 2.0, 0.78).should_prune()  # within 10 %
    assert _trial(margin, 2.0, 0.50).should_prune()
    with pytest.raises(ValueError, match="n_dominators"):
        ParetoPruner(n_dominators=0)


def test_impute_final_maps_the_last_intermediate_value_to_a_final_one():
    complete = [({0: 10.0, 5: 8.0}, 7.0), ({0: 20.0, 5: 14.0}, 13.0), ({0: 30.0, 5: 20.0}, 19.0)]
    assert impute_final(complete, {0: 25.0, 5: 17.0}) == pytest.approx(16.0)   # the line through step 5
    assert impute_final(complete[:1], {0: 12.0}) == pytest.approx(9.0)          # a shift with one pair
    assert impute_final(complete, {7: 1.0}) is None and impute_final(complete, {}) is None


def test_sampler_learns_from_pruned_trials():
    from automix.search import AutoMixSampler

    dists = {"x": optuna.distributions.IntDistribution(0, 9), "y": optuna.distributions.IntDistribution(0, 9)}
    sampler = AutoMixSampler(search_space=dists, n_startup_trials=4, seed=0)
    study = optuna.create_study(directions=["minimize", "minimize"], sampler=sampler)
    for _ in range(6):
        t = study.ask(dists)
        t.set_user_attr("eval_curve", [[0, float(t.params["x"] + t.params["y"] + 5)]])
        study.tell(t, [float(t.params["x"] + t.params["y"]), float(10 - t.params["x"])])
    for _ in range(3):  # pruned trials with a curve: they enter the quality model's data
        t = study.ask(dists)
        t.set_user_attr("eval_curve", [[0, 40.0]])
        study.tell(t, state=optuna.trial.TrialState.PRUNED)
    low_X, low_y = sampler._low_fidelity(sampler._codec, [(t, sampler._codec.encode(t.params)) for t in
                                                          study.get_trials(states=(optuna.trial.TrialState.COMPLETE,))],
                                         [(t, sampler._codec.encode(t.params)) for t in
                                          study.get_trials(states=(optuna.trial.TrialState.PRUNED,))], 1.0)
    assert len(low_y) == 3 and low_y == pytest.approx([35.0] * 3)  # 40 at step 0 -> 35 at the end
    assert study.ask(dists).params  # and guided proposals go on with them


def test_pruned_trials_with_curves_count_as_startup_trials():
    """A pruner that stops most start-up trials right after initialisation must not keep the
    sampler proposing start-up points: a pruned trial with a curve counts as finished once three
    complete trials map curves to final values."""
    from automix.search import AutoMixSampler

    dists = {"x": optuna.distributions.IntDistribution(0, 9), "y": optuna.distributions.IntDistribution(0, 9)}

    def guided_after(n_complete: int, n_pruned: int, curves: bool = True) -> bool:
        sampler = AutoMixSampler(search_space=dists, n_startup_trials=6, seed=0)
        study = optuna.create_study(directions=["minimize", "minimize"], sampler=sampler)
        for k in range(n_complete + n_pruned):
            t = study.ask(dists)
            loss = float(t.params["x"] + t.params["y"])
            if curves:
                t.set_user_attr("eval_curve", [[0, loss + 5.0]])
            if k < n_complete:
                study.tell(t, [loss, float(10 - t.params["x"])])
            else:
                study.tell(t, state=optuna.trial.TrialState.PRUNED)
        study.ask(dists)
        return "automix:predicted_values" in study.trials[-1].system_attrs  # a guided proposal

    assert guided_after(3, 3)                   # 6 finished, 3 of them complete: the predictors take over
    assert not guided_after(2, 4)               # too few complete trials to map curves to final values
    assert not guided_after(3, 3, curves=False)  # pruned without a curve: nothing to learn from
    assert guided_after(6, 0)


def _complete(study, memory, curve, final):
    t = study.ask()
    t.set_user_attr("memory", memory)
    for step, value in curve.items():
        t.report(value, step)
    study.tell(t, final)


def test_pareto_pruner_min_gain_screens_trials_that_would_add_a_sliver_of_the_front():
    def judge(min_gain, memory, value):
        study = optuna.create_study(direction="minimize", pruner=ParetoPruner(
            n_startup_trials=2, min_gain=min_gain, memory_reference=4.0))
        for mem, s0 in [(1.0, 30.0), (2.0, 20.0), (3.0, 10.0)]:
            _complete(study, mem, {0: s0}, s0 - 5.0)  # every curve ends 5 below its step-0 value
        pruner = study.pruner
        t = _trial(study, memory, value)
        return t.should_prune(), pruner._gain(study, study.trials[-1], memory, True)

    sliver, gain = judge(0.05, 2.5, 19.0)       # predicted 14 at 2.5: just past (2.0, 15)
    assert sliver and 0 < gain < 0.05
    assert not judge(0.0, 2.5, 19.0)[0]          # dominance alone keeps it
    big, gain = judge(0.05, 1.5, 12.0)           # predicted 7 at 1.5: a new knee of the front
    assert not big and gain > 0.05
    assert judge(0.05, 2.5, 21.0)[0]             # dominated as before
    with pytest.raises(ValueError, match="min_gain"):
        ParetoPruner(min_gain=-1)
