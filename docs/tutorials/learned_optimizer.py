"""Meta-training a learned optimizer with NRES, then using it on a fresh network.

Run: ``python docs/tutorials/learned_optimizer.py`` (T = 200 inner steps, a few
minutes on a laptop CPU); ``main(quick=True)`` is the short version the tests run.
"""

import jax
import jax.numpy as jnp
import optax

import evopes
from evopes.tasks.adam_lopt import AdamLearnedOptimizerTask


def meta_train(task, theta, key, num_pairs, num_windows, learning_rate):
    """NRES with W = 1: one ask / one inner step per particle / one tell per window.

    The windows run inside one jitted ``lax.scan``.
    """
    es = evopes.NRES(
        # Antithetic pairs: particle i runs theta + e_i, particle i + P runs theta - e_i.
        population_size=2 * num_pairs,
        solution=theta,  # the learned optimizer's parameters (a pytree)
        truncation_length=1,  # W = 1: an update after every inner step
        horizon=task.horizon,  # T: a particle's training run restarts every T steps
        init_inner=task.init_inner,  # a fresh classifier and zero optimizer accumulators
        optimizer=optax.adam(learning_rate),
    )
    params = es.default_params.replace(std=0.01)
    init_key, loop_key = jax.random.split(key)
    state = es.init(init_key, theta, params)  # particles start at random times in [0, T)

    def window(state, key):
        ask_key, unroll_key, tell_key = jax.random.split(key, 3)
        population, state = es.ask(ask_key, state, params)
        inner, losses, dones = evopes.unroll(  # partners share data batches (common random numbers)
            task.step, population, es.get_inner_state(state), unroll_key, es.truncation_length
        )
        state, metrics = es.tell(
            tell_key, population, losses, state, params, inner_state=inner, dones=dones
        )
        return state, metrics["mean_loss"]

    # The first T windows are a burn-in (metrics["burn_in"]): estimates are not applied
    # until every particle has restarted from a genuine episode start.
    keys = jax.random.split(loop_key, es.burn_in_windows + num_windows)
    state, _ = jax.jit(lambda state, keys: jax.lax.scan(window, state, keys))(state, keys)
    return es.get_mean(state)


def main(quick: bool = True) -> dict:
    # theta = init is Adam at lr0 = 1e-3: meta-training starts from a sound optimizer.
    task = AdamLearnedOptimizerTask(horizon=50 if quick else 200)
    num_pairs, num_windows, learning_rate = (8, 250, 3e-3) if quick else (16, 2000, 1e-3)
    theta = task.init_theta(jax.random.key(0))
    eval_keys = jax.random.split(jax.random.key(1), 4)
    meta_loss = jax.jit(lambda th: jnp.mean(jax.vmap(lambda k: task.meta_loss(th, k))(eval_keys)))

    before = float(meta_loss(theta))
    theta = meta_train(task, theta, jax.random.key(2), num_pairs, num_windows, learning_rate)
    after = float(meta_loss(theta))
    print(f"meta-loss (mean validation loss over T = {task.horizon}): {before:.3f} -> {after:.3f}")

    # The meta-trained optimizer on new networks, next to Adam at a few learning rates
    # (Adam 1e-3 is where theta started).
    test_keys = jax.random.split(jax.random.key(3), 4)
    lopt_final = float(
        jnp.mean(jax.jit(jax.vmap(task.lopt_curve, in_axes=(None, 0)))(theta, test_keys)[:, -1])
    )
    adam = jax.jit(jax.vmap(task.adam_curve, in_axes=(None, 0)))
    adam_final = {lr: float(jnp.mean(adam(lr, test_keys)[:, -1])) for lr in (1e-3, 1e-2, 1e-1)}
    print(
        f"validation loss after T steps: learned optimizer {lopt_final:.3f}; "
        + ", ".join(f"Adam {lr:g} {loss:.3f}" for lr, loss in adam_final.items())
    )
    # The learned learning rate over the run (the MLP's step-size correction comes on top).
    steps = [0, task.horizon // 2, task.horizon - 1]
    schedule = [float(task.learning_rate(theta, t)) for t in steps]
    print(
        "learned learning rate at t = "
        + ", ".join(f"{t}: {lr:.2g}" for t, lr in zip(steps, schedule, strict=True))
        + f" (started at {task.lr0:g} throughout)"
    )
    return {
        "learned_learning_rate": schedule,
        "meta_loss_before": before,
        "meta_loss_after": after,
        "lopt_final_valid_loss": lopt_final,
        "adam_final_valid_loss": adam_final,
    }


if __name__ == "__main__":
    main(quick=False)
