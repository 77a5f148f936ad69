"""evosax's ``PersistentES`` and ``NoiseReuseES`` loop, on the evopes online engine.

evosax 0.3's online strategies take one fitness number per particle per
``ask``/``tell`` (the loss of a partial unroll of ``K`` inner steps that the
user runs with the population), keep ONE global counter of inner steps, and
reset the accumulated noise when it reaches ``T``; the user resets the inner
problem when ``state.inner_step_counter`` is back at 0. These classes accept
that loop unchanged (constructor, ``default_params`` with ``T`` and ``K``,
``init(key, mean, params)``, ``ask``, ``tell(key, population, fitness, ...)``,
``state.inner_step_counter``, evosax's metric names), so that code written for
evosax runs after changing the import.

Inside, each ``tell`` is one engine window of one step whose loss is the
fitness: the engine's estimate ``1 / (2P) sum_p sign_p f_p w_p`` with
``w_p = sum of the blocks e_j / std_j^2`` of the particle's episode is exactly
evosax's ``fitness . pert_accum / std^2 / population_size`` (for a constant
std; the engine weights each block at the std it was drawn with). When the
counter reaches ``T`` the window reports ``done`` for every particle, which
ends the episode: accumulators clear and the next ``ask`` draws fresh noise
(NRES), as evosax does.

The native loop (:class:`evopes.PES`, :class:`evopes.NRES` with inner states)
is better: per-particle resets and times, step-unlocking with a burn-in, the
per-step losses and ``done`` flags of an environment, and no global counter.
See the porting page of the documentation.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import struct

from evopes.compiled import compiled_method
from evopes.online.engine import OnlineES, OnlineParams, OnlineState
from evopes.online.nres import NRES
from evopes.online.pes import PES
from evopes.spec import PyTree


@struct.dataclass
class EvosaxOnlineParams:
    """evosax's online parameters.

    Attributes:
      T: inner steps of a whole unroll (episode); an integer >= 1.
      K: inner steps the user runs per ``ask``/``tell``; an integer >= 1.
    """

    T: int | jax.Array = 100
    K: int | jax.Array = 10


@struct.dataclass
class EvosaxOnlineState:
    """The engine's state plus evosax's global counter and best-so-far fields."""

    online: OnlineState
    inner_step_counter: jax.Array
    best_solution: jax.Array
    best_fitness: jax.Array
    generation_counter: jax.Array
    std: jax.Array

    @property
    def mean(self) -> jax.Array:
        return self.online.mean


class _EvosaxOnline:
    """Mixin: evosax's constructor and calls over an :class:`evopes.OnlineES` engine."""

    def __init__(
        self,
        population_size: int,
        solution: PyTree,
        optimizer: optax.GradientTransformation | None = None,
        std_schedule: Callable | None = None,
        fitness_shaping_fn: Callable | None = None,
        metrics_fn: Callable | None = None,
    ):
        # evosax's default optimizer; one global counter means lock-step particles.
        optimizer = optax.adam(learning_rate=1e-3) if optimizer is None else optimizer
        super().__init__(population_size, solution, 1, None, None, optimizer, step_unlocked=False)
        # evosax's default: a constant std of 1.
        std_schedule = optax.constant_schedule(1.0) if std_schedule is None else std_schedule
        if not callable(std_schedule):
            raise ValueError(
                f"std_schedule: expected a function of the generation, got {std_schedule!r}"
            )
        self.std_schedule = std_schedule
        self.fitness_shaping_fn = fitness_shaping_fn
        self.metrics_fn = metrics_fn

    @property
    def default_params(self) -> EvosaxOnlineParams:
        return EvosaxOnlineParams(T=100, K=10)

    def _online_params(self, generation_counter) -> OnlineParams:
        return OnlineParams(std=jnp.asarray(self.std_schedule(generation_counter), jnp.float32))

    @compiled_method()
    def init(self, key: jax.Array, mean: PyTree, params: EvosaxOnlineParams) -> EvosaxOnlineState:
        if not isinstance(params, EvosaxOnlineParams):
            raise ValueError(
                f"params: expected {type(self).__name__}.default_params (T, K), "
                f"got {type(params).__name__}"
            )
        online_params = self._online_params(0)
        online = OnlineES.init(self, key, mean, online_params)
        return EvosaxOnlineState(
            online=online,
            inner_step_counter=jnp.zeros((), jnp.int32),
            best_solution=online.mean,
            best_fitness=jnp.array(jnp.inf, jnp.float32),
            generation_counter=jnp.zeros((), jnp.int32),
            std=online_params.std,
        )

    @compiled_method()
    def ask(self, key: jax.Array, state: EvosaxOnlineState, params: EvosaxOnlineParams):
        online_params = self._online_params(state.generation_counter)
        population, online = OnlineES.ask(self, key, state.online, online_params)
        return population, state.replace(online=online, std=online_params.std)

    @compiled_method()
    def tell(
        self,
        key: jax.Array,
        population: PyTree,
        fitness: jax.Array,
        state: EvosaxOnlineState,
        params: EvosaxOnlineParams,
    ) -> tuple[EvosaxOnlineState, dict[str, Any]]:
        fitness = jnp.asarray(fitness, jnp.float32)
        if fitness.shape != (self.population_size,):
            raise ValueError(
                f"fitness: expected shape ({self.population_size},), got {fitness.shape}"
            )
        shaped = fitness
        if self.fitness_shaping_fn is not None:
            shaped = self.fitness_shaping_fn(population, fitness, state, params)
        counter = state.inner_step_counter + jnp.asarray(params.K, jnp.int32)
        episode_done = counter >= jnp.asarray(params.T, jnp.int32)
        dones = jnp.broadcast_to(episode_done, (1, self.population_size))
        online, online_metrics = OnlineES.tell(
            self,
            key,
            population,
            shaped[None, :],
            state.online,
            self._online_params(state.generation_counter),
            dones=dones,
        )
        flat = self.spec.ravel_population(population, self.population_size)
        finite = jnp.where(jnp.isfinite(fitness), fitness, jnp.inf)
        best = jnp.argmin(finite)
        improved = finite[best] < state.best_fitness
        state = state.replace(
            online=online,
            inner_step_counter=jnp.where(episode_done, 0, counter),
            best_solution=jnp.where(improved, flat[best], state.best_solution),
            best_fitness=jnp.where(improved, finite[best], state.best_fitness),
            generation_counter=state.generation_counter + 1,
        )
        metrics = {
            **online_metrics,
            # evosax's metric names.
            "best_fitness": state.best_fitness,
            "best_solution": self.spec.unravel(state.best_solution),
            "best_fitness_in_generation": finite[best],
            "best_solution_in_generation": self.spec.unravel(flat[best]),
            "best_solution_norm": jnp.linalg.norm(state.best_solution),
            "generation_counter": state.generation_counter,
        }
        if self.metrics_fn is not None:  # evosax's signature, on the flat population
            metrics.update(self.metrics_fn(key, flat, fitness, state, params))
        return state, metrics

    def get_mean(self, state) -> PyTree:
        return self.spec.unravel(state.mean)


class PersistentES(_EvosaxOnline, PES):
    """evosax's ``PersistentES`` constructor and loop, computed by :class:`evopes.PES`."""


class NoiseReuseES(_EvosaxOnline, NRES):
    """evosax's ``NoiseReuseES`` constructor and loop, computed by :class:`evopes.NRES`."""
