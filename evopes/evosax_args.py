"""evosax 0.3's constructor arguments, translated for the classes that share its names.

evosax's ``Open_ES``, ``PGPE`` and ``ARS`` take ``fitness_shaping_fn`` (a
function of ``(population, fitness, state, params)``) and ``metrics_fn``;
evopes takes ``fitness_shaping`` (a function of the fitness alone) and reports
evosax's metric keys itself. evosax's rank-based strategies (``CMA_ES``,
``Sep_CMA_ES``, ``LM_MA_ES``, ``SimpleES``, ``SNES``, ``xNES``) use the shaped
fitness as the recombination weights themselves, and the last three move the
mean with an optax ``optimizer``. These helpers accept evosax's arguments with
a clear error where evopes cannot follow them.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
import optax

from evopes import shaping


def fitness_shaping_from(fitness_shaping: Callable | None, fitness_shaping_fn: Callable | None,
                         default: Callable) -> Callable:
    """evopes' ``fitness_shaping``, or evosax's ``fitness_shaping_fn`` translated; not both."""
    if fitness_shaping is not None and fitness_shaping_fn is not None:
        raise ValueError(
            "fitness_shaping_fn: give either evopes' fitness_shaping (a function of the "
            "fitness) or evosax's fitness_shaping_fn, not both"
        )
    if fitness_shaping_fn is not None:
        if shaping.is_weights_shaping(fitness_shaping_fn):
            raise ValueError(
                "fitness_shaping_fn: weights_fitness_shaping_fn reads params.weights, which "
                "this strategy has not; expected a function of the fitness such as "
                f"centered_rank_fitness_shaping_fn, got {fitness_shaping_fn!r}"
            )
        if not callable(fitness_shaping_fn):
            raise ValueError(
                "fitness_shaping_fn: expected a function (population, fitness, state, "
                f"params) -> shaped fitness, got {fitness_shaping_fn!r}"
            )
        return shaping.from_evosax(fitness_shaping_fn)
    return default if fitness_shaping is None else fitness_shaping


def check_metrics_fn(metrics_fn: Callable | None) -> None:
    """evosax's ``metrics_fn`` is accepted as None only: evopes' metrics have evosax's keys."""
    if metrics_fn is not None:
        raise ValueError(
            "metrics_fn: not supported; tell's metrics already include evosax's keys "
            f"(see the porting page), got {metrics_fn!r}"
        )


def scheduled_std(std_schedule: Callable | None, std: jax.Array, generation) -> jax.Array:
    """The std of generation ``generation``: ``std_schedule(generation)`` when there is
    a schedule (evosax's rule), else ``std`` (the strategy's own rule), as float32."""
    if std_schedule is not None:
        std = std_schedule(generation)
    return jnp.asarray(std, jnp.float32)


def check_std_schedule(std_schedule: Callable | None) -> None:
    """ValueError unless ``std_schedule`` is None or a function of the generation counter."""
    if std_schedule is not None and not callable(std_schedule):
        raise ValueError(
            "std_schedule: expected a function of the generation counter (an optax "
            f"schedule) or None, got {std_schedule!r}"
        )


def check_rank_weights_shaping(fitness_shaping_fn: Callable | None, weights: str) -> None:
    """ValueError unless ``fitness_shaping_fn`` is evosax's default for a rank-based strategy.

    evosax's ``CMA_ES``, ``Sep_CMA_ES``, ``LM_MA_ES``, ``SimpleES``, ``SNES`` and
    ``xNES`` use the shaped fitness as each member's recombination weight; their
    default, ``weights_fitness_shaping_fn``, looks ``params.weights`` up by rank,
    which is what evopes' classes do with ``params.<weights>``. They rank the raw
    fitness, so they are invariant to any increasing transformation of it and need
    no shaping before ranking; any other function would make its values the weights,
    an algorithm evopes does not implement.
    """
    if fitness_shaping_fn is None or shaping.is_weights_shaping(fitness_shaping_fn):
        return
    raise ValueError(
        "fitness_shaping_fn: expected weights_fitness_shaping_fn (evosax's default) or None; "
        f"the recombination weights are params.{weights} by rank (evosax would use another "
        f"function's values as the weights themselves), got {fitness_shaping_fn!r}"
    )


def check_optimizer(optimizer, allow_none: bool = False) -> None:
    """ValueError unless ``optimizer`` is an optax GradientTransformation (or allowed None)."""
    if optimizer is None and allow_none:
        return
    if not (callable(getattr(optimizer, "init", None))
            and callable(getattr(optimizer, "update", None))):
        raise ValueError(
            f"optimizer: expected an optax GradientTransformation, got {optimizer!r}"
        )


def init_opt_state(optimizer: optax.GradientTransformation | None, mean: jax.Array):
    """The optimizer's state of the mean; ``()`` (no leaves) without an optimizer."""
    return () if optimizer is None else optimizer.init(mean)


def optax_mean_update(optimizer: optax.GradientTransformation | None, step: jax.Array,
                      opt_state, mean: jax.Array):
    """The new mean and optimizer state, for the strategy's own mean ``step``.

    Without an optimizer, ``mean + step``. With one, ``step`` (a descent step on
    the minimised fitness) is handed to optax as the gradient ``-step``:
    ``mean + optimizer.update(-step)``, so ``optax.sgd(lr)`` gives
    ``mean + lr * step`` (exactly ``mean + step`` for lr = 1, evosax's default).
    """
    if optimizer is None:
        return mean + step, opt_state
    updates, opt_state = optimizer.update(-step, opt_state, mean)
    return optax.apply_updates(mean, updates), opt_state
