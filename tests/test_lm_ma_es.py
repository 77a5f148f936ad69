"""LM-MA-ES: Algorithm 1 against a NumPy transcription, convergence, contract details."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from evopes.checkpoint import restore_checkpoint, save_checkpoint
from evopes.strategies.lm_ma_es import LM_MA_ES, LMMAES

# -- three generations against Loshchilov, Glasmachers, Beyer (2019), Algorithm 1 ------------
DIMS = 6


def numpy_generation(z, fitness, mean, std, p_sigma, paths, t, params):
    """Lines 6-17 of Algorithm 1, written out in float64 from the paper."""
    n = z.shape[1]
    weights = np.asarray(params.weights, np.float64)
    mu_w = 1.0 / np.sum(weights**2)
    c_sigma, c_d, c_c = float(params.c_sigma), np.asarray(params.c_d), np.asarray(params.c_c)
    d = z.copy()
    for j in range(min(t, paths.shape[0])):  # line 8
        d = np.stack([(1 - c_d[j]) * row + c_d[j] * paths[j] * (paths[j] @ row) for row in d])
    order = np.argsort(fitness)
    mean = mean + std * sum(weights[i] * d[order[i]] for i in range(len(weights)))  # line 12
    z_w = sum(weights[i] * z[order[i]] for i in range(len(weights)))
    p_sigma = (1 - c_sigma) * p_sigma + math.sqrt(mu_w * c_sigma * (2 - c_sigma)) * z_w  # 13
    paths = np.stack([
        (1 - c_c[j]) * paths[j] + math.sqrt(mu_w * c_c[j] * (2 - c_c[j])) * z_w
        for j in range(paths.shape[0])
    ])  # line 15
    std = std * math.exp(c_sigma / 2 * (np.sum(p_sigma**2) / n - 1))  # line 17
    return d, mean, p_sigma, paths, std


def test_defaults_are_the_papers_line_1():
    es = LMMAES(None, jnp.zeros(40))
    params = es.default_params
    lam, n = 4 + math.floor(3 * math.log(40)), 40
    assert es.population_size == lam == 15 and es.num_paths == lam
    mu = lam // 2
    raw = np.log(mu + 0.5) - np.log(np.arange(1, mu + 1))
    np.testing.assert_allclose(params.weights[:mu], raw / raw.sum(), rtol=1e-6)
    np.testing.assert_array_equal(params.weights[mu:], 0.0)
    np.testing.assert_allclose(params.c_sigma, 2 * lam / n, rtol=1e-6)
    i = np.arange(1, es.num_paths + 1)
    np.testing.assert_allclose(params.c_d, 1 / (1.5 ** (i - 1) * n), rtol=1e-6)
    np.testing.assert_allclose(params.c_c, lam / (4.0 ** (i - 1) * n), rtol=1e-6)
    # n = 10, lambda = 10: 2 lambda / n = 2 and lambda / n = 1, capped at 1 (docstring)
    small = LMMAES(None, jnp.zeros(10)).default_params
    assert float(small.c_sigma) == 1.0 and float(small.c_c[0]) == 1.0


@pytest.mark.parametrize("hand_back", [False, True], ids=["no-population", "population"])
def test_three_generations_follow_algorithm_1(hand_back):
    # Without the population tell contracts z_w; with it, line 12 is read off x_i - y.
    es = LMMAES(None, jnp.zeros(DIMS), num_paths=3)
    # c_d raised from 1 / n so that the contractions of line 8 move d visibly
    params = es.default_params.replace(std_init=jnp.float32(0.7),
                                       c_d=jnp.array([0.4, 0.3, 0.2], jnp.float32))
    start = jnp.linspace(-1.0, 2.0, DIMS)
    state = jax.jit(es.init)(jax.random.key(0), start, params)
    ask, tell = jax.jit(es.ask), jax.jit(es.tell)
    mean, std = np.asarray(start, np.float64), 0.7
    p_sigma, paths = np.zeros(DIMS), np.zeros((3, DIMS))
    best_fitness, best_member = np.inf, None
    for t in range(3):
        ask_key = jax.random.key(10 + t)
        population, state = ask(ask_key, state, params)
        fitness = jnp.sum((population - 0.5) ** 2, axis=1)
        z = np.asarray(jax.random.normal(ask_key, (es.population_size, DIMS)), np.float64)
        d, mean, p_sigma, paths, std = numpy_generation(
            z, np.asarray(fitness), mean, std, p_sigma, paths, t, params
        )
        np.testing.assert_allclose(population, np.asarray(state.mean) + state.std * d,
                                   rtol=1e-5, atol=1e-5)
        handed = population if hand_back else None
        state, metrics = tell(jax.random.key(99), handed, fitness, state, params)
        np.testing.assert_allclose(state.mean, mean, rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(state.p_sigma, p_sigma, rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(state.paths, paths, rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(state.std, std, rtol=1e-5)
        # the best member so far, read off the population or rebuilt from the stored key
        best = int(jnp.argmin(fitness))
        if fitness[best] < best_fitness:
            best_fitness, best_member = float(fitness[best]), population[best]
        np.testing.assert_allclose(metrics["best_solution"], best_member, rtol=1e-6)


# -- convergence at d = 10 inside a jitted scan, vmapped over seeds ------------------------
def sphere(x):
    return jnp.sum(x**2, axis=-1)


def ellipsoid(x):
    n = x.shape[-1]
    return jnp.sum(1e6 ** (jnp.arange(n) / (n - 1)) * x**2, axis=-1)


def rosenbrock(x):
    return jnp.sum(100 * (x[..., 1:] - x[..., :-1] ** 2) ** 2 + (1 - x[..., :-1]) ** 2, axis=-1)


_ES = LMMAES(None, jnp.zeros(10))


def best_fitness_trace(function, start, generations, seeds):
    @jax.jit
    @jax.vmap
    def run(key):
        params = _ES.default_params
        state = _ES.init(key, jnp.full(10, start), params)

        def generation(state, key):
            population, state = _ES.ask(key, state, params)
            state, metrics = _ES.tell(key, None, function(population), state, params)
            return state, metrics["best_fitness"]

        return jax.lax.scan(generation, state, jax.random.split(key, generations))[1]

    return np.asarray(run(jax.random.split(jax.random.key(2024), seeds)))


def evaluations_to(trace, target=1e-8):
    reached = trace < target
    return np.where(reached.any(axis=-1), (reached.argmax(axis=-1) + 1) * 10, -1)


def test_converges_on_the_sphere():
    # f(x0) = 90; measured about 1,100-1,700 evaluations (CMA-ES needs about 1,500 here).
    evaluations = evaluations_to(best_fitness_trace(sphere, 3.0, 300, 3))
    assert np.all((evaluations > 0) & (evaluations < 2500)), evaluations


@pytest.mark.slow
def test_converges_on_the_ellipsoid():
    # Condition 1e6: m = 10 paths with c_c,1 = 1 learn the scaling slowly at n = 10
    # (measured 1.0e5-1.8e5 evaluations, CMA-ES about 6e3); budget 2.2e5.
    evaluations = evaluations_to(best_fitness_trace(ellipsoid, 3.0, 22_000, 2))
    assert np.all(evaluations > 0), evaluations


def test_converges_on_rosenbrock_or_stops_at_its_local_minimum():
    # 10-D Rosenbrock has a second local minimum, f ~ 3.99 near (-1, 1, ..., 1), which a
    # lambda = 10 ES reaches from some starts (2 of 8 seeds in a trial from x0 = 3). Converging
    # runs took 8,000-13,500 evaluations; budget 16,000.
    final = best_fitness_trace(rosenbrock, 3.0, 1600, 5)
    evaluations = evaluations_to(final)
    assert (evaluations > 0).sum() >= 3, evaluations
    stuck = final[evaluations < 0, -1]
    assert np.all((stuck > 3.5) & (stuck < 4.1)), stuck


# -- contract: non-finite fitness, validation, vmap over Params, pytrees -------------------
def test_nonfinite_fitness_ranks_worst_and_never_poisons_the_state():
    es = LMMAES(8, jnp.zeros(DIMS))
    params = es.default_params
    state = es.init(jax.random.key(0), jnp.ones(DIMS), params)
    population, state = es.ask(jax.random.key(1), state, params)
    fitness = jnp.sum(population**2, axis=1)
    corrupted = fitness.at[jnp.array([0, 3, 5])].set(jnp.array([jnp.nan, jnp.inf, -jnp.inf]))
    new_state, metrics = es.tell(jax.random.key(2), None, corrupted, state, params)
    assert all(bool(jnp.all(jnp.isfinite(leaf))) for leaf in
               (new_state.mean, new_state.p_sigma, new_state.paths, new_state.std))
    # the same update as if the three members had been the worst finite ones
    worst = corrupted.at[jnp.array([0, 3, 5])].set(jnp.array([1e30, 2e30, 3e30]))
    reference, _ = es.tell(jax.random.key(2), None, worst, state, params)
    np.testing.assert_allclose(new_state.mean, reference.mean, rtol=1e-6)
    assert int(metrics["num_nonfinite"]) == 3
    # nothing finite: the state is kept
    kept, metrics = es.tell(jax.random.key(2), None, jnp.full(8, jnp.nan), state, params)
    np.testing.assert_array_equal(kept.mean, state.mean)
    assert bool(metrics["update_skipped"])


def test_invalid_arguments_name_themselves():
    es = LMMAES(None, jnp.zeros(DIMS))
    params = es.default_params
    with pytest.raises(ValueError, match="params.c_sigma"):
        es.init(jax.random.key(0), jnp.zeros(DIMS), params.replace(c_sigma=2.0))
    with pytest.raises(ValueError, match="params.std_init"):
        es.init(jax.random.key(0), jnp.zeros(DIMS), params.replace(std_init=0.0))
    with pytest.raises(ValueError, match="params.c_c: expected shape"):
        es.init(jax.random.key(0), jnp.zeros(DIMS), params.replace(c_c=jnp.ones(2) * 0.5))
    with pytest.raises(ValueError, match="num_paths"):
        LMMAES(None, jnp.zeros(DIMS), num_paths=0)
    with pytest.raises(ValueError, match="solution"):
        LMMAES(8)
    state = es.init(jax.random.key(0), jnp.zeros(DIMS), params)
    with pytest.raises(ValueError, match="fitness: expected shape"):
        es.tell(jax.random.key(0), None, jnp.zeros(3), state, params)


def test_vmap_over_params_and_pytrees_in_and_out():
    template = {"w": jnp.zeros((2, 2)), "b": jnp.zeros(3)}
    es = LM_MA_ES(None, template)
    assert isinstance(es, LMMAES)
    assert es == LM_MA_ES(None, template) and hash(es) == hash(LM_MA_ES(None, template))
    stds = jnp.array([0.1, 1.0])
    params = jax.vmap(lambda s: es.default_params.replace(std_init=s))(stds)

    @jax.jit
    @jax.vmap
    def generation(params):
        state = es.init(jax.random.key(0), template, params)
        population, state = es.ask(jax.random.key(1), state, params)
        fitness = jnp.sum(population["w"] ** 2, axis=(1, 2)) + jnp.sum(population["b"] ** 2, 1)
        state, metrics = es.tell(jax.random.key(2), population, fitness, state, params)
        return population, es.get_mean(state), metrics["best_solution"]

    population, mean, best = generation(params)
    assert population["w"].shape == (2, es.population_size, 2, 2)
    assert mean["b"].shape == (2, 3) and best["w"].shape == (2, 2, 2)
    # members scale with sigma: the same z, ten times wider
    np.testing.assert_allclose(population["b"][1], 10 * population["b"][0], rtol=1e-5)


# -- checkpoints: a run saved mid-way resumes bit-identically ------------------------------
def test_checkpoint_round_trip_resumes_bit_identically(tmp_path):
    template = {"w": jnp.zeros((2, 2)), "b": jnp.zeros(3, jnp.bfloat16)}
    es = LMMAES(None, template)
    params = es.default_params
    start = {"w": jnp.full((2, 2), 0.5), "b": jnp.full(3, -0.5, jnp.bfloat16)}

    @jax.jit
    def generation(state, key):
        population, state = es.ask(key, state, params)
        fitness = jnp.sum(population["w"] ** 2, axis=(1, 2)) + jnp.sum(
            population["b"].astype(jnp.float32) ** 2, axis=1)
        return es.tell(key, population, fitness, state, params)[0]

    state = es.init(jax.random.key(0), start, params)
    for generation_index in range(3):
        state = generation(state, jax.random.key(generation_index))
    save_checkpoint(tmp_path, 3, state)
    restored = restore_checkpoint(tmp_path, state)
    for key_index in (3, 4):
        state = generation(state, jax.random.key(key_index))
        restored = generation(restored, jax.random.key(key_index))
    for got, want in zip(jax.tree.leaves(restored), jax.tree.leaves(state), strict=True):
        np.testing.assert_array_equal(got, want)
