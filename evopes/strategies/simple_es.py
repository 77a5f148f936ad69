"""SimpleES: a Gaussian ES that recombines its elite and smooths its per-coordinate std.

The "simple Gaussian ES" of evosax (its ``SimpleES``, after Rechenberg's
evolution strategy), described by Ha (2017, "A Visual Guide to Evolution
Strategies", blog.otoro.net): keep the mean of the best members, and estimate
each coordinate's spread from the same members measured from the *previous*
mean, the estimator Ha describes for CMA-ES and Hansen's tutorial (arXiv
1604.00772) uses for its rank-mu update, restricted to the diagonal. The
spread is smoothed with rate c_sigma, as in the smoothed cross-entropy method
(de Boer, Kroese, Mannor, Rubinstein 2005, "A Tutorial on the Cross-Entropy
Method"), so that one unlucky generation cannot collapse it.

With lambda members x_k = m + sigma * z_k, z_k ~ N(0, I), w_i the weight of
rank i (1 = best, lowest fitness; default w_i = 1 / mu for the mu = floor(
elite_ratio lambda) best, 0 for the rest, weights summing to 1), y_i =
x_{i:lambda} - m the step of the member of rank i, one generation is

    m     <- m + c_m sum_i w_i y_i                                    (mean)
    sigma <- (1 - c_sigma) sigma + c_sigma sqrt(sum_i w_i y_i^2)      (std, elementwise)

with the square and the root taken per coordinate and both sums using the
old m. With c_m = 1 (default) the new mean is the weighted mean of the elite;
the defaults c_sigma = 0.1 and elite_ratio = 0.5 are evosax's.

This is a weighted-recombination (mu/mu_w, lambda)-ES with a diagonal,
cumulation-free variance estimate: it has no step-size control, so on
ill-conditioned or curved problems its sigma can shrink before the mean
arrives (the tests measure how close it gets).

evosax's constructor arguments (``SimpleES(population_size, solution, optimizer,
fitness_shaping_fn, metrics_fn)``): with an optax ``optimizer`` the mean moves
by ``optimizer.update(-c_m sum_i w_i y_i)`` (:func:`evopes.evosax_args.optax_mean_update`),
its state in ``state.opt_state``; evosax's default ``optax.sgd(1.0)`` is the
mean rule above exactly, and so is ``optimizer=None`` (the default here, without
an optimizer state).

Numerical guards. Non-finite fitness ranks worst and its member gets weight 0;
the weights of the finite members are renormalised to sum to one, so a
generation with many failures still averages only finite members. A generation
with fewer than two distinct finite fitness values, or whose new mean, sigma
or optimizer state is not finite, makes no update (``update_skipped``). sigma is clipped to
[``std_min``, ``std_max``].

Where y comes from. ``tell`` reads y_i = x_i - m off the population handed
back (float32 solutions), exact up to the rounding of x at |m|, and one read
of it; with ``population=None`` (or narrower leaves, whose rounding would
spoil y) it regenerates z from the key of ``ask`` instead, y_i = sigma z_i.
Regenerating costs a second round of random numbers, which XLA fuses into
every consumer of z: reading is the cheaper of the two.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import struct

from evopes import shaping, threefry
from evopes.evosax_args import (
    check_metrics_fn,
    check_optimizer,
    check_rank_weights_shaping,
    init_opt_state,
    optax_mean_update,
)
from evopes.finite import all_finite
from evopes.population_check import no_checksum
from evopes.spec import PyTree, SolutionSpec
from evopes.strategies.xnes import check_std_bounds, has_ranking, raw_key, valid_std_bounds
from evopes.strategy import Params, State, Strategy

#: Weights summing to less are refused: XLA on CPU flushes subnormal numbers
#: (below this) to zero, so a compiled generation would see a zero sum.
_SMALLEST_NORMAL = float(np.finfo(np.float32).tiny)


def elite_weights(population_size: int, elite_ratio: float) -> np.ndarray:
    """w_i = 1 / mu for the mu = max(1, floor(elite_ratio lambda)) best ranks, else 0."""
    num_elites = max(1, int(elite_ratio * population_size))
    return np.where(np.arange(population_size) < num_elites, 1.0 / num_elites, 0.0)


@struct.dataclass
class SimpleESParams(Params):
    """Hyperparameters of :class:`SimpleES` (vmappable).

    Attributes:
      std_init: every sigma_i of the first generation, in [1e-30, 1e20].
      std_min, std_max: each sigma_i is clipped to [std_min, std_max]; std_min in
        [0, 1e20], std_max in [1e-30, 1e30], std_min <= std_init <= std_max.
      c_mean: c_m, step of the mean towards the elite mean, in [0, 1].
      c_std: c_sigma, smoothing rate of sigma, in [0, 1].
      weights: w by rank, best first, shape (lambda,), each in [0, 1] with a
        positive sum (they are renormalised to sum to 1).
    """

    std_init: jax.Array
    std_min: jax.Array
    std_max: jax.Array
    c_mean: jax.Array
    c_std: jax.Array
    weights: jax.Array


@struct.dataclass
class SimpleESState(State):
    """State of :class:`SimpleES`.

    Attributes:
      std: sigma, one per coordinate.
      ask_key: the key of the last ``ask`` as raw key data: z is regenerated from it.
      population_checksum: checksum of the last ``ask``'s population
        (:mod:`evopes.population_check`); ``tell`` reads only that population.
      opt_state: the optimizer's state of the mean; ``()`` without an optimizer.
    """

    std: jax.Array
    ask_key: jax.Array
    population_checksum: jax.Array
    opt_state: optax.OptState = ()


class SimpleES(Strategy):
    """Simple Gaussian evolution strategy: elite mean, smoothed per-coordinate std.

    Args:
      population_size: lambda; default 4 + floor(3 ln d).
      solution: template pytree of one solution.
      optimizer: evosax's argument: an optax transformation of the mean's step
        (module docstring); None (default) is the mean rule above, which is
        evosax's default ``optax.sgd(1.0)`` exactly.
      fitness_shaping_fn: evosax's argument: ``weights_fitness_shaping_fn`` (evosax's
        default, ``params.weights`` by rank) or None; others raise.
      metrics_fn: evosax's argument; must be None.
      elite_ratio: fraction of the population in the default elite, in (0, 1].
      maximize: maximise fitness instead of minimising it.
    """

    uses_population = False

    @property
    def reads_population_if_given(self) -> bool:
        return self.spec.all_float32

    param_ranges = {
        "std_init": (1e-30, 1e20),
        "std_min": (0.0, 1e20),
        "std_max": (1e-30, 1e30),
        "c_mean": (0.0, 1.0),
        "c_std": (0.0, 1.0),
        "weights": (0.0, 1.0),
    }

    def __init__(
        self,
        population_size: int | None = None,
        solution: PyTree = None,
        optimizer: optax.GradientTransformation | None = None,
        fitness_shaping_fn: Callable | None = shaping.weights_fitness_shaping_fn,
        metrics_fn: Callable | None = None,
        *,
        elite_ratio: float = 0.5,
        maximize: bool = False,
    ):
        if solution is None:
            raise ValueError("solution: expected a template pytree, got None")
        if population_size is None:
            num_dims = SolutionSpec.from_template(solution).num_dims
            population_size = 4 + int(math.floor(3 * math.log(num_dims)))
        super().__init__(population_size, solution, maximize=maximize)
        if not 0.0 < elite_ratio <= 1.0:
            raise ValueError(f"elite_ratio: expected a value in (0, 1], got {elite_ratio!r}")
        self.elite_ratio = float(elite_ratio)
        check_optimizer(optimizer, allow_none=True)
        check_rank_weights_shaping(fitness_shaping_fn, "weights")
        check_metrics_fn(metrics_fn)
        self.optimizer = optimizer

    @property
    def default_params(self) -> SimpleESParams:
        f32 = lambda value: jnp.asarray(value, jnp.float32)  # noqa: E731
        return SimpleESParams(
            std_init=f32(1.0),
            std_min=f32(1e-30),
            std_max=f32(1e20),
            c_mean=f32(1.0),
            c_std=f32(0.1),
            weights=f32(elite_weights(self.population_size, self.elite_ratio)),
        )

    def validate_params(self, params: SimpleESParams) -> None:
        weights = params.weights
        if tuple(np.shape(weights)) != (self.population_size,):
            raise ValueError(
                f"params.weights: expected shape ({self.population_size},), "
                f"got {tuple(np.shape(weights))}"
            )
        if not isinstance(weights, jax.core.Tracer):
            array = np.asarray(weights)
            ok = np.all(np.isfinite(array)) and np.all(array >= 0) and np.all(array <= 1)
            # Subnormal entries count as 0, as they do in a compiled generation.
            normal_sum = np.sum(np.where(array >= _SMALLEST_NORMAL, array, 0), dtype=np.float32)
            if not (ok and normal_sum >= _SMALLEST_NORMAL):
                raise ValueError(
                    "params.weights: expected finite values >= 0 (each in [0, 1]) whose "
                    f"entries of at least {_SMALLEST_NORMAL:.3g} (float32's smallest normal "
                    f"number) sum to at least that, got {array}"
                )
        super().validate_params(params)
        check_std_bounds(params)

    def _valid_params(self, params: SimpleESParams) -> dict:
        valid = valid_std_bounds(params, super()._valid_params(params))
        summed = jnp.sum(params.weights) >= _SMALLEST_NORMAL
        return {**valid, "weights": valid["weights"] & summed}

    # -- the algorithm on flat arrays ----------------------------------------------
    def _init(self, key, mean, params: SimpleESParams) -> SimpleESState:
        std = jnp.clip(jnp.asarray(params.std_init, jnp.float32), params.std_min, params.std_max)
        return SimpleESState(
            mean=mean,
            best_solution=mean,
            best_fitness=jnp.array(jnp.inf, jnp.float32),
            generation_counter=jnp.array(0, jnp.int32),
            std=jnp.full(self.num_dims, std),
            ask_key=raw_key(key),
            population_checksum=no_checksum(),
            opt_state=init_opt_state(self.optimizer, mean),
        )

    def _noise(self, key) -> jax.Array:
        """z_k ~ N(0, I), one row per member."""
        return threefry.normal(key, (self.population_size, self.num_dims))

    def _ask(self, key, state: SimpleESState, params):
        state = state.replace(ask_key=raw_key(key))
        return self._asked_population(state, params), state

    def _asked_population(self, state: SimpleESState, params) -> jax.Array:
        return state.mean + state.std * self._noise(state.ask_key)

    def _member(self, population, index, state: SimpleESState, params) -> jax.Array:
        if population is not None:
            return super()._member(population, index, state, params)
        # Only the one row of z is rebuilt (O(n), where a masked sum over the
        # regenerated population costs a generation's worth of noise again).
        shape = (self.population_size, self.num_dims)
        return state.mean + state.std * threefry.normal_row(state.ask_key, shape, index)

    def _tell(self, key, population, fitness, state: SimpleESState, params: SimpleESParams):
        del key
        if population is not None:
            steps = population - state.mean  # y_k = x_k - m
        else:
            steps = state.std * self._noise(state.ask_key)
        weights = member_weights(fitness, params.weights)
        step, std = simple_es_update(steps, weights, state.std, params.c_mean, params.c_std)
        mean, opt_state = optax_mean_update(self.optimizer, step, state.opt_state, state.mean)
        std = jnp.clip(std, params.std_min, params.std_max)

        usable = has_ranking(fitness) & all_finite((mean, std, opt_state))
        keep = lambda new, old: jnp.where(usable, new, old)  # noqa: E731
        new_state = state.replace(
            mean=keep(mean, state.mean), std=keep(std, state.std),
            opt_state=jax.tree.map(keep, opt_state, state.opt_state),
        )
        return new_state, {"std": new_state.std, "update_skipped": ~usable}


def member_weights(fitness: jax.Array, weights: jax.Array) -> jax.Array:
    """w of each member's rank; non-finite members get 0 and the rest are renormalised to sum 1."""
    by_member = jnp.where(jnp.isfinite(fitness), weights[shaping.ranks(fitness)], 0.0)
    total = jnp.sum(by_member)
    return by_member / jnp.where(total > 0, total, 1.0)


def simple_es_update(steps, weights, std, c_mean, c_std):
    """The mean's step c_m sum_i w_i y_i and the new std of the module docstring, from the
    steps y_k = x_k - m (rows)."""
    elite_std = jnp.sqrt(weights @ steps**2)
    return c_mean * (weights @ steps), (1 - c_std) * std + c_std * elite_std
