"""Regenerable Gaussian perturbations.

Noise-based strategies (OpenES, FullES and the online family) never store a
population of perturbations. Each perturbation is named by a small *noise id*
and rebuilt on demand, in ``ask`` and again in ``tell``:

* :class:`GaussianNoise` — the id is a PRNG key's data; the perturbation is
  ``jax.random.normal(key, (num_dims,))`` (computed by :mod:`evopes.threefry`,
  bit for bit the same). Exact, independent normals; drawing them is the
  dominant cost of OpenES at large ``num_dims`` on CPU.
* :class:`NoiseTable` — the shared noise table of Salimans et al. (2017,
  "Evolution Strategies as a Scalable Alternative to Reinforcement Learning",
  section 2.1): one fixed vector of ``size`` standard normals is drawn once in
  ``init``; the id is an offset, and the perturbation is the slice
  ``table[offset : offset + num_dims]``. Rebuilding it is a memory copy, an
  order of magnitude cheaper than drawing normals. Slices at different offsets
  are uncorrelated coordinate by coordinate, so the estimators stay unbiased.

A noise source is static configuration (hashable); its array state (the table,
or nothing) lives in the strategy state.
"""

from __future__ import annotations

from dataclasses import dataclass

import jax
import jax.numpy as jnp

from evopes import threefry


@dataclass(frozen=True)
class GaussianNoise:
    """Fresh standard normals from ``jax.random``; ids are raw key data."""

    def init(self, key: jax.Array, num_dims: int) -> jax.Array:
        del key, num_dims
        return jnp.zeros((0,), jnp.float32)

    def draw_ids(self, key: jax.Array, num: int, num_dims: int) -> jax.Array:
        """``num`` independent ids, shape (num, 2) uint32."""
        del num_dims
        return threefry.bits(key, (num, 2))

    def sample(self, noise_state: jax.Array, ids: jax.Array, num_dims: int) -> jax.Array:
        """Standard normals of shape ids.shape[:-1] + (num_dims,)."""
        del noise_state
        return threefry.normal(ids, (num_dims,))


@dataclass(frozen=True)
class NoiseTable:
    """Slices of one shared table of standard normals (Salimans et al. 2017).

    Args:
      size: number of floats in the table (4 bytes each). Must exceed
        ``num_dims``; the default, 2**24 (64 MiB), serves up to a few million
        parameters. Larger tables give more distinct perturbations.
    """

    size: int = 2**24

    def init(self, key: jax.Array, num_dims: int) -> jax.Array:
        if num_dims >= self.size:
            raise ValueError(
                f"NoiseTable.size: expected more than num_dims={num_dims} entries, got {self.size}"
            )
        return jax.random.normal(key, (self.size,), jnp.float32)

    def draw_ids(self, key: jax.Array, num: int, num_dims: int) -> jax.Array:
        """``num`` random offsets, shape (num, 1) int32, each a valid slice start."""
        return jax.random.randint(key, (num, 1), 0, self.size - num_dims + 1, jnp.int32)

    def sample(self, noise_state: jax.Array, ids: jax.Array, num_dims: int) -> jax.Array:
        def one(offset):
            return jax.lax.dynamic_slice(noise_state, (offset[0],), (num_dims,))

        flat_ids = ids.reshape(-1, 1)
        return jax.vmap(one)(flat_ids).reshape(ids.shape[:-1] + (num_dims,))


NoiseSource = GaussianNoise | NoiseTable


def readable_from_population(noise: NoiseSource, spec) -> bool:
    """Whether a strategy should read its perturbations off a population handed back to it.

    True for Gaussian noise (rebuilding it costs a second round of random-bit
    generation, a population pass costs one read) on a solution whose leaves are
    all float32: narrower leaves would round the perturbations or overflow. A
    table slice is cheaper than reading the population, so tables are rebuilt.
    """
    return isinstance(noise, GaussianNoise) and spec.all_float32
