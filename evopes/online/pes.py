"""Persistent ES (PES): fresh noise every window, accumulated over the episode.

Vicol, Metz, Sohl-Dickstein, "Unbiased Gradient Estimation in Unrolled
Computation Graphs with Persistent Evolution Strategies", ICML 2021. Every
window each pair draws a fresh ``e_i``; each particle keeps running from its
own inner state, and a loss at step ``t`` is weighted by the sum of ALL
perturbations the particle has applied since its episode began,

    xi_{i,t} = sum_{windows k up to t's window} e_{i,k},

which by Stein's lemma (one application per independent block) makes the
estimate unbiased for the gradient of the loss smoothed with independent noise
per window, ``E_{e_1..e_k} [l_t(theta + e_1, ..., theta + e_k)]`` (time-averaged).
The price is the accumulator (``2P x d`` floats) and a variance that grows with
the number of windows per episode.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from evopes.online.engine import OnlineES


class PES(OnlineES):
    """Persistent ES: fresh noise each window, accumulated; see :class:`evopes.OnlineES`."""

    accumulates = True

    def _redraw(self, time, noise_age, first) -> jax.Array:
        return jnp.ones((self.population_size,), bool)
