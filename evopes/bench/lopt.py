"""Meta-training a learned optimizer on 8x8 digits: NRES vs PES vs GPES vs FullES (NRES paper).

The task (``evopes.tasks.adam_lopt``): an Adam-plus-MLP learned optimizer with
a learned learning-rate schedule (1547 parameters; theta = init is Adam at
``lr0 = 1e-3``) trains a
64-32-32-32-10 gelu MLP on ``digits`` for T inner steps; the meta-loss is the
mean validation loss over the T steps (Li et al. 2023, section 5.3; the paper
used 8x8 Fashion-MNIST, which is not available offline: the bundled
scikit-learn digits stand in).

Default configuration, the paper's setting: W = 1, T = 1000, N = 100
particles per online strategy, i.e. 50 antithetic pairs (each pair shares a
classifier and its data, and its two members run theta + e and theta - e),
step-unlocked with a burn-in of T windows, sigma = 0.01, meta-optimizer Adam at
the paper's 3e-4. Methods: NRES, PES and GPES_K (K = 32, about sqrt(T), between
PES's K = 1 and NRES's K = T), 1000 updates after the burn-in; FullES with 10
pairs (the paper's) and the same total unroll steps as the online methods, one
update per T sequential steps. Three meta-training seeds each.

Timing: each method's windows (or generations) run in compiled blocks between
evaluations; the wall-clock column sums the blocks only (the evaluations, the
compilation and the first call of each block are excluded, as in the paper).
Curves: the meta-loss (``task.meta_loss`` of the mean theta on ``EVAL_KEYS``
fresh runs, whole validation split) against sequential steps (burn-in
included). ``level`` is the common meta-loss level: half-way from the initial
meta-loss to NRES's final one (mean over seeds); the rows give how many seeds
of each method reach it and the sequential steps and seconds they needed
(means and standard deviations over the seeds that reach it).

Meta-generalisation: every meta-trained theta (all methods and seeds; of each
run's evaluated thetas the one with the lowest meta-loss on the ``EVAL_KEYS``
meta-validation runs, which the test seeds below never touch) trains
fresh classifiers (``FRESH_SEEDS`` new seeds) in three settings, (a) the
meta-training MLP for T steps, (b) a different MLP (``OTHER_LAYERS``, wider
and shallower) for T steps, (c) the meta-training MLP for 2T steps (the optimizer is told the run's
length: its schedule runs over t / 2T), against
Adam at the learning rate of ``ADAM_LEARNING_RATES`` with the lowest
validation loss at the end of the run on ``TUNE_SEEDS`` held-out seeds
(tuned per setting), and against the starting point (Adam at lr0).
Reported: the validation loss at the end of the run and its mean over the
run, means and standard deviations over seeds.

The paper's meta-objective, the mean validation loss over the run, rewards
training fast early; a user keeps the classifier at the end. So NRES is also
meta-trained (same setting and seeds, ``late_windows`` updates) on the
objective weighted towards the end, per-step weights w_t = (1 + q) (t / T)^q
with q = ``LATE_WEIGHT_POWER`` = 30 (``AdamLearnedOptimizerTask(late_weight_power=q)``;
the last 10% of the steps carry 96% of the weight, a smoothed "validation loss
after T"). This run starts from the tuned Adam itself
(``task.adam_theta(tuned learning rate)``, tuned as below), so the question it
answers is whether meta-training improves on the tuned Adam, and its
meta-optimizer is Adam at ``late_lr`` (1e-4, a third of the paper's rate: at
3e-4 the run wanders, its meta-validation loss jumping by as much as 65%
from one evaluation to the next). Its final weighted meta-loss is in
``late_weighted_rows`` and its theta in the generalisation table. It is not
part of the method comparison (another objective, another start, three times
the updates: the end of training is a weaker signal per window).

``--quick`` (minutes): T = 50, 8 pairs, 250 updates, meta-Adam 1e-3, two
seeds; it shows the direction (the meta-trained optimizer beats its start,
NRES needs fewer sequential steps than FullES), not the paper's numbers.
"""

from __future__ import annotations

import functools
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import matplotlib.pyplot as plt
import numpy as np
import optax

import evopes
from evopes import threefry
from evopes.bench.common import cli, save_figure, write_results
from evopes.tasks.adam_lopt import AdamLearnedOptimizerTask
from evopes.tasks.training import episode_fitness

