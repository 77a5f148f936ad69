"""The Adam-plus-MLP learned optimizer: at its starting theta it is optax.adam, step for step."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from evopes.tasks import digits
from evopes.tasks.adam_lopt import AdamLearnedOptimizerTask
from evopes.tasks.mlp import cross_entropy, init_mlp

TASK = AdamLearnedOptimizerTask(horizon=50, batch_size=32, lr0=3e-3)
NUM_STEPS = 20


@jax.jit
def _lopt_run(theta, key, step_keys):
    def one_step(inner, step_key):
        inner, loss, _ = TASK.step(inner, theta, step_key)
        return inner, loss

    inner, losses = jax.lax.scan(one_step, TASK.init_inner(key), step_keys)
    return inner.params, losses


@jax.jit
def _adam_run(learning_rate, key, step_keys):
    """optax.adam on the same batches (the step's train / validation keys)."""
    data, adam = digits.load_digits(), optax.adam(learning_rate)

    def one_step(carry, step_key):
        params, opt_state = carry
        train_key, valid_key = jax.random.split(step_key)
        images, labels = digits.sample_batch(train_key, data.train_images, data.train_labels, 32)
        grads = jax.grad(cross_entropy)(params, images, labels)
        updates, opt_state = adam.update(grads, opt_state, params)
        params = optax.apply_updates(params, updates)
        images, labels = digits.sample_batch(valid_key, data.valid_images, data.valid_labels, 32)
        return (params, opt_state), cross_entropy(params, images, labels)

    params = init_mlp(key, TASK.layer_sizes)
    (params, _), losses = jax.lax.scan(one_step, (params, adam.init(params)), step_keys)
    return params, losses


def _assert_params_close(a, b, rtol):
    # atol of a float32 ulp at the parameters' scale (~0.3) for entries that pass through 0.
    jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, rtol=rtol, atol=1e-7), a, b)


def test_theta_has_about_1_5k_parameters_and_starts_at_adam_lr0():
    theta = TASK.init_theta(jax.random.key(0))
    expected = (12 * 32 + 32) + (32 * 32 + 32) + (32 * 2 + 2) + 1 + 8
    assert sum(leaf.size for leaf in jax.tree.leaves(theta)) == expected == 1547
    assert float(theta["log_lr"]) == 0.0
    assert not np.any(np.asarray(theta["log_lr_schedule"]))
    assert not np.any(np.asarray(theta["mlp"][-1]["w"]))


def test_initial_theta_is_optax_adam_step_for_step():
    """theta at init (any hidden layers) is optax.adam(lr0): parameters and losses to 1e-6."""
    key, step_keys = jax.random.key(3), jax.random.split(jax.random.key(4), NUM_STEPS)
    theta = TASK.init_theta(jax.random.key(7))
    lopt_params, lopt_losses = _lopt_run(theta, key, step_keys)
    adam_params, adam_losses = _adam_run(TASK.lr0, key, step_keys)
    _assert_params_close(lopt_params, adam_params, rtol=1e-6)
    np.testing.assert_allclose(lopt_losses, adam_losses, rtol=1e-6)
    # The classifier really trained (the comparison is not between two frozen nets).
    start = init_mlp(key, TASK.layer_sizes)
    moved = jax.tree.map(lambda a, b: float(jnp.max(jnp.abs(a - b))), adam_params, start)
    assert max(jax.tree.leaves(moved)) > 1e-2
    assert float(adam_losses[-1]) < 0.9 * float(adam_losses[0])  # 2.30 -> 1.93


def test_adam_theta_is_adam_at_that_learning_rate():
    key, step_keys = jax.random.key(5), jax.random.split(jax.random.key(6), NUM_STEPS)
    lopt_params, _ = _lopt_run(TASK.adam_theta(1e-2), key, step_keys)
    adam_params, _ = _adam_run(1e-2, key, step_keys)
    # exp(log(lr / lr0)) * lr0 is lr to a float32 rounding, which 20 steps amplify a little.
    _assert_params_close(lopt_params, adam_params, rtol=1e-5)


def test_schedule_is_piecewise_linear_in_the_training_fraction():
    # Knots at u = 0, 1/7, ..., 1 of T = 50 steps; constant after the last one.
    values = jnp.asarray([0.0, 0.3, -0.2, 0.1, 0.5, -0.4, 0.2, -0.1], jnp.float32)
    theta = {**TASK.init_theta(jax.random.key(0)), "log_lr_schedule": values}
    steps = np.array([0, 3, 7, 25, 49, 50, 80])
    expected = np.interp(steps / 50, np.linspace(0, 1, 8), np.asarray(values))
    got = jax.vmap(lambda t: TASK.schedule(theta, t))(jnp.asarray(steps))
    np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-7)
    assert got[-1] == values[-1]  # beyond the horizon: exactly the last knot


