"""Influence balancing: a linear system where truncation gets the sign of the gradient wrong.

The task comes from Tallec & Ollivier, "Unbiased Online Recurrent Optimization"
(UORO, arXiv 1702.05043, section 6) and is the first experiment of Vicol et al.,
"Unbiased Gradient Estimation in Unrolled Computation Graphs with Persistent
Evolution Strategies" (PES, ICML 2021, section 5.1).

The inner state is ``s`` in R^23 and the outer parameter ``theta`` a scalar:

    s_{t+1} = A s_t + theta * sign,     A = 0.5 I + 0.5 (ones on the superdiagonal),
    sign    = (+1 x 10, -1 x 13),       s_0 = ones,
    loss    = 0.5 (s[0] - 1)^2.

``A`` is upper triangular with eigenvalue 0.5, so ``s`` converges to the fixed
point ``(I - A)^{-1} theta sign``; back-substitution gives
``s*[i] = s*[i+1] + 2 theta sign[i]`` and ``s*[0] = 2 theta sum(sign) = -6 theta``.
The loss at the fixed point vanishes at ``theta* = -1/6``. A change of theta
reaches ``s[0]`` directly with sign +1 but, through the 22 coordinates behind
it, mostly with sign -1 and a delay: gradients truncated to fewer than ~40 steps
therefore have the wrong sign and push theta away from the optimum.

The horizon is infinite: the system is never reset (``horizon=None`` for the
online strategies).

Window convention. The paper evaluates the loss once per truncation window, at
its end (``unroll`` in the paper's code runs W steps and returns the loss of the
final state), and the paper runs W = 1, where that is simply the loss after
every step. evopes averages per-step losses over the window
(``g = 1/(P W) sum_t D_t xi_t / (2 sigma^2)``), so :func:`make_step` with
``truncation_length=W`` returns ``W * loss`` on the last step of each window and
0 on the others: the window mean is then exactly the paper's end-of-window
loss, and the estimate equals the paper code's estimate for every W (its sum
over a one-loss window is that loss; its ``N`` counts particles, ``2P``, so its
``1/(N sigma^2)`` equals evopes' ``1/(P 2 sigma^2)``). Learning rates therefore
transfer unchanged: the paper's SGD lr 1e-4 is evopes' lr 1e-4. The default
:func:`step` is ``make_step(1)``: the loss after every step.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax

NUM_UNITS = 23
NUM_POSITIVE = 10
SIGN = jnp.array([1.0] * NUM_POSITIVE + [-1.0] * (NUM_UNITS - NUM_POSITIVE), jnp.float32)
INITIAL_THETA = jnp.array(0.5, jnp.float32)
OPTIMAL_THETA = -1.0 / 6.0
EVAL_STEPS = 500


class InnerState(NamedTuple):
    """The system state ``s`` and the number of steps taken ``t`` (for window ends)."""

    s: jax.Array
    t: jax.Array


def init_inner(key: jax.Array | None = None) -> InnerState:
    """``s = ones``; the system is deterministic, so ``key`` is unused."""
    del key
    return InnerState(s=jnp.ones(NUM_UNITS, jnp.float32), t=jnp.array(0, jnp.int32))


def transition(s: jax.Array, theta: jax.Array) -> jax.Array:
    """``A s + theta * sign`` with ``A = 0.5 I + 0.5 superdiagonal``, without a matmul."""
    shifted = jnp.concatenate([s[1:], jnp.zeros((1,), s.dtype)])
    return 0.5 * s + 0.5 * shifted + jnp.reshape(theta, ()) * SIGN


def loss_of(s: jax.Array) -> jax.Array:
    return 0.5 * (s[0] - 1.0) ** 2


def make_step(truncation_length: int = 1) -> Callable:
    """A step function whose window-mean loss is the paper's end-of-window loss.

    Returns ``step(inner, theta, key) -> (inner, loss, done)``; ``loss`` is
    ``truncation_length * 0.5 (s[0] - 1)^2`` on the last step of every window of
    ``truncation_length`` steps (counted from ``s_0``) and 0 on the other steps;
    ``done`` is always None (infinite horizon).
    """
    if int(truncation_length) != truncation_length or truncation_length < 1:
        raise ValueError(f"truncation_length: expected an integer >= 1, got {truncation_length!r}")
    window = int(truncation_length)

    def step(inner: InnerState, theta: jax.Array, key: jax.Array | None = None):
        del key
        s = transition(inner.s, theta)
        t = inner.t + 1
        at_window_end = (t % window) == 0
        loss = jnp.where(at_window_end, window * loss_of(s), 0.0)
        return InnerState(s=s, t=t), loss, None

    return step


step = make_step(1)
"""``step(inner, theta, key) -> (inner, loss, done)``: one step, loss after it (W = 1)."""


def unroll_state(s: jax.Array, theta: jax.Array, num_steps: int) -> jax.Array:
    """``s`` after ``num_steps`` transitions with a fixed ``theta``."""
    return jax.lax.fori_loop(0, num_steps, lambda _, s: transition(s, theta), s)


def evaluate(theta: jax.Array, num_steps: int = EVAL_STEPS) -> jax.Array:
    """The paper's evaluation: from ``s = ones``, ``num_steps`` steps, the loss at the end."""
    return loss_of(unroll_state(jnp.ones(NUM_UNITS, jnp.float32), theta, num_steps))


def fixed_point(theta: jax.Array) -> jax.Array:
    """The fixed point ``(I - A)^{-1} theta sign`` by back-substitution (``s*[0] = -6 theta``)."""
    increments = 2.0 * jnp.reshape(theta, ()) * SIGN
    return jnp.cumsum(increments[::-1])[::-1]


class TBPTTTrace(NamedTuple):
    theta: jax.Array  # (num_iterations,) theta after each update
    eval_loss: jax.Array  # (num_iterations,) evaluate(theta) after each update


def tbptt(
    truncation_length: int,
    *,
    learning_rate: float = 1e-4,
    num_iterations: int = 3000,
    theta: jax.Array = INITIAL_THETA,
) -> TBPTTTrace:
    """Truncated backpropagation through time, as in the paper's baseline.

    One trajectory, never reset. Each iteration runs ``truncation_length`` steps
    from the current state, differentiates the end-of-window loss with respect
    to theta by ``jax.grad`` through those steps only (the window's start state
    is a constant: this is the truncation) and applies plain SGD; the next
    window starts from the state this window reached. ``truncation_length`` and
    ``num_iterations`` must be Python ints (they fix the loop lengths).
    """
    optimizer = optax.sgd(learning_rate)

    def window_loss(theta, s):
        s = unroll_state(s, theta, truncation_length)
        return loss_of(s), s

    def iteration(carry, _):
        theta, s, opt_state = carry
        gradient, s = jax.grad(window_loss, has_aux=True)(theta, s)
        updates, opt_state = optimizer.update(gradient, opt_state)
        theta = optax.apply_updates(theta, updates)
        return (theta, s, opt_state), (theta, evaluate(theta))

    theta = jnp.asarray(theta, jnp.float32)
    carry = (theta, init_inner().s, optimizer.init(theta))
    _, (thetas, losses) = jax.lax.scan(iteration, carry, None, length=num_iterations)
    return TBPTTTrace(theta=thetas, eval_loss=losses)
