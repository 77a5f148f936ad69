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


#: Above evopes.online.engine.REGENERATE_UP_TO_DIMS tell reads the block off the
#: population; at or below it tell regenerates the noise and only checks the population.
#: Both paths carry the same promises, so the tests run both.
DIMS = [D, 8]


def make(cls, dims=D):
    return cls(2 * PAIRS, jnp.zeros(dims), 1, None, zero_inner, optax.sgd(1.0), False)


@jax.jit
def equal_loss_windows(es, key):
    """200 windows of equal partner losses 2.3; the estimate after 10 and after 200."""
    params = evopes.OnlineParams(std=STD)
    state = es.init(key, THETA[: es.num_dims], params)

    def window(state, key):
        population, state = es.ask(key, state, params)
        losses = jnp.full((1, es.population_size), 2.3)
        state, metrics = es.tell(
            key, population, losses, state, params, inner_state=state.inner_state
        )
        return state, jnp.linalg.norm(es.spec.ravel(metrics["gradient"]))

    state, norms = jax.lax.scan(window, state, jax.random.split(key, 200))
    return norms, state


@pytest.mark.parametrize("dims", DIMS)
@pytest.mark.parametrize("cls", [evopes.PES, evopes.NRES, evopes.TES])
def test_equal_partner_losses_cancel_exactly_with_the_population_handed_back(cls, dims):
    norms, state = equal_loss_windows(make(cls, dims), jax.random.key(0))
    np.testing.assert_array_equal(norms, 0.0)
    np.testing.assert_array_equal(state.mean, THETA[:dims])  # so sgd(1.0) never moved theta
    if state.accumulator is not None:  # partners hold bit-identical accumulators
        np.testing.assert_array_equal(state.accumulator[:PAIRS], state.accumulator[PAIRS:])
        assert np.all(np.abs(state.accumulator) > 0)


@functools.partial(jax.jit, static_argnums=3)
def estimates_from(es, key, losses, transform):
    """The estimate with ``transform(population)`` handed back, and with None."""
    params = evopes.OnlineParams(std=STD)
    state = es.init(key, THETA[: es.num_dims], params)
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
    theta = THETA[: population.shape[1]]
    e = STD * jax.random.normal(jax.random.key(77), (PAIRS, population.shape[1]))
    return jnp.concatenate([theta + e, theta - e])


def shift_one_member(population):
    return population.at[3, -1].add(0.5)


def clip_last_coordinate_about_theta(population):
    """Bounds symmetric about theta on one far coordinate: every pair stays centred."""
    theta = THETA[population.shape[1] - 1]
    return population.at[:, -1].set(jnp.clip(population[:, -1], theta - STD / 4, theta + STD / 4))


