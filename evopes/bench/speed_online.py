"""Online ES speed and memory: evopes against evosax and against the bare unroll.

Three loops run the same windows of the same system with the same particles,
each as one jitted ``lax.scan`` over ``K`` windows (time / K is reported):

* **evopes**: ``ask`` -> :func:`evopes.unroll` of ``W`` steps -> ``tell``
  (the strategy keeps the inner states, times and episode resets);
* **evosax** (``PersistentES`` / ``NoiseReuseES``): ``ask`` -> the same unroll
  -> ``tell`` with the window's mean loss per particle; the loop itself resets
  the inner states every ``T`` steps, since evosax keeps one global step
  counter and no inner states;
* **bare**: the same unroll with fixed parameters, no strategy at all.

All runs are lock-step (evosax cannot step-unlock), with ``W = 100``. The loops
are timed in alternation so that load on a shared machine hits them alike, and
each loop's time is the **minimum** over its repeats: a Lorenz window takes
about 0.1 ms, and on this shared machine the median of repeats moved by up to
50% between two measurements of the same bare loop, while interference only
ever adds time. A timed call runs 10 Lorenz episodes (200 windows).
Both user loops (evosax's and the bare one) reduce the window's losses with
:func:`evopes.mean_over_steps` (a product with ones) instead of
``jnp.mean(losses, axis=0)``, which XLA runs several times slower on CPU: a
slow reduction in those loops would inflate their times and flatter evopes'
ratio and overhead. The Lorenz step returns ``done = None`` (it never ends an
episode itself), so no per-step flags are recorded in any loop. Both strategy
loops split their window key with :func:`evopes.threefry.split` (the same keys
as ``jax.random.split``, whose rolled loop on CPU costs about as much as a
tenth of this window).

Rows ``{config, evopes_s, evosax_s, ratio, bare_s, overhead,
evopes_state_bytes, evosax_state_bytes}``: ``ratio = evopes_s / evosax_s``,
``overhead = evopes_s / bare_s`` (what the strategy adds to the user's own
unroll). State bytes are those of the strategy state (``jax.eval_shape`` of
``init``: no memory is allocated to count them); evopes' includes the
particles' inner states, which evosax leaves to the user; the ``d = 10^6``
rows count them at 1000 particles.

Configurations:

* Lorenz (``evopes.tasks.lorenz``): ``theta = (log a, log r)``, ``T = 2000``,
  PES and NRES with 200 pairs (100 with ``--quick``), sigma 0.04, SGD.
* NRES at ``d = 10^6``: a synthetic system whose inner state is four numbers
  ``x`` and a step counter; step ``s`` of a window reads the ``s``-th of ``W``
  blocks of ``theta`` (10,000 numbers), sums each quarter and drives
  ``x <- 0.9 x + 0.1 tanh(block sums)``; loss ``|x|^2``. Every parameter is read
  once per window, the cheapest system that uses all of ``theta``. Run with
  evopes' default Gaussian noise (regenerated in ``ask`` and ``tell`` from a
  key per pair) and with a shared noise table.

A second table, ``compile_rows``, holds the seconds to trace and compile the
first ``ask`` + ``tell`` (with the Lorenz window) of every online strategy,
against evosax's where it has one. A third, ``memory_rows``, holds the state
bytes of every evopes strategy (and its evosax counterpart) with 1000 members
at ``d = 1000`` and ``d = 10^6``, counted from shapes.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path

import jax
import jax.numpy as jnp
import matplotlib.pyplot as plt
import numpy as np
import optax

import evopes
from evopes import threefry
from evopes.bench.common import (
    block,
    cli,
    compile_seconds,
    save_figure,
    time_alternating,
    write_results,
)
from evopes.tasks import lorenz

NAME = "speed_online"
WINDOW = 100
STD = 0.04
LEARNING_RATE = 1e-5
BIG_DIMS = 1_000_000
BIG_HORIZON = 1000
STATE_PARTICLES = 1000  # particles at which the d = 10^6 state bytes are counted
LORENZ_EPISODES = 10  # episodes of T steps per timed call (200 windows, tens of ms)


# -- the systems --------------------------------------------------------------------
class Lorenz:
    name = "Lorenz"
    num_dims = 2
    horizon = lorenz.HORIZON
    init_inner = staticmethod(lorenz.init_inner)
    step = staticmethod(lorenz.step)

    @staticmethod
    def mean():
        return lorenz.INITIAL_THETA


class BlockDriven:
    """``d = 10^6`` parameters read block by block; four numbers of inner state."""

    name = "d=1e6"
    num_dims = BIG_DIMS
    horizon = BIG_HORIZON

    @staticmethod
    def mean():
        return jnp.zeros(BIG_DIMS, jnp.float32)

    @staticmethod
    def init_inner(key=None):
        return {"x": jnp.zeros(4, jnp.float32), "t": jnp.zeros((), jnp.int32)}

    @staticmethod
    def step(inner, theta, key=None):
        size = BIG_DIMS // WINDOW
        block_ = jax.lax.dynamic_slice(theta, ((inner["t"] % WINDOW) * size,), (size,))
        x = 0.9 * inner["x"] + 0.1 * jnp.tanh(block_.reshape(4, -1).sum(axis=1))
        return {"x": x, "t": inner["t"] + 1}, jnp.sum(x**2), jnp.array(False)


# -- the three loops ---------------------------------------------------------------
def _evopes_strategy(kind: str, system, population_size: int, noise=None, cls=None):
    """The benchmark's ``kind`` strategy on ``system``; ``cls`` replaces its class (a subclass)."""
    if cls is None:
        cls = {"TES": evopes.TES, "PES": evopes.PES, "GPES": evopes.GPES, "NRES": evopes.NRES}[kind]
    extra = {"noise_period": 2 * WINDOW} if kind == "GPES" else {}
    return cls(
        population_size=population_size,
        solution=jnp.zeros(system.num_dims, jnp.float32),
        truncation_length=WINDOW,
        horizon=system.horizon,
        init_inner=system.init_inner,
        optimizer=optax.sgd(LEARNING_RATE),
        step_unlocked=False,
        noise=noise or evopes.GaussianNoise(),
        **extra,
    )


