"""Per-generation time of ask + tell, evopes against evosax, in one process.

Both libraries run the same work: the same population size, dimension,
initial mean, noise scale and optimizer, a sphere fitness, and K generations
inside one jitted ``lax.scan`` (time / K is reported). The two are timed in
alternation so that load on a shared machine hits both alike.

Rows: ``{config, evopes_s, evosax_s, ratio}`` with ``ratio = evopes_s / evosax_s``
(below 1: evopes is faster). A second table, ``compile_rows``, holds the time
to trace and compile one jitted ask + tell: ``{strategy, evopes_compile_s,
evosax_compile_s, ratio}``.

OpenES runs twice: with its default noise table and with Gaussian noise
regenerated in ``tell`` (two draws per generation against evosax's one).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import jax
import jax.numpy as jnp
import matplotlib.pyplot as plt
import optax

import evopes
from evopes.bench.common import (
    block,
    cli,
    compile_seconds,
    save_figure,
    time_alternating,
    write_results,
)
from evopes.strategies.open_es import OpenES

NAME = "speed_classic"
STD = 0.1
LEARNING_RATE = 1e-2


@dataclass
class Config:
    """One comparison: how to build each library's strategy, and the scan length."""

    name: str
    num_dims: int
    population_size: int
    generations: int  # K generations per timed call
    make_evopes: Callable[[int, int], object] | None
    make_evosax: Callable[[int, int], object]


def sphere(population: jax.Array) -> jax.Array:
    return jnp.sum(population**2, axis=-1)


# -- strategy factories ------------------------------------------------------------
def _evopes_class(name: str):
    """An evopes strategy class, or None while it is not written yet."""
    module = {"CMAES": "cma_es", "SepCMAES": "sep_cma_es"}[name]
    try:
        return getattr(importlib.import_module(f"evopes.strategies.{module}"), name)
    except (ImportError, AttributeError):
        return None


def _evopes_cma(num_dims, population_size):
    return _evopes_class("CMAES")(population_size=population_size, solution=jnp.zeros(num_dims))


def _evopes_sep_cma(num_dims, population_size):
    return _evopes_class("SepCMAES")(population_size=population_size, solution=jnp.zeros(num_dims))


def _evopes_open_es(noise):
    def make(num_dims, population_size):
        return OpenES(
            population_size, jnp.zeros(num_dims), optimizer=optax.adam(LEARNING_RATE), noise=noise
        )

    return make


def _evosax_cma(num_dims, population_size):
    from evosax.algorithms import CMA_ES

    return CMA_ES(population_size=population_size, solution=jnp.zeros(num_dims))


def _evosax_sep_cma(num_dims, population_size):
    from evosax.algorithms import Sep_CMA_ES

    return Sep_CMA_ES(population_size=population_size, solution=jnp.zeros(num_dims))


def _evosax_open_es(num_dims, population_size):
    from evosax.algorithms import Open_ES

    return Open_ES(
        population_size=population_size,
        solution=jnp.zeros(num_dims),
        optimizer=optax.adam(LEARNING_RATE),
        std_schedule=optax.constant_schedule(STD),
    )


def _params(strategy):
    params = strategy.default_params
    if hasattr(params, "std_init"):
        params = params.replace(std_init=jnp.asarray(STD, jnp.float32))
    return params


# -- timing ---------------------------------------------------------------------
def _step(strategy, params):
    """One generation: ask, evaluate the sphere, tell."""

    def step(state, key):
        ask_key, tell_key = jax.random.split(key)
        population, state = strategy.ask(ask_key, state, params)
        fitness = sphere(population)
        state, _ = strategy.tell(tell_key, population, fitness, state, params)
        return state

    return step


def _runner(strategy, num_dims, generations, seed):
    """(jitted K-generation scan, initial state)."""
    params = _params(strategy)
    state = strategy.init(jax.random.key(seed), jnp.full((num_dims,), 0.5), params)
    step = _step(strategy, params)

    @jax.jit
    def run(state, key):
        return jax.lax.scan(
            lambda s, k: (step(s, k), None), state, jax.random.split(key, generations)
        )[0]

    return run, block(state)


def _first_step(make, num_dims, population_size, seed):
    """A maker for ``compile_seconds``: one ask + tell of a freshly built strategy."""

    def build():
        strategy = make(num_dims, population_size)
        params = _params(strategy)
        state = strategy.init(jax.random.key(seed), jnp.full((num_dims,), 0.5), params)
        return _step(strategy, params), (state, jax.random.key(seed))

    return build


