"""The learning-rate-schedule task: the schedule's closed form and known answers."""

import jax
import jax.numpy as jnp
import numpy as np
import optax

from evopes.tasks import digits
from evopes.tasks.lr_schedule import LRScheduleTask
from evopes.tasks.mlp import cross_entropy, init_mlp

SHORT = LRScheduleTask(horizon=30)
LOSSES = jax.jit(SHORT.losses)  # compiled once, shared by the tests


def test_inverse_time_decay_closed_form():
    theta = jnp.log(jnp.array([0.4, 100.0]))
    steps = jnp.array([0, 100, 300])
    # lr0 / (1 + t / decay): 0.4, 0.4 / 2, 0.4 / 4.
    np.testing.assert_allclose(SHORT.learning_rate(theta, steps), [0.4, 0.2, 0.1], rtol=1e-6)


def test_infinite_decay_is_constant_learning_rate_sgd():
    """theta1 -> infinity (t / e^80 rounds to 0 in float32): exactly optax.sgd(lr0)."""
    learning_rate, task = 0.3, SHORT
    theta = jnp.array([jnp.log(learning_rate), 80.0])
    data = digits.load_digits()
    key = jax.random.key(2)
    sgd = optax.sgd(jnp.exp(theta[0]))

    def reference(key):
        def one_step(carry, step_key):
            params, opt_state = carry
            train_key, valid_key = jax.random.split(step_key)
            images, labels = digits.sample_batch(
                train_key, data.train_images, data.train_labels, task.batch_size
            )
            updates, opt_state = sgd.update(
                jax.grad(cross_entropy)(params, images, labels), opt_state
            )
            params = optax.apply_updates(params, updates)
            images, labels = digits.sample_batch(
                valid_key, data.valid_images, data.valid_labels, task.batch_size
            )
            return (params, opt_state), cross_entropy(params, images, labels)

        init_key, run_key = jax.random.split(key)
        params = init_mlp(init_key, task.layer_sizes)
        keys = jax.random.split(run_key, task.horizon)
        return jax.lax.scan(one_step, (params, sgd.init(params)), keys)[1]

    losses = LOSSES(theta, key)
    np.testing.assert_allclose(losses, jax.jit(reference)(key), rtol=1e-6)
    assert float(losses[-1]) < 0.7 * float(losses[0])  # SGD at 0.3 does train the network


def test_diverging_runs_give_the_clipped_loss_not_nan():
    """A learning rate of e^6 ~ 400 diverges; every step's loss is finite and <= max_loss."""
    losses = LOSSES(jnp.array([6.0, 80.0]), jax.random.key(0))
    assert bool(jnp.all(jnp.isfinite(losses)))
    assert float(jnp.max(losses)) <= SHORT.max_loss
    assert float(losses[-1]) == SHORT.max_loss


def test_grid_uses_common_random_numbers():
    """A grid point equals meta_objective there (same keys); the layout is (theta1, theta0)."""
    task = SHORT
    theta0, theta1 = jnp.array([-3.0, -0.5]), jnp.array([1.0, 5.0, 9.0])
    grid = jax.jit(lambda k: task.grid(theta0, theta1, k))(jax.random.key(1))
    assert grid.shape == (3, 2)
    direct = jax.jit(task.meta_objective)(jnp.array([-0.5, 5.0]), jax.random.key(1))
    np.testing.assert_allclose(grid[1, 1], direct, rtol=1e-6)
    # A learning rate of e^-3 ~ 0.05 learns less in 30 steps than e^-0.5 ~ 0.6.
    assert bool(jnp.all(grid[:, 0] > grid[:, 1]))
