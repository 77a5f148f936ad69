"""Fault tests: SIGKILL a checkpointed run during training and during checkpoint writes.

A worker subprocess runs ``evopes.run`` (CMA-ES on a noisy sphere with 5%
NaN fitness, so keys, NaN handling and history are all exercised) with a
checkpoint after every chunk. The test kills it

* while a checkpoint is being written: the worker's commit hook announces the
  temporary file and sleeps before the rename, and the test kills it then;
* at random moments while it trains;

restarts it each time (it resumes from the latest checkpoint), and finally
compares the state and metrics history of the run that survived the kills
with those of an uninterrupted run: they must be the same bytes.
"""

import os
import random
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np

from evopes.checkpoint import checkpoint_step, latest_checkpoint

REPO_ROOT = Path(__file__).resolve().parent.parent
NUM_GENERATIONS = 60
CHUNK = 4

WORKER = textwrap.dedent(
    f"""
    import sys, time
    import jax, jax.numpy as jnp, numpy as np
    import evopes
    from evopes import checkpoint
    from evopes.strategies.cma_es import CMAES

    directory, output, speed, cache = sys.argv[1:5]
    # Restarted workers load the compiled chunk from disk instead of compiling it again.
    jax.config.update("jax_compilation_cache_dir", cache)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)

    def announce(temp_path):
        print("COMMIT", temp_path.name, flush=True)
        if speed == "slow":
            time.sleep(0.5)  # the window in which the test kills us
        elif speed == "paced":
            time.sleep(0.1)  # so that a random kill lands before the run ends

    checkpoint._before_commit = announce

    def fitness(population, key):
        size = population.shape[0]
        noisy = jnp.sum(population**2, axis=1) * (1 + 0.1 * jax.random.normal(key, (size,)))
        nan = jax.random.uniform(jax.random.fold_in(key, 1), (size,)) < 0.05
        return jnp.where(nan, jnp.nan, noisy)

    es = CMAES(population_size=8, solution=jnp.zeros(4))
    result = evopes.run(es, fitness, jnp.full(4, 0.5), jax.random.key(0), {NUM_GENERATIONS},
                        chunk_size={CHUNK}, checkpoint_dir=directory, progress=False)
    leaves = jax.tree_util.tree_leaves(result.state)
    np.savez(output, *[np.asarray(leaf) for leaf in leaves], **result.history)
    print("DONE", flush=True)
    """
)


def _start(directory: Path, output: Path, slow_commit: bool | str) -> subprocess.Popen:
    cache = output.parent / "compilation_cache"
    env = dict(
        os.environ, PYTHONPATH=os.pathsep.join([str(REPO_ROOT), os.environ.get("PYTHONPATH", "")])
    )
    env.setdefault("JAX_PLATFORMS", "cpu")
    return subprocess.Popen(
        [
            sys.executable,
            "-c",
            WORKER,
            str(directory),
            str(output),
            slow_commit if isinstance(slow_commit, str) else ("slow" if slow_commit else "fast"),
            str(cache),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )


def _wait_for_commit(process: subprocess.Popen, count: int) -> str | None:
    """Reads the worker's output up to its ``count``-th commit; returns the temporary file."""
    seen = 0
    for line in process.stdout:
        if line.startswith("COMMIT"):
            seen += 1
            if seen == count:
                return line.split()[1]
    process.wait(timeout=30)
    raise AssertionError(f"the worker ended before commit {count}: {process.stderr.read()[-3000:]}")


def _kill(process: subprocess.Popen) -> None:
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=30)
    process.stdout.close()
    process.stderr.close()


def _finish(process: subprocess.Popen) -> None:
    out, err = process.communicate(timeout=600)
    assert process.returncode == 0 and "DONE" in out, err[-3000:]


def _load(path: Path) -> dict[str, bytes]:
    with np.load(path) as data:
        return {name: data[name].tobytes() for name in data.files}


def test_sigkill_during_training_and_checkpoint_writes_loses_nothing(tmp_path):
    rng = random.Random(0)  # kill points are random but reproducible
    # The uninterrupted run goes first; it also fills the compilation cache.
    _finish(_start(tmp_path / "reference", tmp_path / "reference.npz", slow_commit=False))

    directory = tmp_path / "killed"
    # 1. Kill inside the write window of the 3rd checkpoint: temp file written, not renamed.
    worker = _start(directory, tmp_path / "killed.npz", slow_commit=True)
    temp_name = _wait_for_commit(worker, 3)
    time.sleep(0.1)
    _kill(worker)
    temporary = list(directory.glob(".tmp-*"))
    assert [p.name for p in temporary] == [temp_name]
    committed = checkpoint_step(latest_checkpoint(directory))
    assert committed == 2 * CHUNK  # the half-written step-12 checkpoint is invisible

    # 2. Twice more: kill at a random moment of training, after a random number of
    # checkpoints. Paced at 0.1 s per checkpoint, a worker writes at most 2 more
    # in the 0.15 s sleep: at most 8 + 2 * (3 + 2) * CHUNK = 48 < 60 generations.
    for _ in range(2):
        worker = _start(directory, tmp_path / "killed.npz", slow_commit="paced")
        _wait_for_commit(worker, rng.randint(1, 3))
        time.sleep(rng.uniform(0.0, 0.15))
        _kill(worker)
        progress = checkpoint_step(latest_checkpoint(directory))
        assert committed <= progress < NUM_GENERATIONS  # resumed, never went back
        committed = progress

    # 3. Let it finish, resuming from whatever the kills left.
    _finish(_start(directory, tmp_path / "killed.npz", slow_commit=False))
    survived, uninterrupted = _load(tmp_path / "killed.npz"), _load(tmp_path / "reference.npz")
    assert survived.keys() == uninterrupted.keys()
    assert {name for name in survived if survived[name] != uninterrupted[name]} == set()
    assert len(np.load(tmp_path / "killed.npz")["step"]) == NUM_GENERATIONS
