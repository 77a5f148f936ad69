"""Running mean / standard-deviation normalisation of observations.

Salimans et al. (2017, "Evolution Strategies as a Scalable Alternative to
Reinforcement Learning", section 2.2) feed the policy
``(obs - mean) / std`` with the mean and std of all observations seen so far;
the statistics are part of the carried state, not of the parameters.

The state holds Welford's sufficient statistics ``(count, mean, m2)`` with
``m2 = sum (obs - mean)^2``. A batch is folded in by Chan et al.'s parallel
rule (Chan, Golub, LeVeque 1979): with ``delta = mean_b - mean`` and
``n' = n + n_b``,

    mean' = mean + delta * n_b / n'
    m2'   = m2 + m2_b + delta^2 * n * n_b / n'

Batches are summarised as :class:`ObservationMoments` of observations *shifted
by the current mean* (sums of ``obs - mean`` and its square), which keeps the
float32 sums small and avoids cancellation in ``m2_b = s2 - s1^2 / n_b``.
"""

from __future__ import annotations

from dataclasses import dataclass

import jax
import jax.numpy as jnp
from flax import struct


@struct.dataclass
class NormalizerState:
    """Observations seen so far: their number, mean and summed squared deviation."""

    count: jax.Array
    mean: jax.Array
    m2: jax.Array


@struct.dataclass
class ObservationMoments:
    """A batch of observations, shifted by the mean of the state they will update."""

    count: jax.Array
    shifted_sum: jax.Array
    shifted_sum_of_squares: jax.Array

    def __add__(self, other: ObservationMoments) -> ObservationMoments:
        return jax.tree.map(jnp.add, self, other)


@dataclass(frozen=True)
class ObservationNormalizer:
    """Running observation normalisation (configuration; the statistics live in state).

    Args:
      min_std: floor on the standard deviation, so that (nearly) constant
        features are not blown up (Salimans et al. use 1e-2).
      clip: clip normalised observations to ``[-clip, clip]``; ``None`` disables.
    """

    min_std: float = 1e-2
    clip: float | None = 10.0

    def init(self, observation: jax.ShapeDtypeStruct | jax.Array) -> NormalizerState:
        """Empty statistics for observations shaped like ``observation``."""
        zeros = jnp.zeros(observation.shape, jnp.float32)
        return NormalizerState(count=jnp.zeros((), jnp.float32), mean=zeros, m2=zeros)

    def normalize(self, state: NormalizerState, obs: jax.Array) -> jax.Array:
        """``(obs - mean) / std``; the identity while no observation has been seen."""
        variance = state.m2 / jnp.maximum(state.count, 1.0)
        std = jnp.where(state.count > 0, jnp.maximum(jnp.sqrt(variance), self.min_std), 1.0)
        normalized = (obs - state.mean) / std
        if self.clip is not None:
            normalized = jnp.clip(normalized, -self.clip, self.clip)
        return normalized.astype(jnp.result_type(obs, jnp.float32))

    def moments(
        self, state: NormalizerState, obs: jax.Array, weight: jax.Array = 1.0
    ) -> ObservationMoments:
        """Moments of one observation counted ``weight`` times (0 or 1 to mask it)."""
        weight = jnp.asarray(weight, jnp.float32)
        shifted = obs.astype(jnp.float32) - state.mean
        return ObservationMoments(weight, weight * shifted, weight * shifted**2)

    def update(self, state: NormalizerState, moments: ObservationMoments) -> NormalizerState:
        """Folds a batch (summed moments, shifted by ``state.mean``) into the statistics."""
        batch_count = moments.count
        safe_count = jnp.maximum(batch_count, 1.0)
        delta = moments.shifted_sum / safe_count  # batch mean - state mean
        batch_m2 = moments.shifted_sum_of_squares - moments.shifted_sum * delta
        total = state.count + batch_count
        fraction = batch_count / jnp.maximum(total, 1.0)
        return NormalizerState(
            count=total,
            mean=state.mean + delta * fraction,
            m2=state.m2 + jnp.maximum(batch_m2, 0.0) + delta**2 * state.count * fraction,
        )
