"""Recognising the population ``ask`` returned when it comes back to ``tell``.

Several strategies read their perturbations off the population handed back
(``(x - m) / sigma``, or ``(x_i - x_{i+P}) / 2`` for a pair) because that is
cheaper than generating the random numbers again. That is only right if the
population is bit for bit the one ``ask`` produced: a population clipped to
bounds, edited, or from another ``ask`` would silently change the update.

``ask`` therefore keeps a 32-bit checksum of its flat population in the state,

    c = sum_k  bits(x_k) * (2 k + 1)   (mod 2^32),

over the flat index k of every entry, and ``tell`` reads the population only
if its checksum is the same; otherwise it reads the population ``ask``
returned, rebuilt from the state (the online engine regenerates the noise),
and says so in ``metrics["population_mismatch"]``. Integer addition is exact and associative,
so the checksum does not depend on how XLA orders the sum (or shards it), and
because every multiplier is odd, changing any single entry in any bit always
changes it; two changes cancel with probability 2^-32. The cost is one pass of
integer arithmetic over the population, a small fraction of drawing it.

To evaluate a clipped population, evaluate the clipped copy and hand back the
population ``ask`` returned (or ``None``); see the ask/tell concept page.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def population_checksum(flat_population: jax.Array) -> jax.Array:
    """The uint32 checksum ``c`` of the module docstring (any float dtype)."""
    width = {2: jnp.uint16, 4: jnp.uint32, 8: jnp.uint64}[flat_population.dtype.itemsize]
    bits = jax.lax.bitcast_convert_type(flat_population, width)
    if width is jnp.uint64:  # float64 (x64 mode): both 32-bit words count
        words = jnp.stack([bits & 0xFFFFFFFF, bits >> 32], axis=-1).astype(jnp.uint32)
    else:
        words = bits.astype(jnp.uint32)
    index = jax.lax.broadcasted_iota(jnp.uint32, words.shape, 0)
    for axis in range(1, words.ndim):  # row-major flat index, wrapping mod 2^32
        index = index * jnp.uint32(words.shape[axis]) + jax.lax.broadcasted_iota(
            jnp.uint32, words.shape, axis
        )
    return jnp.sum(words * (2 * index + 1), dtype=jnp.uint32)


def no_checksum() -> jax.Array:
    """The checksum held before the first ``ask``."""
    return jnp.zeros((), jnp.uint32)