NAME = "lopt"
STD = 0.01
EVAL_KEYS = 4
FRESH_SEEDS = 16
TUNE_SEEDS = 2
ADAM_LEARNING_RATES = (1e-3, 3e-3, 1e-2, 3e-2, 1e-1)
OTHER_LAYERS = (64, 128, 128, 10)
#: q of the meta-objective weighted towards the end of training (see the module docstring).
LATE_WEIGHT_POWER = 30.0
LATE_NAME = f"NRES (late-weighted q={LATE_WEIGHT_POWER:g}, from tuned Adam)"

FULL = {
    "horizon": 1000,
    "num_pairs": 50,
    "num_windows": 1000,
    "online_lr": 3e-4,
    "gpes_period": 32,
    "fulles_pairs": 10,
    "fulles_lr": 3e-4,
    "num_evals": 10,
    "num_seeds": 3,
    "late_windows": 3000,
    "late_lr": 1e-4,
}
QUICK = {
    "horizon": 50,
    "num_pairs": 8,
    "num_windows": 250,
    "online_lr": 1e-3,
    "gpes_period": 8,
    "fulles_pairs": 10,
    "fulles_lr": 1e-3,
    "num_evals": 10,
    "num_seeds": 2,
    "late_windows": 750,
    "late_lr": 3e-4,
}


def _timed(fn, *args):
    """(result, seconds) of a compiled call, synchronised."""
    start = time.perf_counter()
    result = jax.block_until_ready(fn(*args))
    return result, time.perf_counter() - start


@functools.partial(jax.jit, static_argnums=(0, 1))
def _windows(es, task, params, state, keys):
    """ask / unroll / tell for each key, in one compiled scan (compiled once per method)."""

    def window(state, key):
        ask_key, unroll_key, tell_key = threefry.split(key, 3)
        population, state = es.ask(ask_key, state, params)
        inner, losses, dones = evopes.unroll(
            task.step, population, es.get_inner_state(state), unroll_key, es.truncation_length
        )
        state, metrics = es.tell(
            tell_key, population, losses, state, params, inner_state=inner, dones=dones
        )
        return state, (metrics["sequential_steps"], metrics["total_steps"])

    return jax.lax.scan(window, state, keys)


@functools.partial(jax.jit, static_argnums=(0, 1))
def _generation(es, task, params, state, key):
    """One FullES generation: a whole T-step episode per member, then tell."""
    ask_key, episode_key, tell_key = threefry.split(key, 3)
    population, state = es.ask(ask_key, state, params)
    fitness = episode_fitness(task.init_inner, task.step, task.horizon, population, episode_key)
    state, _ = es.tell(tell_key, population, fitness, state, params)
    return state


_COMPILED: dict = {}


def _compiled(function, es, task, params, state, key_or_keys):
    """``function`` compiled once per (function, strategy, task): the timed calls never compile."""
    cache_key = (function, es, task)
    if cache_key not in _COMPILED:
        _COMPILED[cache_key] = function.lower(es, task, params, state, key_or_keys).compile()
    return _COMPILED[cache_key]


def meta_train_online(es, params, theta, key, task, num_blocks, block_windows, evaluate):
    """ask / unroll / tell in compiled blocks; evaluation between blocks, outside the timing.

    Returns (theta, sequential steps, total steps, seconds, meta-loss) per block.
    """
    init_key, loop_key = jax.random.split(key)
    state = es.init(init_key, theta, params)
    keys = jax.random.split(loop_key, num_blocks * block_windows).reshape(
        (num_blocks, block_windows)
    )
    windows = _compiled(_windows, es, task, params, state, keys[0])
    rows, seconds = [], 0.0
    for block_keys in keys:
        (state, (sequential, total)), elapsed = _timed(windows, params, state, block_keys)
        seconds += elapsed
        mean = es.get_mean(state)
        rows.append((mean, int(sequential[-1]), int(total[-1]), seconds, float(evaluate(mean))))
    return rows


