"""One ES step sharded over 1, 2, 4 and 8 host CPU devices.

For each device count a fresh process is started with
``XLA_FLAGS=--xla_force_host_platform_device_count=N`` (JAX fixes its devices at
start-up), builds :func:`evopes.sharding.population_mesh` over the N devices
and times :func:`evopes.sharding.sharded_step`:

* **NRES on Lorenz**: 400 particles (200 with ``--quick``), ``W = 100``; the
  step is dominated by unrolling the particles, which the mesh splits.
* **OpenES, d = 100,000**: 256 members with Gaussian noise regenerated from
  keys; the step is dominated by generating the noise.

Rows ``{strategy, devices, seconds, max_abs_diff_vs_1}``: median seconds per
step, and the largest difference between the mean after ``STEPS`` steps and
the one-device run's (the runs use the same keys; only the order of the
cross-device sums differs).

Reading the numbers on a small CPU host: the "devices" are threads that share
the machine's cores. When the work is divided, N devices do the same total
work as one and the time stays flat (or drops while there are idle cores);
work that every device repeats (a whole-population computation on each
device) makes the time grow with N. On real accelerators the same program
runs each shard on its own chip.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import matplotlib.pyplot as plt

from evopes.bench.common import cli, save_figure, write_results

NAME = "scaling"
DEVICE_COUNTS = (1, 2, 4, 8)
STEPS = 5


# -- the worker: one process, one device count ------------------------------------------
def _worker(num_devices: int, quick: bool, seed: int) -> dict:
    import jax
    import jax.numpy as jnp
    import numpy as np
    import optax

    import evopes
    from evopes import sharding
    from evopes.tasks import lorenz

    assert jax.device_count() == num_devices, (jax.device_count(), num_devices)
    mesh = sharding.population_mesh()
    repeats = 3 if quick else 7
    particles = 200 if quick else 400
    open_es_dims = 100_000

    def sphere(population, key):
        del key
        return jnp.sum(population**2, axis=1)

    cases = {
        f"NRES Lorenz {particles} particles": (
            # Lock-step: a step-unlocked run would spend its first T / W = 20
            # windows in burn-in, leaving the mean (and the comparison) untouched.
            evopes.NRES(
                population_size=particles,
                solution=lorenz.INITIAL_THETA,
                truncation_length=100,
                horizon=lorenz.HORIZON,
                init_inner=lorenz.init_inner,
                optimizer=optax.sgd(1e-5),
                step_unlocked=False,
            ),
            lorenz.step,
            lorenz.INITIAL_THETA,
            lambda p: p.replace(std=jnp.float32(0.04)),
        ),
        "OpenES d=1e5 256 members": (
            # SGD: Adam would turn rounding differences in near-zero gradient
            # coordinates into full steps and hide the float agreement.
            evopes.OpenES(
                256,
                jnp.zeros(open_es_dims),
                optimizer=optax.sgd(1e-2),
                noise=evopes.GaussianNoise(),
            ),
            sphere,
            jnp.full(open_es_dims, 0.5),
            lambda p: p,
        ),
    }
    results = {}
    for name, (es, evaluate, mean, set_params) in cases.items():
        params = set_params(es.default_params)
        key = jax.random.key(seed)
        initial = sharding.sharded_init(es, mesh)(key, mean, params)
        step = sharding.sharded_step(es, evaluate, mesh)
        keys = [jax.random.fold_in(key, index) for index in range(STEPS)]

        def run(state, keys=keys, step=step, params=params):
            for step_key in keys:
                state, _ = step(state, step_key, params)
            return jax.block_until_ready(state)

        final = run(initial)  # compiles
        seconds = []
        for _ in range(repeats):
            start = time.perf_counter()
            run(initial)
            seconds.append((time.perf_counter() - start) / STEPS)
        results[name] = {
            "seconds": statistics.median(seconds),
            "mean": np.asarray(final.mean).tolist(),
        }
    return results


# -- the driver ---------------------------------------------------------------------
def _run_worker(num_devices: int, quick: bool, seed: int) -> dict:
    env = {
        **os.environ,
        "XLA_FLAGS": f"--xla_force_host_platform_device_count={num_devices}",
        "JAX_PLATFORMS": "cpu",
    }
    command = [
        sys.executable,
        "-m",
        "evopes.bench.scaling",
        "--worker",
        str(num_devices),
        "--seed",
        str(seed),
    ]
    if quick:
        command.append("--quick")
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=1800)
    if done.returncode != 0:
        raise RuntimeError(f"worker with {num_devices} devices failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main(quick: bool, seed: int, out_dir: Path) -> list[dict]:
    import numpy as np

    by_devices = {}
    for num_devices in DEVICE_COUNTS:
        by_devices[num_devices] = _run_worker(num_devices, quick, seed)
        print(
            f"{num_devices} devices: "
            + ", ".join(
                f"{name} {result['seconds']:.4g} s"
                for name, result in by_devices[num_devices].items()
            ),
            flush=True,
        )
    rows = []
    for name in by_devices[1]:
        reference = np.array(by_devices[1][name]["mean"])
        for num_devices in DEVICE_COUNTS:
            result = by_devices[num_devices][name]
            rows.append(
                {
                    "strategy": name,
                    "devices": num_devices,
                    "seconds": result["seconds"],
                    "max_abs_diff_vs_1": float(
                        np.max(np.abs(np.array(result["mean"]) - reference))
                    ),
                }
            )
    write_results(
        NAME,
        rows,
        out_dir,
        quick=quick,
        seed=seed,
        extra={"steps": STEPS, "host_cores": os.cpu_count()},
    )
    _plot(rows, out_dir)
    return rows


def _plot(rows, out_dir):
    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    for name in dict.fromkeys(row["strategy"] for row in rows):
        mine = [row for row in rows if row["strategy"] == name]
        base = mine[0]["seconds"]
        ax.plot(
            [row["devices"] for row in mine],
            [row["seconds"] / base for row in mine],
            "o-",
            label=name,
        )
    ax.axhline(1.0, color="gray", linewidth=1, linestyle="--")
    ax.set_xscale("log", base=2)
    ax.set_xticks(DEVICE_COUNTS, [str(n) for n in DEVICE_COUNTS])
    ax.set_xlabel(f"host CPU devices (sharing {os.cpu_count()} cores)")
    ax.set_ylabel("seconds per step / seconds on 1 device")
    ax.set_title("one sharded ES step")
    ax.legend(fontsize=8)
    save_figure(fig, NAME, out_dir)


if __name__ == "__main__":
    if "--worker" in sys.argv:
        arguments = sys.argv[1:]
        count = int(arguments[arguments.index("--worker") + 1])
        seed_value = int(arguments[arguments.index("--seed") + 1]) if "--seed" in arguments else 0
        print(json.dumps(_worker(count, "--quick" in arguments, seed_value)))
    else:
        cli(main)
