"""PES, GPES and NRES are unbiased for the full unroll; TES is not.

System: a small linear dynamical system with a quadratic loss,

    s_{t+1} = A s_t + B theta,    l_t = |s_{t+1} - target|^2,    L(theta) = 1/T sum_{t<T} l_t,

T = 8, W = 2. Every loss is a quadratic function of the parameters applied at
each step, so Gaussian smoothing only adds a constant: the smoothed objective
of every estimator (one noise per episode, per window, or per K steps) has the
same gradient as L itself. ``test_smoothing_is_exact_for_quadratic_losses``
checks that claim; the other tests compare the mean of many independent
estimates with ``jax.grad`` of the full unroll.

Tolerance: the estimates of different seeds are independent and identically
distributed, so by the central limit theorem each coordinate of their mean is
normal around the expected value with the empirical standard error
SE = std / sqrt(N). We accept |mean - grad L| < 5 SE in every coordinate: an
unbiased estimator fails that with probability below 1e-5 over the 2
coordinates (the seeds are fixed, so the test is deterministic), while a bias
larger than a few SE is caught. TES's bias must exceed 30 SE.
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import evopes

T, W, P, NUM_SEEDS = 8, 2, 4, 2048
A = jnp.array([[0.9, 0.3, 0.0], [-0.2, 0.8, 0.2], [0.1, 0.0, 0.7]])
B = jnp.array([[1.0, 0.0], [0.5, -1.0], [0.0, 1.0]])
TARGET = jnp.array([1.0, -0.5, 0.8])
S0 = jnp.array([0.5, 0.0, -0.5])
THETA = jnp.array([0.4, -0.3])
STD = 0.3


def init_inner(key):
    del key
    return S0


def step_fn(s, theta, key):
    del key
    s = A @ s + B @ theta
    return s, jnp.sum((s - TARGET) ** 2), False


def per_window_loss(window_thetas):
    """L with the parameters of window j set to window_thetas[j] (shape (T/W, d))."""
    thetas = jnp.repeat(window_thetas, W, axis=0)

    def step(s, theta):
        s, loss, _ = step_fn(s, theta, None)
        return s, loss

    _, losses = jax.lax.scan(step, S0, thetas)
    return jnp.mean(losses)


def full_loss(theta):
    return per_window_loss(jnp.broadcast_to(theta, (T // W, theta.shape[0])))


TRUE_GRADIENT = np.asarray(jax.grad(full_loss)(THETA))


def test_smoothing_is_exact_for_quadratic_losses():
    """For a quadratic F, (grad F(x + e) + grad F(x - e)) / 2 = grad F(x) exactly, for any e.

    Averaging over symmetric noise therefore leaves the gradient unchanged, for
    one block of noise per episode (NRES, FullES) as for independent blocks per
    window (PES) or per K steps (GPES): the smoothed gradient is grad L.
    """
    x = jnp.broadcast_to(THETA, (T // W, 2))
    for noise in (
        STD * jax.random.normal(jax.random.key(0), (T // W, 2)),  # a block per window
        jnp.broadcast_to(STD * jax.random.normal(jax.random.key(1), (2,)), (T // W, 2)),
    ):
        grad = jax.grad(per_window_loss)
        symmetric = 0.5 * (grad(x + noise) + grad(x - noise)).sum(axis=0)  # d/dtheta of all blocks
        np.testing.assert_allclose(symmetric, TRUE_GRADIENT, rtol=1e-5)
    # and the loss is not trivially linear: the smoothing shifts its value
    assert (
        abs(
            float(per_window_loss(x + noise) + per_window_loss(x - noise)) / 2
            - float(full_loss(THETA))
        )
        > 1e-3
    )


@jax.jit
def episode_estimates(es, keys):
    """One estimate per key: the mean of the gradients of T/W windows (after any burn-in)."""
    params = evopes.OnlineParams(std=STD)

    def one_seed(key):
        state = es.init(key, THETA, params)

        def window(state, key):
            ask_key, tell_key = jax.random.split(key)
            population, state = es.ask(ask_key, state, params)
            inner, losses, dones = evopes.unroll(step_fn, population, state.inner_state, key, W)
            gradient, state = es.estimate(
                tell_key, population, losses, state, params, inner_state=inner, dones=dones
            )
            return state, gradient

        num_windows = es.burn_in_windows + T // W
        _, gradients = jax.lax.scan(
            window, state, jax.random.split(jax.random.fold_in(key, 1), num_windows)
        )
        return gradients[es.burn_in_windows :].mean(axis=0)

    return jax.vmap(one_seed)(keys)


def make(cls, step_unlocked=False, **kwargs):
    return cls(2 * P, THETA, W, T, init_inner, optax.sgd(0.1), step_unlocked, **kwargs)


def standard_errors(cls, **kwargs):
    estimates = np.asarray(
        episode_estimates(make(cls, **kwargs), jax.random.split(jax.random.key(42), NUM_SEEDS))
    )
    standard_error = estimates.std(axis=0, ddof=1) / np.sqrt(NUM_SEEDS)
    return (estimates.mean(axis=0) - TRUE_GRADIENT) / standard_error


@pytest.mark.parametrize(
    "cls, kwargs",
    [
        (evopes.PES, {}),
        (evopes.GPES, {"noise_period": 2 * W}),
        (evopes.NRES, {}),
        (evopes.PES, {"step_unlocked": True}),  # after the burn-in, from random W-aligned offsets
    ],
    ids=["PES", "GPES", "NRES", "PES-unlocked"],
)
def test_mean_estimate_matches_the_full_unroll_gradient(cls, kwargs):
    assert np.all(np.abs(standard_errors(cls, **kwargs)) < 5.0)


def test_tes_is_biased():
    assert np.max(np.abs(standard_errors(evopes.TES))) > 30.0