def _evosax_strategy(kind: str, system, population_size: int):
    from evosax.algorithms import NoiseReuseES, PersistentES

    cls = {"PES": PersistentES, "NRES": NoiseReuseES}[kind]
    return cls(
        population_size=population_size,
        solution=jnp.zeros(system.num_dims, jnp.float32),
        optimizer=optax.sgd(LEARNING_RATE),
        std_schedule=optax.constant_schedule(STD),
    )


def _evopes_window(es, system):
    params = es.default_params.replace(std=jnp.float32(STD))

    def window(state, key):
        ask_key, unroll_key, tell_key = threefry.split(key, 3)
        population, state = es.ask(ask_key, state, params)
        inner, losses, dones = evopes.unroll(
            system.step, population, state.inner_state, unroll_key, WINDOW
        )
        state, _ = es.tell(
            tell_key, population, losses, state, params, inner_state=inner, dones=dones
        )
        return state

    def init(key):
        return es.init(key, system.mean(), params)

    return init, window


def _evosax_window(es, system):
    params = es.default_params.replace(T=system.horizon, K=WINDOW)
    population_size = es.population_size

    def window(carry, key):
        state, inner, time_ = carry
        ask_key, unroll_key, tell_key = threefry.split(key, 3)
        population, state = es.ask(ask_key, state, params)
        inner, losses, _ = evopes.unroll(system.step, population, inner, unroll_key, WINDOW)
        state, _ = es.tell(tell_key, population, evopes.mean_over_steps(losses), state, params)
        # evosax keeps no inner states: the loop restarts them at the horizon.
        time_ = time_ + WINDOW
        inner = jax.lax.cond(
            time_ >= system.horizon, lambda: _fresh(system, population_size), lambda: inner
        )
        return state, inner, jnp.where(time_ >= system.horizon, 0, time_)

    def init(key):
        return es.init(key, system.mean(), params), _fresh(system, population_size), jnp.int32(0)

    return init, window


