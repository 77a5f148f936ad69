"""FullES: the unbiased antithetic estimator, its masking, and convergence."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import evopes
from evopes import FullES, NoiseTable

# A diagonal quadratic L(x) = 1/2 sum_k a_k (x_k - c_k)^2 with gradient a * (x - c).
DIMS = 10
CURVATURE = jnp.linspace(1.0, 3.0, DIMS)
OPTIMUM = jnp.linspace(-1.0, 1.0, DIMS)
THETA = jnp.linspace(0.5, -0.3, DIMS) ** 2 + 0.2  # where the gradient is estimated


def quadratic(x):
    return 0.5 * jnp.sum(CURVATURE * (x - OPTIMUM) ** 2, axis=-1)


def true_gradient(x):
    return CURVATURE * (x - OPTIMUM)


NUM_PAIRS, REPEATS, STD = 64, 256, 0.3
_ESTIMATOR = FullES(2 * NUM_PAIRS, jnp.zeros(DIMS))


@pytest.fixture(scope="module")
def estimates():
    """REPEATS independent estimates at THETA (one ask each), with their populations."""

    @jax.jit
    @jax.vmap
    def estimate(key):
        es, params = _ESTIMATOR, _ESTIMATOR.default_params.replace(std_init=STD)
        init_key, ask_key = jax.random.split(key)
        state = es.init(init_key, THETA, params)
        population, state = es.ask(ask_key, state, params)
        return es.estimate_gradient(quadratic(population), state, params), population, state

    return estimate(jax.random.split(jax.random.key(0), REPEATS))


def test_estimator_is_the_stein_formula_exactly(estimates):
    # For a quadratic, L(theta + e) - L(theta - e) = 2 e . grad L(theta) exactly, so pair i
    # contributes (2 sigma z_i . g) sigma z_i / (2 sigma^2) = z_i z_i^T g: the estimate
    # must equal (1/P) sum_i z_i z_i^T g, up to float rounding.
    gradient, population, state = jax.tree.map(lambda leaf: leaf[0], estimates)
    # the members are theta +- sigma z_i (halves layout), with z_i the documented draw
    z = (population[:NUM_PAIRS] - population[NUM_PAIRS:]) / (2 * STD)
    ask_key = jax.random.split(jax.random.split(jax.random.key(0), REPEATS)[0])[1]
    np.testing.assert_array_equal(
        state.noise_ids, _ESTIMATOR.noise.draw_ids(ask_key, NUM_PAIRS, DIMS)
    )
    expected = jnp.mean(z * (z @ true_gradient(THETA))[:, None], axis=0)
    # (the estimate regenerates z from the stored ids: equality also checks it is the same z)
    np.testing.assert_allclose(gradient, expected, rtol=1e-4, atol=1e-5)


def test_estimate_matches_analytic_gradient_within_its_variance(estimates):
    # Each pair contributes u_i = z_i z_i^T g, z ~ N(0, I): E[u] = g and, by Isserlis,
    # Cov[u] = |g|^2 I + g g^T. Over P pairs the estimate has covariance
    # (|g|^2 I + g g^T) / P, so E|g_hat - g|^2 = (d + 1) |g|^2 / P.
    gradients = estimates[0]
    g = true_gradient(THETA)
    g_norm2 = jnp.sum(g**2)

    # Unbiased: the average of R estimates has per-coordinate std
    # sqrt((|g|^2 + g_k^2) / (P R)); 4.5 std bounds every one of the 10 coordinates
    # (chance of a false failure about 7e-5 for a Gaussian average).
    coordinate_std = jnp.sqrt((g_norm2 + g**2) / (NUM_PAIRS * REPEATS))
    assert jnp.all(jnp.abs(gradients.mean(0) - g) < 4.5 * coordinate_std)

    # The variance is the closed form: S = |g_hat - g|^2 / ((d + 1)|g|^2 / P) has mean 1
    # and, for a Gaussian g_hat, Var S = 2 tr(Cov^2) / E^2 = 2 (d + 3) / (d + 1)^2 = 0.215
    # (d = 10), so its mean over 256 repeats has std 0.029: [0.85, 1.15] is 5 std.
    # A wrong normalisation (2P vs P, sigma vs sigma^2) moves it to 0.25 or 4.
    scaled_error = jnp.sum((gradients - g) ** 2, axis=1) / ((DIMS + 1) * g_norm2 / NUM_PAIRS)
    assert 0.85 < float(scaled_error.mean()) < 1.15


# A small FullES on a two-leaf pytree (7 numbers), plain SGD with learning rate 1 so that
# new mean = mean - gradient; a small noise table keeps it cheap.
_TREE_ES = FullES(
    8,
    {"a": jnp.zeros(3), "b": jnp.zeros((2, 2))},
    noise=NoiseTable(size=4096),
    optimizer=optax.sgd(1.0),
)
_TREE_MEAN = {"a": jnp.arange(3.0), "b": -jnp.ones((2, 2))}
_init_and_ask = jax.jit(
    lambda es, init_key, ask_key, mean, params: es.ask(
        ask_key, es.init(init_key, mean, params), params
    )
)
_tell = jax.jit(
    lambda es, fitness, state, params: es.tell(jax.random.key(0), None, fitness, state, params)
)


def test_nonfinite_pairs_are_masked_and_counted():
    es = _TREE_ES
    params = es.default_params.replace(std_init=0.5)
    population, state = _init_and_ask(es, jax.random.key(0), jax.random.key(1), _TREE_MEAN, params)
    flat = es.spec.ravel_population(population, 8)
    losses = jnp.sum(flat**2, axis=1)
    z = es.noise.sample(state.noise_state, state.noise_ids, 7)
    # pair 1 loses its + member (NaN), pair 2 its - member (inf): both are dropped and the
    # estimate is normalised by the 2 remaining pairs.
    broken = losses.at[1].set(jnp.nan).at[4 + 2].set(jnp.inf)
    difference = losses[:4] - losses[4:]
    expected = (difference[0] * z[0] + difference[3] * z[3]) / (2 * 2 * 0.5)
    new_state, metrics = _tell(es, broken, state, params)
    np.testing.assert_allclose(es.spec.ravel(metrics["gradient"]), expected, rtol=1e-5)
    np.testing.assert_allclose(new_state.mean, state.mean - expected, rtol=1e-5)
    assert int(metrics["num_masked_pairs"]) == 2
    assert int(metrics["num_nonfinite"]) == 2

    # every pair broken: a zero gradient (never 0/0) and an unchanged mean
    new_state, metrics = _tell(es, losses.at[:4].set(jnp.nan), state, params)
    assert int(metrics["num_masked_pairs"]) == 4
    np.testing.assert_array_equal(es.spec.ravel(metrics["gradient"]), jnp.zeros(7))
    np.testing.assert_array_equal(new_state.mean, state.mean)
    assert all(bool(jnp.all(jnp.isfinite(leaf))) for leaf in jax.tree.leaves(new_state))


def test_noise_of_pair_i_is_the_documented_draw():
    # The contract the online strategies rely on (NRES with W = T lock-step is FullES):
    # member i = mean + std * noise.sample(noise.init(init_key), noise.draw_ids(ask_key, P))[i].
    es = _TREE_ES
    params = es.default_params.replace(std_init=0.2)
    init_key, ask_key = jax.random.key(5), jax.random.key(6)
    population, _ = _init_and_ask(es, init_key, ask_key, _TREE_MEAN, params)
    noise_state = es.noise.init(init_key, 7)
    z = es.noise.sample(noise_state, es.noise.draw_ids(ask_key, 4, 7), 7)
    flat = es.spec.ravel_population(population, 8)
    flat_mean = es.spec.ravel(_TREE_MEAN)
    np.testing.assert_allclose(flat[:4], flat_mean + 0.2 * z, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(flat[4:], flat_mean - 0.2 * z, rtol=1e-6, atol=1e-7)
    # Gaussian noise (the default): the same contract, checked in the estimator fixture


# -- the whole loop: jit(vmap(scan)) over seeds and Params ------------------------------
QUAD_DIMS = 100
QUAD_CURVATURE = jnp.linspace(1.0, 4.0, QUAD_DIMS)
GENERATIONS = 400


def _quad100(x):
    return 0.5 * jnp.sum(QUAD_CURVATURE * (x - 1.0) ** 2, axis=-1)


_QUAD_ES = FullES(64, jnp.zeros(QUAD_DIMS), optimizer=optax.sgd(0.05))


@jax.jit
@jax.vmap
def _train(key, params):
    """GENERATIONS of ask/tell in lax.scan from x = 0; returns the final state and means."""
    es = _QUAD_ES
    init_key, run_key = jax.random.split(key)
    state = es.init(init_key, jnp.zeros(QUAD_DIMS), params)

    def generation(state, key):
        ask_key, tell_key = jax.random.split(key)
        population, state = es.ask(ask_key, state, params)
        state, metrics = es.tell(tell_key, None, _quad100(population), state, params)
        return state, state.mean

    return jax.lax.scan(generation, state, jax.random.split(run_key, GENERATIONS))


@pytest.fixture(scope="module")
def trained():
    params = _QUAD_ES.default_params
    batch = jax.tree.map(lambda leaf: jnp.full((4,), leaf, jnp.float32), params)
    batch = batch.replace(
        std_init=jnp.array([0.1, 0.3, 0.1, 0.3]), weight_decay=jnp.array([0.0, 0.0, 1.0, 1.0])
    )
    keys = jax.random.split(jax.random.key(42), 4)
    return keys, batch, _train(keys, batch)


def test_converges_on_a_100d_quadratic_under_vmap_over_seeds_and_params(trained):
    _, batch, (state, means) = trained
    # no weight decay: from L(0) = 125 to the optimum x = 1 (the smoothed loss of a
    # quadratic has the same minimiser), whatever sigma
    for run in (0, 1):
        assert float(_quad100(state.mean[run])) < 1e-6
    # weight decay lambda = 1 moves the fixed point to a x* = a c / (a + lambda), the
    # minimiser of L + lambda/2 |x|^2; SGD noise around it averages out over the last
    # 200 iterates (the distance between the two fixed points is 0.2 to 0.5 per coordinate).
    shrunk = QUAD_CURVATURE / (QUAD_CURVATURE + 1.0)
    for run in (2, 3):
        average = means[run, GENERATIONS // 2 :].mean(0)
        assert float(jnp.mean(jnp.abs(average - shrunk))) < 0.03
        assert bool(jnp.all(jnp.isfinite(state.mean[run])))
    np.testing.assert_allclose(state.std, batch.std_init)


def test_vmapped_runs_are_independent(trained):
    # Reversing the batch reverses the results: no run leaks into another (same compiled code).
    keys, batch, (state, _) = trained
    reverse = lambda tree: jax.tree.map(lambda leaf: leaf[::-1], tree)
    reversed_state, _ = _train(reverse(keys), reverse(batch))
    np.testing.assert_allclose(reversed_state.mean[::-1], state.mean, rtol=1e-5, atol=1e-6)


def test_validation():
    with pytest.raises(ValueError, match="even"):
        FullES(7, jnp.zeros(3))
    es = FullES(4, jnp.zeros(3))
    with pytest.raises(ValueError, match="std_init"):
        es.init(jax.random.key(0), jnp.zeros(3), es.default_params.replace(std_init=0.0))
    state = es.init(jax.random.key(0), jnp.zeros(3), es.default_params)
    with pytest.raises(ValueError, match=r"expected shape \(4,\), got \(5,\)"):
        es.tell(jax.random.key(0), None, jnp.zeros(5), state, es.default_params)


def test_exported_names():
    assert evopes.FullES is FullES
    assert evopes.strategies.FullES is FullES
