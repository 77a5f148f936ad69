"""ARS: the step of Algorithm 2 against a NumPy transcription, convergence, V2, contract details."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from strategy_zoo import stds_per_generation

from evopes import shaping
from evopes.checkpoint import restore_checkpoint, save_checkpoint
from evopes.envs.normalize import ObservationNormalizer
from evopes.strategies.ars import ARS

DIMS = 5


# -- one iteration against Mania et al. (2018), Algorithm 2 ------------------------------------
def numpy_ars_step(population, fitness, theta, nu, alpha, num_top, scale_by_reward_std=True):
    """Lines 4-7 in rewards r = -fitness: keep the b directions with the largest max(r+, r-),
    theta + alpha / (b sigma_R) sum (r+ - r-) delta, sigma_R = std of the 2b rewards used."""
    num_directions = len(fitness) // 2
    rewards = -np.asarray(fitness, np.float64)
    r_plus, r_minus = rewards[:num_directions], rewards[num_directions:]
    deltas = (population[:num_directions] - theta) / nu
    order = sorted(range(num_directions), key=lambda k: -max(r_plus[k], r_minus[k]))
    top = order[:num_top]
    used = np.concatenate([r_plus[top], r_minus[top]])
    sigma_r = np.std(used) if scale_by_reward_std else 1.0
    denominator = num_top * sigma_r if scale_by_reward_std else num_directions
    step = sum((r_plus[k] - r_minus[k]) * deltas[k] for k in top)
    return theta + alpha / denominator * step


@pytest.mark.parametrize(
    "num_top, scale", [(2, True), (6, True), (6, False)], ids=["V1-t", "V1", "basic-random-search"]
)
def test_one_iteration_is_the_papers_step(num_top, scale):
    es = ARS(12, jnp.zeros(DIMS), num_top_directions=num_top, optimizer=optax.sgd(0.05),
             scale_by_reward_std=scale)
    params = es.default_params.replace(std_init=0.2)
    theta = np.linspace(-1.0, 1.0, DIMS)
    state = es.init(jax.random.key(0), jnp.asarray(theta, jnp.float32), params)
    for iteration in range(2):
        population, state = jax.jit(es.ask)(jax.random.key(iteration + 1), state, params)
        fitness = jnp.sum((population - 0.3) ** 2, axis=1) + jnp.sin(3 * population[:, 0])
        want = numpy_ars_step(np.asarray(population, np.float64), np.asarray(fitness), theta,
                              0.2, 0.05, num_top, scale)
        state, metrics = jax.jit(es.tell)(jax.random.key(9), population, fitness, state, params)
        np.testing.assert_allclose(state.mean, want, rtol=1e-5, atol=1e-6)
        assert int(metrics["num_kept_directions"]) == num_top
        theta = want


def test_directions_are_kept_by_their_best_side():
    # Fitness built by hand: direction k has sides (plus_k, minus_k); keep 2 of 4.
    es = ARS(8, jnp.zeros(DIMS), num_top_directions=2, optimizer=optax.sgd(1.0))
    params = es.default_params.replace(std_init=1.0)
    state = es.init(jax.random.key(0), jnp.zeros(DIMS), params)
    population, state = es.ask(jax.random.key(1), state, params)
    plus, minus = jnp.array([5.0, 0.0, 9.0, 3.0]), jnp.array([4.0, 8.0, 1.0, 3.5])
    _, metrics = es.tell(jax.random.key(2), population, jnp.concatenate([plus, minus]), state,
                         params)
    # best sides: 4, 0, 1, 3 -> directions 1 and 2 are kept; rewards used 0, 9, 8, 1
    delta = population[:4]
    sigma_r = np.std([0.0, 9.0, 8.0, 1.0])
    want = ((0.0 - 8.0) * delta[1] + (9.0 - 1.0) * delta[2]) / (2 * sigma_r)
    np.testing.assert_allclose(metrics["gradient"], want, rtol=1e-5)
    np.testing.assert_allclose(metrics["reward_std"], sigma_r, rtol=1e-6)


# -- convergence at d = 10 inside a jitted scan ------------------------------------------------
def sphere(x):
    return jnp.sum(x**2, axis=-1)


def ellipsoid(x):
    n = x.shape[-1]
    return jnp.sum(1e6 ** (jnp.arange(n) / (n - 1)) * x**2, axis=-1)


def rosenbrock(x):
    return jnp.sum(100 * (x[..., 1:] - x[..., :-1] ** 2) ** 2 + (1 - x[..., :-1]) ** 2, axis=-1)


# The sigma_R-normalised step has a length of about alpha whatever the scale of f, so a
# fixed alpha and nu stall at |x| ~ alpha; step and noise decay together (factor 0.99).
_DECAYING = ARS(32, jnp.zeros(10), optimizer=optax.sgd(optax.exponential_decay(0.3, 1, 0.99)))
_DECAYING_PARAMS = _DECAYING.default_params.replace(std_init=0.3, std_decay=0.99)


def best_fitness_trace(es, params, function, generations, seeds=3):
    @jax.jit
    @jax.vmap
    def run(key):
        state = es.init(key, jnp.full(10, 3.0), params)

        def generation(state, key):
            population, state = es.ask(key, state, params)
            state, metrics = es.tell(key, population, function(population), state, params)
            return state, metrics["best_fitness"]

        return jax.lax.scan(generation, state, jax.random.split(key, generations))[1]

    return np.asarray(run(jax.random.split(jax.random.key(3), seeds)))


def test_converges_on_the_sphere():
    # Measured about 26,700 evaluations to 1e-8 (evosax's ARS, same settings: 26,900).
    final = best_fitness_trace(_DECAYING, _DECAYING_PARAMS, sphere, 1000)[:, -1]
    assert np.all(final < 1e-8), final


def test_ellipsoid_and_rosenbrock_reach_what_a_first_order_method_reaches():
    # Isotropic directions and a sigma_R-normalised step: ARS follows the gradient, so on the
    # ellipsoid (condition 1e6) the stiff axes set the step and the flat axes barely move, and
    # on Rosenbrock it crawls along the valley. After 1,000 generations from f0 = 9.0e5 (resp.
    # 2.1e4), runs measured f = 200-800 on the ellipsoid and 0.005-1 on Rosenbrock; the bands
    # assert the run made progress of five (resp. four) orders of magnitude.
    final = best_fitness_trace(_DECAYING, _DECAYING_PARAMS, ellipsoid, 1000)[:, -1]
    assert np.all(final < 2e3), final
    final = best_fitness_trace(_DECAYING, _DECAYING_PARAMS, rosenbrock, 1000)[:, -1]
    assert np.all(final < 2.0), final


# -- V2: the observation normaliser lives in the policy (module docstring) -------------------
OBS_SCALE = jnp.array([1.0, 300.0, 0.01])
OBS_SHIFT = jnp.array([0.0, 500.0, 0.0])
TARGET = jnp.array([1.0, -2.0, 0.5])


def episode_cost(weights, observations, normalizer, stats):
    """A one-step "environment": act on normalised observations and pay the squared error to
    the action of a fixed linear policy of the *standardised* observations."""
    actions = normalizer.normalize(stats, observations) @ weights
    standard = (observations - OBS_SHIFT) / OBS_SCALE
    return jnp.mean((actions - standard @ TARGET) ** 2)


def train_v2(use_normalizer, generations=300):
    es = ARS(16, jnp.zeros(3), num_top_directions=4, optimizer=optax.sgd(0.05))
    params = es.default_params.replace(std_init=0.05)
    normalizer = ObservationNormalizer(min_std=1e-8, clip=None)

    @jax.jit
    def run(key):
        state = es.init(key, jnp.zeros(3), params)
        stats = normalizer.init(jnp.zeros(3))

        def generation(carry, key):
            state, stats = carry
            ask_key, data_key = jax.random.split(key)
            population, state = es.ask(ask_key, state, params)
            observations = OBS_SHIFT + OBS_SCALE * jax.random.normal(data_key, (32, 3))
            frozen = stats if use_normalizer else normalizer.init(jnp.zeros(3))
            costs = jax.vmap(lambda w: episode_cost(w, observations, normalizer, frozen))(
                population)
            state, metrics = es.tell(key, population, costs, state, params)
            # all 2N rollouts saw these states: fold them in after the iteration (line 8)
            moments = jax.vmap(lambda o: normalizer.moments(stats, o))(observations)
            stats = normalizer.update(stats, jax.tree.map(lambda x: x.sum(0), moments))
            return (state, stats), metrics["mean_fitness"]

        return jax.lax.scan(generation, (state, stats), jax.random.split(key, generations))[1]

    return np.asarray(run(jax.random.key(0)))


def test_v2_with_the_policys_normaliser_solves_a_badly_scaled_task_that_v1_cannot():
    v2, v1 = train_v2(True), train_v2(False)
    # V2 learns TARGET in normalised coordinates (cost from 348 to about 0.01); V1 faces
    # observations of scale 300 and 0.01: any step on the large one overshoots.
    assert v2[-20:].mean() < 0.05 * v2[0], (v2[0], v2[-20:].mean())
    assert v1[-20:].mean() > 10 * v2[-20:].mean(), (v1[-20:].mean(), v2[-20:].mean())


# -- contract: non-finite fitness, validation, vmap over Params, pytrees -------------------
def test_nonfinite_fitness_never_selects_its_direction_nor_poisons_the_state():
    es = ARS(8, jnp.zeros(DIMS), num_top_directions=3, optimizer=optax.sgd(0.1))
    params = es.default_params.replace(std_init=0.5)
    state = es.init(jax.random.key(0), jnp.ones(DIMS), params)
    population, state = es.ask(jax.random.key(1), state, params)
    fitness = jnp.sum(population**2, 1)
    # direction 0 has a NaN side but the best other side; direction 3 a -inf side
    corrupted = fitness.at[0].set(jnp.nan).at[4].set(-1.0).at[7].set(-jnp.inf)
    new_state, metrics = es.tell(jax.random.key(2), population, corrupted, state, params)
    assert bool(jnp.all(jnp.isfinite(new_state.mean))) and not bool(metrics["update_skipped"])
    assert int(metrics["num_kept_directions"]) == 2  # only directions 1 and 2 are finite
    want = numpy_ars_step(np.asarray(population, np.float64)[[1, 2, 5, 6]],
                          np.asarray(fitness)[[1, 2, 5, 6]], np.ones(DIMS), 0.5, 0.1, 2)
    np.testing.assert_allclose(new_state.mean, want, rtol=1e-5)
    kept, metrics = es.tell(jax.random.key(2), population, jnp.full(8, jnp.nan), state, params)
    np.testing.assert_array_equal(kept.mean, state.mean)


def test_invalid_arguments_name_themselves():
    with pytest.raises(ValueError, match="population_size"):
        ARS(9, jnp.zeros(DIMS))
    with pytest.raises(ValueError, match="num_top_directions"):
        ARS(8, jnp.zeros(DIMS), num_top_directions=5)
    # None is the default (the identity, or evosax's fitness_shaping_fn when given).
    assert ARS(8, jnp.zeros(DIMS), fitness_shaping=None).fitness_shaping is shaping.identity
    with pytest.raises(ValueError, match="fitness_shaping"):
        ARS(8, jnp.zeros(DIMS), fitness_shaping=3)
    es = ARS(8, jnp.zeros(DIMS))
    for field, value in (("std_init", -0.1), ("std_decay", 0.0), ("std_min", -1.0)):
        with pytest.raises(ValueError, match=f"params.{field}"):
            es.init(jax.random.key(0), jnp.zeros(DIMS), es.default_params.replace(**{field: value}))


def test_vmap_over_params_pytrees_and_rank_shaping():
    template = {"w": jnp.zeros((2, 2)), "b": jnp.zeros(1)}
    es = ARS(6, template, fitness_shaping=shaping.centered_rank)
    assert es == ARS(6, template, fitness_shaping=shaping.centered_rank)
    assert hash(es) == hash(ARS(6, template, fitness_shaping=shaping.centered_rank))
    params = jax.vmap(lambda s: es.default_params.replace(std_init=s))(jnp.array([0.1, 1.0]))

    @jax.jit
    @jax.vmap
    def generation(params):
        state = es.init(jax.random.key(0), template, params)
        population, state = es.ask(jax.random.key(1), state, params)
        fitness = jnp.sum(population["w"] ** 2, axis=(1, 2)) + jnp.sum(population["b"] ** 2, 1)
        state, metrics = es.tell(jax.random.key(2), population, fitness, state, params)
        return population, es.get_mean(state), metrics

    population, mean, metrics = generation(params)
    np.testing.assert_allclose(population["w"][1], 10 * population["w"][0], rtol=1e-5)
    assert metrics["gradient"]["w"].shape == (2, 2, 2)
    assert mean["b"].shape == (2, 1) and metrics["best_solution"]["w"].shape == (2, 2, 2)


# -- checkpoints: a run saved mid-way resumes bit-identically ------------------------------
def test_checkpoint_round_trip_resumes_bit_identically(tmp_path):
    template = {"w": jnp.zeros((2, 2)), "b": jnp.zeros(3, jnp.bfloat16)}
    es = ARS(6, template)
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


def test_ars_takes_evosax_arguments_in_evosax_order():
    import optax

    import evopes

    es = evopes.ARS(
        8,
        jnp.zeros(3),
        optax.adam(0.1),
        optax.exponential_decay(0.5, 1, 0.5),
        evopes.shaping.identity_fitness_shaping_fn,
    )
    stds, _ = stds_per_generation(es, 3)
    np.testing.assert_allclose(stds, [0.5, 0.25, 0.125])  # std_schedule(g) in generation g
    assert es.fitness_shaping(jnp.array([3.0, 1.0])).tolist() == [3.0, 1.0]
    with pytest.raises(ValueError, match="metrics_fn: not supported"):
        evopes.ARS(8, jnp.zeros(3), metrics_fn=lambda *args: {})
    with pytest.raises(ValueError, match="fitness_shaping_fn: give either"):
        evopes.ARS(
            8,
            jnp.zeros(3),
            fitness_shaping=evopes.shaping.identity,
            fitness_shaping_fn=evopes.shaping.identity_fitness_shaping_fn,
        )
    with pytest.raises(ValueError, match="std_schedule: expected a function"):
        evopes.ARS(8, jnp.zeros(3), std_schedule=0.3)
