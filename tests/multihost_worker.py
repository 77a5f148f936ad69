"""One process of a two-process ``jax.distributed`` run on localhost.

Started twice by ``tests/test_multihost.py``::

    python tests/multihost_worker.py PROCESS_ID NUM_PROCESSES PORT

Each process owns ``LOCAL_DEVICES`` CPU devices; after
``jax.distributed.initialize`` the mesh of :func:`evopes.sharding.population_mesh`
spans the devices of both processes, and every process runs the same program
(OpenES and NRES for a few generations, sharded over all devices). CPU
collectives between the processes go through gloo, JAX's default on CPU.

The process then runs the same steps on one local device only (a one-device
mesh: the single-process result) and prints one JSON line with both final
means, which the test compares across processes and against each other.
"""

from __future__ import annotations

import json
import os
import sys

LOCAL_DEVICES = 2
os.environ["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={LOCAL_DEVICES}"
os.environ["JAX_PLATFORMS"] = "cpu"

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402

NUM_GENERATIONS = 5
POPULATION_SIZE = 8


def sphere(population, key):
    del key
    return jnp.sum((population - 1.0) ** 2, axis=1)


def init_inner(key):
    del key
    return jnp.zeros(3)


def drift_step(inner, theta, key):
    """A per-particle linear system driven by theta; loss = squared distance to 1."""
    inner = 0.9 * inner + jnp.mean(theta) + 0.01 * jax.random.normal(key, (3,))
    return inner, jnp.sum((inner - 1.0) ** 2), False


def run(es, evaluate, mesh, key) -> np.ndarray:
    from evopes import sharding

    params = es.default_params
    state = sharding.sharded_init(es, mesh)(key, jnp.zeros(10), params)
    step = sharding.sharded_step(es, evaluate, mesh)
    for generation in range(NUM_GENERATIONS):
        state, _ = step(state, jax.random.fold_in(key, generation), params)
    # The mean is replicated: every process holds all of it.
    return np.asarray(state.mean.addressable_data(0))


def main() -> None:
    process_id, num_processes, port = (int(arg) for arg in sys.argv[1:4])
    jax.distributed.initialize(
        coordinator_address=f"127.0.0.1:{port}",
        num_processes=num_processes,
        process_id=process_id,
        initialization_timeout=60,
    )
    import evopes
    from evopes import sharding

    solution = jnp.zeros(10)
    strategies = {
        "OpenES": (evopes.OpenES(POPULATION_SIZE, solution, noise=evopes.GaussianNoise()), sphere),
        "NRES": (
            evopes.NRES(
                population_size=POPULATION_SIZE,
                solution=solution,
                truncation_length=2,
                horizon=4,
                init_inner=init_inner,
                optimizer=optax.sgd(0.1),
            ),
            drift_step,
        ),
    }
    everywhere = sharding.population_mesh()  # the devices of every process
    here = sharding.population_mesh(jax.local_devices()[:1])
    key = jax.random.key(0)
    results = {
        "process_index": jax.process_index(),
        "process_count": jax.process_count(),
        "device_count": jax.device_count(),
    }
    for name, (es, evaluate) in strategies.items():
        results[name] = {
            "distributed": run(es, evaluate, everywhere, key).tolist(),
            "one_device": run(es, evaluate, here, key).tolist(),
        }
    print("RESULT " + json.dumps(results), flush=True)
    jax.distributed.shutdown()


if __name__ == "__main__":
    main()
