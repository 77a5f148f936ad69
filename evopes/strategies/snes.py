"""SNES: separable natural evolution strategy.

Wierstra, Schaul, Glasmachers, Sun, Peters, Schmidhuber (2014), "Natural
Evolution Strategies", JMLR 15: 949-980, Algorithm 6 (Schaul, Glasmachers,
Schmidhuber 2011, "High dimensions and heavy tails for natural evolution
strategies", GECCO).

xNES (:mod:`evopes.strategies.xnes`) restricted to diagonal covariances: the
search distribution is N(mu, diag(sigma^2)) with one sigma_i per coordinate,
so a generation costs O(lambda d) instead of O(d^3). With d dimensions and
lambda members, one generation of Algorithm 6 is

    s_k ~ N(0, I),  z_k = mu + sigma * s_k,  k = 1..lambda          (sample)
    u_k = utility of z_k's rank (best first)                        (fitness shaping)
    G_mu    = sum_k u_k s_k                                         (gradient of mu)
    G_sigma = sum_k u_k (s_k^2 - 1)                                 (gradient of ln sigma)
    mu    <- mu + eta_mu sigma * G_mu
    sigma <- sigma * exp(eta_sigma / 2 G_sigma)

with * and the square taken elementwise. These are the diagonal of xNES's
G_delta and G_M (its mean step sigma B G_delta with B = I), and the
multiplicative step is the exponential map of a diagonal matrix: sigma stays
positive whatever the step.

Utilities are the paper's (Section 3.1; :func:`evopes.strategies.xnes.nes_utilities`),
stored by rank in ``params.utilities``. Defaults (the paper's Table 1):
lambda = 4 + floor(3 ln d), eta_mu = 1, eta_sigma = (3 + ln d) / (5 sqrt(d)).

evosax's constructor arguments (``SNES(population_size, solution, optimizer,
fitness_shaping_fn, metrics_fn)``): with an optax ``optimizer`` the mean moves
by ``optimizer.update(-eta_mu sigma * G_mu)`` (:func:`evopes.evosax_args.optax_mean_update`),
its state in ``state.opt_state``; evosax's default ``optax.sgd(1.0)`` is the
update above exactly, and so is ``optimizer=None`` (the default here, without
an optimizer state).

Numerical guards, as for xNES: non-finite fitness ranks worst; a generation
with fewer than two distinct finite fitness values, or whose new mean or
sigma (or optimizer state) is not finite, makes no update (``update_skipped``);
sigma is clipped to [``std_min``, ``std_max``].

Where s comes from. ``tell`` reads s_k = (z_k - mu) / sigma off the population
handed back (float32 solutions): one read, exact up to the rounding of z at
|mu|, an absolute error of about eps32 |mu| / sigma in s. With
``population=None`` (or narrower leaves, whose rounding would spoil s) it
regenerates s from the key of ``ask`` instead, so it needs no population;
regenerating costs a second round of random numbers, which XLA fuses into
every consumer of s.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import jax
import jax.numpy as jnp
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
from evopes.strategies.xnes import (
    NES_PARAM_RANGES,
    check_std_bounds,
    check_utilities,
    default_population_size,
    has_ranking,
    nes_utilities,
    raw_key,
    utilities_by_member,
    valid_std_bounds,
)
from evopes.strategy import Params, State, Strategy


@struct.dataclass
class SNESParams(Params):
    """Hyperparameters of :class:`SNES` (vmappable).

    Attributes:
      std_init: every sigma_i of the first generation, in [1e-30, 1e20].
      std_min, std_max: each sigma_i is clipped to [std_min, std_max]; std_min in
        [0, 1e20], std_max in [1e-30, 1e30], std_min <= std_init <= std_max.
      eta_mean: eta_mu, learning rate of the mean, in [0, 1e6] (Table 1: 1).
      eta_std: eta_sigma, learning rate of sigma, in [0, 1e6] (Table 1).
      utilities: u by rank, best first, shape (lambda,), each in [-1, 1] (Section 3.1).
    """

    std_init: jax.Array
    std_min: jax.Array
    std_max: jax.Array
    eta_mean: jax.Array
    eta_std: jax.Array
    utilities: jax.Array


@struct.dataclass
class SNESState(State):
    """State of :class:`SNES`.

    Attributes:
      std: sigma, one per coordinate.
      ask_key: the key of the last ``ask`` as raw key data: s is regenerated from it.
      population_checksum: checksum of the last ``ask``'s population
        (:mod:`evopes.population_check`); ``tell`` reads only that population.
      opt_state: the optimizer's state of the mean; ``()`` without an optimizer.
    """

    std: jax.Array
    ask_key: jax.Array
    population_checksum: jax.Array
    opt_state: optax.OptState = ()


class SNES(Strategy):
    """Separable natural evolution strategy (SNES).

    Args:
      population_size: lambda; default 4 + floor(3 ln d).
      solution: template pytree of one solution.
      optimizer: evosax's argument: an optax transformation of the mean's step
        (module docstring); None (default) is the paper's update, which is evosax's
        default ``optax.sgd(1.0)`` exactly.
      fitness_shaping_fn: evosax's argument: ``weights_fitness_shaping_fn`` (evosax's
        default, the utilities ``params.utilities`` by rank) or None; others raise.
      metrics_fn: evosax's argument; must be None.
      maximize: maximise fitness instead of minimising it.
    """

    uses_population = False
    param_ranges = NES_PARAM_RANGES

    @property
    def reads_population_if_given(self) -> bool:
        return self.spec.all_float32

    def __init__(
        self,
        population_size: int | None = None,
        solution: PyTree = None,
        optimizer: optax.GradientTransformation | None = None,
        fitness_shaping_fn: Callable | None = shaping.weights_fitness_shaping_fn,
        metrics_fn: Callable | None = None,
        *,
        maximize: bool = False,
    ):
        if solution is None:
            raise ValueError("solution: expected a template pytree, got None")
        if population_size is None:
            population_size = default_population_size(SolutionSpec.from_template(solution).num_dims)
        super().__init__(population_size, solution, maximize=maximize)
        check_optimizer(optimizer, allow_none=True)
        check_rank_weights_shaping(fitness_shaping_fn, "utilities")
        check_metrics_fn(metrics_fn)
        self.optimizer = optimizer

    @property
    def default_params(self) -> SNESParams:
        d = self.num_dims
        f32 = lambda value: jnp.asarray(value, jnp.float32)  # noqa: E731
        return SNESParams(
            std_init=f32(1.0),
            std_min=f32(1e-30),
            std_max=f32(1e20),
            eta_mean=f32(1.0),
            eta_std=f32((3 + math.log(d)) / (5 * math.sqrt(d))),  # Table 1
            utilities=f32(nes_utilities(self.population_size)),
        )

    def validate_params(self, params: SNESParams) -> None:
        super().validate_params(params)
        check_utilities(params, self.population_size)
        check_std_bounds(params)

    def _valid_params(self, params: SNESParams) -> dict:
        return valid_std_bounds(params, super()._valid_params(params))

    # -- the algorithm on flat arrays ----------------------------------------------
    def _init(self, key, mean, params: SNESParams) -> SNESState:
        std = jnp.clip(jnp.asarray(params.std_init, jnp.float32), params.std_min, params.std_max)
        return SNESState(
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
        """s_k ~ N(0, I), one row per member."""
        return threefry.normal(key, (self.population_size, self.num_dims))

    def _ask(self, key, state: SNESState, params):
        state = state.replace(ask_key=raw_key(key))
        return self._asked_population(state, params), state

    def _asked_population(self, state: SNESState, params) -> jax.Array:
        return state.mean + state.std * self._noise(state.ask_key)

    def _member(self, population, index, state: SNESState, params) -> jax.Array:
        if population is not None:
            return super()._member(population, index, state, params)
        # Only the one row of s is rebuilt (O(n), where a masked sum over the
        # regenerated population costs a generation's worth of noise again).
        shape = (self.population_size, self.num_dims)
        return state.mean + state.std * threefry.normal_row(state.ask_key, shape, index)

    def _tell(self, key, population, fitness, state: SNESState, params: SNESParams):
        del key
        if population is not None:
            noise = (population - state.mean) / state.std  # s_k = (z_k - mu) / sigma
        else:
            noise = self._noise(state.ask_key)
        utilities = utilities_by_member(fitness, params.utilities)
        step, std = snes_update(noise, utilities, state.std, params.eta_mean, params.eta_std)
        mean, opt_state = optax_mean_update(self.optimizer, step, state.opt_state, state.mean)
        std = jnp.clip(std, params.std_min, params.std_max)

        usable = has_ranking(fitness) & all_finite((mean, std, opt_state))
        keep = lambda new, old: jnp.where(usable, new, old)  # noqa: E731
        new_state = state.replace(
            mean=keep(mean, state.mean), std=keep(std, state.std),
            opt_state=jax.tree.map(keep, opt_state, state.opt_state),
        )
        return new_state, {"std": new_state.std, "update_skipped": ~usable}


def snes_update(noise, utilities, std, eta_mean, eta_std):
    """One step of Algorithm 6 from the samples s (rows of ``noise``) and their utilities u:
    the mean's step eta_mu sigma * G_mu and the new sigma."""
    grad_mean = utilities @ noise  # G_mu = sum_k u_k s_k
    grad_std = utilities @ (noise**2 - 1)  # G_sigma = sum_k u_k (s_k^2 - 1)
    return eta_mean * std * grad_mean, std * jnp.exp(eta_std / 2 * grad_std)