def meta_train_fulles(es, params, theta, key, task, num_generations, evaluate):
    """FullES, one whole T-step episode per member and generation; timed like the online ones."""
    init_key, loop_key = jax.random.split(key)
    state = es.init(init_key, theta, params)
    keys = jax.random.split(loop_key, num_generations)
    generation = _compiled(_generation, es, task, params, state, keys[0])
    rows, seconds = [], 0.0
    for index, generation_key in enumerate(keys):
        state, elapsed = _timed(generation, params, state, generation_key)
        seconds += elapsed
        mean = es.get_mean(state)
        count = index + 1
        rows.append(
            (
                mean,
                count * task.horizon,
                count * es.population_size * task.horizon,
                seconds,
                float(evaluate(mean)),
            )
        )
    return rows


def _reach(rows, level):
    """(sequential steps, total steps, seconds) at the first evaluation at or below level."""
    for _, sequential, total, seconds, meta_loss in rows:
        if meta_loss <= level:
            return sequential, total, seconds
    return None, None, None


def _mean_std(values):
    values = [v for v in values if v is not None]
    if not values:
        return None, None
    return float(np.mean(values)), float(np.std(values))


def _evaluator(task, eval_keys):
    """theta -> task's meta-loss of theta, averaged over ``eval_keys`` fresh runs (jitted)."""
    return jax.jit(lambda th: jnp.mean(jax.vmap(lambda k: task.meta_loss(th, k))(eval_keys)))


def _online_runs(strategy_class, extra, task, config, seeds, evaluate, init_theta=None):
    """Meta-training runs of one online strategy on ``task``, one per seed.

    Each run starts from ``init_theta(key)`` (default ``task.init_theta``).
    """
    init_theta = task.init_theta if init_theta is None else init_theta
    theta0 = init_theta(jax.random.key(seeds[0]))
    es = strategy_class(
        population_size=2 * config["num_pairs"],
        solution=theta0,
        truncation_length=1,
        horizon=task.horizon,
        init_inner=task.init_inner,
        optimizer=optax.adam(config["online_lr"]),
        **extra,
    )
    num_windows = es.burn_in_windows + config["num_windows"]
    block = num_windows // config["num_evals"]
    params = es.default_params.replace(std=STD)
    return [
        meta_train_online(
            es,
            params,
            init_theta(jax.random.key(s)),
            jax.random.key(s),
            task,
            config["num_evals"],
            block,
            evaluate,
        )
        for s in seeds
    ]


