"""Public strategy methods that compile themselves when called eagerly.

evosax users write loops without ``jax.jit`` and expect ``ask``/``tell`` to be
compiled; optax users compose everything inside their own ``jit``. A method
decorated with :func:`compiled_method` does both:

* called with concrete arrays (an eager loop), it runs a ``jax.jit`` of
  itself, with the strategy as a static argument. Strategies hash and compare
  by configuration, so equal strategies share one compiled program, and the
  hash is computed once per strategy (:meth:`Strategy.__hash__` caches it);
* called while JAX traces (inside the user's ``jit``, ``vmap``, ``scan`` or
  ``grad``: some argument is a tracer), it runs the plain Python function, so
  it adds nothing to the user's program.

Arguments named in ``static_argnames`` (flags such as ``apply_update``) are
static. ``before`` runs eagerly on the concrete arguments first, for checks of
values that ``jit`` would hide (hyperparameter ranges at ``init``).
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import jax

try:  # JAX's own flag: no transformation is tracing anything right now
    from jax._src.core import trace_state_clean as _nothing_traced
except ImportError:  # pragma: no cover (a JAX without it: look at every argument)
    _nothing_traced = None


def _traced(args, kwargs) -> bool:
    # Reading the flag costs 0.2 microseconds; flattening a strategy's state and
    # params to look for tracers costs about 6 of the 40-150 an eager call takes.
    # Outside every trace no argument can be a tracer, so the flag suffices.
    if _nothing_traced is not None and _nothing_traced():
        return False
    leaves = jax.tree_util.tree_leaves((args, kwargs))
    return any(isinstance(leaf, jax.core.Tracer) for leaf in leaves)


def compiled_method(
    static_argnames: tuple[str, ...] = (), before: Callable | None = None
) -> Callable:
    """Decorator: jit the method when called eagerly, run it plainly under a trace."""

    def decorator(method: Callable) -> Callable:
        compiled = jax.jit(method, static_argnums=0, static_argnames=static_argnames)

        @functools.wraps(method)
        def wrapper(self, *args, **kwargs):
            if _traced(args, kwargs):
                return method(self, *args, **kwargs)
            if before is not None:
                before(self, *args, **kwargs)
            return compiled(self, *args, **kwargs)

        wrapper.uncompiled = method
        wrapper.compiled = compiled
        return wrapper

    return decorator
