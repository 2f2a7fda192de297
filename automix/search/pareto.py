"""Pareto utilities for minimisation problems: non-dominated sorting, hypervolume and
(expected) hypervolume improvement.

Every function here assumes *all objectives are minimised*; callers flip the sign of maximised
objectives first. Hypervolume improvement is computed by decomposing the region that the current
front does not dominate into axis-aligned boxes, so the improvement of thousands of candidate
points (or Monte-Carlo samples of them) is one vectorised sum over boxes.
"""

from __future__ import annotations

import numpy as np

from automix.search._optuna_compat import compute_hypervolume, get_non_dominated_box_bounds

__all__ = [
    "nondominated_mask",
    "nondominated_rank",
    "crowding_distance",
    "hypervolume",
    "normalized_hypervolume",
    "nondominated_boxes",
    "hypervolume_improvement",
    "expected_hypervolume_improvement",
]


def nondominated_mask(values: np.ndarray) -> np.ndarray:
    """Boolean mask of the points that no other point dominates (duplicates all kept)."""
    y = np.asarray(values, dtype=float)
    if y.ndim != 2:
        raise ValueError(f"values must be 2-D (n_points, n_objectives), got shape {y.shape}")
    n = len(y)
    mask = np.ones(n, dtype=bool)
    for i in range(n):
        if not mask[i]:
            continue
        dominated_by_i = np.all(y[i] <= y, axis=1) & np.any(y[i] < y, axis=1)
        mask &= ~dominated_by_i
    return mask


def nondominated_rank(values: np.ndarray) -> np.ndarray:
    """Front index of every point (0 = Pareto front), as in NSGA-II's non-dominated sort."""
    y = np.asarray(values, dtype=float)
    n = len(y)
    # dom[i, j]: i dominates j
    le = np.all(y[:, None, :] <= y[None, :, :], axis=2)
    lt = np.any(y[:, None, :] < y[None, :, :], axis=2)
    dom = le & lt
    count = dom.sum(axis=0)
    ranks = np.full(n, -1, dtype=int)
    rank = 0
    current = np.flatnonzero(count == 0)
    while len(current):
        ranks[current] = rank
        count = count - dom[current].sum(axis=0)
        count[ranks >= 0] = -1
        current = np.flatnonzero(count == 0)
        rank += 1
    return ranks


def crowding_distance(values: np.ndarray) -> np.ndarray:
    """NSGA-II crowding distance within one front (boundary points get +inf)."""
    y = np.asarray(values, dtype=float)
    n, m = y.shape
    dist = np.zeros(n)
    if n <= 2:
        return np.full(n, np.inf)
    for k in range(m):
        order = np.argsort(y[:, k], kind="stable")
        span = y[order[-1], k] - y[order[0], k]
        dist[order[0]] = dist[order[-1]] = np.inf
        if span <= 0:
            continue
        dist[order[1:-1]] += (y[order[2:], k] - y[order[:-2], k]) / span
    return dist


def hypervolume(values: np.ndarray, reference: np.ndarray) -> float:
    """Volume dominated by `values` and bounded by `reference` (points beyond it count zero)."""
    y = np.asarray(values, dtype=float).reshape(-1, len(reference))
    ref = np.asarray(reference, dtype=float)
    y = y[np.all(y < ref, axis=1)]
    if len(y) == 0:
        return 0.0
    if y.shape[1] == 1:
        return float(ref[0] - y[:, 0].min())
    if y.shape[1] == 2:
        front = y[nondominated_mask(y)]
        front = front[np.lexsort((front[:, 1], front[:, 0]))]
        volume, best_y = 0.0, ref[1]
        for x0, x1 in front:
            if x1 < best_y:
                volume += (ref[0] - x0) * (best_y - x1)
                best_y = x1
        return float(volume)
    return float(compute_hypervolume(y, ref))


