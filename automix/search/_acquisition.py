"""The learned predictors' proposal of :class:`AutoMixSampler`: predictions of candidates, the
hypervolume's reference point, and the expected-hypervolume-improvement pick.

* :class:`ModelPrediction` turns fitted predictors (per unknown objective and per observed
  constraint) and the known functions into :class:`~automix.search._candidates.Prediction`\\ s of
  candidate genomes: predicted objectives as losses, their uncertainty, known feasibility, the
  probability that the observed constraints hold, and the cost a marginal-gain path walks along.
* :func:`reference_point`: the front's worst values plus 10% of the span, pulled in where the
  trials show the front saturating.
* :func:`ehvi_pick`: the candidate with the largest expected hypervolume improvement times its
  probability of feasibility, refined by mutating the best candidates (Emmerich et al.,
  "Single- and multiobjective evolutionary optimization assisted by Gaussian random field
  metamodels", 2006; as in AMQ's search loop).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import numpy as np
from scipy.special import ndtr

from automix.search._candidates import Prediction
from automix.search._codec import Codec
from automix.search.pareto import expected_hypervolume_improvement, nondominated_mask

__all__ = ["ModelPrediction", "reference_point", "ehvi_pick"]

# evaluate(G) -> (features, known objective values, known-constraint feasibility, constraint values)
Evaluate = Callable[[np.ndarray], tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]]


class ModelPrediction:
    """``predict(G, with_std=False, objectives=True) -> Prediction`` from fitted models.

    Args:
        codec: the genome encoding (observed-constraint models also see the numeric values).
        evaluate: the sampler's evaluation of known functions and features of genomes.
        models: unknown objective index -> fitted predictor (``predict(X, with_std)``).
        constraint_models: fitted predictors of observed constraints (<= 0 is feasible).
        known: known objective indices, in ``evaluate``'s column order.
        signs: +1 for minimised objectives, -1 for maximised ones.
        cost_obj: a predicted objective learned well enough to be the path's cost, or None.
    """

    def __init__(self, codec: Codec, evaluate: Evaluate, models: Mapping[int, object],
                 constraint_models: Sequence[object], known: Sequence[int], signs: np.ndarray,
                 cost_obj: int | None) -> None:
        self.codec, self.evaluate, self.models = codec, evaluate, dict(models)
        self.constraint_models, self.known = list(constraint_models), list(known)
        self.signs, self.cost_obj = signs, cost_obj

    def __call__(self, G: np.ndarray, with_std: bool = False, objectives: bool = True) -> Prediction:
        feats, known, ok, cons = self.evaluate(G)
        n_obj = len(self.signs)
        mean = np.zeros((len(G), n_obj))
        std = np.zeros((len(G), n_obj))
        for i, model in self.models.items():
            if objectives or i == self.cost_obj:
                mean[:, i], std[:, i] = model.predict(feats, with_std)
            else:
                mean[:, i] = std[:, i] = np.nan
        for col, i in enumerate(self.known):
            mean[:, i] = known[:, col] * self.signs[i]
        pof = np.ones(len(G))
        learned = np.zeros(len(G))
        feats_con = np.hstack([feats, self.codec.values(G)]) if self.constraint_models else feats
        for cm in self.constraint_models:
            m, s = cm.predict(feats_con)
            pof *= ndtr(-m / np.maximum(s, 1e-12))  # the normal cdf (scipy.stats.norm.cdf's)
            learned += m
        # what a configuration costs: its known objectives, else how much of the known
        # constraints it uses up, else of the learned ones (their predicted values)
        cost = (mean[:, self.known].sum(axis=1) if self.known
                else cons.sum(axis=1) if cons.shape[1]
                else mean[:, self.cost_obj] if self.cost_obj is not None else learned)
        return Prediction(mean, std, ok, pof, cost)

    def costs(self, G: np.ndarray) -> Prediction:
        """The same without the predicted objectives that need not be the cost (NaN), for the
        callers that read only feasibility and cost (``automix.search._candidates.costs_of``)."""
        return self(G, objectives=False)


def reference_point(losses: np.ndarray, front: np.ndarray, saturation: float) -> np.ndarray:
    """The hypervolume's reference point: the front's worst values plus 10% of the observed
    span. Past saturation the front buys almost nothing: where the trials show points within
    ``saturation`` of an objective's span of its best at different costs, the others need go no
    further than the cheapest such point (e.g. memory beyond the smallest configuration already
    as accurate as the full-precision one)."""
    span = np.ptp(losses, axis=0) + 1e-9
    base = front if len(front) else losses
    reference = base.max(axis=0) + 0.1 * span
    n_obj = losses.shape[1]
    if saturation > 0 and n_obj > 1 and len(front):
        nd = front[nondominated_mask(front)]
        tol = saturation * span
        for i in range(n_obj):
            others = [j for j in range(n_obj) if j != i]
            near = np.all(nd[:, others] <= nd[:, others].min(axis=0) + tol[others], axis=1)
            # only where the trials show it: two saturated points apart in objective i
            # (the best so far alone may be anything but saturated)
            if np.ptp(nd[near, i]) > tol[i]:
                reference[i] = min(reference[i], nd[near, i].min() + 0.1 * span[i])
    return reference


def ehvi_pick(pool: np.ndarray, predict: ModelPrediction, front: np.ndarray, reference: np.ndarray,
              codec: Codec, fresh: Callable[[np.ndarray], np.ndarray], rng: np.random.Generator) -> np.ndarray:
    """The candidate of ``pool`` (non-empty) with the largest expected hypervolume improvement
    over ``front`` times its probability of feasibility; then the same over mutations of the
    eight best (``fresh`` keeps the new, feasible ones), taken when one scores higher. When
    nothing improves in expectation, the most uncertain candidate."""
    nd = front[nondominated_mask(front)] if len(front) else front

    def scores(G: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        mean, std, _, pof, _ = predict(G, True)
        return expected_hypervolume_improvement(mean, std, nd, reference, n_samples=64, rng=rng) * pof, std * pof[:, None]

    score, spread = scores(pool)
    if not np.any(score > 0):  # nothing improves in expectation: explore the most uncertain
        score = spread.sum(axis=1) + 1e-12 * rng.random(len(pool))
    top = pool[np.argsort(-score)[:8]]
    local = fresh(codec.mutate(np.repeat(top, 24, axis=0), rng, 0.0))
    if len(local):
        lscore, _ = scores(local)
        if lscore.max() > score.max():
            return local[int(np.argmax(lscore))]
    return pool[int(np.argmax(score))]