def test_a_learned_schedule_is_adam_with_that_learning_rate_schedule():
    """lr_t = lr0 exp(log_lr_mult (log_lr + schedule(t))): optax.adam with that schedule."""
    values = jnp.asarray([0.05, 0.1, -0.05, -0.1, 0.0, 0.1, 0.0, -0.2], jnp.float32)
    theta = {**TASK.init_theta(jax.random.key(7)), "log_lr_schedule": values}
    key, step_keys = jax.random.key(3), jax.random.split(jax.random.key(4), NUM_STEPS)
    knots = np.linspace(0, 1, 8)

    def learning_rate(count):  # optax counts from 0, as the task's step does
        offset = jnp.interp(count / TASK.horizon, knots, values)
        return TASK.lr0 * jnp.exp(TASK.log_lr_mult * offset)

    lopt_params, _ = _lopt_run(theta, key, step_keys)
    adam_params, _ = jax.jit(lambda k, s: _adam_run.__wrapped__(learning_rate, k, s))(
        key, step_keys
    )
    # The two compute lr_t in different orders (a float32 ulp apart), which 20 steps amplify
    # to ~1.6e-5 in one of 2048 entries; ignoring the schedule moves them by > 1e-3.
    _assert_params_close(lopt_params, adam_params, rtol=3e-5)


@pytest.mark.parametrize("part", ["output", "log_lr", "log_lr_schedule"])
def test_changing_theta_changes_the_trajectory(part):
    key, step_keys = jax.random.key(3), jax.random.split(jax.random.key(4), NUM_STEPS)
    theta = TASK.init_theta(jax.random.key(7))
    if part == "output":  # the MLP's correction: direction and step-size outputs
        last = theta["mlp"][-1]
        theta["mlp"][-1] = {"w": last["w"] + 0.01, "b": last["b"] + 0.01}
    elif part == "log_lr":
        theta = {**theta, "log_lr": jnp.float32(0.05)}
    else:  # one knot, at u = 1/7 (step 7 of 50): steps 1..14 change
        theta = {**theta, "log_lr_schedule": theta["log_lr_schedule"].at[1].set(0.05)}
    lopt_params, _ = _lopt_run(theta, key, step_keys)
    adam_params, _ = _adam_run(TASK.lr0, key, step_keys)
    gap = max(
        jax.tree.leaves(
            jax.tree.map(lambda a, b: float(jnp.max(jnp.abs(a - b))), lopt_params, adam_params)
        )
    )
    assert gap > 1e-3  # 10^4 times the tolerance of the equality above


def test_bad_configuration_names_the_argument():
    with pytest.raises(ValueError, match="lr0"):
        AdamLearnedOptimizerTask(lr0=0.0)
    with pytest.raises(ValueError, match="schedule_knots"):
        AdamLearnedOptimizerTask(schedule_knots=1)
    with pytest.raises(ValueError, match="learning_rate"):
        TASK.adam_theta(-1.0)


def _lowered_apply(layer_sizes, num_particles=3):
    """StableHLO of the learned optimizer applied to a batch of particles (as the engine does)."""
    task = AdamLearnedOptimizerTask(horizon=50, layer_sizes=layer_sizes)
    keys = jax.random.split(jax.random.key(0), num_particles)
    inner = jax.vmap(task.init_inner)(keys)
    theta = jax.vmap(task.init_theta)(keys)
    grads = inner.params
    return jax.jit(jax.vmap(task.apply_lopt)).lower(theta, inner, grads).as_text()


def test_the_step_is_one_batched_pass_whatever_the_number_of_tensors():
    """No per-tensor work: the classifier's depth does not change the program's matmuls.

    Per-tensor normalisation is two matmuls with a membership matrix and the MLP three,
    plus the time-feature bias: every one batched over particles, none per tensor.
    """
    shallow = _lowered_apply((64, 10))  # 2 tensors
    deep = _lowered_apply((64, 32, 32, 32, 32, 10))  # 10 tensors
    count = lambda text: text.count("stablehlo.dot_general")
    assert count(shallow) == count(deep) == 6
    assert "stablehlo.while" not in deep


def test_late_weighted_objective_weighs_step_t_by_closed_form():
    # w_t = (1 + q) (t / T)^q: T = 4, q = 3 gives 4 (t/4)^3; q = 0 is the paper's mean.
    late = AdamLearnedOptimizerTask(horizon=4, batch_size=32, late_weight_power=3.0)
    np.testing.assert_allclose(late.weights(jnp.arange(1, 5)), [0.0625, 0.5, 1.6875, 4.0])
    np.testing.assert_array_equal(TASK.weights(jnp.arange(1, 5)), np.ones(4))
    # step() returns the weighted loss: same inner state and key, only q differs.
    late = AdamLearnedOptimizerTask(horizon=50, batch_size=32, lr0=3e-3, late_weight_power=2.0)
    theta, key = TASK.init_theta(jax.random.key(1)), jax.random.key(2)
    inner = TASK.init_inner(jax.random.key(3))._replace(step=jnp.int32(24))  # t = 25 after
    plain, weighted = TASK.step(inner, theta, key)[1], late.step(inner, theta, key)[1]
    np.testing.assert_allclose(weighted / plain, 3 * 0.5**2, rtol=1e-6)
    # The meta-loss is the same weighted mean of the validation curve.
    curve = late.lopt_curve(theta, key, 50)
    expected = np.mean(3 * (np.arange(1, 51) / 50) ** 2 * np.asarray(curve))
    np.testing.assert_allclose(late.meta_loss(theta, key, 50), expected, rtol=1e-5)
