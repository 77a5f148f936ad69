"""PES, GPES and NRES stay unbiased when the environment ends episodes at a theta-dependent time.

For episodes ended by the environment the objective is the expected episode
return ``R`` (the sum of the episode's losses), smoothed with the schedule's
noise (REFERENCE section 1). Counting every particle-step, the long-run mean
of the estimates is ``grad E[R] / E[C]``, with ``C`` the particle-steps one
episode occupies (renewal-reward): a positive multiple of the gradient. So the
tests fit the multiple on one component and check the other one.

System 1 (the issue's): an auto-resetting system whose episode lasts 7 steps
when the particle's ``theta_0 > 0`` and 10 otherwise; per-step loss
``1 + 0.2 theta_1``. At ``theta = 0`` with ``sigma = 1`` and one noise per
episode: ``E[L] = 8.5``, ``dE[L]/dtheta_0 = -3 phi(0)``, and

    grad E[R] = (-3 phi(0), 0.2 * 8.5),   direction (-0.1408, 0.2) after / 8.5.

System 2 (ours): the episode ends at the first step whose uniform draw
``u_t`` (common to partners) falls below the hazard ``h(theta_0) = 0.2 +
0.1 tanh(theta_0)``: a geometric length with ``E[L] = 1 / h``; per-step loss
``theta_1^2 + theta_0``. With one noise ``e`` per episode,
``E[R | e] = (e_1^2 + e_0) / h(e_0)``; its gradient at ``theta = (0, 0.5)``
under ``sigma = 0.5`` is computed below by Gauss-Hermite quadrature.

PES smooths with independent noise per window, a different objective; at the
test point of system 1 its gradient has the same signs, which is what is
asserted for it. GPES with ``K = 5W`` holds one block for every episode of
system 1 (at most 10 steps), so its objective there is NRES's.

Tolerance: ``REPLICATES`` independent replicates of the long-run mean; each
component of the residual must lie within 4 standard errors (a false alarm
has probability below 1e-4 per component). Before the episode-start rule was
fixed, NRES's first component was off by 100-300 standard errors.
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from scipy.stats import norm

import evopes

PAIRS, WARMUP, WINDOWS, REPLICATES = 256, 40, 200, 24


def system_one_step(t, theta, key):
    del key
    length = jnp.where(theta[0] > 0, 7, 10)
    t = t + 1
    done = t >= length
    return jnp.where(done, 0, t), 1.0 + 0.2 * theta[1], done


def zero_time(key):
    del key
    return jnp.zeros((), jnp.int32)


SYSTEM_ONE_DIRECTION = np.array([-3 * norm.pdf(0.0), 0.2 * 8.5])


def system_two_step(t, theta, key):
    hazard = 0.2 + 0.1 * jnp.tanh(theta[0])
    done = jax.random.uniform(key) < hazard
    return jnp.where(done, 0, t + 1), theta[1] ** 2 + theta[0], done


SYSTEM_TWO_THETA, SYSTEM_TWO_STD = np.array([0.0, 0.5]), 0.5


def system_two_gradient() -> np.ndarray:
    """grad_theta E_e[(t1^2 + t0) / h(t0)] at SYSTEM_TWO_THETA, e ~ N(0, std^2 I), by quadrature."""
    nodes, weights = np.polynomial.hermite_e.hermegauss(80)
    weights = weights / weights.sum()
    t0 = SYSTEM_TWO_THETA[0] + SYSTEM_TWO_STD * nodes
    t1 = SYSTEM_TWO_THETA[1] + SYSTEM_TWO_STD * nodes
    h = 0.2 + 0.1 * np.tanh(t0)
    dh = 0.1 / np.cosh(t0) ** 2
    # d/dt0 of (t1^2 + t0)/h = 1/h - (t1^2 + t0) h'/h^2; d/dt1 = 2 t1 / h.
    mean_t1_sq = np.sum(weights * t1**2)
    d0 = np.sum(weights * (1 / h - (mean_t1_sq + t0) * dh / h**2))
    d1 = np.sum(weights * 2 * t1) * np.sum(weights / h)
    return np.array([d0, d1])


def make(cls, W, **kwargs):
    return cls(2 * PAIRS, jnp.zeros(2), W, None, zero_time, optax.sgd(0.0), False, **kwargs)


def long_run_means(es, step_fn, theta, std) -> np.ndarray:
    """(REPLICATES, 2): per replicate, the mean estimate over WINDOWS windows after WARMUP."""
    params = evopes.OnlineParams(std=std)

    @jax.jit
    def replicate(key):
        state = es.init(key, jnp.asarray(theta, jnp.float32), params)

        def window(state, key):
            ask_key, unroll_key, tell_key = jax.random.split(key, 3)
            population, state = es.ask(ask_key, state, params)
            inner, losses, dones = evopes.unroll(
                step_fn, population, state.inner_state, unroll_key, es.truncation_length
            )
            gradient, state = es.estimate(
                tell_key, population, losses, state, params, inner_state=inner, dones=dones
            )
            return state, gradient

        keys = jax.random.split(jax.random.fold_in(key, 1), WARMUP + WINDOWS)
        _, gradients = jax.lax.scan(window, state, keys)
        return gradients[WARMUP:].mean(axis=0)

    keys = jax.random.split(jax.random.key(7), REPLICATES)
    return np.stack([np.asarray(replicate(k)) for k in keys])


def residual_in_standard_errors(means: np.ndarray, direction: np.ndarray) -> np.ndarray:
    """Residual of the mean from the best multiple of ``direction``, in standard errors."""
    mean = means.mean(axis=0)
    standard_error = means.std(axis=0, ddof=1) / np.sqrt(len(means))
    multiple = mean[1] / direction[1]  # the well-determined component fixes the multiple
    assert multiple > 0, f"estimates point away from the gradient: {mean} vs {direction}"
    return (mean - multiple * direction) / standard_error


@pytest.mark.parametrize("W", [7, 10])
@pytest.mark.parametrize(
    "cls, kwargs",
    [(evopes.NRES, {}), (evopes.GPES, {"noise_period": 5})],  # K = 5 W
    ids=["NRES", "GPES-5W"],
)
def test_theta_dependent_episode_length_is_estimated_without_bias(cls, kwargs, W):
    kwargs = {name: windows * W for name, windows in kwargs.items()}
    means = long_run_means(make(cls, W, **kwargs), system_one_step, np.zeros(2), 1.0)
    residual = residual_in_standard_errors(means, SYSTEM_ONE_DIRECTION)
    assert np.all(np.abs(residual) < 4.0), residual


@pytest.mark.parametrize("W", [7, 10])
def test_pes_follows_the_sign_of_the_gradient_with_terminations(W):
    means = long_run_means(make(evopes.PES, W), system_one_step, np.zeros(2), 1.0)
    mean = means.mean(axis=0)
    standard_error = means.std(axis=0, ddof=1) / np.sqrt(len(means))
    assert mean[0] < -4 * standard_error[0] and mean[1] > 4 * standard_error[1], mean


def test_random_hazard_episode_length_is_estimated_without_bias():
    """NRES only: GPES and PES smooth each block of an episode separately, another objective."""
    means = long_run_means(make(evopes.NRES, 3), system_two_step, SYSTEM_TWO_THETA, SYSTEM_TWO_STD)
    residual = residual_in_standard_errors(means, system_two_gradient())
    assert np.all(np.abs(residual) < 4.0), residual


def test_steps_after_a_done_are_reported_as_discarded():
    """System 1 at theta = (+1, 0) with a tiny std: every episode lasts 7 steps.

    With W = 5 and lock-step particles (all start at step 0), episodes end at
    steps 7, 7 + 10 (the particle restarts at the next window), ...: in windows
    0-4 a particle's episode ends on the window's step index 1 (window 1, the
    7th step), then in window 3 (index 1 again: started at step 10, ended at
    step 16). Each such window discards the 3 steps after the done.
    """
    W = 5
    es = make(evopes.NRES, W)
    params = evopes.OnlineParams(std=1e-6)
    state = es.init(jax.random.key(0), jnp.array([1.0, 0.0]), params)
    discarded = []
    for key in jax.random.split(jax.random.key(1), 5):
        ask_key, unroll_key, tell_key = jax.random.split(key, 3)
        population, state = es.ask(ask_key, state, params)
        inner, losses, dones = evopes.unroll(
            system_one_step, population, state.inner_state, unroll_key, W
        )
        state, metrics = es.tell(
            tell_key, population, losses, state, params, inner_state=inner, dones=dones
        )
        discarded.append(int(metrics["num_discarded"]))
    assert discarded == [0, 3 * 2 * PAIRS, 0, 3 * 2 * PAIRS, 0]
