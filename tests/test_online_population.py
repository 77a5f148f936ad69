"""What ``tell`` takes from the population handed back: exact partners, and no silent change.

* Partners of a pair accumulate the bit-identical block, so equal partner
  losses give an exactly zero gradient at any theta (the issue's measurement:
  d = 1000, std 0.01, theta ~ N(0, 0.1^2), equal losses 2.3, W = 1 gave
  |gradient| 4e-4 after 10 windows and 3.4e-3 after 200).
* A population that is not the one ``ask`` produced (clipped to bounds, from
  another ask) never changes the estimate: the noise is regenerated from the
  state's ids, and ``metrics["population_mismatch"]`` says so.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import evopes

D, PAIRS, STD = 1000, 4, 0.01
THETA = 0.1 * jax.random.normal(jax.random.key(3), (D,))


def zero_inner(key):
    del key
    return jnp.zeros(())


def make(cls):
    return cls(2 * PAIRS, jnp.zeros(D), 1, None, zero_inner, optax.sgd(1.0), False)


@jax.jit
def equal_loss_windows(es, key):
    """200 windows of equal partner losses 2.3; the estimate after 10 and after 200."""
    params = evopes.OnlineParams(std=STD)
    state = es.init(key, THETA, params)

    def window(state, key):
        population, state = es.ask(key, state, params)
        losses = jnp.full((1, es.population_size), 2.3)
        state, metrics = es.tell(
            key, population, losses, state, params, inner_state=state.inner_state
        )
        return state, jnp.linalg.norm(es.spec.ravel(metrics["gradient"]))

    state, norms = jax.lax.scan(window, state, jax.random.split(key, 200))
    return norms, state


@pytest.mark.parametrize("cls", [evopes.PES, evopes.NRES, evopes.TES])
def test_equal_partner_losses_cancel_exactly_with_the_population_handed_back(cls):
    norms, state = equal_loss_windows(make(cls), jax.random.key(0))
    np.testing.assert_array_equal(norms, 0.0)
    np.testing.assert_array_equal(state.mean, THETA)  # so sgd(1.0) never moved theta
    if state.accumulator is not None:  # partners hold bit-identical accumulators
        np.testing.assert_array_equal(state.accumulator[:PAIRS], state.accumulator[PAIRS:])
        assert np.all(np.abs(state.accumulator) > 0)


@functools.partial(jax.jit, static_argnums=3)
def estimates_from(es, key, losses, transform):
    """The estimate with ``transform(population)`` handed back, and with None."""
    params = evopes.OnlineParams(std=STD)
    state = es.init(key, THETA, params)
    population, state = es.ask(key, state, params)
    tell = lambda population: es.tell(
        key, population, losses, state, params, inner_state=state.inner_state
    )[1]
    handed, regenerated = tell(transform(population)), tell(None)
    return handed, regenerated, population


LOSSES = jax.random.normal(jax.random.key(9), (1, 2 * PAIRS))


@pytest.mark.parametrize("cls", [evopes.PES, evopes.NRES])
def test_the_population_of_ask_is_read_and_matches_the_regenerated_noise(cls):
    handed, regenerated, _ = estimates_from(make(cls), jax.random.key(1), LOSSES, lambda x: x)
    assert not bool(handed["population_mismatch"])
    # Reading x differs from regenerating z only by the rounding of x at |theta| ~ 0.1:
    # a relative error of about eps * |theta| / std = 1.2e-6 per coordinate.
    np.testing.assert_allclose(handed["gradient"], regenerated["gradient"], rtol=2e-4, atol=1e-3)


def clip(population):
    return jnp.clip(population, -0.1, 0.1)


def other_draw(population):
    """A population symmetric about theta but drawn with other noise."""
    e = STD * jax.random.normal(jax.random.key(77), (PAIRS, D))
    return jnp.concatenate([THETA + e, THETA - e])


def shift_one_member(population):
    return population.at[3, 500].add(0.5)


@pytest.mark.parametrize("transform", [clip, other_draw, shift_one_member])
@pytest.mark.parametrize("cls", [evopes.PES, evopes.NRES])
def test_a_foreign_population_never_changes_the_estimate(cls, transform):
    handed, regenerated, population = estimates_from(
        make(cls), jax.random.key(1), LOSSES, transform
    )
    assert not np.array_equal(transform(population), population)  # the transform bites
    assert bool(handed["population_mismatch"])
    np.testing.assert_array_equal(handed["gradient"], regenerated["gradient"])


def test_evaluate_the_clipped_copy_hand_back_the_unclipped_population():
    """The documented recipe: the estimate is the one of the asked population."""
    es = make(evopes.NRES)
    params = evopes.OnlineParams(std=STD)
    state = es.init(jax.random.key(2), THETA, params)
    population, state = es.ask(jax.random.key(4), state, params)
    losses = jnp.sum(clip(population) ** 2, axis=1)[None, :]  # evaluate the clipped copy
    _, metrics = es.tell(
        jax.random.key(5), population, losses, state, params, inner_state=state.inner_state
    )
    assert not bool(metrics["population_mismatch"])
    _, regenerated = es.tell(
        jax.random.key(5), None, losses, state, params, inner_state=state.inner_state
    )
    np.testing.assert_allclose(metrics["gradient"], regenerated["gradient"], rtol=2e-4, atol=1e-3)
