"""ARS: augmented random search, versions V1-t and V2-t.

Mania, Guy, Recht (2018), "Simple random search provides a competitive
approach to reinforcement learning" (arXiv 1803.07055), Algorithm 2. Each
iteration j, with N = population_size / 2 directions, b <= N of them kept,
exploration noise nu and step size alpha (line numbers of Algorithm 2):

    delta_1..delta_N ~ N(0, I)                                         (line 4)
    members theta + nu delta_k (member k), theta - nu delta_k (member k + N)  (line 5)
    sort the directions by max(r_k^+, r_k^-), keep the b best          (line 6)
    theta <- theta + alpha / (b sigma_R) sum_{k<=b} (r_(k)^+ - r_(k)^-) delta_(k)   (line 7)

where sigma_R is the standard deviation of the 2b rewards used in the step.
Fitness is minimised here (r = -F with F the shaped fitness), so the b kept
directions are those with the lowest min(F_k^+, F_k^-), and the step is a
descent step on the search direction

    g = 1 / (b sigma_R) sum_{k<=b} (F_(k)^+ - F_(k)^-) delta_(k),

handed to an optax optimizer: the default ``optax.sgd(alpha)`` gives
theta - alpha g, exactly line 7 (note: no division by nu, as in the paper).
Any other optax transformation (Adam, :func:`evopes.clipup.clipup`) may
replace it. b = N is V1/V2; b < N is the "-t" variants. Basic random search
(the paper's Algorithm 1, step alpha / N sum (r^+ - r^-) delta) is
``scale_by_reward_std=False`` with b = N.

V1 versus V2: where the observation normaliser lives
-----------------------------------------------------
V2 feeds the linear policy normalised states diag(Sigma_j)^(-1/2) (x - mu_j),
with mu_j, Sigma_j the mean and covariance of all states seen since the start
of training (line 8). Those states exist only inside the user's rollouts;
an ask/tell strategy sees parameters and returns, never observations. So the
normaliser lives in the user's policy, and this strategy is the same for V1
and V2: the parameter update of line 7 is identical, V2 only changes the
policy the parameters act in. With :class:`evopes.envs.normalize.ObservationNormalizer`
(``min_std`` near 0 and ``clip=None`` for the paper's exact map):

1. keep a ``NormalizerState`` next to the strategy state;
2. in every rollout of a generation, act with ``normalizer.normalize(stats,
   obs)`` using the statistics *frozen* at the start of the generation (all
   2N policies of iteration j share mu_j, Sigma_j), and sum
   ``normalizer.moments(stats, obs)`` over every state visited;
3. after ``tell``, fold the sums in with ``normalizer.update``.

This keeps the strategy a pure function of (parameters, returns), lets one
normaliser serve ARS, OpenES or PGPE alike, and keeps the statistics in the
user's checkpoint with the policy they belong to.

Non-finite fitness: a direction with a non-finite shaped value on either side
is never kept (it ranks after every finite direction), and fewer than b
finite directions use as many as there are (b_valid in place of b). When all
kept rewards are equal, sigma_R = 0 and so are the differences: the step is 0.
An update whose mean or optimizer state is not finite is skipped
(``update_skipped``).
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
import optax
from flax import struct

from evopes import shaping, threefry
from evopes.evosax_args import (
    check_metrics_fn,
    check_optimizer,
    check_std_schedule,
    fitness_shaping_from,
    scheduled_std,
)
from evopes.finite import all_finite
from evopes.population_check import no_checksum
from evopes.spec import PyTree
from evopes.strategies.pgpe import symmetric_member, symmetric_population
from evopes.strategies.xnes import raw_key
from evopes.strategy import Params, State, Strategy

#: The paper's plain step with alpha = 0.02 (its MuJoCo runs use 0.01 to 0.03).
DEFAULT_OPTIMIZER = optax.sgd(learning_rate=0.02)


@struct.dataclass
class ARSParams(Params):
    """Hyperparameters of :class:`ARS` (vmappable).

    Attributes:
      std_init: nu, the exploration noise, in [1e-30, 1e20]; the paper's MuJoCo
        runs use 0.01 to 0.03.
      std_decay: nu is multiplied by this after every generation, in [1e-30, 1];
        the paper keeps nu fixed (1.0, the default). With a decaying step size
        (an optax schedule) it lets ARS converge to a point. nu has no ceiling,
        so a growing nu (> 1) would overflow and is refused.
      std_min: floor of nu, in [0, 1e20].

    The ranges are :attr:`ARS.param_ranges`, checked at ``init`` (and under
    ``jit``, see :attr:`evopes.Strategy.param_ranges`).
    """

    std_init: float = 0.03
    std_decay: float = 1.0
    std_min: float = 0.0


@struct.dataclass
class ARSState(State):
    """State of :class:`ARS`.

    Attributes:
      std: the current exploration noise nu.
      opt_state: the optimizer's state of the mean (theta).
      ask_key: the key of the last ``ask`` as raw key data: delta is
        regenerated from it when no (or not the same) population is handed back.
      population_checksum: checksum of the last ``ask``'s population
        (:mod:`evopes.population_check`); ``tell`` reads only that population.
    """

    std: jax.Array
    opt_state: optax.OptState
    ask_key: jax.Array
    population_checksum: jax.Array


class ARS(Strategy):
    """Augmented random search (V1-t / V2-t; the V2 normaliser lives in the policy).

    Args:
      population_size: 2N, even: N directions, each evaluated at theta +- nu delta.
      solution: template pytree of one solution.
      num_top_directions: b, how many directions the step uses (1 <= b <= N);
        default N // 2 (at least 1). b = N is V1 / V2.
      optimizer: optax transformation of the search direction g; default
        ``optax.sgd(0.02)``, the paper's step with alpha = 0.02.
      std_schedule, fitness_shaping_fn, metrics_fn: evosax's arguments, in
        evosax's order: nu of generation g is ``std_schedule(g)`` (then
        ``params.std_init`` and ``std_decay`` are unused); an evosax shaping
        function (called with the fitness only) in place of ``fitness_shaping``;
        ``metrics_fn`` must be None.
      fitness_shaping: applied to the raw (minimised) fitness; default the
        identity (the paper's raw rewards, scaled by sigma_R).
      scale_by_reward_std: divide by sigma_R (ARS); False is basic random search.
      maximize: maximise fitness (rewards) instead of minimising it.
    """

    # The pairs' steps are read off the population handed back when it is the
    # one ``ask`` produced in float32 (cheaper), and drawn again otherwise.
    uses_population = False

    @property
    def reads_population_if_given(self) -> bool:
        return self.spec.all_float32

    def __init__(
        self,
        population_size: int,
        solution: PyTree,
        optimizer: optax.GradientTransformation = DEFAULT_OPTIMIZER,
        std_schedule: Callable | None = None,
        fitness_shaping_fn: Callable | None = None,
        metrics_fn: Callable | None = None,
        *,
        num_top_directions: int | None = None,
        fitness_shaping: Callable[[jax.Array], jax.Array] | None = None,
        scale_by_reward_std: bool = True,
        maximize: bool = False,
    ):
        if int(population_size) != population_size or population_size < 2 or population_size % 2:
            raise ValueError(
                "population_size: expected an even integer >= 2 (antithetic directions), "
                f"got {population_size!r}"
            )
        super().__init__(population_size, solution, maximize=maximize)
        num_directions = self.population_size // 2
        if num_top_directions is None:
            num_top_directions = max(1, num_directions // 2)
        if (int(num_top_directions) != num_top_directions
                or not 1 <= num_top_directions <= num_directions):
            raise ValueError(
                f"num_top_directions: expected an integer in [1, {num_directions}] "
                f"(population_size / 2), got {num_top_directions!r}"
            )
        check_optimizer(optimizer)
        check_std_schedule(std_schedule)
        check_metrics_fn(metrics_fn)
        fitness_shaping = fitness_shaping_from(
            fitness_shaping, fitness_shaping_fn, shaping.identity
        )
        if not callable(fitness_shaping):
            raise ValueError(
                f"fitness_shaping: expected a function of the fitness, got {fitness_shaping!r}"
            )
        self.std_schedule = std_schedule
        self.num_top_directions = int(num_top_directions)
        self.optimizer = optimizer
        self.fitness_shaping = fitness_shaping
        self.scale_by_reward_std = bool(scale_by_reward_std)

    def _scheduled_std(self, std, generation, params) -> jax.Array:
        """nu of generation ``generation`` (``std_schedule`` if any, else ``std``), >= std_min."""
        return jnp.maximum(scheduled_std(self.std_schedule, std, generation), params.std_min)

    @property
    def num_directions(self) -> int:
        return self.population_size // 2

    @property
    def default_params(self) -> ARSParams:
        return ARSParams()

    #: Valid ranges (inclusive); see :attr:`evopes.Strategy.param_ranges`.
    param_ranges = {
        "std_init": (1e-30, 1e20),
        "std_decay": (1e-30, 1.0),
        "std_min": (0.0, 1e20),
    }

    # -- the algorithm on flat arrays ----------------------------------------------
    def _init(self, key, mean, params: ARSParams) -> ARSState:
        return ARSState(
            mean=mean,
            best_solution=mean,
            best_fitness=jnp.array(jnp.inf, jnp.float32),
            generation_counter=jnp.array(0, jnp.int32),
            std=self._scheduled_std(jnp.asarray(params.std_init, jnp.float32), 0, params),
            opt_state=self.optimizer.init(mean),
            ask_key=raw_key(key),
            population_checksum=no_checksum(),
        )

    def _ask(self, key, state: ARSState, params: ARSParams):
        # line 4-5: N directions, each evaluated on both sides
        state = state.replace(ask_key=raw_key(key))
        return self._asked_population(state, params), state

    def _asked_population(self, state: ARSState, params) -> jax.Array:
        return symmetric_population(state.mean, state.std, state.ask_key, self.num_directions)

    def _member(self, population, index, state: ARSState, params) -> jax.Array:
        if population is not None:
            return super()._member(population, index, state, params)
        return symmetric_member(state.mean, state.std, state.ask_key, self.num_directions, index)

    def _tell(self, key, population, fitness, state: ARSState, params: ARSParams):
        del key
        shaped = self.fitness_shaping(fitness)
        plus, minus = shaped[: self.num_directions], shaped[self.num_directions:]
        kept = top_directions(plus, minus, self.num_top_directions)
        # delta_k = (x_k - x_{k+N}) / (2 nu), exact up to the rounding of x (or drawn again).
        if population is not None:
            half = population[: self.num_directions] - population[self.num_directions:]
            delta = half / (2.0 * state.std)
        else:
            delta = threefry.normal(state.ask_key, (self.num_directions, self.num_dims))
        delta = jnp.where(kept[:, None], delta, 0.0)
        direction, reward_std = search_direction(
            plus, minus, kept, delta, self.scale_by_reward_std
        )

        updates, opt_state = self.optimizer.update(direction, state.opt_state, state.mean)
        mean = optax.apply_updates(state.mean, updates)
        usable = all_finite((self.spec.unravel(mean), opt_state))
        mean, opt_state = jax.tree.map(
            lambda new, old: jnp.where(usable, new, old),
            (mean, opt_state), (state.mean, state.opt_state),
        )
        metrics = {
            "update_skipped": ~usable,
            "gradient": self.spec.unravel(direction),
            "gradient_norm": jnp.linalg.norm(direction),
            "reward_std": reward_std,
            "num_kept_directions": kept.sum(),
            "std": state.std,
        }
        std = self._scheduled_std(
            state.std * params.std_decay, state.generation_counter + 1, params
        )
        return state.replace(mean=mean, opt_state=opt_state, std=std), metrics


def top_directions(plus, minus, num_top: int) -> jax.Array:
    """Mask of the b directions with the best (lowest) min(F^+, F^-), line 6.

    Directions with a non-finite value on either side are never kept.
    """
    valid = jnp.isfinite(plus) & jnp.isfinite(minus)
    score = jnp.where(valid, jnp.minimum(plus, minus), jnp.inf)
    return valid & (shaping.ranks(score) < num_top)


def search_direction(plus, minus, kept, delta, scale_by_reward_std: bool):
    """g = 1 / (b sigma_R) sum_kept (F^+ - F^-) delta (line 7), and sigma_R.

    sigma_R is the (population) standard deviation of the 2 b kept values.
    """
    count = jnp.maximum(kept.sum(), 1)
    differences = jnp.where(kept, plus - minus, 0.0)
    kept_mean = jnp.where(kept, plus + minus, 0.0).sum() / (2 * count)
    squares = jnp.where(kept, (plus - kept_mean) ** 2 + (minus - kept_mean) ** 2, 0.0)
    reward_std = jnp.sqrt(squares.sum() / (2 * count))
    scale = count * jnp.where(reward_std > 0, reward_std, 1.0) if scale_by_reward_std else count
    return differences @ delta / scale, reward_std
