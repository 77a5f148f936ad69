"""Tuning a learning-rate schedule through a whole training run (the PES paper's task).

The inner problem (Vicol et al. 2021, "Unbiased Gradient Estimation in
Unrolled Computation Graphs with Persistent Evolution Strategies", section
5.3, learning-rate schedules for an MLP): plain SGD trains a classifier MLP
(default 64 -> 32 -> 10, gelu) on the ``digits`` images for ``horizon = T``
steps with the inverse-time decay schedule

    lr_t = lr0 / (1 + t / decay),      theta = (log lr0, log decay),

with ``t = 0 .. T-1`` the index of the step (the update made at step t uses
lr_t). The per-step loss is the validation cross-entropy after the update on a
random validation batch, clipped,

    l_t = min(CE_valid(phi_{t+1}), max_loss)      (NaN counts as max_loss),

so that a diverging run is a bad but finite outcome rather than a NaN. The
meta-objective is the time-average loss of a fresh run,

    L(theta) = E[ 1/T sum_{t=0..T-1} l_t ],

the quantity the online strategies estimate the gradient of (mean-over-steps
convention). With ``decay -> infinity`` (``theta1`` large) the schedule is a
constant learning rate ``lr0``: plain SGD, which the tests check exactly.

Greedy, truncated unrolls favour a learning rate that decays too fast
(short-horizon bias; Wu et al. 2018, "Understanding Short-Horizon Bias in
Stochastic Meta-Optimization"): that is what separates truncated ES from PES
on this task.

:meth:`LRScheduleTask.init_inner` and :meth:`LRScheduleTask.step` follow the
online engine's contract (``done`` is always None: the strategy ends episodes
at its ``horizon``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import jax
import jax.numpy as jnp

from evopes import threefry
from evopes.tasks.digits import load_digits, sample_batch
from evopes.tasks.mlp import cross_entropy, init_mlp


class InnerState(NamedTuple):
    """One SGD run: the classifier's parameters and the step index t."""

    params: list
    step: jax.Array


@dataclass(frozen=True)
class LRScheduleTask:
    """The learning-rate-schedule tuning problem (hashable static configuration).

    Args:
      horizon: SGD steps per training run, T.
      batch_size: training and validation batch size.
      layer_sizes: the classifier's layer widths.
      max_loss: per-step losses are clipped to this value (NaN counts as it).
    """

    horizon: int = 1000
    batch_size: int = 32
    layer_sizes: tuple[int, ...] = (64, 32, 10)
    max_loss: float = 5.0

    @staticmethod
    def learning_rate(theta: jax.Array, step: jax.Array) -> jax.Array:
        """``lr_t = exp(theta0) / (1 + t / exp(theta1))``."""
        return jnp.exp(theta[0]) / (1.0 + step.astype(jnp.float32) / jnp.exp(theta[1]))

    def init_inner(self, key: jax.Array) -> InnerState:
        """A fresh run: new classifier parameters, t = 0."""
        return InnerState(init_mlp(key, self.layer_sizes), jnp.zeros((), jnp.int32))

    def step(self, inner: InnerState, theta: jax.Array, key: jax.Array):
        """One SGD step at lr_t: returns (inner, clipped validation-batch loss, None)."""
        data = load_digits()
        train_key, valid_key = threefry.split(key)
        images, labels = sample_batch(
            train_key, data.train_images, data.train_labels, self.batch_size
        )
        grads = jax.grad(cross_entropy)(inner.params, images, labels)
        learning_rate = self.learning_rate(theta, inner.step)
        params = jax.tree.map(lambda p, g: p - learning_rate * g, inner.params, grads)
        images, labels = sample_batch(
            valid_key, data.valid_images, data.valid_labels, self.batch_size
        )
        loss = cross_entropy(params, images, labels)
        loss = jnp.where(jnp.isnan(loss), self.max_loss, jnp.minimum(loss, self.max_loss))
        return InnerState(params, inner.step + 1), loss, None

    def losses(self, theta: jax.Array, key: jax.Array, num_steps: int | None = None) -> jax.Array:
        """The per-step losses of a fresh run with theta, shape (num_steps,)."""
        init_key, run_key = jax.random.split(key)
        step = lambda inner, step_key: self.step(inner, theta, step_key)[:2]
        keys = jax.random.split(run_key, num_steps or self.horizon)
        return jax.lax.scan(step, self.init_inner(init_key), keys)[1]

    def meta_objective(self, theta: jax.Array, key: jax.Array, num_runs: int = 1) -> jax.Array:
        """L(theta): the mean per-step loss of ``num_runs`` fresh runs of T steps."""
        keys = jax.random.split(key, num_runs)
        return jnp.mean(jax.vmap(lambda k: self.losses(theta, k))(keys))

    def grid(self, theta0_values, theta1_values, key: jax.Array, num_runs: int = 1) -> jax.Array:
        """L on a grid for the heatmap: shape (len(theta1_values), len(theta0_values)).

        Every grid point uses the same ``num_runs`` keys (common random
        numbers), so differences between points are not noise between runs.
        """
        theta0, theta1 = jnp.meshgrid(jnp.asarray(theta0_values), jnp.asarray(theta1_values))
        thetas = jnp.stack([theta0.ravel(), theta1.ravel()], axis=1)
        values = jax.lax.map(lambda theta: self.meta_objective(theta, key, num_runs), thetas)
        return values.reshape(theta0.shape)
