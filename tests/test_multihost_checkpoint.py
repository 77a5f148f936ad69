"""Two processes on localhost checkpoint a sharded run, one is killed mid-save, both resume.

``multihost_checkpoint_worker.py`` is started twice per phase (process ids 0
and 1, two CPU devices each, ``jax.distributed`` on a free local port):

1. ``killed``: NRES sharded over the four devices runs 8 windows with a
   checkpoint every 2; process 1 SIGKILLs itself while writing its part of the
   step-8 checkpoint (after fsync, before the rename), and the test then kills
   process 0, blocked at the barrier that waits for every part.
2. The test checks the folder: the newest checkpoint is step 6, the previous
   complete one. It copies the folder twice and, in the second copy, deletes
   process 0's part of step 6 and flips a byte of process 1's part of step 4.
3. ``resume``: both processes restore the damaged copy's checkpoints by hand,
   then run to the end in a fresh folder (the uninterrupted run), in the intact
   copy and in the damaged copy.

Each process's final state and history must be bit-identical across the three
runs. Timeouts are bounded: a hung collective fails the test.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from evopes.checkpoint import latest_checkpoint

TESTS = Path(__file__).resolve().parent
ROOT = TESTS.parent
WORKER = TESTS / "multihost_checkpoint_worker.py"
#: Seconds for each phase: JAX start-up, the coordinator handshake and a few
#: small compilations take about 20 s of CPU per process; generous because a
#: loaded machine stretches wall time, bounded so a hung collective fails.
TIMEOUT = 600


def _name(step: int, part: str = "") -> str:
    return f"checkpoint_{step:012d}{part}.evopes"


def _start(port: int, *args: str) -> list[subprocess.Popen]:
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
    }
    return [
        subprocess.Popen(
            [sys.executable, str(WORKER), str(process_id), "2", str(port), *args],
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for process_id in (0, 1)
    ]


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _kill_all(workers: list[subprocess.Popen]) -> None:
    for worker in workers:
        if worker.poll() is None:
            worker.kill()
        worker.communicate()


def _run_phases(root: Path) -> dict:
    killed_folder = root / "killed"

    # Phase 1: process 1 dies mid-save; process 0 waits for its part, and is killed.
    workers = _start(_free_port(), "killed", str(killed_folder))
    try:
        deadline = time.monotonic() + TIMEOUT
        while workers[1].poll() is None and time.monotonic() < deadline:
            time.sleep(0.5)
        assert workers[1].poll() == -signal.SIGKILL, (
            f"process 1 did not die mid-save (exit {workers[1].poll()}):\n"
            + workers[1].communicate(timeout=10)[1][-3000:]
            if workers[1].poll() is not None
            else f"process 1 still running after {TIMEOUT} s"
        )
    finally:
        _kill_all(workers)
    listing = sorted(path.name for path in killed_folder.iterdir())
    latest = latest_checkpoint(killed_folder)

    # Phase 2: an intact copy, and a copy whose two newest checkpoints lost a part.
    intact, damaged = root / "intact", root / "damaged"
    shutil.copytree(killed_folder, intact)
    shutil.copytree(killed_folder, damaged)
    (damaged / _name(6, ".part0of2")).unlink()
    damaged_part = damaged / _name(4, ".part1of2")
    data = bytearray(damaged_part.read_bytes())
    data[len(data) // 2] ^= 0x01
    damaged_part.write_bytes(bytes(data))

    # Phase 3: both processes resume each folder (and run an uninterrupted run).
    workers = _start(_free_port(), "resume", str(root / "uninterrupted"), str(intact), str(damaged))
    outputs = []
    try:
        for worker in workers:
            stdout, stderr = worker.communicate(timeout=TIMEOUT)
            outputs.append((worker.returncode, stdout, stderr))
    except subprocess.TimeoutExpired:
        pytest.fail(f"the resuming workers did not finish within {TIMEOUT} s")
    finally:
        _kill_all(workers)
    results = []
    for returncode, stdout, stderr in outputs:
        lines = [line for line in stdout.splitlines() if line.startswith("RESULT ")]
        assert returncode == 0 and lines, f"worker failed (exit {returncode}):\n{stderr[-3000:]}"
        results.append(json.loads(lines[-1][len("RESULT ") :]))
    return {"listing": listing, "latest": latest, "results": results, "damaged": damaged}


def _check_a_kill_mid_save_leaves_the_previous_complete_checkpoint_latest(phases):
    listing = phases["listing"]
    # Steps 2, 4 and 6 are complete (manifest and both parts; keep=3).
    for step in (2, 4, 6):
        assert {_name(step), _name(step, ".part0of2"), _name(step, ".part1of2")} <= set(listing)
    # Step 8 was never committed: process 1's part is still a temporary file.
    assert _name(8) not in listing and _name(8, ".part1of2") not in listing
    assert any(name.startswith(".tmp-") and ".part1of2" in name for name in listing), listing
    assert phases["latest"].name == _name(6)


def _check_a_manifest_with_a_missing_or_damaged_part_raises_a_value_error_naming_it(phases):
    for result in phases["results"]:
        errors = result["restore_errors"]
        assert errors[_name(6)].startswith("DamagedCheckpointError")
        assert _name(6) in errors[_name(6)] and _name(6, ".part0of2") in errors[_name(6)]
        assert errors[_name(4)].startswith("DamagedCheckpointError")
        assert _name(4, ".part1of2") in errors[_name(4)] and "checksum" in errors[_name(4)]


def _check_resume_after_the_kill_is_bit_identical_to_the_uninterrupted_run(phases):
    for result in phases["results"]:
        assert result["uninterrupted"]["restored"] == []
        assert result["intact"]["restored"] == [_name(6)]
        assert result["intact"]["warnings"] == []
        for field in ("state", "history"):
            assert result["intact"][field] == result["uninterrupted"][field]


def _check_resume_falls_back_past_checkpoints_with_a_bad_part(phases):
    for result in phases["results"]:
        run = result["damaged"]
        # The driver tried step 6, then 4, and resumed from 2, naming each damaged one.
        assert run["restored"] == [_name(6), _name(4), _name(2)]
        assert len(run["warnings"]) == 2
        assert _name(6) in run["warnings"][0] and _name(4) in run["warnings"][1]
        for field in ("state", "history"):
            assert run[field] == result["uninterrupted"][field]
    # Process 0 alone renamed the damaged manifests aside.
    names = {path.name for path in phases["damaged"].iterdir()}
    assert {_name(6) + ".damaged", _name(4) + ".damaged"} <= names


def test_two_processes_survive_a_kill_mid_save_and_resume_bit_identically(tmp_path):
    # One test, so that the two-process phases run once even when pytest-xdist
    # spreads a module's tests over several workers.
    phases = _run_phases(tmp_path)
    _check_a_kill_mid_save_leaves_the_previous_complete_checkpoint_latest(phases)
    _check_a_manifest_with_a_missing_or_damaged_part_raises_a_value_error_naming_it(phases)
    _check_resume_after_the_kill_is_bit_identical_to_the_uninterrupted_run(phases)
    _check_resume_falls_back_past_checkpoints_with_a_bad_part(phases)
