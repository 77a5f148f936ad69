"""LM-MA-ES: limited-memory matrix adaptation evolution strategy.

Loshchilov, Glasmachers, Beyer (2019), "Large Scale Black-Box Optimization by
Limited-Memory Matrix Adaptation", IEEE TEVC 23(2) (arXiv 1705.06693),
Algorithm 1; line numbers below refer to it. With n dimensions, lambda
members, mu = floor(lambda / 2) parents and m = 4 + floor(3 ln n) evolution
paths m_1..m_m (the rows of M), one generation t is

    z_i ~ N(0, I),  d_i = z_i                                           (lines 5-6)
    for j = 1..min(t, m):  d_i <- (1 - c_d,j) d_i + c_d,j m_j (m_j^T d_i)  (line 8)
    f_i = f(y + sigma d_i)                                              (line 10)
    y <- y + sigma sum_{i<=mu} w_i d_{i:lambda}                         (line 12)
    p_sigma <- (1 - c_sigma) p_sigma
               + sqrt(mu_w c_sigma (2 - c_sigma)) sum_{i<=mu} w_i z_{i:lambda}   (line 13)
    m_j <- (1 - c_c,j) m_j
           + sqrt(mu_w c_c,j (2 - c_c,j)) sum_{i<=mu} w_i z_{i:lambda}           (line 15)
    sigma <- sigma exp(c_sigma / 2 (||p_sigma||^2 / n - 1))             (line 17)

Each d_i is z_i pushed through m rank-one "contractions" towards the stored
directions: an implicit sampling matrix of rank-m structure at O(m n) memory
and O(lambda m n) time per generation, instead of CMA-ES's O(n^2) memory
and O(lambda n^2) time. The paths are fed with the same selected z (not d),
each with its own, geometrically spread, learning rate: the paths remember
the search directions of the last ~ n / lambda, 4 n / lambda, 16 n / lambda, ...
generations.

Defaults (line 1): lambda = 4 + floor(3 ln n);
w_i = (ln(mu + 1/2) - ln i) / sum_{j<=mu} (ln(mu + 1/2) - ln j), zero for
i > mu; mu_w = 1 / sum_i w_i^2; c_d,j = 1 / (1.5^(j-1) n);
c_c,j = lambda / (4^(j-1) n); c_sigma = 2 lambda / n.

Small n. The paper's rates are made for n >> lambda, and it leaves larger
values undefined: c_sigma = 2 lambda / n reaches 1 at n = 2 lambda and 2 at
n = lambda (n = 10, lambda = 10), where the path of line 13 receives no
signal and sigma shrinks by e every generation; c_c,1 = lambda / n passes 2
(a negative square root) once lambda > 2 n. The defaults here cap every rate
at 1, a path without memory, the largest meaningful value:

    c_sigma = min(2 lambda / n, 1),  c_c,j = min(lambda / (4^(j-1) n), 1),

which changes nothing for n >= 2 lambda (n >= 26 with the default lambda).
At n = 10 the capped c_sigma = 1 converges on the sphere in about the
evaluations of c_sigma in [0.6, 1], and c_sigma = 1.5 fails on the ellipsoid;
CMA-ES's (mu_w + 2) / (n + mu_w + 5) = 0.28 is some 50% slower on the sphere.

Non-finite fitness ranks worst; a member without finite fitness gets weight
zero even when more than lambda - mu of them are invalid (the step then uses
the valid members' weights only); a generation without any finite member
leaves the state unchanged. sigma is clipped to [``std_min``, ``std_max``].

Perturbations are not stored: ``ask`` keeps its key (two uint32 words) and
``tell`` regenerates z from it, so ``tell(key, None, fitness, ...)`` works.
The d_i are never rebuilt: line 12 is read off the population handed back,
sigma sum_i w_i d_i = sum_i w_i (x_i - y) (float32 solutions; exact up to the
rounding of x at |y|), and without a population it is sigma A z_w, the
contractions being one linear map A applied to z_w = sum_i w_i z_i, one
contracted row instead of lambda.
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
from evopes.population_check import no_checksum
from evopes.spec import PyTree, SolutionSpec
from evopes.strategy import Params, State, Strategy


def default_population_size(num_dims: int) -> int:
    """lambda = 4 + floor(3 ln n) (line 1)."""
    return 4 + int(math.floor(3 * math.log(num_dims)))


def default_num_paths(num_dims: int) -> int:
    """m = 4 + floor(3 ln n), the paper's default number of paths."""
    return 4 + int(math.floor(3 * math.log(num_dims)))


