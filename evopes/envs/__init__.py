"""Environment adapters: gymnax and brax policies as ES fitness functions and online tasks.

* :class:`GymnaxEnv`, :class:`BraxEnv` — pure, auto-resetting environments
  (``reset(key)``, ``step(key, env_state, action)``).
* :class:`EpisodicFitness` — ``fitness(population, key)`` for CMAES, OpenES and
  FullES: minus the mean return over rollouts, vmapped over members and rollouts,
  with common random numbers.
* :class:`OnlineRollout` — ``init_inner(key)`` and ``step(inner, theta, key)``
  for TES, PES, GPES and NRES.
* :class:`MLPPolicy`, :class:`ObservationNormalizer` — policies and running
  observation normalisation.

This package depends on the core; the core never imports it. gymnax and brax
are imported only when an environment is made by name.
"""

from evopes.envs.brax import BraxEnv, BraxEnvState
from evopes.envs.environment import Environment, observation_shape
from evopes.envs.fitness import EpisodicFitness
from evopes.envs.gymnax import GymnaxEnv
from evopes.envs.normalize import NormalizerState, ObservationMoments, ObservationNormalizer
from evopes.envs.online import OnlineInnerState, OnlineRollout
from evopes.envs.policy import MLPPolicy, as_apply_fn

__all__ = [
    "BraxEnv",
    "BraxEnvState",
    "Environment",
    "EpisodicFitness",
    "GymnaxEnv",
    "MLPPolicy",
    "NormalizerState",
    "ObservationMoments",
    "ObservationNormalizer",
    "OnlineInnerState",
    "OnlineRollout",
    "as_apply_fn",
    "observation_shape",
]
