"""Gradient variance on Lorenz (NRES paper, section 5 and Figure 3): NRES < FullES < PES.

At the Lorenz initial theta = (3.116, 3.7), sigma = 0.04, we draw independent
gradient estimates (one per seed; ``vmap`` over seeds) and report the trace of
their covariance. All estimators spend the same unroll budget per estimate,
``2 P_online W = 2 P_full T`` particle-steps:

* T = 2000, W = 100: 200 online pairs, FullES 10 pairs (the paper's settings);
* T = 1000, W = 1 (full mode only): 1000 online pairs, FullES 1 pair.

Online estimators: NRES, PES and GPES with K = 4W, each step-unlocked (the
default) and lock-step. The estimate of one window is
``es.estimate`` (``tell`` without the update), theta never moves.

* Step-unlocked: after the T/W-window burn-in (every particle has restarted
  from a genuine episode start), the estimates of the next windows are pooled
  (T/W windows for W = 100, 100 windows for W = 1). They are identically
  distributed; consecutive windows of one seed are correlated, which only
  slows the convergence of the covariance estimate, not its target.
* Lock-step: all particles sit at the same time t, so an estimate only sees
  the window [t, t + W) of the episode; successive updates sweep the T/W
  positions. The estimates of all positions of one episode are pooled: the
  covariance of a lock-step update around the horizon-average gradient, which
  includes how much the window's expected gradient changes over the episode
  (a lock-step estimate is unbiased for the full objective only on average
  over positions).

FullES: one whole-episode estimate per seed (fitness = time-average loss, the
same objective and convention as the online estimators).

Rows: ``{method, unlocked, T, W, num_pairs, trace_cov}``; ``unlocked`` is null for
FullES. Reference values (the paper's public code, re-run independently): T = 2000,
W = 100: NRES 7.9e4 < FullES 4.6e5 < PES 9.0e5; T = 1000, W = 1: NRES 7.4e4, FullES
5.0e6, PES 1.7e7; lock-step PES/NRES 1.6x-13x above step-unlocked at T = 2000, W =
100 and 178x at T = 1000, W = 1. ``--quick``: T = 2000, W = 100 only, 32 seeds per
estimator (full: 64, FullES 256).
"""

from __future__ import annotations

from pathlib import Path

import jax
import matplotlib.pyplot as plt
import numpy as np

import evopes
from evopes.bench.common import cli, save_figure, write_results
from evopes.strategies.full_es import FullES
from evopes.tasks import lorenz
from evopes.tasks.training import episodic_gradient, online_gradients

NAME = "variance"
STD = 0.04


def trace_cov(gradients: np.ndarray) -> float:
    """Trace of the sample covariance of estimates stacked on axis 0."""
    return float(np.trace(np.atleast_2d(np.cov(np.asarray(gradients, np.float64).T))))


def online_trace(
    name: str, unlocked: bool, T: int, W: int, num_pairs: int, keys, measured_windows: int
):
    make = {"NRES": evopes.NRES, "PES": evopes.PES, "GPES": evopes.GPES}[name]
    kwargs = {"noise_period": 4 * W} if name == "GPES" else {}
    es = make(
        2 * num_pairs,
        lorenz.INITIAL_THETA,
        W,
        T,
        lorenz.init_inner,
        step_unlocked=unlocked,
        **kwargs,
    )
    params = es.default_params.replace(std=STD)
    burn_in = es.burn_in_windows
    num_windows = burn_in + measured_windows if unlocked else T // W
    estimates = jax.vmap(
        lambda k: online_gradients(es, params, lorenz.INITIAL_THETA, k, lorenz.step, num_windows)
    )(keys)
    estimates = np.asarray(estimates)[:, burn_in:]  # (seeds, windows, d)
    return trace_cov(estimates.reshape(-1, estimates.shape[-1]))


def full_es_trace(T: int, num_pairs: int, keys) -> float:
    es = FullES(2 * num_pairs, lorenz.INITIAL_THETA)
    params = es.default_params.replace(std_init=STD)
    estimates = jax.vmap(
        lambda k: episodic_gradient(
            es, params, lorenz.INITIAL_THETA, k, lorenz.init_inner, lorenz.step, T
        )
    )(keys)
    return trace_cov(np.asarray(estimates))


def main(quick: bool, seed: int, out_dir: Path) -> list[dict]:
    configs = [(2000, 100, 200)] if quick else [(2000, 100, 200), (1000, 1, 1000)]
    num_seeds, full_es_seeds = (32, 64) if quick else (64, 256)
    rows = []
    for T, W, online_pairs in configs:
        full_pairs = online_pairs * W // T  # equal unroll budget per estimate
        keys = jax.random.split(jax.random.key(seed), full_es_seeds)
        rows.append(
            {
                "method": "FullES",
                "unlocked": None,
                "T": T,
                "W": W,
                "num_pairs": full_pairs,
                "trace_cov": full_es_trace(T, full_pairs, keys),
            }
        )
        measured = T // W if W > 1 else 100
        keys = jax.random.split(jax.random.key(seed + 1), num_seeds)
        for name in ("NRES", "PES", "GPES"):
            for unlocked in (True, False):
                rows.append(
                    {
                        "method": name if name != "GPES" else "GPES(K=4W)",
                        "unlocked": unlocked,
                        "T": T,
                        "W": W,
                        "num_pairs": online_pairs,
                        "trace_cov": online_trace(
                            name, unlocked, T, W, online_pairs, keys, measured
                        ),
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
                "std": STD,
                "theta": [3.116, 3.7],
                "seeds_online": num_seeds,
                "seeds_full_es": full_es_seeds,
            }
        },
    )
    save_figure(_figure(rows), NAME, out_dir)
    return rows


def _figure(rows):
    configs = sorted({(r["T"], r["W"]) for r in rows}, reverse=True)
    fig, axes = plt.subplots(1, len(configs), figsize=(6 * len(configs), 4.5), squeeze=False)
    for ax, (T, W) in zip(axes[0], configs, strict=True):
        subset = [r for r in rows if (r["T"], r["W"]) == (T, W)]
        labels = [
            r["method"]
            + ("" if r["unlocked"] is None else (" unlocked" if r["unlocked"] else " lock-step"))
            for r in subset
        ]
        colors = [
            "tab:gray" if r["unlocked"] is None else ("tab:blue" if r["unlocked"] else "tab:orange")
            for r in subset
        ]
        ax.bar(range(len(subset)), [r["trace_cov"] for r in subset], color=colors)
        ax.set_xticks(range(len(subset)), labels, rotation=35, ha="right", fontsize=8)
        ax.set(
            yscale="log",
            ylabel="trace of covariance",
            title=f"Lorenz gradient variance, T={T}, W={W}",
        )
    return fig


if __name__ == "__main__":
    cli(main)