def _configs(quick: bool) -> list[Config]:
    table, gaussian = evopes.NoiseTable(), evopes.GaussianNoise()
    configs = [
        Config("CMAES d=100", 100, 64, 200, _evopes_cma, _evosax_cma),
        Config("CMAES d=1000", 1000, 64, 10, _evopes_cma, _evosax_cma),
    ]
    if not quick:
        configs.append(Config("CMAES d=2000", 2000, 64, 4, _evopes_cma, _evosax_cma))
    configs += [
        Config("SepCMAES d=1e5", 100_000, 64, 10, _evopes_sep_cma, _evosax_sep_cma),
        Config(
            "OpenES d=1e5 (noise table)", 100_000, 256, 5, _evopes_open_es(table), _evosax_open_es
        ),
        Config(
            "OpenES d=1e5 (gaussian)", 100_000, 256, 5, _evopes_open_es(gaussian), _evosax_open_es
        ),
    ]
    if not quick:
        configs += [
            Config(
                "OpenES d=1e6 (noise table)",
                1_000_000,
                256,
                2,
                _evopes_open_es(table),
                _evosax_open_es,
            ),
            Config(
                "OpenES d=1e6 (gaussian)",
                1_000_000,
                256,
                2,
                _evopes_open_es(gaussian),
                _evosax_open_es,
            ),
        ]
    return configs


def _available(config: Config) -> bool:
    needs = {_evopes_cma: "CMAES", _evopes_sep_cma: "SepCMAES"}.get(config.make_evopes)
    return needs is None or _evopes_class(needs) is not None


def main(quick: bool, seed: int, out_dir: Path) -> list[dict]:
    repeats = 3 if quick else 5
    rows, skipped = [], []
    for config in _configs(quick):
        if not _available(config):
            print(f"skipping {config.name}: the evopes strategy is not available")
            skipped.append(config.name)
            continue
        runs = [
            _runner(
                make(config.num_dims, config.population_size),
                config.num_dims,
                config.generations,
                seed,
            )
            for make in (config.make_evopes, config.make_evosax)
        ]
        evopes_s, evosax_s = (t / config.generations for t in time_alternating(runs, repeats))
        rows.append(
            {
                "config": config.name,
                "evopes_s": evopes_s,
                "evosax_s": evosax_s,
                "ratio": evopes_s / evosax_s,
            }
        )
        print(rows[-1])
        del runs

    compile_rows = []
    compile_configs = [
        ("CMAES d=100", _evopes_cma, _evosax_cma, 100, 64),
        ("OpenES d=1e5", _evopes_open_es(evopes.NoiseTable()), _evosax_open_es, 100_000, 256),
    ]
    for name, make_evopes, make_evosax, num_dims, population_size in compile_configs:
        if make_evopes is _evopes_cma and _evopes_class("CMAES") is None:
            skipped.append(f"compile {name}")
            continue
        makers = [
            _first_step(make, num_dims, population_size, seed)
            for make in (make_evopes, make_evosax)
        ]
        evopes_c, evosax_c = compile_seconds(makers, repeats)
        compile_rows.append(
            {
                "strategy": name,
                "evopes_compile_s": evopes_c,
                "evosax_compile_s": evosax_c,
                "ratio": evopes_c / evosax_c,
            }
        )
        print(compile_rows[-1])

    write_results(
        NAME,
        rows,
        out_dir,
        quick=quick,
        seed=seed,
        extra={"compile_rows": compile_rows, "skipped": skipped},
    )
    save_figure(_plot(rows, compile_rows), NAME, out_dir)
    return rows


def _plot(rows, compile_rows):
    fig, (ax_time, ax_compile) = plt.subplots(
        1,
        2,
        figsize=(12, 4.5),
        gridspec_kw={"width_ratios": [max(len(rows), 1), max(len(compile_rows), 1)]},
    )
    width = 0.38
    for ax, records, label_key, keys, title in [
        (ax_time, rows, "config", ("evopes_s", "evosax_s"), "seconds per generation (ask + tell)"),
        (
            ax_compile,
            compile_rows,
            "strategy",
            ("evopes_compile_s", "evosax_compile_s"),
            "compile time of one ask + tell (s)",
        ),
    ]:
        positions = range(len(records))
        for offset, key, colour, name in [
            (-width / 2, keys[0], "tab:blue", "evopes"),
            (width / 2, keys[1], "tab:grey", "evosax"),
        ]:
            ax.bar(
                [p + offset for p in positions],
                [r[key] for r in records],
                width,
                label=name,
                color=colour,
            )
        for p, record in zip(positions, records, strict=True):
            ax.annotate(
                f"x{record[keys[0]] / record[keys[1]]:.2f}",
                (p, max(record[keys[0]], record[keys[1]])),
                ha="center",
                va="bottom",
                fontsize=8,
            )
        ax.set_xticks(
            list(positions), [r[label_key] for r in records], rotation=25, ha="right", fontsize=8
        )
        if ax is ax_time:  # times span four orders of magnitude; compile times do not
            ax.set_yscale("log")
        ax.set_title(title, fontsize=10)
        ax.legend(fontsize=8)
    return fig


if __name__ == "__main__":
    cli(main)
