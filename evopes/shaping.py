"""Fitness shaping: pure functions from raw fitness to the values an update uses.

Fitness is minimised throughout, so every function here maps *lower* raw
fitness to *lower* shaped values. Non-finite fitness (NaN, +inf, -inf) is
treated as the worst value: it ranks last, and value-based shapings replace
it before normalising, so it can never turn an update into NaN. The one
exception is :func:`identity`, which passes it through: an estimator that
uses raw fitness differences must drop the pair instead (a fitness of 0 or
+inf would be a made-up value), and a non-finite difference tells it to.

Every function has the signature ``shape(fitness) -> shaped`` on a vector of
shape ``(population_size,)`` and is safe under ``jit``/``vmap``.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import jax
import jax.numpy as jnp


def worst_if_nonfinite(fitness: jax.Array) -> jax.Array:
    """Replaces NaN and +-inf with +inf, so that they sort last (worst)."""
    return jnp.where(jnp.isfinite(fitness), fitness, jnp.inf)


#: Largest population whose ranks are counted pairwise rather than sorted.
#: XLA's CPU sort costs a few microseconds even for ten numbers, as much as
#: the rest of a small generation; the n^2 comparisons are one fused kernel
#: and cheaper up to about this size.
PAIRWISE_RANKS_MAX = 64


def ranks(fitness: jax.Array) -> jax.Array:
    """Rank of each member, 0 = best (lowest fitness); non-finite ranks last.

    Ties are broken by position (a stable sort), which keeps the result
    deterministic. Member i's rank is the number of members j that come
    before it: f_j < f_i, or f_j = f_i and j < i; counted directly for small
    populations, read off a stable argsort for larger ones (the same ranks).
    """
    fitness = worst_if_nonfinite(fitness)
    n = fitness.shape[0]
    if n <= PAIRWISE_RANKS_MAX:
        index = jnp.arange(n)
        ahead = (fitness[None, :] < fitness[:, None]) | (
            (fitness[None, :] == fitness[:, None]) & (index[None, :] < index[:, None])
        )
        return jnp.sum(ahead, axis=1, dtype=jnp.int32)
    order = jnp.argsort(fitness, stable=True)
    return jnp.empty_like(order).at[order].set(jnp.arange(n, dtype=order.dtype))


def identity(fitness: jax.Array) -> jax.Array:
    """Raw fitness, unchanged, non-finite entries included.

    Estimators that take differences of shaped fitness (OpenES, FullES) mask
    every pair whose difference is not finite, so a NaN or inf member drops
    its pair from the estimate instead of entering it with a made-up value.
    """
    return fitness


def centered_rank(fitness: jax.Array) -> jax.Array:
    """Ranks scaled to [-0.5, 0.5] (Salimans et al. 2017): r / (n - 1) - 0.5."""
    n = fitness.shape[0]
    return ranks(fitness).astype(jnp.float32) / max(n - 1, 1) - 0.5


def z_score(fitness: jax.Array, eps: float = 1e-8) -> jax.Array:
    """(f - mean) / std over the finite entries; non-finite entries get the worst z."""
    finite = jnp.isfinite(fitness)
    count = jnp.maximum(finite.sum(), 1)
    values = jnp.where(finite, fitness, 0.0)
    mean = values.sum() / count
    std = jnp.sqrt(jnp.where(finite, (values - mean) ** 2, 0.0).sum() / count)
    z = (values - mean) / (std + eps)
    worst = jnp.max(jnp.where(finite, z, -jnp.inf))
    return jnp.where(finite, z, jnp.where(jnp.isfinite(worst), worst, 0.0))


def cma_weights(population_size: int) -> jax.Array:
    """Positive recombination weights of CMA-ES (Hansen's tutorial, Eq. 49).

    w'_i = ln((lambda + 1) / 2) - ln(i) for the best mu = floor(lambda / 2)
    ranks, normalised to sum to one; the rest are zero.
    """
    mu = population_size // 2
    raw = jnp.log((population_size + 1) / 2) - jnp.log(jnp.arange(1, population_size + 1))
    positive = jnp.where(jnp.arange(population_size) < mu, raw, 0.0)
    return positive / positive.sum()


def weighted_rank(fitness: jax.Array) -> jax.Array:
    """CMA-style utilities: minus the CMA weight of each member's rank.

    The best member gets the most negative value, so that a gradient step on
    sum_i shaped_i * noise_i moves towards the best members, as with the other
    shapings here (lower shaped value = better).
    """
    weights = cma_weights(fitness.shape[0])
    return -weights[ranks(fitness)]


SHAPINGS = {
    "identity": identity,
    "centered_rank": centered_rank,
    "z_score": z_score,
    "weighted_rank": weighted_rank,
}


# -- evosax 0.3's names and signature ------------------------------------------------------
# evosax's shaping functions take ``(population, fitness, state, params)``; these
# are the functions above under evosax's names, for code ported by changing its
# imports (``evopes.Open_ES(..., fitness_shaping_fn=...)``). They read only the fitness,
# except :func:`weights_fitness_shaping_fn`, the default of the rank-based strategies.


def centered_rank_fitness_shaping_fn(population, fitness, state, params) -> jax.Array:
    """evosax's name for :func:`centered_rank`."""
    del population, state, params
    return centered_rank(fitness)


def identity_fitness_shaping_fn(population, fitness, state, params) -> jax.Array:
    """evosax's name for :func:`identity`."""
    del population, state, params
    return identity(fitness)


def standardize_fitness_shaping_fn(population, fitness, state, params) -> jax.Array:
    """evosax's name for :func:`z_score`."""
    del population, state, params
    return z_score(fitness)


def weights_fitness_shaping_fn(population, fitness, state, params) -> jax.Array:
    """evosax's name for the weights of a rank-based strategy: each member gets
    ``params.weights`` (``params.utilities`` for SNES and xNES) of its rank, best
    (lowest fitness) first, non-finite last.

    It is evosax's default ``fitness_shaping_fn`` of ``CMA_ES``, ``Sep_CMA_ES``,
    ``LM_MA_ES``, ``SimpleES``, ``SNES`` and ``xNES``, whose evopes classes look
    their weights up by rank themselves: they accept it and do what it says. It
    reads ``params``, so the strategies that call a shaping with the fitness only
    (``Open_ES``, ``PGPE``, ``ARS``) refuse it.
    """
    del population, state
    weights = getattr(params, "weights", None)
    weights = getattr(params, "utilities", None) if weights is None else weights
    if weights is None:
        raise ValueError(
            "fitness_shaping_fn: weights_fitness_shaping_fn expected params with weights "
            f"(or utilities) by rank, got {params!r}"
        )
    return jnp.asarray(weights)[ranks(fitness)]


def is_weights_shaping(fitness_shaping_fn) -> bool:
    """True for :func:`weights_fitness_shaping_fn` and for evosax's own (evosax is not imported)."""
    return fitness_shaping_fn is weights_fitness_shaping_fn or (
        getattr(fitness_shaping_fn, "__module__", None) == "evosax.core.fitness_shaping"
        and getattr(fitness_shaping_fn, "__qualname__", None) == "weights_fitness_shaping_fn"
    )


def from_evosax(fitness_shaping_fn) -> Callable[[jax.Array], jax.Array]:
    """An evosax shaping function ``fn(population, fitness, state, params)`` as an
    evopes one, ``shape(fitness)``: called with the fitness only (the other three
    arguments None), which is all evosax's rank, identity, standardize and
    normalize shapings read."""
    return functools.partial(_call_evosax_shaping, fitness_shaping_fn)


def _call_evosax_shaping(fitness_shaping_fn, fitness):
    return fitness_shaping_fn(None, fitness, None, None)