def lm_ma_es_constants(num_dims: int, population_size: int, num_paths: int) -> dict:
    """The defaults of line 1, with the small-n caps of the module docstring (float64)."""
    n, lam = float(num_dims), int(population_size)
    mu = lam // 2
    raw = np.log(mu + 0.5) - np.log(np.arange(1, mu + 1))
    weights = np.zeros(lam)
    weights[:mu] = raw / raw.sum()
    mu_w = 1.0 / np.sum(weights**2)
    paths = np.arange(num_paths)
    return dict(
        weights=weights,
        mu_w=mu_w,
        c_sigma=min(2 * lam / n, 1.0),
        c_d=1.0 / (1.5**paths * n),
        c_c=np.minimum(lam / (4.0**paths * n), 1.0),
    )


@struct.dataclass
class LMMAESParams(Params):
    """Hyperparameters of :class:`LMMAES` (vmappable).

    Attributes:
      std_init: sigma of the first generation, in [1e-30, 1e20].
      std_min, std_max: sigma is clipped to this range; std_min in [0, 1e20],
        std_max in [1e-30, 1e30], std_min <= std_max.
      weights: recombination weights by rank, shape (lambda,), in [0, 1] (line 1).
      mu_w: 1 / sum w_i^2, the variance effective selection mass, in [1, 1e9].
      c_sigma: cumulation rate of the step-size path, in [1e-12, 1.99999] (line 13).
      c_d: rates of the m contractions of line 8, shape (m,), in [0, 1].
      c_c: learning rates of the m paths of line 15, shape (m,), in [1e-12, 1.99999].

    The ranges are :attr:`LMMAES.param_ranges`, checked at ``init`` (and under
    ``jit``, see :attr:`evopes.Strategy.param_ranges`).
    """

    std_init: jax.Array
    std_min: jax.Array
    std_max: jax.Array
    weights: jax.Array
    mu_w: jax.Array
    c_sigma: jax.Array
    c_d: jax.Array
    c_c: jax.Array


@struct.dataclass
class LMMAESState(State):
    """State of :class:`LMMAES`.

    Attributes:
      std: the step size sigma.
      p_sigma: the step-size evolution path.
      paths: M, the m evolution paths m_j as rows, shape (m, n).
      ask_key: the key of the last ``ask``, as raw key data: z is regenerated from it.
      population_checksum: checksum of the last ``ask``'s population
        (:mod:`evopes.population_check`); ``tell`` reads only that population.
    """

    std: jax.Array
    p_sigma: jax.Array
    paths: jax.Array
    ask_key: jax.Array
    population_checksum: jax.Array


