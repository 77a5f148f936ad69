"""Threefry-2x32 random numbers as one fused elementwise computation.

The same streams as ``jax.random`` with its default ``threefry2x32`` keys
(bit for bit: the tests compare them), computed differently. On CPU, JAX
lowers the Threefry hash to a loop of five rolled iterations, each one a
handful of separate kernels that write their intermediate arrays to memory:
generating normals is then the dominant cost of an ES generation at large
``d``, and a fixed cost at small ``d`` (one ``jax.random.split`` is about 90
kernel launches). Here the 20 rounds are written out, so XLA fuses the hash,
the float conversion and the inverse error function into one loop over the
output: 1.2x to 2x faster for a million normals on this CPU, and one kernel
instead of a loop for a few numbers or a key split.

Threefry-2x32 (Salmon, Moraes, Dror, Shaw 2011, "Parallel random numbers: as
easy as 1, 2, 3", the 20-round variant): a keyed bijection of pairs of 32-bit
words. ``jax.random`` feeds it the counter ``i`` of every output element as
the pair ``(i >> 32, i & 0xffffffff)`` (its "partitionable" layout, the
default) and returns the xor of the two output words.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

_UINT32 = np.uint32
# Rotation distances of the even and odd groups of four rounds, and the key
# schedule's parity constant (Salmon et al. 2011, table 4; Skein's C240).
_ROTATIONS = ((13, 15, 26, 6), (17, 29, 16, 24))
_PARITY = _UINT32(0x1BD11BDA)


def _rotate_left(x: jax.Array, distance: int) -> jax.Array:
    return (x << _UINT32(distance)) | (x >> _UINT32(32 - distance))


def hash2x32(
    key0: jax.Array, key1: jax.Array, count0: jax.Array, count1: jax.Array
) -> tuple[jax.Array, jax.Array]:
    """Threefry-2x32, 20 rounds: ``(count0, count1) -> (out0, out1)`` under ``(key0, key1)``.

    All arguments are uint32 arrays that broadcast together.
    """
    schedule = (key0, key1, key0 ^ key1 ^ _PARITY)
    x0, x1 = count0 + schedule[0], count1 + schedule[1]
    for group in range(5):  # five groups of four rounds, a key injection after each
        for distance in _ROTATIONS[group % 2]:
            x0 = x0 + x1
            x1 = _rotate_left(x1, distance) ^ x0
        x0 = x0 + schedule[(group + 1) % 3]
        x1 = x1 + schedule[(group + 2) % 3] + _UINT32(group + 1)
    return x0, x1


def _key_words(key: jax.Array) -> jax.Array | None:
    """The (..., 2) uint32 words of a threefry key (typed or raw), or None.

    None (use ``jax.random`` itself) for other key impls, and when JAX is
    configured with its older, non-partitionable threefry layout.
    """
    if not jax.config.jax_threefry_partitionable:
        return None
    if jax.dtypes.issubdtype(key.dtype, jax.dtypes.prng_key):
        if str(jax.random.key_impl(key)) != "threefry2x32":
            return None
        return jax.random.key_data(key)
    if key.dtype != jnp.uint32 or key.shape[-1:] != (2,):
        return None
    return key


def split(key: jax.Array, num: int = 2) -> jax.Array:
    """``num`` new keys, equal to ``jax.random.split(key, num)`` (same key type).

    Worth it in tight loops: on CPU ``jax.random.split`` is a small rolled loop
    of about 90 kernel launches, which costs as much as a hundred steps of a
    small system; this is one fused kernel. Only single keys (shape ``()``
    typed, or ``(2,)`` raw), as for ``jax.random.split``, which handles (and
    refuses) everything else.
    """
    words = _key_words(key)
    if words is None or words.shape != (2,):
        return jax.random.split(key, num)
    data = jnp.stack(_hash_counters(words, (int(num),)), axis=-1)
    typed = jax.dtypes.issubdtype(key.dtype, jax.dtypes.prng_key)
    return jax.random.wrap_key_data(data, impl="threefry2x32") if typed else data


def bits(key: jax.Array, shape: tuple[int, ...]) -> jax.Array:
    """uint32 random bits, equal to ``jax.random.bits(key, shape)``.

    ``key`` may carry leading batch axes (a typed key array, or raw data of
    shape ``(..., 2)``): the result then has shape ``batch + shape``, row ``b``
    drawn with key ``b``, as ``jax.vmap`` of ``jax.random.bits`` would give.
    """
    shape = tuple(int(n) for n in shape)
    words = _key_words(key)
    if words is None or math.prod(shape) >= 2**32:
        return _fallback(jax.random.bits, key, shape)
    out0, out1 = _hash_counters(words, shape)
    return out0 ^ out1


def _hash_counters(words: jax.Array, shape: tuple[int, ...]) -> tuple[jax.Array, jax.Array]:
    """The hash of the counters ``0 .. prod(shape) - 1`` (high word 0) under every key.

    ``words`` holds keys of shape ``batch + (2,)``; the outputs have shape
    ``batch + shape``. The layout of ``jax.random``'s split and bits.
    """
    expand = (..., *(None,) * len(shape))
    counts = jnp.arange(math.prod(shape), dtype=jnp.uint32).reshape(shape)
    zero = jnp.zeros((), jnp.uint32)
    return hash2x32(words[..., 0][expand], words[..., 1][expand], zero, counts)


def uniform_open(key: jax.Array, shape: tuple[int, ...]) -> jax.Array:
    """float32 uniforms in ``(-1, 1)``, as ``jax.random.normal`` draws them before ``erfinv``.

    The top 23 bits become the mantissa of a float in ``[1, 2)``; shifted and
    scaled to ``[-1 + ulp, 1)`` (the lower end nudged inwards so that
    ``erfinv`` stays finite).
    """
    return _uniform_from_bits(bits(key, shape))


def _uniform_from_bits(random_bits: jax.Array) -> jax.Array:
    top_bits = random_bits >> _UINT32(9)
    # x mod (2^23 + 1) is x itself for these 23-bit values. It is there for
    # XLA: an integer remainder counts as expensive, so the hash before it is
    # computed once and kept, where a chain of cheap integer operations would
    # be fused into, and so recomputed by, every consumer of the normals
    # (inside a user's jit: the fitness, the checksum, each term of tell: a
    # 2x slower generation at small d). One vectorised remainder per entry.
    mantissa = (top_bits % _UINT32(0x800001)) | _UINT32(0x3F800000)
    unit = jax.lax.bitcast_convert_type(mantissa, jnp.float32) - np.float32(1.0)
    low = np.nextafter(np.float32(-1.0), np.float32(0.0))
    high = np.float32(1.0)
    return jnp.maximum(low, unit * (high - low) + low)


def normal(key: jax.Array, shape: tuple[int, ...]) -> jax.Array:
    """float32 standard normals, equal to ``jax.random.normal(key, shape)``.

    ``sqrt(2) erfinv(u)`` of the uniforms above (for other key impls these are
    ``jax.random``'s own bits, transformed the same way); batched keys as in
    :func:`bits`.
    """
    return np.float32(np.sqrt(2.0)) * jax.lax.erf_inv(uniform_open(key, shape))


def normal_row(key: jax.Array, shape: tuple[int, int], index: jax.Array) -> jax.Array:
    """Row ``index`` of ``normal(key, shape)`` for a 2-D ``shape``, bit for bit.

    Only the row's ``shape[1]`` counters are hashed (``index * shape[1] + j``),
    so rebuilding one member of a population costs O(n), not O(lambda n).
    ``key`` is a single key; ``index`` an integer scalar (it may be traced).
    """
    rows, cols = (int(n) for n in shape)
    words = _key_words(key)
    if words is None or words.shape != (2,) or rows * cols >= 2**32:
        return normal(key, shape)[index]
    counts = jnp.asarray(index).astype(jnp.uint32) * _UINT32(cols) + jnp.arange(
        cols, dtype=jnp.uint32
    )
    out0, out1 = hash2x32(words[0], words[1], jnp.zeros((), jnp.uint32), counts)
    return np.float32(np.sqrt(2.0)) * jax.lax.erf_inv(_uniform_from_bits(out0 ^ out1))


def _fallback(draw, key, shape):
    """``jax.random`` itself, vmapped over batch axes (other key impls, huge shapes)."""
    if not jax.dtypes.issubdtype(key.dtype, jax.dtypes.prng_key):
        key = jax.random.wrap_key_data(key)
    one = lambda k: draw(k, shape)
    for _ in range(key.ndim):
        one = jax.vmap(one)
    return one(key)
