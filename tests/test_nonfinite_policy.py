"""The non-finite policy (docs/reliability.md), strategy by strategy, on exact equivalences.

* Rank-based strategies (CMAES, SepCMAES, OpenES with rank shaping): NaN, +inf
  and -inf rank after every finite value. CMA-ES also gives them weight 0, so a
  generation with non-finite members equals one where those members have a huge
  finite fitness (they then rank last) and the last weights are set to 0.
* Estimator-based strategies (FullES, the online family): a non-finite value
  masks its antithetic pair (at that step); the estimate equals the one where the
  pair's two values are equal (difference 0), renormalised by the number of
  valid entries: g_masked = g_zero * N / (N - 1).
* Either way ``metrics["num_nonfinite"]`` counts the values (checked exactly in
  test_properties.py) and the masked pairs are counted too.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from strategy_zoo import CASES, MEAN, SOLUTION, Case, advance, code_shape, generation, strong_params

import evopes
from evopes.strategies.open_es import OpenES

NUM_GENERATIONS = 8
BY_NAME = {case.name: case for case in CASES}
NAN, POS_INF, NEG_INF, HUGE, ZERO = 1, 2, 3, 4, 5


def _run(case, codes, **param_changes):
    es = case.make(SOLUTION, 8)
    params = strong_params(es.default_params, **param_changes)
    state = es.init(jax.random.key(0), MEAN, params)
    return advance(generation(case, es), state, jax.random.key(1), params, codes)


def _without_best(state):
    """The search state: everything but the best-so-far bookkeeping."""
    return state.replace(best_fitness=0.0, best_solution=0.0)


def _assert_same(a, b):
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


# Three non-finite members per generation, at varying positions; never a whole generation.
NONFINITE = np.zeros((NUM_GENERATIONS, 8), np.int32)
for generation_index in range(NUM_GENERATIONS):
    NONFINITE[
        generation_index,
        [generation_index % 8, (generation_index + 3) % 8, (generation_index + 5) % 8],
    ] = [
        NAN,
        POS_INF,
        NEG_INF,
    ]
AS_HUGE = np.where(NONFINITE != 0, HUGE, 0).astype(np.int32)


def test_openes_ranks_nonfinite_fitness_worst():
    case = BY_NAME["OpenES"]
    nonfinite, _ = _run(case, jnp.asarray(NONFINITE))
    huge, _ = _run(case, jnp.asarray(AS_HUGE))
    _assert_same(_without_best(nonfinite), _without_best(huge))  # -inf too: worst, not best


@pytest.mark.parametrize("name", ["CMAES", "SepCMAES"])
def test_cma_ranks_nonfinite_fitness_worst_with_zero_weight(name):
    case = BY_NAME[name]
    es = case.make(SOLUTION, 8)
    weights = strong_params(es.default_params).weights.at[-3:].set(0.0)  # the 3 injected rank last
    nonfinite, (sound, _) = _run(case, jnp.asarray(NONFINITE))
    huge, _ = _run(case, jnp.asarray(AS_HUGE), weights=weights)
    reference, _ = _run(case, jnp.asarray(AS_HUGE))
    assert bool(jnp.all(sound))
    _assert_same(_without_best(nonfinite), _without_best(huge))
    # ... and not as ordinary worst members, which get negative (active) weights in CMAES.
    if name == "CMAES":
        assert not np.array_equal(np.asarray(nonfinite.C), np.asarray(reference.C))


def _first_gradient(case, codes, **param_changes):
    """The float32 leaf of the first generation's gradient estimate, and its metrics."""
    _, (_, metrics) = _run(case, codes, **param_changes)
    return np.asarray(metrics["gradient"]["w"][0], np.float64), metrics


@pytest.mark.parametrize("name", ["FullES", "TES", "PES", "GPES", "NRES"])
def test_estimators_mask_the_pair_and_renormalise(name):
    case = BY_NAME[name]
    es = case.make(SOLUTION, 8)
    shape = (NUM_GENERATIONS,) + code_shape(case, es)
    pairs = es.population_size // 2
    # One non-finite value in the first generation (at step 1 of the window for online),
    # versus both values of its pair set to 0 (a zero difference, not masked).
    index = (1, 2) if case.online else (2,)
    masked = jnp.zeros(shape, jnp.int32).at[(0, *index)].set(NAN)
    partner = index[:-1] + (index[-1] + pairs,)
    zeroed = jnp.zeros(shape, jnp.int32).at[(0, *index)].set(ZERO).at[(0, *partner)].set(ZERO)

    gradient_masked, metrics = _first_gradient(case, masked)
    gradient_zero, _ = _first_gradient(case, zeroed)
    valid = pairs * (es.truncation_length if case.online else 1)  # N: (pair, step) entries
    # float32 sums of 8-16 terms, then a ratio: 1e-5 relative is ~100 ulps of slack.
    np.testing.assert_allclose(
        gradient_masked, gradient_zero * valid / (valid - 1), rtol=1e-5, atol=1e-6
    )
    assert np.abs(gradient_zero).max() > 0  # the comparison is not vacuous
    masked_count = metrics["num_masked"] if case.online else metrics["num_masked_pairs"]
    assert int(masked_count[0]) == 1 and int(metrics["num_nonfinite"][0]) == 1


IDENTITY_OPENES = Case(
    "OpenES-identity",
    lambda s, n: OpenES(
        n, s, noise=evopes.NoiseTable(size=4096), fitness_shaping=evopes.shaping.identity
    ),
    False,
)


def test_openes_with_identity_shaping_masks_nonfinite_pairs():
    es = IDENTITY_OPENES.make(SOLUTION, 8)
    shape = (NUM_GENERATIONS,) + code_shape(IDENTITY_OPENES, es)
    masked = jnp.zeros(shape, jnp.int32).at[0, 2].set(NAN)
    zeroed = jnp.zeros(shape, jnp.int32).at[0, 2].set(ZERO).at[0, 6].set(ZERO)
    gradient_masked, metrics = _first_gradient(IDENTITY_OPENES, masked)
    gradient_zero, _ = _first_gradient(IDENTITY_OPENES, zeroed)
    np.testing.assert_allclose(gradient_masked, gradient_zero * 4 / 3, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", ["SNES", "xNES", "SimpleES", "PGPE", "ARS", "Open_ES"])
def test_an_update_that_overflows_leaves_the_state_as_it_was(name):
    # Finite fitness, but an optimizer that scales the step by inf: every
    # updated number is inf or NaN. The finiteness check over all updated
    # leaves (evopes.finite.all_finite) must keep the previous search state.
    import optax

    es = getattr(evopes, name)(8, jnp.zeros(3), optimizer=optax.scale(float("inf")))
    params = es.default_params
    state = es.init(jax.random.key(0), jnp.ones(3), params)
    population, asked = es.ask(jax.random.key(1), state, params)
    told, metrics = es.tell(
        jax.random.key(2), population, jnp.sum(population**2, axis=1), asked, params
    )
    assert bool(metrics["update_skipped"])
    _assert_same((told.mean, told.std, told.opt_state), (asked.mean, asked.std, asked.opt_state))
