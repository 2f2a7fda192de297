"""AutoMixSampler: predictor-guided multi-objective search for expensive trials.

The sampler follows AutoMixQ / AMQ: a space-filling start (uniform configurations, where every
parameter sits at the same relative level, then a Latin hypercube), then, once enough trials
have finished, every proposal is chosen by

1. fitting a :class:`~automix.search.predictors.PerformancePredictor` per unknown objective
   (and per observed constraint) on the finished trials;
2. running NSGA-II on the *predicted* objectives over thousands of candidate configurations,
   with "known" objectives (e.g. memory from an analytic model) evaluated exactly and
   candidates that violate a known constraint (e.g. over the memory budget) discarded;
3. picking the candidate with the largest expected hypervolume improvement over the current
   feasible front, using the predictors' uncertainty, times the probability that the observed
   constraints hold.

Under a known constraint (a memory budget) with one predicted objective, every other guided
proposal (every third when a known objective makes it a front) instead exploits within the
budget: the end of the marginal-gain path under the simplest model of the trials (one
engineered feature, e.g. the sensitivity profile's total), then the best predicted swap moves
around the best feasible trials (``automix.search._exploit``).

Proposals that are still running are treated as already observed at their predicted values
("kriging believer"), so ask/tell batches and ``n_jobs > 1`` get diverse, distinct proposals.
"""

from __future__ import annotations

import threading
import zlib
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
from optuna.distributions import BaseDistribution
from optuna.samplers import BaseSampler, RandomSampler
from optuna.search_space import IntersectionSearchSpace
from optuna.study import Study, StudyDirection
from optuna.trial import FrozenTrial, TrialState

from automix.search._optuna_compat import process_constraints_after_trial, storage_of, study_id, trial_id, trials_of
from automix.search._candidates import UNIFORM_FRACTIONS as _UNIFORM_FRACTIONS
from automix.search._acquisition import ModelPrediction, ehvi_pick, reference_point
from automix.search._candidates import greedy_path, nsga2_candidates
from automix.search._codec import Codec
from automix.search._design import Design
from automix.search._exploit import exploit_proposal, profile_model
from automix.search._fidelity import LINE_PAIRS, curve_of, impute_final
from automix.search._profile_search import ProfileSearch
from automix.search.batch import evaluate_batch
from automix.search.predictors import PerformancePredictor

__all__ = ["AutoMixSampler"]

_UNFINISHED = (TrialState.RUNNING, TrialState.WAITING)
_PREDICTED_ATTR = "automix:predicted_values"  # system attr: predicted objective values


