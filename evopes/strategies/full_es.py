"""FullES: antithetic ES over whole episodes, the unbiased offline baseline.

Each member runs a whole episode (all particles start at t = 0, W = T) with
one perturbation, and the gradient of the Gaussian-smoothed loss
J(theta) = E_e[L(theta + e)], e = sigma z, is estimated by the antithetic
Stein estimator (Vicol et al. 2021; Li et al. 2023, the "FullES" baseline):

    g = 1 / P_valid * sum_{valid pairs i} (L(theta + e_i) - L(theta - e_i)) e_i / (2 sigma^2),

an unbiased estimate of grad J. A pair with any non-finite loss is masked
(zero contribution, P_valid counts the others, 0 valid pairs gives g = 0) and
counted in ``metrics["num_masked_pairs"]``. Identity shaping and plain SGD
are the defaults, so the update is a plain stochastic gradient step on J.

This is the same computation as :class:`evopes.strategies.OpenES` with
identity shaping; both are :class:`~evopes.strategies.antithetic.AntitheticES`.
Pair i's perturbation is exactly ``std * noise.sample(noise_state,
noise.draw_ids(ask_key, P, num_dims), num_dims)[i]``, so an online strategy
that draws one noise per episode (NRES with W = T, lock-step) reproduces it
for the same keys.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import optax

from evopes import shaping
from evopes.noise import GaussianNoise, NoiseSource
from evopes.spec import PyTree
from evopes.strategies.antithetic import AntitheticES

#: Defaults (static configuration; equal whichever instance is passed).
DEFAULT_OPTIMIZER = optax.sgd(learning_rate=1e-2)
DEFAULT_NOISE = GaussianNoise()


class FullES(AntitheticES):
    """Antithetic whole-episode ES with the unbiased estimator.

    Args:
      population_size: number of members (even; P = ``population_size // 2`` pairs).
      solution: template pytree of one solution.
      optimizer: optax optimizer of the mean (default plain SGD, learning rate 0.01).
      fitness_shaping: default identity (keeps the estimator unbiased).
      noise: default ``GaussianNoise()``, exact independent normals regenerated
        from O(P) keys; ``NoiseTable()`` is faster at large ``num_dims``.
      maximize: maximise fitness instead of minimising it.

    Hyperparameters (``es.default_params``): ``std_init=0.1``,
    ``std_decay=1.0``, ``std_min=0.0``, ``std_max=1e20``, ``weight_decay=0.0``.
    """

    def __init__(
        self,
        population_size: int,
        solution: PyTree,
        *,
        optimizer: optax.GradientTransformation = DEFAULT_OPTIMIZER,
        fitness_shaping: Callable[[jax.Array], jax.Array] = shaping.identity,
        noise: NoiseSource = DEFAULT_NOISE,
        maximize: bool = False,
    ):
        super().__init__(
            population_size,
            solution,
            optimizer=optimizer,
            fitness_shaping=fitness_shaping,
            noise=noise,
            mask_nonfinite_pairs=True,
            maximize=maximize,
        )
