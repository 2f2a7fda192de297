"""The codec's views of a configuration that the predictors read."""

from __future__ import annotations

import numpy as np
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

from automix.search._codec import Codec


def test_values_are_the_numeric_choices_not_their_levels() -> None:
    codec = Codec({
        "bits": CategoricalDistribution([16, 2, 4, 3, 8]),  # sorted into levels 2 < 3 < 4 < 8 < 16
        "method": CategoricalDistribution(["qlora", "loftq"]),  # not numeric: no value
        "prune": CategoricalDistribution([0.0, 0.1, 0.3]),
        "rank": IntDistribution(8, 32, step=8),
        "lr": FloatDistribution(1e-5, 1e-3, log=True),  # continuous: already a feature
    })
    params = [{"bits": 8, "method": "loftq", "prune": 0.3, "rank": 24, "lr": 1e-4},
              {"bits": 2, "method": "qlora", "prune": 0.0, "rank": 8, "lr": 1e-3}]
    values = codec.values(np.array([codec.encode(p) for p in params]))
    names = [codec.names[j] for j in codec.ordinal_genes]
    assert names == ["bits", "prune", "rank"]
    np.testing.assert_allclose(values, [[8, 0.3, 24], [2, 0.0, 8]])
