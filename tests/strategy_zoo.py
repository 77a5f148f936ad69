"""Every strategy of evopes, built small, with one jittable "generation" each.

Shared by the reliability tests (checkpoints, run driver, properties, soak): a
case builds a strategy for a given solution template and population size, and
``generation(es)`` returns ``(state, key, params) -> (state, metrics)`` that
runs one ask/evaluate/tell round on a test problem: the sphere for classic
strategies, a per-particle "walk to one" system for online ones.
"""

from __future__ import annotations

import functools
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

#: A three-leaf solution (8 numbers) with float32, bfloat16 and float16 leaves, one of
#: them a scalar, so that flattening and mixed precision are exercised everywhere.
SOLUTION = {
    "w": jnp.zeros((2, 2)),
    "b": jnp.zeros(3, jnp.bfloat16),
    "h": jnp.zeros((), jnp.float16),
}
MEAN = {
    "w": jnp.full((2, 2), 0.5),
    "b": jnp.full(3, -0.5, jnp.bfloat16),
    "h": jnp.array(0.25, jnp.float16),
}

WINDOW = 2  # truncation length of the online cases
HORIZON = 8


def sphere(population, key):
    """f(x) = sum_i x_i^2 for every member of a population pytree."""
    del key
    leaves = jax.tree_util.tree_leaves(population)
    return sum(
        jnp.sum(jnp.reshape(leaf, (leaf.shape[0], -1)).astype(jnp.float32) ** 2, axis=1)
        for leaf in leaves
    )


def init_inner(key):
    """An inner state with two leaves, one of them an integer counter."""
    del key
    return {"position": jnp.zeros(3), "count": jnp.zeros((), jnp.int32)}


def walk_step(inner, theta, key):
    """The inner position drifts by theta's leaf means plus shared noise; loss = distance to 1."""
    drift = jnp.stack(
        [jnp.mean(leaf).astype(jnp.float32) for leaf in jax.tree_util.tree_leaves(theta)]
    )
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


#: Injection codes: 0 keeps the value, 1 NaN, 2 +inf, 3 -inf, 4 a huge finite value, 5 zero.
INJECTED = jnp.array([0.0, jnp.nan, jnp.inf, -jnp.inf, 1e30, 0.0], jnp.float32)


def inject(values, codes):
    """Replaces ``values`` by ``INJECTED[code]`` where ``codes`` is not 0."""
    if codes is None:
        return values
    return jnp.where(codes == 0, values, INJECTED[codes])


@dataclass(frozen=True)
class ClassicGeneration:
    """ask -> sphere fitness (with injected non-finite values) -> tell."""

    es: object
    fitness_fn: Callable = sphere

    def __call__(self, state, key, params, codes=None):
        ask_key, eval_key, tell_key = jax.random.split(key, 3)
        population, state = self.es.ask(ask_key, state, params)
        fitness = inject(self.fitness_fn(population, eval_key), codes)
        return self.es.tell(tell_key, population, fitness, state, params)


@dataclass(frozen=True)
class OnlineWindow:
    """ask -> unroll one window of ``walk_step`` (losses with injections) -> tell."""

    es: object
    step_fn: Callable = walk_step

    def __call__(self, state, key, params, codes=None):
        ask_key, unroll_key, tell_key = jax.random.split(key, 3)
        population, state = self.es.ask(ask_key, state, params)
        inner, losses, dones = evopes.unroll(
            self.step_fn, population, state.inner_state, unroll_key, self.es.truncation_length
        )
        losses = inject(losses, codes)
        return self.es.tell(
            tell_key, population, losses, state, params, inner_state=inner, dones=dones
        )


def generation(case: Case, es) -> Callable:
    return OnlineWindow(es) if case.online else ClassicGeneration(es)


def code_shape(case: Case, es) -> tuple[int, ...]:
    """Shape of one generation's injection codes: fitness (P,) or losses (W, P)."""
    return (es.truncation_length, es.population_size) if case.online else (es.population_size,)


#: State fields that may legitimately hold +inf ("nothing finite seen yet").
MAY_BE_INFINITE = ("best_fitness", "fitness_history")
#: The user's system lives in the state of online strategies but is not the strategy's:
#: an inner state that diverges is the system's business (it may signal ``done``).
USER_OWNED = ("inner_state",)


def state_is_sound(state) -> jax.Array:
    """True when no float leaf is NaN and every leaf but MAY_BE_INFINITE is finite."""
    checks = [jnp.array(True)]
    for path, leaf in jax.tree_util.tree_flatten_with_path(state)[0]:
        name = jax.tree_util.keystr(path)
        if not jnp.issubdtype(leaf.dtype, jnp.inexact) or any(
            owned in name for owned in USER_OWNED
        ):
            continue
        if any(allowed in name for allowed in MAY_BE_INFINITE):
            checks.append(~jnp.any(jnp.isnan(leaf)))
        else:
            checks.append(jnp.all(jnp.isfinite(leaf)))
    return jnp.all(jnp.stack(checks))


def strong_params(params, **changes):
    """``params`` with ``changes``, every leaf a strongly typed array.

    Uniform leaf types (no Python floats, which trace as weak types) give every
    call of :func:`advance` the same signature, hence a single compilation.
    """
    strong = jax.tree.map(lambda leaf: jnp.asarray(leaf, jnp.asarray(leaf).dtype), params)
    return strong.replace(
        **{name: jnp.asarray(v, getattr(strong, name).dtype) for name, v in changes.items()}
    )


def advance(step, state, key, params, codes):
    """Runs ``codes.shape[0]`` generations with lax.scan (one compile per strategy).

    Returns the final state and, per generation, whether the state was sound
    and the metrics. Weak types are dropped first (a state fresh from ``init``
    and one returned by the scan then share the compiled code).
    """
    strong = lambda x: jnp.asarray(x, x.dtype) if getattr(x, "weak_type", False) else x
    return _advance(step, jax.tree.map(strong, state), key, strong_params(params), codes)


@functools.partial(jax.jit, static_argnums=0)
def _advance(step, state, key, params, codes):

    def body(state, inputs):
        index, generation_codes = inputs
        state, metrics = step(state, jax.random.fold_in(key, index), params, generation_codes)
        # The mean as the user sees it, in the leaves' dtypes, must be finite too.
        user_mean = jax.tree_util.tree_leaves(step.es.get_mean(state))
        sound = state_is_sound(state) & jnp.all(
            jnp.stack([jnp.all(jnp.isfinite(leaf)) for leaf in user_mean])
        )
        return state, (sound, metrics)

    return jax.lax.scan(body, state, (jnp.arange(codes.shape[0]), codes))


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


def stds_per_generation(es, generations: int) -> tuple[list[float], object]:
    """The std each of ``generations`` generations used (fitness: the first coordinate)
    from mean 1 in every coordinate, and the final state."""
    params = es.default_params
    state = es.init(jax.random.key(0), jnp.ones(es.num_dims), params)
    stds = []
    for generation in range(generations):
        population, state = es.ask(jax.random.key(generation), state, params)
        stds.append(float(state.std))
        state, _ = es.tell(jax.random.key(generation), population, population[:, 0], state, params)
    return stds, state


def zero_inner(key):
    """A scalar inner state that starts at 0 (for online strategies' smallest systems)."""
    del key
    return jnp.zeros(())


def halving_step(s, theta, key):
    """s <- s / 2 + sum(theta), loss s^2, no done: a tiny stable inner system."""
    del key
    s = 0.5 * s + jnp.sum(theta)
    return s, s**2, None
