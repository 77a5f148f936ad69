"""Generalised PES (GPES_K): fresh noise every K steps, accumulated like PES.

Li et al. 2023 ("Variance-Reduced Gradient Estimation via Noise-Reuse in
Online Evolution Strategies", NeurIPS 2023) place PES and NRES in one family: a
particle keeps a perturbation for ``K`` steps (``K`` a multiple of the window
``W``) before drawing the next, and weights each loss by the sum of the distinct
perturbations of its episode so far. ``K = W`` is PES; ``K >= T`` is NRES. Every
member is unbiased for the loss smoothed with independent noise per K-block.

A particle redraws at a window start when its noise is ``K`` steps old or
when its episode (re)starts. Without environment ``done`` flags the blocks are
thus aligned with the episode, ``t % K == 0``, from the first episode start
on (a step-unlocked particle's first, partial episode is burn-in). With
``done`` flags a block may carry over into a new episode and GPES with
``K >= T`` can then redraw where NRES would not; both stay unbiased.
"""

from __future__ import annotations

import jax

from evopes.online.engine import OnlineES


class GPES(OnlineES):
    """GPES_K: noise every ``noise_period`` steps, accumulated; see :class:`evopes.OnlineES`.

    Args:
      noise_period: ``K``, a positive multiple of ``truncation_length``.
      (the rest as :class:`evopes.OnlineES`)
    """

    accumulates = True

    def __init__(self, *args, noise_period: int, **kwargs):
        super().__init__(*args, **kwargs)
        if (
            int(noise_period) != noise_period
            or noise_period < 1
            or noise_period % self.truncation_length
        ):
            raise ValueError(
                "noise_period: expected a positive multiple of "
                f"truncation_length={self.truncation_length}, "
                f"got {noise_period!r}"
            )
        self.noise_period = int(noise_period)

    def __repr__(self) -> str:
        return super().__repr__()[:-1] + f", noise_period={self.noise_period})"

    def _redraw(self, time, noise_age, first) -> jax.Array:
        return self._first_or_episode_start(time, first) | (noise_age >= self.noise_period)