def normalized_hypervolume(values: np.ndarray, ideal: np.ndarray, reference: np.ndarray) -> float:
    """Hypervolume of `values` in the box from `ideal` to `reference`, as a fraction of the box.

    Each objective is mapped by (y - ideal) / (reference - ideal), so the box becomes the unit
    box and the reference point all ones; points beyond the reference count zero, points better
    than the ideal count beyond the box. The one normalisation of hypervolume in automix: the
    study's (`automix.study.results`) and the benchmarks' both call it.
    """
    ideal = np.asarray(ideal, dtype=float)
    ref = np.asarray(reference, dtype=float)
    y = np.asarray(values, dtype=float).reshape(-1, len(ref))
    return hypervolume((y - ideal) / (ref - ideal), np.ones(len(ref)))


def nondominated_boxes(front: np.ndarray, reference: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Split the region below `reference` that `front` does not dominate into boxes.

    Returns (lower, upper), each (n_boxes, n_objectives); lower bounds may be -inf. The
    hypervolume improvement of a point p is then sum_k prod_d (upper_kd - max(p_d, lower_kd))+.
    """
    ref = np.asarray(reference, dtype=float)
    m = len(ref)
    y = np.asarray(front, dtype=float).reshape(-1, m)
    y = y[np.all(y < ref, axis=1)]
    if len(y) == 0:
        return np.full((1, m), -np.inf), ref[None, :].copy()
    if m == 1:
        return np.array([[-np.inf]]), np.array([[y[:, 0].min()]])
    if m == 2:
        front2 = np.unique(y[nondominated_mask(y)], axis=0)  # sorted by f0 asc => f1 desc
        xs = np.concatenate([[-np.inf], front2[:, 0]])
        tops = np.concatenate([[ref[1]], front2[:, 1]])
        x_ends = np.concatenate([front2[:, 0], [ref[0]]])
        lower = np.stack([xs, np.full(len(xs), -np.inf)], axis=1)
        upper = np.stack([x_ends, tops], axis=1)
        keep = upper[:, 0] > lower[:, 0]
        return lower[keep], upper[keep]
    lower, upper = get_non_dominated_box_bounds(np.unique(y, axis=0), ref)
    return np.asarray(lower, dtype=float), np.asarray(upper, dtype=float)


def hypervolume_improvement(
    points: np.ndarray, lower: np.ndarray, upper: np.ndarray
) -> np.ndarray:
    """Hypervolume each point (..., m) adds to the front the boxes (lower, upper) came from."""
    p = np.asarray(points, dtype=float)[..., None, :]  # (..., 1, m)
    side = upper - np.maximum(p, lower)  # (..., n_boxes, m)
    return np.clip(side, 0.0, None).prod(axis=-1).sum(axis=-1)


def expected_hypervolume_improvement(
    mean: np.ndarray,
    std: np.ndarray,
    front: np.ndarray,
    reference: np.ndarray,
    n_samples: int = 64,
    rng: np.random.Generator | None = None,
) -> np.ndarray:
    """Monte-Carlo EHVI of candidates with independent Gaussian objectives (mean, std: (n, m)).

    Known objectives simply have std 0. Common random numbers are used across candidates so
    that their ranking is not blurred by sampling noise.
    """
    rng = rng if rng is not None else np.random.default_rng(0)
    mean = np.asarray(mean, dtype=float)
    std = np.asarray(std, dtype=float)
    lower, upper = nondominated_boxes(front, reference)
    z = rng.standard_normal((n_samples, 1, mean.shape[1]))
    total = np.zeros(len(mean))
    # Chunk over samples to bound memory (n_samples * n * n_boxes * m floats).
    chunk = max(1, int(2e7 // max(1, len(mean) * len(lower) * mean.shape[1])))
    for start in range(0, n_samples, chunk):
        samples = mean[None] + std[None] * z[start : start + chunk]
        total += hypervolume_improvement(samples, lower, upper).sum(axis=0)
    return total / n_samples
