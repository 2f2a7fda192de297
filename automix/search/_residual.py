"""What the trials say beyond the profile: a Bayesian linear model of the loss, additive over
parameters, centred on the one-shot allocation's own prediction.

The profile predicts a configuration's damage as a sum over parameters, ``S(x) = sum_j s_j(x_j)``
(``automix.search.oneshot``). A trial measures the loss. Rather than learn the loss from scratch,
the model learns how the trials differ from the profile's prediction:

    loss(x) ~ a + b S(x) + sum_F w_F V_F(x) + m_method                 (the profile, rescaled)
              + sum_j d_j b s_j(x_j) + sum_(j unscored) u_j w_F(j) v_j(x_j)   (its errors)

``V_F`` sums the values of a family of parameters the profile does not score (all prune ratios,
all ranks: a search space's ``<field>.<group>`` names), ``v_j`` is one of them. The first line
has few terms and is fitted from a handful of trials; the second has one relative correction per
parameter, ``d_j`` (layer j hurts ``1 + d_j`` times what the profile says) and ``u_j``, with a
Gaussian prior of relative scale ``tau`` -- a rough profile is off by a factor of about two.
Being linear in its parameters, the model has a closed-form Gaussian posterior, and every draw
from it is again a sum over parameters: tables (``automix.search._allocation.Additive``) that the
exact allocation minimises under the budget. Its posterior mean gives the exploitation step; a
draw gives a Thompson-sampling step, which explores exactly where the trials leave the profile's
errors uncertain (as BOCS does for combinatorial structures: Baptista & Poloczek, "Bayesian
Optimization of Combinatorial Structures", ICML 2018).

Losses that are positive and span more than a factor of two (perplexities) are modelled on a log
scale, so that one broken configuration (perplexity in the thousands) does not dominate a linear
fit of the good ones.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from automix.search._allocation import Additive
from automix.search.oneshot import OneShotAllocator

__all__ = ["ResidualModel", "family_of"]


def family_of(name: str) -> str:
    """The family of a parameter named ``<field>.<group>`` (its field), else its own name."""
    return name.split(".", 1)[0] if "." in name else name


def _as_float(v: Any) -> float | None:
    try:
        return float(v)
    except (TypeError, ValueError):
        return None


class ResidualModel:
    """The model of the module docstring over an allocator's parameters.

    Args:
        allocator: the one-shot allocator (its score tables, parameters and conditions).
        tau: prior scale of the relative per-parameter corrections of the profile, ``d_j``.
        tau_unscored: the same for the unscored parameters' own terms, ``u_j`` (smaller: with
            a few trials, one family term such as "pruning costs this much" is what the
            trials can tell; a prior as wide as the profile's would have draws prune a
            block here and there on no evidence).
        draw_scale: posterior draws (Thompson sampling) use the covariance times its square:
            with tens of trials and hundreds of coefficients, a full-width draw moves far
            from anything tried; half the width keeps the step local.
    """

    def __init__(self, allocator: OneShotAllocator, tau: float = 0.5, tau_unscored: float = 0.25,
                 draw_scale: float = 0.5) -> None:
        self.a = allocator
        self.tau, self.tau_unscored, self.draw_scale = float(tau), float(tau_unscored), float(draw_scale)
        P = len(allocator.names)
        self.unscored = [j for j in range(P) if not allocator.scored[j]]
        self.scored = [j for j in range(P) if allocator.scored[j]]
        # numeric value tables of the unscored parameters (per level)
        self.values = {j: np.array([_as_float(c) or 0.0 for c in allocator.choices[j]]) for j in self.unscored}
        fams: dict[str, list[int]] = {}
        for j in self.unscored:
            fams.setdefault(family_of(allocator.names[j]), []).append(j)
        self.families = list(fams.items())
        # per value of the scored parameters (but the lowest): which levels take it, weighted by
        # the parameter's size (its span in the memory tables): the share of the model at that
        # value, whose coefficient corrects a profile biased at one value for every layer alike
        # (e.g. a quadratic estimate that over-rates 8-bit upgrades)
        cost = allocator.cost_tables(allocator.condition_values()[0])
        size = {j: float(np.ptp(cost.first[j][:, 0])) for j in self.scored}
        mean = np.mean([v for v in size.values() if v > 0]) if any(v > 0 for v in size.values()) else 1.0
        values = sorted({f for j in self.scored for c in allocator.choices[j] for f in [_as_float(c)] if f is not None})
        self.level_tables = [{j: np.array([size[j] / mean if _as_float(c) == v else 0.0 for c in allocator.choices[j]])
                              for j in self.scored} for v in values[1:]]
        self.conds = allocator.condition_values()
        self.log = False
        self.fitted = False

    # ----------------------------------------------------------------- design
    def _parts(self, X: np.ndarray, conds: Sequence[tuple]) -> tuple[np.ndarray, np.ndarray]:
        """(base columns: 1, S, V_F..., value shares, method dummies; correction columns: s_j, v_j)."""
        n = len(X)
        S = np.empty(n)
        fj = np.empty((n, len(self.scored)))
        for k, (x, c) in enumerate(zip(X, conds)):
            t = self.a.score_tables(c)
            S[k] = t(x[None])[0]
            fj[k] = [t.first[j][x[j], 0] for j in self.scored]
        V = np.stack([sum(self.values[j][X[:, j]] for j in js) for _, js in self.families], axis=1) \
            if self.families else np.zeros((n, 0))
        shares = np.stack([sum(t[j][X[:, j]] for j in self.scored) for t in self.level_tables], axis=1) \
            if self.level_tables else np.zeros((n, 0))
        D = np.array([[1.0 if c == cc else 0.0 for cc in self.conds[1:]] for c in conds]).reshape(n, -1)
        vj = np.stack([self.values[j][X[:, j]] for j in self.unscored], axis=1) if self.unscored \
            else np.zeros((n, 0))
        return np.hstack([np.ones((n, 1)), S[:, None], V, shares, D]), np.hstack([fj, vj])

    # ----------------------------------------------------------------- fit
    def fit(self, params: Sequence[Mapping[str, Any]], losses: Sequence[float]) -> bool:
        """Fit on finished trials (losses: lower is better). False when the trials cannot
        support the model yet (fewer than 3, no spread of the profile's prediction, or a
        profile whose prediction does not rise with the loss)."""
        self.fitted = False
        y = np.asarray(losses, dtype=float)
        keep = np.isfinite(y)
        params = [p for p, k in zip(params, keep) if k]
        y = y[keep]
        if len(y) < 3:
            return False
        self.log = bool(np.all(y > 0) and y.max() > 2 * y.min())
        t = np.log(y) if self.log else y
        lv = [self.a.levels(p) for p in params]
        X = np.array([x for x, _ in lv])
        conds = [c for _, c in lv]
        B, C = self._parts(X, conds)
        if np.ptp(B[:, 1]) <= 1e-12 * (1 + np.abs(B[:, 1]).max()):
            return False
        spread = max(float(np.ptp(t)), 1e-3 * (abs(float(np.mean(t))) + 1e-3))
        # weak priors on the base terms: moving one across the range it can take could change
        # the loss by a few times the spread of the trials (the profile's slope: across the
        # range the trials show)
        ranges = [1.0, max(float(np.ptp(B[:, 1])), 1e-12)]
        ranges += [sum(float(np.ptp(self.values[j])) for j in js) or 1.0 for _, js in self.families]
        ranges += [sum(float(t[j].max()) for j in self.scored) or 1.0 for t in self.level_tables]
        ranges += [1.0] * (B.shape[1] - len(ranges))
        base_std = np.array([1e3 * spread, 10.0 * spread / ranges[1]] + [2.0 * spread / r for r in ranges[2:]])
        # a preliminary fit of the base terms gives the scale the corrections are relative to
        theta0 = self._posterior(B, t, 1.0 / base_std**2, noise=(0.1 * spread) ** 2)[0]
        b = float(theta0[1])
        if b <= 0:
            return False
        w = {f: float(theta0[2 + k]) for k, (f, _) in enumerate(self.families)}
        corr_std = np.concatenate([
            np.full(len(self.scored), self.tau * b),
            [self.tau_unscored * max(abs(w[family_of(self.a.names[j])]),
                                     spread / max(np.ptp(self.values[j]), 1e-12) * 0.1)
             for j in self.unscored],
        ])
        Z = np.hstack([B, C])
        prec = np.concatenate([1.0 / base_std**2, 1.0 / np.maximum(corr_std, 1e-12) ** 2])
        # noise: the residual spread of the base fit, floored (trials of the same configuration
        # differ by their training noise; a model that fits every trial exactly has none)
        resid = t - B @ theta0
        noise = max(float(np.mean(resid**2)), (0.01 * spread) ** 2)
        mean, cov = self._posterior(Z, t, prec, noise)
        self.theta, self.cov, self.noise = mean, cov, noise
        self.n_base = B.shape[1]
        self.fitted = True
        return True

    @staticmethod
    def _posterior(Z: np.ndarray, t: np.ndarray, prec: np.ndarray, noise: float) -> tuple[np.ndarray, np.ndarray]:
        A = Z.T @ Z / noise + np.diag(prec)
        cov = np.linalg.inv(A)
        cov = (cov + cov.T) / 2
        return cov @ (Z.T @ t) / noise, cov

    # ----------------------------------------------------------------- predictions and tables
    def predict(self, params: Sequence[Mapping[str, Any]]) -> tuple[np.ndarray, np.ndarray]:
        """Posterior mean and standard deviation of the loss (on the model's scale: log when
        ``self.log``)."""
        lv = [self.a.levels(p) for p in params]
        B, C = self._parts(np.array([x for x, _ in lv]), [c for _, c in lv])
        Z = np.hstack([B, C])
        return Z @ self.theta, np.sqrt(np.maximum(np.einsum("ij,jk,ik->i", Z, self.cov, Z), 0.0))

    def draw(self, rng: np.random.Generator) -> np.ndarray:
        """A draw of the model's coefficients from the posterior."""
        return rng.multivariate_normal(self.theta, self.draw_scale**2 * self.cov, method="cholesky")

    def tables(self, condition: tuple, theta: np.ndarray | None = None) -> Additive:
        """The model's prediction for one condition as tables over the allocator's levels
        (posterior mean, or the coefficients ``theta`` of a draw)."""
        th = self.theta if theta is None else theta
        s = self.a.score_tables(condition)
        nb = self.n_base
        P = len(self.a.names)
        first = [np.zeros((self.a.n_levels[j], 1)) for j in range(P)]
        n_fam, n_lvl = len(self.families), len(self.level_tables)
        dummy = [k for k, cc in enumerate(self.conds[1:]) if cc == tuple(condition)]
        v0 = th[0] + th[1] * float(s.v0[0]) + (th[2 + n_fam + n_lvl + dummy[0]] if dummy else 0.0)
        for k, j in enumerate(self.scored):
            first[j][:, 0] = (th[1] + th[nb + k]) * s.first[j][:, 0]
        for f, (_, js) in enumerate(self.families):
            for j in js:
                first[j][:, 0] += th[2 + f] * self.values[j]
        for v, t in enumerate(self.level_tables):
            for j in self.scored:
                first[j][:, 0] += th[2 + n_fam + v] * t[j]
        for k, j in enumerate(self.unscored):
            first[j][:, 0] += th[nb + len(self.scored) + k] * self.values[j]
        second = {key: (th[1] + 0.0) * t for key, t in s.second.items()}
        return Additive(np.array([v0]), first, second)
