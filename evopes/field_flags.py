"""Named boolean flags held as one array: ``metrics["invalid_params"]``.

``tell`` reports, for every ranged hyperparameter, whether a traced value was
outside its range. As a dict of scalars that is one output per field of every
compiled ``tell``, and on CPU each output of an eager call costs about two
microseconds (its own kernel and buffer): for CMA-ES's 20 fields, 40 of the
150 microseconds an eager ``tell`` takes. :class:`FieldFlags` keeps the flags
in one boolean array whose last axis runs over the fields, and reads like the
dict it replaces (``flags["std"]``, ``.items()``, ``in``, ``len``); as a
pytree it has that one array as its only leaf, so under ``scan`` or ``vmap``
the flags gain leading axes and ``flags["std"]`` keeps them.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence

import jax
import jax.numpy as jnp


@jax.tree_util.register_pytree_node_class
class FieldFlags(Mapping):
    """Read-only mapping ``field name -> bool array``, stored as ``flags[..., i]``."""

    def __init__(self, names: Sequence[str], flags):
        # No checks: JAX rebuilds pytrees with placeholder leaves.
        self.names = tuple(names)
        self.flags = flags

    @classmethod
    def from_dict(cls, flags: Mapping[str, jax.Array]) -> FieldFlags:
        return cls(tuple(flags), jnp.stack([jnp.asarray(flag) for flag in flags.values()], -1))

    def __getitem__(self, name: str) -> jax.Array:
        try:
            index = self.names.index(name)
        except ValueError:
            raise KeyError(name) from None
        return self.flags[..., index]

    def __iter__(self) -> Iterator[str]:
        return iter(self.names)

    def __len__(self) -> int:
        return len(self.names)

    def __repr__(self) -> str:
        return f"FieldFlags({dict(self.items())!r})"

    def tree_flatten(self):
        return (self.flags,), self.names

    @classmethod
    def tree_unflatten(cls, names, children):
        return cls(names, children[0])