@pytest.mark.parametrize("dims", DIMS)
@pytest.mark.parametrize(
    "transform", [clip, other_draw, shift_one_member, clip_last_coordinate_about_theta]
)
@pytest.mark.parametrize("cls", [evopes.PES, evopes.NRES])
def test_a_foreign_population_never_changes_the_estimate(cls, transform, dims):
    handed, regenerated, population = estimates_from(
        make(cls, dims), jax.random.key(1), LOSSES, transform
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


# -- counters that never wrap -----------------------------------------------------------


def test_step_counts_are_exact_past_two_to_the_32():
    """4096 particles x W = 100 wrapped int32 after ~5,200 windows; the count carries."""
    from evopes.online.count import Count

    es = evopes.NRES(4096, jnp.zeros(2), 100, None, zero_inner, optax.sgd(0.1), False)
    params = es.default_params
    state = es.init(jax.random.key(0), jnp.zeros(2), params)
    windows = 2**32 - 1
    state = state.replace(generation_counter=Count(jnp.uint32(0), jnp.uint32(windows)))
    state = state.replace(time=jnp.full_like(state.time, 2**31 - 50))  # near int32's wrap
    population, state = es.ask(jax.random.key(1), state, params)
    state, metrics = es.tell(
        jax.random.key(2),
        population,
        jnp.ones((100, 4096)),
        state,
        params,
        inner_state=state.inner_state,
    )
    assert int(state.generation_counter) == windows + 1 == 2**32
    assert es.total_steps(state) == 2**32 * 4096 * 100
    assert es.sequential_steps(state) == 2**32 * 100
    np.testing.assert_allclose(float(metrics["total_steps"]), 2.0**32 * 4096 * 100, rtol=1e-6)
    assert np.all(np.asarray(state.time) > 0)  # saturated, not wrapped to negative
    assert not bool(metrics["burn_in"])


# -- hyperparameters and arguments ------------------------------------------------------


@pytest.mark.parametrize("std", [0.0, -1.0, np.nan, np.inf, 1e-38, 1e30])
def test_invalid_std_raises_at_init_naming_the_field(std):
    es = make(evopes.PES)
    with pytest.raises(ValueError, match=r"params\.std: expected a finite value in \[1e-18"):
        es.init(jax.random.key(0), THETA, evopes.OnlineParams(std=std))


@functools.partial(jax.jit, static_argnums=0)
def ten_windows(es, std):
    """Ten windows with a traced std; returns the final state and every window's metrics."""
    params = evopes.OnlineParams(std=std)
    state = es.init(jax.random.key(0), THETA, params)

    def window(state, key):
        population, state = es.ask(key, state, params)
        losses = jnp.sum(population**2, axis=1)[None, :]
        return es.tell(key, population, losses, state, params, inner_state=state.inner_state)

    return jax.lax.scan(window, state, jax.random.split(jax.random.key(1), 10))


@pytest.mark.parametrize("cls", [evopes.PES, evopes.NRES])
@pytest.mark.parametrize("std", [0.0, np.nan, 1e-38, -0.5])
def test_invalid_std_under_jit_never_enters_the_state_and_stops_the_run(cls, std):
    state, metrics = ten_windows(make(cls), jnp.float32(std))
    for leaf in jax.tree_util.tree_leaves(state):
        if jnp.issubdtype(leaf.dtype, jnp.inexact):
            assert np.all(np.isfinite(leaf))
    np.testing.assert_array_equal(state.mean, THETA)  # no update was applied
    assert np.all(metrics["terminate"]) and np.all(metrics["invalid_params"]["std"])
    _, valid = ten_windows(make(cls), jnp.float32(0.01))
    assert not np.any(valid["terminate"])


def test_bad_arguments_name_the_argument():
    es = make(evopes.NRES)
    params = es.default_params
    state = es.init(jax.random.key(0), THETA, params)
    population, state = es.ask(jax.random.key(1), state, params)
    losses = jnp.ones((1, 2 * PAIRS))
    tell = lambda **kw: es.tell(
        **{
            "key": jax.random.key(2),
            "population": population,
            "losses": losses,
            "state": state,
            "params": params,
            "inner_state": state.inner_state,
            **kw,
        }
    )
    with pytest.raises(ValueError, match="^key: expected a PRNG key"):
        tell(key=0)
    with pytest.raises(ValueError, match="^losses: expected an array"):
        tell(losses={"a": losses})
    with pytest.raises(ValueError, match="^params: expected"):
        tell(params=evopes.CMAES(4, jnp.zeros(2)).default_params)
    other = evopes.NRES(4, jnp.zeros(3), 1, None, zero_inner)
    with pytest.raises(ValueError, match="^state: expected a state of this strategy"):
        tell(state=other.init(jax.random.key(0), jnp.zeros(3), other.default_params))
    with pytest.raises(ValueError, match="^state: expected the OnlineState"):
        tell(
            state=evopes.CMAES(4, jnp.zeros(2)).init(
                jax.random.key(0), jnp.zeros(2), evopes.CMAES(4, jnp.zeros(2)).default_params
            )
        )


def test_step_function_that_needs_an_inner_state_names_init_inner():
    es = evopes.NRES(4, jnp.zeros(2), 2, 4)  # a horizon, no init_inner
    params = es.default_params
    state = es.init(jax.random.key(0), jnp.zeros(2), params)
    population, state = es.ask(jax.random.key(1), state, params)
    step = lambda s, theta, key: (s * 2.0, jnp.sum(theta), None)
    with pytest.raises(ValueError, match="init_inner"):
        evopes.unroll(step, population, state.inner_state, jax.random.key(2), 2)


def test_dones_without_init_inner_for_a_stateful_system_is_refused():
    es = evopes.NRES(4, jnp.zeros(2), 2, None)
    params = es.default_params
    state = es.init(jax.random.key(0), jnp.zeros(2), params)
    state = state.replace(inner_state=jnp.zeros(4))  # a user-held inner state
    population, state = es.ask(jax.random.key(1), state, params)
    with pytest.raises(ValueError, match="^dones: .*init_inner"):
        es.tell(
            jax.random.key(2),
            population,
            jnp.ones((2, 4)),
            state,
            params,
            inner_state=jnp.zeros(4),
            dones=jnp.zeros((2, 4), bool),
        )
