"""Every strategy of evopes, built small, with one jittable "generation" each.

Shared by the reliability tests (checkpoints, run driver, properties, soak): a
case builds a strategy for a given solution template and population size, and
``generation(es)`` returns ``(state, key, params) -> (state, metrics)`` that
runs one ask/evaluate/tell round on a test problem: the sphere for classic
strategies, a per-particle "walk to one" system for online ones.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np
import optax

import evopes
from evopes.strategies.cma_es import CMAES
from evopes.strategies.full_es import FullES
from evopes.strategies.open_es import OpenES

#: A two-leaf solution (7 numbers) so that flattening is exercised.
SOLUTION = {"w": jnp.zeros((2, 2)), "b": jnp.zeros(3)}
MEAN = {"w": jnp.full((2, 2), 0.5), "b": jnp.full(3, -0.5)}

WINDOW = 2  # truncation length of the online cases
HORIZON = 8


def sphere(population, key):
    """f(x) = sum_i x_i^2 for every member of a population pytree."""
    del key
    leaves = jax.tree_util.tree_leaves(population)
    return sum(jnp.sum(jnp.reshape(leaf, (leaf.shape[0], -1)) ** 2, axis=1) for leaf in leaves)


def init_inner(key):
    """An inner state with two leaves, one of them an integer counter."""
    del key
    return {"position": jnp.zeros(3), "count": jnp.zeros((), jnp.int32)}


def walk_step(inner, theta, key):
    """The inner position drifts by theta's leaf means plus shared noise; loss = distance to 1."""
    drift = jnp.stack([jnp.mean(leaf) for leaf in jax.tree_util.tree_leaves(theta)])
    drift = jnp.resize(drift, inner["position"].shape)
    position = 0.9 * inner["position"] + drift + 0.01 * jax.random.normal(key, (3,))
    loss = jnp.sum((position - 1.0) ** 2)
    return {"position": position, "count": inner["count"] + 1}, loss, False


@dataclass(frozen=True)
class Case:
    name: str
    make: Callable  # (solution, population_size) -> strategy
    online: bool


def _online(cls, **kwargs):
    def make(solution, population_size):
        return cls(
            population_size=population_size,
            solution=solution,
            truncation_length=WINDOW,
            horizon=HORIZON,
            init_inner=init_inner,
            optimizer=optax.sgd(1e-2),
            **kwargs,
        )

    return make


def _classic_cases() -> list[Case]:
    cases = [Case("CMAES", lambda s, n: CMAES(population_size=n, solution=s), False)]
    try:
        from evopes.strategies.sep_cma_es import SepCMAES
    except ImportError:
        pass
    else:
        cases.append(Case("SepCMAES", lambda s, n: SepCMAES(population_size=n, solution=s), False))
    cases += [
        Case("OpenES", lambda s, n: OpenES(n, s, noise=evopes.NoiseTable(size=4096)), False),
        Case("FullES", lambda s, n: FullES(n, s), False),
    ]
    return cases


CASES: list[Case] = _classic_cases() + [
    Case("TES", _online(evopes.TES), True),
    Case("PES", _online(evopes.PES), True),
    Case("GPES", _online(evopes.GPES, noise_period=2 * WINDOW), True),
    Case("NRES", _online(evopes.NRES), True),
]
CASE_IDS = [case.name for case in CASES]


@dataclass(frozen=True)
class ClassicGeneration:
    es: object
    fitness_fn: Callable = sphere

    def __call__(self, state, key, params):
        ask_key, eval_key, tell_key = jax.random.split(key, 3)
        population, state = self.es.ask(ask_key, state, params)
        fitness = self.fitness_fn(population, eval_key)
        return self.es.tell(tell_key, population, fitness, state, params)


@dataclass(frozen=True)
class OnlineWindow:
    es: object
    step_fn: Callable = walk_step

    def __call__(self, state, key, params):
        ask_key, unroll_key, tell_key = jax.random.split(key, 3)
        population, state = self.es.ask(ask_key, state, params)
        inner, losses, dones = evopes.unroll(
            self.step_fn, population, state.inner_state, unroll_key, self.es.truncation_length
        )
        return self.es.tell(tell_key, population, losses, state, params, inner_state=inner, dones=dones)


def generation(case: Case, es) -> Callable:
    return OnlineWindow(es) if case.online else ClassicGeneration(es)


def objective(case: Case) -> Callable:
    """What the run driver takes: a fitness function or an online step function."""
    return walk_step if case.online else sphere


def tree_bytes(tree) -> list[tuple[str, str, tuple, bytes]]:
    """Every leaf as (path, dtype, shape, bytes), PRNG keys by their key data: exact comparison."""
    rows = []
    for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
        dtype = str(getattr(leaf, "dtype", type(leaf).__name__))
        if hasattr(leaf, "dtype") and jax.dtypes.issubdtype(leaf.dtype, jax.dtypes.prng_key):
            leaf = jax.random.key_data(leaf)
        array = np.asarray(leaf)
        rows.append((jax.tree_util.keystr(path), dtype, array.shape, array.tobytes()))
    return rows