class LMMAES(Strategy):
    """Limited-memory matrix adaptation evolution strategy.

    Args:
      population_size: lambda; default 4 + floor(3 ln n).
      solution: template pytree of one solution.
      num_paths: m, the number of evolution paths; default 4 + floor(3 ln n).
      maximize: maximise fitness instead of minimising it.
    """

    uses_population = False

    @property
    def reads_population_if_given(self) -> bool:
        # A float32 population gives sigma d_i = x_i - y exactly up to rounding;
        # narrower leaves would round the steps.
        return self.spec.all_float32

    def __init__(self, population_size: int | None = None, solution: PyTree = None, *,
                 num_paths: int | None = None, maximize: bool = False):
        if solution is None:
            raise ValueError("solution: expected a template pytree, got None")
        num_dims = SolutionSpec.from_template(solution).num_dims
        if population_size is None:
            population_size = default_population_size(num_dims)
        super().__init__(population_size, solution, maximize=maximize)
        if num_paths is None:
            num_paths = default_num_paths(num_dims)
        if int(num_paths) != num_paths or num_paths < 1:
            raise ValueError(f"num_paths: expected an integer >= 1, got {num_paths!r}")
        self.num_paths = int(num_paths)

    @property
    def default_params(self) -> LMMAESParams:
        constants = lm_ma_es_constants(self.num_dims, self.population_size, self.num_paths)
        f32 = lambda value: jnp.asarray(value, jnp.float32)  # noqa: E731
        return LMMAESParams(
            std_init=f32(1.0), std_min=f32(1e-30), std_max=f32(1e20),
            **{name: f32(value) for name, value in constants.items()},
        )

    #: Valid ranges (inclusive); see :attr:`evopes.Strategy.param_ranges`. The
    #: rates of lines 13 and 15 must stay below 2 (sqrt(c (2 - c))).
    param_ranges = {
        "std_init": (1e-30, 1e20),
        "std_min": (0.0, 1e20),
        "std_max": (1e-30, 1e30),
        "weights": (0.0, 1.0),
        "mu_w": (1.0, 1e9),
        "c_sigma": (1e-12, 1.99999),
        "c_d": (0.0, 1.0),
        "c_c": (1e-12, 1.99999),
    }

    def validate_params(self, params: LMMAESParams) -> None:
        for name, shape in (("weights", (self.population_size,)), ("c_d", (self.num_paths,)),
                            ("c_c", (self.num_paths,))):
            if tuple(np.shape(getattr(params, name))) != shape:
                raise ValueError(f"params.{name}: expected shape {shape}, "
                                 f"got {tuple(np.shape(getattr(params, name)))}")
        super().validate_params(params)

    # -- the algorithm on flat arrays ----------------------------------------------
    def _init(self, key, mean, params: LMMAESParams) -> LMMAESState:
        return LMMAESState(
            mean=mean,
            best_solution=mean,
            best_fitness=jnp.array(jnp.inf, jnp.float32),
            generation_counter=jnp.array(0, jnp.int32),
            std=jnp.clip(jnp.asarray(params.std_init, jnp.float32), params.std_min, params.std_max),
            p_sigma=jnp.zeros(self.num_dims, jnp.float32),
            paths=jnp.zeros((self.num_paths, self.num_dims), jnp.float32),
            ask_key=_raw_key(key),
            population_checksum=no_checksum(),
        )

    def _ask(self, key, state: LMMAESState, params: LMMAESParams):
        state = state.replace(ask_key=_raw_key(key))
        return self._asked_population(state, params), state

    def _asked_population(self, state: LMMAESState, params) -> jax.Array:
        _, directions = self._directions(state.ask_key, state, params)
        return state.mean + state.std * directions

    def _directions(self, key, state: LMMAESState, params: LMMAESParams):
        """z ~ N(0, I) of shape (lambda, n) and d = the contractions of z (lines 5-8)."""
        z = threefry.normal(key, (self.population_size, self.num_dims))
        return z, contract(z, state.paths, params.c_d, state.generation_counter)

    def _member(self, population, index, state: LMMAESState, params) -> jax.Array:
        if population is not None:
            return super()._member(population, index, state, params)
        # The contractions are one linear map A applied to every row: contracting
        # the one selected z costs O(m n) instead of the population's O(lambda m n).
        shape = (self.population_size, self.num_dims)
        z = threefry.normal_row(state.ask_key, shape, index)
        direction = contract(z[None], state.paths, params.c_d, state.generation_counter)[0]
        return state.mean + state.std * direction

    def _tell(self, key, population, fitness, state: LMMAESState, params: LMMAESParams):
        del key
        z = threefry.normal(state.ask_key, (self.population_size, self.num_dims))
        weights = rank_weights(fitness, params.weights)
        z_w = weights @ z
        if population is not None:
            # sigma d_i = x_i - y: one weighted sum of the population handed back,
            # where rebuilding d costs m dependent passes.
            mean = state.mean + weights @ (population - state.mean)  # line 12
        else:
            # sum_i w_i d_i = A z_w for the linear map A of line 8: one contracted row.
            d_w = contract(z_w[None], state.paths, params.c_d, state.generation_counter)[0]
            mean = state.mean + state.std * d_w  # line 12
        p_sigma = (1 - params.c_sigma) * state.p_sigma + jnp.sqrt(
            params.mu_w * params.c_sigma * (2 - params.c_sigma)
        ) * z_w  # line 13
        paths = (1 - params.c_c)[:, None] * state.paths + jnp.sqrt(
            params.mu_w * params.c_c * (2 - params.c_c)
        )[:, None] * z_w  # line 15
        std = jnp.clip(
            state.std * jnp.exp(params.c_sigma / 2 * (jnp.sum(p_sigma**2) / self.num_dims - 1)),
            params.std_min, params.std_max,
        )  # line 17

        updated = (mean, p_sigma, paths, std)
        usable = jnp.any(weights > 0) & all_finite(updated)
        mean, p_sigma, paths, std = jax.tree.map(
            lambda new, old: jnp.where(usable, new, old),
            updated, (state.mean, state.p_sigma, state.paths, state.std),
        )
        new_state = state.replace(mean=mean, p_sigma=p_sigma, paths=paths, std=std)
        metrics = {
            "std": std,
            "p_sigma_norm": jnp.linalg.norm(p_sigma),
            "update_skipped": ~usable,
        }
        return new_state, metrics