def main(quick: bool, seed: int, out_dir: Path) -> list[dict]:
    config = QUICK if quick else FULL
    T = config["horizon"]
    task = AdamLearnedOptimizerTask(horizon=T)
    seeds = [seed + i for i in range(config["num_seeds"])]
    eval_keys = jax.random.split(jax.random.key(seed + 1000), EVAL_KEYS)
    evaluate = _evaluator(task, eval_keys)
    theta0 = task.init_theta(jax.random.key(seed))
    initial = float(evaluate(theta0))

    online = {
        "NRES": (evopes.NRES, {}),
        "PES": (evopes.PES, {}),
        f"GPES K={config['gpes_period']}": (
            evopes.GPES,
            {"noise_period": config["gpes_period"]},
        ),
    }
    runs = {
        name: _online_runs(strategy_class, extra, task, config, seeds, evaluate)
        for name, (strategy_class, extra) in online.items()
    }
    budget = runs["NRES"][0][-1][2]
    fulles = evopes.FullES(
        population_size=2 * config["fulles_pairs"],
        solution=theta0,
        optimizer=optax.adam(config["fulles_lr"]),
    )
    generations = max(1, budget // (fulles.population_size * T))
    runs["FullES"] = [
        meta_train_fulles(
            fulles,
            fulles.default_params.replace(std_init=STD),
            task.init_theta(jax.random.key(s)),
            jax.random.key(s),
            task,
            generations,
            evaluate,
        )
        for s in seeds
    ]

    # NRES on the meta-objective weighted towards the end of training, starting from the
    # tuned Adam (not in the level comparison above: another objective and start); its
    # theta joins the generalisation table.
    late_task = AdamLearnedOptimizerTask(horizon=T, late_weight_power=LATE_WEIGHT_POWER)
    late_evaluate = _evaluator(late_task, eval_keys)
    late_config = {
        **config,
        "num_windows": config["late_windows"],
        "online_lr": config["late_lr"],
    }
    tuned_lr = _tuned_adam_lr(task, T, seed)
    late_start = functools.partial(task.adam_theta, tuned_lr)
    late_runs = _online_runs(
        evopes.NRES, {}, late_task, late_config, seeds, late_evaluate, late_start
    )
    late_final, late_final_std = _mean_std([r[-1][4] for r in late_runs])
    late_rows = [
        {
            "method": "NRES",
            "objective": f"late-weighted, q = {LATE_WEIGHT_POWER:g}",
            "start": f"Adam lr={tuned_lr:g} (tuned)",
            "initial_meta_loss": float(late_evaluate(late_start(jax.random.key(seed)))),
            "final_meta_loss": late_final,
            "final_meta_loss_std": late_final_std,
        }
    ]

    # The common level: half-way from the start to NRES's final meta-loss (mean over seeds).
    level = initial - 0.5 * (initial - np.mean([r[-1][4] for r in runs["NRES"]]))
    rows = [{"method": "Adam lr0 (start)", "final_meta_loss": initial, "final_meta_loss_std": 0.0}]
    for name, seed_runs in runs.items():
        reached = [_reach(r, level) for r in seed_runs]
        final, final_std = _mean_std([r[-1][4] for r in seed_runs])
        sequential, sequential_std = _mean_std([x[0] for x in reached])
        seconds, seconds_std = _mean_std([x[2] for x in reached])
        rows.append(
            {
                "method": name,
                "final_meta_loss": final,
                "final_meta_loss_std": final_std,
                "seeds_reaching_level": sum(x[0] is not None for x in reached),
                "sequential_steps_to_level": sequential,
                "sequential_steps_to_level_std": sequential_std,
                "seconds_to_level": seconds,
                "seconds_to_level_std": seconds_std,
                "total_steps": seed_runs[0][-1][2],
                "seconds_total": float(np.mean([r[-1][3] for r in seed_runs])),
            }
        )

    trained = {**runs, LATE_NAME: late_runs}
    generalisation_rows, fresh_curves = _generalisation(task, theta0, trained, seed)
    write_results(
        NAME,
        rows,
        out_dir,
        quick=quick,
        seed=seed,
        extra={
            "generalisation_rows": generalisation_rows,
            "late_weighted_rows": late_rows,
            "settings": {
                **config,
                "std": STD,
                "lr0": task.lr0,
                "seeds": seeds,
                "level": level,
                "fulles_generations": generations,
                "eval_keys": EVAL_KEYS,
                "fresh_seeds": FRESH_SEEDS,
                "tune_seeds": TUNE_SEEDS,
                "adam_learning_rates": list(ADAM_LEARNING_RATES),
                "other_layers": list(OTHER_LAYERS),
                "backend": jax.default_backend(),
            },
        },
    )
    save_figure(_figure(runs, initial, level, fresh_curves, T), NAME, out_dir)
    return rows


def _checkpoint(rows):
    """The theta a user keeps from a run: the evaluated one with the lowest meta-loss.

    The meta-loss is measured on ``EVAL_KEYS`` runs that neither meta-training nor the
    fresh test seeds use (meta-validation, as one keeps the best checkpoint of a training).
    """
    return min(rows, key=lambda row: row[4])[0]


def _adam_curves(task, num_steps):
    """(learning rates, keys) -> validation-loss curves of Adam, jitted over both."""
    curve = functools.partial(task.adam_curve, num_steps=num_steps)
    return jax.jit(jax.vmap(jax.vmap(curve, in_axes=(None, 0)), in_axes=(0, None)))


@functools.cache  # main tunes the meta-training setting before meta-training, then again
def _tuned_adam_lr(task, num_steps, seed):
    """The rate of ``ADAM_LEARNING_RATES`` with the lowest mean validation loss after
    ``num_steps`` on ``TUNE_SEEDS`` held-out seeds (seeds no other part uses)."""
    tune_keys = jax.random.split(jax.random.key(seed + 2000), TUNE_SEEDS)
    final = np.asarray(_adam_curves(task, num_steps)(jnp.asarray(ADAM_LEARNING_RATES), tune_keys))
    return ADAM_LEARNING_RATES[int(np.argmin(final[:, :, -1].mean(1)))]


def paired_with(per_theta, reference):
    """Final losses minus the reference's on the same fresh seed, shape (thetas, seeds).

    ``per_theta``: one (seeds, steps) curve array per theta; ``reference``: (seeds, steps),
    the same seeds in the same order (same classifier initialisation and batches).
    """
    return np.stack([curves[:, -1] for curves in per_theta]) - reference[:, -1]


def _generalisation(task, theta0, runs, seed):
    """Fresh classifiers trained by every meta-trained theta, by tuned Adam and by the start."""
    settings = {
        "same MLP, T": (task, task.horizon),
        f"MLP {'-'.join(map(str, OTHER_LAYERS))}, T": (
            AdamLearnedOptimizerTask(horizon=task.horizon, layer_sizes=OTHER_LAYERS),
            task.horizon,
        ),
        # The learned schedule runs over the training fraction t / horizon: a 2T run is told
        # its length (as a user tells VeLO its step budget) and stretches the schedule.
        "same MLP, 2T": (AdamLearnedOptimizerTask(horizon=2 * task.horizon), 2 * task.horizon),
    }
    fresh_keys = jax.random.split(jax.random.key(seed + 3000), FRESH_SEEDS)
    rows, curves = [], {}
    for setting, (setting_task, num_steps) in settings.items():
        adam = _adam_curves(setting_task, num_steps)
        lopt = jax.jit(
            jax.vmap(
                lambda th, k, t=setting_task, n=num_steps: t.lopt_curve(th, k, n), in_axes=(None, 0)
            )
        )
        best_lr = _tuned_adam_lr(setting_task, num_steps, seed)
        tuned = np.asarray(adam(jnp.asarray([best_lr]), fresh_keys))[0]
        candidates = {
            f"Adam lr={best_lr:g} (tuned)": [tuned],
            f"Adam lr0={task.lr0:g} (start)": [np.asarray(lopt(theta0, fresh_keys))],
        }
        for name, seed_runs in runs.items():
            candidates[f"{name}-trained"] = [
                np.asarray(lopt(_checkpoint(r), fresh_keys)) for r in seed_runs
            ]
        for name, per_theta in candidates.items():
            curve = np.concatenate(per_theta)  # (thetas x fresh seeds, steps)
            paired = paired_with(per_theta, tuned)
            rows.append(
                {
                    "setting": setting,
                    "optimizer": name,
                    "final_valid_loss": float(curve[:, -1].mean()),
                    "final_valid_loss_std": float(curve[:, -1].std()),
                    "mean_valid_loss": float(curve.mean()),
                    "mean_valid_loss_std": float(curve.mean(axis=1).std()),
                    "final_minus_tuned_adam": float(paired.mean()),
                    "runs_below_tuned_adam": f"{int(np.sum(paired < 0))}/{paired.size}",
                }
            )
            if setting == "same MLP, T":
                curves[name] = curve.mean(axis=0)
    return rows, curves


def _figure(runs, initial, level, fresh, horizon):
    fig, (ax_meta, ax_fresh) = plt.subplots(1, 2, figsize=(12, 4.5))
    for index, (name, seed_runs) in enumerate(runs.items()):
        for seed_index, rows in enumerate(seed_runs):
            sequential = [0] + [r[1] for r in rows]
            meta_loss = [initial] + [r[4] for r in rows]
            ax_meta.plot(
                sequential,
                meta_loss,
                "o-",
                ms=3,
                color=f"C{index}",
                alpha=0.8,
                label=name if seed_index == 0 else None,
            )
    ax_meta.axhline(level, color="k", ls="--", lw=1, label="common level")
    ax_meta.axvline(horizon, color="k", ls=":", lw=1, label="end of the online burn-in")
    ax_meta.set(
        xlabel="sequential inner steps (burn-in included)",
        ylabel=f"meta-loss (mean validation loss over T = {horizon})",
        title="meta-training (one line per seed)",
    )
    ax_meta.legend(fontsize=8)
    steps = np.arange(1, horizon + 1)
    for name, curve in fresh.items():
        method = name.removesuffix("-trained")
        if method in runs:
            style = {"color": f"C{list(runs).index(method)}"}
        elif method == LATE_NAME:
            style = {"color": f"C{len(runs)}", "ls": "-."}
        else:
            style = {"color": "k", "ls": "--" if "tuned" in name else ":"}
        ax_fresh.plot(steps, curve, label=f"{name}: {curve[-1]:.3f} at T", **style)
    ax_fresh.set(
        xlabel="inner step",
        ylabel="validation loss",
        yscale="log",
        title="training fresh MLPs for T steps (mean over seeds)",
    )
    ax_fresh.legend(fontsize=7)
    return fig


if __name__ == "__main__":
    cli(main)
