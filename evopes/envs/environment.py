"""The environment interface the rollout code drives, and shape inspection.

evopes drives every environment through two pure functions, whatever library
it comes from:

* ``reset(key) -> (env_state, obs)`` starts an episode;
* ``step(key, env_state, action) -> (env_state, obs, reward, done)`` advances
  one step and **auto-resets**: when ``done`` is true (the episode terminated
  or was truncated), ``reward`` still belongs to the finished episode and the
  returned ``env_state`` / ``obs`` already start a fresh one drawn with
  ``key``.

:class:`~evopes.envs.GymnaxEnv` and :class:`~evopes.envs.BraxEnv` adapt gymnax
and brax environments to this interface; any object with these two methods
works with :class:`~evopes.envs.EpisodicFitness` and
:class:`~evopes.envs.OnlineRollout`.
"""

from __future__ import annotations

from typing import Any, Protocol

import jax
import jax.numpy as jnp

PyTree = Any


class Environment(Protocol):
    """A pure, auto-resetting environment (see the module docstring)."""

    def reset(self, key: jax.Array) -> tuple[PyTree, jax.Array]: ...

    def step(
        self, key: jax.Array, env_state: PyTree, action: jax.Array
    ) -> tuple[PyTree, jax.Array, jax.Array, jax.Array]: ...


def observation_shape(env: Environment) -> jax.ShapeDtypeStruct:
    """Shape and dtype of one observation, found without running the environment.

    Uses ``jax.eval_shape`` on ``reset``: nothing is computed or compiled (brax's
    own ``observation_size`` property runs an un-jitted reset, which takes
    seconds).
    """
    _, obs = jax.eval_shape(env.reset, jax.random.key(0))
    return obs


def strongly_typed(tree: PyTree) -> PyTree:
    """``tree`` with every leaf a strongly typed array of its own dtype.

    Environments often build states from Python scalars (weakly typed in JAX),
    so a state fresh from ``reset`` and the same state after ``step`` differ in
    weak-typedness, and a jitted function fed both compiles twice. The
    adapters return strongly typed states from both.
    """

    def strong(leaf):
        leaf = jnp.asarray(leaf)
        return jax.lax.convert_element_type(leaf, leaf.dtype)

    return jax.tree.map(strong, tree)
