"""Antithetic Gaussian-smoothing ES: the piece OpenES and FullES share.

Both strategies estimate the gradient of the Gaussian-smoothed objective

    J(theta) = E_{z ~ N(0, I)} [ f(theta + sigma z) ]

from P antithetic pairs, member i = theta + sigma z_i and member i + P =
theta - sigma z_i (the *halves* layout), and hand it to an optax optimizer:

    g = 1 / (2 P_valid sigma) * sum_{valid pairs i} (F_i - F_{i+P}) z_i         (1)

where F = shaping(f) is the shaped fitness of the 2P members.

* With centered-rank shaping and every pair valid this is Salimans et al.
  (2017), Algorithm 2 with mirrored sampling: g = 1/(n sigma) sum_j F_j eps_j
  over the n = 2P members, eps_{i+P} = -eps_i.
* With identity shaping, (F_i - F_{i+P}) z_i / (2 sigma) =
  (f(theta + e_i) - f(theta - e_i)) e_i / (2 sigma^2) with e_i = sigma z_i, the
  unbiased antithetic estimator of grad J (FullES, Stein's lemma).

Perturbations are never stored: ``ask`` draws ``P`` noise ids with
``noise.draw_ids(key, P, num_dims)`` and keeps only those ids (O(P) numbers)
in the state, so ``tell`` works without the population
(``tell(key, None, fitness, ...)``). Where it gets z_i from:

* ``NoiseTable``: z_i is a slice of the table at its id, a cheap copy; the
  population, if given, is not read.
* ``GaussianNoise``: z_i = (x_i - x_{i+P}) / (2 sigma) from the population
  when it is handed back, one pass over it. Regenerating z_i from its id
  instead would cost a second round of random-bit generation, which dominates
  a generation at large n on CPU. The difference of the two members is exact
  up to the rounding of x at |theta|: an absolute error of about
  eps32 |theta| / sigma in z (1e-5 for |theta| = 1, sigma = 0.01). With
  ``population=None``, or a solution with leaves narrower than float32 (whose
  rounding or overflow would spoil z), z_i is regenerated from its id.

Pairs with a non-finite fitness either follow the shaping (rank shapings rank
them worst; OpenES) or are masked out of (1) and counted (FullES,
``mask_nonfinite_pairs=True``). A pair whose shaped difference is not finite is
always masked (so identity shaping drops it too), and P_valid = 0 gives a zero
gradient, never 0/0.

sigma is kept in [``std_min``, ``std_max``]. The estimate scales like 1 / sigma,
so a tiny sigma (or a huge ``weight_decay``) can overflow the optimizer's
state (Adam's second moment is g^2): an update whose new mean (in the
solution's own dtypes) or optimizer state is not finite is skipped, the state
keeps its last finite values, and the ``update_skipped`` metric reports it.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import struct

from evopes.config_key import static_key  # noqa: F401 (kept importable from here)
from evopes.evosax_args import check_std_schedule, scheduled_std
from evopes.finite import all_finite
from evopes.noise import GaussianNoise, NoiseSource, NoiseTable, readable_from_population
from evopes.population_check import no_checksum
from evopes.spec import PyTree
from evopes.strategy import Params, State, Strategy

#: Floats regenerated per block when summing Gaussian perturbations in ``tell``:
#: blocks keep the random-bit generation vectorised while the memory stays
#: O(block) instead of O(P * num_dims).
_GAUSSIAN_BLOCK_FLOATS = 2**18


@struct.dataclass
class AntitheticState(State):
    """State of an antithetic ES: no perturbations, only their ids.

    Attributes:
      std: the current noise scale sigma (set from ``params.std_init`` in
        ``init``, then decayed after every ``tell``).
      opt_state: the optax optimizer state of the mean.
      noise_state: the noise source's arrays (the shared table, or nothing).
      noise_ids: ids of the last generation's P perturbations, shape (P, k).
      population_checksum: checksum of the last ``ask``'s population
        (:mod:`evopes.population_check`); ``tell`` reads only that population.
    """

    std: jax.Array
    opt_state: optax.OptState
    noise_state: jax.Array
    noise_ids: jax.Array
    population_checksum: jax.Array


@struct.dataclass
class AntitheticParams(Params):
    """Hyperparameters (vmappable).

    Attributes:
      std_init: sigma of the first generation (> 0).
      std_decay: sigma is multiplied by this after every generation (> 0).
      std_min: floor of sigma (>= 0).
      std_max: ceiling of sigma (>= std_min); 1e20 keeps the population finite
        in float32 for any mean below about 1e37.
      weight_decay: L2 coefficient lambda on the mean; the update uses
        g + lambda * theta, the gradient of J + lambda / 2 ||theta||^2 (>= 0).
    """

    std_init: float = 0.1
    std_decay: float = 1.0
    std_min: float = 0.0
    std_max: float = 1e20
    weight_decay: float = 0.0


class AntitheticES(Strategy):
    """Antithetic ES with regenerated noise and an optax optimizer on the mean.

    Subclasses (:class:`~evopes.strategies.OpenES`,
    :class:`~evopes.strategies.FullES`) only choose defaults.

    Args:
      population_size: number of members, even: ``population_size // 2`` pairs.
      solution: template pytree of one solution.
      optimizer: any optax ``GradientTransformation``, applied to the mean with
        the gradient estimate (1). Static configuration.
      fitness_shaping: ``shaped = fitness_shaping(fitness)`` on the raw
        (minimised) fitness of the population, e.g. ``evopes.shaping.centered_rank``.
      noise: where perturbations come from: ``evopes.NoiseTable()`` or
        ``evopes.GaussianNoise()``.
      mask_nonfinite_pairs: drop pairs with a non-finite fitness from (1) and
        normalise by the valid pairs; otherwise the shaping handles them.
      maximize: maximise the fitness instead of minimising it.
    """

    uses_population = False

    @property
    def reads_population_if_given(self) -> bool:
        return readable_from_population(self.noise, self.spec)

    def __init__(
        self,
        population_size: int,
        solution: PyTree,
        *,
        optimizer: optax.GradientTransformation,
        fitness_shaping: Callable[[jax.Array], jax.Array],
        noise: NoiseSource,
        mask_nonfinite_pairs: bool,
        std_schedule: Callable[[jax.Array], jax.Array] | None = None,
        maximize: bool = False,
    ):
        if int(population_size) != population_size or population_size < 2 or population_size % 2:
            raise ValueError(
                "population_size: expected an even integer >= 2 (antithetic pairs), "
                f"got {population_size!r}"
            )
        super().__init__(population_size, solution, maximize=maximize)
        if not (
            callable(getattr(optimizer, "init", None))
            and callable(getattr(optimizer, "update", None))
        ):
            raise ValueError(
                f"optimizer: expected an optax GradientTransformation, got {optimizer!r}"
            )
        if not callable(fitness_shaping):
            raise ValueError(
                f"fitness_shaping: expected a function of the fitness, got {fitness_shaping!r}"
            )
        if not isinstance(noise, GaussianNoise | NoiseTable):
            raise ValueError(
                f"noise: expected evopes.NoiseTable or evopes.GaussianNoise, got {noise!r}"
            )
        self.optimizer = optimizer
        self.fitness_shaping = fitness_shaping
        self.noise = noise
        self.mask_nonfinite_pairs = bool(mask_nonfinite_pairs)
        check_std_schedule(std_schedule)
        self.std_schedule = std_schedule

    def _scheduled_std(self, std, generation, params) -> jax.Array:
        """sigma of generation ``generation`` (``std_schedule`` if any, else ``std``),
        clipped to [std_min, std_max]."""
        std = scheduled_std(self.std_schedule, std, generation)
        return jnp.clip(std, params.std_min, params.std_max)

    @property
    def num_pairs(self) -> int:
        return self.population_size // 2

    @property
    def default_params(self) -> AntitheticParams:
        return AntitheticParams()

    #: Valid ranges (inclusive); see :attr:`evopes.Strategy.param_ranges`.
    param_ranges = {
        "std_init": (1e-30, 1e30),
        "std_decay": (1e-30, 1e30),
        "std_min": (0.0, 1e30),
        "std_max": (1e-30, 3e38),
        "weight_decay": (0.0, 1e30),
    }

    def validate_params(self, params: AntitheticParams) -> None:
        super().validate_params(params)
        if not any(isinstance(v, jax.core.Tracer) for v in (params.std_min, params.std_max)):
            if np.any(np.asarray(params.std_min) > np.asarray(params.std_max)):
                raise ValueError(
                    f"params.std_min: expected <= params.std_max ({params.std_max}), "
                    f"got {params.std_min}"
                )

    # -- the algorithm ----------------------------------------------------------
    def _init(self, key: jax.Array, mean: jax.Array, params: AntitheticParams) -> AntitheticState:
        ids = jax.eval_shape(
            lambda: self.noise.draw_ids(jax.random.key(0), self.num_pairs, self.num_dims)
        )
        return AntitheticState(
            mean=mean,
            best_solution=mean,
            best_fitness=jnp.array(jnp.inf, jnp.float32),
            generation_counter=jnp.array(0, jnp.int32),
            std=self._scheduled_std(jnp.asarray(params.std_init, jnp.float32), 0, params),
            opt_state=self.optimizer.init(mean),
            # The init key itself seeds the noise source, so that another
            # strategy initialised with the same key sees the same table.
            noise_state=self.noise.init(key, self.num_dims),
            noise_ids=jnp.zeros(ids.shape, ids.dtype),
            population_checksum=no_checksum(),
        )

    def _ask(self, key: jax.Array, state: AntitheticState, params: AntitheticParams):
        ids = self.noise.draw_ids(key, self.num_pairs, self.num_dims)
        state = state.replace(noise_ids=ids)
        return self._asked_population(state, params), state

    def _asked_population(self, state: AntitheticState, params) -> jax.Array:
        perturbation = state.std * self.noise.sample(
            state.noise_state, state.noise_ids, self.num_dims
        )
        return jnp.concatenate([state.mean + perturbation, state.mean - perturbation])

    def _member(self, population, index, state: AntitheticState, params) -> jax.Array:
        if population is not None:  # the point evaluated, as handed back
            return super()._member(population, index, state, params)
        # Rebuild only the requested member from its pair's noise id.
        pair = index % self.num_pairs
        z = self.noise.sample(state.noise_state, state.noise_ids[pair], self.num_dims)
        perturbation = state.std * z
        return jnp.where(
            index < self.num_pairs, state.mean + perturbation, state.mean - perturbation
        )

    def _tell(self, key, population, fitness, state: AntitheticState, params: AntitheticParams):
        del key
        gradient, num_valid = self._estimate(fitness, state, population)
        updates, opt_state = self.optimizer.update(
            gradient + params.weight_decay * state.mean, state.opt_state, state.mean
        )
        mean = optax.apply_updates(state.mean, updates)
        # An overflowed update (see the module docstring) is skipped whole; the
        # mean must also be finite in the solution's own dtypes (e.g. float16).
        # No update from no information: with fewer than two distinct finite
        # fitness values (all NaN, all equal) ranks and differences carry
        # nothing, but a rank-shaped estimate would still step (ties broken by
        # position), and so would Adam's momentum.
        finite_fitness = jnp.isfinite(fitness)
        informative = jnp.max(jnp.where(finite_fitness, fitness, -jnp.inf)) > jnp.min(
            jnp.where(finite_fitness, fitness, jnp.inf)
        )
        usable = informative & all_finite((self.spec.unravel(mean), opt_state))
        mean, opt_state = jax.tree_util.tree_map(
            lambda new, old: jnp.where(usable, new, old),
            (mean, opt_state),
            (state.mean, state.opt_state),
        )
        new_state = state.replace(
            mean=mean,
            opt_state=opt_state,
            std=self._scheduled_std(
                state.std * params.std_decay, state.generation_counter + 1, params
            ),
        )
        metrics = {
            "update_skipped": ~usable,
            "gradient": self.spec.unravel(gradient),
            "gradient_norm": jnp.linalg.norm(gradient),
            "std": state.std,
            "num_masked_pairs": self.num_pairs - num_valid,
        }
        return new_state, metrics

    def _estimate(
        self, fitness: jax.Array, state: AntitheticState, population: jax.Array | None = None
    ) -> tuple[jax.Array, jax.Array]:
        """Eq. (1) on raw (minimised) fitness; returns the flat gradient and P_valid.

        ``population``: the flat population of the last ``ask``, or None to
        rebuild the perturbations from ``state.noise_ids``.
        """
        num_pairs = self.num_pairs
        shaped = self.fitness_shaping(fitness)
        difference = shaped[:num_pairs] - shaped[num_pairs:]
        valid = jnp.isfinite(difference)
        if self.mask_nonfinite_pairs:
            finite = jnp.isfinite(fitness)
            valid &= finite[:num_pairs] & finite[num_pairs:]
        num_valid = valid.sum()
        coefficients = jnp.where(valid, difference, 0.0) / (
            2.0 * jnp.maximum(num_valid, 1) * state.std
        )
        if population is not None:
            # sum_i c_i z_i with z_i = (x_i - x_{i+P}) / (2 sigma): one pass, no bit generation.
            differences = population[:num_pairs] - population[num_pairs:]
            # A masked pair must add 0 even if its members overflowed (0 * inf = NaN).
            differences = jnp.where(valid[:, None], differences, 0.0)
            gradient = (coefficients / (2.0 * state.std)) @ differences
        else:
            gradient = weighted_noise_sum(
                self.noise, state.noise_state, state.noise_ids, coefficients, self.num_dims
            )
        return gradient, num_valid

    # -- public extras ----------------------------------------------------------
    def estimate_gradient(
        self, fitness: jax.Array, state: AntitheticState, params: AntitheticParams
    ) -> PyTree:
        """Gradient estimate (1) of the minimised objective for the last ``ask``, without
        weight decay and without updating anything (e.g. for variance studies)."""
        del params
        fitness = self._check_fitness(fitness)
        gradient, _ = self._estimate(-fitness if self.maximize else fitness, state)
        return self.spec.unravel(gradient)


def weighted_noise_sum(
    noise: NoiseSource,
    noise_state: jax.Array,
    ids: jax.Array,
    weights: jax.Array,
    num_dims: int,
) -> jax.Array:
    """sum_i weights[i] * z_i with z_i = noise.sample(noise_state, ids[i], num_dims).

    The perturbations are regenerated block by block inside ``lax.scan``, so
    memory stays O(block * num_dims) rather than O(P * num_dims). A table slice
    is a cheap copy and is summed one at a time; Gaussian noise is drawn in
    blocks of about ``_GAUSSIAN_BLOCK_FLOATS`` numbers so bit generation stays
    vectorised.
    """
    num = ids.shape[0]
    if isinstance(noise, NoiseTable):
        block = 1
    else:
        block = max(
            (
                size
                for size in range(1, num + 1)
                if num % size == 0 and size * num_dims <= _GAUSSIAN_BLOCK_FLOATS
            ),
            default=1,
        )
    blocked_ids = ids.reshape((num // block, block) + ids.shape[1:])
    blocked_weights = weights.reshape(num // block, block)

    def add_block(total, block_ids_weights):
        block_ids, block_weights = block_ids_weights
        return total + block_weights @ noise.sample(noise_state, block_ids, num_dims), None

    total, _ = jax.lax.scan(
        add_block, jnp.zeros((num_dims,), jnp.float32), (blocked_ids, blocked_weights)
    )
    return total


def _check_nonnegative(params: Params, *names: str) -> None:
    for name in names:
        value = getattr(params, name)
        if isinstance(value, jax.core.Tracer):
            continue
        array = np.asarray(value)
        if not np.all(np.isfinite(array)) or np.any(array < 0):
            raise ValueError(f"params.{name}: expected a finite value >= 0, got {array}")
