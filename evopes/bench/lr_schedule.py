"""Tuning an inverse-time-decay learning-rate schedule: PES vs truncated ES (PES paper).

The task (``evopes.tasks.lr_schedule``): SGD trains an MLP (64-32-10, gelu)
on the 8x8 ``digits`` images for T = 1000 steps with
``lr_t = exp(theta0) / (1 + t / exp(theta1))``; the meta-objective is the mean
validation loss over the run. theta starts at (-4, 2) (lr0 ~ 0.018, decay ~ 7
steps: almost no learning).

What "ES at K" means here, as in the PES paper's figure (Vicol et al. 2021,
section 5.3): **truncated ES** (``evopes.TES``) with truncation length K. Each
window, the two partners of a pair branch from one shared inner state, run K
steps with ``theta +/- e`` (fresh noise every window) and their K losses give
the gradient; the shared state then continues. The gradient ignores how theta
shaped the state the window starts from, so it is biased towards schedules that
look good over K steps (short-horizon bias). PES at K uses the same windows but
accumulates the noise of the episode and is unbiased. Both are step-unlocked
(pairs spread over [0, T), burn-in of T/K windows). The unbiased untruncated
baseline, FullES (K = T, one whole run per member), is the last row.

Settings: sigma = 0.3 and outer Adam for TES and PES (16 pairs), its
learning rate decaying from 0.05 to 0.005 (cosine) over the run; FullES 8
pairs, Adam from 0.3 to 0.03 (one update per T sequential steps, so larger
steps). Every method gets the same number of sequential inner steps after
its burn-in (so K = 100 makes a tenth of K = 10's updates): 10,000 in the
full run, with K = 10 and 100, FullES, and a 15 x 11 grid of two runs per
point; ``--quick``: 3,000, K = 10 only, no FullES, a 9 x 6 grid of one run
per point (see ``settings`` in the JSON). The meta-objective in the
rows is measured at the final theta on ``EVAL_RUNS`` fresh runs with common
random numbers.

Rows: ``{method, K, final_theta0, final_theta1, meta_loss, sequential_steps}``.
Expected: PES at K = 10 finds a schedule with a clearly lower meta-objective
than ES (TES) at K = 10, which drifts along the valley towards fast decay.
"""

from __future__ import annotations

from pathlib import Path

import jax
import jax.numpy as jnp
import matplotlib.pyplot as plt
import numpy as np
import optax

import evopes
from evopes.bench.common import cli, save_figure, write_results
from evopes.tasks.lr_schedule import LRScheduleTask
from evopes.tasks.training import train_episodic, train_online

NAME = "lr_schedule"
INITIAL_THETA = jnp.array([-4.0, 2.0])
STD = 0.3
EVAL_RUNS = 8

FULL = {
    "horizon": 1000,
    "num_pairs": 16,
    "sequential_steps": 10_000,
    "fulles_pairs": 8,
    "grid": (15, 11),
    "grid_runs": 2,
    "methods": [("ES", 10), ("PES", 10), ("ES", 100), ("PES", 100)],
}
QUICK = {
    "horizon": 1000,
    "num_pairs": 16,
    "sequential_steps": 3_000,
    "fulles_pairs": 0,
    "grid": (9, 6),
    "grid_runs": 1,
    "methods": [("ES", 10), ("PES", 10)],
}


def outer_optimizer(learning_rate: float, num_updates: int):
    """Adam, its learning rate decaying (cosine) to a tenth: fast travel, then settling."""
    return optax.adam(optax.cosine_decay_schedule(learning_rate, num_updates, alpha=0.1))


