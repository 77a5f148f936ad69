"""A hashable, value-based key of a strategy's static configuration.

Strategies hash and compare by configuration so that equal ones share compiled
code (a strategy is a static argument of ``jit``). The configuration holds
closures (``init_inner``, optax transformations), arrays and PRNG keys, which
Python does not compare by value; :func:`static_key` does.
"""

from __future__ import annotations

import functools
import inspect
from typing import Any

import jax
import numpy as np


def static_key(value: Any, _active: frozenset = frozenset()) -> Any:
    """A hashable, value-based key for static configuration.

    Functions (such as the closures inside an optax ``GradientTransformation``)
    are keyed by their code and, recursively, the values they captured, so
    ``optax.adam(1e-2)`` built twice gives equal keys while ``optax.adam(2e-2)``
    does not. Arrays are keyed by shape, dtype and bytes; anything else
    unhashable by its identity.
    """
    if id(value) in _active:  # a closure that refers to itself
        return ("cycle", getattr(value, "__qualname__", type(value).__name__))
    active = _active | {id(value)}
    if isinstance(value, functools.partial):
        return (
            "partial",
            static_key(value.func, active),
            static_key(value.args, active),
            static_key(value.keywords, active),
        )
    if inspect.ismethod(value):
        return ("method", static_key(value.__func__, active), static_key(value.__self__, active))
    if inspect.isfunction(value):
        captured = []
        for cell in value.__closure__ or ():
            try:
                captured.append(static_key(cell.cell_contents, active))
            except ValueError:  # an empty cell
                captured.append(("empty",))
        return (
            "function",
            value.__module__,
            value.__qualname__,
            value.__code__,
            tuple(captured),
            static_key(value.__defaults__, active),
            static_key(value.__kwdefaults__, active),
        )
    if isinstance(value, tuple | list):
        return (type(value).__name__, tuple(static_key(item, active) for item in value))
    if isinstance(value, dict):
        return ("dict", tuple(sorted((repr(k), static_key(v, active)) for k, v in value.items())))
    if isinstance(value, jax.Array) and jax.dtypes.issubdtype(value.dtype, jax.dtypes.prng_key):
        # Typed keys (jax.random.key) have no buffer of their own: key them by
        # their implementation and their raw uint32 data.
        data = np.asarray(jax.random.key_data(value))
        return ("key", str(jax.random.key_impl(value)), value.shape, data.tobytes())
    if isinstance(value, np.ndarray | jax.Array):
        return ("array", value.shape, str(value.dtype), np.asarray(value).tobytes())
    try:
        hash(value)
    except TypeError:
        return ("object", id(value))
    return value
