"""The shape of a solution: a hashable description of a parameter pytree.

Strategies work internally on flat vectors of length ``num_dims``. A
:class:`SolutionSpec` records the tree structure, leaf shapes and dtypes of
the user's template once, at construction, so that

* flattening and unflattening never leak to the user (pytrees in, pytrees out);
* the spec is hashable, which lets strategy objects with equal configuration
  hash equal and share compiled code;
* populations are (un)flattened leaf by leaf with one ``reshape`` each instead
  of a ``vmap`` over ``ravel_pytree``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

PyTree = Any


@dataclass(frozen=True)
class SolutionSpec:
    """Tree structure, leaf shapes and leaf dtypes of a solution pytree."""

    treedef: Any
    shapes: tuple[tuple[int, ...], ...]
    dtypes: tuple[Any, ...]

    @classmethod
    def from_template(cls, solution: PyTree) -> SolutionSpec:
        """Builds a spec from a template pytree (arrays or ShapeDtypeStructs)."""
        if isinstance(solution, SolutionSpec):
            return solution
        leaves, treedef = jax.tree_util.tree_flatten(solution)
        if not leaves:
            raise ValueError(
                "solution: expected a pytree with at least one array leaf, got an empty tree"
            )
        shapes = tuple(tuple(int(s) for s in np.shape(leaf)) for leaf in leaves)
        dtypes = tuple(_float_dtype(leaf) for leaf in leaves)
        return cls(treedef, shapes, dtypes)

    @property
    def sizes(self) -> tuple[int, ...]:
        return tuple(math.prod(shape) for shape in self.shapes)

    @property
    def num_dims(self) -> int:
        return sum(self.sizes)

    # -- single solutions -------------------------------------------------
    def check(self, tree: PyTree, name: str, batch_shape: tuple[int, ...] = ()) -> None:
        """Raises ValueError unless ``tree`` matches the spec (with leading batch axes)."""
        leaves, treedef = jax.tree_util.tree_flatten(tree)
        if treedef != self.treedef:
            raise ValueError(f"{name}: expected pytree structure {self.treedef}, got {treedef}")
        for index, (leaf, shape) in enumerate(zip(leaves, self.shapes, strict=True)):
            expected = tuple(batch_shape) + shape
            if tuple(np.shape(leaf)) != expected:
                raise ValueError(
                    f"{name}: leaf {index} expected shape {expected}, got {tuple(np.shape(leaf))}"
                )

    @property
    def all_float32(self) -> bool:
        """Whether every leaf is float32 (a population then holds its members exactly as
        the strategies compute them in float32)."""
        return all(jnp.dtype(dtype) == jnp.float32 for dtype in self.dtypes)

    @property
    def precision(self) -> Any:
        """float64 if JAX runs with ``jax_enable_x64`` and some leaf is float64, else float32.

        Strategies that follow the user's precision (the CMA-ES family) hold
        their state in this dtype. Read when a strategy is built: a strategy
        built under x64 computes in float64 for its whole life.
        """
        x64 = bool(jax.config.jax_enable_x64)
        wide = any(jnp.dtype(dtype) == jnp.float64 for dtype in self.dtypes)
        return jnp.dtype(jnp.float64 if x64 and wide else jnp.float32)

    def ravel(self, tree: PyTree, dtype=jnp.float32) -> jax.Array:
        """Pytree -> flat vector of length ``num_dims``."""
        self.check(tree, "solution")
        leaves = jax.tree_util.tree_leaves(tree)
        return jnp.concatenate([jnp.ravel(leaf).astype(dtype) for leaf in leaves])

    def unravel(self, flat: jax.Array) -> PyTree:
        """Flat vector of length ``num_dims`` -> pytree with the template's dtypes."""
        return self._split(flat, batch_shape=())

    # -- populations (leading axis) ---------------------------------------
    def ravel_population(self, population: PyTree, population_size: int, dtype=jnp.float32):
        """Pytree with leading population axis -> array (population_size, num_dims)."""
        self.check(population, "population", batch_shape=(population_size,))
        leaves = jax.tree_util.tree_leaves(population)
        return jnp.concatenate(
            [jnp.reshape(leaf, (population_size, -1)).astype(dtype) for leaf in leaves], axis=1
        )

    def unravel_population(self, flat_population: jax.Array) -> PyTree:
        """Array (population_size, num_dims) -> pytree with leading population axis."""
        return self._split(flat_population, batch_shape=flat_population.shape[:-1])

    def _split(self, flat: jax.Array, batch_shape: tuple[int, ...]) -> PyTree:
        if flat.shape[-1] != self.num_dims:
            raise ValueError(
                f"flat solution: expected last axis {self.num_dims}, got {flat.shape[-1]}"
            )
        if len(self.shapes) == 1:  # a single leaf: a reshape, no copy
            leaves = [flat.reshape(tuple(batch_shape) + self.shapes[0]).astype(self.dtypes[0])]
        else:
            offsets = np.cumsum((0,) + self.sizes)
            leaves = [
                flat[..., start:stop].reshape(tuple(batch_shape) + shape).astype(dtype)
                for start, stop, shape, dtype in zip(
                    offsets[:-1], offsets[1:], self.shapes, self.dtypes, strict=True
                )
            ]
        return jax.tree_util.tree_unflatten(self.treedef, leaves)


def _float_dtype(leaf) -> Any:
    dtype = jnp.result_type(leaf) if not hasattr(leaf, "dtype") else leaf.dtype
    if not jnp.issubdtype(dtype, jnp.floating):
        return jnp.dtype(jnp.float32)
    return jnp.dtype(dtype)
