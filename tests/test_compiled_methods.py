"""Public methods compile themselves in eager loops and add nothing inside the user's jit.

An evosax-style loop (no jit of the user's own) ran 30x slower per generation than
evosax before; the speed itself is measured by the evosax-parity benchmark. Here:
eager calls run one shared compiled program per method (equal strategies share it,
the configuration is hashed once), traced calls bypass it, and both give the same
numbers.
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax

import evopes
from evopes.strategy import Strategy


def sphere(population):
    return jnp.sum(population**2, axis=1)


def test_eager_calls_share_one_compiled_program_per_method():
    tell = Strategy.tell.compiled
    first, equal = (evopes.CMA_ES(population_size=8, solution=jnp.zeros(3)) for _ in range(2))
    params = first.default_params
    before = tell._cache_size()
    for es in (first, equal, first):
        state = es.init(jax.random.key(0), jnp.ones(3), params)
        population, state = es.ask(jax.random.key(1), state, params)
        state, _ = es.tell(jax.random.key(2), population, sphere(population), state, params)
    assert tell._cache_size() == before + 1  # one program for the equal strategies
    assert "_cached_hash" in vars(first)  # hashed once, then looked up


def test_inside_a_user_jit_the_plain_function_runs_with_the_same_result():
    es = evopes.CMA_ES(population_size=8, solution=jnp.zeros(3))
    params = es.default_params

    def generation(state, key):
        population, state = es.ask(key, state, params)
        return es.tell(key, population, sphere(population), state, params)

    state = es.init(jax.random.key(0), jnp.ones(3), params)
    eager_state, eager_metrics = generation(state, jax.random.key(5))
    size = Strategy.tell.compiled._cache_size()
    jitted_state, jitted_metrics = jax.jit(generation)(state, jax.random.key(5))
    assert Strategy.tell.compiled._cache_size() == size  # the user's jit traced the plain tell
    np.testing.assert_allclose(jitted_state.mean, eager_state.mean, rtol=1e-6)
    np.testing.assert_allclose(jitted_metrics["best_fitness"], eager_metrics["best_fitness"])
    # No nested jit of ask or tell in the user's program: the plain functions ran.
    jaxpr = jax.make_jaxpr(generation)(state, jax.random.key(5))
    nested = {eqn.params.get("name") for eqn in jaxpr.jaxpr.eqns if "jit" in eqn.primitive.name}
    assert not nested & {"ask", "tell"}, nested


def test_eager_init_still_validates_hyperparameters():
    es = evopes.NRES(4, jnp.zeros(2), 1, None)
    try:
        es.init(jax.random.key(0), jnp.zeros(2), evopes.OnlineParams(std=-1.0))
    except ValueError as error:
        assert "params.std" in str(error)
    else:
        raise AssertionError("no ValueError for std = -1 at an eager init")
    online = evopes.PES(4, jnp.zeros(2), 1, None, optimizer=optax.sgd(0.1))
    state = online.init(jax.random.key(0), jnp.zeros(2), online.default_params)
    population, state = online.ask(jax.random.key(1), state, online.default_params)
    assert population.shape == (4, 2)
