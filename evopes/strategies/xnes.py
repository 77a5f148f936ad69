"""xNES: exponential natural evolution strategy.

Wierstra, Schaul, Glasmachers, Sun, Peters, Schmidhuber (2014), "Natural
Evolution Strategies", JMLR 15: 949-980, Algorithm 5 (first published by
Glasmachers et al. 2010, "Exponential Natural Evolution Strategies", GECCO).

The search distribution is N(mu, sigma^2 B B^T): a mean mu, a global step
size sigma and a shape matrix B with |det B| = 1 (the paper's split of the
factor A = sigma B of the covariance). With d dimensions and lambda members,
one generation of Algorithm 5 is

    s_k ~ N(0, I),  z_k = mu + sigma B s_k,  k = 1..lambda         (sample)
    u_k = utility of z_k's rank (best first, see below)            (fitness shaping)
    G_delta = sum_k u_k s_k                                        (gradient of mu)
    G_M     = sum_k u_k (s_k s_k^T - I)                            (gradient of the shape)
    G_sigma = tr(G_M) / d,  G_B = G_M - G_sigma I                  (orthogonal split)
    mu    <- mu + eta_mu sigma B G_delta
    sigma <- sigma exp(eta_sigma / 2 G_sigma)
    B     <- B expm(eta_B / 2 G_B)

The gradients are natural gradients in the local coordinates of the current
distribution (s = B^-1 (z - mu) / sigma is standard normal there, and the
Fisher matrix is the identity), and the exponential map keeps the covariance
positive definite whatever the step: expm is the matrix exponential
(:func:`expm`), not the elementwise one. G_B is traceless, so
det expm(eta_B / 2 G_B) = exp(0) = 1 and B keeps |det B| = 1: sigma alone
carries the scale.

Side of B. The paper writes Sigma = A^T A and samples z = mu + sigma B^T s,
but moves the mean by sigma B G_delta and updates B by multiplying on the
right. These agree only for symmetric B, and B expm(...) is not symmetric in
general. The local-coordinate derivation (z = mu + A s in the coordinates
where the gradients are taken, A <- A expm(M / 2), mu <- mu + A delta) needs
the sample and both updates to use the same factor, so here z = mu + sigma B s
throughout (the covariance is sigma^2 B B^T); this is the paper's algorithm
with its A^T written as A.

Fitness shaping (the paper's Section 3.1): the member of rank k = 1..lambda
(1 = best, lowest fitness) gets

    u_k = max(0, ln(lambda / 2 + 1) - ln k) / sum_j max(0, ln(lambda / 2 + 1) - ln j) - 1 / lambda,

so utilities sum to zero and every rank past lambda / 2 gets the same
-1 / lambda. They are stored by rank in ``params.utilities``; any vector of
length lambda can replace them.

Defaults (the paper's Table 1): lambda = 4 + floor(3 ln d), eta_mu = 1,
eta_sigma = eta_B = 3 (3 + ln d) / (5 d sqrt(d)).

evosax's constructor is :class:`xNES`'s: ``xNES(population_size, solution,
optimizer, fitness_shaping_fn, metrics_fn)``. With an optax ``optimizer`` the
mean moves by ``optimizer.update(-eta_mu sigma B G_delta)``
(:func:`evopes.evosax_args.optax_mean_update`), its state in
``state.opt_state``; evosax's default ``optax.sgd(1.0)`` is the update above
exactly, and so is no optimizer (:class:`XNES`, and ``xNES``'s default None).

Not implemented: the paper's adaptation sampling (Section 3.2, an optional
online adaptation of eta_sigma), restarts and importance mixing.

Numerical guards. Non-finite fitness ranks worst (it gets the utilities of
the last ranks, exactly as if it were the worst finite fitness); a generation
with fewer than two distinct finite fitness values carries no ranking and
makes no update, nor does one whose new mean, sigma, B or optimizer state is
not finite (``update_skipped``). Rounding makes |det B| drift from 1 over many
generations; after each update B is rescaled to |det B| = 1 and sigma takes
the factor, which leaves sigma B, the distribution, unchanged. sigma is
clipped to [``std_min``, ``std_max``].

Perturbations are not stored: ``ask`` keeps its key and ``tell`` regenerates
s from it, so ``tell(key, None, fitness, ...)`` works.
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
from evopes.spec import PyTree, SolutionSpec
from evopes.strategy import Params, State, Strategy


def default_population_size(num_dims: int) -> int:
    """lambda = 4 + floor(3 ln d) (Table 1)."""
    return 4 + int(math.floor(3 * math.log(num_dims)))


def nes_utilities(population_size: int) -> np.ndarray:
    """The paper's rank utilities u_1..u_lambda (Section 3.1), best rank first; float64."""
    lam = population_size
    raw = np.maximum(0.0, np.log(lam / 2 + 1) - np.log(np.arange(1, lam + 1)))
    return raw / raw.sum() - 1.0 / lam


