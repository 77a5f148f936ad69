"""Strategies shared with evosax: evaluations to 1e-8 and time per generation, eager and jit.

For each pair (evopes class, evosax class) in :data:`PAIRS` whose evopes module
imports, and each of sphere, ellipsoid (condition 1e6) and Rosenbrock at
d = 10 and 40 (the functions and starts of ``cma-vs-pycma``: x0 = 3 * ones,
std 1 for sphere and ellipsoid; x0 = 0, std 0.5 for Rosenbrock):

* Evaluations to target: both libraries run the same loop, a jitted, vmapped
  (over seeds) ``lax.while_loop`` of ask, fitness, tell, from the same x0 and
  initial std with the same population size; the count is population size
  times the generation in which a member first has f < 1e-8, the median over
  the seeds, None when the median seed does not get there within the budget
  (:func:`max_generations`: 300 d generations).
* Time per generation, measured once per (strategy, d) on sphere and shown on
  each function's row: eager, a plain Python loop of ask, a jitted fitness
  and tell as in evosax's README, after a warm-up loop; and under ``jit``, one
  jitted ``lax.scan`` over the generations divided by their number. The two
  libraries' measurements alternate (:func:`evopes.bench.common.time_alternating`);
  ``evopes_s`` and ``evosax_s`` are the eager seconds per generation,
  ``evopes_jit_s`` and ``evosax_jit_s`` the jitted ones; ``eager_ratio`` and
  ``jit_ratio`` are evopes' time over evosax's.

Settings. evosax 0.3 has no default population size; both libraries get
lambda = 4 + floor(3 ln d) (evopes' and Hansen's default) for the
distribution strategies (CMA-ES, Sep-CMA-ES, LM-MA-ES, SNES, xNES, SimpleES)
and twice that, rounded to even, for the gradient-style ones (OpenES, PGPE,
ARS, PersistentES, NoiseReuseES). The distribution strategies keep each
library's defaults (their weights and learning rates are the papers'). The
gradient-style ones share one optimizer object, Adam with a learning rate
decaying geometrically from 0.3 by :data:`DECAY` per generation, and (except
PGPE, which adapts its std with the shared default std_lr = 0.1) the same
std decay: evosax's ``std_schedule`` is ``optax.exponential_decay`` and
evopes' ``std_decay`` multiplies by the same factor. Without decay a fixed
step cannot reach 1e-8. evopes' OpenES draws fresh Gaussian noise
(``GaussianNoise()``), as evosax's does. The online pairs run evosax's loop
with T = K = 1: every tell ends the "episode", so the accumulated noise is the
generation's own and a static function is a fair objective.

Quick mode: d = 10 only, 2 seeds, shorter timed runs.
"""

from __future__ import annotations

import importlib
import math
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax

from evopes.bench.cma_vs_pycma import FUNCTIONS, STARTS, TARGET
from evopes.bench.common import cli, save_figure, time_alternating, write_results

#: Per-generation factor of the gradient-style strategies' learning rate and std.
DECAY = 0.99
#: Initial learning rate of the gradient-style strategies (Adam).
LEARNING_RATE = 0.3


def lambda_default(dim: int) -> int:
    return 4 + int(math.floor(3 * math.log(dim)))


def lambda_gradient(dim: int) -> int:
    return 2 * lambda_default(dim)


def shared_optimizer() -> optax.GradientTransformation:
    return optax.adam(optax.exponential_decay(LEARNING_RATE, 1, DECAY))


def std_schedule(std: float):
    return optax.exponential_decay(std, 1, DECAY)


@dataclass(frozen=True)
class Pair:
    """One strategy in both libraries.

    ``evopes_kwargs(std)`` and ``evosax_kwargs(std)`` are the constructors'
    keywords beyond population size and solution; ``evopes_params`` and
    ``evosax_params`` set the initial std on each library's default params.
    """

    name: str
    evopes_path: str  # "module:Class"
    evosax_name: str
    population_size: Callable[[int], int] = lambda_default
    evopes_kwargs: Callable[[float], dict] = lambda std: {}
    evosax_kwargs: Callable[[float], dict] = lambda std: {}
    evopes_params: Callable = lambda params, std: params.replace(std_init=std)
    evosax_params: Callable = lambda params, std: params.replace(std_init=std)


def _decaying_std(params, std):
    return params.replace(std_init=std, std_decay=DECAY)


def _online_params(params, std):
    return params.replace(T=1, K=1)


def _gradient_evosax(std):
    return {"optimizer": shared_optimizer(), "std_schedule": std_schedule(std)}


