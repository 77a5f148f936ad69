"""OpenAI-ES (Salimans, Ho, Chen, Sidor, Sutskever 2017, arXiv 1703.03864).

Mirrored Gaussian perturbations, centered-rank fitness shaping, weight decay
and any optax optimizer on the mean. With n = 2P members x_j = theta + sigma
eps_j, eps_{i+P} = -eps_i, and shaped fitness F_j, the search gradient of
Algorithm 2 of the paper is

    g = 1 / (n sigma) * sum_j F_j eps_j = 1 / (2 P sigma) * sum_i (F_i - F_{i+P}) eps_i,

and the mean moves by ``optimizer.update(g + weight_decay * theta)``; sigma
follows ``sigma <- clip(sigma * std_decay, std_min, std_max)`` after every generation.

By default the perturbations are slices of a shared noise table (section 2.1
of the paper; :class:`evopes.NoiseTable`): rebuilding them in ``tell`` is a
memory copy, where regenerating Gaussian noise costs as much as drawing it in
``ask``. Pass ``noise=evopes.GaussianNoise()`` for exact independent normals.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import optax

from evopes import shaping
from evopes.noise import NoiseSource, NoiseTable
from evopes.spec import PyTree
from evopes.strategies.antithetic import AntitheticES

#: Defaults (static configuration; equal whichever instance is passed).
DEFAULT_OPTIMIZER = optax.adam(learning_rate=1e-2)
DEFAULT_NOISE = NoiseTable()


class OpenES(AntitheticES):
    """OpenAI evolution strategy (OpenAI-ES).

    Args:
      population_size: number of members (even; ``population_size // 2`` mirrored pairs).
      solution: template pytree of one solution.
      optimizer: optax optimizer of the mean (default Adam, learning rate 0.01,
        as in the paper's MuJoCo experiments).
      fitness_shaping: default centered ranks in [-0.5, 0.5]; non-finite
        fitness ranks worst.
      noise: default ``NoiseTable()`` (2**24 floats, 64 MiB, drawn once in
        ``init``); ``GaussianNoise()`` draws fresh normals instead.
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
        fitness_shaping: Callable[[jax.Array], jax.Array] = shaping.centered_rank,
        noise: NoiseSource = DEFAULT_NOISE,
        maximize: bool = False,
    ):
        super().__init__(
            population_size,
            solution,
            optimizer=optimizer,
            fitness_shaping=fitness_shaping,
            noise=noise,
            mask_nonfinite_pairs=False,
            maximize=maximize,
        )


#: evosax's name, so that code ports by changing an import.
Open_ES = OpenES
