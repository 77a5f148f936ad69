"""The ask/tell contract shared by every population-based strategy.

A :class:`Strategy` is static configuration only (population size, solution
shape, fitness shaping, ...). It hashes and compares by that configuration and
is registered as a static pytree, so

* two strategies built with the same arguments share compiled code, and
* a strategy can be passed as an argument to a jitted function.

Numbers a user may want to ``vmap`` over live in a ``Params`` pytree
(``es.default_params``); the evolving state lives in a ``State`` pytree. Both
are immutable ``flax.struct`` dataclasses with ``.replace``.

Template method (as in evosax): the public ``init/ask/tell`` do the work every
strategy shares — validating input, (un)flattening pytrees, sign flips for
maximisation, best-so-far tracking, counters and metrics — and call the
subclass's private ``_init/_ask/_tell``, which only implement the algorithm on
flat arrays of shape ``(num_dims,)`` and ``(population_size, num_dims)``.

Fitness is minimised; pass ``maximize=True`` to maximise instead.

Called eagerly (an evosax-style Python loop), ``init``, ``ask``, ``tell`` and
``get_mean`` compile themselves, with the strategy as a static argument
(:func:`evopes.compiled.compiled_method`); inside your own ``jit``, ``vmap``
or ``scan`` they are plain functions and add nothing. A strategy is
immutable once built.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from evopes.arguments import check_key, check_like
from evopes.compiled import compiled_method
from evopes.config_key import static_key
from evopes.field_flags import FieldFlags
from evopes.population_check import population_checksum
from evopes.spec import PyTree, SolutionSpec

Metrics = dict[str, Any]


@struct.dataclass
class State:
    """Fields every strategy state has. ``mean`` and ``best_solution`` are flat."""

    mean: jax.Array
    best_solution: jax.Array
    best_fitness: jax.Array
    generation_counter: jax.Array


@struct.dataclass
class Params:
    """Base class of strategy hyperparameters (vmappable numbers only)."""


class Strategy:
    """Base class: static configuration, and the shared ``init/ask/tell`` template.

    Subclasses list their configuration in ``__init__`` and call
    ``super().__init__``; they implement ``_init``, ``_ask``, ``_tell`` and
    ``default_params``.

    Args:
      population_size: number of members per generation.
      solution: a template pytree with the shape of one solution (arrays or
        ``jax.ShapeDtypeStruct``); only shapes and dtypes are kept.
      maximize: maximise fitness instead of minimising it.
    """

    #: Whether ``_tell`` reads the flat population. Strategies that rebuild
    #: their perturbations from the state set this to False, and ``tell``
    #: then never re-flattens the population handed back by the user.
    uses_population: bool = True
    #: For strategies with ``uses_population = False``: whether ``_tell`` still
    #: reads the flat population when one is handed back (because that is
    #: cheaper than rebuilding it); ``tell`` then flattens a given population
    #: and passes None otherwise. Such a strategy's state has a
    #: ``population_checksum`` field: ``ask`` fills it and ``tell`` passes the
    #: population on only if it matches (:mod:`evopes.population_check`).
    reads_population_if_given: bool = False

    #: Documented valid range of each ``Params`` field: ``name -> (low, high)``,
    #: both inclusive. Checked for concrete values at ``init`` (ValueError naming
    #: the field); under ``jit``, where values are traced, an invalid field is
    #: replaced by its default before it is used, ``tell`` skips the update, and
    #: ``metrics["invalid_params"]`` / ``metrics["terminate"]`` say so.
    param_ranges: dict[str, tuple[float, float]] = {}

    #: The dtype of flat solutions, of the state and of the best fitness.
    #: float32 unless a subclass follows the solution's precision (CMA-ES:
    #: ``self.dtype = self.spec.precision``, float64 under ``jax_enable_x64``).
    dtype = jnp.dtype(jnp.float32)
    #: Whether ``_tell`` receives the fitness in its own floating dtype (float64
    #: under x64 stays float64), so that ranking never rounds it; otherwise the
    #: fitness is cast to float32 first.
    ranks_in_fitness_dtype: bool = False

    def __init__(self, population_size: int, solution: PyTree, *, maximize: bool = False):
        if int(population_size) != population_size or population_size < 2:
            raise ValueError(f"population_size: expected an integer >= 2, got {population_size!r}")
        self.population_size = int(population_size)
        self.spec = SolutionSpec.from_template(solution)
        if self.spec.num_dims == 0:
            raise ValueError(
                "solution: expected a pytree holding at least one number, got "
                f"{jax.tree_util.tree_structure(solution)} with leaf shapes {self.spec.shapes}"
            )
        self.maximize = bool(maximize)

    # -- configuration identity -------------------------------------------
    def _config(self) -> tuple:
        """Everything that defines this strategy; used for hashing and equality."""
        # Closures (init_inner, optax transformations) compare by code and captured
        # values, arrays and PRNG keys by value: equal configurations share compiled code.
        return tuple(
            sorted(
                (name, static_key(value))
                for name, value in vars(self).items()
                if not name.startswith("_cached")
            )
        )

    def _config_key(self) -> tuple:
        """``_config()``, computed once: every eager call of a compiled method looks it up.

        A strategy is immutable once built, so the key never goes stale.
        """
        cached = self.__dict__.get("_cached_config")
        if cached is None:
            cached = self.__dict__["_cached_config"] = self._config()
        return cached

    def __hash__(self) -> int:
        cached = self.__dict__.get("_cached_hash")
        if cached is None:
            cached = self.__dict__["_cached_hash"] = hash((type(self), self._config_key()))
        return cached

    def __eq__(self, other) -> bool:
        return type(self) is type(other) and (
            self is other or self._config_key() == other._config_key()
        )

    def __repr__(self) -> str:
        name = type(self).__name__
        return f"{name}(population_size={self.population_size}, num_dims={self.num_dims})"

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        jax.tree_util.register_static(cls)

    @property
    def num_dims(self) -> int:
        return self.spec.num_dims

    @property
    def default_params(self) -> Params:
        raise NotImplementedError

    # -- public template ----------------------------------------------------
    @compiled_method(before=lambda self, key, mean, params: self._check_init(mean, params))
    def init(self, key: jax.Array, mean: PyTree, params: Params) -> State:
        """Initial state centred on ``mean`` (a pytree shaped like ``solution``)."""
        check_key(key)
        self._check_params_type(params)
        self.validate_params(params)
        params, _ = self._sanitized(params)  # under jit: nothing invalid enters the state
        flat_mean = self.spec.ravel(mean, self.dtype)
        state = self._init(key, flat_mean, params)
        return state.replace(
            mean=self._genotype(flat_mean),
            best_solution=flat_mean,
            best_fitness=jnp.array(jnp.inf, self.dtype),
            generation_counter=jnp.array(0, jnp.int32),
        )

    @compiled_method()
    def ask(self, key: jax.Array, state: State, params: Params) -> tuple[PyTree, State]:
        """Samples a population: a pytree whose leaves have a leading population axis."""
        self._check_call(key, state, params)
        params, _ = self._sanitized(params)
        flat_population, state = self._ask(key, state, params)
        if self.reads_population_if_given:
            # Recognised in tell before it is read (evopes.population_check).
            state = state.replace(population_checksum=population_checksum(flat_population))
        return self.spec.unravel_population(flat_population), state

    @compiled_method()
    def tell(
        self,
        key: jax.Array,
        population: PyTree | None,
        fitness: jax.Array,
        state: State,
        params: Params,
    ) -> tuple[State, Metrics]:
        """Updates the state from the fitness of the population returned by ``ask``.

        ``population`` may be ``None`` for strategies that rebuild their
        perturbations from the state (``uses_population = False``).
        """
        self._check_call(key, state, params)
        fitness = self._check_fitness(fitness)
        raw_fitness = -fitness if self.maximize else fitness
        flat_population = None
        if self.uses_population:
            if population is None:
                raise ValueError(
                    f"population: {type(self).__name__}.tell needs the population, got None"
                )
            flat_population = self.spec.ravel_population(
                population, self.population_size, self.dtype
            )
        elif population is not None:
            self.spec.check(population, "population", batch_shape=(self.population_size,))
            if self.reads_population_if_given:
                flat_population = self.spec.ravel_population(
                    population, self.population_size, self.dtype
                )

        # Sanitised first: _member may rebuild the member from params (LM-MA-ES).
        params, invalid = self._sanitized(params)
        finite = jnp.isfinite(raw_fitness)
        ranked = jnp.where(finite, raw_fitness, jnp.inf)
        best_index = jnp.argmin(ranked)
        generation_best = ranked[best_index]
        best_member = self._member(flat_population, best_index, state, params)

        new_state, extra = self._checked_tell(key, flat_population, raw_fitness, state, params)
        if invalid:
            # A traced hyperparameter outside its range: no update, and the run stops.
            invalid = FieldFlags.from_dict(invalid)
            any_invalid = jnp.any(invalid.flags)
            new_state = jax.tree_util.tree_map(
                lambda old, new: jnp.where(any_invalid, old, new), state, new_state
            )
            extra = {
                **extra,
                "invalid_params": invalid,
                "terminate": jnp.asarray(extra.get("terminate", False)) | any_invalid,
            }

        generation_best = generation_best.astype(state.best_fitness.dtype)
        improved = generation_best < state.best_fitness
        new_state = new_state.replace(
            best_solution=jnp.where(improved, best_member, state.best_solution),
            best_fitness=jnp.where(improved, generation_best, state.best_fitness),
            generation_counter=state.generation_counter + 1,
        )
        sign = -1.0 if self.maximize else 1.0
        metrics = {
            "best_fitness": sign * new_state.best_fitness,
            "best_solution": self.spec.unravel(new_state.best_solution),
            "best_fitness_in_generation": sign * generation_best,
            # evosax's keys too: the generation's best member as handed back, and a norm.
            "best_solution_in_generation": self.spec.unravel(best_member),
            "best_solution_norm": jnp.linalg.norm(new_state.best_solution),
            # NaN when nothing finite was seen (not a perfect 0); divided before
            # summing, so finite values up to float32's maximum cannot overflow it.
            "mean_fitness": sign
            * jnp.where(
                finite.any(),
                jnp.sum(jnp.where(finite, raw_fitness, 0.0) / jnp.maximum(finite.sum(), 1)),
                jnp.nan,
            ),
            "num_nonfinite": jnp.sum(~finite),
            "generation_counter": new_state.generation_counter,
            **extra,
        }
        return new_state, metrics

    def _checked_tell(self, key, flat_population, fitness, state, params):
        """``_tell``, reading a handed-back population only if ``ask`` produced it.

        A population that is not bit for bit the last ``ask``'s (clipped,
        edited, from another ``ask``) is replaced by the one ``ask`` returned,
        rebuilt from the state, so the update is that of the population asked
        for; ``metrics["population_mismatch"]`` is True.
        """
        if not self.reads_population_if_given:
            return self._tell(key, flat_population, fitness, state, params)
        if flat_population is None:
            new_state, extra = self._tell(key, None, fitness, state, params)
            return new_state, {**extra, "population_mismatch": jnp.array(False)}
        mismatch = population_checksum(flat_population) != state.population_checksum
        # Only the population is chosen by the branch (a branch around the whole
        # update costs a few microseconds a generation on CPU: more than the
        # update of a small problem); a foreign one is replaced by ask's own.
        population = jax.lax.cond(
            mismatch, lambda: self._asked_population(state, params), lambda: flat_population
        )
        new_state, extra = self._tell(key, population, fitness, state, params)
        return new_state, {**extra, "population_mismatch": mismatch}

    @compiled_method()
    def get_mean(self, state: State) -> PyTree:
        """The current mean (search centre) as a pytree shaped like ``solution``."""
        return self.spec.unravel(self._phenotype(state.mean))

    def _phenotype(self, flat: jax.Array) -> jax.Array:
        """The solution a flat search point stands for (identity; see the bounded CMA-ES)."""
        return flat

    def _genotype(self, flat: jax.Array) -> jax.Array:
        """A flat search point standing for the solution ``flat`` (inverse of ``_phenotype``)."""
        return flat

    def get_best_solution(self, state: State) -> PyTree:
        return self.spec.unravel(state.best_solution)

    # -- validation -----------------------------------------------------------
    def _check_init(self, mean: PyTree, params: Params) -> None:
        """Eager checks of ``init``'s concrete arguments (before it is compiled)."""
        self.validate_params(params)

    def _expected_state(self) -> State:
        """Shapes and dtypes of this strategy's state (traced once, then kept)."""
        if "_state_shapes" not in self.__dict__:
            mean = self.spec.unravel(jnp.zeros(self.num_dims))
            self._state_shapes = jax.eval_shape(
                self._unchecked_init, jax.random.key(0), mean, self.default_params
            )
        return self._state_shapes

    def _unchecked_init(self, key, mean, params):
        return self.init.__wrapped__(self, key, mean, params)

    def _check_params_type(self, params) -> None:
        check_like("params", params, self.default_params, type(self).__name__)

    def _check_call(self, key, state, params) -> None:
        """ValueErrors naming the argument for a key, state or params of the wrong kind."""
        check_key(key)
        check_like("state", state, self._expected_state(), type(self).__name__)
        self._check_params_type(params)

    def _check_fitness(self, fitness) -> jax.Array:
        if not isinstance(fitness, jax.Array | np.ndarray | np.number | list | tuple | float | int):
            raise ValueError(
                f"fitness: expected an array of shape ({self.population_size},), "
                f"got {type(fitness).__name__}"
            )
        fitness = jnp.asarray(fitness)
        if fitness.shape != (self.population_size,):
            raise ValueError(
                f"fitness: expected shape ({self.population_size},), got {tuple(fitness.shape)}"
            )
        if not jnp.issubdtype(fitness.dtype, jnp.floating) and not jnp.issubdtype(
            fitness.dtype, jnp.integer
        ):
            raise ValueError(f"fitness: expected a real dtype, got {fitness.dtype}")
        if self.ranks_in_fitness_dtype and fitness.dtype == jnp.float64:
            # A float32 cast would merge fitness values that differ by less than
            # 6e-8 of their size (COCO's offsets f_opt reach 1000): rank them as given.
            return fitness
        return fitness.astype(jnp.promote_types(self.dtype, jnp.float32))

    def validate_params(self, params: Params) -> None:
        """Checks concrete hyperparameter values against :attr:`param_ranges`; traced values
        are skipped (see :meth:`_valid_params`).

        Subclasses add their own checks (shapes, relations between fields).
        """
        if not isinstance(params, Params):
            raise ValueError(
                f"params: expected {type(self).__name__}'s Params (es.default_params), "
                f"got {type(params).__name__}"
            )
        for name, (low, high) in self.param_ranges.items():
            value = getattr(params, name)
            if isinstance(value, jax.core.Tracer):
                continue
            # Compared in float32, as the traced check does (1e30 rounds up in float32).
            array = np.asarray(value, np.float32)
            low32, high32 = np.float32(low), np.float32(high)
            if not (
                np.all(np.isfinite(array) | (array == high32))
                and np.all(array >= low32)
                and np.all(array <= high32)
            ):
                raise ValueError(
                    f"params.{name}: expected a value in [{low:g}, {high:g}], got {array}"
                )

    def _valid_params(self, params: Params) -> dict[str, jax.Array]:
        """Traced check of every ranged field: ``name -> True where valid``."""
        valid = {}
        for name, (low, high) in self.param_ranges.items():
            value = jnp.asarray(getattr(params, name), jnp.float32)
            ok = (value >= low) & (value <= high) & ~jnp.isnan(value)
            valid[name] = jnp.all(ok)
        return valid

    def _sanitized(self, params: Params) -> tuple[Params, dict[str, jax.Array]]:
        """``params`` with invalid fields replaced by their defaults, and ``name -> invalid``."""
        if not self.param_ranges:
            return params, {}
        valid = self._valid_params(params)
        defaults = self.default_params
        replaced = {
            name: jnp.where(ok, jnp.asarray(getattr(params, name)), getattr(defaults, name))
            for name, ok in valid.items()
        }
        return params.replace(**replaced), {name: ~ok for name, ok in valid.items()}

    # -- to implement ---------------------------------------------------------
    def _init(self, key: jax.Array, mean: jax.Array, params: Params) -> State:
        raise NotImplementedError

    def _ask(self, key: jax.Array, state: State, params: Params) -> tuple[jax.Array, State]:
        raise NotImplementedError

    def _tell(
        self,
        key: jax.Array,
        population: jax.Array | None,
        fitness: jax.Array,
        state: State,
        params: Params,
    ) -> tuple[State, Metrics]:
        raise NotImplementedError

    def _asked_population(self, state: State, params: Params) -> jax.Array:
        """The flat population the last ``ask`` returned, rebuilt from the state (strategies
        with ``reads_population_if_given``; ``_ask`` returns this very function's result)."""
        raise NotImplementedError

    def _member(
        self, population: jax.Array | None, index: jax.Array, state: State, params: Params
    ) -> jax.Array:
        """Flat member ``index`` of the last population; override to rebuild it from the state."""
        if jax.device_count() == 1:  # one row read, not the whole population
            return jax.lax.dynamic_index_in_dim(population, index, keepdims=False)
        # A masked sum, not population[index]: when the population is sharded
        # over devices, indexing gathers all of it onto every device, while
        # the sum is a local select plus an all-reduce of num_dims numbers.
        is_member = jnp.arange(population.shape[0]) == index
        return jnp.sum(jnp.where(is_member[:, None], population, 0.0), axis=0)


def check_positive(params: Params, *names: str) -> None:
    """ValueError if a concrete (non-traced) field of ``params`` is <= 0 or non-finite."""
    for name in names:
        value = getattr(params, name)
        if isinstance(value, jax.core.Tracer):
            continue
        array = np.asarray(value)
        if not np.all(np.isfinite(array)) or np.any(array <= 0):
            raise ValueError(f"params.{name}: expected a finite value > 0, got {array}")
