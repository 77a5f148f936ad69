"""Lorenz system parameter learning: a chaotic unroll where gradients explode.

The dynamical-system experiment of Li, Harrison, Sohl-Dickstein, Smith, Metz,
"Variance-Reduced Gradient Estimation via Noise-Reuse in Online Evolution
Strategies" (NRES, NeurIPS 2023, section 6.1). Forward Euler with ``dt = 0.005``:

    x <- x + a (y - x) dt
    y <- y + (x (r - z) - y) dt
    z <- z + (x y - b z) dt,                 b = 8/3 (fixed),

with learnable ``theta = (log a, log r)``. The ground truth is ``a = 10, r = 28``
and training starts from ``theta = (3.116, 3.7)`` (a ~ 22.6, r ~ 40.4). The
model and the ground-truth system start from the same point and are unrolled
side by side for ``T = 2000`` steps; only ``z`` is observed, and the per-step
loss is ``(z - z_true)^2`` after the step. The objective is the time-average
loss (evopes' mean-over-steps convention, which is also the convention of the
NRES paper's code, so its learning rates transfer unchanged).

Training episodes start both systems at ``(1.2, 1.3, 1.6)`` (:func:`init_inner`).
The test loss (:func:`test_loss`) starts both at ``(1.2, 1.3, 1.6) + N(0, I)``
(one shared noise per start), averages over many starts and all T steps, with
theta unperturbed; it is about 311 at the initial theta. Every ES method settles
near ``theta ~ (2.38, 3.28)`` with test loss ~47: the minimiser of the
sigma-smoothed loss, not the ground truth ``(log 10, log 28) = (2.30, 3.33)``.

The inner state carries both systems, so the step needs no lookup table and a
fresh episode is just :func:`init_inner`. Episodes last ``T`` steps: give the
online strategies ``horizon=T``; :func:`step` returns ``done = None`` (the
system never ends an episode by itself).
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

DT = 0.005
HORIZON = 2000
B = 8.0 / 3.0
TRUE_A = 10.0
TRUE_R = 28.0
TRUE_THETA = jnp.log(jnp.array([TRUE_A, TRUE_R], jnp.float32))
INITIAL_THETA = jnp.array([3.116, 3.7], jnp.float32)
START = (1.2, 1.3, 1.6)
NUM_TEST_STARTS = 100
TEST_KEY_SEED = 0


class InnerState(NamedTuple):
    """The model's ``(x, y, z)`` and the ground truth's, unrolled side by side."""

    model: jax.Array
    truth: jax.Array


def euler_step(xyz: jax.Array, a: jax.Array, r: jax.Array) -> jax.Array:
    """One forward-Euler step of the Lorenz equations with ``b = 8/3``."""
    x, y, z = xyz[0], xyz[1], xyz[2]
    return xyz + DT * jnp.stack([a * (y - x), x * (r - z) - y, x * y - B * z])


def init_inner(key: jax.Array | None = None) -> InnerState:
    """The training start: both systems at ``(1.2, 1.3, 1.6)``; ``key`` is unused."""
    del key
    start = jnp.array(START, jnp.float32)
    return InnerState(model=start, truth=start)


def init_inner_noisy(key: jax.Array) -> InnerState:
    """A test start: both systems at ``(1.2, 1.3, 1.6) + N(0, I)`` (the same point)."""
    start = jnp.array(START, jnp.float32) + jax.random.normal(key, (3,), jnp.float32)
    return InnerState(model=start, truth=start)


def step(inner: InnerState, theta: jax.Array, key: jax.Array | None = None):
    """One Euler step of both systems: ``(inner, (z - z_true)^2, done=None)``."""
    del key
    a, r = jnp.exp(theta[0]), jnp.exp(theta[1])
    model = euler_step(inner.model, a, r)
    truth = euler_step(inner.truth, TRUE_A, TRUE_R)
    return InnerState(model=model, truth=truth), (model[2] - truth[2]) ** 2, None


def losses(theta: jax.Array, inner: InnerState | None = None, horizon: int = HORIZON) -> jax.Array:
    """The ``horizon`` per-step losses of one episode (default: the training start)."""

    def body(inner, _):
        inner, loss, _ = step(inner, theta)
        return inner, loss

    _, per_step = jax.lax.scan(body, init_inner() if inner is None else inner, None, length=horizon)
    return per_step


def train_loss(theta: jax.Array) -> jax.Array:
    """The training objective: the time-average loss of the episode from the fixed start."""
    return jnp.mean(losses(theta))


def test_starts(num_starts: int = NUM_TEST_STARTS, seed: int = TEST_KEY_SEED) -> InnerState:
    """``num_starts`` noisy starts drawn from a fixed key (shared by every evaluation)."""
    keys = jax.random.split(jax.random.key(seed), num_starts)
    return jax.vmap(init_inner_noisy)(keys)


def test_loss(theta: jax.Array, starts: InnerState | None = None) -> jax.Array:
    """Mean of ``(z - z_true)^2`` over the test starts and all T steps, theta unperturbed."""
    starts = test_starts() if starts is None else starts
    return jnp.mean(jax.vmap(lambda inner: losses(theta, inner))(starts))