def run_online(name: str, truncation_length: int, task, num_pairs, sequential_steps, seed):
    strategy_class = {"ES": evopes.TES, "PES": evopes.PES}[name]
    es = strategy_class(
        population_size=2 * num_pairs,
        solution=INITIAL_THETA,
        truncation_length=truncation_length,
        horizon=task.horizon,
        init_inner=task.init_inner,
        optimizer=outer_optimizer(0.05, sequential_steps // truncation_length),
    )
    num_windows = es.burn_in_windows + sequential_steps // truncation_length
    trace = train_online(
        es,
        es.default_params.replace(std=STD),
        INITIAL_THETA,
        jax.random.key(seed),
        task.step,
        num_windows,
    )
    return np.asarray(trace.theta), np.asarray(trace.sequential_steps)


def run_fulles(task, num_pairs, sequential_steps, seed):
    num_generations = sequential_steps // task.horizon
    es = evopes.FullES(
        population_size=2 * num_pairs,
        solution=INITIAL_THETA,
        optimizer=outer_optimizer(0.3, num_generations),
    )
    params = es.default_params.replace(std_init=STD)
    trace = train_episodic(
        es,
        params,
        INITIAL_THETA,
        jax.random.key(seed),
        task.init_inner,
        task.step,
        task.horizon,
        num_generations,
    )
    return np.asarray(trace.theta), np.asarray(trace.sequential_steps)


def main(quick: bool, seed: int, out_dir: Path) -> list[dict]:
    config = QUICK if quick else FULL
    task = LRScheduleTask(horizon=config["horizon"])
    evaluate = jax.jit(
        lambda theta: task.meta_objective(theta, jax.random.key(seed + 1000), EVAL_RUNS)
    )
    runs = {}
    for name, truncation_length in config["methods"]:
        runs[(name, truncation_length)] = run_online(
            name, truncation_length, task, config["num_pairs"], config["sequential_steps"], seed
        )
    if config["fulles_pairs"]:
        runs[("FullES", task.horizon)] = run_fulles(
            task, config["fulles_pairs"], config["sequential_steps"], seed
        )

    rows = []
    for (name, truncation_length), (theta, sequential) in runs.items():
        rows.append(
            {
                "method": name,
                "K": truncation_length,
                "final_theta0": float(theta[-1, 0]),
                "final_theta1": float(theta[-1, 1]),
                "meta_loss": float(evaluate(jnp.asarray(theta[-1]))),
                "sequential_steps": int(sequential[-1]),
            }
        )
    initial = float(evaluate(INITIAL_THETA))

    theta0 = np.linspace(-5.0, 1.5, config["grid"][0])
    theta1 = np.linspace(0.0, 10.0, config["grid"][1])
    grid = np.asarray(
        jax.jit(lambda k: task.grid(theta0, theta1, k, config["grid_runs"]))(jax.random.key(seed))
    )
    best = np.unravel_index(np.argmin(grid), grid.shape)

    write_results(
        NAME,
        rows,
        out_dir,
        quick=quick,
        seed=seed,
        extra={
            "initial_meta_loss": initial,
            "grid_minimum": {
                "theta0": float(theta0[best[1]]),
                "theta1": float(theta1[best[0]]),
                "meta_loss": float(grid[best]),
            },
            "settings": {
                **{k: v for k, v in config.items() if k != "methods"},
                "std": STD,
                "online_optimizer": "adam(cosine 0.05 -> 0.005)",
                "fulles_optimizer": "adam(cosine 0.3 -> 0.03)",
                "initial_theta": [-4.0, 2.0],
                "eval_runs": EVAL_RUNS,
                "es_means": "truncated ES (evopes.TES) with truncation length K",
            },
        },
    )
    save_figure(_figure(runs, theta0, theta1, grid), NAME, out_dir)
    return rows


def _figure(runs, theta0, theta1, grid):
    fig, ax = plt.subplots(figsize=(7.5, 5.5))
    image = ax.contourf(
        theta0, theta1, grid, levels=np.linspace(0.0, 2.4, 25), cmap="viridis", extend="max"
    )
    fig.colorbar(image, ax=ax, label="meta-objective (mean validation loss over T)")
    styles = {"ES": "--", "PES": "-", "FullES": ":"}
    for (name, truncation_length), (theta, _) in runs.items():
        label = f"{name} K={truncation_length}" + (" (truncated ES)" if name == "ES" else "")
        (line,) = ax.plot(theta[:, 0], theta[:, 1], styles[name], lw=1.5, label=label)
        ax.plot(theta[-1, 0], theta[-1, 1], "o", color=line.get_color(), mec="k")
    ax.plot(*np.asarray(INITIAL_THETA), "w*", ms=14, mec="k", label="start")
    ax.set(
        xlabel="theta0 = log lr0",
        ylabel="theta1 = log decay",
        title="lr_t = lr0 / (1 + t / decay): trajectories over the meta-objective",
    )
    ax.legend(fontsize=8, loc="lower left")
    return fig


if __name__ == "__main__":
    cli(main)
