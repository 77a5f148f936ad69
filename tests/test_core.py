"""The core template: fitness shaping, SolutionSpec, noise sources and the Strategy base."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import struct

from evopes import GaussianNoise, NoiseTable, Params, SolutionSpec, State, Strategy, shaping
from evopes.strategy import check_positive

NAN, INF = float("nan"), float("inf")


# -- shaping ----------------------------------------------------------------------------------
def test_ranks_put_nonfinite_last_and_break_ties_by_position():
    np.testing.assert_array_equal(shaping.ranks(jnp.array([3.0, 1.0, NAN, 2.0])), [2, 0, 3, 1])
    np.testing.assert_array_equal(shaping.ranks(jnp.array([1.0, 1.0, 0.0])), [1, 2, 0])
    # -inf is not "best": every non-finite value is worst, in order of position
    np.testing.assert_array_equal(shaping.ranks(jnp.array([-INF, 0.0, INF, NAN])), [1, 0, 2, 3])


def test_centered_rank_by_hand():
    # r / (n - 1) - 0.5 with ranks [2, 0, 3, 1]
    np.testing.assert_allclose(
        shaping.centered_rank(jnp.array([3.0, 1.0, NAN, 2.0])),
        [1 / 6, -0.5, 0.5, -1 / 6],
        rtol=1e-6,
    )


def test_identity_and_z_score_by_hand():
    np.testing.assert_array_equal(
        shaping.identity(jnp.array([1.0, NAN, INF, -2.0])), [1.0, NAN, INF, -2.0]
    )  # passed through: the estimators drop pairs whose difference is not finite
    # finite [1, 2, 3]: mean 2, population std sqrt(2/3); the NaN gets the worst z
    z = np.sqrt(1.5)
    np.testing.assert_allclose(
        shaping.z_score(jnp.array([1.0, 2.0, 3.0, NAN])), [-z, 0.0, z, z], rtol=1e-5
    )
    np.testing.assert_array_equal(shaping.z_score(jnp.array([NAN, INF])), [0.0, 0.0])


def test_cma_weights_and_weighted_rank_by_hand():
    # lambda = 4, mu = 2: w' = ln(2.5) - ln(i) for i = 1, 2, normalised to sum one
    raw = np.log(2.5) - np.log([1.0, 2.0])
    np.testing.assert_allclose(shaping.cma_weights(4), [*(raw / raw.sum()), 0.0, 0.0], rtol=1e-6)
    # fitness [5, 1, NAN, 3]: ranks [2, 0, 3, 1]; the best (index 1) gets -w_1
    shaped = shaping.weighted_rank(jnp.array([5.0, 1.0, NAN, 3.0]))
    np.testing.assert_allclose(
        shaped, [0.0, -raw[0] / raw.sum(), 0.0, -raw[1] / raw.sum()], rtol=1e-6
    )


def test_shapings_jit_and_vmap():
    fitness = jnp.array([[3.0, 1.0, NAN, 2.0], [0.0, 1.0, 2.0, 3.0]])
    for name, function in shaping.SHAPINGS.items():
        batched = jax.jit(jax.vmap(function))(fitness)
        for row, expected in zip(batched, fitness, strict=True):
            np.testing.assert_allclose(row, function(expected), rtol=1e-6, err_msg=name)
        # Every shaping but identity (which passes values through for the
        # estimators to mask) turns the NaN into a finite worst value.
        assert bool(jnp.all(jnp.isfinite(batched))) == (function is not shaping.identity), name


# -- SolutionSpec -------------------------------------------------------------------------------
TEMPLATE = {
    "a": jnp.zeros((2, 3)),
    "b": [jnp.zeros(()), jnp.zeros(4, jnp.bfloat16)],
    "c": jnp.zeros(2, jnp.int32),
}


def test_spec_round_trips_single_and_population():
    spec = SolutionSpec.from_template(TEMPLATE)
    assert spec.num_dims == 6 + 1 + 4 + 2
    tree = {
        "a": jnp.arange(6.0).reshape(2, 3),
        "b": [jnp.array(7.0), jnp.arange(4, dtype=jnp.bfloat16)],
        "c": jnp.array([3.0, 4.0]),
    }
    flat = spec.ravel(tree)
    # leaf order is jax.tree.leaves order, each leaf row-major
    np.testing.assert_array_equal(flat, [0, 1, 2, 3, 4, 5, 7, 0, 1, 2, 3, 3, 4])
    back = spec.unravel(flat)
    assert jax.tree.structure(back) == jax.tree.structure(TEMPLATE)
    assert [leaf.dtype for leaf in jax.tree.leaves(back)] == [
        jnp.float32,
        jnp.float32,
        jnp.bfloat16,
        jnp.float32,
    ]
    for got, want in zip(jax.tree.leaves(back), jax.tree.leaves(tree), strict=True):
        np.testing.assert_array_equal(np.asarray(got, np.float32), np.asarray(want, np.float32))
    population = jax.tree.map(lambda leaf: jnp.stack([leaf, leaf + 1]), back)
    flat_population = spec.ravel_population(population, 2)
    np.testing.assert_array_equal(flat_population, jnp.stack([flat, flat + 1]))
    again = spec.unravel_population(flat_population)
    for got, want in zip(jax.tree.leaves(again), jax.tree.leaves(population), strict=True):
        assert got.shape == want.shape
        np.testing.assert_array_equal(got, want)


def test_spec_is_hashable_by_value():
    from_arrays = SolutionSpec.from_template(TEMPLATE)
    from_structs = SolutionSpec.from_template(
        jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), TEMPLATE)
    )
    assert from_arrays == from_structs and hash(from_arrays) == hash(from_structs)
    assert from_arrays != SolutionSpec.from_template({"a": jnp.zeros((3, 2))})


def test_spec_errors_name_expected_and_received():
    spec = SolutionSpec.from_template({"x": jnp.zeros(3)})
    with pytest.raises(ValueError, match="solution: expected pytree structure"):
        spec.ravel({"y": jnp.zeros(3)})
    with pytest.raises(ValueError, match=r"solution: leaf 0 expected shape \(3,\), got \(4,\)"):
        spec.ravel({"x": jnp.zeros(4)})
    with pytest.raises(
        ValueError, match=r"population: leaf 0 expected shape \(5, 3\), got \(4, 3\)"
    ):
        spec.ravel_population({"x": jnp.zeros((4, 3))}, 5)
    with pytest.raises(ValueError, match="expected last axis 3, got 2"):
        spec.unravel(jnp.zeros(2))
    with pytest.raises(ValueError, match="empty tree"):
        SolutionSpec.from_template({})


# -- noise ------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "noise", [GaussianNoise(), NoiseTable(size=2**16)], ids=["gaussian", "table"]
)
def test_noise_is_deterministic_and_standard_normal(noise):
    num, dims = 64, 256
    state = noise.init(jax.random.key(0), dims)
    sample = jax.jit(noise.sample, static_argnums=2)
    ids = noise.draw_ids(jax.random.key(1), num, dims)
    z = sample(state, ids, dims)
    assert z.shape == (num, dims) and z.dtype == jnp.float32
    # determinism: the same ids give the same noise, one id at a time too, and other ids differ
    np.testing.assert_array_equal(sample(state, ids, dims), z)
    np.testing.assert_array_equal(sample(state, ids[3], dims), z[3])
    np.testing.assert_array_equal(noise.draw_ids(jax.random.key(1), num, dims), ids)
    other = sample(state, noise.draw_ids(jax.random.key(2), num, dims), dims)
    assert not np.allclose(other, z)
    # moments over n = 16384 numbers: the mean has std 1/sqrt(n) = 0.0078 and the variance
    # std sqrt(2/n) = 0.011; 5 std bounds. (Table slices overlap, so for the table these
    # hold for the table itself, which we also check.)
    values = np.asarray(z).ravel()
    assert abs(values.mean()) < 5 / np.sqrt(values.size)
    assert abs(values.var() - 1) < 5 * np.sqrt(2 / values.size)
    # two different perturbations are uncorrelated: corr over 256 coordinates has std 1/16
    correlation = np.corrcoef(np.asarray(z[0]), np.asarray(z[1]))[0, 1]
    assert abs(correlation) < 5 / np.sqrt(dims)


def test_noise_table_slices_are_table_segments():
    noise = NoiseTable(size=1000)
    table = noise.init(jax.random.key(0), 10)
    assert table.shape == (1000,)
    assert abs(float(table.mean())) < 5 / np.sqrt(1000) and abs(
        float(table.var()) - 1
    ) < 5 * np.sqrt(2 / 1000)
    ids = noise.draw_ids(jax.random.key(1), 500, 10)
    assert ids.shape == (500, 1) and int(ids.min()) >= 0 and int(ids.max()) <= 1000 - 10
    z = noise.sample(table, ids[:3], 10)
    for row, (offset,) in zip(z, np.asarray(ids[:3]), strict=True):
        np.testing.assert_array_equal(row, table[offset : offset + 10])
    with pytest.raises(ValueError, match="NoiseTable.size: expected more than num_dims=1000"):
        noise.init(jax.random.key(0), 1000)


def test_gaussian_ids_are_key_data():
    noise = GaussianNoise()
    ids = noise.draw_ids(jax.random.key(0), 3, 5)
    assert ids.shape == (3, 2) and ids.dtype == jnp.uint32
    key = jax.random.wrap_key_data(ids[1], impl="threefry2x32")
    np.testing.assert_array_equal(
        noise.sample(noise.init(None, 5), ids[1], 5), jax.random.normal(key, (5,))
    )


# -- the Strategy template, through a minimal strategy -------------------------------------------
@struct.dataclass
class _WalkState(State):
    pass


class _Walk(Strategy):
    """Members are mean + 0.1 * (index - P/2); the mean moves to the best member."""

    @property
    def default_params(self):
        return Params()

    def _init(self, key, mean, params):
        return _WalkState(mean=mean, best_solution=mean, best_fitness=jnp.inf, generation_counter=0)

    def _ask(self, key, state, params):
        offsets = 0.1 * (jnp.arange(self.population_size) - self.population_size // 2)
        return state.mean + offsets[:, None], state

    def _tell(self, key, population, fitness, state, params):
        best = jnp.argmin(shaping.worst_if_nonfinite(fitness))
        return state.replace(mean=population[best]), {}


def test_template_tracks_best_with_nonfinite_fitness_and_metrics_use_raw_values():
    es = _Walk(4, {"x": jnp.zeros(2)})
    params = es.default_params
    state = es.init(jax.random.key(0), {"x": jnp.ones(2)}, params)
    population, state = es.ask(jax.random.key(0), state, params)
    np.testing.assert_allclose(population["x"][:, 0], [0.8, 0.9, 1.0, 1.1], rtol=1e-6)
    state, metrics = es.tell(
        jax.random.key(0), population, jnp.array([NAN, 3.0, 1.0, -INF]), state, params
    )
    assert float(metrics["best_fitness"]) == 1.0 and int(metrics["num_nonfinite"]) == 2
    np.testing.assert_allclose(metrics["best_solution"]["x"], [1.0, 1.0])
    assert float(metrics["mean_fitness"]) == 2.0  # over the finite values only
    # an all-NaN generation changes nothing that is tracked
    population, state = es.ask(jax.random.key(0), state, params)
    state, metrics = es.tell(jax.random.key(0), population, jnp.full(4, NAN), state, params)
    assert float(metrics["best_fitness"]) == 1.0 and int(metrics["generation_counter"]) == 2
    assert bool(jnp.all(jnp.isfinite(state.mean)))


def test_template_maximize_flips_the_sign_of_reported_fitness():
    es = _Walk(4, jnp.zeros(1), maximize=True)
    state = es.init(jax.random.key(0), jnp.zeros(1), es.default_params)
    population, state = es.ask(jax.random.key(0), state, es.default_params)
    state, metrics = es.tell(
        jax.random.key(0), population, jnp.array([1.0, 5.0, 3.0, 2.0]), state, es.default_params
    )
    assert float(metrics["best_fitness"]) == 5.0
    np.testing.assert_allclose(state.mean, population[1], rtol=1e-6)


def test_template_validation_and_identity():
    with pytest.raises(ValueError, match="population_size: expected an integer >= 2, got 1"):
        _Walk(1, jnp.zeros(1))
    es = _Walk(4, jnp.zeros(2))
    state = es.init(jax.random.key(0), jnp.zeros(2), es.default_params)
    with pytest.raises(ValueError, match="population: _Walk.tell needs the population, got None"):
        es.tell(jax.random.key(0), None, jnp.zeros(4), state, es.default_params)
    with pytest.raises(ValueError, match=r"fitness: expected shape \(4,\), got \(3,\)"):
        es.tell(jax.random.key(0), jnp.zeros((4, 2)), jnp.zeros(3), state, es.default_params)
    assert _Walk(4, jnp.zeros(2)) == es and hash(_Walk(4, jnp.zeros(2))) == hash(es)
    assert _Walk(6, jnp.zeros(2)) != es and _Walk(4, jnp.zeros(2), maximize=True) != es
    # a strategy is a static pytree: no leaves, usable as a jit argument
    assert jax.tree.leaves(es) == []


def test_check_positive():
    @struct.dataclass
    class _Params(Params):
        std: float = 1.0

    check_positive(_Params(), "std")
    for bad in (0.0, -1.0, NAN, INF):
        with pytest.raises(ValueError, match=r"params.std: expected a finite value > 0"):
            check_positive(_Params(std=bad), "std")
    jax.jit(lambda s: check_positive(_Params(std=s), "std"))(-1.0)  # traced values are skipped