def _bare_window(system, population_size):
    def window(carry, key):
        population, inner, total_loss = carry
        inner, losses, _ = evopes.unroll(system.step, population, inner, key, WINDOW)
        # The losses are used, as any loop would (else XLA drops their computation).
        return population, inner, total_loss + jnp.mean(evopes.mean_over_steps(losses))

    def init(key):
        population = jnp.broadcast_to(system.mean(), (population_size, system.num_dims))
        return population, _fresh(system, population_size), jnp.float32(0)

    return init, window


def _fresh(system, population_size):
    return jax.vmap(system.init_inner)(jax.random.split(jax.random.key(0), population_size))


def _scanned(init, window, num_windows, seed):
    """(jitted run of ``num_windows`` windows, initial carry)."""

    @jax.jit
    def run(carry, key):
        return jax.lax.scan(
            lambda c, k: (window(c, k), None), carry, jax.random.split(key, num_windows)
        )[0]

    return run, block(jax.jit(init)(jax.random.key(seed)))


def _time_loops(loops, num_windows: int, seed: int, repeats: int):
    """Each ``(init, window)`` loop scanned over ``num_windows``, timed in alternation.

    Returns the ``(run, carry)`` pairs and each loop's seconds per window: the
    minimum over ``repeats`` calls (interference on a shared machine only adds time).
    """
    runs = [_scanned(init, window, num_windows, seed) for init, window in loops]
    seconds = time_alternating(runs, repeats, statistic=min)
    return runs, [t / num_windows for t in seconds]


def _state_bytes(init: Callable) -> int:
    shapes = jax.eval_shape(init, jax.random.key(0))
    return int(
        sum(math.prod(x.shape) * x.dtype.itemsize for x in jax.tree_util.tree_leaves(shapes))
    )


# -- compile time ---------------------------------------------------------------------
def _first_window(make_loop, make_strategy, kind, population_size):
    """A maker for ``compile_seconds``: one Lorenz window (ask + unroll + tell), fresh strategy."""

    def build():
        init, window = make_loop(make_strategy(kind, Lorenz, population_size), Lorenz)
        return window, (jax.jit(init)(jax.random.key(0)), jax.random.key(1))

    return build


def compile_rows(population_size: int, repeats: int) -> list[dict]:
    makers = {}
    for kind in ("TES", "PES", "GPES", "NRES"):
        makers[("evopes", kind)] = _first_window(
            _evopes_window, _evopes_strategy, kind, population_size
        )
    for kind in ("PES", "NRES"):
        makers[("evosax", kind)] = _first_window(
            _evosax_window, _evosax_strategy, kind, population_size
        )
    seconds = dict(zip(makers, compile_seconds(list(makers.values()), repeats), strict=True))
    rows = []
    for kind in ("TES", "PES", "GPES", "NRES"):
        evopes_s = seconds[("evopes", kind)]
        evosax_s = seconds.get(("evosax", kind))
        rows.append(
            {
                "strategy": kind,
                "evopes_compile_s": evopes_s,
                "evosax_compile_s": evosax_s,
                "ratio": evopes_s / evosax_s if evosax_s else None,
            }
        )
    return rows


# -- memory of every strategy's state ------------------------------------------------------
MEMORY_POPULATION = 1000
MEMORY_DIMS = (1_000, 1_000_000)


def _tiny_inner(key=None):
    return jnp.zeros(4, jnp.float32)


