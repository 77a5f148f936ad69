"""A policy in an environment, stepped a window at a time, for the online strategies.

The online strategies (TES, PES, GPES, NRES) hold one inner state per particle
and let the user's loop advance it ``W`` steps per ask/tell round.
:class:`OnlineRollout` supplies the two functions they need:

* ``init_inner(key)`` — a fresh episode of one particle: environment state,
  current observation and (optionally) running observation statistics;
* ``step(inner, theta, key) -> (inner, loss, done)`` — one environment step
  with the policy ``theta``; ``loss = -reward``; ``done`` marks the step that
  ended an episode (termination or time limit). The environment auto-resets:
  the loss of that step still belongs to the old episode, the returned inner
  state already starts the new one (REFERENCE section 1, "Episode ends").

Everything random in a step comes from ``key``, so antithetic partners driven
with the same keys (``evopes.pair_keys``, ``evopes.unroll``) see identical
environment randomness (common random numbers); ``init_inner`` is likewise a
function of its key only.

With a normalizer, each particle carries its own running statistics, updated
with every observation before the policy sees it. They survive the
environment's own resets and restart (from ``initial_obs_stats``, default
empty) when the strategy calls ``init_inner`` at the horizon.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import jax
from flax import struct

from evopes.envs.environment import Environment, observation_shape
from evopes.envs.normalize import NormalizerState, ObservationNormalizer
from evopes.envs.policy import ApplyFn, as_apply_fn

PyTree = Any


@struct.dataclass
class OnlineInnerState:
    """One particle's system: environment state, current observation, statistics."""

    env_state: Any
    obs: jax.Array
    obs_stats: NormalizerState | None = None


@dataclass(frozen=True, eq=False)
class OnlineRollout:
    """``init_inner`` and ``step`` functions of a policy acting in an environment.

    Args:
      env: an auto-resetting environment (:class:`~evopes.envs.GymnaxEnv`,
        :class:`~evopes.envs.BraxEnv`, ...).
      policy: a flax linen module or ``apply(params, obs) -> action``.
      normalizer: an :class:`~evopes.envs.ObservationNormalizer`, or ``None``.
      initial_obs_stats: statistics a fresh particle starts from (``None``:
        empty).

    Example (one window of W steps for every particle)::

        task = OnlineRollout(GymnaxEnv.make("Pendulum-v1"), policy)
        es = evopes.NRES(..., init_inner=task.init_inner)
        population, state = es.ask(key, state, params)
        inner, losses, dones = evopes.unroll(task.step, population, state.inner_state, key, W)
    """

    env: Environment
    policy: Any
    normalizer: ObservationNormalizer | None = None
    initial_obs_stats: NormalizerState | None = None

    def __post_init__(self):
        as_apply_fn(self.policy)

    @property
    def apply(self) -> ApplyFn:
        return as_apply_fn(self.policy)

    def init_inner(self, key: jax.Array) -> OnlineInnerState:
        env_state, obs = self.env.reset(key)
        obs_stats = None
        if self.normalizer is not None:
            obs_stats = self.initial_obs_stats
            if obs_stats is None:
                obs_stats = self.normalizer.init(observation_shape(self.env))
        return OnlineInnerState(env_state, obs, obs_stats)

    def step(
        self, inner: OnlineInnerState, theta: PyTree, key: jax.Array
    ) -> tuple[OnlineInnerState, jax.Array, jax.Array]:
        obs_stats, policy_obs = inner.obs_stats, inner.obs
        if self.normalizer is not None:
            obs_stats = self.normalizer.update(obs_stats, self.normalizer.moments(obs_stats, inner.obs))
            policy_obs = self.normalizer.normalize(obs_stats, inner.obs)
        action = self.apply(theta, policy_obs)
        env_state, obs, reward, done = self.env.step(key, inner.env_state, action)
        return OnlineInnerState(env_state, obs, obs_stats), -reward, done


jax.tree_util.register_static(OnlineRollout)
