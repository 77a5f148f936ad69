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
from evopes.evosax_args import check_metrics_fn, fitness_shaping_from
from evopes.noise import GaussianNoise, NoiseSource, NoiseTable
from evopes.spec import PyTree
from evopes.strategies.antithetic import AntitheticES

#: Defaults (static configuration; equal whichever instance is passed).
DEFAULT_OPTIMIZER = optax.adam(learning_rate=1e-2)
DEFAULT_NOISE = NoiseTable()
EVOSAX_NOISE = GaussianNoise()


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
      std_schedule: optional ``std_schedule(g)``, the sigma of generation g (an
        optax schedule); ``params.std_init`` and ``std_decay`` are then unused.
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
        std_schedule: Callable | None = None,
        maximize: bool = False,
    ):
        super().__init__(
            population_size,
            solution,
            optimizer=optimizer,
            fitness_shaping=fitness_shaping,
            noise=noise,
            mask_nonfinite_pairs=False,
            std_schedule=std_schedule,
            maximize=maximize,
        )


#: evosax 0.3's defaults of ``Open_ES``.
EVOSAX_OPTIMIZER = optax.sgd(learning_rate=1e-3)
EVOSAX_STD_SCHEDULE = optax.constant_schedule(1.0)


class Open_ES(OpenES):  # noqa: N801 (evosax's name)
    """:class:`OpenES` with evosax 0.3's constructor: code ports by changing an import.

    The arguments, their order and their defaults are evosax's ``Open_ES``:
    SGD with learning rate 1e-3 on the mean, sigma from ``std_schedule``
    (default a constant 1), centered ranks, fresh Gaussian noise. The algorithm
    and everything else (params, state, metrics, checks) are :class:`OpenES`'s.

    Args:
      population_size: number of members (even).
      solution: template pytree of one solution.
      use_antithetic_sampling: must be True (evosax's default): evopes always
        samples mirrored pairs.
      optimizer: optax optimizer of the mean.
      std_schedule: sigma of generation g is ``std_schedule(g)``
        (``params.std_init`` and ``std_decay`` are then unused; ``std_min`` and
        ``std_max`` still clip it). evosax applies ``std_schedule(g - 1)`` from
        generation 2 on, one generation later.
      fitness_shaping_fn: an evosax shaping function ``fn(population, fitness,
        state, params)``; it is called with the fitness only (see
        :func:`evopes.shaping.from_evosax`). evosax's own and
        ``evopes.shaping.centered_rank_fitness_shaping_fn`` (the default) work.
      metrics_fn: must be None: evopes' metrics already include evosax's keys.
      noise: evopes' noise source (default fresh normals, as evosax draws).
      maximize: maximise fitness instead of minimising it.
    """

    def __init__(
        self,
        population_size: int,
        solution: PyTree,
        use_antithetic_sampling: bool = True,
        optimizer: optax.GradientTransformation = EVOSAX_OPTIMIZER,
        std_schedule: Callable = EVOSAX_STD_SCHEDULE,
        fitness_shaping_fn: Callable = shaping.centered_rank_fitness_shaping_fn,
        metrics_fn: Callable | None = None,
        *,
        noise: NoiseSource = EVOSAX_NOISE,
        maximize: bool = False,
    ):
        if use_antithetic_sampling is not True:
            raise ValueError(
                "use_antithetic_sampling: evopes' OpenES always samples mirrored pairs "
                f"(evosax's default, True), got {use_antithetic_sampling!r}"
            )
        check_metrics_fn(metrics_fn)
        super().__init__(
            population_size,
            solution,
            optimizer=optimizer,
            fitness_shaping=fitness_shaping_from(None, fitness_shaping_fn, shaping.centered_rank),
            noise=noise,
            std_schedule=std_schedule,
            maximize=maximize,
        )
