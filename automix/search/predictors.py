"""Lightweight performance predictors: scikit-learn regressors fitted on finished trials.

A real trial of a large model costs GPU-hours, so the search asks a cheap regressor which
configurations deserve one. No single regressor wins everywhere (a GP is best with few
trials and smooth objectives, trees cope with fragile layers, a ridge on engineered
features such as sensitivity x error(bits) extrapolates additive structure), so
:class:`PerformancePredictor` fits several and keeps the one whose cross-validated ranking of
held-out trials agrees best with reality (Kendall tau): the search only needs the *order* of
candidates to be right. Each model also returns an uncertainty (GP posterior std, the spread
of a tree or bootstrap ensemble) that the sampler turns into expected hypervolume improvement.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Sequence

import numpy as np
from scipy.stats import kendalltau

from automix.search._trees import boosting_predictor, forest_mean, forest_predictor

__all__ = ["PerformancePredictor", "available_models", "make_model", "kendall_tau"]

_CONTROLLER = None  # threadpoolctl.ThreadpoolController, created on first use


def kendall_tau(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    """Kendall rank correlation, 0.0 when undefined (constant inputs)."""
    if len(y_true) < 2:
        return 0.0
    tau = kendalltau(y_true, y_pred).statistic
    return 0.0 if tau is None or math.isnan(tau) else float(tau)


class _Model:
    """A regressor with a predictive spread: fit(X, y); predict(X) -> (mean, std)."""

    blas_free = False  # True: predict uses no BLAS, so PerformancePredictor sets no thread limit

    def fit(self, X: np.ndarray, y: np.ndarray) -> "_Model":  # pragma: no cover - interface
        raise NotImplementedError

    def predict(self, X: np.ndarray, return_std: bool = True) -> tuple[np.ndarray, np.ndarray]:
        raise NotImplementedError  # pragma: no cover - interface


def _short_lbfgs(obj_func, initial_theta, bounds):
    """L-BFGS-B with few iterations: hyperparameters need not be exact to rank candidates."""
    from scipy.optimize import minimize

    res = minimize(obj_func, initial_theta, method="L-BFGS-B", jac=True, bounds=bounds,
                   options={"maxiter": 40})
    return res.x, res.fun


class _GP(_Model):
    """Matern-5/2 GP with a noise term; ARD length scales while the input is small."""

    def __init__(self, seed: int) -> None:
        self.seed = seed

    def fit(self, X, y):
        from sklearn.gaussian_process import GaussianProcessRegressor
        from sklearn.gaussian_process.kernels import ConstantKernel, Matern, WhiteKernel

        d = X.shape[1]
        scale = np.ones(d) if d <= 8 else 1.0
        kernel = ConstantKernel(1.0, (1e-3, 1e3)) * Matern(
            length_scale=scale * math.sqrt(d), length_scale_bounds=(1e-2, 1e3), nu=2.5
        ) + WhiteKernel(1e-2, (1e-6, 1.0))
        self._lo, self._span = X.min(axis=0), np.ptp(X, axis=0) + 1e-12
        self._gp = GaussianProcessRegressor(
            kernel, normalize_y=True, random_state=self.seed, optimizer=_short_lbfgs
        )
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            self._gp.fit((X - self._lo) / self._span, y)
        return self

    def predict(self, X, return_std=True):
        Xs = (X - self._lo) / self._span
        if not return_std:
            return self._gp.predict(Xs), np.zeros(len(X))
        return self._gp.predict(Xs, return_std=True)


class _Trees(_Model):
    """Extra trees / random forest; std = spread of the individual trees."""

    blas_free = True

    def __init__(self, seed: int, extra: bool) -> None:
        self.seed, self.extra = seed, extra

    def fit(self, X, y):
        from sklearn.ensemble import ExtraTreesRegressor, RandomForestRegressor

        cls = ExtraTreesRegressor if self.extra else RandomForestRegressor
        self._m = cls(
            n_estimators=64, min_samples_leaf=1, max_features=0.6, random_state=self.seed, n_jobs=1
        ).fit(X, y)
        self._fast = forest_predictor(self._m)  # the same values, without per-tree overhead
        return self

    def predict(self, X, return_std=True):
        per_tree = self._fast(X) if self._fast is not None else None
        if per_tree is not None:
            if not return_std:
                return forest_mean(per_tree), np.zeros(len(X))
            return per_tree.mean(axis=0), per_tree.std(axis=0)
        if not return_std:
            return self._m.predict(X), np.zeros(len(X))
        per_tree = np.stack([t.predict(X) for t in self._m.estimators_])
        return per_tree.mean(axis=0), per_tree.std(axis=0)


class _LevelExpansion:
    """Standardise features and add one-hot columns for every low-cardinality feature, so a
    linear model can learn any per-choice effect (e.g. the convex cost of 2-bit vs 3-bit)."""

    def fit(self, X: np.ndarray) -> "_LevelExpansion":
        self._mu, self._sd = X.mean(axis=0), X.std(axis=0) + 1e-12
        self._levels = []
        for j in range(X.shape[1]):
            values = np.unique(X[:, j])
            if 2 < len(values) <= 8:
                self._levels.append((j, values[1:]))
        return self

    def transform(self, X: np.ndarray) -> np.ndarray:
        parts = [(X - self._mu) / self._sd]
        for j, values in self._levels:
            parts.append((X[:, j : j + 1] == values[None, :]).astype(float))
        return np.concatenate(parts, axis=1)


class _Bagged(_Model):
    """Bootstrap ensemble of a point regressor; std = spread of the members."""

    def __init__(self, seed: int, factory: Callable[[int], object], n_members: int, expand: bool):
        self.seed, self.factory, self.n_members, self.expand = seed, factory, n_members, expand

    def fit(self, X, y):
        rng = np.random.default_rng(self.seed)
        self._tf = _LevelExpansion().fit(X) if self.expand else None
        Xt = self._tf.transform(X) if self._tf else X
        self._y_mu, self._y_sd = y.mean(), y.std() + 1e-12
        yt = (y - self._y_mu) / self._y_sd
        self._members = []
        for k in range(self.n_members):
            idx = rng.integers(0, len(y), len(y)) if k else np.arange(len(y))
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                self._members.append(self.factory(self.seed + k).fit(Xt[idx], yt[idx]))
        # boosted trees: all members' trees at once, the same values (see automix.search._trees)
        self._fast = boosting_predictor(self._members)
        self.blas_free = self._fast is not None
        # linear members: their coefficients, applied as scikit-learn's predict does (X @ coef +
        # intercept) without its input validation, which costs more than the product here
        linear = all(hasattr(m, "coef_") and np.ndim(m.coef_) == 1 for m in self._members)
        self._linear = [(m.coef_, m.intercept_) for m in self._members] if linear else None
        return self

    def predict(self, X, return_std=True):
        Xt = self._tf.transform(X) if self._tf else X
        raw = self._fast(Xt) if self._fast is not None else None
        if raw is None and self._linear is not None:
            Xt = np.asarray(Xt, dtype=float)
            raw = np.stack([Xt @ coef + intercept for coef, intercept in self._linear])
        if raw is None:
            raw = np.stack([m.predict(Xt) for m in self._members])
        preds = raw * self._y_sd + self._y_mu
        return preds[0] * 0.5 + preds.mean(axis=0) * 0.5, preds.std(axis=0)


def _ridge(seed: int) -> _Model:
    from sklearn.linear_model import RidgeCV

    return _Bagged(seed, lambda s: RidgeCV(alphas=np.logspace(-3, 3, 13)), 8, expand=True)


def _linear(seed: int) -> _Model:
    """A ridge on the features as given (no standardising, no one-hot levels): for quantities
    additive in numeric parameter values, such as memory in bits x size."""
    from sklearn.linear_model import RidgeCV

    return _Bagged(seed, lambda s: RidgeCV(alphas=np.logspace(-4, 3, 15)), 8, expand=False)


def _gbm(seed: int) -> _Model:
    from sklearn.ensemble import GradientBoostingRegressor

    def make(s: int):
        return GradientBoostingRegressor(
            n_estimators=60, max_depth=3, learning_rate=0.15, subsample=0.8, random_state=s
        )

    return _Bagged(seed, make, 3, expand=False)


def _mlp(seed: int) -> _Model:
    from sklearn.neural_network import MLPRegressor
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    def make(s: int):
        return make_pipeline(
            StandardScaler(),
            MLPRegressor(hidden_layer_sizes=(64, 32), alpha=1e-2, max_iter=600, learning_rate_init=3e-3, random_state=s),
        )

    return _Bagged(seed, make, 3, expand=False)


_MODELS: dict[str, Callable[[int], _Model]] = {
    "gp": lambda s: _GP(s),
    "extra_trees": lambda s: _Trees(s, extra=True),
    "random_forest": lambda s: _Trees(s, extra=False),
    "gbm": _gbm,
    "mlp": _mlp,
    "ridge": _ridge,
    "linear": _linear,
}


def available_models() -> list[str]:
    """Names accepted by :func:`make_model` and :class:`PerformancePredictor`."""
    return sorted(_MODELS)


def make_model(name: str, seed: int = 0) -> _Model:
    """One regressor by name; unknown names raise ValueError listing the available ones."""
    if name not in _MODELS:
        raise ValueError(f"unknown predictor model {name!r}; available: {available_models()}")
    return _MODELS[name](seed)


class PerformancePredictor:
    """Chooses a regressor by cross-validated Kendall tau, then predicts mean and std.

    Args:
        models: candidate model names (see :func:`available_models`).
        cv_folds: folds of the model-selection cross-validation.
        seed: seed of the folds and of the randomised models.
        reselect_growth: model selection is repeated only once the training set has grown by
            this factor since the last selection (refitting the chosen model is cheap;
            cross-validating all of them is not).
        min_std_fraction: the predictive std never drops below this fraction of the chosen
            model's cross-validated RMSE, so EHVI keeps some exploration.
        refit_after, refit_growth: past `refit_after` training points the chosen model is
            refitted only once the data grew by `refit_growth` (a few new trials barely move a
            model fitted on hundreds; this keeps proposals fast at 500+ trials).
        max_cv_points: model selection cross-validates on at most this many (random) points.
        blas_threads: BLAS threads while fitting/predicting (None: leave as is). The
            matrices here are small, where one thread is much faster than several contending
            for a shared CPU.
    """

    def __init__(
        self,
        models: Sequence[str] = ("gp", "extra_trees", "gbm", "mlp", "ridge"),
        cv_folds: int = 4,
        seed: int = 0,
        reselect_growth: float = 1.25,
        min_std_fraction: float = 0.2,
        refit_after: int = 200,
        refit_growth: float = 1.04,
        max_cv_points: int = 250,
        blas_threads: int | None = 1,
    ) -> None:
        for name in models:
            make_model(name)  # validate early
        if not models:
            raise ValueError("models must name at least one regressor")
        self.models = tuple(models)
        self.cv_folds = cv_folds
        self.seed = seed
        self.reselect_growth = reselect_growth
        self.min_std_fraction = min_std_fraction
        self.blas_threads = blas_threads
        self.refit_after, self.refit_growth = refit_after, refit_growth
        self.max_cv_points = max_cv_points
        self._fitted_at = 0
        self.chosen: str | None = None
        self.scores: dict[str, dict[str, float]] = {}
        self._selected_at = 0
        self._model: _Model | None = None
        self._rmse = 0.0

    def fit(
        self,
        X: np.ndarray,
        y: np.ndarray,
        prior_X: np.ndarray | None = None,
        prior_y: np.ndarray | None = None,
    ) -> "PerformancePredictor":
        """Fit on (X, y); `prior_*` are trials of earlier studies (warm start): always trained
        on, never used to score the candidate models."""
        X, y = np.asarray(X, dtype=float), np.asarray(y, dtype=float)
        if X.ndim != 2 or len(X) != len(y) or len(y) == 0:
            raise ValueError(f"need X (n, d) and y (n,), got {X.shape} and {y.shape}")
        if prior_X is not None and len(prior_X):
            px, py = np.asarray(prior_X, dtype=float), np.asarray(prior_y, dtype=float)
        else:
            px, py = np.empty((0, X.shape[1])), np.empty(0)
        n = len(y)
        with self._threads():
            reselect = self.chosen is None or n >= self._selected_at * self.reselect_growth
            if reselect:
                if n > self.max_cv_points:
                    keep = np.random.default_rng(self.seed + n).choice(n, self.max_cv_points, False)
                    self._select(X[keep], y[keep], px, py)
                else:
                    self._select(X, y, px, py)
                self._selected_at = n
            stale_ok = n >= self.refit_after and n < self._fitted_at * self.refit_growth
            if reselect or self._model is None or not stale_ok:
                self._model = make_model(self.chosen, self.seed).fit(
                    np.vstack([X, px]), np.hstack([y, py])
                )
                self._fitted_at = n
        return self

    def _threads(self, blas_free: bool = False):
        from contextlib import nullcontext

        if self.blas_threads is None or blas_free:
            return nullcontext()
        global _CONTROLLER
        if _CONTROLLER is None:  # scanning the loaded libraries is slow: do it once
            from threadpoolctl import ThreadpoolController

            _CONTROLLER = ThreadpoolController()
        return _CONTROLLER.limit(limits=self.blas_threads)

    def _select(self, X, y, px, py) -> None:
        n = len(y)
        if len(self.models) == 1 or n < 8:
            self.chosen = self.models[0] if len(self.models) == 1 or "gp" not in self.models else "gp"
            self._rmse = float(np.std(y)) if n > 1 else 1.0
            self._selected_at = n
            return
        folds = min(self.cv_folds, n // 4)
        order = np.random.default_rng(self.seed).permutation(n)
        self.scores = {}
        for name in self.models:
            pred = np.empty(n)
            for k in range(folds):
                test = order[k::folds]
                train = np.setdiff1d(order, test)
                model = make_model(name, self.seed).fit(
                    np.vstack([X[train], px]), np.hstack([y[train], py])
                )
                pred[test] = model.predict(X[test])[0]
            self.scores[name] = {
                "kendall_tau": kendall_tau(y, pred),
                "rmse": float(np.sqrt(np.mean((pred - y) ** 2))),
            }
        self.chosen = max(self.models, key=lambda m: (self.scores[m]["kendall_tau"], -self.scores[m]["rmse"]))
        self._rmse = self.scores[self.chosen]["rmse"]
        self._selected_at = n

    def predict(self, X: np.ndarray, return_std: bool = True) -> tuple[np.ndarray, np.ndarray]:
        """Predicted mean and standard deviation for each row of X (std zeros when not asked:
        cheaper for ensembles and GPs)."""
        if self._model is None:
            raise RuntimeError("PerformancePredictor.predict called before fit")
        with self._threads(getattr(self._model, "blas_free", False)):
            mean, std = self._model.predict(np.asarray(X, dtype=float), return_std)
        if not return_std:
            return mean, std
        return mean, np.maximum(std, self.min_std_fraction * self._rmse)
