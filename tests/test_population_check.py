"""Classic strategies that read the population handed back never read a foreign one.

The issue's measurement: a population clipped to bounds changed OpenES's
gradient by 1.14 on an estimate of norm 0.84, silently. Every strategy that
reads its perturbations off the population (``reads_population_if_given``)
now keeps a checksum of the population ``ask`` produced; a clipped, edited or
foreign population is replaced by the population ``ask`` returned (rebuilt from
the state), so it gives the update of the population asked for, and
``metrics["population_mismatch"]`` is True.
"""

import re
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import evopes
from evopes.noise import GaussianNoise
from evopes.population_check import population_checksum
from evopes.strategies.simple_es import SimpleES
from evopes.strategies.snes import SNES

DIMS, POPULATION = 40, 8
READERS = {
    "OpenES": lambda: evopes.OpenES(POPULATION, jnp.zeros(DIMS), noise=GaussianNoise()),
    "FullES": lambda: evopes.FullES(POPULATION, jnp.zeros(DIMS), noise=GaussianNoise()),
    "ARS": lambda: evopes.ARS(POPULATION, jnp.zeros(DIMS)),
    "PGPE": lambda: evopes.PGPE(POPULATION, jnp.zeros(DIMS)),
    "SimpleES": lambda: SimpleES(POPULATION, jnp.zeros(DIMS)),
    "SNES": lambda: SNES(POPULATION, jnp.zeros(DIMS)),
    "LMMAES": lambda: evopes.LMMAES(POPULATION, jnp.zeros(DIMS)),
}


def _generation(name):
    es = READERS[name]()
    params = es.default_params
    mean = jnp.linspace(-1.0, 1.0, DIMS)
    state = es.init(jax.random.key(0), mean, params)
    population, state = es.ask(jax.random.key(1), state, params)
    return es, params, state, population


def _tell(es, params, state, population):
    fitness = jnp.sum(jnp.asarray(population) ** 2, axis=1)  # the population's own fitness
    return es.tell(jax.random.key(2), population, fitness, state, params)


def _close(a, b) -> None:
    """Equal up to float32 rounding (rebuilt and original populations may round apart)."""
    for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b), strict=True):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=1e-6, atol=1e-7)


def _with_fitness_of(es, params, state, handed, evaluated):
    fitness = jnp.sum(evaluated**2, axis=1)
    return es.tell(jax.random.key(2), handed, fitness, state, params)


@pytest.mark.parametrize("name", sorted(READERS))
def test_the_population_of_ask_is_read_and_gives_the_regenerated_update(name):
    es, params, state, population = _generation(name)
    assert es.reads_population_if_given
    read, metrics = _tell(es, params, state, population)
    assert not bool(metrics["population_mismatch"])
    rebuilt, none_metrics = _with_fitness_of(es, params, state, None, population)
    assert not bool(none_metrics["population_mismatch"])
    # Read off x or drawn again: the same update up to the rounding of x.
    np.testing.assert_allclose(read.mean, rebuilt.mean, rtol=1e-5, atol=1e-5)
    assert not np.array_equal(read.mean, state.mean)  # it did move


@pytest.mark.parametrize("name", sorted(READERS))
def test_a_clipped_population_is_flagged_and_gives_the_update_of_the_asked_population(name):
    es, params, state, population = _generation(name)
    clipped = jnp.clip(population, -0.9, 0.9)
    assert int(jnp.sum(clipped != population)) > 0
    # Evaluated at the clipped points either way; only what is handed back differs.
    flagged, metrics = _with_fitness_of(es, params, state, clipped, clipped)
    assert bool(metrics["population_mismatch"])
    recipe, recipe_metrics = _with_fitness_of(es, params, state, population, clipped)
    assert not bool(recipe_metrics["population_mismatch"])
    # The population ask returned is rebuilt and read: the recipe's update, except
    # the best solution, which is the point evaluated (as handed back).
    _close(flagged.replace(best_solution=0), recipe.replace(best_solution=0))
    best = int(jnp.argmin(jnp.sum(clipped**2, axis=1)))
    np.testing.assert_array_equal(flagged.best_solution, clipped[best])
    rebuilt, _ = _with_fitness_of(es, params, state, None, clipped)
    np.testing.assert_allclose(flagged.mean, rebuilt.mean, rtol=1e-5, atol=1e-5)
    # What reading the clipped population would have done: a different step.
    trusting = state.replace(population_checksum=population_checksum(clipped))
    silently, _ = _with_fitness_of(es, params, trusting, clipped, clipped)
    assert np.max(np.abs(silently.mean - rebuilt.mean)) > 1e-3


