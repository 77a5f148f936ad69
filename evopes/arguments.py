"""Checks of the arguments of ``init``/``ask``/``tell``: errors that name the argument.

They run when a method is traced (once per compilation), so they cost nothing
per call. Each raises a ValueError saying which argument is wrong, what was
expected and what was received, instead of an error from deep inside JAX.
"""

from __future__ import annotations

from typing import Any

import jax
import numpy as np


def check_key(key: Any) -> None:
    """``key`` must be a PRNG key: typed (``jax.random.key``) or legacy uint32 ``(..., 2)``."""
    if isinstance(key, jax.Array | np.ndarray) and (
        jax.dtypes.issubdtype(key.dtype, jax.dtypes.prng_key)
        or (key.dtype == np.uint32 and key.shape[-1:] == (2,))
    ):
        return
    raise ValueError(f"key: expected a PRNG key (jax.random.key(...)), got {describe(key)}")


def describe(value: Any) -> str:
    """``int32 array of shape ()`` for arrays (also traced ones), else the type's name."""
    if hasattr(value, "dtype") and hasattr(value, "shape"):
        return f"{value.dtype} array of shape {tuple(value.shape)}"
    return f"{type(value).__name__} {value!r}"[:120]


def check_like(name: str, value: Any, expected: Any, owner: str) -> None:
    """``value`` must have ``expected``'s type, tree structure and leaf shapes and dtypes.

    ``expected`` is a pytree of arrays or ``jax.ShapeDtypeStruct`` (for example
    from ``jax.eval_shape``); ``owner`` names whose ``name`` it should be.
    """
    if type(value) is not type(expected):
        raise ValueError(
            f"{name}: expected the {type(expected).__name__} of {owner}, "
            f"got {type(value).__name__}"
        )
    got, want = jax.tree_util.tree_structure(value), jax.tree_util.tree_structure(expected)
    if got != want:
        raise ValueError(
            f"{name}: expected the structure of {owner}'s {name} ({want.num_leaves} leaves), got "
            f"another structure ({got.num_leaves} leaves): another strategy's or another "
            f"configuration's {name}?"
        )
    paths = jax.tree_util.tree_flatten_with_path(expected)[0]
    for (path, want_leaf), got_leaf in zip(paths, jax.tree_util.tree_leaves(value), strict=True):
        want_shape, got_shape = np.shape(want_leaf), np.shape(got_leaf)
        if got_shape != want_shape:
            raise ValueError(
                f"{name}{jax.tree_util.keystr(path)}: expected shape {want_shape} as in "
                f"{owner}'s {name}, got {got_shape} (another strategy's or another "
                "configuration's?)"
            )
