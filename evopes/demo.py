"""``python -m evopes demo``: the online estimators side by side, in about a minute.

1. Influence balancing (PES paper, section 5.1): truncated ES (TES) follows the
   wrong-signed truncated gradient away from the optimum theta* = -1/6, while
   PES, unbiased, converges to it.
2. Lorenz parameter learning (NRES paper, section 6.1): at the same number of
   sequential unroll steps, NRES (windows of W = 100 steps, step-unlocked)
   lowers the test loss far more than FullES (whole episodes of T = 2000 steps).

Each run shows a progress bar; a table summarises the results.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import optax

import evopes
from evopes.tasks import influence_balancing, lorenz
from evopes.tasks.training import episode_fitness


def _table(rows: list[dict]) -> str:
    columns = list(rows[0])
    cells = [[str(row[c]) for c in columns] for row in rows]
    widths = [max(len(c), *(len(r[i]) for r in cells)) for i, c in enumerate(columns)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(columns, widths, strict=True))]
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)) for r in cells]
    return "\n".join(lines)


def influence_balancing_rows(num_windows: int) -> list[dict]:
    """PES vs TES with the paper's settings: W = 1, 500 pairs, sigma 0.1, SGD lr 1e-4."""
    rows = []
    theta0 = influence_balancing.INITIAL_THETA
    for strategy_class in (evopes.PES, evopes.TES):
        es = strategy_class(
            population_size=1000,
            solution=theta0,
            truncation_length=1,
            horizon=None,  # the system never resets
            init_inner=influence_balancing.init_inner,
            optimizer=optax.sgd(1e-4),
        )
        params = es.default_params.replace(std=0.1)
        print(f"influence balancing, {strategy_class.__name__}:")
        result = evopes.run_online(
            es,
            theta0,
            jax.random.key(0),
            num_windows,
            step_fn=influence_balancing.step,
            params=params,
            chunk_size=max(num_windows // 10, 1),
        )
        theta = float(es.get_mean(result.state))
        rows.append(
            {
                "task": "influence balancing",
                "method": strategy_class.__name__,
                "sequential steps": int(result.history["sequential_steps"][-1]),
                "total steps": int(result.history["total_steps"][-1]),
                "theta": f"{theta:+.5f}",
                "loss": f"{float(influence_balancing.evaluate(jnp.array(theta))):.3g}",
                "target": "theta* = -0.16667",
            }
        )
    return rows


def lorenz_rows(sequential_budget: int) -> list[dict]:
    """NRES (200 pairs, W = 100, lr 1e-5) vs FullES (10 pairs, lr 3e-5), sigma 0.04."""
    T, W = lorenz.HORIZON, 100
    theta0 = lorenz.INITIAL_THETA
    rows = []

    nres = evopes.NRES(
        population_size=400,
        solution=theta0,
        truncation_length=W,
        horizon=T,
        init_inner=lorenz.init_inner,
        optimizer=optax.sgd(1e-5),
    )
    print("Lorenz, NRES:")
    result = evopes.run_online(
        nres,
        theta0,
        jax.random.key(1),
        sequential_budget // W,
        step_fn=lorenz.step,
        params=nres.default_params.replace(std=0.04),
        chunk_size=100,
    )
    rows.append(
        _lorenz_row(
            "NRES",
            nres.get_mean(result.state),
            result.history["sequential_steps"][-1],
            result.history["total_steps"][-1],
        )
    )

    full_es = evopes.FullES(20, theta0, optimizer=optax.sgd(3e-5))
    fitness = functools.partial(episode_fitness, lorenz.init_inner, lorenz.step, T)
    print("Lorenz, FullES:")
    num_generations = sequential_budget // T
    result = evopes.run(
        full_es,
        fitness,
        theta0,
        jax.random.key(1),
        num_generations,
        params=full_es.default_params.replace(std_init=0.04),
        chunk_size=max(num_generations // 10, 1),
    )
    rows.append(
        _lorenz_row(
            "FullES", full_es.get_mean(result.state), num_generations * T, num_generations * T * 20
        )
    )
    return rows


def _lorenz_row(method, theta, sequential_steps, total_steps) -> dict:
    return {
        "task": "Lorenz",
        "method": method,
        "sequential steps": int(sequential_steps),
        "total steps": int(total_steps),
        "theta": f"({float(theta[0]):.3f}, {float(theta[1]):.3f})",
        "loss": f"{float(lorenz.test_loss(theta)):.1f}",
        "target": f"test loss {float(lorenz.test_loss(lorenz.INITIAL_THETA)):.0f} at start; < 50",
    }


def run_demo(quick: bool = False) -> list[dict]:
    """Runs both comparisons and prints the table; returns its rows."""
    rows = influence_balancing_rows(num_windows=1000 if quick else 3000)
    rows += lorenz_rows(sequential_budget=40_000 if quick else 120_000)
    print()
    print(_table(rows))
    return rows