PAIRS: tuple[Pair, ...] = (
    Pair("CMA_ES", "evopes.strategies.cma_es:CMA_ES", "CMA_ES"),
    Pair("Sep_CMA_ES", "evopes.strategies.sep_cma_es:Sep_CMA_ES", "Sep_CMA_ES"),
    Pair("LM_MA_ES", "evopes.strategies.lm_ma_es:LM_MA_ES", "LM_MA_ES"),
    Pair("SNES", "evopes.strategies.snes:SNES", "SNES"),
    Pair("xNES", "evopes.strategies.xnes:XNES", "xNES"),
    Pair("SimpleES", "evopes.strategies.simple_es:SimpleES", "SimpleES"),
    Pair(
        "Open_ES",
        "evopes.strategies.open_es:Open_ES",
        "Open_ES",
        lambda_gradient,
        # Open_ES takes evosax's constructor: the same arguments in both libraries.
        evopes_kwargs=_gradient_evosax,
        evosax_kwargs=_gradient_evosax,
        evosax_params=lambda params, std: params,
    ),
    Pair(
        "PGPE",
        "evopes.strategies.pgpe:PGPE",
        "PGPE",
        lambda_gradient,
        evopes_kwargs=lambda std: {"optimizer": shared_optimizer()},
        evosax_kwargs=lambda std: {"optimizer": shared_optimizer()},
    ),
    Pair(
        "ARS",
        "evopes.strategies.ars:ARS",
        "ARS",
        lambda_gradient,
        evopes_kwargs=lambda std: {"optimizer": shared_optimizer()},
        evosax_kwargs=_gradient_evosax,
        evopes_params=_decaying_std,
        evosax_params=lambda params, std: params,
    ),
    Pair(
        "PersistentES",
        "evopes.online.evosax_compat:PersistentES",
        "PersistentES",
        lambda_gradient,
        evopes_kwargs=_gradient_evosax,
        evosax_kwargs=_gradient_evosax,
        evopes_params=_online_params,
        evosax_params=_online_params,
    ),
    Pair(
        "NoiseReuseES",
        "evopes.online.evosax_compat:NoiseReuseES",
        "NoiseReuseES",
        lambda_gradient,
        evopes_kwargs=_gradient_evosax,
        evosax_kwargs=_gradient_evosax,
        evopes_params=_online_params,
        evosax_params=_online_params,
    ),
)


def evopes_class(pair: Pair):
    """The evopes class of ``pair``; ImportError/AttributeError when it is not there yet."""
    module, _, name = pair.evopes_path.partition(":")
    return getattr(importlib.import_module(module), name)


def available_pairs(names: list[str] | None = None) -> list[Pair]:
    """The pairs whose evopes class imports (printing the others)."""
    import evosax.algorithms

    pairs = []
    for pair in PAIRS:
        if names is not None and pair.name not in names:
            continue
        try:
            evopes_class(pair)
            getattr(evosax.algorithms, pair.evosax_name)
        except (ImportError, AttributeError) as error:
            print(f"skipping {pair.name}: {error}", flush=True)
            continue
        pairs.append(pair)
    return pairs


def build(pair: Pair, library: str, dim: int, std: float):
    """``(strategy, params)`` of ``pair`` in ``library`` ("evopes" or "evosax")."""
    solution = jnp.zeros(dim, jnp.float32)
    size = pair.population_size(dim)
    if library == "evopes":
        es = evopes_class(pair)(size, solution, **pair.evopes_kwargs(std))
        return es, pair.evopes_params(es.default_params, std)
    import evosax.algorithms

    es = getattr(evosax.algorithms, pair.evosax_name)(size, solution, **pair.evosax_kwargs(std))
    return es, pair.evosax_params(es.default_params, std)


def max_generations(function: str, dim: int) -> int:
    return 300 * dim


# -- evaluations to target -----------------------------------------------------------------
def evaluations(pair: Pair, library: str, function: str, dim: int, seeds: list[int]):
    """Evaluations to f < TARGET for each seed (None if not within the budget)."""
    fitness_fn = FUNCTIONS[function]
    x0, std = STARTS[function]
    es, params = build(pair, library, dim, std)
    budget = max_generations(function, dim)

    def run(key):
        key, init_key = jax.random.split(key)
        state = es.init(init_key, jnp.full(dim, x0, jnp.float32), params)

        def running(carry):
            _, _, generations, best = carry
            return (best >= TARGET) & (generations < budget)

        def generation(carry):
            state, key, generations, best = carry
            key, ask_key, tell_key = jax.random.split(key, 3)
            population, state = es.ask(ask_key, state, params)
            fitness = fitness_fn(population)
            state, _ = es.tell(tell_key, population, fitness, state, params)
            best = jnp.minimum(best, jnp.min(jnp.where(jnp.isnan(fitness), jnp.inf, fitness)))
            return state, key, generations + 1, best

        carry = (state, key, jnp.int32(0), jnp.float32(jnp.inf))
        _, _, generations, best = jax.lax.while_loop(running, generation, carry)
        return generations, best

    keys = jnp.stack([jax.random.key(seed) for seed in seeds])
    generations, best = jax.device_get(jax.jit(jax.vmap(run))(keys))
    return [
        int(g) * es.population_size if b < TARGET else None
        for g, b in zip(generations, best, strict=True)
    ]


