"""Gradient variance while meta-training a learned optimizer: NRES vs FullES (NRES paper's table).

At several theta along an NRES meta-training run of the learned optimizer
(``evopes.tasks.learned_optimizer``, T inner steps, W = 1, sigma = 0.01), we
measure the trace of the covariance of the gradient estimates of

* NRES: the estimate of one W = 1 window, averaged over the T/W window
  positions of an episode: lock-step particles sweep t = 0 .. T-1, and at each
  position the covariance over independent seeds is taken; the traces are
  averaged over the positions (the paper's "averaged over the T/W windows");
* FullES: the estimate of one whole T-step episode per pair.

Pairs are independent and identically distributed in both estimators (their
own noise, initial classifier and data keys), so the covariance of a
P-pair estimate is exactly the one-pair covariance divided by P. We measure
one-pair estimates (many seeds) and report the traces at the meta-training
settings of the ``lopt`` benchmark and the paper: NRES with 100 pairs per
window, FullES with 10 pairs per episode (``nres_trace``, ``fulles_trace``,
``ratio`` = FullES / NRES), plus the one-pair traces and the ratio at equal
unroll budget per estimate (``2 P_nres W = 2 P_full T``, i.e. NRES with
``P_full T / W`` pairs per window): ``ratio_equal_budget = T/W * fulles_one /
nres_one``. The paper (T = 1000, W = 1, Fashion-MNIST 8x8)
found NRES 1.5 to 16 and FullES 150 to 860 at eight theta (30x to 600x lower).

Rows: ``{theta_index, meta_training_step, meta_loss, nres_trace, fulles_trace,
ratio, ratio_equal_budget, nres_trace_one_pair, fulles_trace_one_pair}``.
``--quick`` uses T = 100 (probes: 8 NRES seeds x T window positions, 16
FullES episodes per theta); the full run T = 1000 with 4 and 8.
"""

from __future__ import annotations

from pathlib import Path

import jax
import jax.numpy as jnp
import matplotlib.pyplot as plt
import numpy as np
import optax

import evopes
from benchmarks.common import cli, save_figure, write_results
from benchmarks.lopt import FINAL_FRACTION, meta_learning_rate
from evopes.tasks.learned_optimizer import LearnedOptimizerTask
from evopes.tasks.training import episodic_gradient, online_gradients, train_online

NAME = "lopt_variance"
STD = 0.01
NRES_PAIRS, FULLES_PAIRS = 100, 10  # the paper's meta-training settings

FULL = {
    "horizon": 1000,
    "train_pairs": 8,
    "train_windows": 1000,
    "train_lr": 1e-3,
    "num_theta": 3,
    "nres_seeds": 4,
    "fulles_seeds": 8,
}
QUICK = {
    "horizon": 100,
    "train_pairs": 8,
    "train_windows": 300,
    "train_lr": 3e-3,
    "num_theta": 3,
    "nres_seeds": 8,
    "fulles_seeds": 16,
}


def per_position_trace(estimates: np.ndarray) -> float:
    """Mean over positions of the trace of the covariance over seeds; shape (seeds, T, d)."""
    return float(
        np.mean(np.sum(np.var(np.asarray(estimates, np.float64), axis=0, ddof=1), axis=-1))
    )


def trace_cov(estimates: np.ndarray) -> float:
    """Trace of the sample covariance of estimates stacked on axis 0."""
    return float(np.sum(np.var(np.asarray(estimates, np.float64), axis=0, ddof=1)))


