"""rl-terminations: online ES where episodes end when the policy fails (CartPole, Acrobot).

gymnax CartPole-v1 and Acrobot-v1 as shipped: the environment auto-resets and
ends an episode through ``done`` when the pole falls (CartPole) or the link
swings up (Acrobot), at a time that depends on the policy, or at its
500-step limit. The online strategies run without a horizon
(``horizon=None``): a particle whose episode ends inside a window sits out the
rest of the window and starts its next episode at the next window with fresh
noise, which keeps PES, GPES and NRES unbiased for the expected episode return
(docs/concepts/online_es.md). NRES, PES, TES and FullES (whole 500-step
episodes) spend the same environment steps per update; settings in the RL
tutorial (``TERMINATION_SETTINGS`` of docs/tutorials/rl_brax.py).

Rows: ``{setting, method, final_return, final_return_last5, env_steps,
sequential_steps, wall_s, discarded_fraction}`` of the median curve over
``NUM_SEEDS`` seeds (one with ``--quick``); ``discarded_fraction`` (online
methods, mean over seeds) is the share of computed particle-steps that came
after a ``done`` inside a window and were not counted: the cost of the
unbiased treatment of episode ends. FullES's ``env_steps`` count every step
of its fixed-length batched rollouts, also those after a fall.

Claims (stored in the JSON): NRES and PES end far above the initial policy's
return, and how NRES compares with FullES at equal environment steps and in
sequential steps to FullES's level.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from evopes.bench import _rl_brax_tutorial as tutorial
from evopes.bench.common import cli
from evopes.bench.rl_brax import claims as nres_vs_others
from evopes.bench.rl_brax import last, run_settings

NAME = "rl_terminations"
#: "A wide margin": at least half of the way from the initial policy's return to
#: the best return of the task (500 for CartPole; about -60 for Acrobot, whose
#: quickest swing-ups still take some steps).
WIDE_MARGIN = 0.5
BEST_RETURN = {"CartPole-v1": 500.0, "Acrobot-v1": -60.0}


def claims(curves: dict, best: float) -> dict:
    initial = float(curves["NRES"]["returns"][0])
    level = initial + WIDE_MARGIN * (best - initial)
    return {
        "initial_return": initial,
        "wide_margin_level": level,
        **{f"{method.lower()}_last5": last(curve) for method, curve in curves.items()},
        "nres_improves_widely": last(curves["NRES"]) >= level,
        "pes_improves_widely": last(curves["PES"]) >= level,
        **nres_vs_others(curves),
    }


def main(quick: bool, seed: int, out_dir: Path) -> list[dict]:
    settings = tutorial.TERMINATION_SETTINGS
    if quick:
        settings = {
            label: replace(setting, total_env_steps=setting.total_env_steps // 2)
            for label, setting in settings.items()
        }
    return run_settings(
        NAME,
        settings,
        lambda label, curves: claims(curves, BEST_RETURN[settings[label].env_name]),
        quick=quick,
        seed=seed,
        out_dir=out_dir,
        extra_row=("discarded_fraction",),
    )


if __name__ == "__main__":
    cli(main)
