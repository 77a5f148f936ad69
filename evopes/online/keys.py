"""Common random numbers for antithetic pairs.

In an antithetic pair the two partners, ``mean + e`` and ``mean - e``, must see
the same randomness outside the perturbation: the same initial inner state, the
same data batch, the same environment keys. The difference of their losses then
measures the effect of ``e`` alone, which is what makes the antithetic
estimator's variance small (common random numbers).

Particles use the halves layout of every evopes strategy: particle ``i`` and
particle ``i + P`` are partners, ``P = population_size // 2``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from evopes import threefry


def pair_keys(key: jax.Array, num_pairs: int) -> jax.Array:
    """One key per particle, shared within each antithetic pair.

    Args:
      key: a PRNG key (typed or raw).
      num_pairs: ``P``, the number of antithetic pairs.

    Returns:
      ``2P`` keys with ``keys[i] == keys[i + P]`` for ``i < P``; keys of
      different pairs are independent.
    """
    if int(num_pairs) != num_pairs or num_pairs < 1:
        raise ValueError(f"num_pairs: expected an integer >= 1, got {num_pairs!r}")
    keys = threefry.split(key, int(num_pairs))
    return jnp.concatenate([keys, keys], axis=0)
