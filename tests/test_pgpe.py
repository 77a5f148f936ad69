"""PGPE and ClipUp: the updates against NumPy transcriptions, convergence, contract details."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from evopes import shaping
from evopes.checkpoint import restore_checkpoint, save_checkpoint
from evopes.clipup import clipup
from evopes.population_check import population_checksum
from evopes.strategies.pgpe import PGPE

DIMS = 5


# -- ClipUp (Toklu et al. 2020) ---------------------------------------------------------------
def numpy_clipup(gradients, learning_rate, max_speed, momentum):
    """The paper's steps: v <- m v + alpha g / ||g||, clipped to v_max; the step is -v here
    (minimisation)."""
    velocity, steps = np.zeros_like(gradients[0]), []
    for g in gradients:
        velocity = momentum * velocity + learning_rate * g / np.linalg.norm(g)
        speed = np.linalg.norm(velocity)
        if speed > max_speed:
            velocity = velocity * max_speed / speed
        steps.append(-velocity)
    return steps


def test_clipup_is_the_papers_optimizer():
    rng = np.random.default_rng(0)
    # gradients that mostly agree, so that momentum builds up to the speed limit
    gradients = [np.array([3.0, -1.0, 0.5]) + rng.normal(size=3) for _ in range(6)]
    optimizer = clipup(learning_rate=0.1, max_speed=0.25, momentum=0.9)
    state = optimizer.init(jnp.zeros(3))
    expected = numpy_clipup(gradients, 0.1, 0.25, 0.9)
    speeds = []
    for g, want in zip(gradients, expected, strict=True):
        update, state = jax.jit(optimizer.update)(jnp.asarray(g, jnp.float32), state)
        np.testing.assert_allclose(update, want, rtol=1e-5, atol=1e-7)
        speeds.append(float(jnp.linalg.norm(update)))
    assert speeds[0] == pytest.approx(0.1) and max(speeds) == pytest.approx(0.25)


def test_clipup_on_pytrees_uses_the_global_norm_and_survives_zero_gradients():
    optimizer = clipup(learning_rate=0.5)  # max speed 1.0
    params = {"a": jnp.zeros(2), "b": jnp.zeros(())}
    state = optimizer.init(params)
    update, state = optimizer.update({"a": jnp.array([3.0, 0.0]), "b": jnp.array(4.0)}, state)
    np.testing.assert_allclose(update["a"], [-0.3, 0.0], rtol=1e-6)
    np.testing.assert_allclose(update["b"], -0.4, rtol=1e-6)
    update, state = optimizer.update(jax.tree.map(jnp.zeros_like, params), state)
    np.testing.assert_allclose(update["b"], -0.36, rtol=1e-6)  # momentum only, no NaN
    with pytest.raises(ValueError, match="momentum"):
        clipup(0.1, momentum=1.0)
    with pytest.raises(ValueError, match="max_speed"):
        clipup(0.1, max_speed=-1.0)


# -- PGPE (Sehnke et al. 2010): two generations against a NumPy transcription ----------------
def numpy_centered_rank(fitness):
    ranks = np.empty(len(fitness))
    ranks[np.argsort(fitness, kind="stable")] = np.arange(len(fitness))
    return ranks / (len(fitness) - 1) - 0.5


def numpy_pgpe(population, fitness, mean, std, baseline, best, first, params, learning_rate,
               normalize, shape):
    """Symmetric sampling: one generation of the paper's mean and sigma updates (minimised)."""
    num_pairs = len(fitness) // 2
    utility = shape(fitness)
    eps = population[:num_pairs] - mean
    plus, minus = utility[:num_pairs], utility[num_pairs:]
    generation_mean = np.mean((plus + minus) / 2)
    beta = 0.0 if first else params.baseline_decay
    baseline = beta * baseline + (1 - beta) * generation_mean
    best = min(best, utility.min())
    if normalize:
        mean_terms = (plus - minus) / (plus + minus - 2 * best)
        std_terms = ((plus + minus) / 2 - baseline) / (baseline - best)
    else:
        mean_terms = (plus - minus) / 2
        std_terms = (plus + minus) / 2 - baseline
    mean_gradient = sum(r * e for r, e in zip(mean_terms, eps, strict=True)) / num_pairs
    std_gradient = sum(
        r * (e**2 - std**2) / std for r, e in zip(std_terms, eps, strict=True)
    ) / num_pairs
    change = params.std_max_change * std
    new_std = np.clip(std - params.std_lr * std_gradient, std - change, std + change)
    return mean - learning_rate * mean_gradient, new_std, baseline, best


