"""rl-brax: NRES vs PES vs TES vs FullES training a policy with truncated windows.

The experiment is the tutorial's (docs/tutorials/rl_brax.py, which holds the
settings and explains the choice of environments); this script runs it, writes
the rows ``{setting, method, final_return, env_steps, sequential_steps, wall_s}``
and plots return against total and against sequential environment steps.

Claims checked (printed, and stored in the JSON): at equal total environment
steps NRES ends with a higher return than TES, and NRES reaches at least
FullES's final return with fewer sequential steps.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np

from benchmarks.common import cli, save_figure, write_results

NAME = "rl_brax"
TUTORIAL = Path(__file__).resolve().parent.parent / "docs" / "tutorials" / "rl_brax.py"
COLORS = {"NRES": "C0", "PES": "C1", "TES": "C2", "FullES": "C3"}


def load_tutorial():
    spec = importlib.util.spec_from_file_location("rl_brax_tutorial", TUTORIAL)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while it executes
    spec.loader.exec_module(module)
    return module


def claims(curves: dict) -> dict:
    """NRES vs TES at equal total steps; sequential steps NRES needs to reach FullES's final return."""
    nres, tes, full = curves["NRES"], curves["TES"], curves["FullES"]
    reached = np.nonzero(nres["returns"] >= full["returns"][-1])[0]
    nres_sequential = int(nres["sequential_steps"][reached[0]]) if reached.size else None
    return {
        "nres_beats_tes": bool(nres["returns"][-1] > tes["returns"][-1]),
        "nres_sequential_steps_to_fulles_final_return": nres_sequential,
        "fulles_sequential_steps": int(full["sequential_steps"][-1]),
        "nres_matches_fulles_with_fewer_sequential_steps": bool(
            nres_sequential is not None and nres_sequential < full["sequential_steps"][-1]
        ),
    }


def main(quick: bool, seed: int, out_dir: Path) -> list[dict]:
    tutorial = load_tutorial()
    settings = tutorial.QUICK_SETTINGS if quick else tutorial.SETTINGS
    rows, all_curves, checks = [], {}, {}
    for label, setting in settings.items():
        curves = tutorial.compare(setting, seed)
        all_curves[label] = curves
        checks[label] = claims(curves)
        print(label, checks[label], flush=True)
        for method, curve in curves.items():
            rows.append({
                "setting": label,
                "method": method,
                "final_return": float(curve["returns"][-1]),
                "env_steps": int(curve["total_steps"][-1]),
                "sequential_steps": int(curve["sequential_steps"][-1]),
                "wall_s": float(curve["wall_s"]),
            })
    write_results(NAME, rows, out_dir, quick=quick, seed=seed, extra={
        "claims": checks,
        "settings": {label: repr(setting) for label, setting in settings.items()},
        "curves": {
            label: {m: {k: np.asarray(v).tolist() for k, v in c.items() if k != "wall_s"} for m, c in curves.items()}
            for label, curves in all_curves.items()
        },
    })

    plot(all_curves, out_dir)
    return rows


def plot(all_curves: dict, out_dir: Path) -> Path:
    """Return of the mean policy against total (left) and sequential (right, log) environment steps."""
    fig, axes = plt.subplots(len(all_curves), 2, figsize=(11, 4 * len(all_curves)), squeeze=False)
    for (label, curves), (total_ax, sequential_ax) in zip(all_curves.items(), axes, strict=True):
        for method, curve in curves.items():
            style = {"color": COLORS[method], "marker": "o", "ms": 3, "label": method}
            total_ax.plot(curve["total_steps"], curve["returns"], **style)
            # The log axis cannot show step 0: start at the first update.
            sequential_ax.plot(curve["sequential_steps"][1:], curve["returns"][1:], **style)
        initial = next(iter(curves.values()))["returns"][0]
        for ax in (total_ax, sequential_ax):
            ax.axhline(initial, color="gray", linestyle=":", linewidth=1, label="initial policy")
            ax.set(ylabel="return of the mean policy", title=label)
            ax.legend(fontsize=8)
        total_ax.set(xlabel="total environment steps")
        sequential_ax.set(xlabel="sequential environment steps", xscale="log")
    return save_figure(fig, NAME, out_dir)


if __name__ == "__main__":
    cli(main)
