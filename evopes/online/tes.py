"""Truncated ES (TES): fresh noise every window, partners branch from one shared state.

Each window, pair ``i`` draws a fresh perturbation ``e_i`` and both partners
start from the same inner state ``s``; the estimate weights the window's
losses by ``e_i`` alone,

    g = 1 / (P W) * sum_i sum_s (l_s(theta + e_i; s) - l_s(theta - e_i; s)) e_i / (2 sigma^2),

the ES gradient of the truncated loss of the window with the start state held
fixed. The influence of ``theta`` on ``s`` (through all earlier windows) is
ignored, so TES is **biased** for the full unrolled loss: it is the online
ES analogue of truncated backpropagation through time (Vicol et al. 2021,
where it is the baseline that PES corrects).

How the shared state advances: public implementations either unroll an extra
unperturbed particle per pair (3PW steps per estimate) or keep one of the two
branches (2PW). evopes keeps the positive branch: at every window end the
negative partner's inner state (and time) is replaced by the positive
partner's.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from evopes.online.engine import OnlineES


class TES(OnlineES):
    """Truncated ES: fresh noise each window, no accumulation; see :class:`evopes.OnlineES`."""

    accumulates = False
    branches_from_positive = True

    def _redraw(self, time, noise_age, first) -> jax.Array:
        return jnp.ones((self.population_size,), bool)