def contract(z, paths, c_d, generation_counter):
    """Line 8 for j = 1..min(t, m): d <- (1 - c_d,j) d + c_d,j m_j (m_j^T d), for every row of z.

    A path is used once it has been written at least once (j <= t), so the
    zero paths of the first generations do not shrink d.
    """
    # A Python loop: m is small and static, and unrolled steps run back to back,
    # where a rolled loop adds its own bookkeeping kernels to every path.
    directions = z
    for index in range(paths.shape[0]):
        rate = jnp.where(index < generation_counter, c_d[index], 0.0)
        path = paths[index]
        directions = (1 - rate) * directions + rate * jnp.outer(directions @ path, path)
    return directions


def rank_weights(fitness, weights):
    """Weight of each member by its rank; non-finite fitness ranks last with weight 0."""
    return jnp.where(jnp.isfinite(fitness), weights[shaping.ranks(fitness)], 0.0)


def _raw_key(key: jax.Array) -> jax.Array:
    """Raw key data, so that the state has one dtype whichever key kind the user passes."""
    if jax.dtypes.issubdtype(key.dtype, jax.dtypes.prng_key):
        return jax.random.key_data(key)
    return key


class LM_MA_ES(LMMAES):  # noqa: N801 (evosax's name)
    """:class:`LMMAES` with evosax 0.3's constructor: code ports by changing an import.

    Args:
      population_size: lambda; default 4 + floor(3 ln n).
      solution: template pytree of one solution.
      fitness_shaping_fn: ``weights_fitness_shaping_fn`` (evosax's default: each
        member's recombination weight is ``params.weights`` of its rank) or None.
        LM-MA-ES ranks the fitness, so it is invariant to any increasing transformation
        of it and needs no shaping; evosax uses another function's values as the
        weights themselves, an algorithm evopes does not implement: ValueError.
      metrics_fn: must be None: evopes' metrics already include evosax's keys.
      num_paths, maximize: as for :class:`LMMAES` (keyword-only).

    The algorithm and everything else are :class:`LMMAES`'s.
    """

    def __init__(
        self,
        population_size: int | None = None,
        solution: PyTree = None,
        fitness_shaping_fn: Callable | None = shaping.weights_fitness_shaping_fn,
        metrics_fn: Callable | None = None,
        *,
        num_paths: int | None = None,
        maximize: bool = False,
    ):
        super().__init__(population_size, solution, num_paths=num_paths, maximize=maximize)
        check_rank_weights_shaping(fitness_shaping_fn, "weights")
        check_metrics_fn(metrics_fn)
