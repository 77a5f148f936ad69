"""Influence balancing (PES paper, section 5.1): PES finds theta* = -1/6, truncation does not.

Settings are the paper's: W = 1, 500 antithetic pairs (the paper's "N = 1000"
counts particles), sigma = 0.1, plain SGD with learning rate 1e-4, 3000
iterations, lock-step particles, no episode ends. With W = 1 evopes' estimator
(mean over steps, pairs counted) equals the paper code's (sum over the window,
particles counted in ``1 / (N sigma^2)``), so the learning rate transfers
unchanged; see ``evopes.tasks.influence_balancing`` for the window convention.
TBPTT (K = 1, 10, 100) uses the same SGD learning rate and iteration count.
TES is evopes' TES (both partners continue from the positive branch; the paper
code advances the shared state with an extra unperturbed unroll, which changes
nothing visible here).

Rows: ``{method, seed, final_theta, eval_loss}``; ``eval_loss`` is the paper's
evaluation (500 steps from ``s = ones``, end loss). The figure shows theta and
the evaluation loss over iterations.

Reference values (the paper's public code, re-run independently on a 2-core
CPU): PES ends at -0.16667 (eval loss ~1e-13); TES ~3.25 and still growing
(eval loss ~211); TBPTT K = 1 and 10 move away from the optimum, K = 100
converges. ``--quick`` runs one seed (the full run four);
both take well under a minute of compute.
"""

from __future__ import annotations

from pathlib import Path

import jax
import matplotlib.pyplot as plt
import numpy as np
import optax

import evopes
from evopes.bench.common import cli, save_figure, write_results
from evopes.tasks import influence_balancing as ib
from evopes.tasks.training import train_online

NAME = "influence_balancing"
NUM_PAIRS = 500
STD = 0.1
LEARNING_RATE = 1e-4
NUM_ITERATIONS = 3000
TBPTT_TRUNCATIONS = (1, 10, 100)


def run_es(strategy_class, seed: int):
    es = strategy_class(
        population_size=2 * NUM_PAIRS,
        solution=ib.INITIAL_THETA,
        truncation_length=1,
        horizon=None,
        init_inner=ib.init_inner,
        optimizer=optax.sgd(LEARNING_RATE),
        step_unlocked=False,
    )
    params = es.default_params.replace(std=STD)
    trace = train_online(
        es,
        params,
        ib.INITIAL_THETA,
        jax.random.key(seed),
        ib.step,
        NUM_ITERATIONS,
        evaluate=ib.evaluate,
    )
    return np.asarray(trace.theta), np.asarray(trace.evaluation)


def main(quick: bool, seed: int, out_dir: Path) -> list[dict]:
    seeds = [seed] if quick else [seed + i for i in range(4)]
    rows, curves = [], {}
    for strategy_class in (evopes.PES, evopes.TES):
        for run_seed in seeds:
            theta, eval_loss = run_es(strategy_class, run_seed)
            curves.setdefault(strategy_class.__name__, (theta, eval_loss))
            rows.append(_row(strategy_class.__name__, run_seed, theta, eval_loss))
    for truncation in TBPTT_TRUNCATIONS:  # deterministic: one run
        trace = jax.jit(
            lambda k=truncation: ib.tbptt(
                k, learning_rate=LEARNING_RATE, num_iterations=NUM_ITERATIONS
            )
        )()
        theta, eval_loss = np.asarray(trace.theta), np.asarray(trace.eval_loss)
        curves[f"TBPTT K={truncation}"] = (theta, eval_loss)
        rows.append(_row(f"TBPTT K={truncation}", None, theta, eval_loss))

    write_results(
        NAME,
        rows,
        out_dir,
        quick=quick,
        seed=seed,
        extra={
            "settings": {
                "num_pairs": NUM_PAIRS,
                "std": STD,
                "learning_rate": LEARNING_RATE,
                "truncation_length": 1,
                "num_iterations": NUM_ITERATIONS,
            }
        },
    )
    save_figure(_figure(curves), NAME, out_dir)
    return rows


def _row(method, run_seed, theta, eval_loss) -> dict:
    return {
        "method": method,
        "seed": run_seed,
        "final_theta": float(theta[-1]),
        "eval_loss": float(eval_loss[-1]),
    }


def _figure(curves):
    fig, (ax_theta, ax_loss) = plt.subplots(1, 2, figsize=(11, 4))
    iterations = np.arange(1, NUM_ITERATIONS + 1)
    for label, (theta, eval_loss) in curves.items():
        style = {"ls": "--", "lw": 2.5} if label == "TES" else {}  # TES lies on TBPTT K=1
        ax_theta.plot(iterations, theta, label=label, **style)
        ax_loss.plot(iterations, np.maximum(eval_loss, 1e-16), label=label, **style)
    ax_theta.axhline(ib.OPTIMAL_THETA, color="k", ls=":", lw=1, label="theta* = -1/6")
    ax_theta.set_yscale("symlog", linthresh=1.0)
    ax_theta.set(
        xlabel="iteration", ylabel="theta", title="theta (symlog scale)", ylim=(-1.0, None)
    )
    ax_loss.set(
        xlabel="iteration",
        ylabel="evaluation loss (500 steps)",
        yscale="log",
        title="evaluation loss",
    )
    ax_theta.legend(fontsize=8)
    return fig


if __name__ == "__main__":
    cli(main)
