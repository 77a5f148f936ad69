"""Evolving a pendulum swing-up controller with CMA-ES (gymnax Pendulum-v1).

The setting of the JAX CMA-ES tutorial evopes started from: a deterministic MLP
policy 3 -> 48 (relu) -> 1 (241 parameters) starting at zero, CMA-ES with
lambda = 100 (mu = 50), sigma_0 = 1, each member scored by minus its mean return
over 20 rollouts of 200 steps (a cost), 200 generations.

Run ``python docs/tutorials/pendulum_cma.py`` (add ``--quick`` for a short run).
"""

from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp

import evopes
from evopes import envs


def make_problem(num_rollouts: int = 20, num_steps: int = 200):
    """The fitness function and a template of the policy parameters."""
    env = envs.GymnaxEnv.make("Pendulum-v1")
    policy = envs.MLPPolicy(action_dim=1, hidden_sizes=(48,))  # torque; the env clips to [-2, 2]
    obs = envs.observation_shape(env)  # jax.eval_shape: nothing runs
    template = policy.init(jax.random.key(0), jnp.zeros(obs.shape, obs.dtype))
    # Every member meets the same 20 initial states in a generation (common random numbers).
    fitness = envs.EpisodicFitness(env, policy, num_steps=num_steps, num_rollouts=num_rollouts)
    return fitness, template


def train(seed: int = 0, num_generations: int = 200, population_size: int = 100, num_rollouts: int = 20):
    """Runs CMA-ES; returns the final mean policy and per-generation curves."""
    fitness, template = make_problem(num_rollouts)
    es = evopes.CMAES(population_size=population_size, solution=template)
    es_params = es.default_params.replace(std_init=jnp.float32(1.0))
    mean = jax.tree.map(jnp.zeros_like, template)

    def generation(state, key):
        ask_key, eval_key, tell_key = jax.random.split(key, 3)
        population, state = es.ask(ask_key, state, es_params)
        costs = fitness(population, eval_key)  # (100,): minus mean return of each member
        state, metrics = es.tell(tell_key, population, costs, state, es_params)
        # The new mean, scored on the same 20 rollouts as the population.
        mean_cost = fitness(jax.tree.map(lambda leaf: leaf[None], es.get_mean(state)), eval_key)[0]
        curves = {
            "population_cost": jnp.mean(costs),
            "best_cost": jnp.min(costs),
            "mean_cost": mean_cost,
            "step_size": state.std,
        }
        return state, curves

    @jax.jit
    def run(key):
        init_key, loop_key = jax.random.split(key)
        state = es.init(init_key, mean, es_params)
        return jax.lax.scan(generation, state, jax.random.split(loop_key, num_generations))

    start = time.perf_counter()
    state, curves = jax.block_until_ready(run(jax.random.key(seed)))
    wall_s = time.perf_counter() - start  # compilation included, as in the original tutorial
    return es.get_mean(state), jax.device_get(curves), wall_s


def evaluate(params, seed: int = 0, num_rollouts: int = 100) -> float:
    """Cost (minus mean return) of one policy on fresh rollouts."""
    fitness, _ = make_problem(num_rollouts)
    return float(-jnp.mean(jax.jit(fitness.returns)(params, jax.random.key(10_000 + seed))))


def main(quick: bool = False, seed: int = 0, *, num_generations: int | None = None,
         population_size: int = 100, num_rollouts: int = 20, eval_rollouts: int = 100) -> dict:
    """The tutorial's run; the keyword arguments shrink it further (the tests use them)."""
    num_generations = num_generations or (40 if quick else 200)
    policy_params, curves, wall_s = train(seed, num_generations, population_size, num_rollouts)
    final_cost = evaluate(policy_params, seed, eval_rollouts)
    for g in range(0, num_generations, 20 if not quick else 10):
        print(
            f"generation {g + 1:4d}  population cost {curves['population_cost'][g]:8.1f}  "
            f"mean cost {curves['mean_cost'][g]:8.1f}  step size {curves['step_size'][g]:.3f}"
        )
    print(f"final cost of the mean policy ({eval_rollouts} fresh rollouts): {final_cost:.1f}; {wall_s:.1f} s")
    return {"final_cost": final_cost, "wall_s": wall_s, "curves": curves}


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    main(quick=args.quick, seed=args.seed)