class AutoMixSampler(BaseSampler):
    """Sampler for expensive (multi-objective, constrained) studies; a drop-in for any study.

    Args:
        search_space: the full search space, if known up front (e.g. ``SearchSpace.distributions``).
            Lets the very first trials be joint proposals that respect ``known_constraints``;
            without it the space is inferred from finished trials.
        n_startup_trials: finished trials before the predictors take over.
        n_uniform_trials: how many of the startup trials are uniform configurations
            (default: the largest number of levels of a discrete parameter, at most half the
            startup trials).
        known_objectives: objective index -> function of the params that returns that objective
            exactly (same direction as the study). Never predicted.
        known_constraints: functions of the params; a proposal is feasible when all return
            <= 0. Infeasible configurations are never proposed.
        constraints_func: Optuna's older per-trial constraints callback (prefer
            ``Trial.set_constraint``); both are read from the finished trials.
        features: extra predictor features computed from the params (e.g. sensitivity x
            quantization error per layer group).
        predictor_models: candidate regressors (see ``automix.search.predictors``). Models
            of observed constraints also try ``linear`` on the parameters' numeric values
            (memory is linear in bits, prune ratio and rank, not in their level indices).
        n_candidates: rough number of configurations scored on the predictors per proposal.
        prior_trials: finished trials of earlier studies of the same space (warm start).
        seed: seed for reproducible proposals.
        exploit_every: under ``known_constraints`` with one predicted objective, one guided
            proposal in this many (one more with a front to cover) goes to the best predicted
            configuration within the constraints instead of to EHVI (0 = never).
        startup_configs: configurations (params) proposed first, before the space-filling
            design (e.g. ``OneShotSampler.proposals(k)``: one-shot profile allocations); they
            count as start-up trials, infeasible ones are skipped.
        saturation: with several objectives, the hypervolume's reference point stops where
            the front saturates: past the cheapest point within this fraction of an
            objective's observed span of its best value, the other objectives are not
            explored further (0 = reference point at the front's worst values + 10%).
        hold: parameter -> value where the one-shot start holds the parameters that
            ``features`` does not score (a study passes its search space's ``fixed`` values;
            default: their first choice).
        profile_start: with ``features`` (a profile) and a memory function the sampler can
            tabulate (``known_constraints`` of the form ``Shifted(memory, budget)``, or one
            known objective), start from the one-shot allocation and go on with the
            profile-residual model (``automix.search._profile_search``) instead of a
            space-filling design; ``n_startup_trials`` then applies only where it cannot.
    """

    def __init__(
        self,
        *,
        search_space: Mapping[str, BaseDistribution] | None = None,
        n_startup_trials: int = 16,
        n_uniform_trials: int | None = None,
        known_objectives: Mapping[int, Callable[[dict[str, Any]], float]] | None = None,
        known_constraints: Sequence[Callable[[dict[str, Any]], float]] = (),
        constraints_func: Callable[[FrozenTrial], Sequence[float]] | None = None,
        features: Callable[[dict[str, Any]], Sequence[float]] | None = None,
        predictor_models: Sequence[str] = ("gp", "extra_trees", "gbm", "mlp", "ridge"),
        n_candidates: int = 3000,
        prior_trials: Sequence[FrozenTrial] = (),
        seed: int | None = None,
        exploit_every: int = 2,
        startup_configs: Sequence[Mapping[str, Any]] = (),
        saturation: float = 0.02,
        hold: Mapping[str, Any] | None = None,
        profile_start: bool = True,
    ) -> None:
        if n_startup_trials < 1:
            raise ValueError(f"n_startup_trials must be >= 1, got {n_startup_trials}")
        self._fixed_space = dict(search_space) if search_space is not None else None
        self._n_startup = n_startup_trials
        self._n_uniform = n_uniform_trials
        self._known = dict(known_objectives or {})
        self._known_constraints = list(known_constraints)
        self._constraints_func = constraints_func
        self._features = features
        self._models = tuple(predictor_models)
        self._n_candidates = n_candidates
        self._prior = list(prior_trials)
        self._seed = seed
        self._exploit_every = exploit_every
        self._startup_configs = [dict(c) for c in startup_configs]
        self._saturation = float(saturation)
        self._hold = dict(hold or {})
        self._profile_start = bool(profile_start)
        self._profile: ProfileSearch | None = None
        self._profile_configs: list[dict[str, Any]] = []
        self._rng = np.random.default_rng(seed)
        self._random = RandomSampler(seed=seed)
        self._intersection = IntersectionSearchSpace(include_pruned=True)
        self._lock = threading.RLock()
        self._pending: dict[tuple[int, int], tuple] = {}  # (study id, trial number) -> key
        self._predictors: dict[Any, PerformancePredictor] = {}
        self._codec: Codec | None = None
        self._cache: dict[tuple, tuple[np.ndarray, np.ndarray]] = {}  # key -> (feats, known)
        self._last: tuple[np.ndarray, np.ndarray, tuple] | None = None  # _evaluate's last genomes,
        # a copy of them and the result
        self._design: Design | None = None

    # ----------------------------------------------------------------- BaseSampler API
    def reseed_rng(self) -> None:
        self._rng = np.random.default_rng()
        self._random.reseed_rng()

    def infer_relative_search_space(
        self, study: Study, trial: FrozenTrial
    ) -> dict[str, BaseDistribution]:
        if self._fixed_space is not None:
            return dict(self._fixed_space)
        space = self._intersection.calculate(study)
        return {n: d for n, d in sorted(space.items()) if not d.single()}

    def sample_relative(
        self, study: Study, trial: FrozenTrial, search_space: dict[str, BaseDistribution]
    ) -> dict[str, Any]:
        if not search_space:
            return {}
        with self._lock:
            codec = self._get_codec(search_space)
            trials = trials_of(study)
            complete, taken, pending, pruned = self._collect(study, trials, codec, trial)
            if not self._started(complete, pruned):
                genome = self._next_design_point(codec, taken)
            else:
                genome, predicted = self._propose(study, codec, complete, pending, taken, pruned)
                # What the predictors expect of this proposal, in the study's own units:
                # the driver logs it and the reports compare it with the measured values.
                storage_of(study).set_trial_system_attr(
                    trial_id(trial), _PREDICTED_ATTR, [float(v) for v in predicted]
                )
            key = codec.key(genome)
            self._pending[(study_id(study), trial.number)] = key
            return codec.decode(genome)

    def sample_independent(
        self,
        study: Study,
        trial: FrozenTrial,
        param_name: str,
        param_distribution: BaseDistribution,
    ) -> Any:
        """Params outside the joint space: design points while starting up, then random."""
        if trial.number < self._n_startup:
            gene = Codec({param_name: param_distribution}).genes[0]
            n_uniform = self._uniform_count(max(gene.n_levels, 2))
            if trial.number < n_uniform:
                return gene.decode(gene.at_fraction(_UNIFORM_FRACTIONS[trial.number]))
            # Latin hypercube built one dimension at a time: a per-parameter permutation.
            salt = sum(param_name.encode()) * 7919 + (self._seed or 0)
            strata = np.random.default_rng(salt).permutation(self._n_startup)
            u = (strata[trial.number] + self._rng.random()) / self._n_startup
            return gene.decode(gene.from_unit(np.array([u]))[0])
        return self._random.sample_independent(study, trial, param_name, param_distribution)

    def before_trial(self, study: Study, trial: FrozenTrial) -> None:
        self._random.before_trial(study, trial)

    def after_trial(
        self,
        study: Study,
        trial: FrozenTrial,
        state: TrialState,
        values: Sequence[float] | None,
    ) -> None:
        if self._constraints_func is not None:
            process_constraints_after_trial(self._constraints_func, study, trial, state)
        with self._lock:
            self._pending.pop((study_id(study), trial.number), None)
        self._random.after_trial(study, trial, state, values)

    # ----------------------------------------------------------------- bookkeeping
    def _get_codec(self, search_space: dict[str, BaseDistribution]) -> Codec:
        if self._codec is None or self._codec.names != sorted(search_space) or any(
            g.dist != search_space[g.name] for g in self._codec.genes
        ):
            self._codec = Codec(search_space)
            self._cache.clear()
            self._last = None
            self._design = None
            self._predictors.clear()
            self._profile, self._profile_configs = None, []
            if self._profile_start:
                self._profile = ProfileSearch.build(search_space, self._features, self._known,
                                                    self._known_constraints, self._hold, self._seed)
                if self._profile is not None:
                    # memory an objective: a few allocations down the cost axis (more when the
                    # front is the whole goal, no budget)
                    n_front = 0 if not self._known else 2 if self._known_constraints else 8
                    self._profile_configs = self._profile.startup(n_front)
        return self._codec

    @property
    def _n_start(self) -> int:
        """Start-up trials: the one-shot start's configurations when there is one, else
        ``n_startup_trials``."""
        if self._profile is not None and self._profile_configs:
            return len(self._profile_configs)
        return self._n_startup

    def _collect(self, study: Study, trials: list[FrozenTrial], codec: Codec, current: FrozenTrial):
        complete: list[tuple[FrozenTrial, np.ndarray]] = []
        taken: set[tuple] = set()
        pending: list[np.ndarray] = []
        pruned: list[tuple[FrozenTrial, np.ndarray]] = []
        names = set(codec.names)
        live = {n for (sid, n) in self._pending if sid == study_id(study)}
        for t in trials:
            if t.number == current.number or not names <= t.params.keys():
                continue
            genome = codec.encode(t.params)
            taken.add(codec.key(genome))
            if t.state == TrialState.COMPLETE and t.values is not None:
                complete.append((t, genome))
            elif t.state == TrialState.PRUNED:
                pruned.append((t, genome))
            elif t.state in _UNFINISHED and t.number not in live:
                pending.append(genome)  # proposed by another process
        for (sid, number), key in self._pending.items():
            if sid == study_id(study) and number != current.number:
                taken.add(key)
                pending.append(np.array(key, dtype=float))
        return complete, taken, pending, pruned

    def _started(self, complete: list, pruned: list) -> bool:
        """Whether the predictors take over: after `n_startup` finished trials, a pruned one
        with a learning curve counting as one (its curve predicts its final quality, see
        `_low_fidelity`) once a few complete trials can map curves to final values. Without
        this, a pruner that stops most random start-up trials right after initialisation
        keeps the study sampling at random long after it has learned enough."""
        informed = sum(1 for t, _ in pruned if curve_of(t))
        return (len(complete) >= min(self._n_start, LINE_PAIRS)
                and len(complete) + informed >= self._n_start)

    def _uniform_count(self, max_levels: int) -> int:
        if self._n_uniform is not None:
            return min(self._n_uniform, self._n_startup)
        return min(max_levels, len(_UNIFORM_FRACTIONS), max(1, self._n_startup // 2))

    def _feasible(self, codec: Codec, genome: np.ndarray) -> bool:
        return bool(self._evaluate(codec, genome[None])[2][0])

    def _designer(self, codec: Codec) -> Design:
        """The start-up design and feasible-point maker of the current codec (built once)."""
        if self._design is None:
            self._design = Design(codec, lambda G, features=True: self._evaluate(codec, G, features), self._rng)
        return self._design

    def _next_design_point(self, codec: Codec, taken: set[tuple]) -> np.ndarray:
        d = self._designer(codec)
        if d.points is None:
            if self._profile_configs:  # the one-shot start replaces the space-filling design
                d.points = d.fixed(self._profile_configs)
            else:
                d.points = d.space_filling(self._startup_configs[: self._n_startup],
                                           self._uniform_count(max(codec.max_levels(), 2)), self._n_startup,
                                           bool(self._known_constraints))
        for genome in d.points:
            if codec.key(genome) not in taken:
                return genome
        return d.random_feasible(taken)

    def _random_feasible(self, codec: Codec, taken: set[tuple]) -> np.ndarray:
        return self._designer(codec).random_feasible(taken)

    def _evaluate(self, codec: Codec, genomes: np.ndarray, features: bool = True):
        """Features, known objective values, known-constraint feasibility and the constraint
        values themselves. Functions with a vectorised ``batch`` form (``automix.search.batch``)
        are evaluated over all genomes at once; the others once per configuration (cached:
        known functions may be slow). ``features=False``: the features are not needed (None
        where vectorised). The same genomes (the same array, unchanged) evaluated again in a
        row -- a path's candidates under the predictors, then their engineered features --
        give the same result again; the caller must not modify it."""
        n = len(genomes)
        n_con = len(self._known_constraints)
        fns = ([self._features] if self._features is not None else []) + list(self._known.values()) \
            + list(self._known_constraints)
        if n and fns and all(hasattr(fn, "batch") for fn in fns):
            last = self._last
            if last is not None and last[0] is genomes and np.array_equal(last[1], genomes):
                return last[2]
            columns = codec.columns(genomes)
            known, cons = np.zeros((n, len(self._known))), np.zeros((n, n_con))
            for col, fn in enumerate(self._known.values()):
                known[:, col] = evaluate_batch(fn, columns, n)[:, 0]
            for col, fn in enumerate(self._known_constraints):
                cons[:, col] = evaluate_batch(fn, columns, n)[:, 0]
            if not features:
                return None, known, np.all(cons <= 0.0, axis=1), cons
            base = codec.features(genomes)
            if self._features is not None:
                base = np.concatenate([base, evaluate_batch(self._features, columns, n)], axis=1)
            out = (base, known, np.all(cons <= 0.0, axis=1), cons)
            self._last = (genomes, genomes.copy(), out)
            return out
        base = codec.features(genomes)
        known, cons = np.zeros((n, len(self._known))), np.zeros((n, n_con))
        if not fns:
            return base, known, np.ones(n, dtype=bool), cons
        extra = []
        for j, g in enumerate(genomes):
            key = codec.key(g)
            hit = self._cache.get(key)
            if hit is None:
                params = codec.decode(g)
                f = (
                    np.asarray(self._features(params), dtype=float)
                    if self._features is not None
                    else np.zeros(0)
                )
                k = np.array([float(fn(params)) for fn in self._known.values()])
                c = np.array([float(fn(params)) for fn in self._known_constraints])
                hit = (f, k, c)
                if len(self._cache) > 200_000:
                    self._cache.clear()
                self._cache[key] = hit
            extra.append(hit[0])
            known[j] = hit[1]
            cons[j] = hit[2]
        if self._features is not None:
            base = np.concatenate([base, np.array(extra).reshape(n, -1)], axis=1)
        return base, known, np.all(cons <= 0.0, axis=1), cons

    # ----------------------------------------------------------------- guided proposals
    def _low_fidelity(self, codec: Codec, complete: list, pruned: list, sign: float
                      ) -> tuple[np.ndarray, np.ndarray]:
        """Features and first-objective losses of the pruned trials, at the final values their
        curves predict (`automix.search._fidelity`)."""
        finals = [(curve_of(t), float(t.values[0])) for t, _ in complete]
        rows, ys = [], []
        for t, g in pruned:
            y = impute_final(finals, curve_of(t))
            if y is not None and np.isfinite(y):
                rows.append(g)
                ys.append(y * sign)
        if not rows:
            return np.zeros((0, 0)), np.zeros(0)
        return self._evaluate(codec, np.array(rows))[0], np.array(ys)

    def _propose(self, study, codec, complete, pending, taken, pruned=()) -> tuple[np.ndarray, np.ndarray]:
        signs = np.array([1.0 if d == StudyDirection.MINIMIZE else -1.0 for d in study.directions])
        n_obj = len(signs)
        bad = [i for i in self._known if not 0 <= i < n_obj]
        if bad:
            raise ValueError(f"known_objectives indices {bad} out of range for {n_obj} objectives")
        unknown = [i for i in range(n_obj) if i not in self._known]
        known_idx = list(self._known)

        if self._profile is not None and len(unknown) == 1:
            got = self._profile_proposal(codec, complete, pending, pruned, taken, unknown[0], signs)
            if got is not None:
                return got

        genomes = np.array([g for _, g in complete])
        losses = np.array([t.values for t, _ in complete], dtype=float) * signs
        X, _, known_ok, _ = self._evaluate(codec, genomes)
        prior_X, prior_L = self._prior_data(codec, signs)

        low_X, low_y = self._low_fidelity(codec, complete, list(pruned), signs[0]) if 0 in unknown \
            else (np.zeros((0, 0)), np.zeros(0))
        models = {}
        for i in unknown:
            pred = self._predictors.setdefault(("obj", i), self._new_predictor(i))
            py = prior_L[:, i] if prior_L is not None else None
            if i == 0 and len(low_y):  # pruned trials inform the quality model only
                models[i] = pred.fit(np.vstack([X, low_X]), np.concatenate([losses[:, i], low_y]), prior_X, py)
            else:
                models[i] = pred.fit(X, losses[:, i], prior_X, py)

        # Two predicted objectives, one learned almost exactly (e.g. memory measured by the
        # trials): it can serve as the cost of the marginal-gain path, as a known one would.
        cost_obj = None
        if not known_idx and not self._known_constraints and len(unknown) == 2:
            taus = {i: self._predictors[("obj", i)].scores.get(self._predictors[("obj", i)].chosen, {})
                    .get("kendall_tau", 0.0) for i in unknown}
            best = max(taus, key=lambda i: taus[i])
            if taus[best] >= 0.9:
                cost_obj = best
        walk_unknown = [i for i in unknown if i != cost_obj]

        # observed constraints (Trial.set_constraint / constraints_func)
        cons_keys = sorted({k for t, _ in complete for k in t.constraints})
        feasible = np.ones(len(complete), dtype=bool)
        cons_models = []
        # constraints are resources (memory, latency): linear in the parameters' numeric
        # values (bits 2..16), not in their level indices, so their models see both
        X_con = np.hstack([X, codec.values(genomes)])
        for k in cons_keys:
            rows = [j for j, (t, _) in enumerate(complete) if k in t.constraints]
            c = np.array([complete[j][0].constraints[k] for j in rows])
            feasible[rows] &= c <= 0
            # a constraint the known ones already decide (the study's memory budget, also set
            # on each trial for other samplers) needs no model: candidates are filtered by it
            redundant = bool(self._known_constraints) and np.array_equal(c <= 0, known_ok[rows])
            if np.any(c > 0) and len(rows) >= 3 and not redundant:
                p = self._predictors.setdefault(("con", k), self._new_predictor(k, constraint=True))
                cons_models.append(p.fit(X_con[rows], c))

        predict = ModelPrediction(codec, lambda G: self._evaluate(codec, G), models, cons_models, known_idx,
                                  signs, cost_obj)
        # current front: feasible observations + pending proposals at their predicted means
        front = losses[feasible]
        if pending:
            front = np.vstack([front, predict(np.array(pending)).mean])
        reference = reference_point(losses, front, self._saturation)

        # a cost to walk the marginal-gain path along: known objectives or constraints, else
        # constraints learned from the trials (e.g. measured memory against a budget)
        has_cost = bool(self._known or self._known_constraints or cons_models) or cost_obj is not None
        # non-ordinal and continuous genes of the path: held at the best feasible trial's
        base = None
        if feasible.any() and unknown:
            base = genomes[feasible][int(np.argmin(losses[feasible, unknown[0]]))]
        path = (greedy_path(codec, predict, walk_unknown, base=base, rng=self._rng) if has_cost
                else np.empty((0, codec.dim)))
        fresh = lambda G: self._fresh(codec, G, taken)  # noqa: E731
        exploit = self._exploit(codec, genomes, X, losses, feasible, unknown, len(pending) + len(pruned),
                                predict, path, fresh, n_obj, bool(cons_models))
        if exploit is not None:
            return self._predicted(exploit, predict, signs)
        if has_cost and self._features is not None and len(walk_unknown) == 1:
            # the profile's own front (the path under the feature that ranks the trials best)
            # competes in the pool: with few trials it is often better than the learned models'
            n_base = codec.features(genomes[:1]).shape[1]
            pmodel = profile_model(codec, lambda G: self._evaluate(codec, G)[0][:, n_base:],
                                   X[:, n_base:], losses[:, walk_unknown[0]], predict,
                                   genomes=genomes)
            ppath = greedy_path(codec, pmodel, [0]) if pmodel is not None else np.empty((0, codec.dim))
            if len(ppath):
                path = np.vstack([path, ppath]) if len(path) else ppath
        seeds = genomes[feasible] if feasible.any() else genomes
        pool = nsga2_candidates(
            codec, np.vstack([seeds, path]) if len(path) else seeds, predict, fresh, self._rng,
            self._n_candidates,
        )
        if len(path):
            pool = np.unique(np.vstack([pool, fresh(path)]), axis=0)
        if not len(pool):
            return self._predicted(self._random_feasible(codec, taken), predict, signs)
        return self._predicted(ehvi_pick(pool, predict, front, reference, codec, fresh, self._rng), predict, signs)

    def _profile_proposal(self, codec: Codec, complete: list, pending: list, pruned: list, taken: set[tuple],
                          objective: int, signs: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
        """The profile-residual model's proposal when it is its turn
        (``automix.search._profile_search.ProfileSearch.turn``), with its predicted values;
        None on the learned predictors' turn or when the model cannot be fitted yet."""
        profile = self._profile
        n = len(complete) + len(pending) + len(pruned)
        p = profile.turn([codec.decode(g) for _, g in complete],
                         [float(t.values[objective]) * signs[objective] for t, _ in complete],
                         [codec.decode(np.array(key, dtype=float)) for key in taken],
                         n, n - self._n_start, memory_objective=bool(self._known))
        if p is None:
            return None
        genome = codec.encode(p)
        if codec.key(genome) in taken or not self._feasible(codec, genome):
            return None
        values = np.zeros(len(signs))
        values[objective] = profile.predicted(p) * signs[objective]
        for i, fn in self._known.items():
            values[i] = float(fn(p))
        return genome, values

    def _exploit(self, codec, genomes, X, losses, feasible, unknown, n_others, predict, path,
                 fresh, n_obj, learned_constraints: bool) -> np.ndarray | None:
        """The exploitation proposal when it is its turn (see the module docstring), else None.
        A budget learned from the trials (observed constraints, predicted) counts as known.
        ``n_others``: the proposals that are not complete trials (pending and pruned ones),
        which take their turn in the rotation too."""
        budget = bool(self._known_constraints) or learned_constraints
        if not budget or len(unknown) != 1 or not self._exploit_every:
            return None
        period = self._exploit_every if n_obj == 1 else self._exploit_every + 1
        if (len(genomes) + n_others - self._n_start) % period:
            return None
        n_base = codec.features(genomes[:1]).shape[1]
        return exploit_proposal(codec, genomes, X[:, n_base:], losses[:, unknown[0]], feasible,
                                unknown[0], path, predict, fresh,
                                lambda G: self._evaluate(codec, G)[0][:, n_base:], self._rng)

    @staticmethod
    def _predicted(genome: np.ndarray, predict, signs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The chosen genome with its predicted objective values (un-signed)."""
        return genome, predict(genome[None, :]).mean[0] * signs

    def _new_predictor(self, salt: Any, constraint: bool = False) -> PerformancePredictor:
        """A predictor of an objective, or of an observed constraint (which may also pick the
        plain linear model: resource use is additive in the parameters' values)."""
        seed = (self._seed or 0) + zlib.crc32(str(salt).encode()) % 10007
        models = self._models + ("linear",) if constraint and "linear" not in self._models \
            else self._models
        return PerformancePredictor(models=models, seed=seed)

    def _prior_data(self, codec: Codec, signs: np.ndarray):
        rows = [
            t for t in self._prior
            if t.state == TrialState.COMPLETE and t.values is not None
            and set(codec.names) <= t.params.keys() and len(t.values) == len(signs)
        ]
        if not rows:
            return None, None
        G = np.array([codec.encode(t.params) for t in rows])
        return self._evaluate(codec, G)[0], np.array([t.values for t in rows]) * signs

    def _fresh(self, codec: Codec, G: np.ndarray, taken: set[tuple]) -> np.ndarray:
        """Unique, untaken, known-feasible rows of G."""
        if not len(G):
            return G
        keep, seen = [], set()
        ok = self._evaluate(codec, G, features=False)[2]
        for j, k in enumerate(codec.keys(G)):
            if ok[j] and k not in taken and k not in seen:
                seen.add(k)
                keep.append(j)
        return G[keep]