def utilities_by_member(fitness: jax.Array, utilities: jax.Array) -> jax.Array:
    """u of each member's rank (lowest fitness = rank 1); non-finite fitness ranks worst."""
    return utilities[shaping.ranks(fitness)]


def has_ranking(fitness: jax.Array) -> jax.Array:
    """True when at least two finite fitness values differ: otherwise ranks carry nothing."""
    finite = jnp.isfinite(fitness)
    highest = jnp.max(jnp.where(finite, fitness, -jnp.inf))
    lowest = jnp.min(jnp.where(finite, fitness, jnp.inf))
    return highest > lowest


def raw_key(key: jax.Array) -> jax.Array:
    """Raw key data, so that a state has one dtype whichever key kind the user passes."""
    if jax.dtypes.issubdtype(key.dtype, jax.dtypes.prng_key):
        return jax.random.key_data(key)
    return key


def check_utilities(params, population_size: int) -> None:
    """ValueError unless a concrete ``params.utilities`` has shape (lambda,) and finite values."""
    utilities = params.utilities
    if tuple(np.shape(utilities)) != (population_size,):
        raise ValueError(
            f"params.utilities: expected shape ({population_size},), "
            f"got {tuple(np.shape(utilities))}"
        )
    if not isinstance(utilities, jax.core.Tracer) and not np.all(np.isfinite(utilities)):
        raise ValueError(f"params.utilities: expected finite values, got {np.asarray(utilities)}")


def check_std_bounds(params) -> None:
    """ValueError unless concrete std_min <= std_init <= std_max."""
    values = (params.std_min, params.std_init, params.std_max)
    if any(isinstance(value, jax.core.Tracer) for value in values):
        return
    low, init, high = (np.asarray(value) for value in values)
    if np.any(low > init) or np.any(init > high):
        raise ValueError(
            f"params.std_init: expected std_min <= std_init <= std_max, "
            f"got {low} <= {init} <= {high}"
        )


def valid_std_bounds(params, valid: dict) -> dict:
    """Traced :func:`check_std_bounds`: std_init invalid where outside [std_min, std_max]."""
    std_init = jnp.asarray(params.std_init)
    within = (std_init >= params.std_min) & (std_init <= params.std_max)
    return {**valid, "std_init": valid["std_init"] & jnp.all(within)}


#: Valid ranges (inclusive) of the hyperparameters of xNES and SNES. Utilities
#: are shaped fitness values: the paper's lie in (-1, 1).
NES_PARAM_RANGES = {
    "std_init": (1e-30, 1e20),
    "std_min": (0.0, 1e20),
    "std_max": (1e-30, 1e30),
    "eta_mean": (0.0, 1e6),
    "eta_std": (0.0, 1e6),
    "utilities": (-1.0, 1.0),
}


@struct.dataclass
class XNESParams(Params):
    """Hyperparameters of :class:`XNES` (vmappable).

    Attributes:
      std_init: sigma of the first generation, in [1e-30, 1e20]; B starts at I.
      std_min, std_max: sigma is clipped to [std_min, std_max]; std_min in [0, 1e20],
        std_max in [1e-30, 1e30], std_min <= std_init <= std_max.
      eta_mean: eta_mu, learning rate of the mean, in [0, 1e6] (Table 1: 1).
      eta_std: eta_sigma, learning rate of sigma, in [0, 1e6] (Table 1).
      eta_shape: eta_B, learning rate of B, in [0, 1e6] (Table 1).
      utilities: u by rank, best first, shape (lambda,), each in [-1, 1] (Section 3.1).
    """

    std_init: jax.Array
    std_min: jax.Array
    std_max: jax.Array
    eta_mean: jax.Array
    eta_std: jax.Array
    eta_shape: jax.Array
    utilities: jax.Array


