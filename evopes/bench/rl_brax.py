"""rl-brax: NRES vs PES vs TES vs FullES training a policy with truncated windows.

The experiment is the tutorial's (docs/tutorials/rl_brax.py, which holds the
settings and explains the choice of environments; the package ships a copy,
``evopes/bench/_rl_brax_tutorial.py``, which a test keeps identical to it);
this script runs it for ``NUM_SEEDS`` seeds (one with ``--quick``) and writes

* ``rows``: ``{setting, method, final_return, final_return_last5, env_steps,
  sequential_steps, wall_s}`` of the *median curve* (at every evaluation, the
  median return over the seeds);
* ``seed_rows``: the same per seed.

RL returns of one evaluation swing widely from one update to the next (FullES
itself goes 1000 -> 225 -> 239 on inverted_pendulum), so a single seed's last
evaluation says little. ``final_return_last5`` is the mean of the last five
evaluations of the median curve.

Claims checked (printed, and stored in the JSON) on the median curves: at equal
total environment steps NRES ends with a higher ``final_return_last5`` than
TES, and NRES reaches FullES's ``final_return_last5`` with fewer sequential
steps than FullES used. The last-evaluation versions of both are stored too.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np

from evopes.bench import _rl_brax_tutorial as tutorial
from evopes.bench.common import cli, save_figure, write_results

NAME = "rl_brax"
NUM_SEEDS = 3
LAST = 5  # evaluations averaged in final_return_last5
COLORS = {"NRES": "C0", "PES": "C1", "TES": "C2", "FullES": "C3"}


def median_curve(runs: list[dict]) -> dict:
    """The median return over seeds at every evaluation (the step counts agree across seeds)."""
    return {
        "returns": np.median(np.stack([np.asarray(r["returns"]) for r in runs]), axis=0),
        "total_steps": np.asarray(runs[0]["total_steps"]),
        "sequential_steps": np.asarray(runs[0]["sequential_steps"]),
        "wall_s": float(np.sum([r["wall_s"] for r in runs])),
    }


def last(curve: dict) -> float:
    return float(np.mean(curve["returns"][-LAST:]))


def claims(curves: dict) -> dict:
    """NRES vs TES at equal total steps; sequential steps NRES needs to reach FullES's level."""
    nres, tes, full = curves["NRES"], curves["TES"], curves["FullES"]

    def steps_to(level):
        reached = np.nonzero(nres["returns"] >= level)[0]
        return int(nres["sequential_steps"][reached[0]]) if reached.size else None

    full_sequential = int(full["sequential_steps"][-1])
    to_last5, to_final = steps_to(last(full)), steps_to(full["returns"][-1])
    return {
        "nres_beats_tes_last5": last(nres) > last(tes),
        "nres_beats_tes_final": bool(nres["returns"][-1] > tes["returns"][-1]),
        "fulles_sequential_steps": full_sequential,
        "nres_sequential_steps_to_fulles_last5": to_last5,
        "nres_reaches_fulles_last5_with_fewer_sequential_steps": to_last5 is not None
        and to_last5 < full_sequential,
        "nres_sequential_steps_to_fulles_final": to_final,
        "nres_reaches_fulles_final_with_fewer_sequential_steps": to_final is not None
        and to_final < full_sequential,
    }


def _row(label, method, curve, **extra) -> dict:
    return {
        "setting": label,
        **extra,
        "method": method,
        "final_return": float(curve["returns"][-1]),
        "final_return_last5": last(curve),
        "env_steps": int(curve["total_steps"][-1]),
        "sequential_steps": int(curve["sequential_steps"][-1]),
        "wall_s": float(curve["wall_s"]),
    }


def main(quick: bool, seed: int, out_dir: Path) -> list[dict]:
    settings = tutorial.QUICK_SETTINGS if quick else tutorial.SETTINGS
    return run_settings(
        NAME,
        settings,
        lambda label, curves: claims(curves),
        quick=quick,
        seed=seed,
        out_dir=out_dir,
    )


def run_settings(name, settings, claims_fn, *, quick, seed, out_dir, extra_row=()) -> list[dict]:
    """Every method of the tutorial on every setting, ``NUM_SEEDS`` seeds (one if quick).

    Writes ``name``'s JSON (median-curve ``rows``, ``seed_rows``, the claims of
    ``claims_fn(label, curves)`` per setting, the curves) and its figure. ``extra_row``
    names curve entries copied into the rows (their mean over seeds).
    """
    seeds = [seed] if quick else [seed + i for i in range(NUM_SEEDS)]
    rows, seed_rows, all_curves, checks = [], [], {}, {}
    for label, setting in settings.items():
        runs = {}
        for run_seed in seeds:
            for method, curve in tutorial.compare(setting, run_seed).items():
                runs.setdefault(method, []).append(curve)
                extra = {k: curve[k] for k in extra_row if k in curve}
                seed_rows.append({**_row(label, method, curve, seed=run_seed), **extra})
        curves = {method: median_curve(method_runs) for method, method_runs in runs.items()}
        all_curves[label] = curves
        checks[label] = claims_fn(label, curves)
        print(label, checks[label], flush=True)
        for method, curve in curves.items():
            extra = {
                k: float(np.mean([r[k] for r in runs[method]]))
                for k in extra_row
                if k in runs[method][0]
            }
            rows.append({**_row(label, method, curve), **extra})
    write_results(
        name,
        rows,
        out_dir,
        quick=quick,
        seed=seed,
        extra={
            "seeds": seeds,
            "seed_rows": seed_rows,
            "claims": checks,
            "settings": {label: repr(setting) for label, setting in settings.items()},
            "curves": {
                label: {
                    m: {k: np.asarray(v).tolist() for k, v in c.items() if k != "wall_s"}
                    for m, c in curves.items()
                }
                for label, curves in all_curves.items()
            },
        },
    )
    plot(all_curves, out_dir, name)
    return rows


def plot(all_curves: dict, out_dir: Path, name: str = NAME) -> Path:
    """Median return of the mean policy against total (left) and sequential (right, log) steps."""
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
            ax.set(ylabel="return of the mean policy (median over seeds)", title=label)
            ax.legend(fontsize=8)
        total_ax.set(xlabel="total environment steps")
        sequential_ax.set(xlabel="sequential environment steps", xscale="log")
    return save_figure(fig, name, out_dir)


if __name__ == "__main__":
    cli(main)
