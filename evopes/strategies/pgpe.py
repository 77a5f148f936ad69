"""PGPE: policy gradients with parameter-based exploration.

Sehnke, Osendorfer, Rückstieß, Graves, Peters, Schmidhuber (2010),
"Parameter-exploring policy gradients", Neural Networks 23(4): the updates of
its "symmetric sampling" section and algorithm, with its baseline and its
reward normalisation (referred to below by name, not number); ClipUp (Toklu
et al. 2020, :mod:`evopes.clipup`) as the default optimizer of the mean, as
in Toklu et al.'s PGPE experiments.

The search distribution is N(mu, diag(sigma^2)) with one sigma_i per
coordinate. Each generation draws N = population_size / 2 perturbations
eps_k = sigma * z_k, z_k ~ N(0, I), and evaluates the symmetric pair
x_k = mu + eps_k (member k) and x_{k+N} = mu - eps_k (member k + N). With F
the shaped fitness (minimised; the paper's reward is r = -F), F_k^+ and F_k^-
the pair's values and b a baseline:

    r_T,k = (F_k^+ - F_k^-) / 2                                    (mean term)
    r_S,k = (F_k^+ + F_k^-) / 2 - b                                (std term)
    g_mu    = 1/N sum_k r_T,k eps_k
    g_sigma = 1/N sum_k r_S,k (eps_k^2 - sigma^2) / sigma           (elementwise)
    mu    <- mu + optimizer(g_mu)                    (sgd(alpha): mu - alpha g_mu)
    sigma <- sigma - alpha_sigma g_sigma

These are the paper's symmetric-sampling updates with its per-coordinate
learning rates alpha_i = alpha sigma_i^2 folded in (the log-likelihood
gradients (theta_i - mu_i) / sigma_i^2 and ((theta_i - mu_i)^2 - sigma_i^2) /
sigma_i^3, times sigma_i^2), written for minimisation. The paper sums over the
N pairs; here they are averaged, so that learning rates do not depend on the
population size (alpha_paper = alpha / N).

* Baseline: the paper's b is a moving average of past rewards (its rate is
  not fixed there): b <- beta b + (1 - beta) mean_k (F_k^+ + F_k^-) / 2,
  with ``params.baseline_decay`` = beta, updated before use; the first
  generation sets b to its own mean. beta = 0 (default) is the current
  generation's mean, which with centered ranks is 0.
* Reward normalisation (``normalize_rewards=True``; the paper's remedy for
  rewards of unknown scale): with m the best (lowest) shaped fitness seen so
  far, including this generation (the paper's "maximum reward so far"),

      r_T,k = (F_k^+ - F_k^-) / (F_k^+ + F_k^- - 2 m)
      r_S,k = ((F_k^+ + F_k^-) / 2 - b) / (b - m)

  (the paper's (r^+ - r^-) / (2 m_r - r^+ - r^-) and (r - b) / (m_r - b) with
  r = -F). A zero denominator has a zero numerator and gives 0. Use it with
  ``shaping.identity``; centered ranks already fix the scale.
* Fitness shaping: centered ranks by default (Toklu et al.; it makes PGPE
  invariant to monotone transformations of f); ``shaping.identity`` is the
  paper's raw rewards.
* sigma safeguards (Toklu et al.'s ``stdev_max_change``, not in Sehnke et
  al.): each sigma_i moves by at most ``std_max_change`` times its value per
  generation, then is clipped to [``std_min``, ``std_max``]; a large
  ``std_max_change`` and ``std_min = 0`` give the paper's update.
* Non-finite fitness: rank shapings rank it worst; a pair whose shaped values
  are not finite (identity shaping) is left out of both sums and the means
  are over the N_valid remaining pairs. An update whose mean, sigma or
  optimizer state is not finite is skipped (``update_skipped``).
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import struct

from evopes import shaping, threefry
from evopes.clipup import clipup
from evopes.evosax_args import check_metrics_fn, check_optimizer, fitness_shaping_from
from evopes.finite import all_finite
from evopes.population_check import no_checksum
from evopes.spec import PyTree
from evopes.strategies.xnes import raw_key
from evopes.strategy import Params, State, Strategy

#: ClipUp with Toklu et al.'s rule alpha = v_max / 2 and evosax's numbers
#: (steps of at most 0.02); set the speed to your problem's scale.
DEFAULT_OPTIMIZER = clipup(learning_rate=0.01, max_speed=0.02)


@struct.dataclass
class PGPEParams(Params):
    """Hyperparameters of :class:`PGPE` (vmappable).

    Attributes:
      std_init: initial sigma of every coordinate, in [1e-30, 1e20].
      std_lr: alpha_sigma, the learning rate of sigma, in [0, 1e30] (0 freezes sigma).
      std_max_change: largest relative change of each sigma_i per generation,
        in [1e-30, 1e30].
      std_min: floor of sigma, in [0, 1e20].
      std_max: ceiling of sigma, in [1e-30, 1e30], and std_min <= std_max.
      baseline_decay: beta of the moving-average baseline, in [0, 0.999999]
        (1 would freeze the baseline at 0).

    The ranges are :attr:`PGPE.param_ranges`, checked at ``init`` (and under
    ``jit``, see :attr:`evopes.Strategy.param_ranges`). The optimizer's numbers
    (ClipUp's ``learning_rate``, ``max_speed``, ``momentum``) are checked when
    it is built, by :func:`evopes.clipup`.
    """

    std_init: float = 1.0
    std_lr: float = 0.1
    std_max_change: float = 0.2
    std_min: float = 0.0
    std_max: float = 1e20
    baseline_decay: float = 0.0


@struct.dataclass
class PGPEState(State):
    """State of :class:`PGPE`.

    Attributes:
      std: sigma, one per coordinate.
      opt_state: the optimizer's state for the mean.
      baseline: b, the moving average of the pairs' mean shaped fitness.
      best_shaped: m, the lowest finite shaped fitness seen so far (for the
        reward normalisation; +inf before the first generation).
      ask_key: the key of the last ``ask`` as raw key data: eps is regenerated
        from it when no (or not the same) population is handed back.
      population_checksum: checksum of the last ``ask``'s population
        (:mod:`evopes.population_check`); ``tell`` reads only that population.
    """

    std: jax.Array
    opt_state: optax.OptState
    baseline: jax.Array
    best_shaped: jax.Array
    ask_key: jax.Array
    population_checksum: jax.Array


class PGPE(Strategy):
    """Policy gradients with parameter-based exploration, symmetric sampling.

    Args:
      population_size: number of members, even (``population_size // 2`` symmetric pairs).
      solution: template pytree of one solution.
      optimizer: optax transformation of the mean's gradient estimate g_mu;
        default ClipUp (learning rate 0.01, max speed 0.02);
        ``optax.sgd(alpha)`` is the paper's plain step.
      fitness_shaping_fn, metrics_fn: evosax's arguments, in evosax's order: an
        evosax shaping function (called with the fitness only) in place of
        ``fitness_shaping``; ``metrics_fn`` must be None.
      fitness_shaping: ``shaped = fitness_shaping(fitness)`` on the raw
        (minimised) fitness; default centered ranks.
      normalize_rewards: the paper's reward normalisation (module docstring).
      maximize: maximise fitness instead of minimising it.
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
        fitness_shaping_fn: Callable | None = None,
        metrics_fn: Callable | None = None,
        *,
        fitness_shaping: Callable[[jax.Array], jax.Array] | None = None,
        normalize_rewards: bool = False,
        maximize: bool = False,
    ):
        if int(population_size) != population_size or population_size < 2 or population_size % 2:
            raise ValueError(
                "population_size: expected an even integer >= 2 (symmetric pairs), "
                f"got {population_size!r}"
            )
        super().__init__(population_size, solution, maximize=maximize)
        check_optimizer(optimizer)
        check_metrics_fn(metrics_fn)
        fitness_shaping = fitness_shaping_from(
            fitness_shaping, fitness_shaping_fn, shaping.centered_rank
        )
        if not callable(fitness_shaping):
            raise ValueError(
                f"fitness_shaping: expected a function of the fitness, got {fitness_shaping!r}"
            )
        self.optimizer = optimizer
        self.fitness_shaping = fitness_shaping
        self.normalize_rewards = bool(normalize_rewards)

    @property
    def num_pairs(self) -> int:
        return self.population_size // 2

    @property
    def default_params(self) -> PGPEParams:
        return PGPEParams()

    #: Valid ranges (inclusive); see :attr:`evopes.Strategy.param_ranges`.
    param_ranges = {
        "std_init": (1e-30, 1e20),
        "std_lr": (0.0, 1e30),
        "std_max_change": (1e-30, 1e30),
        "std_min": (0.0, 1e20),
        "std_max": (1e-30, 1e30),
        "baseline_decay": (0.0, 0.999999),
    }

    def validate_params(self, params: PGPEParams) -> None:
        super().validate_params(params)
        if not any(isinstance(v, jax.core.Tracer) for v in (params.std_min, params.std_max)):
            if np.any(np.asarray(params.std_min) > np.asarray(params.std_max)):
                raise ValueError(
                    f"params.std_min: expected <= params.std_max ({params.std_max}), "
                    f"got {params.std_min}"
                )

    def _valid_params(self, params: PGPEParams) -> dict:
        valid = super()._valid_params(params)
        # Traced std_min <= std_max, blamed on std_min (as the eager check is).
        ordered = jnp.all(jnp.asarray(params.std_min) <= jnp.asarray(params.std_max))
        return {**valid, "std_min": valid["std_min"] & (~valid["std_max"] | ordered)}

    # -- the algorithm on flat arrays ----------------------------------------------
    def _init(self, key, mean, params: PGPEParams) -> PGPEState:
        std = jnp.clip(jnp.asarray(params.std_init, jnp.float32), params.std_min, params.std_max)
        return PGPEState(
            mean=mean,
            best_solution=mean,
            best_fitness=jnp.array(jnp.inf, jnp.float32),
            generation_counter=jnp.array(0, jnp.int32),
            std=jnp.full((self.num_dims,), std, jnp.float32),
            opt_state=self.optimizer.init(mean),
            baseline=jnp.array(0.0, jnp.float32),
            best_shaped=jnp.array(jnp.inf, jnp.float32),
            ask_key=raw_key(key),
            population_checksum=no_checksum(),
        )

    def _ask(self, key, state: PGPEState, params: PGPEParams):
        state = state.replace(ask_key=raw_key(key))
        return self._asked_population(state, params), state

    def _asked_population(self, state: PGPEState, params) -> jax.Array:
        return symmetric_population(state.mean, state.std, state.ask_key, self.num_pairs)

    def _member(self, population, index, state: PGPEState, params) -> jax.Array:
        if population is not None:
            return super()._member(population, index, state, params)
        return symmetric_member(state.mean, state.std, state.ask_key, self.num_pairs, index)

    def _tell(self, key, population, fitness, state: PGPEState, params: PGPEParams):
        del key
        shaped = self.fitness_shaping(fitness)
        plus, minus = shaped[: self.num_pairs], shaped[self.num_pairs:]
        valid = jnp.isfinite(plus) & jnp.isfinite(minus)
        num_valid = valid.sum()
        plus, minus = jnp.where(valid, plus, 0.0), jnp.where(valid, minus, 0.0)
        # eps_k = (x_k - x_{k+N}) / 2, exact up to the rounding of x (or drawn
        # again); a masked pair must add 0 even if its members overflowed.
        if population is not None:
            eps = 0.5 * (population[: self.num_pairs] - population[self.num_pairs:])
        else:
            eps = state.std * threefry.normal(state.ask_key, (self.num_pairs, self.num_dims))
        eps = jnp.where(valid[:, None], eps, 0.0)

        pair_means = 0.5 * (plus + minus)
        generation_mean = pair_means.sum() / jnp.maximum(num_valid, 1)
        decay = jnp.where(state.generation_counter > 0, params.baseline_decay, 0.0)
        baseline = jnp.where(
            num_valid > 0, decay * state.baseline + (1 - decay) * generation_mean, state.baseline
        )
        best_shaped = jnp.minimum(
            state.best_shaped, jnp.min(jnp.where(valid, jnp.minimum(plus, minus), jnp.inf))
        )
        mean_terms, std_terms = reward_terms(
            plus, minus, baseline, best_shaped, self.normalize_rewards
        )
        mean_gradient, std_gradient = pgpe_gradients(
            jnp.where(valid, mean_terms, 0.0), jnp.where(valid, std_terms, 0.0),
            eps, state.std, num_valid,
        )

        updates, opt_state = self.optimizer.update(mean_gradient, state.opt_state, state.mean)
        mean = optax.apply_updates(state.mean, updates)
        std = update_std(state.std, std_gradient, params)

        usable = all_finite((self.spec.unravel(mean), std, opt_state, baseline))
        mean, std, opt_state, baseline = jax.tree.map(
            lambda new, old: jnp.where(usable, new, old),
            (mean, std, opt_state, baseline),
            (state.mean, state.std, state.opt_state, state.baseline),
        )
        new_state = state.replace(
            mean=mean, std=std, opt_state=opt_state, baseline=baseline,
            best_shaped=jnp.where(usable, best_shaped, state.best_shaped),
        )
        metrics = {
            "update_skipped": ~usable,
            "gradient": self.spec.unravel(mean_gradient),
            "gradient_norm": jnp.linalg.norm(mean_gradient),
            "std": self.spec.unravel(std),
            "std_mean": jnp.mean(std),
            "baseline": baseline,
            "num_masked_pairs": self.num_pairs - num_valid,
        }
        return new_state, metrics


def symmetric_population(mean, std, ask_key, num_pairs: int) -> jax.Array:
    """``m + std * z_k``, then ``m - std * z_k``; z (num_pairs, n) drawn from ``ask_key``."""
    step = std * threefry.normal(ask_key, (num_pairs, mean.shape[0]))
    return jnp.concatenate([mean + step, mean - step])


def symmetric_member(mean, std, ask_key, num_pairs: int, index) -> jax.Array:
    """Member ``index`` of a symmetric population ``m +- std * z_k`` drawn from ``ask_key``."""
    shape = (num_pairs, mean.shape[0])
    step = std * threefry.normal_row(ask_key, shape, index % num_pairs)
    return jnp.where(index < num_pairs, mean + step, mean - step)


def reward_terms(plus, minus, baseline, best, normalize: bool):
    """(r_T, r_S) per pair, plain or with the paper's reward normalisation."""
    mean_terms = 0.5 * (plus - minus)
    std_terms = 0.5 * (plus + minus) - baseline
    if normalize:
        mean_terms = _safe_divide(plus - minus, plus + minus - 2.0 * best)
        std_terms = _safe_divide(std_terms, baseline - best)
    return mean_terms, std_terms


def pgpe_gradients(mean_terms, std_terms, eps, std, num_valid):
    """g_mu = 1/N sum_k r_T,k eps_k and g_sigma = 1/N sum_k r_S,k (eps_k^2 - sigma^2) / sigma."""
    count = jnp.maximum(num_valid, 1)
    mean_gradient = mean_terms @ eps / count
    std_gradient = std_terms @ (eps**2 - std**2) / (std * count)
    return mean_gradient, std_gradient


def update_std(std, std_gradient, params: PGPEParams):
    """sigma - alpha_sigma g_sigma, within a relative change of std_max_change, then clipped."""
    step = jnp.clip(-params.std_lr * std_gradient,
                    -params.std_max_change * std, params.std_max_change * std)
    return jnp.clip(std + step, params.std_min, params.std_max)


def _safe_divide(numerator, denominator):
    """numerator / denominator, 0 where the denominator is 0 (then so is the numerator)."""
    safe = jnp.where(denominator != 0, denominator, 1.0)
    return jnp.where(denominator != 0, numerator / safe, 0.0)
