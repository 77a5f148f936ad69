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

Two ways to treat an episode end of the environment (termination, or its
own time limit):

* ``absorbing=False`` (default): auto-reset, as above. The online strategies
  end a particle's episode at its ``done``: the rest of that window is not
  counted, and the particle restarts from ``init_inner`` with fresh noise at
  the next window (:class:`evopes.OnlineES`). The objective is the expected
  episode return, also when the episode length depends on the policy (a pole
  that falls, a walker that trips), with or without a horizon.
* ``absorbing=True``: the particle stays in an absorbing state — loss 0,
  ``done`` false — until the strategy's horizon ``T`` restarts it with
  ``init_inner``. The time-average loss over the horizon is then exactly
  ``-G / T`` with ``G`` the return up to the first end, the objective of
  :class:`~evopes.envs.EpisodicFitness`. Use it for environments that pay a
  bonus for staying alive (with auto-reset a fall would cost nothing). It
  needs a strategy with a ``horizon``.

Let the strategy's horizon end episodes: switch the environment's own time
limit off (gymnax: ``env_params.replace(max_steps_in_episode=...)`` larger than
the horizon; :class:`~evopes.envs.BraxEnv`: ``max_episode_steps=None``).
Otherwise a step-unlocked particle, whose episode clock the strategy starts at
a random offset, would meet the environment's limit at a different time.

With a normalizer, each particle carries its own running statistics, updated
with every observation before the policy sees it. They survive the
environment's own resets and restart (from ``initial_obs_stats``, default
empty) when the strategy calls ``init_inner`` at the horizon.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import jax
import jax.numpy as jnp
from flax import struct

from evopes.envs.environment import Environment, observation_shape
from evopes.envs.normalize import NormalizerState, ObservationNormalizer
from evopes.envs.policy import ApplyFn, as_apply_fn

PyTree = Any


@struct.dataclass
class OnlineInnerState:
    """One particle's system: environment state, current observation, statistics.

    ``alive`` is false once an absorbing particle's episode has ended.
    """

    env_state: Any
    obs: jax.Array
    obs_stats: NormalizerState | None = None
    alive: jax.Array | None = None


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
      absorbing: after an episode end, stay in an absorbing state (loss 0)
        until ``init_inner`` instead of auto-resetting (module docstring).

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
    absorbing: bool = False

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
        alive = jnp.array(True) if self.absorbing else None
        return OnlineInnerState(env_state, obs, obs_stats, alive)

    def step(
        self, inner: OnlineInnerState, theta: PyTree, key: jax.Array
    ) -> tuple[OnlineInnerState, jax.Array, jax.Array]:
        obs_stats, policy_obs = inner.obs_stats, inner.obs
        if self.normalizer is not None:
            obs_stats = self.normalizer.update(
                obs_stats, self.normalizer.moments(obs_stats, inner.obs)
            )
            policy_obs = self.normalizer.normalize(obs_stats, inner.obs)
        action = self.apply(theta, policy_obs)
        env_state, obs, reward, done = self.env.step(key, inner.env_state, action)
        loss = -reward
        if not self.absorbing:
            return OnlineInnerState(env_state, obs, obs_stats), loss, done
        # Absorbing: an ended particle keeps its last state and earns nothing; the
        # step that ends the episode still pays its reward. No done is reported,
        # so the strategy keeps the episode's noise until its horizon.
        alive = inner.alive
        stepped = OnlineInnerState(
            env_state, obs, obs_stats, jnp.logical_and(alive, jnp.logical_not(done))
        )
        inner = jax.tree.map(lambda new, old: jnp.where(alive, new, old), stepped, inner)
        return inner, jnp.where(alive, loss, 0.0), None


jax.tree_util.register_static(OnlineRollout)
