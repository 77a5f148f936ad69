"""The environment tutorials' scripts run, in a short configuration.

The scripts live in docs/tutorials/ (they are what the tutorial pages show);
each is imported as a module and its entry point called with small sizes.
"""

from __future__ import annotations

import importlib.util
import math
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("gymnax")

TUTORIALS = Path(__file__).resolve().parent.parent / "docs" / "tutorials"


def load(name: str):
    spec = importlib.util.spec_from_file_location(f"tutorial_{name}", TUTORIALS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while it executes
    spec.loader.exec_module(module)
    return module


def test_pendulum_cma_tutorial_runs():
    tutorial = load("pendulum_cma")
    result = tutorial.main(
        quick=True, num_generations=4, population_size=12, num_rollouts=2, eval_rollouts=4
    )
    curves = result["curves"]
    assert curves["step_size"].shape == (4,)
    assert math.isfinite(result["final_cost"])
    # Pendulum costs are positive; a zero-initialised policy costs ~1000 per episode.
    assert 0 < result["final_cost"] < 5000
    assert np.all(np.isfinite(curves["mean_cost"]))


def test_rl_tutorial_runs_every_method():
    tutorial = load("rl_brax")
    setting = tutorial.SMOKE
    curves = tutorial.compare(setting, seed=0)
    assert set(curves) == {"NRES", "PES", "TES", "FullES"}
    for method, curve in curves.items():
        assert curve["total_steps"][-1] == setting.total_env_steps, method
        assert np.all(np.isfinite(curve["returns"])), method
    # Sequential steps: online methods advance W per update, FullES T per update.
    ratio = curves["FullES"]["sequential_steps"][-1] / curves["NRES"]["sequential_steps"][-1]
    assert ratio == setting.horizon // setting.window
