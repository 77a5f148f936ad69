"""evopes CMAES against pycma: evaluations to reach f < 1e-8.

Setups of REFERENCE section 8 (pycma 4.5, default options): sphere and
ellipsoid (condition 1e6, f = sum_i 10^(6 (i - 1) / (n - 1)) x_i^2) from
x0 = 3 * ones with sigma0 = 1, and Rosenbrock from x0 = 0 with sigma0 = 0.5, at
n = 10 and 40. Both libraries use their defaults (lambda = 4 + floor(3 ln n));
the count is lambda times the generation in which a member first reaches
f < 1e-8. Rows hold the medians over the seeds. evopes runs all seeds of one
setup in one jitted, vmapped ``lax.while_loop``; pycma runs its ask/tell loop.

Quick mode: n = 10 for all three functions (5 seeds), n = 40 for sphere and
ellipsoid with 2 seeds (pycma needs minutes for the n = 40 ellipsoid).
"""

from __future__ import annotations

import statistics
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from evopes.bench.common import cli, save_figure, write_results
from evopes.strategies.cma_es import CMAES, default_population_size

TARGET = 1e-8
#: REFERENCE section 8: pycma 4.5 medians of 5 seeds.
REFERENCE_EVALS = {("sphere", 10): 1520, ("sphere", 40): 5325, ("ellipsoid", 10): 4160,
                   ("ellipsoid", 40): 48630, ("rosenbrock", 10): 4840}
#: (x0 value, sigma0) per function.
STARTS = {"sphere": (3.0, 1.0), "ellipsoid": (3.0, 1.0), "rosenbrock": (0.0, 0.5)}


# -- test functions, vectorised over the leading axis (JAX or NumPy arrays) --------------
def sphere(x, xp=jnp):
    return xp.sum(x**2, axis=-1)


def ellipsoid(x, xp=jnp):
    n = x.shape[-1]
    return xp.sum(10.0 ** (6 * xp.arange(n) / (n - 1)) * x**2, axis=-1)


def rosenbrock(x, xp=jnp):
    head, tail = x[..., :-1], x[..., 1:]
    return xp.sum(100 * (tail - head**2) ** 2 + (1 - head) ** 2, axis=-1)


FUNCTIONS = {"sphere": sphere, "ellipsoid": ellipsoid, "rosenbrock": rosenbrock}


# -- evopes ---------------------------------------------------------------------------
def evopes_evaluations(name: str, dim: int, seeds: list[int], max_generations: int):
    """Evaluations to f < TARGET for each seed (None if not within max_generations)."""
    function = FUNCTIONS[name]
    x0, sigma0 = STARTS[name]
    es = CMAES(solution=jnp.zeros(dim))
    params = es.default_params.replace(std_init=jnp.float32(sigma0))

    def run(key):
        state = es.init(key, jnp.full(dim, x0, jnp.float32), params)

        def running(carry):
            state, _, generations = carry
            return (state.best_fitness >= TARGET) & (generations < max_generations)

        def generation(carry):
            state, key, generations = carry
            key, ask_key, tell_key = jax.random.split(key, 3)
            population, state = es.ask(ask_key, state, params)
            state, _ = es.tell(tell_key, population, function(population), state, params)
            return state, key, generations + 1

        state, _, generations = jax.lax.while_loop(running, generation, (state, key, 0))
        return generations, state.best_fitness

    keys = jnp.stack([jax.random.key(seed) for seed in seeds])
    generations, best = jax.device_get(jax.jit(jax.vmap(run))(keys))
    return [int(g) * es.population_size if b < TARGET else None
            for g, b in zip(generations, best, strict=True)]


# -- pycma ----------------------------------------------------------------------------
def pycma_evaluations(name: str, dim: int, seeds: list[int], max_evaluations: int):
    import cma

    function = FUNCTIONS[name]
    x0, sigma0 = STARTS[name]
    counts = []
    for seed in seeds:
        es = cma.CMAEvolutionStrategy(
            np.full(dim, x0), sigma0,
            {"seed": seed + 1, "verbose": -9, "ftarget": TARGET, "maxfevals": max_evaluations},
        )
        count = None
        while not es.stop():
            solutions = es.ask()
            fitness = [float(function(np.asarray(x), np)) for x in solutions]
            es.tell(solutions, fitness)
            if min(fitness) < TARGET:
                count = es.countevals
                break
        counts.append(count)
    return counts


def median(counts) -> float | None:
    values = [np.inf if c is None else c for c in counts]
    value = statistics.median(values)
    return None if not np.isfinite(value) else float(value)


def main(quick: bool, seed: int, out_dir: Path) -> list[dict]:
    setups = [(name, 10, 5) for name in FUNCTIONS]
    if quick:
        setups += [("sphere", 40, 2), ("ellipsoid", 40, 2)]
    else:
        setups += [(name, 40, 5) for name in FUNCTIONS]
    rows, raw = [], {}
    for name, dim, num_seeds in setups:
        seeds = [seed + index for index in range(num_seeds)]
        max_generations = 300 * dim if name != "sphere" else 40 * dim
        start = time.perf_counter()
        ours = evopes_evaluations(name, dim, seeds, max_generations)
        ours_seconds = time.perf_counter() - start
        start = time.perf_counter()
        budget = default_population_size(dim) * max_generations
        theirs = pycma_evaluations(name, dim, seeds, max_evaluations=budget)
        theirs_seconds = time.perf_counter() - start
        ours_median, theirs_median = median(ours), median(theirs)
        rows.append({
            "function": name,
            "dim": dim,
            "seeds": num_seeds,
            "evopes_evals": ours_median,
            "pycma_evals": theirs_median,
            "ratio": None if None in (ours_median, theirs_median) else ours_median / theirs_median,
            "reference_pycma_evals": REFERENCE_EVALS.get((name, dim)),
            "evopes_seconds": round(ours_seconds, 2),
            "pycma_seconds": round(theirs_seconds, 2),
        })
        raw[f"{name}-{dim}"] = {"evopes": ours, "pycma": theirs}
        print(rows[-1], flush=True)
    write_results("cma-vs-pycma", rows, out_dir, quick=quick, seed=seed,
                  extra={"target": TARGET, "evaluations_per_seed": raw})
    _plot(rows, out_dir)
    return rows


def _plot(rows, out_dir):
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 3.8))
    labels = [f"{row['function']}\nn={row['dim']}" for row in rows]
    positions = np.arange(len(rows))
    ours = [row["evopes_evals"] or 0 for row in rows]
    theirs = [row["pycma_evals"] or 0 for row in rows]
    ax.bar(positions - 0.2, ours, width=0.4, label="evopes CMAES")
    ax.bar(positions + 0.2, theirs, width=0.4, label="pycma")
    ax.set_xticks(positions, labels)
    ax.set_yscale("log")
    ax.set_ylabel("median evaluations to f < 1e-8")
    ax.set_title("CMA-ES: evopes vs pycma (lower is better)")
    ax.legend()
    save_figure(fig, "cma-vs-pycma", out_dir)


if __name__ == "__main__":
    cli(main)
