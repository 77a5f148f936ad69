"""Separable CMA-ES: a diagonal covariance matrix, O(n) time and memory per member.

Ros and Hansen, "A Simple Modification in CMA-ES Achieving Linear Time and
Space Complexity" (PPSN 2008). The search distribution is N(m, sigma^2 diag(c))
and every update of :mod:`evopes.strategies.cma_es` is kept, restricted to the
diagonal:

    y_k = (x_k - m) / sigma,  C^{-1/2} y = y / sqrt(c)
    c <- (1 + c_1 delta(h_sigma) - c_1 - c_mu sum_j w_j) c
         + c_1 p_c^2 + c_mu sum_i w°_i y_{i:lambda}^2              (elementwise squares)

A diagonal matrix has n instead of n (n + 1) / 2 degrees of freedom, so the
learning rates are raised by (n + 2) / 3 (Ros and Hansen, section 2):
c_1^sep = c_1 (n + 2) / 3 and c_mu^sep = min(1 - c_1^sep, c_mu (n + 2) / 3),
with c_1 and c_mu of the full CMA-ES. Following the paper, the default
recombination weights are the mu positive weights of Eq. (49) of Hansen's
tutorial (no active update); negative weights passed in ``params.weights``
are used with the rescaling of Eq. (46).

No eigendecomposition is needed: D = sqrt(c) is exact every generation. The
same guards as :class:`~evopes.strategies.cma_es.CMAES` apply (variance floor
relative to the largest, sigma clipping, Mahalanobis step clipping, non-finite
members weighted 0) and the same termination indicators are reported, with
B = I.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from evopes import shaping
from evopes.evosax_args import check_metrics_fn, check_rank_weights_shaping
from evopes.finite import all_finite
from evopes.spec import PyTree, SolutionSpec
from evopes.strategies.box import flat_bounds
from evopes.strategies.cma_es import (
    CMA_PARAM_RANGES,
    CMAES,
    TINY,
    UNKNOWN_FITNESS,
    CMAESParams,
    check_cma_relations,
    cma_constants,
    default_population_size,
    make_params,
    population_member,
    record_best,
    stall_indicator,
    standard_normal,
    termination_indicators,
    tolfun_history_length,
    update_std,
    valid_cma_relations,
)
from evopes.strategy import State, Strategy


def sep_constants(num_dims: int, population_size: int) -> dict[str, np.ndarray | float]:
    """Defaults of sep-CMA-ES: full CMA-ES constants, positive weights, rates x (n + 2) / 3."""
    constants = cma_constants(num_dims, population_size)
    scale = (num_dims + 2) / 3
    c_1 = min(1.0, constants["c_1"] * scale)
    c_mu = min(1.0 - c_1, constants["c_mu"] * scale)
    weights = np.maximum(constants["weights"], 0.0)
    return {**constants, "weights": weights, "c_1": c_1, "c_mu": c_mu, "lazy_gap": 1.0}


@struct.dataclass
class SepCMAESState(State):
    """State of :class:`SepCMAES`.

    Attributes:
      std: the step size sigma.
      p_sigma, p_c: evolution paths.
      variances: diag(C), shape (n,).
      fitness_history: best finite fitness of recent generations (for TolFun).
      genotypes: with box constraints, the last population before the
        transformation into the box (as in :class:`CMAESState`); else None.
    """

    std: jax.Array
    p_sigma: jax.Array
    p_c: jax.Array
    variances: jax.Array
    fitness_history: jax.Array
    genotypes: jax.Array | None = None


class SepCMAES(Strategy):
    """Separable (diagonal) CMA-ES for large n.

    Args:
      population_size: lambda; default 4 + floor(3 ln n).
      solution: template pytree of one solution.
      maximize: maximise fitness instead of minimising it.

    Hyperparameters are a :class:`~evopes.strategies.cma_es.CMAESParams`
    (``lazy_gap`` is unused: there is nothing to decompose).
    """

    def __init__(
        self,
        population_size: int | None = None,
        solution: PyTree = None,
        *,
        maximize: bool = False,
        lower: PyTree = None,
        upper: PyTree = None,
    ):
        if solution is None:
            raise ValueError("solution: expected a template pytree, got None")
        if population_size is None:
            population_size = default_population_size(SolutionSpec.from_template(solution).num_dims)
        super().__init__(population_size, solution, maximize=maximize)
        self.dtype = self.spec.precision
        self.lower, self.upper = flat_bounds(self.spec, lower, upper)

    # Box constraints as in CMAES (see evopes.strategies.box).
    _check_init = CMAES._check_init
    _phenotype = CMAES._phenotype
    _genotype = CMAES._genotype
    _empty_genotypes = CMAES._empty_genotypes
    _hand_out = CMAES._hand_out
    _sampled = CMAES._sampled

    ranks_in_fitness_dtype = True

    @property
    def history_length(self) -> int:
        return tolfun_history_length(self.num_dims, self.population_size)

    @property
    def default_params(self) -> CMAESParams:
        constants = sep_constants(self.num_dims, self.population_size)
        return make_params(self.num_dims, constants, self.dtype)

    param_ranges = CMA_PARAM_RANGES

    def validate_params(self, params: CMAESParams) -> None:
        if tuple(np.shape(params.weights)) != (self.population_size,):
            raise ValueError(
                f"params.weights: expected shape ({self.population_size},), "
                f"got {tuple(np.shape(params.weights))}"
            )
        super().validate_params(params)
        check_cma_relations(params)

    def _valid_params(self, params: CMAESParams) -> dict:
        return valid_cma_relations(params, super()._valid_params(params))

    def _member(self, population, index, state, params):
        return population_member(population, index)

    def _init(self, key, mean, params: CMAESParams) -> SepCMAESState:
        dtype = self.dtype
        zero = jnp.zeros(self.num_dims, dtype)
        return SepCMAESState(
            mean=mean,
            best_solution=mean,
            best_fitness=jnp.array(jnp.inf, dtype),
            generation_counter=jnp.array(0, jnp.int32),
            std=jnp.asarray(params.std_init, dtype),
            p_sigma=zero,
            p_c=zero,
            variances=jnp.ones(self.num_dims, dtype),
            fitness_history=jnp.full(self.history_length, UNKNOWN_FITNESS, dtype),
            genotypes=self._empty_genotypes(),
        )

    def _ask(self, key, state: SepCMAESState, params: CMAESParams):
        z = standard_normal(key, (self.population_size, self.num_dims), self.dtype)
        return self._hand_out(state.mean + (state.std * jnp.sqrt(state.variances)) * z, state)

    def _tell(self, key, population, fitness, state: SepCMAESState, params: CMAESParams):
        n = self.num_dims
        population = self._sampled(population, state)
        y_w, rank_mu, weights = weighted_steps(
            population, fitness, state.mean, state.std, state.variances, params
        )
        mean = state.mean + params.c_mean * state.std * y_w
        p_sigma = (1 - params.c_sigma) * state.p_sigma + jnp.sqrt(
            params.c_sigma * (2 - params.c_sigma) * params.mu_eff
        ) * (y_w / jnp.sqrt(state.variances))  # C^{-1/2} <y>_w for a diagonal C
        std = update_std(state.std, p_sigma, params)
        h_sigma = stall_indicator(p_sigma, state.generation_counter, n, params)
        p_c = (1 - params.c_c) * state.p_c + h_sigma * jnp.sqrt(
            params.c_c * (2 - params.c_c) * params.mu_eff
        ) * y_w

        delta_h = (1 - h_sigma) * params.c_c * (2 - params.c_c)
        decay = 1 + params.c_1 * delta_h - params.c_1 - params.c_mu * jnp.sum(weights)
        variances = decay * state.variances + params.c_1 * p_c**2 + params.c_mu * rank_mu
        floor = jnp.maximum(jnp.max(variances) * params.min_eigenvalue_ratio, TINY)
        variances = jnp.maximum(variances, floor)

        new_state = state.replace(mean=mean, std=std, p_sigma=p_sigma, p_c=p_c, variances=variances)
        usable = jnp.any(weights != 0) & all_finite((mean, std, p_sigma, p_c, variances))
        new_state = jax.tree_util.tree_map(
            lambda new, old: jnp.where(usable, new, old), new_state, state
        )
        history = record_best(state.fitness_history, fitness, state.generation_counter)
        new_state = new_state.replace(fitness_history=history)
        metrics = termination_indicators(
            new_state.mean,
            new_state.std,
            new_state.p_c,
            new_state.variances,
            None,
            jnp.sqrt(new_state.variances),
            history,
            fitness,
            state.generation_counter + 1,
            params,
        )
        metrics["h_sigma"] = h_sigma
        return new_state, metrics


def weighted_steps(population, fitness, mean, std, variances, params):
    """<y>_w and the rank-mu sum for a diagonal C, in two passes over the population.

    The same selection as :func:`~evopes.strategies.cma_es.selected_steps`
    (weights by rank, weight 0 for a non-finite fitness or step, steps longer
    than ``max_step_norm`` in Mahalanobis norm shortened), but the per-member
    factors are folded into two weight vectors instead of rescaling the
    (lambda, n) steps, which is what costs time at large n:

        <y>_w = sum_i max(w_i, 0) s_i y_i,   rank_mu = sum_i w°_i s_i^2 y_i^2,

    with s_i the shortening factor and w°_i from Eq. (46) on the shortened step.
    Returns (<y>_w, rank_mu, weights).
    """
    n = mean.shape[0]
    finite = jnp.isfinite(fitness)
    y = jnp.where(finite[:, None], (population - mean) / std, 0.0)
    squares = y * y
    squared_norms = squares @ (1.0 / variances)  # ||C^{-1/2} y_i||^2
    valid = finite & jnp.isfinite(squared_norms)
    squared_norms = jnp.where(valid, squared_norms, 0.0)
    shrink = jnp.minimum(1.0, params.max_step_norm / jnp.sqrt(jnp.maximum(squared_norms, TINY)))

    order = jnp.argsort(jnp.where(valid, fitness, jnp.inf), stable=True)
    weights = jnp.zeros_like(params.weights).at[order].set(params.weights)
    weights = jnp.where(valid, weights, 0.0)
    shrunk_norms = jnp.maximum(squared_norms * shrink**2, TINY)
    weights_circ = jnp.where(weights >= 0, weights, weights * n / shrunk_norms)  # (46)
    mean_weights = jnp.maximum(weights, 0.0) * shrink
    covariance_weights = weights_circ * shrink**2

    def sums(y, squares):
        return mean_weights @ y, covariance_weights @ squares

    def sums_without_overflowed_rows(y, squares):
        keep = valid[:, None]
        return sums(jnp.where(keep, y, 0.0), jnp.where(keep, squares, 0.0))

    # A member with finite fitness whose step overflows (0 * inf = NaN in the
    # products) is rare: only then pay for a cleaning pass.
    y_w, rank_mu = jax.lax.cond(
        jnp.all(valid == finite), sums, sums_without_overflowed_rows, y, squares
    )
    return y_w, rank_mu, weights


class Sep_CMA_ES(SepCMAES):  # noqa: N801 (evosax's name)
    """:class:`SepCMAES` with evosax 0.3's constructor: code ports by changing an import.

    Args:
      population_size: lambda; default 4 + floor(3 ln n).
      solution: template pytree of one solution.
      fitness_shaping_fn: ``weights_fitness_shaping_fn`` (evosax's default: each
        member's recombination weight is ``params.weights`` of its rank) or None.
        Sep-CMA-ES ranks the fitness, so it is invariant to any increasing transformation
        of it and needs no shaping; evosax uses another function's values as the
        weights themselves, an algorithm evopes does not implement: ValueError.
      metrics_fn: must be None: evopes' metrics already include evosax's keys.
      maximize, lower, upper: as for :class:`SepCMAES` (keyword-only).

    The algorithm and everything else are :class:`SepCMAES`'s.
    """

    def __init__(
        self,
        population_size: int | None = None,
        solution: PyTree = None,
        fitness_shaping_fn: Callable | None = shaping.weights_fitness_shaping_fn,
        metrics_fn: Callable | None = None,
        *,
        maximize: bool = False,
        lower: PyTree = None,
        upper: PyTree = None,
    ):
        super().__init__(population_size, solution, maximize=maximize, lower=lower, upper=upper)
        check_rank_weights_shaping(fitness_shaping_fn, "weights")
        check_metrics_fn(metrics_fn)
