"""Tuning a learning-rate schedule through whole training runs: PES vs truncated ES.

Run: ``python docs/tutorials/lr_schedule.py`` (T = 1000 SGD steps per run, a
few minutes on a laptop CPU); ``main(quick=True)`` is the short version the
tests run.
"""

import jax
import jax.numpy as jnp
import optax

import evopes
from evopes.tasks.lr_schedule import LRScheduleTask


def tune(strategy_class, task, truncation_length, key, num_pairs, num_windows):
    """Online ES on theta = (log lr0, log decay); returns the final theta."""
    theta = jnp.array([-4.0, 2.0])  # lr0 ~ 0.018 decaying within ~7 steps: almost no learning
    es = strategy_class(
        population_size=2 * num_pairs,
        solution=theta,
        truncation_length=truncation_length,  # K inner SGD steps per ask/tell window
        horizon=task.horizon,  # T: a fresh training run every T steps
        init_inner=task.init_inner,
        # Adam, its step size decaying from 0.05 to 0.005: travel fast, then settle.
        optimizer=optax.adam(optax.cosine_decay_schedule(0.05, num_windows, alpha=0.1)),
    )
    params = es.default_params.replace(std=0.3)
    init_key, loop_key = jax.random.split(key)
    state = es.init(init_key, theta, params)

    def window(state, key):
        ask_key, unroll_key, tell_key = jax.random.split(key, 3)
        population, state = es.ask(ask_key, state, params)
        inner, losses, dones = evopes.unroll(
            task.step, population, es.get_inner_state(state), unroll_key, es.truncation_length
        )
        state, metrics = es.tell(
            tell_key, population, losses, state, params, inner_state=inner, dones=dones
        )
        return state, metrics["mean_loss"]

    keys = jax.random.split(loop_key, es.burn_in_windows + num_windows)
    state, _ = jax.jit(lambda state, keys: jax.lax.scan(window, state, keys))(state, keys)
    return es.get_mean(state)


def main(quick: bool = True) -> dict:
    task = LRScheduleTask(horizon=1000)
    num_pairs, num_windows = (16, 300) if quick else (16, 1000)
    meta_objective = jax.jit(lambda theta: task.meta_objective(theta, jax.random.key(99), 4))
    results = {}
    # "ES" at K = 10 is truncated ES: each window's gradient ignores how theta shaped the state
    # the window starts from. PES accumulates the noise of the whole run and is unbiased.
    for name, strategy_class in (("truncated ES", evopes.TES), ("PES", evopes.PES)):
        theta = tune(strategy_class, task, 10, jax.random.key(0), num_pairs, num_windows)
        results[name] = {
            "theta": [float(v) for v in theta],
            "meta_objective": float(meta_objective(theta)),
        }
        lr0, decay = jnp.exp(theta)
        print(
            f"{name:12s} K=10: lr0 = {lr0:.3f}, decay = {decay:7.1f} steps, "
            f"meta-objective = {results[name]['meta_objective']:.3f}"
        )
    return results


if __name__ == "__main__":
    main(quick=False)
