"""The papers' tasks as pure JAX systems for the online strategies.

Each task module provides ``init_inner(key)`` (the inner state of one particle
at an episode start), ``step(inner, theta, key) -> (inner, loss, done)`` (one
step of the unrolled system, the contract of :func:`evopes.unroll`), its
evaluation function and, where the papers compare with it, a truncated
backpropagation (TBPTT) baseline:

* :mod:`evopes.tasks.influence_balancing` — PES paper, section 5.1.
* :mod:`evopes.tasks.toy_regression` — PES paper, section 5.2.
* :mod:`evopes.tasks.lorenz` — NRES paper, section 6.1.

:mod:`evopes.tasks.training` runs a strategy on a task in one compiled loop
(training curves, and gradient estimates at a fixed theta for variance studies).
The tasks depend on the core; the core never imports them.
"""

from evopes.tasks import influence_balancing, lorenz, toy_regression

__all__ = ["influence_balancing", "lorenz", "toy_regression"]
