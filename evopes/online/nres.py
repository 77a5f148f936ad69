"""Noise-Reuse ES (NRES): one perturbation per particle per episode.

Li, Harrison, Sohl-Dickstein, Smith, Metz, "Variance-Reduced Gradient
Estimation via Noise-Reuse in Online Evolution Strategies", NeurIPS 2023. A
pair draws ``e_i`` when its episode starts and reuses it in every window of
the episode; every loss is weighted by that one ``e_i``,

    g = 1 / (P W) * sum_i sum_s (l+_{i,s} - l-_{i,s}) e_i / (2 sigma^2).

Since the whole episode runs at ``theta +/- e_i``, this is unbiased for the same
smoothed objective as FullES (one noise per episode), with far lower variance
than PES (the paper's variance analysis) and no accumulator: the state holds
only a noise id, a std and a time per particle, and ``e_i`` is regenerated from
the id in ``ask`` and ``tell``. With ``W = T`` and lock-step particles NRES is
FullES.

When an environment's ``done`` ends a particle's episode inside a window, the
rest of that window is not counted and the particle restarts at the next
window from ``init_inner`` with fresh noise (its partner, if still in its
episode, keeps the old noise, which it still needs); the estimate is then
unbiased for the expected episode return up to a positive factor, also when
the episode length depends on theta. See :class:`evopes.OnlineES`.
"""

from __future__ import annotations

import jax

from evopes.online.engine import OnlineES


class NRES(OnlineES):
    """Noise-Reuse ES: one noise per episode, no accumulator; see :class:`evopes.OnlineES`."""

    accumulates = False

    def _redraw(self, time, noise_age, first) -> jax.Array:
        return self._first_or_episode_start(time, first)