def memory_rows() -> list[dict]:
    """Bytes of every strategy's state at ``MEMORY_POPULATION`` members, from ``jax.eval_shape``.

    ``model`` names the term that dominates; online strategies carry an
    inner state of 4 floats per particle.
    """
    from evosax import algorithms as evosax

    from evopes.strategies.cma_es import CMAES
    from evopes.strategies.sep_cma_es import SepCMAES

    n = MEMORY_POPULATION

    def online(cls, d, **extra):
        return cls(
            population_size=n,
            solution=jnp.zeros(d),
            truncation_length=WINDOW,
            horizon=10 * WINDOW,
            init_inner=_tiny_inner,
            **extra,
        )

    evopes_cases = {
        "CMAES": (
            "3 d^2 floats (C, B, C^1/2)",
            lambda d: CMAES(population_size=n, solution=jnp.zeros(d)),
        ),
        "SepCMAES": ("O(d) floats", lambda d: SepCMAES(population_size=n, solution=jnp.zeros(d))),
        "OpenES (noise table)": (
            "table 2^24 floats + O(d) + O(P) ids",
            lambda d: evopes.OpenES(n, jnp.zeros(d), noise=evopes.NoiseTable()),
        ),
        "OpenES (gaussian)": (
            "O(d) + O(P) ids",
            lambda d: evopes.OpenES(n, jnp.zeros(d), noise=evopes.GaussianNoise()),
        ),
        "FullES": ("O(d) + O(P) ids", lambda d: evopes.FullES(n, jnp.zeros(d))),
        "TES": ("O(d) + O(P) ids + inner", lambda d: online(evopes.TES, d)),
        "PES": ("2P d floats (accumulator)", lambda d: online(evopes.PES, d)),
        "GPES": (
            "2P d floats (accumulator)",
            lambda d: online(evopes.GPES, d, noise_period=2 * WINDOW),
        ),
        "NRES": ("O(d) + O(P) ids + inner", lambda d: online(evopes.NRES, d)),
    }
    evosax_cases = {
        "CMAES": lambda d: evosax.CMA_ES(population_size=n, solution=jnp.zeros(d)),
        "SepCMAES": lambda d: evosax.Sep_CMA_ES(population_size=n, solution=jnp.zeros(d)),
        "OpenES (noise table)": lambda d: evosax.Open_ES(population_size=n, solution=jnp.zeros(d)),
        "OpenES (gaussian)": lambda d: evosax.Open_ES(population_size=n, solution=jnp.zeros(d)),
        "PES": lambda d: evosax.PersistentES(population_size=n, solution=jnp.zeros(d)),
        "NRES": lambda d: evosax.NoiseReuseES(population_size=n, solution=jnp.zeros(d)),
    }
    rows = []
    for d in MEMORY_DIMS:
        for name, (model, make) in evopes_cases.items():
            es = make(d)
            params = es.default_params
            evopes_bytes = _state_bytes(
                lambda key, es=es, d=d, p=params: es.init(key, jnp.zeros(d), p)
            )
            evosax_bytes = None
            if name in evosax_cases:
                other = evosax_cases[name](d)
                evosax_bytes = _state_bytes(
                    lambda key, other=other, d=d: other.init(
                        key, jnp.zeros(d), other.default_params
                    )
                )
            rows.append(
                {
                    "strategy": name,
                    "num_dims": d,
                    "population": n,
                    "model": model,
                    "evopes_state_bytes": evopes_bytes,
                    "evosax_state_bytes": evosax_bytes,
                }
            )
    return rows


# -- main -------------------------------------------------------------------------------
def _configs(quick: bool):
    pairs = 100 if quick else 200
    big = 8 if quick else 16
    table = evopes.NoiseTable()
    return [
        # name, strategy kind, system, particles, windows per timed call, noise
        (
            f"PES Lorenz P={pairs} W={WINDOW}",
            "PES",
            Lorenz,
            2 * pairs,
            LORENZ_EPISODES * Lorenz.horizon // WINDOW,
            None,
        ),
        (
            f"NRES Lorenz P={pairs} W={WINDOW}",
            "NRES",
            Lorenz,
            2 * pairs,
            LORENZ_EPISODES * Lorenz.horizon // WINDOW,
            None,
        ),
        (f"NRES d=1e6 {big} particles (gaussian)", "NRES", BlockDriven, big, 2, None),
        (f"NRES d=1e6 {big} particles (noise table)", "NRES", BlockDriven, big, 2, table),
    ]


