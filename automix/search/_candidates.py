"""Candidate generation on the predictors for :class:`AutoMixSampler`.

Two generators feed the expected-hypervolume-improvement pick:

* :func:`greedy_path` walks from the cheapest configuration upwards, one (or a few) level(s)
  at a time, always taking the move with the best predicted gain per unit of known cost: the
  marginal-gain path of a knapsack, which traces the predicted front exactly when the
  objective is additive over parameters;
* :func:`nsga2_candidates` runs NSGA-II on the predicted means (known objectives exact),
  starting from the observed configurations, their mutations, uniform and random ones, and
  returns every fresh configuration it met.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import numpy as np

from automix.search._codec import Codec
from automix.search.pareto import crowding_distance, nondominated_mask, nondominated_rank

UNIFORM_FRACTIONS = (0.0, 1.0, 0.5, 0.25, 0.75, 0.125, 0.875, 0.375, 0.625)


class Prediction(NamedTuple):
    """Per-candidate predictions, all objectives as losses (minimised)."""

    mean: np.ndarray  # (n, n_objectives); known objectives exact
    std: np.ndarray  # (n, n_objectives); 0 for known objectives
    ok: np.ndarray  # (n,) satisfies every known constraint
    pof: np.ndarray  # (n,) predicted probability that observed constraints hold
    cost: np.ndarray  # (n,) known cost: sum of known objectives, else of known constraints


Predict = Callable[[np.ndarray], Prediction]


def greedy_path(codec: Codec, predict: Predict, unknown: list[int]) -> np.ndarray:
    """Configurations along the best predicted gain per unit of known cost (ordinal genes only)."""
    empty = np.empty((0, codec.dim))
    if not unknown or not codec.dim or any(g.levels is None or not g.ordinal for g in codec.genes):
        return empty
    top = np.array([g.n_levels - 1 for g in codec.genes], dtype=float)
    cur = codec.uniform(0.0)
    p = predict(cur[None])
    if not p.ok[0]:
        return empty
    value, cost = p.mean[0, unknown].sum(), p.cost[0]
    path = [cur]
    while True:
        moves = np.flatnonzero(cur < top)
        if not len(moves):
            break
        cand = np.repeat(cur[None], len(moves), axis=0)
        cand[np.arange(len(moves)), moves] += 1
        p = predict(cand)
        gain = value - p.mean[:, unknown].sum(axis=1)
        extra = np.maximum(p.cost - cost, 1e-12 * (abs(cost) + 1))
        ratio = np.where(p.ok & (p.pof >= 0.5), gain / extra, -np.inf)
        # take the best few moves at once (on different genes): far fewer predictions for a
        # path that differs little from the one-move-at-a-time path
        order = np.argsort(-ratio)[: max(1, len(moves) // 12)]
        order = order[np.isfinite(ratio[order])]
        if not len(order):
            break
        step = cur.copy()
        step[moves[order]] += 1
        q = predict(step[None])
        if not q.ok[0]:  # the combined step broke a known constraint: take the best move only
            step = cand[order[0]]
            q = predict(step[None])
        cur = step
        value, cost = q.mean[0, unknown].sum(), q.cost[0]
        path.append(cur)
    return np.array(path)


def nsga2_candidates(
    codec: Codec,
    seeds: np.ndarray,
    predict: Predict,
    fresh: Callable[[np.ndarray], np.ndarray],
    rng: np.random.Generator,
    n_candidates: int,
    pop_size: int = 128,
) -> np.ndarray:
    """NSGA-II on the predicted means; returns the archive of all fresh candidates seen.
    `fresh` filters a batch down to new, known-feasible, unique configurations."""
    n_gen = max(4, n_candidates // (2 * pop_size))
    rate = 1.0 / max(1, codec.dim)
    front = seeds[nondominated_mask(predict(seeds).mean)] if len(seeds) else seeds
    start = [codec.uniform(f) for f in UNIFORM_FRACTIONS[:5]]
    start.append(codec.from_unit(rng.random((pop_size, codec.dim))))
    if len(seeds):
        parents = seeds[rng.integers(0, len(seeds), pop_size)]
        start.append(codec.mutate(parents, rng, 1.5 * rate))
    if len(front):
        parents = front[rng.integers(0, len(front), pop_size)]
        start.append(codec.mutate(parents, rng, rate))
    pop = fresh(np.vstack(start))
    archive = {codec.key(g): g for g in pop}
    if not len(pop):
        return pop
    pop = _select(pop, predict(pop), pop_size)
    for _ in range(n_gen):
        a = pop[rng.integers(0, len(pop), pop_size)]
        b = pop[rng.integers(0, len(pop), pop_size)]
        children = fresh(codec.mutate(codec.crossover(a, b, rng), rng, rate))
        for g in children:
            archive.setdefault(codec.key(g), g)
        merged = np.vstack([pop, children]) if len(children) else pop
        pop = _select(merged, predict(merged), pop_size)
    return np.array(list(archive.values()))


def _select(G: np.ndarray, p: Prediction, size: int) -> np.ndarray:
    """NSGA-II environmental selection on predicted means; candidates that probably violate
    an observed constraint rank behind every likely-feasible one."""
    if len(G) <= size:
        return G
    penalised = p.mean + (p.pof < 0.5)[:, None] * (np.ptp(p.mean, axis=0) + 1.0)
    ranks = nondominated_rank(penalised)
    chosen: list[int] = []
    for r in range(ranks.max() + 1):
        idx = np.flatnonzero(ranks == r)
        if len(chosen) + len(idx) <= size:
            chosen.extend(idx.tolist())
        else:
            cd = crowding_distance(penalised[idx])
            chosen.extend(idx[np.argsort(-cd)[: size - len(chosen)]].tolist())
            break
    return G[chosen]
