"""Whether every floating-point number of a state is finite, in one pass.

Strategies keep their old state when an update produced a non-finite value
(the NaN policy of the ask/tell contract). The check runs every generation,
so its cost is its number of kernels: one reduction per leaf is a kernel
launch each, a few hundred nanoseconds on CPU, as much as the arithmetic of a
small generation. Here all leaves are flattened into one array and checked by
one fused reduction.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def all_finite(tree) -> jax.Array:
    """True when every inexact leaf of ``tree`` is finite (True if it has none).

    The leaves are concatenated in their common dtype (float32 next to
    float64 becomes float64, exactly), so no finite value turns into inf.
    """
    leaves = [
        jnp.ravel(leaf) for leaf in jax.tree.leaves(tree) if jnp.issubdtype(leaf.dtype, jnp.inexact)
    ]
    if not leaves:
        return jnp.array(True)
    return jnp.all(jnp.isfinite(jnp.concatenate(leaves)))
