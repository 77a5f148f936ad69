"""brax environments behind evopes' environment interface.

A raw brax environment (``brax.envs.get_environment(name, backend=...)``) has
``reset(rng) -> State`` and ``step(State, action) -> State`` with ``done`` and
``reward`` fields, and no time limit. The adapter adds what the rollout code
needs:

* an optional time limit, ``max_episode_steps`` (truncation);
* auto-reset from a **fresh** random initial state drawn with the step's key.
  (brax's own ``AutoResetWrapper`` returns to the episode's first state
  instead, which would make every episode of a particle identical.)

Use the unwrapped environment (not ``brax.envs.create``, whose wrappers add a
batch axis and their own resets). On CPU the ``spring`` backend compiles and
runs fastest. Never query ``env.observation_size``: it runs an un-jitted
reset; :func:`evopes.envs.observation_shape` uses ``jax.eval_shape`` instead.

brax is imported only by :meth:`BraxEnv.make`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import jax
import jax.numpy as jnp
from flax import struct

from evopes.envs.environment import strongly_typed


@struct.dataclass
class BraxEnvState:
    """The brax ``State`` and the number of steps taken in the current episode."""

    brax_state: Any
    steps: jax.Array


@dataclass(frozen=True, eq=False)
class BraxEnv:
    """A brax environment with auto-reset and an optional time limit.

    Args:
      env: an unwrapped brax ``Env``.
      max_episode_steps: truncate episodes after this many steps (``None``:
        only the environment's own ``done`` ends an episode).
    """

    env: Any
    max_episode_steps: int | None = None

    def __post_init__(self):
        if self.max_episode_steps is not None and self.max_episode_steps < 1:
            raise ValueError(
                "max_episode_steps: expected None or an integer >= 1, "
                f"got {self.max_episode_steps!r}"
            )

    @classmethod
    def make(
        cls, name: str, backend: str = "spring", max_episode_steps: int | None = None, **env_kwargs
    ) -> BraxEnv:
        """``BraxEnv(brax.envs.get_environment(name, backend=backend, **env_kwargs))``."""
        from brax import envs

        return cls(envs.get_environment(name, backend=backend, **env_kwargs), max_episode_steps)

    @property
    def action_size(self) -> int:
        return self.env.action_size

    def reset(self, key: jax.Array) -> tuple[BraxEnvState, jax.Array]:
        brax_state = self.env.reset(key)
        brax_state = strongly_typed(
            brax_state.replace(
                reward=jnp.asarray(brax_state.reward, jnp.float32),
                done=jnp.asarray(brax_state.done, jnp.float32),
            )
        )
        return BraxEnvState(brax_state, jnp.zeros((), jnp.int32)), brax_state.obs

    def step(self, key: jax.Array, env_state: BraxEnvState, action: jax.Array):
        brax_state = self.env.step(env_state.brax_state, action)
        reward = jnp.asarray(brax_state.reward, jnp.float32)
        # Some brax environments return Python floats; keep the carry's dtypes fixed.
        brax_state = strongly_typed(
            brax_state.replace(reward=reward, done=jnp.asarray(brax_state.done, jnp.float32))
        )
        steps = env_state.steps + 1
        done = brax_state.done > 0.5
        if self.max_episode_steps is not None:
            done = jnp.logical_or(done, steps >= self.max_episode_steps)
        stepped = BraxEnvState(brax_state, steps)
        fresh, _ = self.reset(key)
        next_state = jax.tree.map(lambda new, old: jnp.where(done, new, old), fresh, stepped)
        return next_state, next_state.brax_state.obs, reward, done


jax.tree_util.register_static(BraxEnv)
