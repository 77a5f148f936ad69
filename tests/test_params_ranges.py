"""Classic strategies: every ranged hyperparameter is checked, eagerly and under jit.

The issue's measurements: CMAES and SepCMAES accepted ``c_mean=nan``, ``c_1=nan``,
``c_sigma=nan`` or ``-1`` and ``std_init=1e38`` (above ``std_max``), then threw
every update away with no metric saying so and never terminated; under jit
``std_init=nan`` (CMAES) and ``std_decay=nan`` (OpenES) put NaN into the state.
Now ``init`` raises a ValueError naming the field, and under jit the invalid value
never enters the state: the update is skipped, ``metrics["invalid_params"]`` names
the field and ``metrics["terminate"]`` stops ``evopes.run``.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import evopes

BAD = [
    (evopes.CMAES, "c_mean", np.nan),
    (evopes.CMAES, "c_1", np.nan),
    (evopes.CMAES, "c_sigma", np.nan),
    (evopes.CMAES, "c_sigma", -1.0),
    (evopes.CMAES, "std_init", 1e38),
    (evopes.CMAES, "std_init", np.nan),
    (evopes.SepCMAES, "c_mean", np.nan),
    (evopes.SepCMAES, "std_init", 1e38),
    (evopes.OpenES, "std_decay", np.nan),
    (evopes.OpenES, "std_init", -0.1),
    (evopes.FullES, "weight_decay", -1.0),
]
IDS = [f"{cls.__name__}-{name}={value}" for cls, name, value in BAD]


def make(cls):
    return cls(population_size=8, solution=jnp.zeros(3))


@pytest.mark.parametrize(("cls", "name", "value"), BAD, ids=IDS)
def test_init_names_the_invalid_field(cls, name, value):
    es = make(cls)
    params = es.default_params.replace(**{name: jnp.float32(value)})
    with pytest.raises(ValueError, match=rf"params\.{name}: expected a value in"):
        es.init(jax.random.key(0), jnp.ones(3), params)


@functools.partial(jax.jit, static_argnums=0)
def ten_generations(es, params):
    state = es.init(jax.random.key(0), jnp.ones(3), params)

    def generation(state, key):
        population, state = es.ask(key, state, params)
        state, metrics = es.tell(key, population, jnp.sum(population**2, axis=1), state, params)
        return state, (metrics["terminate"], metrics["invalid_params"])

    return jax.lax.scan(generation, state, jax.random.split(jax.random.key(1), 10))


@pytest.mark.parametrize(("cls", "name", "value"), BAD, ids=IDS)
def test_under_jit_an_invalid_value_never_enters_the_state(cls, name, value):
    es = make(cls)
    params = es.default_params.replace(**{name: jnp.float32(value)})
    state, (terminate, invalid) = ten_generations(es, params)
    for leaf in jax.tree_util.tree_leaves(state):
        if jnp.issubdtype(leaf.dtype, jnp.floating) and leaf.shape:
            assert np.all(np.isfinite(leaf)), leaf
    np.testing.assert_array_equal(state.mean, 1.0)  # no update was applied
    assert np.all(terminate) and np.all(invalid[name])
    assert not any(np.any(flags) for other, flags in invalid.items() if other != name)
    _, (terminate, invalid) = ten_generations(es, es.default_params)
    assert not np.any(np.stack(list(invalid.values())))


def test_evopes_run_stops_with_invalid_traced_params():
    es = make(evopes.CMAES)
    params = es.default_params.replace(c_mean=jnp.float32(np.nan))
    # run() checks params eagerly too; the traced path is what a vmapped sweep meets.
    with pytest.raises(ValueError, match=r"params\.c_mean"):
        evopes.run(
            es,
            lambda x, key: jnp.sum(x**2, axis=1),
            jnp.ones(3),
            jax.random.key(0),
            100,
            params=params,
            progress=False,
        )
    step = lambda state, key, params: es.tell(
        key, *(lambda p, s: (p, jnp.sum(p**2, axis=1), s, params))(*es.ask(key, state, params))
    )
    state = es.init(jax.random.key(0), jnp.ones(3), es.default_params)
    result = evopes.run_loop(
        step, state, jax.random.key(1), 100, params=params, progress=False, chunk_size=10
    )
    assert len(result.history["step"]) == 1  # stopped at the first generation
    np.testing.assert_array_equal(result.state.mean, 1.0)
    # The history says which field stopped it, one column per field.
    assert result.history["invalid_params/c_mean"].tolist() == [True]
    assert result.history["invalid_params/c_1"].tolist() == [False]


def test_invalid_params_is_one_array_that_reads_like_a_dict():
    # One output of a compiled tell instead of one per field: an eager CMA-ES
    # tell spent 40 of its 150 microseconds returning 20 separate flags.
    es = make(evopes.CMAES)
    params = es.default_params
    state = es.init(jax.random.key(0), jnp.ones(3), params)
    population, state = es.ask(jax.random.key(1), state, params)
    bad = params.replace(c_1=jnp.float32(np.nan))
    _, metrics = jax.jit(es.tell)(jax.random.key(2), population, jnp.ones(8), state, bad)
    flags = metrics["invalid_params"]
    assert len(jax.tree_util.tree_leaves(flags)) == 1
    assert set(flags) == set(es.param_ranges) and len(flags) == len(es.param_ranges)
    assert bool(flags["c_1"]) and not any(bool(v) for k, v in flags.items() if k != "c_1")
    with pytest.raises(KeyError):
        flags["no_such_field"]
    # Stacked over generations (scan), a field keeps the leading axis.
    _, (_, stacked) = ten_generations(es, bad)
    np.testing.assert_array_equal(stacked["c_1"], np.ones(10, bool))
    np.testing.assert_array_equal(stacked["c_mean"], np.zeros(10, bool))
