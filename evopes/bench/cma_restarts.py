"""IPOP and BIPOP CMA-ES on Rastrigin n = 10 against pycma's BIPOP, on the same budget.

f(x) = 10 n + sum_i (x_i^2 - 10 cos(2 pi x_i)), global minimum 0 at x = 0 and a
local minimum near every integer point. Every run (every restart) starts from
x0 ~ U[-4, 4]^n with sigma0 = 2 (the BBOB convention for CMA-ES), and the
budget is 300,000 evaluations. The count is the number of evaluations until
f < 1e-8 is first reached (per generation); a seed that fails counts as
infinite in the median. pycma runs ``cma.fmin(f, x0, 2, ..., restarts=9,
bipop=True)`` with a callable x0.

evopes evaluates Rastrigin in float32 as sum(x^2 + 20 sin(pi x)^2), the same
function written without the cancellation of 10 n - 10 sum cos(...), which
would otherwise leave float32 an absolute error of ~1e-5 near the optimum.

The requirement: evopes' median within 2x of pycma's BIPOP median.
"""

from __future__ import annotations

import functools
import statistics
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from evopes.bench.common import cli, save_figure, write_results
from evopes.strategies.restarts import BIPOP, IPOP

DIM = 10
TARGET = 1e-8
BUDGET = 300_000
STD_INIT = 2.0


def rastrigin(population, key):
    del key
    return jnp.sum(population**2 + 20 * jnp.sin(jnp.pi * population) ** 2, axis=-1)


def uniform_start(key):
    return jax.random.uniform(key, (DIM,), minval=-4.0, maxval=4.0)


def evopes_evaluations(schedule, seeds):
    counts, runs = [], []
    for seed in seeds:
        result = schedule(solution=jnp.zeros(DIM)).run(
            jax.random.key(seed), rastrigin, uniform_start, std_init=STD_INIT,
            max_evaluations=BUDGET, target_fitness=TARGET,
        )
        counts.append(result.evaluations_to_target)
        runs.append(len(result.runs))
    return counts, runs


def pycma_evaluations(seeds):
    import cma

    def f(x):
        return float(10 * len(x) + np.sum(x**2 - 10 * np.cos(2 * np.pi * x)))

    counts = []
    for seed in seeds:
        start = functools.partial(np.random.default_rng(seed).uniform, -4, 4, DIM)
        result = cma.fmin(
            f, start, STD_INIT,
            {"seed": seed + 1, "verbose": -9, "ftarget": TARGET, "maxfevals": BUDGET},
            restarts=9, bipop=True,
        )
        best, evaluations_at_best = result[1], result[2]
        counts.append(int(evaluations_at_best) if best < TARGET else None)
    return counts


def median(counts) -> float | None:
    value = statistics.median([np.inf if c is None else c for c in counts])
    return None if not np.isfinite(value) else float(value)


def main(quick: bool, seed: int, out_dir: Path) -> list[dict]:
    seeds = [seed + index for index in range(5 if quick else 11)]
    start = time.perf_counter()
    pycma = pycma_evaluations(seeds)
    pycma_seconds = time.perf_counter() - start
    rows, raw = [], {"pycma_bipop": pycma}
    for schedule in (IPOP, BIPOP):
        start = time.perf_counter()
        counts, runs = evopes_evaluations(schedule, seeds)
        seconds = time.perf_counter() - start
        ours, theirs = median(counts), median(pycma)
        raw[f"evopes_{schedule.__name__.lower()}"] = counts
        rows.append({
            "function": "rastrigin",
            "dim": DIM,
            "evopes_method": schedule.__name__,
            "evopes_evals": ours,
            "pycma_evals": theirs,
            "ratio": None if None in (ours, theirs) else ours / theirs,
            "evopes_successes": sum(c is not None for c in counts),
            "pycma_successes": sum(c is not None for c in pycma),
            "seeds": len(seeds),
            "evopes_median_runs": statistics.median(runs),
            "evopes_seconds": round(seconds, 2),
            "pycma_seconds": round(pycma_seconds, 2),
        })
        print(rows[-1], flush=True)
    write_results("cma-restarts", rows, out_dir, quick=quick, seed=seed,
                  extra={"budget": BUDGET, "target": TARGET, "evaluations_per_seed": raw})
    _plot(raw, out_dir)
    return rows


def _plot(raw, out_dir):
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.6))
    labels = {"evopes_ipop": "evopes IPOP", "evopes_bipop": "evopes BIPOP",
              "pycma_bipop": "pycma BIPOP"}
    for position, name in enumerate(labels):
        counts = raw[name]
        values = [BUDGET if c is None else c for c in counts]
        jitter = np.linspace(-0.15, 0.15, len(values))
        ax.scatter(position + jitter, values, s=18, alpha=0.8)
        ax.hlines(median(counts) or BUDGET, position - 0.3, position + 0.3, color="black")
    ax.axhline(BUDGET, color="grey", linestyle=":", label="budget (failures drawn here)")
    ax.set_xticks(range(len(labels)), list(labels.values()))
    ax.set_yscale("log")
    ax.set_ylabel("evaluations to f < 1e-8")
    ax.set_title("Rastrigin n = 10 with restarts (bars: medians)")
    ax.legend(loc="lower right", fontsize=8)
    save_figure(fig, "cma-restarts", out_dir)


if __name__ == "__main__":
    cli(main)
