"""Toy 2D regression (PES paper, section 5.2): meta-learning a learning-rate schedule.

PES and NRES (unbiased) find the narrow valley of the meta-loss near
theta ~ (2.75, -1.75); TES and TBPTT (truncated, biased) stall far from it.

Settings are the paper's: T = 100, W = 10, episodes reset every T steps,
lock-step particles, 50 antithetic pairs (the paper's "100 particles"),
sigma = 0.3 (TES: 1.0, as in the paper's TES command), outer Adam(lr 1e-2,
b1 0.99, b2 0.999), theta starts at (-4, -4). The paper's code sums the window's
losses where evopes averages them (a factor W in the gradient); Adam is
invariant to that scale, so the learning rate transfers unchanged. TBPTT
differentiates the sum of each window's losses (the paper's baseline).

Rows: ``{method, seed, final_theta0, final_theta1, meta_loss}`` with the meta-loss
in the paper's sum convention (``evopes.tasks.toy_regression.meta_loss``). The
figure shows the trajectories over the meta-loss heatmap and the meta-loss over
iterations.

Reference values (the paper's public code, re-run independently): L(-4, -4) = 2487.8; PES reaches
L ~ 555-576 with theta0 ~ 2.72-2.76 (L < 600 within 2000 iterations); TES with
sigma = 1 stays at L ~ 1080-1940; TBPTT stalls at theta ~ (0.14, -0.78),
L ~ 2423. ``--quick`` runs 2000 iterations and one seed; the full run 5000
iterations and three seeds.
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
from evopes.tasks import toy_regression as toy
from evopes.tasks.training import train_online

NAME = "toy_regression"
NUM_PAIRS = 50
EVAL_EVERY = 10
METHODS = {  # name: (strategy class, sigma)
    "PES": (evopes.PES, 0.3),
    "NRES": (evopes.NRES, 0.3),
    "TES": (evopes.TES, 1.0),
}


def outer_optimizer():
    return optax.adam(1e-2, b1=0.99, b2=0.999)


def run_es(strategy_class, std: float, seed: int, num_iterations: int):
    es = strategy_class(
        population_size=2 * NUM_PAIRS,
        solution=toy.INITIAL_THETA,
        truncation_length=toy.TRUNCATION_LENGTH,
        horizon=toy.HORIZON,
        init_inner=toy.init_inner,
        optimizer=outer_optimizer(),
        step_unlocked=False,
    )
    params = es.default_params.replace(std=std)
    trace = train_online(
        es,
        params,
        toy.INITIAL_THETA,
        jax.random.key(seed),
        toy.step,
        num_iterations,
        evaluate=toy.meta_loss,
        eval_every=EVAL_EVERY,
    )
    return np.asarray(trace.theta), np.asarray(trace.evaluation)


def main(quick: bool, seed: int, out_dir: Path) -> list[dict]:
    num_iterations = 2000 if quick else 5000
    seeds = [seed] if quick else [seed + i for i in range(3)]
    rows, curves = [], {}
    for name, (strategy_class, std) in METHODS.items():
        for run_seed in seeds:
            theta, meta_loss = run_es(strategy_class, std, run_seed, num_iterations)
            curves.setdefault(name, (theta, meta_loss))
            rows.append(_row(name, run_seed, theta, meta_loss))
    trace = jax.jit(lambda: toy.tbptt(num_iterations=num_iterations))()  # deterministic: one run
    theta, meta_loss = (
        np.asarray(trace.theta),
        np.asarray(trace.meta_loss)[EVAL_EVERY - 1 :: EVAL_EVERY],
    )
    curves["TBPTT"] = (theta, meta_loss)
    rows.append(_row("TBPTT", None, theta, meta_loss))

    write_results(
        NAME,
        rows,
        out_dir,
        quick=quick,
        seed=seed,
        extra={
            "settings": {
                "num_pairs": NUM_PAIRS,
                "num_iterations": num_iterations,
                "truncation_length": toy.TRUNCATION_LENGTH,
                "horizon": toy.HORIZON,
                "std": {name: std for name, (_, std) in METHODS.items()},
                "outer_optimizer": "adam(1e-2, b1=0.99, b2=0.999)",
            }
        },
    )
    save_figure(_figure(curves, num_iterations), NAME, out_dir)
    return rows


def _row(method, run_seed, theta, meta_loss) -> dict:
    return {
        "method": method,
        "seed": run_seed,
        "final_theta0": float(theta[-1, 0]),
        "final_theta1": float(theta[-1, 1]),
        "meta_loss": float(meta_loss[-1]),
    }


def _figure(curves, num_iterations):
    grid = np.linspace(-5.0, 5.0, 121)
    landscape = np.asarray(jax.jit(toy.meta_loss_grid)(jnp.asarray(grid), jnp.asarray(grid)))
    fig, (ax_map, ax_loss) = plt.subplots(1, 2, figsize=(12, 5))
    image = ax_map.contourf(grid, grid, np.log10(landscape), levels=30, cmap="viridis")
    fig.colorbar(image, ax=ax_map, label="log10 meta-loss (sum over T)")
    ax_map.contour(grid, grid, landscape, levels=[600.0], colors="w", linewidths=1)
    iterations = np.arange(EVAL_EVERY, num_iterations + 1, EVAL_EVERY)
    for label, (theta, meta_loss) in curves.items():
        (line,) = ax_map.plot(theta[:, 0], theta[:, 1], lw=2, label=label)
        ax_map.plot(theta[-1, 0], theta[-1, 1], "o", color=line.get_color())
        ax_loss.plot(iterations, meta_loss, label=label, color=line.get_color())
    ax_map.plot(*toy.INITIAL_THETA, "k*", ms=12, label="start (-4, -4)")
    ax_map.set(
        xlabel="theta0 = log lr initial",
        ylabel="theta1 = log lr final",
        title="trajectories (white: L = 600)",
    )
    ax_map.legend(fontsize=8, loc="upper left")
    ax_loss.axhline(600.0, color="k", ls=":", lw=1)
    ax_loss.set(
        xlabel="iteration", ylabel="meta-loss (sum over T)", yscale="log", title="meta-loss"
    )
    ax_loss.legend(fontsize=8)
    return fig


if __name__ == "__main__":
    cli(main)
