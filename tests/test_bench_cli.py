"""Benchmarks ship with the package: listed by ``bench --help``, run from a wheel anywhere,
and a run from a source checkout never writes into it."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

from evopes import bench

ROOT = Path(__file__).resolve().parents[1]


def test_help_lists_every_benchmark_with_one_line():
    result = subprocess.run(
        [sys.executable, "-m", "evopes", "bench", "--help"], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr
    listed = {
        line.split()[0]: line
        for line in result.stdout.split("benchmarks:")[1].splitlines()
        if line.startswith("  ") and line.strip()
    }
    names = bench.benchmark_names()
    assert {"cma-vs-pycma", "lorenz", "speed-online"} <= set(names)
    for name in names:
        assert name in listed, name
        assert len(listed[name].split(None, 1)[1]) > 20, listed[name]  # a real description


def test_rl_brax_tutorial_copy_matches_the_docs():
    """The benchmark runs the tutorial's code; the package carries a copy for wheels."""
    shipped = (ROOT / "evopes" / "bench" / "_rl_brax_tutorial.py").read_text()
    assert shipped == (ROOT / "docs" / "tutorials" / "rl_brax.py").read_text()


def _run(command, cwd, env=None, timeout=600):
    result = subprocess.run(
        command, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    return result.stdout


@pytest.mark.skipif(shutil.which("git") is None, reason="needs git")
def test_wheel_runs_a_benchmark_from_another_directory(tmp_path):
    """Build the wheel, install it alone into a fresh venv, run a quick benchmark elsewhere.

    The new venv gets only the wheel; its dependencies come from this environment's
    site-packages through PYTHONPATH, which does not process .pth files, so the editable
    install of the source tree is invisible: ``evopes`` must come from the wheel.
    """
    wheels = tmp_path / "wheels"
    _run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(wheels), str(ROOT)],
        cwd=tmp_path,
    )
    (wheel,) = wheels.glob("evopes-*.whl")
    venv = tmp_path / "venv"
    _run([sys.executable, "-m", "venv", "--without-pip", str(venv)], cwd=tmp_path)
    python = venv / "bin" / "python"
    site = _run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        cwd=tmp_path,
    ).strip()
    env = {**os.environ, "PYTHONPATH": sysconfig.get_paths()["purelib"]}
    _run(
        [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", site, str(wheel)],
        cwd=tmp_path,
    )
    elsewhere, out = tmp_path / "elsewhere", tmp_path / "out"
    elsewhere.mkdir()
    location = _run(
        [str(python), "-c", "import evopes; print(evopes.__file__)"], cwd=elsewhere, env=env
    )
    assert location.startswith(str(venv)), location
    _run(
        [str(python), "-m", "evopes", "bench", "cma-vs-pycma", "--quick", "--out", str(out)],
        cwd=elsewhere,
        env=env,
    )
    assert (out / "cma-vs-pycma.json").is_file() and (out / "cma-vs-pycma.png").is_file()


@pytest.mark.skipif(
    shutil.which("git") is None or not (ROOT / ".git").exists(), reason="needs a git checkout"
)
def test_a_quick_run_leaves_a_clean_clone_unchanged(tmp_path):
    clone = tmp_path / "clone"
    _run(["git", "clone", "-q", str(ROOT), str(clone)], cwd=tmp_path)
    env = {**os.environ, "XDG_DATA_HOME": str(tmp_path / "data"), "PYTHONPATH": str(clone)}
    _run([sys.executable, "-m", "evopes", "bench", "cma-vs-pycma", "--quick"], cwd=clone, env=env)
    assert (tmp_path / "data" / "evopes" / "bench-results" / "cma-vs-pycma.json").is_file()
    assert _run(["git", "status", "--porcelain"], cwd=clone) == ""
