"""Box constraints lower <= x <= upper for the CMA-ES family, by a smooth transformation.

The strategy searches an unbounded space (the genotype x) and hands the user
only phenotypes y = T(x), which lie in the box by construction. T is the
piecewise linear/quadratic transformation that pycma uses by default
(``BoundTransform``, Hansen's ``BoxConstraintsLinQuadTransformation``); per
coordinate with bounds l < u, width w = u - l and the margins

    a_l = min(w / 2, max(1, |l|) / 20),   a_u = min(w / 2, max(1, |u|) / 20),

x is first mapped into [l - a_l, u + a_u] by the period r = 2 (w + a_l + a_u)
and a reflection at l - a_l and at u + a_u, then

    T(x) = l + (x - (l - a_l))^2 / (4 a_l)     for x < l + a_l
           x                                   for l + a_l <= x < u - a_u
           u - (x - (u + a_u))^2 / (4 a_u)     for x >= u - a_u.

T is the identity well inside the box, C^1 everywhere, and maps a whole
neighbourhood of a bound onto the bound's side quadratically, so an optimum on
a bound is approached without the distribution collapsing against a wall and
without a penalty to tune. A side without a bound (+-inf) has no margin there:
only the reflection and quadratic piece of the other side apply.

Why this handling and not repair (clipping) with a penalty on the repair
distance: it is the default of pycma, the reference evopes is measured against
(the bounded tests compare evaluation counts with pycma's ``bounds``), and it
needs no penalty weight, whose adaptation (Hansen et al. 2009) would add state
and a second fitness pass to ``tell``. Measured on the bounded test problems
(sphere and ellipsoid, d = 10, optimum on a bound and inside; see
docs/strategies/cma_es.md) evopes with T needs about as many evaluations as
pycma.

Members handed back to ``tell`` are mapped back to the genotypes they were
sampled from (kept in the state by ``ask``); a member that is not one of them
(an injected point) is mapped by the inverse of T on the box.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from evopes.spec import PyTree, SolutionSpec


def flat_bounds(spec: SolutionSpec, lower: PyTree, upper: PyTree):
    """(lower, upper) as float64 NumPy vectors of length n, or (None, None) without bounds.

    Each of ``lower``/``upper`` is None (no bound on that side), a scalar
    (broadcast) or a pytree shaped like the solution. ValueError naming the
    argument unless lower < upper in every coordinate.
    """
    if lower is None and upper is None:
        return None, None
    n = spec.num_dims

    def flat(value, name, default):
        if value is None:
            return np.full(n, default)
        if np.ndim(value) == 0 and not isinstance(value, dict | list | tuple):
            array = np.full(n, float(value))
        else:
            leaves, treedef = jax.tree_util.tree_flatten(value)
            if treedef != spec.treedef:
                raise ValueError(
                    f"{name}: expected a scalar or a pytree like the solution ({spec.treedef}), "
                    f"got {treedef}"
                )
            for leaf, shape in zip(leaves, spec.shapes, strict=True):
                if np.shape(leaf) != shape and np.ndim(leaf) != 0:
                    raise ValueError(f"{name}: expected leaf shape {shape}, got {np.shape(leaf)}")
            array = np.concatenate(
                [
                    np.broadcast_to(np.asarray(leaf, np.float64), shape).ravel()
                    for leaf, shape in zip(leaves, spec.shapes, strict=True)
                ]
            )
        if np.any(np.isnan(array)):
            raise ValueError(f"{name}: expected numbers (+-inf for no bound), got NaN in {array}")
        return array

    low, high = flat(lower, "lower", -np.inf), flat(upper, "upper", np.inf)
    if not np.all(low < high):
        bad = int(np.argmin(low < high))
        raise ValueError(
            f"upper: expected upper > lower in every coordinate, got lower = {low[bad]} and "
            f"upper = {high[bad]} in coordinate {bad}"
        )
    return low, high


def check_inside(spec: SolutionSpec, mean: PyTree, lower, upper, name: str = "mean") -> None:
    """ValueError naming ``name`` if a concrete mean lies outside [lower, upper].

    Compared in float64 as given (a float32 cast could move a mean on a bound outside).
    """
    leaves = jax.tree_util.tree_leaves(mean)
    if lower is None or any(isinstance(leaf, jax.core.Tracer) for leaf in leaves):
        return
    spec.check(mean, name)
    mean = np.concatenate([np.asarray(leaf, np.float64).ravel() for leaf in leaves])
    outside = (mean < lower) | (mean > upper)
    if np.any(outside):
        bad = int(np.argmax(outside))
        raise ValueError(
            f"{name}: expected the initial mean inside [lower, upper], got {mean[bad]} in "
            f"coordinate {bad} with bounds [{lower[bad]}, {upper[bad]}]"
        )


def margins(lower, upper):
    """a_l, a_u of the module docstring (inf on a side without a bound)."""
    width = upper - lower
    with np.errstate(invalid="ignore"):
        low = np.where(
            np.isfinite(lower), np.minimum(width / 2, np.maximum(1, np.abs(lower)) / 20), np.inf
        )
        high = np.where(
            np.isfinite(upper), np.minimum(width / 2, np.maximum(1, np.abs(upper)) / 20), np.inf
        )
    return low, high


def to_box(x: jax.Array, lower, upper) -> jax.Array:
    """The phenotype T(x) in [lower, upper] of genotypes ``x`` (..., n)."""
    a_low, a_high = margins(lower, upper)
    both = np.isfinite(lower) & np.isfinite(upper)
    dtype = x.dtype
    low, high = jnp.asarray(lower, dtype), jnp.asarray(upper, dtype)
    a_low_, a_high_ = jnp.asarray(a_low, dtype), jnp.asarray(a_high, dtype)
    # Period and start of the periodic domain (coordinates bounded on both sides).
    width = np.where(both, upper - lower, 0.0)
    period = jnp.asarray(np.where(both, 2 * (width + a_low + a_high), 1.0), dtype)
    start = jnp.asarray(np.where(both, lower - 2 * a_low - width / 2, 0.0), dtype)
    shifted = x - period * jnp.floor((x - start) / period)
    x = jnp.where(both, shifted, x)
    x = jnp.where(x > high + a_high_, 2 * (high + a_high_) - x, x)  # reflect at u + a_u
    x = jnp.where(x < low - a_low_, 2 * (low - a_low_) - x, x)  # reflect at l - a_l
    below = low + (x - (low - a_low_)) ** 2 / (4 * a_low_)
    above = high - (x - (high + a_high_)) ** 2 / (4 * a_high_)
    has_low, has_high = np.isfinite(lower), np.isfinite(upper)
    y = jnp.where(
        has_low & (x < low + a_low_), below, jnp.where(~has_high | (x < high - a_high_), x, above)
    )
    return jnp.clip(y, low, high)  # rounding at the quadratic pieces' ends


def from_box(y: jax.Array, lower, upper) -> jax.Array:
    """A genotype x with T(x) = y for y in [lower, upper] (y outside is clipped first)."""
    a_low, a_high = margins(lower, upper)
    dtype = y.dtype
    low, high = jnp.asarray(lower, dtype), jnp.asarray(upper, dtype)
    a_low_, a_high_ = jnp.asarray(a_low, dtype), jnp.asarray(a_high, dtype)
    y = jnp.clip(y, low, high)
    below = low - a_low_ + 2 * jnp.sqrt(a_low_ * jnp.maximum(y - low, 0.0))
    above = high + a_high_ - 2 * jnp.sqrt(a_high_ * jnp.maximum(high - y, 0.0))
    has_low, has_high = np.isfinite(lower), np.isfinite(upper)
    return jnp.where(
        has_low & (y < low + a_low_), below, jnp.where(has_high & (y > high - a_high_), above, y)
    )


def genotypes_of(population, genotypes, lower, upper):
    """The genotypes of the members handed back: the sampled ones where ``population``
    equals their phenotypes, the inverse of T elsewhere (points the user put in)."""
    # Equal up to rounding: ask and tell may be compiled apart (fused differently).
    phenotypes = to_box(genotypes, lower, upper)
    tolerance = 8 * jnp.finfo(population.dtype).eps * (1 + jnp.abs(phenotypes))
    sampled = jnp.all(jnp.abs(population - phenotypes) <= tolerance, axis=-1, keepdims=True)
    return jnp.where(sampled, genotypes, from_box(population, lower, upper))
