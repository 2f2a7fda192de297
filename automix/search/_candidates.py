"""Candidate generation on the predictors for :class:`AutoMixSampler`.

Two generators feed the expected-hypervolume-improvement pick:

* :func:`greedy_path` walks the ordinal genes from their cheapest levels upwards, one (or a
  few) level(s) at a time (one path per value of each non-ordinal categorical such as the
  method), always taking the move with the best predicted gain per unit of known cost: the
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
# Probability that observed (learned) constraints hold for a candidate to count as feasible in
# the path, NSGA-II selection and exploitation: a budget learned from the trials is predicted
# well but not exactly, and at 0.5 half of the proposals on its boundary would break it.
LIKELY_FEASIBLE = 0.9


class Prediction(NamedTuple):
    """Per-candidate predictions, all objectives as losses (minimised)."""

    mean: np.ndarray  # (n, n_objectives); known objectives exact
    std: np.ndarray  # (n, n_objectives); 0 for known objectives
    ok: np.ndarray  # (n,) satisfies every known constraint
    pof: np.ndarray  # (n,) predicted probability that observed constraints hold
    cost: np.ndarray  # (n,) known cost: sum of known objectives, else of known constraints


Predict = Callable[[np.ndarray], Prediction]


def costs_of(predict: Predict) -> Predict:
    """``predict`` for a caller that reads only ``ok``, ``pof`` and ``cost``: its ``costs``
    attribute when it has one (the same without the predicted objectives, e.g. the sampler's,
    which skips those models), else ``predict`` itself."""
    return getattr(predict, "costs", predict)


def greedy_path(
    codec: Codec,
    predict: Predict,
    unknown: list[int],
    base: np.ndarray | None = None,
    max_paths: int = 8,
    rng: np.random.Generator | None = None,
) -> np.ndarray:
    """Configurations along the best predicted gain per unit of known cost.

    The path walks the ordinal genes (bits, ranks, ...) upwards from their lowest levels. The
    other genes cannot be walked: continuous ones are held at ``base`` (e.g. the incumbent;
    default: the middle of their range), and each value of the non-ordinal categoricals (e.g.
    the fine-tuning method) gets its own path with that value held fixed -- the front of a
    study with several methods is the union of the per-method fronts. With more than
    ``max_paths`` combinations of categorical values, ``base``'s combination and random others
    are walked.
    """
    empty = np.empty((0, codec.dim))
    walk, cats = codec.ordinal_genes, codec.categorical_genes
    if not unknown or not walk:
        return empty
    start = codec.uniform(0.5) if base is None else np.asarray(base, dtype=float).copy()
    start[walk] = 0.0
    combos = _category_combinations(codec, cats, start, max_paths, rng)
    paths = []
    for combo in combos:
        s = start.copy()
        s[cats] = combo
        path = _walk(codec, predict, unknown, s, np.array(walk))
        if len(path):
            paths.append(path)
    return np.vstack(paths) if paths else empty


def _category_combinations(codec: Codec, cats: list[int], start: np.ndarray, max_paths: int,
                           rng: np.random.Generator | None) -> np.ndarray:
    """Value combinations of the non-ordinal genes to walk a path for (start's first)."""
    if not cats:
        return np.zeros((1, 0))
    sizes = [codec.genes[j].n_levels for j in cats]
    total = int(np.prod(sizes, dtype=float)) if np.prod(sizes, dtype=float) < 1e6 else 10**6
    first = start[cats].copy()
    if total <= max_paths:
        grid = np.stack(np.meshgrid(*[np.arange(n) for n in sizes], indexing="ij"), -1)
        grid = grid.reshape(-1, len(cats)).astype(float)
        same = np.all(grid == first, axis=1)
        return np.vstack([first[None], grid[~same]])
    rng = rng if rng is not None else np.random.default_rng(0)
    out, seen = [first], {tuple(first)}
    for _ in range(50 * max_paths):
        if len(out) >= max_paths:
            break
        c = np.array([rng.integers(0, n) for n in sizes], dtype=float)
        if tuple(c) not in seen:
            seen.add(tuple(c))
            out.append(c)
    return np.array(out)


def _cheapest(codec: Codec, predict: Predict, cur: np.ndarray, walk: np.ndarray) -> np.ndarray:
    """Each walked gene at its level of least known cost, the others as in `cur` (exact when
    the cost is a sum over genes, as memory is; e.g. prune 0.25 is cheaper than 0.0)."""
    rows, where = [], []
    for j in walk:
        for level in range(codec.genes[j].n_levels):
            g = cur.copy()
            g[j] = level
            rows.append(g)
            where.append((j, level))
    cost = costs_of(predict)(np.array(rows)).cost
    out = cur.copy()
    best: dict[int, float] = {}
    for (j, level), c in zip(where, cost):
        if j not in best or c < best[j] - 1e-12 * (abs(c) + 1):
            best[j], out[j] = c, level
    return out


def _walk(codec: Codec, predict: Predict, unknown: list[int], cur: np.ndarray,
          walk: np.ndarray) -> np.ndarray:
    """One marginal-gain path over the genes in `walk`, from their cheapest levels upwards in
    cost: every step moves one (or a few) gene(s) one level, taking the moves with the best
    predicted gain per unit of extra cost. Moves that cost nothing are taken only when they
    are predicted to gain, so the path never cycles."""
    cur = _cheapest(codec, predict, cur, walk)
    top = np.array([codec.genes[j].n_levels - 1 for j in walk], dtype=float)
    p = predict(cur[None])
    if not p.ok[0]:
        return np.empty((0, codec.dim))
    value, cost = p.mean[0, unknown].sum(), p.cost[0]
    path = [cur]
    while True:
        up, down = walk[cur[walk] < top], walk[cur[walk] > 0]
        moves = np.concatenate([up, down])
        if not len(moves):
            break
        cand = np.repeat(cur[None], len(moves), axis=0)
        cand[np.arange(len(moves)), moves] += np.r_[np.ones(len(up)), -np.ones(len(down))]
        p = predict(cand)
        gain = value - p.mean[:, unknown].sum(axis=1)
        eps = 1e-12 * (abs(cost) + 1)
        extra = p.cost - cost
        allowed = p.ok & (p.pof >= LIKELY_FEASIBLE) & ((extra > eps) | ((extra >= -eps) & (gain > 0)))
        ratio = np.where(allowed, gain / np.maximum(extra, eps), -np.inf)
        # take the best few moves at once (on different genes): far fewer predictions for a
        # path that differs little from the one-move-at-a-time path
        order = np.argsort(-ratio)
        order = order[np.isfinite(ratio[order])]
        _, first = np.unique(moves[order], return_index=True)
        order = order[np.sort(first)]  # the best move of each gene, best first
        order = order[: max(1, len(order) // 12)]
        if not len(order):
            break
        step = cur.copy()
        step[moves[order]] = cand[order, moves[order]]
        q = predict(step[None])
        if len(order) > 1 and not (q.ok[0] and q.pof[0] >= LIKELY_FEASIBLE and q.cost[0] > cost + eps):
            # the combined step broke a known constraint (or saved nothing): the best move only
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
    archive = dict(zip(codec.keys(pop), pop))
    if not len(pop):
        return pop
    pop = _select(pop, predict(pop), pop_size)
    for _ in range(n_gen):
        a = pop[rng.integers(0, len(pop), pop_size)]
        b = pop[rng.integers(0, len(pop), pop_size)]
        children = fresh(codec.mutate(codec.crossover(a, b, rng), rng, rate))
        for k, g in zip(codec.keys(children), children):
            archive.setdefault(k, g)
        merged = np.vstack([pop, children]) if len(children) else pop
        pop = _select(merged, predict(merged), pop_size)
    return np.array(list(archive.values()))


def _select(G: np.ndarray, p: Prediction, size: int) -> np.ndarray:
    """NSGA-II environmental selection on predicted means; candidates that probably violate
    an observed constraint rank behind every likely-feasible one."""
    if len(G) <= size:
        return G
    penalised = p.mean + (p.pof < LIKELY_FEASIBLE)[:, None] * (np.ptp(p.mean, axis=0) + 1.0)
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