@struct.dataclass
class XNESState(State):
    """State of :class:`XNES`.

    Attributes:
      std: sigma, the global step size.
      shape: B, the d x d shape matrix with |det B| = 1; the covariance is sigma^2 B B^T.
      ask_key: the key of the last ``ask`` as raw key data: s is regenerated from it.
      opt_state: the optimizer's state of the mean (:class:`xNES`); ``()`` without one.
    """

    std: jax.Array
    shape: jax.Array
    ask_key: jax.Array
    opt_state: optax.OptState = ()


class XNES(Strategy):
    """Exponential natural evolution strategy (xNES).

    Args:
      population_size: lambda; default 4 + floor(3 ln d).
      solution: template pytree of one solution.
      maximize: maximise fitness instead of minimising it.
    """

    uses_population = False
    param_ranges = {**NES_PARAM_RANGES, "eta_shape": (0.0, 1e6)}

    def __init__(
        self, population_size: int | None = None, solution: PyTree = None, *, maximize: bool = False
    ):
        if solution is None:
            raise ValueError("solution: expected a template pytree, got None")
        if population_size is None:
            population_size = default_population_size(SolutionSpec.from_template(solution).num_dims)
        super().__init__(population_size, solution, maximize=maximize)
        self.optimizer = None  # the paper's update; xNES takes evosax's optimizer

    @property
    def default_params(self) -> XNESParams:
        d = self.num_dims
        eta = 3 * (3 + math.log(d)) / (5 * d * math.sqrt(d))  # Table 1
        f32 = lambda value: jnp.asarray(value, jnp.float32)  # noqa: E731
        return XNESParams(
            std_init=f32(1.0),
            std_min=f32(1e-30),
            std_max=f32(1e20),
            eta_mean=f32(1.0),
            eta_std=f32(eta),
            eta_shape=f32(eta),
            utilities=f32(nes_utilities(self.population_size)),
        )

    def validate_params(self, params: XNESParams) -> None:
        super().validate_params(params)
        check_utilities(params, self.population_size)
        check_std_bounds(params)

    def _valid_params(self, params: XNESParams) -> dict:
        return valid_std_bounds(params, super()._valid_params(params))

    # -- the algorithm on flat arrays ----------------------------------------------
    def _init(self, key, mean, params: XNESParams) -> XNESState:
        return XNESState(
            mean=mean,
            best_solution=mean,
            best_fitness=jnp.array(jnp.inf, jnp.float32),
            generation_counter=jnp.array(0, jnp.int32),
            std=jnp.clip(jnp.asarray(params.std_init, jnp.float32), params.std_min, params.std_max),
            shape=jnp.eye(self.num_dims, dtype=jnp.float32),
            ask_key=raw_key(key),
            opt_state=init_opt_state(self.optimizer, mean),
        )

    def _noise(self, key) -> jax.Array:
        """s_k ~ N(0, I), one row per member."""
        return threefry.normal(key, (self.population_size, self.num_dims))

    def _ask(self, key, state: XNESState, params):
        key = raw_key(key)
        noise = self._noise(key)
        # rows: z_k = mu + sigma B s_k
        return state.mean + state.std * noise @ state.shape.T, state.replace(ask_key=key)

    def _member(self, population, index, state: XNESState, params) -> jax.Array:
        # Only the one row of s is rebuilt: O(n) numbers instead of the population's.
        shape = (self.population_size, self.num_dims)
        noise = threefry.normal_row(state.ask_key, shape, index)
        return state.mean + state.std * state.shape @ noise

    def _tell(self, key, population, fitness, state: XNESState, params: XNESParams):
        del key, population
        noise = self._noise(state.ask_key)
        utilities = utilities_by_member(fitness, params.utilities)
        step, std, shape = xnes_update(
            noise,
            utilities,
            state.std,
            state.shape,
            params.eta_mean,
            params.eta_std,
            params.eta_shape,
        )
        mean, opt_state = optax_mean_update(self.optimizer, step, state.opt_state, state.mean)
        std = jnp.clip(std, params.std_min, params.std_max)

        usable = has_ranking(fitness) & all_finite((mean, std, shape, opt_state))
        keep = lambda new, old: jnp.where(usable, new, old)  # noqa: E731
        new_state = state.replace(
            mean=keep(mean, state.mean), std=keep(std, state.std), shape=keep(shape, state.shape),
            opt_state=jax.tree.map(keep, opt_state, state.opt_state),
        )
        return new_state, {"std": new_state.std, "update_skipped": ~usable}


