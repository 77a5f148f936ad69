"""Gradient variance while meta-training a learned optimizer: NRES vs FullES (NRES paper's table).

At several theta along an NRES meta-training run of the learned optimizer
at the ``lopt`` benchmark's setting (``evopes.tasks.adam_lopt``, the
Adam-plus-MLP optimizer starting at Adam 1e-3; 50 pairs, Adam 3e-4, T inner
steps, W = 1, sigma = 0.01), we measure the trace of the covariance of the gradient estimates of

* NRES: the estimate of one W = 1 window, averaged over the T/W window
  positions of an episode: lock-step particles sweep t = 0 .. T-1, and at each
  position the covariance over independent seeds is taken; the traces are
  averaged over the positions (the paper's "averaged over the T/W windows");
* FullES: the estimate of one whole T-step episode per pair;
* PES: the same one-pair window estimate as NRES's, averaged over positions
  likewise (``pes_trace_one_pair``; ``pes_over_nres`` is its ratio to NRES's
  at equal pairs and steps), the variance behind the ``lopt`` benchmark's
  NRES-against-PES comparison.

Pairs are independent and identically distributed in both estimators (their
own noise, initial classifier and data keys), so the covariance of a
P-pair estimate is exactly the one-pair covariance divided by P. We measure
one-pair estimates (many seeds) and compare the two at **equal unroll steps
per estimate**, as the paper's variance analysis does: FullES with 10 pairs
(its meta-training setting, ``2 * 10 * T`` steps per estimate) against NRES
with ``10 T / W`` pairs per window (the same number of steps). That is the
only reading under which the paper's 30x to 600x can occur: a one-pair FullES
estimate is exactly the mean over the episode's windows of one-pair NRES
window estimates with the same noise, ``g_full = mean_t g_t``, so by convexity
``tr Cov(g_full) <= mean_t tr Cov(g_t)``; at equal pairs NRES can never be
lower, and at 100 NRES pairs against 10 FullES pairs (the meta-training
settings, NRES using 100x fewer steps) at most 10x lower. At equal steps the
ratio lies between about 1 (window losses uncorrelated in time) and T / W
(perfectly correlated).

Rows: ``{theta_index, meta_training_step, meta_loss, nres_trace, fulles_trace,
ratio, nres_trace_100_pairs, ratio_100_pairs, nres_trace_one_pair,
nres_trace_one_pair_unlocked, fulles_trace_one_pair, pes_trace_one_pair,
pes_over_nres}``: ``nres_trace`` at
equal steps, ``ratio = fulles_trace / nres_trace``; ``nres_trace_100_pairs``
and ``ratio_100_pairs`` at the meta-training settings; the one-pair traces
as measured, ``..._unlocked`` adding the spread of the per-position means
(what a step-unlocked window, whose pairs sit at uniform positions, also
carries). The paper (T = 1000, W = 1, Fashion-MNIST 8x8) found NRES 1.5 to
16 and FullES 150 to 860 at eight theta. ``--quick`` uses T = 100 and
3 theta; the full run T = 1000 and 8 theta.
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
from evopes.tasks.adam_lopt import AdamLearnedOptimizerTask
from evopes.tasks.training import episodic_gradient, online_gradients, train_online

NAME = "lopt_variance"
STD = 0.01
WINDOW = 1
NRES_PAIRS, FULLES_PAIRS = 100, 10  # the paper's meta-training settings (W = 1)

FULL = {  # the meta-training run: lopt's setting (evopes.bench.lopt.FULL)
    "horizon": 1000,
    "train_pairs": 50,
    "train_windows": 1000,
    "train_lr": 3e-4,
    "num_theta": 8,
    "nres_seeds": 8,
    "fulles_seeds": 32,
}
QUICK = {
    "horizon": 100,
    "train_pairs": 8,
    "train_windows": 300,
    "train_lr": 1e-3,
    "num_theta": 3,
    "nres_seeds": 8,
    "fulles_seeds": 16,
}


def per_position_trace(estimates: np.ndarray) -> tuple[float, float]:
    """Traces of one-pair window estimates of shape (seeds, T, d).

    Returns ``(mean over positions of the trace of the covariance over seeds,
    the same plus the spread of the per-position means)``; the second is the
    covariance of a window at a uniformly drawn position (law of total
    variance), with the seeds' noise in the per-position means subtracted.
    """
    estimates = np.asarray(estimates, np.float64)
    within = np.sum(np.var(estimates, axis=0, ddof=1), axis=-1)  # (T,)
    means = np.mean(estimates, axis=0)  # (T, d)
    between = np.sum(np.var(means, axis=0, ddof=1)) - np.mean(within) / estimates.shape[0]
    return float(np.mean(within)), float(np.mean(within) + max(between, 0.0))


def trace_cov(estimates: np.ndarray) -> float:
    """Trace of the sample covariance of estimates stacked on axis 0."""
    return float(np.sum(np.var(np.asarray(estimates, np.float64), axis=0, ddof=1)))


def _window_estimates(strategy_class, task, theta0):
    """(theta, keys) -> one-pair W-step window estimates over one lock-step episode per key."""
    es = strategy_class(
        population_size=2,
        solution=theta0,
        truncation_length=WINDOW,
        horizon=task.horizon,
        init_inner=task.init_inner,
        step_unlocked=False,
    )
    params = es.default_params.replace(std=STD)
    return jax.jit(
        jax.vmap(
            lambda th, k: online_gradients(es, params, th, k, task.step, task.horizon),
            in_axes=(None, 0),
        )
    )


def main(quick: bool, seed: int, out_dir: Path) -> list[dict]:
    config = QUICK if quick else FULL
    T = config["horizon"]
    task = AdamLearnedOptimizerTask(horizon=T)
    theta0 = task.init_theta(jax.random.key(seed))

    # An NRES meta-training run; theta is probed at evenly spaced points of it.
    es = evopes.NRES(
        population_size=2 * config["train_pairs"],
        solution=theta0,
        truncation_length=WINDOW,
        horizon=T,
        init_inner=task.init_inner,
        optimizer=optax.adam(config["train_lr"]),
    )
    num_windows = es.burn_in_windows + config["train_windows"]
    trace = train_online(
        es, es.default_params.replace(std=STD), theta0, jax.random.key(seed), task.step, num_windows
    )
    probe_steps = np.linspace(es.burn_in_windows, num_windows, config["num_theta"]).astype(int) - 1
    eval_keys = jax.random.split(jax.random.key(seed + 1000), 4)
    meta_loss = jax.jit(lambda th: jnp.mean(jax.vmap(lambda k: task.meta_loss(th, k))(eval_keys)))

    # One-pair estimators: NRES and PES lock-step over one episode (T windows), FullES one
    # episode. PES at equal pairs and steps is the variance side of NRES against PES.
    nres_estimates = _window_estimates(evopes.NRES, task, theta0)
    pes_estimates = _window_estimates(evopes.PES, task, theta0)
    fulles = evopes.FullES(population_size=2, solution=theta0)
    fulles_params = fulles.default_params.replace(std_init=STD)
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
        nres_one, nres_unlocked = per_position_trace(
            nres_estimates(theta, keys[: config["nres_seeds"]])
        )
        fulles_one = trace_cov(fulles_estimates(theta, keys[config["nres_seeds"] :]))
        # Same keys as NRES: same initial classifiers, data and noise; only the estimator differs.
        pes_one, _ = per_position_trace(pes_estimates(theta, keys[: config["nres_seeds"]]))
        # Equal unroll steps per estimate: 2 FULLES_PAIRS T = 2 P_nres W.
        nres_trace = nres_one / (FULLES_PAIRS * T // WINDOW)
        fulles_trace = fulles_one / FULLES_PAIRS
        rows.append(
            {
                "theta_index": index,
                "meta_training_step": int(step + 1),
                "meta_loss": float(meta_loss(theta)),
                "nres_trace": nres_trace,
                "fulles_trace": fulles_trace,
                "ratio": fulles_trace / nres_trace,
                "nres_trace_100_pairs": nres_one / NRES_PAIRS,
                "ratio_100_pairs": fulles_trace / (nres_one / NRES_PAIRS),
                "nres_trace_one_pair": nres_one,
                "nres_trace_one_pair_unlocked": nres_unlocked,
                "fulles_trace_one_pair": fulles_one,
                "pes_trace_one_pair": pes_one,
                "pes_over_nres": pes_one / nres_one,
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
                "nres_pairs_meta_training": NRES_PAIRS,
                "nres_pairs_equal_steps": FULLES_PAIRS * T // WINDOW,
                "fulles_pairs": FULLES_PAIRS,
                "train_optimizer": f"adam({config['train_lr']})",
            },
        },
    )
    save_figure(_figure(rows, T), NAME, out_dir)
    return rows


def _figure(rows, horizon):
    fig, ax = plt.subplots(figsize=(7, 4.8))
    index = [row["theta_index"] for row in rows]
    ax.plot(
        index,
        [row["fulles_trace"] for row in rows],
        "s-",
        label=f"FullES, {FULLES_PAIRS} pairs, one episode ({2 * FULLES_PAIRS * horizon} steps)",
    )
    ax.plot(
        index,
        [row["nres_trace"] for row in rows],
        "o-",
        label=(
            f"NRES, {FULLES_PAIRS * horizon // WINDOW} pairs, one W = {WINDOW} window "
            "(same steps; mean over positions)"
        ),
    )
    ax.plot(
        index,
        [row["pes_trace_one_pair"] / (FULLES_PAIRS * horizon // WINDOW) for row in rows],
        "^-",
        label=f"PES, {FULLES_PAIRS * horizon // WINDOW} pairs, one window (same steps)",
    )
    ax.plot(
        index,
        [row["nres_trace_100_pairs"] for row in rows],
        "o:",
        color="gray",
        label=f"NRES, {NRES_PAIRS} pairs (meta-training setting, {2 * NRES_PAIRS * WINDOW} steps)",
    )
    for row in rows:
        ax.annotate(
            f"{row['ratio']:.0f}x",
            (row["theta_index"], row["nres_trace"]),
            textcoords="offset points",
            xytext=(0, -13),
            ha="center",
            fontsize=7,
        )
    ax.set_xticks(index, [str(row["meta_training_step"]) for row in rows])
    ax.set(
        yscale="log",
        xlabel="theta after this many NRES meta-training windows",
        ylabel="trace of covariance",
        title="gradient variance, learned optimizer on digits (labels: FullES / NRES)",
    )
    ax.legend(fontsize=7, loc="center right")
    return fig


if __name__ == "__main__":
    cli(main)
