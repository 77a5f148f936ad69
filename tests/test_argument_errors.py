"""Bad arguments get a ValueError that names the argument, the expected and the received.

Issue item 8: a solution made only of empty leaves raised ZeroDivisionError
(CMAES, SepCMAES) or "math domain error" (LM-MA-ES); fitness given as a pytree
raised "entry not a 2- or 3- tuple"; an int key raised from inside JAX's PRNG;
another strategy's state or params raised AttributeError, or (FullES with an
OpenES state) nothing at all.
"""

import jax
import jax.numpy as jnp
import pytest

import evopes

CLASSIC = [
    evopes.CMAES,
    evopes.SepCMAES,
    evopes.OpenES,
    evopes.FullES,
    evopes.PGPE,
    evopes.ARS,
    evopes.LMMAES,
]
ONLINE = [evopes.TES, evopes.PES, evopes.GPES, evopes.NRES]
KEY = jax.random.key(0)


def classic(cls, solution=None):
    return cls(population_size=8, solution=jnp.zeros(3) if solution is None else solution)


def online(cls, solution=None):
    kwargs = {"noise_period": 2} if cls is evopes.GPES else {}
    solution = jnp.zeros(3) if solution is None else solution
    return cls(8, solution, 2, **kwargs)


@pytest.mark.parametrize("cls", CLASSIC + ONLINE, ids=lambda c: c.__name__)
@pytest.mark.parametrize("solution", [{"a": jnp.zeros((0,))}, jnp.zeros((3, 0)), {}])
def test_a_solution_without_numbers_is_refused(cls, solution):
    build = online if cls in ONLINE else classic
    with pytest.raises(
        ValueError, match=r"^solution: expected a pytree (holding|with) at least one"
    ):
        build(cls, solution)


@pytest.fixture(scope="module")
def generation():
    """Per classic strategy: (es, state after ask, population, params) with small shapes."""
    cases = {}
    for cls in CLASSIC:
        es = classic(cls)
        params = es.default_params
        state = es.init(KEY, jnp.zeros(3), params)
        population, state = es.ask(KEY, state, params)
        cases[cls] = (es, state, population, params)
    return cases


@pytest.mark.parametrize("cls", CLASSIC, ids=lambda c: c.__name__)
def test_fitness_as_a_pytree_names_fitness(generation, cls):
    es, state, population, params = generation[cls]
    with pytest.raises(ValueError, match=r"^fitness: expected an array of shape \(8,\), got dict"):
        es.tell(KEY, population, {"f": jnp.zeros(8)}, state, params)


@pytest.mark.parametrize("cls", CLASSIC, ids=lambda c: c.__name__)
def test_an_int_key_names_key(generation, cls):
    es, state, population, params = generation[cls]
    message = r"^key: expected a PRNG key \(jax.random.key\(...\)\), got int32 array of shape \(\)"
    with pytest.raises(ValueError, match=message):
        es.ask(0, state, params)
    with pytest.raises(ValueError, match=message):
        es.tell(0, population, jnp.zeros(8), state, params)
    with pytest.raises(ValueError, match=r"^key: expected a PRNG key"):
        es.init(jnp.float32(1.0), jnp.zeros(3), params)


def test_legacy_uint32_keys_still_work(generation):
    es, state, _, params = generation[evopes.CMAES]
    population, _ = es.ask(jax.random.PRNGKey(3), state, params)
    assert population.shape == (8, 3)


@pytest.mark.parametrize("cls", CLASSIC, ids=lambda c: c.__name__)
def test_another_strategys_state_or_params_names_the_argument(generation, cls):
    es, state, population, params = generation[cls]
    # SepCMAES shares CMAES's params class and shapes, which are then interchangeable.
    other = evopes.OpenES if cls in (evopes.CMAES, evopes.SepCMAES) else evopes.CMAES
    _, other_state, _, other_params = generation[other]
    with pytest.raises(ValueError, match=r"^state: expected the"):
        es.ask(KEY, other_state, params)
    with pytest.raises(ValueError, match=r"^state: expected the"):
        es.tell(KEY, population, jnp.zeros(8), other_state, params)
    with pytest.raises(ValueError, match=r"^params: expected the"):
        es.ask(KEY, state, other_params)


def test_a_state_of_another_configuration_names_the_leaf(generation):
    """Same class and structure, another solution size: the leaf that differs is named."""
    es, state, _, params = generation[evopes.CMAES]
    bigger = classic(evopes.CMAES, jnp.zeros(5))
    bigger_state = bigger.init(KEY, jnp.zeros(5), bigger.default_params)
    with pytest.raises(ValueError, match=r"^state\.mean: expected shape \(3,\) .* got \(5,\)"):
        es.ask(KEY, bigger_state, params)


def test_open_es_state_handed_to_full_es_is_refused(generation):
    """They share a state class; FullES's has no optimizer moments, so the structure differs."""
    es, _, population, params = generation[evopes.FullES]
    _, open_es_state, _, _ = generation[evopes.OpenES]
    with pytest.raises(ValueError, match=r"^state: expected the structure of FullES's state"):
        es.tell(KEY, population, jnp.zeros(8), open_es_state, params)


def test_checks_cost_nothing_inside_jit(generation):
    """The checks run while tracing: a jitted generation compiles once and runs plainly."""
    es, state, _, params = generation[evopes.OpenES]

    @jax.jit
    def step(state, key):
        population, state = es.ask(key, state, params)
        return es.tell(key, population, jnp.sum(population**2, axis=1), state, params)[0]

    for key in jax.random.split(KEY, 3):
        state = step(state, key)
    assert step._cache_size() == 1