def test_the_population_of_ask_is_rebuilt_up_to_rounding():
    # The same function as in ask, but compiled apart: XLA may round a few entries
    # differently (one ulp: a fused multiply-add in one program and not the other).
    for name in sorted(READERS):
        es, params, state, population = _generation(name)
        rebuilt = es._asked_population(state, params)
        # One ulp of m or of std * z, whichever is larger (entries of size ~1 here).
        scale = np.abs(state.mean) + np.abs(np.asarray(population) - np.asarray(state.mean))
        assert np.all(np.abs(rebuilt - population) <= 1.2e-7 * scale + 1e-30), name


@pytest.mark.parametrize("name", sorted(READERS))
def test_one_ulp_in_the_last_entry_or_another_asks_population_is_flagged(name):
    es, params, state, population = _generation(name)
    last = population[-1, -1]
    nudged = population.at[-1, -1].set(jnp.nextafter(last, jnp.inf))
    _, metrics = _tell(es, params, state, nudged)
    assert bool(metrics["population_mismatch"])
    other, _ = es.ask(jax.random.key(9), state, params)
    _, metrics = _tell(es, params, state, other)
    assert bool(metrics["population_mismatch"])
    swapped = population[jnp.array([1, 0, *range(2, POPULATION)])]
    _, metrics = _tell(es, params, state, swapped)
    assert bool(metrics["population_mismatch"])


def test_the_checksum_is_exact_and_sees_every_entry():
    x = jax.random.normal(jax.random.key(0), (64, 300))
    reference = population_checksum(x)
    # Order of summation does not matter: integer sums are exact (a sharded or
    # fused sum gives the same word); a transposed copy is another population.
    assert int(jax.jit(population_checksum)(x)) == int(reference)
    assert int(population_checksum(x.T)) != int(reference)
    # Every single-entry change of a sample of positions changes it.
    rng = np.random.default_rng(0)
    for row, column in zip(rng.integers(0, 64, 200), rng.integers(0, 300, 200), strict=True):
        changed = x.at[row, column].set(jnp.nextafter(x[row, column], jnp.inf))
        assert int(population_checksum(changed)) != int(reference), (row, column)


def test_the_clipping_recipe_of_the_concepts_page_runs_and_the_flag_shows_the_other_way():
    page = Path(__file__).resolve().parent.parent / "docs" / "concepts" / "ask_tell.md"
    section = page.read_text().split("## The population handed back")[1]
    (code,) = re.findall(r"```python\n(.*?)```", section, flags=re.DOTALL)
    namespace = {}
    exec(compile(code, str(page), "exec"), namespace)
    # The page's box [0, 1]^8, optimum 0.8: ARS gets there from 0.2 in 100 generations
    # (within 0.03 with this seed; 0.05 allows for another platform's rounding).
    np.testing.assert_allclose(namespace["mean"], 0.8, atol=0.05)
    es, params = namespace["es"], namespace["params"]
    state = es.init(jax.random.key(0), jnp.full(8, 0.05), params)
    population, state = es.ask(jax.random.key(0), state, params)
    clipped = jnp.clip(population, 0.0, 1.0)
    assert int(jnp.sum(clipped != population)) > 0
    fitness = namespace["fitness_fn"](clipped)
    recipe, _ = es.tell(jax.random.key(0), population, fitness, state, params)
    handed_clipped, metrics = es.tell(jax.random.key(0), clipped, fitness, state, params)
    assert bool(metrics["population_mismatch"])
    np.testing.assert_allclose(handed_clipped.mean, recipe.mean, rtol=1e-5, atol=1e-6)