def main(quick: bool, seed: int, out_dir: Path) -> list[dict]:
    repeats = 7 if quick else 21
    rows = []
    for name, kind, system, particles, num_windows, noise in _configs(quick):
        loops = [
            _evopes_window(_evopes_strategy(kind, system, particles, noise), system),
            _evosax_window(_evosax_strategy(kind, system, particles), system),
            _bare_window(system, particles),
        ]
        runs, (evopes_s, evosax_s, bare_s) = _time_loops(loops, num_windows, seed, repeats)
        del runs  # the d = 10^6 loops hold large carries
        if system is BlockDriven:  # memory at 1000 particles, counted without allocating
            evopes_init = _evopes_window(
                _evopes_strategy(kind, system, STATE_PARTICLES, noise), system
            )[0]
            evosax_init = _evosax_window(_evosax_strategy(kind, system, STATE_PARTICLES), system)[0]
        else:
            evopes_init, evosax_init = loops[0][0], loops[1][0]
        evosax_bytes = _state_bytes(
            lambda key, init=evosax_init: init(key)[0]
        )  # without the loop's inner states
        rows.append(
            {
                "config": name,
                "evopes_s": evopes_s,
                "evosax_s": evosax_s,
                "ratio": evopes_s / evosax_s,
                "bare_s": bare_s,
                "overhead": evopes_s / bare_s,
                "evopes_state_bytes": _state_bytes(evopes_init),
                "evosax_state_bytes": evosax_bytes,
            }
        )
        print(rows[-1], flush=True)

    compiles = compile_rows(population_size=2 * (100 if quick else 200), repeats=1 if quick else 3)
    memory = memory_rows()
    write_results(
        NAME,
        rows,
        out_dir,
        quick=quick,
        seed=seed,
        extra={
            "window": WINDOW,
            "compile_rows": compiles,
            "memory_rows": memory,
            "state_particles_d1e6": STATE_PARTICLES,
        },
    )
    _plot(rows, compiles, out_dir)
    return rows


def _plot(rows, compiles, out_dir):
    fig, (speed, memory, compile_ax) = plt.subplots(1, 3, figsize=(16, 4.8))
    labels = [row["config"].replace(" particles", "").replace(f" W={WINDOW}", "") for row in rows]
    positions = np.arange(len(rows))
    width = 0.27
    for offset, key, label in [
        (-width, "evopes_s", "evopes"),
        (0, "evosax_s", "evosax"),
        (width, "bare_s", "bare unroll"),
    ]:
        speed.bar(positions + offset, [row[key] for row in rows], width, label=label)
    speed.set_yscale("log")
    speed.set_ylabel("seconds per window (W = 100)")
    speed.set_xticks(positions, labels, rotation=20, ha="right", fontsize=8)
    speed.legend()
    speed.set_title("time per window")

    for offset, key, label in [
        (-width / 2, "evopes_state_bytes", "evopes"),
        (width / 2, "evosax_state_bytes", "evosax"),
    ]:
        memory.bar(positions + offset, [row[key] for row in rows], width, label=label)
    memory.set_yscale("log")
    memory.set_ylabel("strategy state bytes")
    memory.axhline(100e6, color="gray", linestyle="--", linewidth=1)
    memory.text(len(rows) - 0.5, 110e6, "100 MB", ha="right", fontsize=8)
    memory.set_xticks(positions, labels, rotation=20, ha="right", fontsize=8)
    memory.legend()
    memory.set_title("state memory (d = 1e6 rows at 1000 particles)")

    kinds = [row["strategy"] for row in compiles]
    kind_positions = np.arange(len(kinds))
    compile_ax.bar(
        kind_positions - width / 2,
        [row["evopes_compile_s"] for row in compiles],
        width,
        label="evopes",
    )
    compile_ax.bar(
        kind_positions + width / 2,
        [row["evosax_compile_s"] or 0.0 for row in compiles],
        width,
        label="evosax",
    )
    compile_ax.set_xticks(kind_positions, kinds)
    compile_ax.set_ylabel("seconds")
    compile_ax.set_title("compile time of the first ask + tell (Lorenz)")
    compile_ax.legend()
    save_figure(fig, NAME, out_dir)


if __name__ == "__main__":
    cli(main)
