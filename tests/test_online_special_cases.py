"""Exact special cases of the online family, with the same seeds.

* GPES with K = W is PES (both draw fresh noise every window and accumulate);
* GPES with K >= T is NRES (a block lasts the whole episode, the accumulator stays 0);
* NRES with W = T and lock-step particles is FullES with fitness = the episode's
  mean loss (same noise ids from the same ask key, same estimator).

They run a real inner system (step-unlocked where the config allows) through
a whole training loop and compare every gradient and the final mean.
"""

import jax
import jax.flatten_util
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import evopes
from evopes.strategies.full_es import FullES

P, T, W = 4, 8, 2
THETA = {"a": jnp.array([0.3, -0.2]), "b": jnp.array(0.1)}
OPTIMIZER = optax.adam(0.05)


def init_inner(key):
    return {"s": jax.random.normal(key, (2,)), "count": jnp.zeros((), jnp.int32)}


def step_fn(inner, theta, key):
    """A small nonlinear system with shared per-step noise (common random numbers)."""
    s = (
        jnp.tanh(0.8 * inner["s"] + theta["a"] * theta["b"])
        + theta["a"]
        + 0.1 * jax.random.normal(key, (2,))
    )
    loss = jnp.sum((s - 1.0) ** 2) + theta["b"] ** 2
    return {"s": s, "count": inner["count"] + 1}, loss, False


@jax.jit
def train(es, key, params):
    """num_windows ask/unroll/tell rounds; returns the per-window gradients and the final mean."""

    def window(state, key):
        ask_key, unroll_key, tell_key = jax.random.split(key, 3)
        population, state = es.ask(ask_key, state, params)
        inner, losses, dones = evopes.unroll(step_fn, population, state.inner_state, unroll_key, W)
        state, metrics = es.tell(
            tell_key, population, losses, state, params, inner_state=inner, dones=dones
        )
        return state, jax.flatten_util.ravel_pytree(metrics["gradient"])[0]

    init_key, loop_key = jax.random.split(key)
    state = es.init(init_key, THETA, params)
    state, gradients = jax.lax.scan(window, state, jax.random.split(loop_key, 3 * T // W))
    return gradients, state.mean


def strategies(cls, **kwargs):
    return cls(2 * P, THETA, W, T, init_inner, OPTIMIZER, **kwargs)


def test_gpes_with_period_w_is_pes():
    params = evopes.OnlineParams(std=0.1)
    pes = train(strategies(evopes.PES), jax.random.key(0), params)
    gpes = train(strategies(evopes.GPES, noise_period=W), jax.random.key(0), params)
    # Equal up to float32 rounding: the two programs differ only in the redraw test
    # (constant for PES), and XLA fuses the population and the estimate differently
    # around it (last-bit differences, ~2e-7 relative). A schedule error (below:
    # GPES with K = 2W) changes the estimates at order one.
    np.testing.assert_allclose(gpes[0], pes[0], rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(gpes[1], pes[1], rtol=1e-6, atol=1e-6)
    assert np.all(np.abs(pes[0]).sum(axis=1) > 0)
    slower = train(strategies(evopes.GPES, noise_period=2 * W), jax.random.key(0), params)
    assert np.max(np.abs(slower[0] - pes[0])) > 0.1


def test_gpes_with_period_at_least_t_is_nres():
    """K = 2T: the age trigger never fires before the episode restarts (K = T would
    fire exactly at the episode start, where NRES redraws anyway)."""
    params = evopes.OnlineParams(std=0.1)
    nres = train(strategies(evopes.NRES), jax.random.key(1), params)
    gpes = train(strategies(evopes.GPES, noise_period=2 * T), jax.random.key(1), params)
    # Equal up to float32 rounding: GPES adds its (all-zero) accumulator term, which
    # XLA may fuse with the main sum in a different order.
    np.testing.assert_allclose(gpes[0], nres[0], rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(gpes[1], nres[1], rtol=1e-6, atol=1e-6)
    # and PES, which accumulates a fresh block every window, differs
    pes = train(strategies(evopes.PES), jax.random.key(1), params)
    assert not np.allclose(pes[0], nres[0])


@pytest.mark.parametrize(
    "noise", [evopes.GaussianNoise(), evopes.NoiseTable(size=1024)], ids=["gaussian", "table"]
)
def test_nres_with_one_window_per_episode_is_full_es(noise):
    """NRES(W = T, lock-step) and FullES over 3 episodes/generations with the same keys.

    FullES's fitness is each member's mean loss over the episode, from the same
    initial inner states (NRES restarts them at every horizon) and step keys;
    both use plain SGD on the mean.
    """
    std, optimizer = 0.2, optax.sgd(0.05)
    nres = evopes.NRES(2 * P, THETA, T, T, init_inner, optimizer, step_unlocked=False, noise=noise)
    full = FullES(2 * P, THETA, optimizer=optimizer, noise=noise)
    nres_params = evopes.OnlineParams(std=std)
    full_params = full.default_params.replace(std_init=std)

    @jax.jit
    def run(key):
        init_key, loop_key = jax.random.split(key)
        nres_state = nres.init(init_key, THETA, nres_params)
        full_state = full.init(init_key, THETA, full_params)

        def episode(states, key):
            nres_state, full_state = states
            ask_key, unroll_key, tell_key = jax.random.split(key, 3)
            nres_population, nres_state = nres.ask(ask_key, nres_state, nres_params)
            full_population, full_state = full.ask(ask_key, full_state, full_params)
            start = nres_state.inner_state  # a fresh episode start, shared within pairs
            inner, losses, dones = evopes.unroll(step_fn, nres_population, start, unroll_key, T)
            nres_state, nres_metrics = nres.tell(
                tell_key,
                nres_population,
                losses,
                nres_state,
                nres_params,
                inner_state=inner,
                dones=dones,
            )
            _, full_losses, _ = evopes.unroll(step_fn, full_population, start, unroll_key, T)
            full_state, full_metrics = full.tell(
                tell_key, full_population, full_losses.mean(axis=0), full_state, full_params
            )
            flat = lambda tree: jax.flatten_util.ravel_pytree(tree)[0]
            outputs = (
                nres_state.noise_ids,
                full_state.noise_ids,
                flat(nres_population),
                flat(full_population),
                flat(nres_metrics["gradient"]),
                flat(full_metrics["gradient"]),
                nres_state.mean,
                full_state.mean,
            )
            return (nres_state, full_state), outputs

        _, outputs = jax.lax.scan(episode, (nres_state, full_state), jax.random.split(loop_key, 3))
        return outputs

    nres_ids, full_ids, nres_pop, full_pop, nres_grad, full_grad, nres_mean, full_mean = run(
        jax.random.key(2)
    )
    np.testing.assert_array_equal(nres_ids[:, :P], full_ids)  # the same noise, for both partners
    np.testing.assert_array_equal(nres_ids[:, P:], full_ids)
    assert len({tuple(np.ravel(ids)) for ids in full_ids}) == 3  # fresh noise every episode
    # Equal up to float32 rounding (XLA may fuse mean + std * z differently in the two
    # programs; NRES sums l * z / std over steps where FullES uses (mean l) * z / std).
    np.testing.assert_allclose(nres_pop, full_pop, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(nres_grad, full_grad, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(nres_mean, full_mean, rtol=1e-5, atol=1e-6)
    assert np.all(np.abs(nres_grad).sum(axis=1) > 0)
