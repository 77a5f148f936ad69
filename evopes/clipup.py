"""ClipUp: normalised gradient, heavy-ball momentum, clipped speed.

Toklu, Liskowski, Srivastava (2020), "ClipUp: A Simple and Powerful
Optimizer for Distribution-based Policy Evolution" (arXiv 2008.02387). With
step size alpha, momentum m and maximum speed v_max, one step on a gradient
estimate g (of a loss to *minimise*) is

    v <- m v - alpha g / ||g||                     (normalised gradient, momentum)
    v <- v_max v / ||v||   if ||v|| > v_max          (speed clipping)
    theta <- theta + v

Normalising g makes the step independent of the fitness scale, so the same
alpha works whatever the rewards look like; clipping bounds the speed that
momentum can build up. The paper recommends m = 0.9 and alpha = v_max / 2,
the defaults here. Norms are global, over the whole pytree. A zero gradient
contributes nothing (never 0 / 0).

Returned as an optax ``GradientTransformation`` (updates are *added* to the
parameters, as with ``optax.sgd``), so it plugs into any strategy that takes
an ``optimizer``: :class:`~evopes.strategies.pgpe.PGPE`,
:class:`~evopes.strategies.ars.ARS`, :class:`~evopes.OpenES`, ... To vmap over
its numbers, wrap it: ``optax.inject_hyperparams(clipup)(learning_rate=...)``.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax


class ClipUpState(NamedTuple):
    """The velocity v, a pytree shaped like the parameters."""

    velocity: optax.Updates


def clipup(
    learning_rate: float,
    max_speed: float | None = None,
    momentum: float = 0.9,
) -> optax.GradientTransformation:
    """The ClipUp optimizer.

    Args:
      learning_rate: alpha, the length of the normalised gradient added to the
        velocity each step (> 0).
      max_speed: v_max, the largest length of a step (> 0); default
        ``2 * learning_rate`` (the paper's alpha = v_max / 2).
      momentum: m, the fraction of the velocity kept each step (in [0, 1)).

    Returns:
      An ``optax.GradientTransformation`` whose updates are the velocity.
    """
    if max_speed is None:
        max_speed = 2.0 * learning_rate
    for name, value in (("learning_rate", learning_rate), ("max_speed", max_speed)):
        # Finite too: an infinite speed limit or rate turns every step into inf or NaN.
        if not isinstance(value, jax.core.Tracer) and not 0 < float(value) < float("inf"):
            raise ValueError(f"{name}: expected a finite value > 0, got {value!r}")
    if not isinstance(momentum, jax.core.Tracer) and not 0.0 <= float(momentum) < 1.0:
        raise ValueError(f"momentum: expected a value in [0, 1), got {momentum!r}")

    def init(params):
        return ClipUpState(velocity=jax.tree.map(jnp.zeros_like, params))

    def update(updates, state, params=None):
        del params
        direction = _scale_to_norm(updates, 1.0)
        velocity = jax.tree.map(
            lambda v, g: momentum * v - learning_rate * g, state.velocity, direction
        )
        velocity = _scale_to_norm(velocity, max_speed, only_if_longer=True)
        return velocity, ClipUpState(velocity=velocity)

    return optax.GradientTransformation(init, update)


def _scale_to_norm(tree, target, only_if_longer: bool = False):
    """``tree * target / ||tree||`` (global norm); a zero tree stays zero.

    With ``only_if_longer`` a tree no longer than ``target`` is left unchanged.
    """
    norm = optax.global_norm(tree)
    # A zero tree has no direction: it stays zero instead of becoming 0 / 0 = NaN.
    safe_norm = jnp.where(norm > 0, norm, 1.0)
    scale = jnp.where(norm > 0, target / safe_norm, 0.0)
    if only_if_longer:
        scale = jnp.where(norm > target, scale, 1.0)
    return jax.tree.map(lambda leaf: (leaf * scale).astype(leaf.dtype), tree)
