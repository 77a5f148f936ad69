"""One process of a two-process ``jax.distributed`` run that checkpoints and resumes.

Started twice by ``tests/test_multihost_checkpoint.py``::

    python tests/multihost_checkpoint_worker.py PROCESS_ID NUM_PROCESSES PORT killed FOLDER
    python tests/multihost_checkpoint_worker.py PROCESS_ID NUM_PROCESSES PORT resume \\
        UNINTERRUPTED INTACT DAMAGED

Both modes run NRES sharded over the four CPU devices of the two processes with
:func:`evopes.run_loop` (``NUM_STEPS`` windows in chunks of ``CHUNK_SIZE``, a
checkpoint after every chunk). ``killed``: process 1 SIGKILLs itself while
writing its part of the last checkpoint, after the data is written and before
the rename (the worst moment). ``resume``: restores the damaged folder's
checkpoints by hand (each must raise the documented ``ValueError``), then runs
to the end in a fresh folder (the uninterrupted run), in a copy of the killed
run's folder, and in a copy whose newer checkpoints lost or damaged a part; it
prints one JSON line with a digest of each final state and history, the
checkpoints each run restored and the warnings it gave.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import sys
import warnings

LOCAL_DEVICES = 2
os.environ["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={LOCAL_DEVICES}"
os.environ["JAX_PLATFORMS"] = "cpu"

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402

NUM_STEPS = 8
CHUNK_SIZE = 2
POPULATION_SIZE = 8
#: The step whose save process 1 does not survive in ``killed`` mode.
KILL_STEP = 8


def init_inner(key):
    del key
    return jnp.zeros(3)


def drift_step(inner, theta, key):
    """A per-particle linear system driven by theta; loss = squared distance to 1."""
    inner = 0.9 * inner + jnp.mean(theta) + 0.01 * jax.random.normal(key, (3,))
    return inner, jnp.sum((inner - 1.0) ** 2), False


def digest(tree) -> str:
    """SHA-256 of every leaf's bytes as this process holds them (shards in device order)."""
    sha = hashlib.sha256()
    for leaf in jax.tree_util.tree_leaves(tree):
        if isinstance(leaf, jax.Array) and jax.dtypes.issubdtype(leaf.dtype, jax.dtypes.prng_key):
            leaf = jax.random.key_data(leaf)
        if isinstance(leaf, jax.Array):
            shards = sorted(leaf.addressable_shards, key=lambda shard: shard.device.id)
            parts = [np.asarray(shard.data) for shard in shards]
        else:
            parts = [np.asarray(leaf)]
        for part in parts:
            sha.update(str((part.dtype, part.shape)).encode())
            sha.update(np.ascontiguousarray(part).tobytes())
    return sha.hexdigest()


def main() -> None:
    process_id, num_processes, port = (int(arg) for arg in sys.argv[1:4])
    mode, folders = sys.argv[4], sys.argv[5:]
    jax.distributed.initialize(
        coordinator_address=f"127.0.0.1:{port}",
        num_processes=num_processes,
        process_id=process_id,
        initialization_timeout=60,
    )
    import evopes
    from evopes import checkpoint, sharding

    es = evopes.NRES(
        population_size=POPULATION_SIZE,
        solution=jnp.zeros(10),
        truncation_length=2,
        horizon=4,
        init_inner=init_inner,
        optimizer=optax.sgd(0.1),
    )
    params = es.default_params
    mesh = sharding.population_mesh()  # the devices of both processes
    key = jax.random.key(0)
    initial = sharding.sharded_init(es, mesh)(key, jnp.zeros(10), params)
    step = sharding.sharded_step(es, drift_step, mesh)

    restored_paths = []
    restore = checkpoint.restore_checkpoint

    def recording_restore(path, target):
        restored_paths.append(os.path.basename(path))
        return restore(path, target)

    checkpoint.restore_checkpoint = recording_restore

    def run(folder):
        restored_paths.clear()
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            result = evopes.run_loop(
                step,
                initial,
                key,
                NUM_STEPS,
                params=params,
                chunk_size=CHUNK_SIZE,
                checkpoint_dir=folder,
                keep_checkpoints=3,
                progress=False,
            )
        return {
            "state": digest(result.state),
            "history": digest(result.history),
            "restored": list(restored_paths),
            "warnings": [str(w.message) for w in caught if w.category is RuntimeWarning],
        }

    results = {"process_index": jax.process_index(), "process_count": jax.process_count()}
    if mode == "killed":

        def die_mid_save(temp_path):
            if process_id == 1 and f"checkpoint_{KILL_STEP:012d}.part1" in temp_path.name:
                os.kill(os.getpid(), signal.SIGKILL)

        checkpoint._before_commit = die_mid_save
        run(folders[0])  # process 1 never returns; process 0 is killed by the test
    else:
        uninterrupted, intact, damaged = folders
        errors = {}
        for name in sorted(os.listdir(damaged)):
            if name.endswith(".evopes") and ".part" not in name:
                try:
                    restore(os.path.join(damaged, name), initial)
                    errors[name] = None
                except ValueError as error:
                    errors[name] = f"{type(error).__name__}: {error}"
        results["restore_errors"] = errors
        results["uninterrupted"] = run(uninterrupted)
        results["intact"] = run(intact)
        results["damaged"] = run(damaged)
    print("RESULT " + json.dumps(results), flush=True)
    jax.distributed.shutdown()


if __name__ == "__main__":
    main()