@pytest.mark.parametrize(
    "fitness_shaping, normalize, max_change",
    [(shaping.centered_rank, False, 1e6), (shaping.identity, True, 1e6),
     (shaping.identity, False, 0.05)],
    ids=["ranks", "identity-normalised", "identity-clipped-sigma"],
)
def test_two_generations_are_the_papers_updates(fitness_shaping, normalize, max_change):
    es = PGPE(8, jnp.zeros(DIMS), optimizer=optax.sgd(0.3), fitness_shaping=fitness_shaping,
              normalize_rewards=normalize)
    params = es.default_params.replace(std_init=0.5, std_lr=0.2, std_max_change=max_change,
                                       baseline_decay=0.6)
    numpy_shape = numpy_centered_rank if fitness_shaping is shaping.centered_rank else np.asarray
    start = np.linspace(-1.0, 1.0, DIMS)
    state = es.init(jax.random.key(0), jnp.asarray(start, jnp.float32), params)
    mean, std, baseline, best = start, np.full(DIMS, 0.5), 0.0, np.inf
    clipped = False
    for generation in range(2):
        population, state = jax.jit(es.ask)(jax.random.key(generation + 1), state, params)
        fitness = jnp.sum((population - 0.3) ** 2, axis=1) + 0.1 * population[:, 0]
        np.testing.assert_allclose(population[:4] + population[4:], np.tile(2 * mean, (4, 1)),
                                   atol=1e-5)
        want = numpy_pgpe(np.asarray(population, np.float64), np.asarray(fitness, np.float64),
                          mean, std, baseline, best, generation == 0, params, 0.3, normalize,
                          numpy_shape)
        unclipped = numpy_pgpe(np.asarray(population, np.float64), np.asarray(fitness, np.float64),
                               mean, std, baseline, best, generation == 0,
                               params.replace(std_max_change=1e6), 0.3, normalize, numpy_shape)
        clipped |= not np.allclose(want[1], unclipped[1])
        state, metrics = jax.jit(es.tell)(jax.random.key(7), population, fitness, state, params)
        mean, std, baseline, best = want
        np.testing.assert_allclose(state.mean, mean, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(state.std, std, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(state.baseline, baseline, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(metrics["std"], std, rtol=1e-5, atol=1e-6)
    assert clipped == (max_change < 1.0)  # the clipped case really clips


def test_clipup_is_the_default_optimizer_and_pgpe_steps_at_most_max_speed():
    es = PGPE(16, jnp.zeros(DIMS))
    params = es.default_params
    state = es.init(jax.random.key(0), jnp.full(DIMS, 5.0), params)
    for generation in range(20):
        population, state = es.ask(jax.random.key(generation), state, params)
        previous = state.mean
        state, _ = es.tell(jax.random.key(0), population, jnp.sum(population**2, 1), state, params)
        assert float(jnp.linalg.norm(state.mean - previous)) <= 0.02 + 1e-6
    assert float(jnp.linalg.norm(state.mean - previous)) == pytest.approx(0.02, rel=1e-4)


# -- convergence at d = 10 inside a jitted scan ------------------------------------------------
def sphere(x):
    return jnp.sum(x**2, axis=-1)


def ellipsoid(x):
    n = x.shape[-1]
    return jnp.sum(1e6 ** (jnp.arange(n) / (n - 1)) * x**2, axis=-1)


def rosenbrock(x):
    return jnp.sum(100 * (x[..., 1:] - x[..., :-1] ** 2) ** 2 + (1 - x[..., :-1]) ** 2, axis=-1)


def best_fitness_trace(es, function, start, generations, seeds=3):
    @jax.jit
    @jax.vmap
    def run(key):
        params = es.default_params
        state = es.init(key, jnp.full(10, start), params)

        def generation(state, key):
            population, state = es.ask(key, state, params)
            state, metrics = es.tell(key, population, function(population), state, params)
            return state, metrics["best_fitness"]

        return jax.lax.scan(generation, state, jax.random.split(key, generations))[1]

    return np.asarray(run(jax.random.split(jax.random.key(7), seeds)))


_SGD = PGPE(32, jnp.zeros(10), optimizer=optax.sgd(1.0))


def test_converges_on_the_sphere_and_the_ellipsoid():
    # With plain SGD (learning rate 1) on centered ranks the step shrinks with sigma, and the
    # per-coordinate sigma learns the ellipsoid's scales: linear convergence on both. Measured
    # about 26,000 (sphere) and 38,000 (ellipsoid, condition 1e6) evaluations to 1e-8; evosax's
    # PGPE with the same configuration needs the same (same noise, same numbers).
    for function, generations in ((sphere, 1000), (ellipsoid, 1400)):
        final = best_fitness_trace(_SGD, function, 3.0, generations)[:, -1]
        assert np.all(final < 1e-8), (function.__name__, final)


def test_rosenbrock_reaches_the_valley_floor():
    # A first-order method with isotropic-per-coordinate noise crawls along Rosenbrock's bent
    # valley: with learning rate 10, after 3,000 generations (96,000 evaluations) runs measured
    # f = 0.035-0.1 from x0 = 0 (f0 = 9); the band asserts the valley is reached and followed
    # towards (1, ..., 1), not 1e-8.
    es = PGPE(32, jnp.zeros(10), optimizer=optax.sgd(10.0))
    final = best_fitness_trace(es, rosenbrock, 0.0, 3000)[:, -1]
    assert np.all(final < 0.3), final


def test_clipup_reaches_the_scale_of_its_speed_on_the_sphere():
    # ClipUp moves at (nearly) constant speed: it stalls where steps of max_speed overshoot,
    # at |x| ~ max_speed. With the defaults (speed 0.02) from f0 = 90: f ~ 1e-4 after 2,000.
    es = PGPE(32, jnp.zeros(10))
    final = best_fitness_trace(es, sphere, 3.0, 2000)[:, -1]
    assert np.all(final < 1e-3), final


# -- contract: non-finite fitness, validation, vmap over Params, pytrees, hashing -----------
def test_nonfinite_fitness_never_poisons_the_state():
    for fitness_shaping in (shaping.centered_rank, shaping.identity):
        es = PGPE(8, jnp.zeros(DIMS), optimizer=optax.sgd(0.1), fitness_shaping=fitness_shaping)
        params = es.default_params
        state = es.init(jax.random.key(0), jnp.ones(DIMS), params)
        population, state = es.ask(jax.random.key(1), state, params)
        fitness = jnp.sum(population**2, 1).at[jnp.array([0, 6])].set(jnp.array([jnp.nan, jnp.inf]))
        new_state, metrics = es.tell(jax.random.key(2), population, fitness, state, params)
        assert all(bool(jnp.all(jnp.isfinite(x))) for x in (new_state.mean, new_state.std))
        assert not bool(metrics["update_skipped"])
        if fitness_shaping is shaping.identity:
            # pairs 0 and 2 (members 0 and 6) are left out: the update uses pairs 1 and 3 only
            assert int(metrics["num_masked_pairs"]) == 2
            keep = jnp.array([1, 3, 5, 7])
            sub = PGPE(4, jnp.zeros(DIMS), optimizer=optax.sgd(0.1),
                       fitness_shaping=shaping.identity)
            sub_state = sub.init(jax.random.key(0), jnp.ones(DIMS), params)
            # As if sub's own ask had drawn these members (tell reads only those).
            sub_state = sub_state.replace(population_checksum=population_checksum(population[keep]))
            reference, _ = sub.tell(jax.random.key(2), population[keep], fitness[keep],
                                    sub_state, params)
            np.testing.assert_allclose(new_state.mean, reference.mean, rtol=1e-6)
            np.testing.assert_allclose(new_state.std, reference.std, rtol=1e-6)


def test_invalid_arguments_name_themselves():
    with pytest.raises(ValueError, match="population_size: expected an even"):
        PGPE(7, jnp.zeros(DIMS))
    with pytest.raises(ValueError, match="optimizer"):
        PGPE(8, jnp.zeros(DIMS), optimizer="adam")
    es = PGPE(8, jnp.zeros(DIMS))
    for field, value in (("std_init", 0.0), ("std_lr", -1.0), ("baseline_decay", 1.0),
                         ("std_max_change", 0.0), ("std_min", 2e20)):
        with pytest.raises(ValueError, match=f"params.{field}"):
            es.init(jax.random.key(0), jnp.zeros(DIMS), es.default_params.replace(**{field: value}))


def test_vmap_over_params_pytrees_and_equal_configurations():
    template = {"w": jnp.zeros((2, 2)), "b": jnp.zeros(1)}
    es = PGPE(6, template)
    assert es == PGPE(6, template) and hash(es) == hash(PGPE(6, template))
    assert es != PGPE(6, template, optimizer=optax.sgd(0.1))
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
    assert mean["w"].shape == (2, 2, 2) and metrics["std"]["b"].shape == (2, 1)
    assert metrics["best_solution"]["w"].shape == (2, 2, 2)


# -- checkpoints: a run saved mid-way resumes bit-identically ------------------------------
def test_checkpoint_round_trip_resumes_bit_identically(tmp_path):
    template = {"w": jnp.zeros((2, 2)), "b": jnp.zeros(3, jnp.bfloat16)}
    es = PGPE(6, template)
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


@pytest.mark.parametrize(
    "arguments, name",
    [
        ({"learning_rate": float("inf")}, "learning_rate"),
        ({"learning_rate": float("nan")}, "learning_rate"),
        ({"learning_rate": 0.1, "max_speed": float("inf")}, "max_speed"),
        ({"learning_rate": 0.1, "max_speed": 0.0}, "max_speed"),
        ({"learning_rate": 0.1, "momentum": 1.0}, "momentum"),
    ],
)
def test_clipup_refuses_infinite_nan_or_zero_rates_naming_them(arguments, name):
    # An infinite rate or speed limit made every update inf or NaN (then skipped forever).
    with pytest.raises(ValueError, match=f"^{name}: expected"):
        clipup(**arguments)
