"""No update from no information, and metrics that say when nothing was seen.

Before: OpenES with all-NaN or all-equal fitness moved its mean every generation
(centered ranks break ties by position, so every pair had a nonzero difference,
and Adam stepped); ``mean_fitness`` reported 0.0 for a generation whose every value
was NaN (read as a perfect score) and overflowed for huge finite values.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import evopes


def generations(es, fitness_fn, num=5):
    params = es.default_params
    state = es.init(jax.random.key(0), jnp.ones(4), params)
    metrics = []
    for g in range(num):
        population, state = es.ask(jax.random.key(g), state, params)
        state, m = es.tell(jax.random.key(g), population, fitness_fn(population), state, params)
        metrics.append(m)
    return state, metrics


@pytest.mark.parametrize("cls", [evopes.OpenES, evopes.FullES])
@pytest.mark.parametrize(
    "fitness_fn",
    [
        lambda x: jnp.full(x.shape[0], jnp.nan),
        lambda x: jnp.full(x.shape[0], 2.5),
        lambda x: jnp.full(x.shape[0], 2.5).at[0].set(jnp.nan),
    ],
    ids=["all-nan", "all-equal", "equal-and-nan"],
)
def test_antithetic_strategies_make_no_step_without_two_distinct_values(cls, fitness_fn):
    es = cls(8, jnp.zeros(4))
    state, metrics = generations(es, fitness_fn)
    np.testing.assert_array_equal(state.mean, 1.0)
    assert all(bool(m["update_skipped"]) for m in metrics)
    # and a generation with information does move it
    state, metrics = generations(es, lambda x: jnp.sum(x**2, axis=1), num=1)
    assert not np.array_equal(state.mean, 1.0)


@pytest.mark.parametrize("cls", [evopes.CMAES, evopes.OpenES])
def test_mean_fitness_is_nan_when_nothing_finite_and_never_overflows(cls):
    es = cls(8, jnp.zeros(4))
    _, metrics = generations(es, lambda x: jnp.full(x.shape[0], jnp.nan), num=1)
    assert np.isnan(metrics[0]["mean_fitness"])
    _, metrics = generations(es, lambda x: jnp.full(x.shape[0], 3e38), num=1)
    np.testing.assert_allclose(metrics[0]["mean_fitness"], 3e38, rtol=1e-6)
    _, metrics = generations(es, lambda x: jnp.arange(8.0).at[3].set(jnp.inf), num=1)
    np.testing.assert_allclose(metrics[0]["mean_fitness"], np.mean([0, 1, 2, 4, 5, 6, 7]))
