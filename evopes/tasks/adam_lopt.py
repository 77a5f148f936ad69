"""A learned optimizer that starts as Adam: a small MLP corrects Adam's update and its step size.

The inner problem is that of :mod:`evopes.tasks.learned_optimizer` (a
64-32-32-32-10 gelu MLP on 8x8 digits for T steps, per-step loss the clipped
validation cross-entropy after the step, meta-loss its mean over the T steps).
Only the optimizer differs: instead of a free per-parameter MLP it is Adam
(Kingma & Ba 2015) with a learned log learning rate and a learned additive
correction, the "MLP on Adam" family of practical learned optimizers (Metz et
al. 2022, "Practical tradeoffs between memory, compute, and performance in
learned optimizers": per-parameter MLPs fed Adam-normalised features; the
NNAdam idea of a network that steers Adam's hyperparameters).

For every classifier parameter ``p`` with gradient ``g`` at step
``t = 1, 2, ...`` it keeps momenta ``m_b = b m_b + (1 - b) g`` for ``b`` in
``momentum_decays`` (the first decay is Adam's ``beta1``) and the second
moment ``v = b2 v + (1 - b2) g^2`` (``b2 = second_moment_decay``, Adam's
``beta2``). Adam's direction, as ``optax.adam`` computes it, is

    a = (m_1 / (1 - beta1^t)) / (sqrt(v / (1 - beta2^t)) + eps).          (1)

The learning rate follows a learned schedule over the training fraction
u = (t - 1) / T, as learned optimizers conditioned on the fraction of training
done do (VeLO, Metz et al. 2022, is told its step budget the same way): a
piecewise-linear log learning rate through K = ``schedule_knots`` equally
spaced knots on [0, 1], constant after the last,

    schedule(t) = sum_k max(0, 1 - |min(u, 1) (K - 1) - k|) log_lr_schedule[k],   (2)
    lr_t = lr0 * exp(log_lr_mult * (log_lr + schedule(t))).                      (3)

The MLP (12 -> 32 -> 32 -> 2, relu) reads the features of the parent task
(``p, g, m_b, g / sqrt(v), m_b / sqrt(v)``, each normalised over its tensor,
and ``tanh(t / tau)``) and outputs a direction correction ``d`` and a log
step-size correction ``s`` per parameter. With theta = ``{"mlp", "log_lr",
"log_lr_schedule"}`` the update is

    p <- p - lr_t * (a + direction_mult * d) * exp(exp_mult * s).          (4)

``log_lr_mult`` (10) makes the learning rate a well-scaled coordinate for ES:
a perturbation of sigma = 0.01 changes the learning rate by about 10%, and a
meta-optimizer step of 1e-3 moves it by 1%. The schedule gives ES a direct
handle on when to train fast and when to settle (for instance to stop before
the small digits training set is overfitted), which the MLP's step-size output
could express only through large, hard-to-reach values of ``s``.

**theta's starting point is Adam at ``lr0``.** :meth:`init_theta` draws the
hidden layers and sets the MLP's output layer, ``log_lr`` and the schedule to
zero, so ``d = s = 0`` and the update is ``-lr0 * a``: exactly
``optax.adam(lr0)`` (the tests check it step for step). :meth:`adam_theta`
gives Adam at any constant learning rate (``log_lr = log(lr / lr0) /
log_lr_mult``), and any schedule of the form (2) makes it ``optax.adam`` with
that learning-rate schedule (tested too), so a tuned Adam is one point of the
search space and meta-training can only improve on it by the meta-loss's
measure. A learned optimizer built this way begins as a sound optimizer
instead of a random one, which is why practitioners favour it; the benchmark
reports the starting point (Adam at ``lr0``) next to the trained one and the
tuned Adam. theta has 1547 numbers (1538 in the MLP, one ``log_lr``, eight
knots).

The computation is one fused elementwise pass over the flattened classifier
parameters (no Python loop over tensors); under the online engine's ``vmap``
over particles every particle's optimizer runs as one batched program.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree

from evopes.tasks.learned_optimizer import InnerState, LearnedOptimizerTask
from evopes.tasks.mlp import init_mlp


@dataclass(frozen=True)
class AdamLearnedOptimizerTask(LearnedOptimizerTask):
    """Learned-optimizer meta-training with the Adam-plus-MLP optimizer (hashable).

    Args (besides those of :class:`LearnedOptimizerTask`, whose ``linear_mult``
    is unused here):
      momentum_decays: decays of the momentum features; the first is Adam's beta1.
      second_moment_decay: Adam's beta2.
      lr0: the learning rate of the starting point (theta = init: Adam at lr0).
      adam_eps: Adam's epsilon (optax's default).
      direction_mult: scale of the MLP's direction correction relative to Adam's.
      exp_mult: scale of the MLP's log step-size output.
      log_lr_mult: scale of the learned log learning rate.
    """

    momentum_decays: tuple[float, ...] = (0.9, 0.5, 0.99)
    second_moment_decay: float = 0.999
    schedule_knots: int = 8
    lr0: float = 1e-3
    adam_eps: float = 1e-8
    direction_mult: float = 1.0
    exp_mult: float = 0.1
    log_lr_mult: float = 10.0

    def __post_init__(self):
        if not self.momentum_decays:
            raise ValueError("momentum_decays: expected at least one decay (Adam's beta1), got ()")
        if not (isinstance(self.schedule_knots, int) and self.schedule_knots >= 2):
            raise ValueError(
                f"schedule_knots: expected an integer >= 2, got {self.schedule_knots!r}"
            )
        if not self.lr0 > 0:
            raise ValueError(f"lr0: expected a positive learning rate, got {self.lr0}")

    def init_theta(self, key: jax.Array) -> dict:
        """Adam at ``lr0``: LeCun-normal hidden layers, zero output layer, ``log_lr = 0``."""
        sizes = (self.num_features, self.hidden_size, self.hidden_size, 2)
        mlp = init_mlp(key, sizes)
        mlp[-1] = jax.tree.map(jnp.zeros_like, mlp[-1])
        return {
            "mlp": mlp,
            "log_lr": jnp.zeros((), jnp.float32),
            "log_lr_schedule": jnp.zeros((self.schedule_knots,), jnp.float32),
        }

    def adam_theta(self, learning_rate: float, key: jax.Array | None = None) -> dict:
        """The theta that makes the learned optimizer Adam at ``learning_rate``."""
        if not learning_rate > 0:
            raise ValueError(f"learning_rate: expected a positive number, got {learning_rate}")
        theta = self.init_theta(jax.random.key(0) if key is None else key)
        log_lr = jnp.float32(math.log(learning_rate / self.lr0) / self.log_lr_mult)
        return {**theta, "log_lr": log_lr}

    def sgd_theta(self, learning_rate: float) -> dict:
        raise NotImplementedError(
            "sgd_theta: this optimizer always follows Adam's direction; use adam_theta"
        )

    def schedule(self, theta: dict, step: jax.Array) -> jax.Array:
        """The learned log learning rate's offset at step count ``step`` (0-based).

        Piecewise linear in the training fraction u = step / horizon between
        ``schedule_knots`` = K equally spaced knots on [0, 1], constant beyond
        the last one (eq. 2): with x = min(u, 1) (K - 1),

            schedule(t) = sum_k max(0, 1 - |x - k|) log_lr_schedule[k].

        The hat-function form is elementwise: no search over the knots.
        """
        fraction = jnp.minimum(step.astype(jnp.float32) / self.horizon, 1.0)
        position = fraction * (self.schedule_knots - 1)
        hats = jax.nn.relu(1.0 - jnp.abs(position - jnp.arange(self.schedule_knots)))
        return jnp.sum(hats * theta["log_lr_schedule"])

    def learning_rate(self, theta: dict, step: jax.Array) -> jax.Array:
        """lr_t = lr0 exp(log_lr_mult (log_lr + schedule(t))) (eq. 3) at 0-based ``step``."""
        offset = theta["log_lr"] + self.schedule(theta, jnp.asarray(step))
        return self.lr0 * jnp.exp(self.log_lr_mult * offset)

    def apply_lopt(self, theta: dict, inner: InnerState, grads: list) -> InnerState:
        """One step: Adam's direction plus the MLP's correction, on the flat parameters."""
        flat_params, unravel = ravel_pytree(inner.params)
        g = ravel_pytree(grads)[0]
        # 1 - b in double precision, then rounded (as optax does with Python floats).
        decays = np.asarray(self.momentum_decays, np.float64)[:, None]
        momenta = decays.astype(np.float32) * inner.momenta + (1 - decays).astype(np.float32) * g
        b2 = self.second_moment_decay
        second = b2 * inner.second_moment + (1 - b2) * jnp.square(g)

        # Adam's direction, in the order of operations of optax.scale_by_adam.
        count = inner.step + 1
        b1 = self.momentum_decays[0]
        m_hat = momenta[0] / (1 - b1**count).astype(jnp.float32)
        v_hat = second / (1 - b2**count).astype(jnp.float32)
        adam_direction = m_hat / (jnp.sqrt(v_hat) + self.adam_eps)

        per_parameter = self.features(flat_params, g, momenta, second)
        out = self.mlp_outputs(theta["mlp"], per_parameter, inner.step)
        direction = adam_direction + self.direction_mult * out[:, 0]
        learning_rate = self.learning_rate(theta, inner.step)
        update = -learning_rate * direction * jnp.exp(self.exp_mult * out[:, 1])
        return InnerState(unravel(flat_params + update), momenta, second, inner.step + 1)
