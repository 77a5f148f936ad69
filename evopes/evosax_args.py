"""evosax 0.3's constructor arguments, translated for the classes that share its names.

evosax's ``Open_ES``, ``PGPE`` and ``ARS`` take ``fitness_shaping_fn`` (a
function of ``(population, fitness, state, params)``) and ``metrics_fn``;
evopes takes ``fitness_shaping`` (a function of the fitness alone) and reports
evosax's metric keys itself. These helpers accept evosax's arguments with a
clear error where evopes cannot follow them.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp

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
