"""Sharding a population over devices (and hosts) with ``jax.sharding``.

The population axis is the parallel axis of every evolution strategy: members
(or online particles) are evaluated independently, and the strategy only needs
reductions over them (a weighted sum of perturbations, a rank, a covariance
update). This module lays that axis over a one-dimensional
:class:`jax.sharding.Mesh` and leaves everything else to XLA's SPMD
partitioner:

* the **population** returned by ``ask``, the fitness (online: the window's
  losses), and the large per-particle parts of an online state -- the inner
  states and the PES/GPES accumulators (``2P x d`` floats) -- are split along
  their particle axis over the mesh's ``"population"`` axis;
* the rest of the **strategy state** (mean, optimizer state, covariance,
  step size, and the online bookkeeping of a few numbers per particle: times,
  noise ids, stds) is replicated: every device holds a copy and applies the
  same update, so no device waits for another to broadcast it. Replicating
  the small bookkeeping halves the number of collectives of an online step
  (each device slices out the noise ids of its own particles instead of
  receiving them), while every device still generates only its own
  particles' noise.

Nothing in a strategy changes: ``init``, ``ask`` and ``tell`` are traced once
inside one :func:`jax.jit` with these input and output shardings, and the
partitioner turns sums over the population into per-device partial sums plus
an all-reduce of ``d`` numbers.

One device, many devices, many hosts::

    mesh = evopes.sharding.population_mesh()            # all devices, all hosts
    init = evopes.sharding.sharded_init(es, mesh)
    step = evopes.sharding.sharded_step(es, fitness_fn, mesh)
    state = init(key, mean, params)
    for generation in range(100):
        key, subkey = jax.random.split(key)
        state, metrics = step(state, subkey, params)

On several hosts, call ``jax.distributed.initialize(...)`` first; every process
runs the same program, ``jax.devices()`` then lists every host's devices and the
mesh spans them all (see ``docs/scaling.md``).

The population size (``2P`` for antithetic strategies) must be a multiple of
the number of devices.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from evopes import threefry
from evopes.online.engine import OnlineES
from evopes.online.unroll import unroll
from evopes.strategy import Strategy

PyTree = Any

#: Name of the mesh axis the population is split over.
POPULATION_AXIS = "population"

#: Fields of an online state that are split over the particles (leading axis 2P).
SHARDED_FIELDS = ("inner_state", "accumulator")


# -- meshes and shardings -----------------------------------------------------------
def population_mesh(
    devices: Sequence[jax.Device] | None = None, axis_name: str = POPULATION_AXIS
) -> Mesh:
    """A one-dimensional mesh over ``devices`` (default: every device of every process)."""
    devices = jax.devices() if devices is None else list(devices)
    if not devices:
        raise ValueError("devices: expected at least one device, got none")
    return Mesh(np.asarray(devices), (axis_name,))


def population_sharding(mesh: Mesh) -> NamedSharding:
    """Leading axis split over the mesh's (only) axis, the other axes whole."""
    return NamedSharding(mesh, PartitionSpec(mesh.axis_names[0]))


def replicated_sharding(mesh: Mesh) -> NamedSharding:
    """A full copy on every device of the mesh."""
    return NamedSharding(mesh, PartitionSpec())


def state_sharding(es: Strategy, state: PyTree, mesh: Mesh) -> PyTree:
    """The sharding of every leaf of ``es``'s state (a pytree of ``NamedSharding``).

    ``state`` may be a real state or its ``jax.eval_shape``. For an online
    strategy the inner states and accumulators (:data:`SHARDED_FIELDS`) are
    split over the population axis; everything else is replicated.
    """
    replicated = replicated_sharding(mesh)
    shardings = jax.tree_util.tree_map(lambda _: replicated, state)
    if isinstance(es, OnlineES):
        _check_divisible(es.population_size, mesh)
        split = population_sharding(mesh)
        per_particle = {
            name: jax.tree_util.tree_map(lambda _: split, getattr(state, name))
            for name in SHARDED_FIELDS
        }
        shardings = shardings.replace(**per_particle)
    return shardings


def shard_population(population: PyTree, mesh: Mesh) -> PyTree:
    """Places a population (leading axis = members) split over the mesh."""
    leaves = jax.tree_util.tree_leaves(population)
    if leaves:
        _check_divisible(np.shape(leaves[0])[0], mesh)
    return jax.device_put(population, population_sharding(mesh))


