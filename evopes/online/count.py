"""An exact count past 2^31 inside compiled code: two uint32 words.

Without ``jax_enable_x64`` the widest integer a jitted program holds is 32 bits:
an int32 step counter of 4096 particles with ``W = 100`` wraps after about
5,200 windows, a normal RL run. :class:`Count` keeps ``value = high * 2^32 +
low`` with a carry, exact up to 2^64, and converts to a Python ``int`` on the
host (``int(count)``) or to an approximate float32 inside ``jit`` (for metrics
and plots; exact below 2^24).
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np


class Count(NamedTuple):
    """A non-negative integer ``high * 2^32 + low`` (uint32 words)."""

    high: jax.Array
    low: jax.Array

    @classmethod
    def zero(cls) -> Count:
        return cls(jnp.zeros((), jnp.uint32), jnp.zeros((), jnp.uint32))

    def add(self, increment: int) -> Count:
        """``self + increment`` for a static ``0 <= increment < 2^32``, with carry."""
        if not 0 <= int(increment) < 2**32:
            raise ValueError(f"increment: expected an integer in [0, 2^32), got {increment!r}")
        low = self.low + jnp.uint32(increment)  # wraps modulo 2^32
        carry = (low < self.low).astype(jnp.uint32)
        return Count(self.high + carry, low)

    def is_zero(self) -> jax.Array:
        return (self.high == 0) & (self.low == 0)

    def less_than(self, bound: int) -> jax.Array:
        """``self < bound`` for a static ``0 <= bound < 2^32``."""
        return (self.high == 0) & (self.low < jnp.uint32(bound))

    def as_float(self) -> jax.Array:
        """float32 approximation (relative error below 1.2e-7)."""
        return self.high.astype(jnp.float32) * np.float32(2.0**32) + self.low.astype(jnp.float32)

    def __int__(self) -> int:
        return (int(np.asarray(self.high)) << 32) | int(np.asarray(self.low))

    def __index__(self) -> int:
        return int(self)