def median(counts) -> float | None:
    value = statistics.median([np.inf if c is None else c for c in counts])
    return None if not np.isfinite(value) else float(value)


# -- time per generation -------------------------------------------------------------------
def _timed_runs(pair: Pair, dim: int, generations: int):
    """Per library: an eager run and a jitted run of ``generations`` generations, with carries."""
    x0, std = STARTS["sphere"]
    fitness_fn = jax.jit(FUNCTIONS["sphere"])
    eager, jitted = [], []
    for library in ("evopes", "evosax"):
        es, params = build(pair, library, dim, std)
        state = es.init(jax.random.key(0), jnp.full(dim, x0, jnp.float32), params)

        def eager_run(state, key, es=es, params=params):
            for _ in range(generations):  # evosax's README loop, no jit of the user's
                key, ask_key, tell_key = jax.random.split(key, 3)
                population, state = es.ask(ask_key, state, params)
                fitness = fitness_fn(population)
                state, _ = es.tell(tell_key, population, fitness, state, params)
            return state

        @jax.jit
        def jit_run(state, key, es=es, params=params):
            def generation(state, key):
                ask_key, tell_key = jax.random.split(key)
                population, state = es.ask(ask_key, state, params)
                state, _ = es.tell(
                    tell_key, population, FUNCTIONS["sphere"](population), state, params
                )
                return state, None

            return jax.lax.scan(generation, state, jax.random.split(key, generations))[0]

        eager.append((eager_run, state))
        jitted.append((jit_run, state))
    return eager, jitted


def time_per_generation(pair: Pair, dim: int, quick: bool) -> dict:
    """Seconds per generation, eager and jitted, evopes and evosax measured in alternation."""
    # Measuring is cheap next to compiling: even quick mode takes enough repeats
    # for the medians to be stable on a shared machine. A jitted run of 200
    # generations at d = 10 lasts a few milliseconds, about one scheduler slice,
    # so under load a run is either preempted or not: 9 repeats left the median
    # of either library at the mercy of a few preemptions (jit ratios of 1 to 3
    # for the same code); 31 keep it at the unpreempted time.
    eager_generations, jit_generations = (30, 200) if quick else (50, 500)
    repeats = 31
    eager, jitted = _timed_runs(pair, dim, eager_generations)
    evopes_s, evosax_s = (t / eager_generations for t in time_alternating(eager, repeats))
    eager, jitted = _timed_runs(pair, dim, jit_generations)
    evopes_jit_s, evosax_jit_s = (t / jit_generations for t in time_alternating(jitted, repeats))
    return {
        "evopes_s": evopes_s,
        "evosax_s": evosax_s,
        "eager_ratio": evopes_s / evosax_s,
        "evopes_jit_s": evopes_jit_s,
        "evosax_jit_s": evosax_jit_s,
        "jit_ratio": evopes_jit_s / evosax_jit_s,
    }


# -- rows ------------------------------------------------------------------------------------
def parity_row(pair: Pair, function: str, dim: int, seeds: list[int], timing: dict) -> dict:
    """One row: median evaluations to target of both libraries, with the pair's timing."""
    ours = evaluations(pair, "evopes", function, dim, seeds)
    theirs = evaluations(pair, "evosax", function, dim, seeds)
    ours_median, theirs_median = median(ours), median(theirs)
    return {
        "strategy": pair.name,
        "function": function,
        "dim": dim,
        "population_size": pair.population_size(dim),
        "evopes_evals": ours_median,
        "evosax_evals": theirs_median,
        "evals_ratio": (
            None if None in (ours_median, theirs_median) else ours_median / theirs_median
        ),
        **timing,
        "evopes_evals_per_seed": ours,
        "evosax_evals_per_seed": theirs,
    }