def shard_state(es: Strategy, state: PyTree, mesh: Mesh) -> PyTree:
    """Places an existing state on the mesh with :func:`state_sharding` (single process)."""
    return jax.device_put(state, state_sharding(es, state, mesh))


# -- jitted, sharded entry points -----------------------------------------------------
def constrain_state(es: Strategy, state: PyTree, mesh: Mesh) -> PyTree:
    """Inside ``jit``: lays ``state`` out by :func:`state_sharding` (a sharding constraint)."""
    return jax.lax.with_sharding_constraint(state, state_sharding(es, state, mesh))


def sharded_init(es: Strategy, mesh: Mesh) -> Callable:
    """``jit(es.init)`` whose state comes out laid out by :func:`state_sharding`.

    The state is created inside ``jit`` directly as global arrays, which is
    what several processes need: no host array is ever sent to a device that
    another process owns.
    """

    def init(key, mean, params):
        return constrain_state(es, es.init(key, mean, params), mesh)

    return jax.jit(init)


def sharded_ask(es: Strategy, mesh: Mesh) -> Callable:
    """``jit(es.ask)`` with the population split over the mesh and the state laid out."""
    _check_divisible(es.population_size, mesh)

    def ask(key, state, params):
        population, state = es.ask(key, state, params)
        return _constrain(population, population_sharding(mesh)), constrain_state(es, state, mesh)

    return jax.jit(ask)


def sharded_step(
    es: Strategy, evaluate: Callable, mesh: Mesh, *, donate_state: bool = False
) -> Callable:
    """One jitted ``ask -> evaluate -> tell`` round.

    ``step(state, key, params) -> (state, metrics)``.

    Args:
      es: any evopes strategy.
      evaluate: for a classic strategy, ``fitness_fn(population, key) ->
        fitness`` of shape ``(population_size,)``; it receives the population
        split over the mesh, so batched ``jnp`` code (or a ``vmap`` over
        members) runs where the members live. For an online strategy, the
        per-particle ``step_fn(inner_one, theta_one, key_one) -> (inner_one,
        loss, done)`` of :func:`evopes.unroll`, run for the ``W`` steps of a
        window.
      mesh: a one-axis mesh (:func:`population_mesh`).
      donate_state: let XLA reuse the input state's buffers for the output
        (saves a copy of large states such as PES accumulators; the state
        passed in must not be used again).

    Returns:
      A ``jax.jit`` function; ``step.lower(state, key, params).compile()``
      gives the compiled program (``.as_text()`` shows its collectives).
      The population, fitness, losses and inner states are constrained to the
      population sharding, the state to :func:`state_sharding`, and the
      metrics are replicated.
    """
    _check_divisible(es.population_size, mesh)
    split = population_sharding(mesh)

    if isinstance(es, OnlineES):
        # Losses and dones are (W, 2P): their second axis is the population.
        by_particle = NamedSharding(mesh, PartitionSpec(None, mesh.axis_names[0]))

        def evaluate_and_tell(population, state, key, tell_key, params):
            inner, losses, dones = unroll(
                evaluate, population, state.inner_state, key, es.truncation_length
            )
            losses, dones = _constrain(losses, by_particle), _constrain(dones, by_particle)
            return es.tell(
                tell_key,
                population,
                losses,
                state,
                params,
                inner_state=_constrain(inner, split),
                dones=dones,
            )

    else:

        def evaluate_and_tell(population, state, key, tell_key, params):
            fitness = _constrain(evaluate(population, key), split)
            return es.tell(tell_key, population, fitness, state, params)

    def step(state, key, params):
        ask_key, evaluate_key, tell_key = threefry.split(key, 3)
        population, state = es.ask(ask_key, state, params)
        population = _constrain(population, split)
        state, metrics = evaluate_and_tell(population, state, evaluate_key, tell_key, params)
        return constrain_state(es, state, mesh), _constrain(metrics, replicated_sharding(mesh))

    return jax.jit(step, donate_argnums=(0,) if donate_state else ())


def _constrain(tree: PyTree, sharding: NamedSharding) -> PyTree:
    return jax.tree_util.tree_map(lambda x: jax.lax.with_sharding_constraint(x, sharding), tree)


def _check_divisible(population_size: int, mesh: Mesh) -> None:
    num_devices = mesh.devices.size
    if population_size % num_devices:
        raise ValueError(
            f"population_size: expected a multiple of the {num_devices} devices of the mesh, "
            f"got {population_size}"
        )