def main(quick: bool, seed: int, out_dir: Path) -> list[dict]:
    config = QUICK if quick else FULL
    T = config["horizon"]
    task = LearnedOptimizerTask(horizon=T)
    theta0 = task.init_theta(jax.random.key(seed))

    # An NRES meta-training run; theta is probed at evenly spaced points of it.
    es = evopes.NRES(
        population_size=2 * config["train_pairs"],
        solution=theta0,
        truncation_length=1,
        horizon=T,
        init_inner=task.init_inner,
        optimizer=optax.adam(meta_learning_rate(config["train_lr"], config["train_windows"])),
    )
    num_windows = es.burn_in_windows + config["train_windows"]
    trace = train_online(
        es, es.default_params.replace(std=STD), theta0, jax.random.key(seed), task.step, num_windows
    )
    probe_steps = np.linspace(es.burn_in_windows, num_windows, config["num_theta"]).astype(int) - 1
    eval_keys = jax.random.split(jax.random.key(seed + 1000), 4)
    meta_loss = jax.jit(lambda th: jnp.mean(jax.vmap(lambda k: task.meta_loss(th, k))(eval_keys)))

    # One-pair estimators: NRES lock-step over one episode (T windows), FullES one episode.
    nres = evopes.NRES(
        population_size=2,
        solution=theta0,
        truncation_length=1,
        horizon=T,
        init_inner=task.init_inner,
        step_unlocked=False,
    )
    nres_params = nres.default_params.replace(std=STD)
    fulles = evopes.FullES(population_size=2, solution=theta0)
    fulles_params = fulles.default_params.replace(std_init=STD)
    nres_estimates = jax.jit(
        jax.vmap(
            lambda th, k: online_gradients(nres, nres_params, th, k, task.step, T),
            in_axes=(None, 0),
        )
    )
    fulles_estimates = jax.jit(
        jax.vmap(
            lambda th, k: episodic_gradient(
                fulles, fulles_params, th, k, task.init_inner, task.step, T
            ),
            in_axes=(None, 0),
        )
    )

    rows = []
    for index, step in enumerate(probe_steps):
        theta = jax.tree.map(lambda x, step=step: x[step], trace.theta)
        keys = jax.random.split(
            jax.random.key(seed + 10 + index), config["nres_seeds"] + config["fulles_seeds"]
        )
        nres_one = per_position_trace(nres_estimates(theta, keys[: config["nres_seeds"]]))
        fulles_one = trace_cov(fulles_estimates(theta, keys[config["nres_seeds"] :]))
        nres_trace, fulles_trace = nres_one / NRES_PAIRS, fulles_one / FULLES_PAIRS
        rows.append(
            {
                "theta_index": index,
                "meta_training_step": int(step + 1),
                "meta_loss": float(meta_loss(theta)),
                "nres_trace": nres_trace,
                "fulles_trace": fulles_trace,
                "ratio": fulles_trace / nres_trace,
                "ratio_equal_budget": T * fulles_one / nres_one,
                "nres_trace_one_pair": nres_one,
                "fulles_trace_one_pair": fulles_one,
            }
        )

    write_results(
        NAME,
        rows,
        out_dir,
        quick=quick,
        seed=seed,
        extra={
            "settings": {
                **config,
                "std": STD,
                "nres_pairs": NRES_PAIRS,
                "fulles_pairs": FULLES_PAIRS,
                "train_optimizer": (
                    f"adam(cosine {config['train_lr']} -> {config['train_lr'] * FINAL_FRACTION})"
                ),
            },
        },
    )
    save_figure(_figure(rows), NAME, out_dir)
    return rows


def _figure(rows):
    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    index = [row["theta_index"] for row in rows]
    ax.plot(
        index,
        [row["fulles_trace"] for row in rows],
        "s-",
        label=f"FullES, {FULLES_PAIRS} pairs, one episode",
    )
    ax.plot(
        index,
        [row["nres_trace"] for row in rows],
        "o-",
        label=f"NRES, {NRES_PAIRS} pairs, one W = 1 window (mean over positions)",
    )
    for row in rows:
        ax.annotate(
            f"FullES/NRES {row['ratio']:.2g}x",
            (row["theta_index"], row["nres_trace"]),
            textcoords="offset points",
            xytext=(4, -12),
            fontsize=8,
        )
    ax.set_xticks(
        index,
        [f"{i}\n(step {row['meta_training_step']})" for i, row in zip(index, rows, strict=True)],
    )
    ax.set(
        yscale="log",
        xlabel="theta along the NRES meta-training run",
        ylabel="trace of covariance",
        title="gradient variance, learned optimizer on digits",
    )
    ax.legend(fontsize=8)
    return fig


if __name__ == "__main__":
    cli(main)