def main(quick: bool, seed: int, out_dir: Path, names: list[str] | None = None) -> list[dict]:
    dims = (10,) if quick else (10, 40)
    seeds = [seed + index for index in range(2 if quick else 5)]
    rows = []
    for pair in available_pairs(names):
        for dim in dims:
            start = time.perf_counter()
            timing = time_per_generation(pair, dim, quick)
            for function in FUNCTIONS:
                rows.append(parity_row(pair, function, dim, seeds, timing))
                row = rows[-1]
                print(
                    f"{pair.name} {function} d={dim}: evals {row['evopes_evals']} vs "
                    f"{row['evosax_evals']}, eager {row['eager_ratio']:.2f}, "
                    f"jit {row['jit_ratio']:.2f}",
                    flush=True,
                )
            print(f"  ({time.perf_counter() - start:.0f} s)", flush=True)
    table = [{k: v for k, v in row.items() if not k.endswith("_per_seed")} for row in rows]
    write_results(
        "evosax-parity",
        table,
        out_dir,
        quick=quick,
        seed=seed,
        extra={
            "convergence": convergence_rows(rows),
            "target": TARGET,
            "seeds": len(seeds),
            "decay": DECAY,
            "learning_rate": LEARNING_RATE,
            "evaluations_per_seed": {
                f"{r['strategy']}-{r['function']}-{r['dim']}": {
                    "evopes": r["evopes_evals_per_seed"],
                    "evosax": r["evosax_evals_per_seed"],
                }
                for r in rows
            },
        },
    )
    _plot(table, out_dir)
    return table


#: The strategies evopes added for evosax users (issue "find the strategies evosax
#: users reach for"), whose evaluations to target get a table of their own.
NEW_STRATEGIES = ("SimpleES", "SNES", "xNES", "PGPE", "ARS", "LM_MA_ES")


def convergence_rows(rows: list[dict]) -> list[dict]:
    """The new strategies' evaluations to target: medians and how many seeds got there."""
    return [
        {
            "strategy": row["strategy"],
            "function": row["function"],
            "dim": row["dim"],
            "seeds": len(row["evopes_evals_per_seed"]),
            "evopes_reached": sum(c is not None for c in row["evopes_evals_per_seed"]),
            "evosax_reached": sum(c is not None for c in row["evosax_evals_per_seed"]),
            "evopes_evals": row["evopes_evals"],
            "evosax_evals": row["evosax_evals"],
            "evals_ratio": row["evals_ratio"],
        }
        for row in rows
        if row["strategy"] in NEW_STRATEGIES
    ]


def _plot(rows, out_dir):
    import matplotlib.pyplot as plt

    fig, (speed, evals) = plt.subplots(1, 2, figsize=(12, 4.2))
    timed = {(row["strategy"], row["dim"]): row for row in rows}
    labels = [f"{name}\nd={dim}" for name, dim in timed]
    positions = np.arange(len(timed))
    speed.bar(positions - 0.2, [r["eager_ratio"] for r in timed.values()], 0.4, label="eager")
    speed.bar(positions + 0.2, [r["jit_ratio"] for r in timed.values()], 0.4, label="jit")
    speed.axhline(1.5, color="C0", ls="--", lw=0.8)
    speed.axhline(1.0, color="C1", ls="--", lw=0.8)
    speed.set_xticks(positions, labels, rotation=90, fontsize=7)
    speed.set_ylabel("time per generation, evopes / evosax")
    speed.set_title("speed (targets: eager 1.5, jit 1.0)")
    speed.legend()
    reached = [r for r in rows if r["evals_ratio"] is not None]
    markers = {"sphere": "o", "ellipsoid": "s", "rosenbrock": "^"}
    for function, marker in markers.items():
        subset = [r for r in reached if r["function"] == function]
        evals.scatter(
            [r["evosax_evals"] for r in subset],
            [r["evopes_evals"] for r in subset],
            marker=marker,
            label=function,
        )
        for r in subset:
            evals.annotate(
                f"{r['strategy']} {r['dim']}", (r["evosax_evals"], r["evopes_evals"]), fontsize=6
            )
    if reached:
        low = min(min(r["evosax_evals"], r["evopes_evals"]) for r in reached) / 1.5
        high = max(max(r["evosax_evals"], r["evopes_evals"]) for r in reached) * 1.5
        evals.plot([low, high], [low, high], "k-", lw=0.8)
        evals.plot([low, high], [1.2 * low, 1.2 * high], "k--", lw=0.8, label="1.2x")
        evals.set_xscale("log")
        evals.set_yscale("log")
    evals.set_xlabel("evosax: median evaluations to f < 1e-8")
    evals.set_ylabel("evopes: median evaluations to f < 1e-8")
    evals.set_title("evaluations to target (both reached)")
    evals.legend(fontsize=7)
    save_figure(fig, "evosax-parity", out_dir)


if __name__ == "__main__":
    cli(main)