def xnes_update(noise, utilities, std, shape, eta_mean, eta_std, eta_shape):
    """One step of Algorithm 5 from the samples s (rows of ``noise``) and their utilities u.

    Returns the mean's step eta_mu sigma B G_delta and the new (sigma, B), with B
    rescaled to |det B| = 1 (module docstring).
    """
    d = noise.shape[1]
    identity = jnp.eye(d, dtype=noise.dtype)
    grad_delta = utilities @ noise  # G_delta = sum_k u_k s_k
    # G_M = sum_k u_k (s_k s_k^T - I)
    grad_m = (noise * utilities[:, None]).T @ noise - jnp.sum(utilities) * identity
    grad_std = jnp.trace(grad_m) / d  # G_sigma
    grad_shape = grad_m - grad_std * identity  # G_B

    mean_step = eta_mean * std * (shape @ grad_delta)
    new_std = std * jnp.exp(eta_std / 2 * grad_std)
    new_shape = shape @ expm(eta_shape / 2 * grad_shape)

    # Rescale B to |det B| = 1 against rounding drift; sigma B is unchanged.
    _, log_abs_det = jnp.linalg.slogdet(new_shape)
    scale = jnp.exp(log_abs_det / d)
    return mean_step, new_std * scale, new_shape / scale


#: Largest 1-norm the Taylor polynomial of :func:`expm` is evaluated at.
_EXPM_THETA = 0.5
#: Degree of that polynomial: theta^9 / 9! = 5e-9, below float32's rounding.
_EXPM_DEGREE = 8
#: Most squarings :func:`expm` does; a matrix that needs more gives NaN.
_EXPM_MAX_SQUARINGS = 16


def expm(matrix: jax.Array) -> jax.Array:
    """The matrix exponential by scaling and squaring of a Taylor polynomial.

    With s = max(0, ceil(log2(||A||_1 / theta))) squarings,

        expm(A) = T_8(A / 2^s)^(2^s),  T_8(X) = sum_{k<=8} X^k / k!,

    and ||A / 2^s||_1 <= theta = 0.5 bounds the truncation error of T_8 by
    theta^9 / 9! e^theta, below float32's rounding. Eight products and no
    linear solve, against ``jax.scipy.linalg.expm``'s Pade approximant, whose
    solve (an LU factorisation) costs more than the whole rest of a small
    generation on CPU; xNES's steps eta_B / 2 G_B have small norms, so s is
    usually 0. A matrix that needs more than 16 squarings (or is not finite)
    gives NaN, which the update's finiteness check turns into a skipped step.
    """
    identity = jnp.eye(matrix.shape[0], dtype=matrix.dtype)
    norm = jnp.max(jnp.sum(jnp.abs(matrix), axis=0))
    needed = jnp.ceil(jnp.log2(norm / _EXPM_THETA))
    ok = jnp.isfinite(norm) & (needed <= _EXPM_MAX_SQUARINGS)
    squarings = jnp.where(ok, jnp.clip(needed, 0, _EXPM_MAX_SQUARINGS), 0).astype(jnp.int32)
    scaled = matrix / jnp.exp2(squarings.astype(matrix.dtype))
    power = identity
    for k in range(_EXPM_DEGREE, 0, -1):  # Horner: I + X/1 (I + X/2 (I + ...))
        power = identity + scaled @ power / k
    power = jax.lax.fori_loop(0, squarings, lambda _, r: r @ r, power)
    return jnp.where(ok, power, jnp.nan)


class xNES(XNES):  # noqa: N801 (evosax's name)
    """:class:`XNES` with evosax 0.3's constructor: code ports by changing an import.

    Args:
      population_size: lambda; default 4 + floor(3 ln d).
      solution: template pytree of one solution.
      optimizer: an optax transformation of the mean's step eta_mu sigma B G_delta,
        which it receives as the gradient ``-eta_mu sigma B G_delta``; its state is
        ``state.opt_state``. None (default) is the paper's update, which evosax's
        default ``optax.sgd(1.0)`` reproduces exactly.
      fitness_shaping_fn: ``weights_fitness_shaping_fn`` (evosax's default, the
        utilities ``params.utilities`` by rank) or None; any other function raises a
        ValueError (evosax would use its values as the utilities).
      metrics_fn: must be None: evopes' metrics already include evosax's keys.
      maximize: maximise fitness instead of minimising it.

    The algorithm and everything else are :class:`XNES`'s.
    """

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
        super().__init__(population_size, solution, maximize=maximize)
        check_optimizer(optimizer, allow_none=True)
        check_rank_weights_shaping(fitness_shaping_fn, "utilities")
        check_metrics_fn(metrics_fn)
        self.optimizer = optimizer
