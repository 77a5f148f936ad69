"""gymnax environments behind evopes' environment interface.

gymnax 1.x's ``env.step(key, state, action, params)`` returns six values,
``(obs, state, reward, terminated, truncated, info)``, and already auto-resets:
on ``terminated or truncated`` the returned ``obs`` and ``state`` start a new
episode (drawn from the second half of ``key``), while ``reward`` is the last
reward of the old one. The adapter passes this through and reports
``done = terminated | truncated``; truncation happens after
``env_params.max_steps_in_episode`` steps (200 for Pendulum-v1, 500 for
CartPole-v1).

gymnax is imported only by :meth:`GymnaxEnv.make`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import jax
import jax.numpy as jnp

from evopes.envs.environment import strongly_typed


@dataclass(frozen=True, eq=False)
class GymnaxEnv:
    """A gymnax environment and its parameters.

    Args:
      env: a gymnax ``Environment`` (e.g. the first value of ``gymnax.make``).
      env_params: its ``EnvParams``; ``None`` uses ``env.default_params``.

    Example::

        env = GymnaxEnv.make("Pendulum-v1")
        env_state, obs = env.reset(key)
        env_state, obs, reward, done = env.step(key, env_state, action)
    """

    env: Any
    env_params: Any = None

    @classmethod
    def make(cls, name: str, **env_kwargs) -> GymnaxEnv:
        """``GymnaxEnv(*gymnax.make(name, **env_kwargs))``."""
        import gymnax

        env, env_params = gymnax.make(name, **env_kwargs)
        return cls(env, env_params)

    @property
    def params(self) -> Any:
        return self.env.default_params if self.env_params is None else self.env_params

    def reset(self, key: jax.Array) -> tuple[Any, jax.Array]:
        obs, env_state = self.env.reset(key, self.params)
        return strongly_typed((env_state, obs))

    def step(self, key: jax.Array, env_state: Any, action: jax.Array):
        obs, env_state, reward, terminated, truncated, _ = self.env.step(
            key, env_state, action, self.params
        )
        done = jnp.logical_or(terminated, truncated)
        env_state, obs = strongly_typed((env_state, obs))
        return env_state, obs, jnp.asarray(reward, jnp.float32), done


jax.tree_util.register_static(GymnaxEnv)
