"""Where an online strategy's time goes on a small system: the engine with its safeguards taken out.

``speed-online`` measures evopes' PES and NRES on Lorenz at 1.1x-1.45x the time of the
bare unroll. This benchmark asks how much of that comes from what ``tell`` does beyond
the estimator itself, by timing the same Lorenz loop (``W = 100``, lock-step, every loss
finite, no ``done`` flags, the settings of ``speed-online``) with three versions of the
strategy:

* **shipped**: ``evopes.PES`` / ``evopes.NRES`` as they are;
* **no NaN masking**: ``tell`` takes its window statistics from the column sums of the
  losses without looking for non-finite entries (one ``lax.cond`` and its predicate fewer);
* **branch-free tell**: in addition, the partners of every pair are assumed to share
  their noise and accumulator (no sharing tests, no conditionals in the gradient) and
  the horizon reset replaces inner states with a select instead of a conditional; ``tell``
  then has no conditional at all. ``ask`` is unchanged (its conditional keeps the normals
  in one buffer: without it XLA fuses the Threefry hash into every consumer and a PES
  window gets two to three times slower).

The two reduced versions are not usable strategies: a non-finite loss would poison their
estimate, a ``done`` flag would break them, and an expensive ``init_inner`` would run every
window. In the windows timed here they compute the same numbers as the shipped one, which
the benchmark checks: ``max_abs_diff`` is the largest difference of the mean after the
timed windows from the shipped strategy's. evosax's ``PersistentES`` / ``NoiseReuseES``
in the same loop and the bare unroll are timed alongside, in alternation, each loop's
time the minimum over its repeats (see ``speed-online``).

Everything runs twice: in this process with XLA's default flags, and in a child process
started with ``--xla_cpu_enable_concurrency_optimized_scheduler=false``. On a CPU with
few cores, XLA's default schedule lets its runtime hand the small kernels of a window to
other threads, which on the 2-core machine of the committed results costs more than it
saves; the second run shows what the same programs cost without that (for every loop,
evosax's and the bare one included).

Rows ``{xla_scheduler, strategy, variant, seconds, overhead, max_abs_diff}`` with
``overhead = seconds / bare seconds`` of the same run. The question it answers: whether
the 10% overhead budget of ``speed-online`` is reachable on this machine by trimming the
engine's safeguards, or whether the remaining kernels of a complete ask/tell (noise,
population, window sums, gradient, optimizer, episode bookkeeping) already take it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import matplotlib.pyplot as plt
import numpy as np

import evopes
from evopes.bench import speed_online
from evopes.bench.common import block, cli, save_figure, write_results
from evopes.online.unroll import sum_over_steps

NAME = "online_overhead"
SYSTEM = speed_online.Lorenz


class _NoNaNMasking:
    """Window statistics from the column sums alone (all losses assumed finite, no dones)."""

    def _window_statistics(self, objective, dones):
        assert dones is None, "this variant only runs systems without done flags"
        return self._unmasked_statistics(sum_over_steps(objective))


class _BranchFreeTell(_NoNaNMasking):
    """Also: partners assumed in step, horizon reset by a select; no conditional in ``tell``."""

    def _gradient(self, stats, current, accumulator, state):
        P = self.num_pairs
        pair_sum = lambda coefficients: coefficients[:P] + coefficients[P:]
        gradient = pair_sum(stats.current) @ current[:P]
        if self.accumulates:
            gradient = gradient + pair_sum(stats.current) @ accumulator[:P]
        return gradient / (2.0 * jnp.maximum(stats.num_valid, 1))

    def _reset_inner(self, key, inner_state, reset):
        return self._replace_inner(key, inner_state, reset)


VARIANTS = {"no NaN masking": _NoNaNMasking, "branch-free tell": _BranchFreeTell}
CLASSES = {"PES": evopes.PES, "NRES": evopes.NRES}
#: The XLA flag of the second run (XLA reads its flags once, so it runs in a child process).
SCHEDULER_FLAG = "--xla_cpu_enable_concurrency_optimized_scheduler=false"


def _variant_class(kind: str, mixin):
    base = CLASSES[kind]
    return type(f"{base.__name__}{mixin.__name__}", (mixin, base), {})


def measure(quick: bool, seed: int) -> list[dict]:
    """The rows of one process (under whatever XLA flags it was started with)."""
    pairs = 100 if quick else 200
    particles = 2 * pairs
    repeats = 7 if quick else 21
    num_windows = speed_online.LORENZ_EPISODES * SYSTEM.horizon // speed_online.WINDOW
    rows = []
    for kind in CLASSES:
        names = ["shipped", *VARIANTS]
        classes = [CLASSES[kind]] + [_variant_class(kind, mixin) for mixin in VARIANTS.values()]
        loops = [
            speed_online._evopes_window(
                speed_online._evopes_strategy(kind, SYSTEM, particles, cls=cls), SYSTEM
            )
            for cls in classes
        ]
        loops += [
            speed_online._evosax_window(
                speed_online._evosax_strategy(kind, SYSTEM, particles), SYSTEM
            ),
            speed_online._bare_window(SYSTEM, particles),
        ]
        runs, seconds = speed_online._time_loops(loops, num_windows, seed, repeats)
        # The reduced versions compute what the shipped one does in these windows.
        key = jax.random.key(seed + 1)
        means = [block(run(carry, key)).mean for run, carry in runs[: len(classes)]]
        for index, name in enumerate([*names, "evosax", "bare unroll"]):
            rows.append(
                {
                    "strategy": f"{kind} Lorenz P={pairs}",
                    "variant": name,
                    "seconds": seconds[index],
                    "overhead": seconds[index] / seconds[-1],
                    "max_abs_diff": float(jnp.max(jnp.abs(means[index] - means[0])))
                    if index < len(means)
                    else None,
                }
            )
        del runs
    return rows


def _measure_in_child(quick: bool, seed: int, xla_flag: str) -> list[dict]:
    """``measure`` in a fresh process whose XLA starts with ``xla_flag`` (read once, at start)."""
    env = dict(os.environ)
    env["XLA_FLAGS"] = f"{env.get('XLA_FLAGS', '')} {xla_flag}".strip()
    code = (
        "import json; from evopes.bench.online_overhead import measure; "
        f"print('ROWS' + json.dumps(measure(quick={quick}, seed={seed})))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code],
        env=env,
        capture_output=True,
        text=True,
    )
    if result.returncode:
        raise RuntimeError(f"the run with {xla_flag} failed:\n{result.stderr[-3000:]}")
    line = next(line for line in result.stdout.splitlines() if line.startswith("ROWS"))
    return json.loads(line[len("ROWS") :])


def main(quick: bool, seed: int, out_dir: Path) -> list[dict]:
    rows = [{"xla_scheduler": "default", **row} for row in measure(quick, seed)]
    rows += [
        {"xla_scheduler": "concurrency-optimized off", **row}
        for row in _measure_in_child(quick, seed, SCHEDULER_FLAG)
    ]
    for row in rows:
        print(row, flush=True)
    write_results(
        NAME,
        rows,
        out_dir,
        quick=quick,
        seed=seed,
        extra={"window": speed_online.WINDOW, "second_run_xla_flags": SCHEDULER_FLAG},
    )
    _plot(rows, out_dir)
    return rows


def _plot(rows, out_dir):
    schedulers = list(dict.fromkeys(row["xla_scheduler"] for row in rows))
    fig, axes = plt.subplots(1, len(schedulers), figsize=(12, 4.5), sharey=True)
    for ax, scheduler in zip(np.atleast_1d(axes), schedulers, strict=True):
        mine = [row for row in rows if row["xla_scheduler"] == scheduler]
        strategies = list(dict.fromkeys(row["strategy"] for row in mine))
        variants = [v for v in dict.fromkeys(row["variant"] for row in mine) if v != "bare unroll"]
        width = 0.8 / len(variants)
        positions = np.arange(len(strategies))
        for index, variant in enumerate(variants):
            heights = [
                next(r["overhead"] for r in mine if r["strategy"] == s and r["variant"] == variant)
                for s in strategies
            ]
            offset = (index - (len(variants) - 1) / 2) * width
            ax.bar(positions + offset, heights, width, label=variant)
        ax.axhline(1.1, color="gray", linestyle="--", linewidth=1)
        ax.set_ylim(1.0, None)
        ax.set_xticks(positions, strategies)
        ax.set_title(f"XLA scheduler: {scheduler}", fontsize=10)
    np.atleast_1d(axes)[0].set_ylabel("time per window / bare unroll (dashed: 1.1)")
    np.atleast_1d(axes)[0].legend(fontsize=8)
    fig.suptitle("online strategy overhead on Lorenz (W = 100), safeguards removed")
    save_figure(fig, NAME, out_dir)


if __name__ == "__main__":
    cli(main)
