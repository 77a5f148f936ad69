"""CMA-ES with active covariance update and lazy eigendecomposition.

Hansen, "The CMA Evolution Strategy: A Tutorial" (arXiv 1604.00772); equation
numbers below refer to it. One generation, with n dimensions, population
lambda, mu = lambda // 2, search distribution N(m, sigma^2 C), C = B D^2 B^T:

    z_k ~ N(0, I),  y_k = B D z_k,  x_k = m + sigma y_k                     (38-40)
    <y>_w = sum_{i<=mu} w_i y_{i:lambda}                                     (41)
    m <- m + c_m sigma <y>_w                                                 (42)
    p_sigma <- (1 - c_sigma) p_sigma
               + sqrt(c_sigma (2 - c_sigma) mu_eff) C^{-1/2} <y>_w            (43)
    sigma <- sigma exp(c_sigma / d_sigma (||p_sigma|| / E||N(0, I)|| - 1))   (44)
    p_c <- (1 - c_c) p_c + h_sigma sqrt(c_c (2 - c_c) mu_eff) <y>_w          (45)
    w°_i = w_i if w_i >= 0 else w_i n / ||C^{-1/2} y_{i:lambda}||^2          (46)
    C <- (1 + c_1 delta(h_sigma) - c_1 - c_mu sum_j w_j) C
         + c_1 p_c p_c^T + c_mu sum_i w°_i y_{i:lambda} y_{i:lambda}^T        (47)

with h_sigma = [||p_sigma|| / sqrt(1 - (1 - c_sigma)^(2 (g + 1)))
< (1.4 + 2 / (n + 1)) E||N(0, I)||] and delta(h) = (1 - h) c_c (2 - c_c).
The weights w_i (all lambda of them: mu positive, the rest negative, "active"
CMA) and the learning rates are the defaults of Table 1, Eqs. (49)-(58); see
:func:`cma_constants`.

Cost per generation. Sampling, C^{-1/2} y for all members and the rank-mu
update are three (lambda x n) @ (n x n) products, O(lambda n^2); the
eigendecomposition C = B D^2 B^T (O(n^3)) is *lazy*: it is refreshed under
``lax.cond`` once at least ``params.lazy_gap`` generations have passed since
the last refresh, and between refreshes the last B, D (and C^{1/2} = B D B^T,
formed at the refresh) serve for sampling and for C^{-1/2} = B D^{-1} B^T,
which is applied as B (D^{-1} (B^T y)), never formed; C itself is updated
exactly every generation. The default gap is 0.5 / (n (c_1 + c_mu))
generations, the constant of Hansen's reference code ``purecma.py`` (shipped
with pycma), which balances the decomposition's cost against the rest of a
generation; the tutorial's appendix B.2 (and pycma's main class) use the more
conservative 1 / (10 n (c_1 + c_mu)). Both give the same evaluation counts on
the tests' functions; the larger gap makes a generation up to 5x cheaper at
large n. Set ``params.lazy_gap`` to taste (1: every generation).

Numerical guards (float32 must survive any run length):

* C is symmetrised at every refresh (the rank-mu product is symmetric only
  up to rounding, and the drift between refreshes is of the order of float
  epsilon); eigenvalues below ``params.min_eigenvalue_ratio`` times the
  largest are lifted by adding a multiple of I to C (same eigenvectors, so B
  stays exact); a decomposition that is not finite is discarded.
* sigma is clipped to [``std_min``, ``std_max``], with ``std_min > 0``.
* Each member's step is clipped to Mahalanobis length ``max_step_norm``
  (sqrt(n) + 6 by default, exceeded by a Gaussian sample with probability
  below 2e-8): a member whose (x - m) / sigma is garbage (rounding when sigma
  is below the float spacing of m, or a far injected point) cannot blow up C.
* Members with non-finite fitness (NaN, +-inf) rank worst and get weight 0; a
  generation without any finite member leaves the distribution unchanged; an
  update that would produce a non-finite value is discarded (checked on the
  O(n) quantities and diag(C), which bounds a covariance's other entries).

Review of these deviations from the tutorial (d = 10, 7 seeds, float64,
evaluations to f < 1e-8; pycma 4.5's medians in brackets): sphere 1490 [1520],
ellipsoid 3990 [4160], Rosenbrock 4930 [4840], rotated sharp ridge 8380
[7260]. Switching the step clipping off (``max_step_norm = inf``) or the
eigenvalue floor off (``min_eigenvalue_ratio = 0``) gives bit-identical runs on
all four: neither guard fires on a Gaussian sample or below ConditionCov = 1e14
(the floor acts only past a condition number of 1e15), so both stay as guards
against garbage and rounding. Renormalising the positive weights to sum 1
(with mu_eff of the weights used) when non-finite members take some was tried
and measured worse: on the sphere with 60% NaN fitness the median rose from
8720 to 17510 evaluations (the learning rates are tuned for the full mu_eff;
the unrenormalised update acts as a smaller c_m and damps the noisier
selection), and nothing changes at 10% NaN (1580 both). So the weights of
non-finite members are simply zeroed.

Termination indicators (appendix B.3 of the tutorial) are reported in the
metrics as booleans ``stop_*`` with the numbers behind them, and
``terminate`` is their disjunction; the strategy never stops by itself.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from evopes import shaping, threefry
from evopes.evosax_args import check_metrics_fn, check_rank_weights_shaping
from evopes.finite import all_finite
from evopes.spec import PyTree, SolutionSpec
from evopes.strategies.box import check_inside, flat_bounds, from_box, genotypes_of, to_box
from evopes.strategy import Metrics, Params, State, Strategy

#: Names of the boolean termination indicators in the metrics (besides ``terminate``).
STOP_INDICATORS = (
    "stop_tol_fun",
    "stop_tol_x",
    "stop_tol_x_up",
    "stop_condition",
    "stop_no_effect_axis",
    "stop_no_effect_coord",
    "stop_std_min",
)

#: Placeholder in the fitness history for generations without a finite fitness
#: (or not run yet): the largest float32, so the state stays finite and the
#: history's range stays huge until it is filled.
UNKNOWN_FITNESS = float(np.finfo(np.float32).max)

#: Absolute floor of eigenvalues and of squared norms, far above float32's
#: smallest normal number (1.2e-38) so that reciprocals stay finite.
TINY = 1e-30


def default_population_size(num_dims: int) -> int:
    """lambda = 4 + floor(3 ln n) (Table 1)."""
    return 4 + int(math.floor(3 * math.log(num_dims)))


def cma_constants(num_dims: int, population_size: int) -> dict[str, np.ndarray | float]:
    """Default recombination weights and learning rates (Table 1), in float64.

    * w'_i = ln((lambda + 1) / 2) - ln i, i = 1..lambda                    (49)
    * mu_eff = (sum_{i<=mu} w'_i)^2 / sum_{i<=mu} w'_i^2, and mu_eff^- the
      same over the negative w'_i
    * c_1 = 2 / ((n + 1.3)^2 + mu_eff)                                     (57)
    * c_mu = min(1 - c_1, 2 (1/4 + mu_eff + 1 / mu_eff - 2)
      / ((n + 2)^2 + mu_eff))                                              (58)
    * alpha_mu^- = 1 + c_1 / c_mu                                          (50)
    * alpha_mueff^- = 1 + 2 mu_eff^- / (mu_eff + 2)                        (51)
    * alpha_posdef^- = (1 - c_1 - c_mu) / (n c_mu)                         (52)
    * w_i = w'_i / sum_j |w'_j|^+ for w'_i >= 0, else
      min(alpha_mu^-, alpha_mueff^-, alpha_posdef^-) w'_i / sum_j |w'_j|^-  (53)
    * c_m = 1 (54); c_sigma = (mu_eff + 2) / (n + mu_eff + 5),
      d_sigma = 1 + 2 max(0, sqrt((mu_eff - 1) / (n + 1)) - 1) + c_sigma    (55)
    * c_c = (4 + mu_eff / n) / (n + 4 + 2 mu_eff / n)                       (56)
    * E||N(0, I)|| ~ sqrt(n) (1 - 1 / (4 n) + 1 / (21 n^2))
    * lazy_gap = 0.5 / (n (c_1 + c_mu)) generations between eigendecompositions
      (Hansen's purecma.py; the tutorial's appendix B.2 has 0.1 instead of 0.5)
    """
    n, lam = float(num_dims), int(population_size)
    mu = lam // 2
    w_prime = np.log((lam + 1) / 2) - np.log(np.arange(1, lam + 1))
    positive, negative = w_prime[:mu], w_prime[mu:]
    mu_eff = positive.sum() ** 2 / np.sum(positive**2)
    negative = negative[negative < 0]  # an odd lambda has w'_{mu+1} = 0
    mu_eff_minus = negative.sum() ** 2 / np.sum(negative**2) if negative.size else 0.0

    alpha_cov = 2.0
    c_1 = alpha_cov / ((n + 1.3) ** 2 + mu_eff)
    c_mu = min(
        1 - c_1,
        alpha_cov * (0.25 + mu_eff + 1 / mu_eff - 2) / ((n + 2) ** 2 + alpha_cov * mu_eff / 2),
    )
    alpha_mu_minus = 1 + c_1 / c_mu
    alpha_mueff_minus = 1 + 2 * mu_eff_minus / (mu_eff + 2)
    alpha_posdef_minus = (1 - c_1 - c_mu) / (n * c_mu)
    negative_scale = min(alpha_mu_minus, alpha_mueff_minus, alpha_posdef_minus)
    positive_sum = w_prime[w_prime > 0].sum()
    negative_sum = -w_prime[w_prime < 0].sum()
    weights = np.where(
        w_prime >= 0,
        w_prime / positive_sum,
        negative_scale * w_prime / max(negative_sum, TINY),
    )

    c_sigma = (mu_eff + 2) / (n + mu_eff + 5)
    d_sigma = 1 + 2 * max(0.0, math.sqrt((mu_eff - 1) / (n + 1)) - 1) + c_sigma
    c_c = (4 + mu_eff / n) / (n + 4 + 2 * mu_eff / n)
    chi_n = math.sqrt(n) * (1 - 1 / (4 * n) + 1 / (21 * n**2))
    lazy_gap = 0.5 / (n * (c_1 + c_mu))  # a refresh is due once >= lazy_gap generations passed
    return dict(
        weights=weights,
        mu_eff=mu_eff,
        c_mean=1.0,
        c_sigma=c_sigma,
        d_sigma=d_sigma,
        c_c=c_c,
        c_1=c_1,
        c_mu=c_mu,
        chi_n=chi_n,
        lazy_gap=lazy_gap,
    )


def tolfun_history_length(num_dims: int, population_size: int) -> int:
    """Generations over which TolFun looks at the best fitness: 10 + ceil(30 n / lambda)."""
    return 10 + math.ceil(30 * num_dims / population_size)


@struct.dataclass
class CMAESParams(Params):
    """Hyperparameters of :class:`CMAES` (all vmappable numbers).

    Attributes:
      std_init: initial step size sigma_0.
      std_min, std_max: sigma is clipped to this range after every update.
      weights: recombination weights by rank, shape (lambda,), Eq. (53).
      mu_eff: variance effective selection mass of the positive weights.
      c_mean: learning rate of the mean, Eq. (54).
      c_sigma, d_sigma: cumulation and damping of step-size control, Eq. (55).
      c_c: cumulation of the rank-one evolution path, Eq. (56).
      c_1, c_mu: rank-one and rank-mu learning rates, Eqs. (57), (58).
      chi_n: E||N(0, I)||.
      lazy_gap: B, D are refreshed once at least this many generations have
        passed since their last refresh (1: every generation).
      max_step_norm: largest Mahalanobis length of a member's step y.
      min_eigenvalue_ratio: eigenvalues of C are kept >= this times the largest.
      tol_x: TolX, relative to ``std_init``.
      tol_x_up: TolXUp, relative to ``std_init``.
      tol_fun: TolFun (absolute range of recent fitness values).
      tol_fun_relative: TolFun also fires when the range is below this times
        |best recent fitness|: float32 fitness cannot resolve finer differences
        (its machine epsilon is 1.2e-7), so selection is noise below it.
      tol_condition: ConditionCov (largest condition number of C).
    """

    std_init: jax.Array
    std_min: jax.Array
    std_max: jax.Array
    weights: jax.Array
    mu_eff: jax.Array
    c_mean: jax.Array
    c_sigma: jax.Array
    d_sigma: jax.Array
    c_c: jax.Array
    c_1: jax.Array
    c_mu: jax.Array
    chi_n: jax.Array
    lazy_gap: jax.Array
    max_step_norm: jax.Array
    min_eigenvalue_ratio: jax.Array
    tol_x: jax.Array
    tol_x_up: jax.Array
    tol_fun: jax.Array
    tol_fun_relative: jax.Array
    tol_condition: jax.Array


#: Valid ranges (inclusive) of the CMA-ES hyperparameters; see :attr:`Strategy.param_ranges`.
#: Relations between fields (std_min <= std_init <= std_max, c_1 + c_mu <= 1) are
#: checked by :func:`check_cma_relations` and :func:`valid_cma_relations`.
CMA_PARAM_RANGES = {
    "std_init": (TINY, 1e20),
    "std_min": (0.0, 1e20),
    "std_max": (TINY, 1e30),
    "weights": (-1e6, 1.0),
    "mu_eff": (1.0, 1e9),
    "c_mean": (1e-12, 1.0),
    "c_sigma": (1e-12, 1.0),
    "d_sigma": (1e-12, 1e12),
    "c_c": (1e-12, 1.0),
    "c_1": (0.0, 1.0),
    "c_mu": (0.0, 1.0),
    "chi_n": (1e-12, 1e12),
    "lazy_gap": (0.0, 1e9),
    "max_step_norm": (1e-12, math.inf),
    "min_eigenvalue_ratio": (0.0, 1.0),
    "tol_x": (0.0, math.inf),
    "tol_x_up": (0.0, math.inf),
    "tol_fun": (0.0, math.inf),
    "tol_fun_relative": (0.0, math.inf),
    "tol_condition": (1.0, math.inf),
}


def check_cma_relations(params: CMAESParams) -> None:
    """ValueError naming the field for concrete values that break a relation between fields."""
    fields = (params.std_init, params.std_min, params.std_max, params.c_1, params.c_mu)
    if any(isinstance(value, jax.core.Tracer) for value in fields):
        return
    std_init, std_min, std_max = (np.asarray(v) for v in fields[:3])
    if np.any(std_init < std_min) or np.any(std_init > std_max):
        raise ValueError(
            f"params.std_init: expected a value in [std_min, std_max] = [{std_min}, {std_max}], "
            f"got {std_init}"
        )
    if np.any(np.asarray(params.c_1) + np.asarray(params.c_mu) > 1.0):
        raise ValueError(
            f"params.c_mu: expected c_1 + c_mu <= 1, got c_1 = {params.c_1}, c_mu = {params.c_mu}"
        )


def valid_cma_relations(params: CMAESParams, valid: dict) -> dict:
    """Traced :func:`check_cma_relations`: marks std_init and c_mu invalid where they break one."""
    std_init = jnp.asarray(params.std_init)
    within = (std_init >= params.std_min) & (std_init <= params.std_max)
    return {
        **valid,
        "std_init": valid["std_init"] & jnp.all(within),
        # Blamed on c_mu only when c_1 itself is valid.
        "c_mu": valid["c_mu"] & (~valid["c_1"] | jnp.all(params.c_1 + params.c_mu <= 1.0)),
    }


def make_params(num_dims: int, constants: dict, dtype=jnp.float32) -> CMAESParams:
    """Params from :func:`cma_constants`-like numbers, with the guards' and stops' defaults.

    ``std_init = 1``; sigma is kept in [1e-30, 1e20]; TolX 1e-12 and TolXUp 1e4
    (relative to ``std_init``), TolFun 1e-12 and ConditionCov 1e14 as in the
    tutorial's appendix B.3, and a relative TolFun of about 8 machine epsilons
    of ``dtype`` (1e-6 in float32, 1.9e-15 in float64): the fitness resolution
    of the strategy's precision. All fields are arrays of ``dtype``.
    """
    as_dtype = lambda value: jnp.asarray(value, dtype)  # noqa: E731
    return CMAESParams(
        std_init=as_dtype(1.0),
        std_min=as_dtype(TINY),
        std_max=as_dtype(1e20),
        max_step_norm=as_dtype(math.sqrt(num_dims) + 6.0),
        min_eigenvalue_ratio=as_dtype(1e-15),
        tol_x=as_dtype(1e-12),
        tol_x_up=as_dtype(1e4),
        tol_fun=as_dtype(1e-12),
        # 1e-6 in float32 (about 8 machine epsilons), the same multiple of epsilon otherwise.
        tol_fun_relative=as_dtype(1e-6 * float(jnp.finfo(dtype).eps / jnp.finfo(jnp.float32).eps)),
        tol_condition=as_dtype(1e14),
        **{name: as_dtype(value) for name, value in constants.items()},
    )


@struct.dataclass
class CMAESState(State):
    """State of :class:`CMAES` (``mean`` and the base fields are flat vectors).

    Attributes:
      std: the step size sigma.
      p_sigma, p_c: evolution paths of step size and covariance.
      C: covariance matrix (n x n).
      B, D: eigenvectors (columns) and square roots of eigenvalues of C at its
        last refresh.
      sqrt_C: the symmetric square root B diag(D) B^T of C at its last refresh.
        Members are sampled as y = sqrt_C z rather than B D z: both are
        N(0, C), but sqrt_C is a function of C alone, while B is not unique
        (signs, rotations within a near-degenerate eigenspace), so sampling
        through B lets rounding-level changes of C (a sum taken in another
        order, e.g. on another device count) flip whole members.
      eigen_generation: generation counter at the last refresh of B, D.
      num_eigen_refreshes: how many eigendecompositions were computed.
      fitness_history: best finite fitness of recent generations (ring buffer
        indexed by generation; ``UNKNOWN_FITNESS`` where unknown), for TolFun.
      genotypes: with box constraints, the last population as sampled (before
        the transformation into the box), so that ``tell`` updates with the
        steps actually drawn (see :mod:`evopes.strategies.box`); None without.
    """

    std: jax.Array
    p_sigma: jax.Array
    p_c: jax.Array
    C: jax.Array
    B: jax.Array
    D: jax.Array
    sqrt_C: jax.Array
    eigen_generation: jax.Array
    num_eigen_refreshes: jax.Array
    fitness_history: jax.Array
    genotypes: jax.Array | None = None


class CMAES(Strategy):
    """Covariance matrix adaptation evolution strategy (active, lazy eigendecomposition).

    Args:
      population_size: lambda; default 4 + floor(3 ln n).
      solution: template pytree of one solution.
      maximize: maximise fitness instead of minimising it.

    ``es.default_params`` holds the tutorial's defaults for this n and lambda
    with ``std_init = 1``; change numbers with ``params.replace(...)``.
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

    # Box constraints: the distribution lives on genotypes; ask hands out
    # their phenotypes (inside the box), tell maps the members back.
    def _check_init(self, mean, params) -> None:
        self.validate_params(params)
        check_inside(self.spec, mean, self.lower, self.upper)

    def _phenotype(self, flat):
        return flat if self.lower is None else to_box(flat, self.lower, self.upper)

    def _genotype(self, flat):
        return flat if self.lower is None else from_box(flat, self.lower, self.upper)

    def _empty_genotypes(self):
        if self.lower is None:
            return None
        return jnp.zeros((self.population_size, self.num_dims), self.dtype)

    def _hand_out(self, genotypes, state):
        """(population for the user, state): the phenotypes, the genotypes kept."""
        if self.lower is None:
            return genotypes, state
        return to_box(genotypes, self.lower, self.upper), state.replace(genotypes=genotypes)

    def _sampled(self, population, state):
        """The genotypes of the handed-back members (pycma keeps them in an archive)."""
        if self.lower is None:
            return population
        return genotypes_of(population, state.genotypes, self.lower, self.upper)

    ranks_in_fitness_dtype = True

    @property
    def history_length(self) -> int:
        return tolfun_history_length(self.num_dims, self.population_size)

    @property
    def default_params(self) -> CMAESParams:
        constants = cma_constants(self.num_dims, self.population_size)
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

    # The best member is taken with the base class's masked sum: at the n of a
    # dense CMA-ES it costs nothing, and it compiles faster than the one-hot
    # product with its non-finite fallback that SepCMAES uses at large n.

    # -- the algorithm on flat arrays --------------------------------------------
    def _init(self, key: jax.Array, mean: jax.Array, params: CMAESParams) -> CMAESState:
        n, dtype = self.num_dims, self.dtype
        zero = jnp.zeros(n, dtype)
        return CMAESState(
            mean=mean,
            best_solution=mean,
            best_fitness=jnp.array(jnp.inf, dtype),
            generation_counter=jnp.array(0, jnp.int32),
            std=jnp.asarray(params.std_init, dtype),
            p_sigma=zero,
            p_c=zero,
            C=jnp.eye(n, dtype=dtype),
            B=jnp.eye(n, dtype=dtype),
            D=jnp.ones(n, dtype),
            sqrt_C=jnp.eye(n, dtype=dtype),
            eigen_generation=jnp.array(0, jnp.int32),
            num_eigen_refreshes=jnp.array(0, jnp.int32),
            fitness_history=jnp.full(self.history_length, UNKNOWN_FITNESS, dtype),
            genotypes=self._empty_genotypes(),
        )

    def _ask(self, key: jax.Array, state: CMAESState, params: CMAESParams):
        z = standard_normal(key, (self.population_size, self.num_dims), self.dtype)  # (38)
        y = z @ state.sqrt_C  # (39) with C^{1/2} = B D B^T for B D (see CMAESState)
        return self._hand_out(state.mean + state.std * y, state)  # (40)

    def _tell(self, key, population, fitness, state: CMAESState, params: CMAESParams):
        n = self.num_dims
        population = self._sampled(population, state)
        y, whitened, weights = selected_steps(
            population, fitness, state.mean, state.std, state.B, state.D, params
        )
        positive = jnp.maximum(weights, 0.0)
        y_w = positive @ y  # (41)
        mean = state.mean + params.c_mean * state.std * y_w  # (42)

        # C^{-1/2} <y>_w = B (D^{-1} B^T <y>_w) = B (sum_i w_i whitened_i).
        p_sigma = (1 - params.c_sigma) * state.p_sigma + jnp.sqrt(
            params.c_sigma * (2 - params.c_sigma) * params.mu_eff
        ) * (state.B @ (positive @ whitened))  # (43)
        std = update_std(state.std, p_sigma, params)  # (44)
        h_sigma = stall_indicator(p_sigma, state.generation_counter, n, params)
        p_c = (1 - params.c_c) * state.p_c + h_sigma * jnp.sqrt(
            params.c_c * (2 - params.c_c) * params.mu_eff
        ) * y_w  # (45)

        # (46): negative weights are rescaled by n / ||C^{-1/2} y_i||^2.
        squared_norms = jnp.maximum(jnp.sum(whitened**2, axis=1), TINY)
        weights_circ = jnp.where(weights >= 0, weights, weights * n / squared_norms)
        delta_h = (1 - h_sigma) * params.c_c * (2 - params.c_c)
        decay = 1 + params.c_1 * delta_h - params.c_1 - params.c_mu * jnp.sum(weights)
        C = (
            decay * state.C
            + params.c_1 * jnp.outer(p_c, p_c)
            + params.c_mu * (weights_circ[:, None] * y).T @ y  # rank-mu as one product
        )  # (47)

        # Keep the old distribution when no member was finite or the update
        # overflowed. For a covariance |C_ij| <= sqrt(C_ii C_jj), so checking the
        # O(n) quantities and diag(C) suffices; the select fuses into (47).
        updated = (mean, std, p_sigma, p_c, C)
        usable = jnp.any(weights != 0) & all_finite(updated[:-1] + (jnp.diagonal(C),))
        mean, std, p_sigma, p_c, C = jax.tree_util.tree_map(
            lambda new, old: jnp.where(usable, new, old),
            updated,
            (state.mean, state.std, state.p_sigma, state.p_c, state.C),
        )

        generation = state.generation_counter + 1
        due = usable & (
            (generation - state.eigen_generation).astype(jnp.float32) >= params.lazy_gap
        )
        B, D, sqrt_C, C, eigen_generation, num_refreshes = lazy_eigendecomposition(
            due,
            C,
            state.B,
            state.D,
            state.sqrt_C,
            generation,
            state.eigen_generation,
            state.num_eigen_refreshes,
            params,
        )
        new_state = state.replace(
            mean=mean,
            std=std,
            p_sigma=p_sigma,
            p_c=p_c,
            C=C,
            B=B,
            D=D,
            sqrt_C=sqrt_C,
            eigen_generation=eigen_generation,
            num_eigen_refreshes=num_refreshes,
        )
        history = record_best(state.fitness_history, fitness, state.generation_counter)
        new_state = new_state.replace(fitness_history=history)

        metrics = termination_indicators(
            new_state.mean,
            new_state.std,
            new_state.p_c,
            jnp.diagonal(new_state.C),
            new_state.B,
            new_state.D,
            history,
            fitness,
            generation,
            params,
        )
        metrics["h_sigma"] = h_sigma
        return new_state, metrics


# -- pieces shared with SepCMAES --------------------------------------------------------
def standard_normal(key: jax.Array, shape: tuple[int, ...], dtype) -> jax.Array:
    """N(0, I) samples in ``dtype``: the fused float32 generator, or jax.random's float64.

    float32 normals come from a 23-bit uniform; a float64 run draws its own
    (52-bit) normals so that no part of the sample is float32-grained.
    """
    if jnp.dtype(dtype) == jnp.float32:
        return threefry.normal(key, shape)
    return jax.random.normal(key, shape, dtype)


def population_member(population, index):
    """Row ``index`` of a (lambda, n) population, as a one-hot product.

    Like the base class's masked sum, it stays a local product plus an
    all-reduce of n numbers when the population is sharded, but it is one
    contiguous matrix-vector pass: on CPU about 90x faster than a select and a
    column sum at n = 100,000. A non-finite entry in another member would make
    0 * inf = NaN; only then the masked sum is used.
    """
    is_member = jnp.arange(population.shape[0]) == index
    row = is_member.astype(population.dtype) @ population
    return jax.lax.cond(
        jnp.all(jnp.isfinite(row)),
        lambda: row,
        lambda: jnp.sum(jnp.where(is_member[:, None], population, 0.0), axis=0),
    )


def selected_steps(population, fitness, mean, std, B, D, params):
    """Steps y_k = (x_k - m) / sigma, whitened steps and per-member weights.

    ``whitened_k = D^{-1} B^T y_k`` (so C^{-1/2} y_k = B whitened_k and
    ||C^{-1/2} y_k|| = ||whitened_k||); for a diagonal C pass ``B=None``. Members
    are weighted by rank; a member with non-finite fitness (or a step that
    overflows float32) ranks last and gets weight 0. A step longer than
    ``params.max_step_norm`` in Mahalanobis norm is shortened to it.
    """
    y = (population - mean) / std
    whitened = (y if B is None else y @ B) / D
    norms = jnp.sqrt(jnp.sum(whitened**2, axis=1))
    # A finite norm implies finite y and whitened; members that overflow are dropped.
    valid = jnp.isfinite(fitness) & jnp.isfinite(norms)
    y, whitened = jnp.where(valid[:, None], y, 0.0), jnp.where(valid[:, None], whitened, 0.0)
    norms = jnp.maximum(jnp.where(valid, norms, 0.0), TINY)
    shrink = jnp.minimum(1.0, params.max_step_norm / norms)
    y, whitened = y * shrink[:, None], whitened * shrink[:, None]

    order = jnp.argsort(jnp.where(valid, fitness, jnp.inf), stable=True)
    weights = jnp.zeros_like(params.weights).at[order].set(params.weights)
    return y, whitened, jnp.where(valid, weights, 0.0)


def update_std(std, p_sigma, params):
    """Cumulative step-size adaptation, Eq. (44), clipped to [std_min, std_max]."""
    norm = jnp.sqrt(jnp.sum(p_sigma**2))
    std = std * jnp.exp(params.c_sigma / params.d_sigma * (norm / params.chi_n - 1))
    return jnp.clip(std, params.std_min, params.std_max)


def stall_indicator(p_sigma, generation_counter, num_dims, params):
    """h_sigma: 1 unless ||p_sigma|| is large (then the rank-one update stalls).

    ``generation_counter`` is g, the number of completed generations before this
    update, so the bias correction is sqrt(1 - (1 - c_sigma)^(2 (g + 1))).
    """
    norm = jnp.sqrt(jnp.sum(p_sigma**2))
    correction = jnp.sqrt(1 - (1 - params.c_sigma) ** (2.0 * (generation_counter + 1)))
    threshold = (1.4 + 2 / (num_dims + 1)) * params.chi_n
    return (norm / correction < threshold).astype(p_sigma.dtype)


def lazy_eigendecomposition(
    due, C, B, D, sqrt_C, generation, eigen_generation, num_refreshes, params
):
    """Refreshes (B, D) from C if ``due``: once ``params.lazy_gap`` generations have passed.

    Runs under ``lax.cond``, so the O(n^3) decomposition is skipped in the
    other generations (under ``vmap`` both branches run, as for any cond).
    Returns (B, D, sqrt_C, C, eigen_generation, num_refreshes). At a refresh C is
    symmetrised (the rank-mu product is symmetric only up to rounding) and
    possibly lifted by a multiple of I (see :func:`eigendecomposition`); if the
    decomposition failed (not finite), the last B, D are kept.
    """

    def refresh(C):
        C = 0.5 * (C + C.T)
        B_new, D_new, C_new = eigendecomposition(C, params.min_eigenvalue_ratio)
        # LAPACK reports a failed decomposition as NaN: then keep the last B, D.
        ok = jnp.all(jnp.isfinite(D_new)) & jnp.all(jnp.isfinite(B_new))
        sqrt_C_new = (B_new * D_new) @ B_new.T
        return (
            jnp.where(ok, B_new, B),
            jnp.where(ok, D_new, D),
            jnp.where(ok, sqrt_C_new, sqrt_C),
            jnp.where(ok, C_new, C),
            jnp.where(ok, generation, eigen_generation),
            num_refreshes + ok.astype(jnp.int32),
        )

    def keep(C):
        return B, D, sqrt_C, C, eigen_generation, num_refreshes

    return jax.lax.cond(due, refresh, keep, C)


def eigendecomposition(C, min_eigenvalue_ratio):
    """C = B diag(D^2) B^T, with eigenvalues floored at ``ratio * max`` (and TINY).

    The floor is applied as C + delta I, delta = max(0, floor - lambda_min),
    which keeps the eigenvectors: B is exact for the lifted C, and D^2 gets
    delta added to every eigenvalue.
    """
    eigenvalues, B = jnp.linalg.eigh(C, symmetrize_input=False)
    top = jnp.max(eigenvalues)
    floor = jnp.maximum(top * min_eigenvalue_ratio, TINY)
    lift = jnp.maximum(floor - jnp.min(eigenvalues), 0.0)
    C = C + lift * jnp.eye(C.shape[0], dtype=C.dtype)
    return B, jnp.sqrt(jnp.maximum(eigenvalues + lift, TINY)), C


def record_best(history, fitness, generation_counter):
    """Writes this generation's best finite fitness (or UNKNOWN_FITNESS) into the ring buffer."""
    best = jnp.min(jnp.where(jnp.isfinite(fitness), fitness, UNKNOWN_FITNESS))
    return history.at[generation_counter % history.shape[0]].set(best.astype(history.dtype))


def termination_indicators(
    mean, std, p_c, variances, B, D, history, fitness, generation, params
) -> Metrics:
    """The tutorial's stopping criteria (appendix B.3) as booleans, with their numbers.

    ``variances`` is diag(C); ``B=None`` means C is diagonal (then D = sqrt(diag C)).

    * ``stop_tol_fun``: the range of the best fitness over the last
      10 + ceil(30 n / lambda) generations and of this generation's fitness
      are both below ``tol_fun`` (TolFun), or below ``tol_fun_relative``
      times the smallest |fitness| in the history (the float32 resolution).
    * ``stop_tol_x``: sigma sqrt(C_ii) and sigma |p_c,i| are below
      ``tol_x * std_init`` in every coordinate (TolX).
    * ``stop_tol_x_up``: sigma max(D) grew above ``tol_x_up * std_init`` (TolXUp).
    * ``stop_condition``: cond(C) = (max D / min D)^2 > ``tol_condition`` (ConditionCov).
    * ``stop_no_effect_axis``: adding 0.1 sigma D_i b_i to m, i = g mod n,
      does not change m (NoEffectAxis).
    * ``stop_no_effect_coord``: adding 0.2 sigma sqrt(C_ii) to m_i does not
      change m_i for some i (NoEffectCoord).
    * ``stop_std_min``: sigma sits at its floor ``std_min``.
    """
    finite = jnp.isfinite(fitness)
    generation_range = jnp.max(jnp.where(finite, fitness, -jnp.inf)) - jnp.min(
        jnp.where(finite, fitness, jnp.inf)
    )
    filled = jnp.all(history < UNKNOWN_FITNESS)
    history_range = jnp.max(history) - jnp.min(history)
    generation_range = jnp.where(jnp.any(finite), generation_range, jnp.inf)
    fitness_range = jnp.maximum(history_range, generation_range)

    resolution = params.tol_fun_relative * jnp.min(jnp.abs(history))

    stds = std * jnp.sqrt(variances)
    tol_x = params.tol_x * params.std_init
    stop_tol_x = jnp.all(stds < tol_x) & jnp.all(std * jnp.abs(p_c) < tol_x)
    max_std = std * jnp.max(D)
    condition = (jnp.max(D) / jnp.min(D)) ** 2

    axis = generation % mean.shape[0]
    if B is None:
        axis_step = 0.1 * std * D[axis] * jax.nn.one_hot(axis, mean.shape[0], dtype=mean.dtype)
    else:
        axis_step = 0.1 * std * D[axis] * B[:, axis]
    stop_no_effect_axis = jnp.all(mean + axis_step == mean)
    stop_no_effect_coord = jnp.any(mean + 0.2 * stds == mean)

    stops = {
        "stop_tol_fun": filled & (fitness_range < jnp.maximum(params.tol_fun, resolution)),
        "stop_tol_x": stop_tol_x,
        "stop_tol_x_up": max_std > params.tol_x_up * params.std_init,
        "stop_condition": condition > params.tol_condition,
        "stop_no_effect_axis": stop_no_effect_axis,
        "stop_no_effect_coord": stop_no_effect_coord,
        "stop_std_min": std <= params.std_min,
    }
    assert tuple(stops) == STOP_INDICATORS
    terminate = jnp.any(jnp.stack(list(stops.values())))
    return {
        "std": std,
        "max_std": max_std,
        "condition_number": condition,
        "fitness_range": fitness_range,
        **stops,
        "terminate": terminate,
    }


class CMA_ES(CMAES):  # noqa: N801 (evosax's name)
    """:class:`CMAES` with evosax 0.3's constructor: code ports by changing an import.

    Args:
      population_size: lambda; default 4 + floor(3 ln n).
      solution: template pytree of one solution.
      fitness_shaping_fn: ``weights_fitness_shaping_fn`` (evosax's default: each
        member's recombination weight is ``params.weights`` of its rank) or None.
        CMA-ES ranks the fitness, so it is invariant to any increasing transformation
        of it and needs no shaping; evosax uses another function's values as the
        weights themselves, an algorithm evopes does not implement: ValueError.
      metrics_fn: must be None: evopes' metrics already include evosax's keys.
      maximize, lower, upper: as for :class:`CMAES` (keyword-only).

    The algorithm and everything else are :class:`CMAES`'s.
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
