"""Two processes on localhost with ``jax.distributed``: the same result as one process.

``multihost_worker.py`` is started twice (process ids 0 and 1, two CPU devices
each); both join one coordinator on a free local port, shard OpenES and NRES
over the four devices of the two processes, and also run the same steps on
one device. Timeouts are bounded: a hung collective fails the test.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

TESTS = Path(__file__).resolve().parent
ROOT = TESTS.parent
#: Seconds for both workers: JAX start-up, the coordinator handshake and eight
#: small compilations take about 20 s of CPU each; generous because a loaded
#: machine stretches wall time, but bounded so a hung collective fails.
TIMEOUT = 600


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def results() -> list[dict]:
    port = free_port()
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
    }
    workers = [
        subprocess.Popen(
            [sys.executable, str(TESTS / "multihost_worker.py"), str(process_id), "2", str(port)],
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for process_id in (0, 1)
    ]
    outputs = []
    try:
        for worker in workers:
            stdout, stderr = worker.communicate(timeout=TIMEOUT)
            outputs.append((worker.returncode, stdout, stderr))
    except subprocess.TimeoutExpired:
        pytest.fail(f"the two jax.distributed workers did not finish within {TIMEOUT} s")
    finally:
        for worker in workers:
            if worker.poll() is None:
                worker.kill()
                worker.wait()
    parsed = []
    for returncode, stdout, stderr in outputs:
        lines = [line for line in stdout.splitlines() if line.startswith("RESULT ")]
        assert returncode == 0 and lines, f"worker failed (exit {returncode}):\n{stderr[-3000:]}"
        parsed.append(json.loads(lines[-1][len("RESULT ") :]))
    return parsed


def test_both_processes_see_every_device(results):
    assert sorted(r["process_index"] for r in results) == [0, 1]
    assert all(r["process_count"] == 2 and r["device_count"] == 4 for r in results)


@pytest.mark.parametrize("name", ["OpenES", "NRES"])
def test_distributed_run_matches_one_process(results, name):
    first, second = (np.array(r[name]["distributed"]) for r in results)
    # Both processes hold the same replicated mean, bit for bit.
    np.testing.assert_array_equal(first, second)
    one_device = np.array(results[0][name]["one_device"])
    assert np.linalg.norm(one_device) > 1e-2, "the run must have moved the mean"
    # Same noise (partitionable threefry), same arithmetic; only the order of
    # the cross-device sums differs: float32 rounding, ~1e-7 relative.
    np.testing.assert_allclose(first, one_device, rtol=1e-5, atol=1e-6)
