"""Toy 2D regression: meta-learning a linear learning-rate schedule.

The second experiment of Vicol et al., "Unbiased Gradient Estimation in Unrolled
Computation Graphs with Persistent Evolution Strategies" (PES, ICML 2021,
section 5.2, Figure 4). Plain SGD minimises the inner loss

    f(x) = sqrt(x0^2 + 5) - sqrt(5) + sin(x1)^2 exp(-5 x0^2) + 0.25 |x1 - 100|

from ``x = (1, 1)`` for ``T = 100`` steps with the learning rate

    lr_t = exp(theta0) (T - t) / T + exp(theta1) t / T,     t = 0, ..., T - 1,

the index of the step before its update; ``theta = (log lr_initial, log lr_final)``
is the outer parameter. The per-step loss is ``f`` after the update, and the
meta-objective is the **sum** of the T per-step losses from a fresh ``x``
(:func:`meta_loss`; divide by T for evopes' mean-over-steps convention).

The landscape is nearly flat in theta1 and has a narrow valley near
``theta ~ (2.75, -1.75)`` with ``L ~ 553``; ``L(-4, -4) = 2487.8``. Truncated
gradients (TBPTT, truncated ES) see only the next ``W = 10`` steps and stall far
from it; PES is unbiased and finds it.

Episodes last ``T`` steps: give the online strategies ``horizon=T``. The inner
state carries its own step index ``t`` (the schedule needs it); the strategy
resets the inner state from :func:`init_inner` at every horizon end, so ``t``
never exceeds ``T``. :func:`step` returns ``done = None``: the horizon, counted
by the strategy, is the only episode end (so that step-unlocked particles, whose
first episode is shortened by their time offset, are not ended twice).

Outer optimisation in the paper: 100 particles (50 pairs), ``sigma = 0.3``
(TES: 1.0), Adam(lr 1e-2, b1 0.99, b2 0.999), lock-step particles. The paper's
code sums losses over a window where evopes averages them, so its gradients are
``W`` times evopes'; Adam is invariant to that scale, so the learning rate
transfers unchanged.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax

HORIZON = 100
TRUNCATION_LENGTH = 10
INITIAL_X = (1.0, 1.0)
INITIAL_THETA = jnp.array([-4.0, -4.0], jnp.float32)
SQRT5 = math.sqrt(5.0)


class InnerState(NamedTuple):
    """The inner iterate ``x`` and the index ``t`` of the next SGD step."""

    x: jax.Array
    t: jax.Array


def inner_loss(x: jax.Array) -> jax.Array:
    """``f(x)``: the inner regression loss of the paper (Eq. in section 5.2)."""
    return (
        jnp.sqrt(x[0] ** 2 + 5.0)
        - SQRT5
        + jnp.sin(x[1]) ** 2 * jnp.exp(-5.0 * x[0] ** 2)
        + 0.25 * jnp.abs(x[1] - 100.0)
    )


def learning_rate(theta: jax.Array, t: jax.Array, horizon: int = HORIZON) -> jax.Array:
    """The linear schedule from ``exp(theta0)`` at t = 0 towards ``exp(theta1)`` at t = T."""
    fraction = t.astype(jnp.float32) / horizon
    return jnp.exp(theta[0]) * (1.0 - fraction) + jnp.exp(theta[1]) * fraction


def init_inner(key: jax.Array | None = None) -> InnerState:
    """``x = (1, 1)``, ``t = 0``; deterministic, so ``key`` is unused."""
    del key
    return InnerState(x=jnp.array(INITIAL_X, jnp.float32), t=jnp.array(0, jnp.int32))


def step(inner: InnerState, theta: jax.Array, key: jax.Array | None = None):
    """One SGD step on ``f``: returns ``(inner, f(x after the step), done=None)``."""
    del key
    x = inner.x - learning_rate(theta, inner.t) * jax.grad(inner_loss)(inner.x)
    return InnerState(x=x, t=inner.t + 1), inner_loss(x), None


def losses(theta: jax.Array, horizon: int = HORIZON) -> jax.Array:
    """The ``horizon`` per-step losses of one episode from a fresh ``x``."""

    def body(inner, _):
        inner, loss, _ = step(inner, theta)
        return inner, loss

    _, per_step = jax.lax.scan(body, init_inner(), None, length=horizon)
    return per_step


def meta_loss(theta: jax.Array) -> jax.Array:
    """The paper's meta-objective ``L(theta)``: the sum of the T per-step losses."""
    return jnp.sum(losses(theta))


def meta_loss_grid(theta0: jax.Array, theta1: jax.Array) -> jax.Array:
    """``L`` on the grid ``theta0 x theta1``; shape ``(len(theta1), len(theta0))``."""
    grid = jnp.stack(jnp.meshgrid(theta0, theta1), axis=-1)
    return jax.vmap(jax.vmap(meta_loss))(grid)


class TBPTTTrace(NamedTuple):
    theta: jax.Array  # (num_iterations, 2) theta after each update
    meta_loss: jax.Array  # (num_iterations,) meta_loss(theta) after each update


def tbptt(
    *,
    num_iterations: int = 2000,
    truncation_length: int = TRUNCATION_LENGTH,
    optimizer: optax.GradientTransformation | None = None,
    theta: jax.Array = INITIAL_THETA,
) -> TBPTTTrace:
    """Truncated backpropagation through time, the paper's TBPTT baseline.

    One trajectory, reset every ``T`` steps. Each iteration runs
    ``truncation_length`` steps from the current state, differentiates the sum
    of the window's losses by ``jax.grad`` through those steps only (the window's
    start state is a constant), and updates theta with the outer optimizer
    (default Adam(1e-2, b1=0.99, b2=0.999), the paper's). ``truncation_length``
    must divide ``T``; ``num_iterations`` and ``truncation_length`` are static.
    """
    if HORIZON % truncation_length:
        raise ValueError(
            f"truncation_length: expected a divisor of {HORIZON}, got {truncation_length}"
        )
    optimizer = optimizer or optax.adam(1e-2, b1=0.99, b2=0.999)

    def window_loss(theta, inner):
        def body(inner, _):
            inner, loss, _ = step(inner, theta)
            return inner, loss

        inner, per_step = jax.lax.scan(body, inner, None, length=truncation_length)
        return jnp.sum(per_step), inner

    def iteration(carry, _):
        theta, inner, opt_state = carry
        gradient, inner = jax.grad(window_loss, has_aux=True)(theta, inner)
        updates, opt_state = optimizer.update(gradient, opt_state)
        theta = optax.apply_updates(theta, updates)
        inner = jax.tree.map(
            lambda fresh, current: jnp.where(inner.t >= HORIZON, fresh, current),
            init_inner(),
            inner,
        )
        return (theta, inner, opt_state), (theta, meta_loss(theta))

    theta = jnp.asarray(theta, jnp.float32)
    carry = (theta, init_inner(), optimizer.init(theta))
    _, (thetas, meta_losses) = jax.lax.scan(iteration, carry, None, length=num_iterations)
    return TBPTTTrace(theta=thetas, meta_loss=meta_losses)
