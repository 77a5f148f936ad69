"""OpenES: the estimator on numbers, convergence, jit/vmap/scan, pytrees, robustness."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from strategy_zoo import stds_per_generation

import evopes
from evopes import FullES, GaussianNoise, NoiseTable, OpenES, shaping

# -- one generation, checked against Salimans et al.'s formula by hand ---------------------
# A 7-number pytree, plain SGD with learning rate 1: new mean = mean - (g + lambda * mean).
TREE = {"w": jnp.zeros((2, 2)), "b": {"c": jnp.zeros(3)}}
TREE_MEAN = {"w": jnp.array([[0.5, -1.0], [2.0, 0.0]]), "b": {"c": jnp.array([1.0, 1.5, -0.5])}}


def tree_sphere(population):
    return sum(
        jnp.sum(jnp.reshape(leaf, (leaf.shape[0], -1)) ** 2, axis=1)
        for leaf in jax.tree.leaves(population)
    )


@jax.jit
def one_generation(es, key, params):
    init_key, ask_key = jax.random.split(key)
    state = es.init(init_key, TREE_MEAN, params)
    population, state = es.ask(ask_key, state, params)
    fitness = tree_sphere(population)
    new_state, metrics = es.tell(key, None, fitness, state, params)
    return population, fitness, state, new_state, metrics


@pytest.mark.parametrize(
    "noise", [NoiseTable(size=4096), GaussianNoise()], ids=["table", "gaussian"]
)
def test_one_generation_is_the_papers_update(noise):
    es = OpenES(10, TREE, optimizer=optax.sgd(1.0), noise=noise)
    params = es.default_params.replace(std_init=0.3, weight_decay=0.5)
    population, fitness, state, new_state, metrics = one_generation(es, jax.random.key(1), params)
    flat = es.spec.ravel_population(population, 10)
    mean = es.spec.ravel(TREE_MEAN)
    # Salimans et al. 2017: g = 1/(n sigma) sum_j F_j eps_j with eps_j = (x_j - mean)/sigma
    # and F the centered ranks; mirrored halves: eps_{j+5} = -eps_j.
    eps = (flat - mean) / 0.3
    np.testing.assert_allclose(eps[5:], -eps[:5], atol=1e-5)
    gradient = shaping.centered_rank(fitness) @ eps / (10 * 0.3)
    np.testing.assert_allclose(es.spec.ravel(metrics["gradient"]), gradient, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(new_state.mean, mean - (gradient + 0.5 * mean), rtol=1e-4, atol=1e-5)
    # best member: rebuilt from its noise id, equal to the population's argmin
    best = int(jnp.argmin(fitness))
    np.testing.assert_allclose(
        es.spec.ravel(metrics["best_solution"]), flat[best], rtol=1e-6, atol=1e-6
    )
    assert float(metrics["best_fitness"]) == float(fitness[best])
    # the state holds ids, not perturbations
    assert state.noise_ids.shape[0] == 5 and state.noise_ids.size <= 10


def test_weight_decay_adds_lambda_times_mean():
    es = OpenES(10, TREE, optimizer=optax.sgd(1.0), noise=NoiseTable(size=4096))
    params = es.default_params.replace(std_init=0.3)
    without = one_generation(es, jax.random.key(1), params.replace(weight_decay=0.0))[3].mean
    with_decay = one_generation(es, jax.random.key(1), params.replace(weight_decay=0.25))[3].mean
    np.testing.assert_allclose(
        without - with_decay, 0.25 * es.spec.ravel(TREE_MEAN), rtol=1e-5, atol=1e-6
    )


@jax.jit
def schedule(es, params):
    state = es.init(jax.random.key(0), TREE_MEAN, params)

    def generation(state, key):
        population, state = es.ask(key, state, params)
        state, metrics = es.tell(key, None, tree_sphere(population), state, params)
        return state, metrics["std"]

    return jax.lax.scan(generation, state, jax.random.split(jax.random.key(1), 4))[1]


def test_std_schedule_decays_to_its_floor():
    es = OpenES(10, TREE, noise=NoiseTable(size=4096))
    params = es.default_params.replace(std_init=0.1, std_decay=0.5, std_min=0.03)
    np.testing.assert_allclose(schedule(es, params), [0.1, 0.05, 0.03, 0.03], rtol=1e-6)


def test_tell_with_or_without_population_is_identical():
    es = OpenES(10, TREE, noise=NoiseTable(size=4096))
    params = es.default_params
    population, fitness, state, new_state, _ = one_generation(es, jax.random.key(2), params)
    with_population, _ = jax.jit(es.tell)(jax.random.key(2), population, fitness, state, params)
    for a, b in zip(jax.tree.leaves(with_population), jax.tree.leaves(new_state), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)
    wrong = {"w": population["w"], "b": {"d": population["b"]["c"]}}
    with pytest.raises(ValueError, match="population: expected pytree structure"):
        es.tell(jax.random.key(2), wrong, fitness, state, params)


# -- flax parameters round-trip exactly -------------------------------------------------------
def test_flax_parameters_round_trip():
    model = nn.Sequential([nn.Dense(8), nn.relu, nn.Dense(2)])
    variables = model.init(jax.random.key(0), jnp.zeros(3))
    es = OpenES(6, variables, noise=NoiseTable(size=4096))
    params = es.default_params

    @jax.jit
    def generation(key):
        initial = es.init(key, variables, params)
        population, state = es.ask(key, initial, params)
        outputs = jax.vmap(lambda v: model.apply(v, jnp.ones(3)))(population)
        state, metrics = es.tell(key, None, jnp.sum(outputs**2, axis=1), state, params)
        return es.get_mean(initial), population, state, metrics

    mean, population, state, metrics = generation(jax.random.key(1))
    assert jax.tree.structure(mean) == jax.tree.structure(variables)
    for got, want in zip(jax.tree.leaves(mean), jax.tree.leaves(variables), strict=True):
        assert got.dtype == want.dtype
        np.testing.assert_array_equal(got, want)
    for member, leaf in zip(jax.tree.leaves(population), jax.tree.leaves(variables), strict=True):
        assert member.shape == (6,) + leaf.shape
    assert jax.tree.structure(metrics["best_solution"]) == jax.tree.structure(variables)
    assert jax.tree.structure(metrics["gradient"]) == jax.tree.structure(variables)
    assert jax.tree.structure(es.get_mean(state)) == jax.tree.structure(variables)


# -- the whole loop: jit(vmap(scan)) over seeds, Params and fitness corruption --------------
DIMS, GENERATIONS = 100, 400
_SPHERE_ES = OpenES(64, jnp.zeros(DIMS), noise=NoiseTable(size=2**20))


@jax.jit
@jax.vmap
def _train(key, params, corrupt_rate):
    """x0 = 0 on f(x) = |x - 1|^2 (f0 = 100); a fraction ``corrupt_rate`` of the
    fitness values is replaced by NaN or +-inf every generation."""
    es = _SPHERE_ES
    init_key, run_key = jax.random.split(key)
    state = es.init(init_key, jnp.zeros(DIMS), params)

    def generation(state, key):
        ask_key, corrupt_key, kind_key = jax.random.split(key, 3)
        population, state = es.ask(ask_key, state, params)
        fitness = jnp.sum((population - 1.0) ** 2, axis=1)
        corrupt = jax.random.uniform(corrupt_key, fitness.shape) < corrupt_rate
        bad = jnp.array([jnp.nan, jnp.inf, -jnp.inf])[
            jax.random.randint(kind_key, fitness.shape, 0, 3)
        ]
        state, metrics = es.tell(key, None, jnp.where(corrupt, bad, fitness), state, params)
        return state, metrics["num_nonfinite"]

    return jax.lax.scan(generation, state, jax.random.split(run_key, GENERATIONS))


@pytest.fixture(scope="module")
def trained():
    params = _SPHERE_ES.default_params
    batch = jax.tree.map(lambda leaf: jnp.full((4,), leaf, jnp.float32), params)
    batch = batch.replace(
        std_init=jnp.array([0.1, 0.2, 0.1, 0.1]), weight_decay=jnp.array([0.0, 0.0, 0.5, 0.0])
    )
    corrupt_rate = jnp.array([0.0, 0.0, 0.0, 0.1])
    keys = jax.random.split(jax.random.key(7), 4)
    return keys, batch, corrupt_rate, _train(keys, batch, corrupt_rate)


def test_converges_on_a_100d_sphere_under_vmap(trained):
    _, _, _, (state, num_nonfinite) = trained
    distance = jnp.sum((state.mean - 1.0) ** 2, axis=1)
    # runs 0 and 1 (two sigmas) go from 100 to < 1e-2; run 3, with 10% NaN/inf fitness
    # (ranked worst, so a broken pair still pushes away from its broken member), to < 0.05
    for run, bound in [(0, 1e-2), (1, 1e-2), (3, 5e-2)]:
        assert float(distance[run]) < bound, (run, distance)
    assert int(num_nonfinite[3].sum()) > 0.05 * 64 * GENERATIONS
    assert int(num_nonfinite[0].sum()) == 0
    # weight decay pulls the mean towards 0, away from the optimum at 1
    assert float(state.mean[2].mean()) < float(state.mean[0].mean()) - 0.05
    for leaf in jax.tree.leaves(state):
        assert bool(jnp.all(jnp.isfinite(leaf)))


def test_vmapped_runs_are_independent(trained):
    keys, batch, corrupt_rate, (state, _) = trained
    reverse = lambda tree: jax.tree.map(lambda leaf: leaf[::-1], tree)
    reversed_state, _ = _train(reverse(keys), reverse(batch), reverse(corrupt_rate))
    np.testing.assert_allclose(reversed_state.mean[::-1], state.mean, rtol=1e-5, atol=1e-6)


# -- configuration identity -------------------------------------------------------------------
def test_equal_configurations_share_compiled_code():
    traces = []

    @jax.jit
    def ask(es, state, key):
        traces.append(type(es).__name__)
        return es.ask(key, state, es.default_params)

    def build(cls, **kwargs):
        es = cls(4, jnp.zeros(3), noise=NoiseTable(size=64), **kwargs)
        return es, es.init(jax.random.key(0), jnp.zeros(3), es.default_params)

    for cls, optimizer in [(OpenES, optax.adam), (FullES, optax.sgd)]:
        es, state = build(cls)
        ask(es, state, jax.random.key(1))
        again, _ = build(cls)  # a new instance, a freshly built default optimizer
        same, _ = build(cls, optimizer=optimizer(learning_rate=1e-2))
        assert again == es and same == es and hash(same) == hash(es)
        ask(again, state, jax.random.key(2))
        ask(same, state, jax.random.key(3))
        assert traces.count(cls.__name__) == 1
        other, _ = build(cls, optimizer=optimizer(learning_rate=2e-2))
        assert other != es
        ask(other, state, jax.random.key(4))
        assert traces.count(cls.__name__) == 2


# -- validation -------------------------------------------------------------------------------
def test_validation_errors_name_expected_and_received():
    with pytest.raises(ValueError, match=r"population_size: expected an even integer >= 2.*got 9"):
        OpenES(9, jnp.zeros(3))
    with pytest.raises(ValueError, match="noise: expected"):
        OpenES(8, jnp.zeros(3), noise="table")
    with pytest.raises(ValueError, match="optimizer: expected an optax"):
        OpenES(8, jnp.zeros(3), optimizer=0.1)
    es = OpenES(8, jnp.zeros(3), noise=NoiseTable(size=64))
    key = jax.random.key(0)
    for field, value in [
        ("std_init", 0.0),
        ("std_init", -1.0),
        ("std_decay", 0.0),
        ("std_min", -0.1),
        ("weight_decay", -1.0),
    ]:
        with pytest.raises(ValueError, match=f"params.{field}: expected"):
            es.init(key, jnp.zeros(3), es.default_params.replace(**{field: value}))
    with pytest.raises(ValueError, match=r"solution: expected pytree structure"):
        es.init(key, {"x": jnp.zeros(3)}, es.default_params)
    state = es.init(key, jnp.zeros(3), es.default_params)
    with pytest.raises(ValueError, match=r"fitness: expected shape \(8,\), got \(8, 1\)"):
        es.tell(key, None, jnp.zeros((8, 1)), state, es.default_params)
    with pytest.raises(ValueError, match="NoiseTable.size"):
        OpenES(8, jnp.zeros(100), noise=NoiseTable(size=64)).init(
            key, jnp.zeros(100), es.default_params
        )


def test_aliases_and_exports():
    assert issubclass(evopes.Open_ES, OpenES) and evopes.OpenES is OpenES
    assert evopes.strategies.OpenES is OpenES
    assert isinstance(OpenES(4, jnp.zeros(2)).noise, NoiseTable)
    assert OpenES(4, jnp.zeros(2)).default_params.std_init == 0.1


def test_open_es_takes_evosax_constructor_in_evosax_order_with_evosax_defaults():
    default = evopes.Open_ES(8, jnp.zeros(3))
    assert isinstance(default.noise, GaussianNoise)  # evosax draws fresh normals
    params = default.default_params
    state = default.init(jax.random.key(0), jnp.ones(3), params)
    assert float(state.std) == 1.0  # constant_schedule(1.0)
    # Positional, in evosax's order: antithetic flag, optimizer, std_schedule, shaping.
    es = evopes.Open_ES(
        8,
        jnp.zeros(3),
        True,
        optax.sgd(0.1),
        optax.exponential_decay(0.5, 1, 0.5),
        evopes.shaping.identity_fitness_shaping_fn,
    )
    assert es.fitness_shaping(jnp.array([3.0, 1.0])).tolist() == [3.0, 1.0]
    stds, state = stds_per_generation(es, 3)
    # sigma of generation g is std_schedule(g) = 0.5 * 0.5**g; sgd(0.1) moved the mean.
    np.testing.assert_allclose(stds, [0.5, 0.25, 0.125])
    assert float(state.mean[0]) < 1.0
    with pytest.raises(ValueError, match="use_antithetic_sampling: evopes' OpenES always"):
        evopes.Open_ES(8, jnp.zeros(3), use_antithetic_sampling=False)
    with pytest.raises(ValueError, match="metrics_fn: not supported"):
        evopes.Open_ES(8, jnp.zeros(3), metrics_fn=lambda *args: {})
    with pytest.raises(ValueError, match="std_schedule: expected a function"):
        evopes.Open_ES(8, jnp.zeros(3), std_schedule=0.1)


# -- the documentation's examples run and do what they say -----------------------------------
def _python_blocks(page):
    from pathlib import Path

    text = (Path(__file__).resolve().parent.parent / "docs" / "strategies" / page).read_text()
    return [block.split("```", 1)[0] for block in text.split("```python\n")[1:]]


@pytest.mark.parametrize("page", ["open_es.md", "full_es.md"])
def test_docs_examples(page):
    namespace = {}
    for block in _python_blocks(page):
        exec(compile(block, page, "exec"), namespace)
    state = namespace["state"]
    if page == "open_es.md":
        assert float(namespace["sphere"](state.mean)) < 1e-2  # the page says "about 1e-4"
    else:
        assert float(namespace["loss"](state.mean)) < 1e-6  # the page says "below 1e-9"
