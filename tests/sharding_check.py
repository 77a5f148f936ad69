"""Sharded against unsharded runs of every strategy, on 8 host CPU devices.

Run by ``tests/test_sharding.py`` in ONE subprocess (the pytest process has
already initialised JAX with a single device)::

    XLA_FLAGS=--xla_force_host_platform_device_count=8 JAX_PLATFORMS=cpu \
        python tests/sharding_check.py

For every strategy it runs ``NUM_GENERATIONS`` steps of
:func:`evopes.sharding.sharded_step` on a one-device mesh and on the 8-device
mesh from the same key, and prints one JSON object with, per strategy:

* ``max_rel_diff``: largest ``|sharded - unsharded| / (1 + |unsharded|)`` over
  every float leaf of the final state;
* ``population_spec`` and ``shard_rows``: the partition spec of the population
  returned by :func:`evopes.sharding.sharded_ask`, and the rows each device holds;
* ``population_gathers``: all-gathers in the compiled 8-device step whose result
  holds more members than one device's shard (``(k, num_dims)`` with
  ``k > population_size / 8``);
* ``flops_ratio``: per-device flops of the compiled 8-device step over those
  of the one-device step, from XLA's cost analysis; 1/8 is a perfect split, 1
  means every device does all the work. (The cost analysis counts a loop body
  once, so work inside ``lax.scan``, such as the block loop of the antithetic
  strategies' ``tell``, is under-weighted.)

It also runs the example of ``docs/scaling.md`` and reports what it printed
(``docs_example``).
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import sys
from pathlib import Path

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402

import evopes  # noqa: E402
from evopes import sharding  # noqa: E402
from evopes.online.engine import OnlineES  # noqa: E402
from evopes.strategies.cma_es import CMAES  # noqa: E402
from evopes.strategies.full_es import FullES  # noqa: E402
from evopes.strategies.open_es import OpenES  # noqa: E402
from evopes.strategies.sep_cma_es import SepCMAES  # noqa: E402

NUM_DEVICES = 8
NUM_GENERATIONS = 20
POPULATION_SIZE = 16
#: Two leaves, 1000 numbers: big enough that noise generation dominates a step,
#: so the flops ratio shows whether the work is divided.
SOLUTION = {"w": jnp.zeros((40, 24)), "b": jnp.zeros(40)}
#: CMA-ES gets 10 numbers. At n = 1000 its first eigendecomposition (generation
#: 12) meets a covariance whose eigenvalues are still nearly all equal; any
#: rounding difference then picks another, equally valid, eigenbasis, and two
#: correct runs part ways. With n < population size the spectrum is spread out.
SMALL_SOLUTION = {"w": jnp.zeros((2, 3)), "b": jnp.zeros(4)}


def sphere(population, key):
    del key
    return sum(
        jnp.sum(jnp.reshape(x, (x.shape[0], -1)) ** 2, axis=1)
        for x in jax.tree_util.tree_leaves(population)
    )


def init_inner(key):
    del key
    return {"position": jnp.zeros(3), "count": jnp.zeros((), jnp.int32)}


def walk_step(inner, theta, key):
    """The inner position drifts by theta's leaf means plus pair-shared noise.

    The loss is the distance to 1.
    """
    drift = jnp.resize(jnp.stack([jnp.mean(x) for x in jax.tree_util.tree_leaves(theta)]), (3,))
    position = 0.9 * inner["position"] + drift + 0.01 * jax.random.normal(key, (3,))
    return (
        {"position": position, "count": inner["count"] + 1},
        jnp.sum((position - 1.0) ** 2),
        False,
    )


def online(cls, **kwargs):
    return cls(
        population_size=POPULATION_SIZE,
        solution=SOLUTION,
        truncation_length=2,
        horizon=8,
        init_inner=init_inner,
        optimizer=optax.sgd(1e-2),
        **kwargs,
    )


def strategies() -> dict:
    return {
        "CMAES": CMAES(population_size=POPULATION_SIZE, solution=SMALL_SOLUTION),
        "SepCMAES": SepCMAES(population_size=POPULATION_SIZE, solution=SOLUTION),
        # SGD, not OpenES's default Adam: Adam divides by the gradient's running
        # size, so a coordinate whose gradient is ~0 turns a 1e-9 rounding
        # difference into a full learning-rate step in either direction.
        "OpenES": OpenES(
            POPULATION_SIZE,
            SOLUTION,
            optimizer=optax.sgd(1e-2),
            noise=evopes.NoiseTable(size=2**16),
        ),
        "FullES": FullES(POPULATION_SIZE, SOLUTION),
        "TES": online(evopes.TES),
        "PES": online(evopes.PES),
        "GPES": online(evopes.GPES, noise_period=4),
        "NRES": online(evopes.NRES),
    }


def run(es, state, mesh, key, params):
    """``NUM_GENERATIONS`` sharded steps from ``state``; returns (final state, compiled step)."""
    evaluate = walk_step if isinstance(es, OnlineES) else sphere
    state = sharding.shard_state(es, state, mesh)
    compiled = sharding.sharded_step(es, evaluate, mesh).lower(state, key, params).compile()
    for generation in range(NUM_GENERATIONS):
        state, _ = compiled(state, jax.random.fold_in(key, generation), params)
    return state, compiled


def float_leaves(state) -> list[np.ndarray]:
    leaves = [np.asarray(x) for x in jax.tree_util.tree_leaves(state)]
    return [x.astype(np.float64) for x in leaves if np.issubdtype(x.dtype, np.floating)]


def population_gathers(hlo: str, rows_per_device: int, num_dims: int) -> list[str]:
    shapes = re.findall(rf"= (\w+\[(\d+),{num_dims}\])\S* all-gather", hlo)
    return [shape for shape, rows in shapes if int(rows) > rows_per_device]


def spec_of(tree) -> list:
    return sorted({str(leaf.sharding.spec) for leaf in jax.tree_util.tree_leaves(tree)})


def check(name, es) -> dict:
    key = jax.random.key(0)
    params = es.default_params
    one = sharding.population_mesh(jax.devices()[:1])
    many = sharding.population_mesh(jax.devices()[:NUM_DEVICES])
    initial = sharding.sharded_init(es, many)(
        key, es.spec.unravel(jnp.linspace(-0.5, 0.5, es.num_dims)), params
    )
    reference, compiled_one = run(es, initial, one, key, params)
    sharded, compiled_many = run(es, initial, many, key, params)

    # Leaves such as CMA-ES's fitness history hold +inf on purpose: compare
    # where the unsharded run is finite, and require the same non-finite pattern.
    with np.errstate(invalid="ignore"):
        diffs = [
            np.max(
                np.where(
                    np.isfinite(b), np.abs(a - b) / (1.0 + np.abs(b)), np.where(a == b, 0.0, np.inf)
                ),
                initial=0.0,
            )
            for a, b in zip(float_leaves(sharded), float_leaves(reference), strict=True)
        ]
    population, _ = sharding.sharded_ask(es, many)(key, sharded, params)
    result = {
        "max_rel_diff": float(max(diffs)),
        "mean_finite": bool(np.all(np.isfinite(np.asarray(sharded.mean)))),
        "num_dims": es.num_dims,
        "population_spec": spec_of(population),
        "shard_rows": sorted(
            {
                s.data.shape[0]
                for leaf in jax.tree_util.tree_leaves(population)
                for s in leaf.addressable_shards
            }
        ),
        "population_gathers": population_gathers(
            compiled_many.as_text(), POPULATION_SIZE // NUM_DEVICES, es.num_dims
        ),
        "flops_ratio": flops(compiled_many) / flops(compiled_one),
    }
    return result


def checkpoint_round_trip(name, es) -> dict:
    """Saves a sharded state mid-run, restores it, and continues both for 5 generations.

    Returns whether every leaf came back bit-identical with its dtype and
    sharding, and whether the resumed run equals the uninterrupted one bit for
    bit (same compiled step, same keys).
    """
    import tempfile

    key = jax.random.key(1)
    params = es.default_params
    mesh = sharding.population_mesh(jax.devices()[:NUM_DEVICES])
    evaluate = walk_step if isinstance(es, OnlineES) else sphere
    state = sharding.sharded_init(es, mesh)(key, es.spec.unravel(jnp.zeros(es.num_dims)), params)
    state = sharding.shard_state(es, state, mesh)
    step = sharding.sharded_step(es, evaluate, mesh).lower(state, key, params).compile()
    for generation in range(3):
        state, _ = step(state, jax.random.fold_in(key, generation), params)
    with tempfile.TemporaryDirectory() as folder:
        evopes.save_checkpoint(folder, 3, state)
        # The target is a fresh sharded state: restore takes shapes, dtypes and
        # shardings from it, never its values.
        target = sharding.shard_state(
            es,
            sharding.sharded_init(es, mesh)(
                jax.random.key(9), es.spec.unravel(jnp.ones(es.num_dims)), params
            ),
            mesh,
        )
        restored = evopes.restore_checkpoint(folder, target)
    pairs = list(
        zip(jax.tree_util.tree_leaves(restored), jax.tree_util.tree_leaves(state), strict=True)
    )
    identical = all(
        a.dtype == b.dtype and np.array_equal(np.asarray(a), np.asarray(b), equal_nan=True)
        for a, b in pairs
    )
    same_sharding = all(
        a.sharding.is_equivalent_to(b.sharding, a.ndim)
        for a, b in pairs
        if isinstance(a, jax.Array) and isinstance(b, jax.Array)
    )
    continued, resumed = state, restored
    for generation in range(3, 8):
        generation_key = jax.random.fold_in(key, generation)
        continued, _ = step(continued, generation_key, params)
        resumed, _ = step(resumed, generation_key, params)
    resumed_identical = all(
        np.array_equal(np.asarray(a), np.asarray(b), equal_nan=True)
        for a, b in zip(
            jax.tree_util.tree_leaves(resumed), jax.tree_util.tree_leaves(continued), strict=True
        )
    )
    return {
        "identical": identical,
        "same_sharding": same_sharding,
        "resumed_identical": resumed_identical,
        "sharded_leaves": sum(
            len(leaf.sharding.device_set) == NUM_DEVICES and not leaf.sharding.is_fully_replicated
            for leaf, _ in pairs
            if isinstance(leaf, jax.Array)
        ),
    }


def flops(compiled) -> float:
    return float(compiled.cost_analysis().get("flops", float("nan")))


def docs_example() -> str:
    """Runs the example of docs/scaling.md marked for the test suite; returns what it printed."""
    text = (Path(__file__).resolve().parent.parent / "docs" / "scaling.md").read_text()
    marker = "<!-- the test suite runs this block on 8 host CPU devices -->"
    block = text.split(marker, 1)[1].split("```python", 1)[1].split("```", 1)[0]
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        exec(compile(block, "docs/scaling.md", "exec"), {})
    return printed.getvalue().strip()


def main() -> None:
    if jax.device_count() < NUM_DEVICES:
        raise SystemExit(
            f"expected {NUM_DEVICES} devices, got {jax.device_count()} (set XLA_FLAGS)"
        )
    names = sys.argv[1:] or list(strategies())
    cases = strategies()
    results = {name: check(name, cases[name]) for name in names}
    results["docs_example"] = docs_example()
    results["checkpoint"] = {
        name: checkpoint_round_trip(name, cases[name]) for name in ("CMAES", "PES", "NRES")
    }
    print(json.dumps(results))


if __name__ == "__main__":
    main()
