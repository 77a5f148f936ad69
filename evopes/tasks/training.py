"""Compiled loops that run a strategy on a task: training curves and variance studies.

The raw ``ask`` / unroll / ``tell`` loop is the primary interface (see the
tutorials); these helpers are that loop inside ``jax.lax.scan``, used by the
tests and benchmarks that reproduce the papers' results:

* :func:`train_online` — an online strategy (TES, PES, GPES, NRES): every
  window ``ask`` -> :func:`evopes.unroll` of the task's ``step`` -> ``tell``, and
  every ``eval_every`` windows ``evaluate(theta)`` (e.g. the Lorenz test loss);
* :func:`train_episodic` — a whole-episode strategy (FullES) with the
  time-average episode loss as fitness;
* :func:`online_gradients` and :func:`episodic_gradient` — estimates at a fixed
  theta (``tell(..., apply_update=False)``), for variance studies.

Everything is compiled once per configuration (the strategy, the step and the
evaluation function are static and compare by value or identity: build them
once and reuse them).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from evopes import threefry
from evopes.online import mean_over_steps, pair_keys, unroll

PyTree = Any


class OnlineTrace(NamedTuple):
    """What :func:`train_online` records, one row per window or per evaluation.

    Attributes:
      theta: the mean after each window (pytree, leading axis ``num_windows``).
      mean_loss: the window's mean loss over particles and steps.
      sequential_steps: steps unrolled along one particle after each window.
      total_steps: particle-steps unrolled by all particles after each window.
      burn_in: whether the window's update was skipped (step-unlocking burn-in).
      evaluation: ``evaluate(theta)`` after windows ``eval_every - 1``,
        ``2 eval_every - 1``, ... (shape ``(num_windows // eval_every,)``), or
        None without ``evaluate``.
      state: the final strategy state.
    """

    theta: PyTree
    mean_loss: jax.Array
    sequential_steps: jax.Array
    total_steps: jax.Array
    burn_in: jax.Array
    evaluation: jax.Array | None
    state: Any


def train_online(
    es,
    params,
    theta: PyTree,
    key: jax.Array,
    step_fn: Callable,
    num_windows: int,
    *,
    evaluate: Callable[[PyTree], jax.Array] | None = None,
    eval_every: int = 1,
) -> OnlineTrace:
    """Runs ``num_windows`` ask/unroll/tell windows of ``es`` on ``step_fn``.

    Args:
      es: an online strategy (TES, PES, GPES, NRES) built with the task's
        ``init_inner`` and ``horizon``.
      params: its parameters (``es.default_params.replace(std=...)``).
      theta: the initial outer parameters.
      key: PRNG key for ``init`` and every window.
      step_fn: the task's ``step(inner, theta, key) -> (inner, loss, done)``.
      num_windows: number of windows; a multiple of ``eval_every``.
      evaluate: optional ``theta -> scalar`` run every ``eval_every`` windows.
      eval_every: evaluation period in windows.
    """
    if num_windows % eval_every:
        raise ValueError(
            f"num_windows: expected a multiple of eval_every={eval_every}, got {num_windows}"
        )
    return _train(es, step_fn, evaluate, num_windows, eval_every, params, theta, key)


@functools.partial(jax.jit, static_argnums=(0, 1, 2, 3, 4))
def _train(es, step_fn, evaluate, num_windows, eval_every, params, theta, key):
    init_key, loop_key = jax.random.split(key)
    state = es.init(init_key, theta, params)

    def window(state, key):
        ask_key, unroll_key, tell_key = threefry.split(key, 3)
        population, state = es.ask(ask_key, state, params)
        inner, losses, dones = unroll(
            step_fn, population, es.get_inner_state(state), unroll_key, es.truncation_length
        )
        state, metrics = es.tell(
            tell_key, population, losses, state, params, inner_state=inner, dones=dones
        )
        row = (
            es.get_mean(state),
            metrics["mean_loss"],
            metrics["sequential_steps"],
            metrics["total_steps"],
            metrics["burn_in"],
        )
        return state, row

    def block(state, keys):
        state, rows = jax.lax.scan(window, state, keys)
        score = jnp.zeros(()) if evaluate is None else evaluate(es.get_mean(state))
        return state, (rows, score)

    keys = jax.random.split(loop_key, num_windows)
    keys = keys.reshape((num_windows // eval_every, eval_every) + keys.shape[1:])
    state, (rows, scores) = jax.lax.scan(block, state, keys)
    flat = lambda x: x.reshape((num_windows,) + x.shape[2:])
    theta_trace, mean_loss, sequential, total, burn_in = jax.tree.map(flat, rows)
    return OnlineTrace(
        theta=theta_trace,
        mean_loss=mean_loss,
        sequential_steps=sequential,
        total_steps=total,
        burn_in=burn_in,
        evaluation=None if evaluate is None else scores,
        state=state,
    )


class EpisodicTrace(NamedTuple):
    """What :func:`train_episodic` records, one row per generation or per evaluation.

    Attributes are those of :class:`OnlineTrace` without ``burn_in``; one
    generation unrolls ``horizon`` sequential steps and ``population_size *
    horizon`` particle-steps.
    """

    theta: PyTree
    mean_loss: jax.Array
    sequential_steps: jax.Array
    total_steps: jax.Array
    evaluation: jax.Array | None
    state: Any


def train_episodic(
    es,
    params,
    theta: PyTree,
    key: jax.Array,
    init_inner: Callable,
    step_fn: Callable,
    horizon: int,
    num_generations: int,
    *,
    evaluate: Callable[[PyTree], jax.Array] | None = None,
    eval_every: int = 1,
) -> EpisodicTrace:
    """Runs a whole-episode strategy (FullES) on a task for ``num_generations``.

    Each generation every member runs a fresh episode of ``horizon`` steps from
    ``init_inner`` (keys shared within antithetic pairs), and its fitness is the
    time-average loss (the objective of the online strategies, so estimates are
    comparable).
    """
    if num_generations % eval_every:
        raise ValueError(
            f"num_generations: expected a multiple of eval_every={eval_every}, "
            f"got {num_generations}"
        )
    return _train_episodic(
        es, init_inner, step_fn, horizon, evaluate, num_generations, eval_every, params, theta, key
    )


def episode_fitness(init_inner, step_fn, horizon, population, key):
    """Time-average loss of one fresh episode per member (pairs share the start)."""
    num_pairs = jax.tree_util.tree_leaves(population)[0].shape[0] // 2
    init_key, unroll_key = threefry.split(key)
    inner = jax.vmap(init_inner)(pair_keys(init_key, num_pairs))
    _, losses, _ = unroll(step_fn, population, inner, unroll_key, horizon)
    return mean_over_steps(losses)


@functools.partial(jax.jit, static_argnums=(0, 1, 2, 3, 4, 5, 6))
def _train_episodic(
    es, init_inner, step_fn, horizon, evaluate, num_generations, eval_every, params, theta, key
):
    init_key, loop_key = jax.random.split(key)
    state = es.init(init_key, theta, params)

    def generation(carry, key):
        state, count = carry
        ask_key, episode_key, tell_key = threefry.split(key, 3)
        population, state = es.ask(ask_key, state, params)
        fitness = episode_fitness(init_inner, step_fn, horizon, population, episode_key)
        state, _ = es.tell(tell_key, population, fitness, state, params)
        count = count + 1
        row = (
            es.get_mean(state),
            jnp.mean(fitness),
            count * horizon,
            count * es.population_size * horizon,
        )
        return (state, count), row

    def block(carry, keys):
        carry, rows = jax.lax.scan(generation, carry, keys)
        score = jnp.zeros(()) if evaluate is None else evaluate(es.get_mean(carry[0]))
        return carry, (rows, score)

    keys = jax.random.split(loop_key, num_generations)
    keys = keys.reshape((num_generations // eval_every, eval_every) + keys.shape[1:])
    (state, _), (rows, scores) = jax.lax.scan(block, (state, jnp.array(0, jnp.int32)), keys)
    flat = lambda x: x.reshape((num_generations,) + x.shape[2:])
    theta_trace, mean_loss, sequential, total = jax.tree.map(flat, rows)
    return EpisodicTrace(
        theta=theta_trace,
        mean_loss=mean_loss,
        sequential_steps=sequential,
        total_steps=total,
        evaluation=None if evaluate is None else scores,
        state=state,
    )


# -- gradient estimates at a fixed theta (variance studies) -----------------------------
def online_gradients(
    es, params, theta: PyTree, key: jax.Array, step_fn: Callable, num_windows: int
) -> jax.Array:
    """The flat gradient estimate of each of ``num_windows`` windows at a fixed ``theta``.

    Runs the online strategy with ``tell(..., apply_update=False)``: the
    episode bookkeeping (time, resets, noise, accumulators) advances, the mean
    never moves. Returns shape ``(num_windows, num_dims)``. With step-unlocking
    the first ``es.burn_in_windows`` rows are burn-in estimates (particles not
    yet restarted from a genuine episode start); callers usually drop them.
    Jit- and vmap-friendly (``es``, ``step_fn`` and ``num_windows`` are static).
    """
    return _online_gradients(es, step_fn, num_windows, params, theta, key)


@functools.partial(jax.jit, static_argnums=(0, 1, 2))
def _online_gradients(es, step_fn, num_windows, params, theta, key):
    init_key, loop_key = jax.random.split(key)
    state = es.init(init_key, theta, params)

    def window(state, key):
        ask_key, unroll_key, tell_key = threefry.split(key, 3)
        population, state = es.ask(ask_key, state, params)
        inner, losses, dones = unroll(
            step_fn, population, es.get_inner_state(state), unroll_key, es.truncation_length
        )
        gradient, state = es.estimate(
            tell_key, population, losses, state, params, inner_state=inner, dones=dones
        )
        return state, es.spec.ravel(gradient)

    _, gradients = jax.lax.scan(window, state, jax.random.split(loop_key, num_windows))
    return gradients


def episodic_gradient(
    es, params, theta: PyTree, key: jax.Array, init_inner: Callable, step_fn: Callable, horizon: int
) -> jax.Array:
    """One flat whole-episode gradient estimate of a FullES-like strategy at ``theta``."""
    return _episodic_gradient(es, init_inner, step_fn, horizon, params, theta, key)


@functools.partial(jax.jit, static_argnums=(0, 1, 2, 3))
def _episodic_gradient(es, init_inner, step_fn, horizon, params, theta, key):
    init_key, ask_key, episode_key = jax.random.split(key, 3)
    state = es.init(init_key, theta, params)
    population, state = es.ask(ask_key, state, params)
    fitness = episode_fitness(init_inner, step_fn, horizon, population, episode_key)
    return es.spec.ravel(es.estimate_gradient(fitness, state, params))
