"""Episodic fitness for the classic strategies (CMAES, OpenES, FullES).

For a population of policy parameters ``theta_1 .. theta_N`` the fitness of
member ``i`` is a *cost* (evopes minimises):

    f_i = - 1/R * sum_{r=1..R} G(theta_i, k_{i,r}),
    G(theta, k) = sum_{t < num_steps, t <= first done} r_t

the minus mean return over ``R = num_rollouts`` rollouts of at most
``num_steps`` steps. A rollout ends at the environment's first ``done``
(termination or time limit): the reward of that step counts, later steps are
computed (everything runs in lock-step under ``vmap``) but masked out.

Common random numbers. Rollout ``r`` of member ``i`` uses key ``k_{i,r}``:

* ``"population"`` (default): ``k_{i,r} = k_r`` for every member — every
  member meets the same initial states and noise, so ranking compares
  policies, not luck. Antithetic partners ``i`` and ``i + P`` therefore share
  their environment randomness too.
* ``"pairs"``: ``k_{i,r} = k_{i+P,r}`` only within antithetic pairs (halves
  layout, ``P = N // 2``); needs an even population.
* ``"none"``: independent keys for every member.

Rollout keys: ``reset_key, steps_key = split(k)``; step ``t`` uses
``split(steps_key, num_steps)[t]``.

Observation normalisation (optional, Salimans et al. 2017, section 2.2): within
a generation every member normalises with the same frozen statistics; the
observations the members saw (before their episode ended) are then folded into
the statistics returned by :meth:`EpisodicFitness.evaluate`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import jax
import jax.numpy as jnp

from evopes.envs.environment import Environment, observation_shape
from evopes.envs.normalize import NormalizerState, ObservationMoments, ObservationNormalizer
from evopes.envs.policy import ApplyFn, as_apply_fn

PyTree = Any
SHARING = ("population", "pairs", "none")


@dataclass(frozen=True, eq=False)
class EpisodicFitness:
    """``fitness(population, key) -> (N,)``: minus the mean return of each member.

    Args:
      env: an auto-resetting environment (:class:`~evopes.envs.GymnaxEnv`,
        :class:`~evopes.envs.BraxEnv`, ...).
      policy: a flax linen module or ``apply(params, obs) -> action``.
      num_steps: maximum steps per rollout.
      num_rollouts: rollouts per member (averaged).
      common_random_numbers: ``"population"``, ``"pairs"`` or ``"none"``
        (module docstring).
      normalizer: an :class:`~evopes.envs.ObservationNormalizer`, or ``None``.
        With a normalizer call :meth:`evaluate` and carry its statistics.
    """

    env: Environment
    policy: Any
    num_steps: int
    num_rollouts: int = 1
    common_random_numbers: str = "population"
    normalizer: ObservationNormalizer | None = None

    def __post_init__(self):
        for name in ("num_steps", "num_rollouts"):
            value = getattr(self, name)
            if int(value) != value or value < 1:
                raise ValueError(f"{name}: expected an integer >= 1, got {value!r}")
        if self.common_random_numbers not in SHARING:
            raise ValueError(
                f"common_random_numbers: expected one of {SHARING}, "
                f"got {self.common_random_numbers!r}"
            )
        as_apply_fn(self.policy)  # validates the policy early

    @property
    def apply(self) -> ApplyFn:
        return as_apply_fn(self.policy)

    def init_obs_stats(self) -> NormalizerState:
        """Empty normaliser statistics (requires ``normalizer``)."""
        self._require_normalizer()
        return self.normalizer.init(observation_shape(self.env))

    # -- public ---------------------------------------------------------------
    def __call__(self, population: PyTree, key: jax.Array) -> jax.Array:
        if self.normalizer is not None:
            raise ValueError(
                "normalizer: this fitness normalises observations; call "
                "evaluate(population, key, obs_stats) and carry the statistics"
            )
        fitness, _ = self.evaluate(population, key)
        return fitness

    def evaluate(
        self, population: PyTree, key: jax.Array, obs_stats: NormalizerState | None = None
    ) -> tuple[jax.Array, NormalizerState | None]:
        """Fitness of every member, and the statistics updated with this generation's
        observations."""
        population_size = _population_size(population)
        if self.normalizer is not None and obs_stats is None:
            raise ValueError(
                "obs_stats: expected NormalizerState statistics (see init_obs_stats), got None"
            )
        keys, members_share_keys = self._rollout_keys(key, population_size)
        per_member = jax.vmap(self.episode_return, in_axes=(None, 0, None))
        in_axes = (0, None, None) if members_share_keys else (0, 0, None)
        returns, moments = jax.vmap(per_member, in_axes=in_axes)(population, keys, obs_stats)
        fitness = -jnp.mean(returns, axis=1)
        if self.normalizer is not None:
            obs_stats = self.normalizer.update(
                obs_stats, jax.tree.map(lambda m: m.sum((0, 1)), moments)
            )
        return fitness, obs_stats

    def returns(
        self, params: PyTree, key: jax.Array, obs_stats: NormalizerState | None = None
    ) -> jax.Array:
        """Returns of one policy over ``num_rollouts`` rollouts, shape (num_rollouts,)."""
        keys = jax.random.split(key, self.num_rollouts)
        returns, _ = jax.vmap(self.episode_return, in_axes=(None, 0, None))(params, keys, obs_stats)
        return returns

    def episode_return(
        self, params: PyTree, key: jax.Array, obs_stats: NormalizerState | None = None
    ) -> tuple[jax.Array, ObservationMoments | None]:
        """One rollout: its return and the moments of the observations it saw."""
        apply, normalizer = self.apply, self.normalizer
        reset_key, steps_key = jax.random.split(key)
        env_state, obs = self.env.reset(reset_key)
        moments = None
        if normalizer is not None:
            moments = normalizer.moments(obs_stats, obs, 0.0)

        def one_step(carry, step_key):
            env_state, obs, alive, total, moments = carry
            policy_obs = obs
            if normalizer is not None:
                moments = moments + normalizer.moments(obs_stats, obs, alive)
                policy_obs = normalizer.normalize(obs_stats, obs)
            action = apply(params, policy_obs)
            env_state, obs, reward, done = self.env.step(step_key, env_state, action)
            # where, not a product: a NaN reward after the end must not leak in.
            total = total + jnp.where(alive, reward, 0.0)
            alive = jnp.logical_and(alive, jnp.logical_not(done))
            return (env_state, obs, alive, total, moments), None

        carry = (env_state, obs, jnp.array(True), jnp.zeros((), jnp.float32), moments)
        step_keys = jax.random.split(steps_key, self.num_steps)
        (_, _, _, total, moments), _ = jax.lax.scan(one_step, carry, step_keys)
        return total, moments

    # -- helpers --------------------------------------------------------------
    def _rollout_keys(self, key: jax.Array, population_size: int) -> tuple[jax.Array, bool]:
        sharing, num_rollouts = self.common_random_numbers, self.num_rollouts
        if sharing == "population":
            return jax.random.split(key, num_rollouts), True
        if sharing == "pairs":
            if population_size % 2:
                raise ValueError(
                    f"population: common_random_numbers='pairs' expected an even population, "
                    f"got {population_size} members"
                )
            pair_keys = jax.random.split(key, (population_size // 2, num_rollouts))
            return jnp.concatenate([pair_keys, pair_keys]), False
        return jax.random.split(key, (population_size, num_rollouts)), False

    def _require_normalizer(self):
        if self.normalizer is None:
            raise ValueError("normalizer: expected an ObservationNormalizer, got None")


def _population_size(population: PyTree) -> int:
    leaves = jax.tree_util.tree_leaves(population)
    if not leaves:
        raise ValueError("population: expected a pytree with array leaves, got an empty tree")
    sizes = {leaf.shape[0] if leaf.ndim else None for leaf in leaves}
    if len(sizes) != 1 or None in sizes:
        shapes = [tuple(leaf.shape) for leaf in leaves]
        raise ValueError(
            f"population: expected leaves with one common leading axis, got shapes {shapes}"
        )
    return sizes.pop()


jax.tree_util.register_static(EpisodicFitness)
