"""Run one truncation window of a user's system for every particle.

The raw loop — ``ask``, run W steps yourself, ``tell`` — is the primary way to
drive an online strategy (see :class:`evopes.OnlineES`). :func:`unroll` is the
loop most users would write anyway, for a system given as one step function::

    step_fn(inner_one, theta_one, key_one) -> (inner_one, loss, done)

It maps ``step_fn`` over the particles with ``jax.vmap`` and over the steps of
the window with ``jax.lax.scan``. At every step each particle receives a key
shared with its antithetic partner (:func:`evopes.pair_keys`), so that partners
see the same data and environment noise (common random numbers).

A system that never ends an episode by itself (the strategy's ``horizon`` ends
them) returns ``done = None``: no flags are recorded, ``unroll`` returns
``dones = None``, and ``tell`` compiles without its done handling. Returning a
constant ``False`` is also correct, only slower: under ``jit`` the flags are
then ordinary arrays, written at every step and checked in ``tell``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

from evopes import threefry
from evopes.online.keys import pair_keys

PyTree = Any
StepFn = Callable[[PyTree, PyTree, jax.Array], tuple[PyTree, jax.Array, jax.Array]]


def unroll(
    step_fn: StepFn,
    population: PyTree,
    inner_state: PyTree,
    key: jax.Array,
    num_steps: int,
) -> tuple[PyTree, jax.Array, jax.Array]:
    """Runs ``num_steps`` steps of ``step_fn`` for every particle.

    Args:
      step_fn: ``(inner_one, theta_one, key_one) -> (inner_one, loss, done)``
        for ONE particle: ``loss`` a scalar, ``done`` a scalar bool (True when
        the system ended an episode at this step and reset itself), or None
        if the system never does.
      population: the pytree returned by ``ask``, leading axis ``2P``.
      inner_state: the particles' inner states, leading axis ``2P`` (``None``
        for a stateless system).
      key: randomness of this window; step ``s`` uses ``pair_keys`` of the
        ``s``-th split of ``key``.
      num_steps: the window length ``W`` (the strategy's ``truncation_length``).

    Returns:
      ``(inner_state, losses, dones)`` with ``losses`` float of shape
      ``(W, 2P)`` and ``dones`` bool of shape ``(W, 2P)`` (None when
      ``step_fn`` returns ``done = None``), ready for ``tell``.
    """
    leaves = jax.tree_util.tree_leaves(population)
    if not leaves:
        raise ValueError("population: expected a pytree with array leaves, got an empty tree")
    population_size = leaves[0].shape[0]
    if population_size % 2:
        raise ValueError(f"population: expected an even leading axis (2P), got {population_size}")
    if int(num_steps) != num_steps or num_steps < 1:
        raise ValueError(f"num_steps: expected an integer >= 1, got {num_steps!r}")
    num_pairs = population_size // 2

    def one_particle(inner, theta, key):
        if inner_state is None:
            try:
                inner, loss, done = step_fn(inner, theta, key)
            except TypeError as error:
                raise ValueError(
                    "inner_state: step_fn failed on inner_state=None; a strategy built "
                    "without init_inner holds no inner states. Give the strategy "
                    f"init_inner=... (a fresh inner state of one particle). ({error})"
                ) from error
        else:
            inner, loss, done = step_fn(inner, theta, key)
        loss = jnp.asarray(loss)
        if done is not None:
            done = jnp.asarray(done).astype(bool)
        done_shape = () if done is None else done.shape
        if loss.shape != () or done_shape != ():
            raise ValueError(
                "step_fn: expected a scalar loss and a scalar done (or None), "
                f"got shapes {loss.shape} and {done_shape}"
            )
        return inner, loss, done

    def one_step(inner, step_key):
        inner, losses, dones = jax.vmap(one_particle)(
            inner, population, pair_keys(step_key, num_pairs)
        )
        return inner, (losses, dones)

    inner_state, (losses, dones) = jax.lax.scan(
        one_step, inner_state, threefry.split(key, int(num_steps))
    )
    return inner_state, losses, dones


def sum_over_steps(values: jax.Array) -> jax.Array:
    """Sums over the leading (step) axis: ``(W, n) -> (n,)``, in float32.

    Written as a product with a vector of ones: on CPU, XLA runs a reduction
    over a (W, n) array an order of magnitude slower than the equivalent
    matrix-vector product (for W = 100, n = 400 the reduction cost as much as a
    hundred steps of a small system).
    """
    values = jnp.asarray(values).astype(jnp.float32)
    ones = jnp.ones((values.shape[0],), jnp.float32)
    return jnp.dot(ones, values, precision=jax.lax.Precision.HIGHEST)


def mean_over_steps(losses: jax.Array) -> jax.Array:
    """Every particle's time-average loss over a window or episode: ``(W, 2P) -> (2P,)``.

    The fitness of whole-episode strategies (FullES, OpenES, CMA-ES) from the
    losses :func:`unroll` returns; the same as ``jnp.mean(losses, axis=0)``,
    computed as in :func:`sum_over_steps`.
    """
    return sum_over_steps(losses) / jnp.shape(losses)[0]
