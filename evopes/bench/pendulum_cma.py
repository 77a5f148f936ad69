"""pendulum-cma: CMA-ES evolves a pendulum swing-up policy (gymnax Pendulum-v1).

The setting of the JAX CMA-ES tutorial evopes started from: MLP 3 -> 48 relu
-> 1 (241 parameters) from zero, lambda = 100 (mu = 50), sigma_0 = 1, cost =
minus the mean return over 20 rollouts x 200 steps, 200 generations. Target:
median final cost over 3 seeds below 200 (the tutorial reached ~124).

``final_cost`` is the cost of the final CMA-ES mean on 100 fresh rollouts;
``wall_s`` includes compilation. Quick: 1 seed, 60 generations.
"""

from __future__ import annotations

import statistics
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import matplotlib.pyplot as plt

import evopes
from evopes import envs
from evopes.bench.common import cli, save_figure, write_results

NAME = "pendulum_cma"


def make_fitness(num_rollouts: int):
    env = envs.GymnaxEnv.make("Pendulum-v1")
    policy = envs.MLPPolicy(action_dim=1, hidden_sizes=(48,))
    obs = envs.observation_shape(env)
    template = policy.init(jax.random.key(0), jnp.zeros(obs.shape, obs.dtype))
    return envs.EpisodicFitness(env, policy, num_steps=200, num_rollouts=num_rollouts), template


def train(seed: int, num_generations: int):
    fitness, template = make_fitness(num_rollouts=20)
    es = evopes.CMAES(population_size=100, solution=template)
    es_params = es.default_params.replace(std_init=jnp.float32(1.0))

    def generation(state, key):
        ask_key, eval_key, tell_key = jax.random.split(key, 3)
        population, state = es.ask(ask_key, state, es_params)
        costs = fitness(population, eval_key)
        state, _ = es.tell(tell_key, population, costs, state, es_params)
        mean_cost = fitness(jax.tree.map(lambda leaf: leaf[None], es.get_mean(state)), eval_key)[0]
        return state, {
            "population_cost": costs.mean(),
            "mean_cost": mean_cost,
            "step_size": state.std,
        }

    @jax.jit
    def run(key):
        init_key, loop_key = jax.random.split(key)
        state = es.init(init_key, jax.tree.map(jnp.zeros_like, template), es_params)
        return jax.lax.scan(generation, state, jax.random.split(loop_key, num_generations))

    start = time.perf_counter()
    state, curves = jax.block_until_ready(run(jax.random.key(seed)))
    wall_s = time.perf_counter() - start
    evaluation, _ = make_fitness(num_rollouts=100)
    final_returns = jax.jit(evaluation.returns)(es.get_mean(state), jax.random.key(10_000 + seed))
    return float(-final_returns.mean()), wall_s, jax.device_get(curves)


def main(quick: bool, seed: int, out_dir: Path) -> list[dict]:
    seeds = [seed] if quick else [seed, seed + 1, seed + 2]
    num_generations = 60 if quick else 200
    rows, curves = [], {}
    for s in seeds:
        final_cost, wall_s, curves[s] = train(s, num_generations)
        rows.append({"seed": s, "final_cost": final_cost, "wall_s": wall_s})
        print(f"seed {s}: final cost {final_cost:.1f} in {wall_s:.1f} s", flush=True)
    median = statistics.median(row["final_cost"] for row in rows)
    write_results(
        NAME,
        rows,
        out_dir,
        quick=quick,
        seed=seed,
        extra={
            "num_generations": num_generations,
            "median_final_cost": median,
            "target": "median final cost < 200 after 200 generations (tutorial: ~124)",
        },
    )

    fig, (cost_ax, std_ax) = plt.subplots(1, 2, figsize=(10, 4))
    generations = range(1, num_generations + 1)
    for s, c in curves.items():
        (line,) = cost_ax.plot(generations, c["mean_cost"], label=f"seed {s}: mean policy")
        cost_ax.plot(
            generations,
            c["population_cost"],
            color=line.get_color(),
            alpha=0.35,
            label=f"seed {s}: population average",
        )
        std_ax.plot(generations, c["step_size"], color=line.get_color(), label=f"seed {s}")
    cost_ax.axhline(200, color="k", linestyle=":", label="target 200")
    cost_ax.set(
        xlabel="generation",
        ylabel="cost (minus mean return, 20 rollouts)",
        yscale="log",
        title="CMA-ES on Pendulum-v1 (241 parameters)",
    )
    std_ax.set(
        xlabel="generation", ylabel="step size sigma", yscale="log", title="CMA-ES step size"
    )
    cost_ax.legend(fontsize=7)
    std_ax.legend(fontsize=7)
    save_figure(fig, NAME, out_dir)
    return rows


if __name__ == "__main__":
    cli(main)
