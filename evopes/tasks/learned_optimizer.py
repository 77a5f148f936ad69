"""Meta-training a learned optimizer on 8x8 digits (the NRES paper's task).

The inner problem (Li et al. 2023, "Variance-Reduced Gradient Estimation via
Noise-Reuse in Online Evolution Strategies", section 5.3): a classifier MLP
64 -> 32 -> 32 -> 32 -> 10 (gelu) is trained on the ``digits`` images for
``horizon = T = 1000`` steps by a *learned optimizer* with parameters theta.
The per-step loss is the validation cross-entropy of the classifier after the
step, on a random validation batch, clipped at ``max_loss`` (NaN counts as
``max_loss``) so that a learned optimizer that makes the classifier diverge
gets a bad but bounded loss instead of one that swamps the ES estimate; the
meta-loss is its mean over the T steps

    l_t = min(CE_valid(phi_t(theta)), max_loss),
    L(theta) = E[ 1/T sum_{t=1..T} l_t ].

The learned optimizer is a small per-parameter MLP in the style of Metz et al.
(2022, "Practical tradeoffs between memory, compute, and performance in
learned optimizers", the "small MLP" lopt). For every classifier parameter
``p`` with gradient ``g`` (on a training batch) it keeps momenta
``m_b = b m_b + (1 - b) g`` for ``b`` in ``momentum_decays`` and a second
moment ``v = b2 v + (1 - b2) g^2``, and builds the features

    x = [p, g, m_b..., g / sqrt(v + eps), m_b / sqrt(v + eps)...]   (9 numbers)

each normalised over its tensor, ``x / sqrt(mean_tensor(x^2) + 1e-5)``, plus
the time features ``tanh(t / tau)`` for ``tau`` in ``time_scales``. A shared
MLP (12 -> 32 -> 32 -> 2, relu) maps them to a direction ``d`` and a log
magnitude ``s``; a linear head adds ``linear_mult * a . [g, m_b...]`` on the raw
(un-normalised) gradient and momenta to the direction, and the update is

    p <- p + step_mult * d_total * exp(exp_mult * s).

With the MLP's output layer zero and ``a = (-lr / (step_mult * linear_mult),
0, ...)`` this is exactly SGD with learning rate ``lr`` (and other ``a`` give
heavy-ball momentum), which the tests use as a known answer. theta has
1542 numbers. Meta-training uses ``W = 1`` (one step per ask/tell window).

For the online strategies, :meth:`LearnedOptimizerTask.init_inner` and
:meth:`LearnedOptimizerTask.step` follow the engine's contract
``init_inner(key) -> inner`` and ``step(inner, theta, key) -> (inner, loss,
done)``; ``done`` is always None because the strategy ends episodes at its
own ``horizon`` (build it with ``horizon=task.horizon``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.flatten_util import ravel_pytree

from evopes import threefry
from evopes.tasks.digits import load_digits, sample_batch
from evopes.tasks.mlp import DEFAULT_LAYER_SIZES, cross_entropy, init_mlp

_NORM_EPS = 1e-5


class InnerState(NamedTuple):
    """One inner training run: classifier parameters, optimizer accumulators, step count.

    The accumulators are flat over the classifier's parameters (tensors in
    ``ravel_pytree`` order): ``momenta`` (num_decays, n), ``second_moment`` (n,).
    """

    params: list
    momenta: list
    second_moment: list
    step: jax.Array


@dataclass(frozen=True)
class LearnedOptimizerTask:
    """The learned-optimizer meta-training problem (hashable static configuration).

    Args:
      horizon: inner training steps per episode, T.
      batch_size: training and validation batch size.
      layer_sizes: the classifier's layer widths.
      hidden_size: width of the learned optimizer's two hidden layers.
      momentum_decays: decays of the momentum features.
      second_moment_decay: decay of the second-moment accumulator.
      time_scales: tau of the time features tanh(t / tau).
      step_mult: scale of the update (keeps early updates small).
      exp_mult: scale of the log-magnitude output.
      linear_mult: scale of the linear head on the raw gradient and momenta.
      max_loss: per-step losses are clipped to this value (NaN counts as it).
      late_weight_power: q of the per-step weights w_t = (1 + q) (t / T)^q that
        multiply the losses (see :meth:`weights`); 0, the paper's meta-loss,
        weighs every step alike.
    """

    horizon: int = 1000
    batch_size: int = 128
    layer_sizes: tuple[int, ...] = DEFAULT_LAYER_SIZES
    hidden_size: int = 32
    momentum_decays: tuple[float, ...] = (0.5, 0.9, 0.99)
    second_moment_decay: float = 0.999
    time_scales: tuple[float, ...] = (10.0, 100.0, 1000.0)
    step_mult: float = 1e-3
    exp_mult: float = 1e-3
    linear_mult: float = 100.0
    max_loss: float = 5.0
    late_weight_power: float = 0.0

    # -- the learned optimizer ------------------------------------------------
    @property
    def num_features(self) -> int:
        return 3 + 2 * len(self.momentum_decays) + len(self.time_scales)

    def init_theta(self, key: jax.Array) -> dict:
        """Initial optimizer parameters: LeCun-normal hidden layers, zero output layer
        and zero linear head.

        The initial learned optimizer therefore leaves the classifier where it
        is (its meta-loss is that of an untrained network, about ln 10), and
        meta-training starts from a harmless optimizer. A random output layer
        instead pushes every parameter along a fixed function of its features
        at ``step_mult`` per step, which at T = 1000 makes the classifier drift
        and diverge within a few hundred steps.
        """
        sizes = (self.num_features, self.hidden_size, self.hidden_size, 2)
        mlp = init_mlp(key, sizes)
        mlp[-1] = jax.tree.map(jnp.zeros_like, mlp[-1])
        return {
            "mlp": mlp,
            "linear": jnp.zeros((1 + len(self.momentum_decays),), jnp.float32),
        }

    def sgd_theta(self, learning_rate: float) -> dict:
        """The theta that makes the learned optimizer plain SGD at ``learning_rate``."""
        theta = jax.tree.map(jnp.zeros_like, self.init_theta(jax.random.key(0)))
        scale = -learning_rate / (self.step_mult * self.linear_mult)
        return {**theta, "linear": theta["linear"].at[0].set(scale)}

    def _layout(self):
        """Sizes of the classifier's tensors and each flat parameter's tensor index."""
        template = jax.eval_shape(lambda key: init_mlp(key, self.layer_sizes), jax.random.key(0))
        sizes = [int(np.prod(leaf.shape)) for leaf in jax.tree.leaves(template)]
        return np.asarray(sizes), np.repeat(np.arange(len(sizes)), sizes)

    def features(self, flat_params, g, momenta, second) -> jax.Array:
        """The per-parameter inputs of the MLP for every flat parameter: (n, 9).

        ``[p, g, m_b..., g / sqrt(v + eps), m_b / sqrt(v + eps)...]`` each
        normalised over its tensor. One fused pass over the flat vector: no
        loop over the classifier's tensors.
        """
        rsqrt = jax.lax.rsqrt(second + 1e-8)
        raw = jnp.concatenate([g[None], momenta])
        per_parameter = jnp.concatenate([flat_params[None], raw, raw * rsqrt])  # (9, n)
        sizes, tensor_index = self._layout()
        # (n, num_tensors) one-hot membership: per-tensor means and their broadcast back are
        # two small matmuls (a scatter would be much slower on CPU).
        membership = (tensor_index[:, None] == np.arange(len(sizes))).astype(np.float32)
        mean_square = (jnp.square(per_parameter) @ membership) / sizes
        normalised = per_parameter * (jax.lax.rsqrt(mean_square + _NORM_EPS) @ membership.T)
        return normalised.T

    def mlp_outputs(self, mlp: list, per_parameter: jax.Array, step: jax.Array) -> jax.Array:
        """The shared MLP on ``[per_parameter, tanh(t / tau)]``: (n, 2).

        The time features are the same for every parameter, so their part of
        the first layer is a bias computed once per step instead of a
        broadcast (n, 3) block in the largest matmul input.
        """
        time_features = jnp.tanh(
            step.astype(jnp.float32) / jnp.asarray(self.time_scales, jnp.float32)
        )
        num_per_parameter = per_parameter.shape[1]
        first = mlp[0]
        bias = time_features @ first["w"][num_per_parameter:] + first["b"]
        hidden = jax.nn.relu(per_parameter @ first["w"][:num_per_parameter] + bias)
        for layer in mlp[1:-1]:
            hidden = jax.nn.relu(hidden @ layer["w"] + layer["b"])
        return hidden @ mlp[-1]["w"] + mlp[-1]["b"]

    def apply_lopt(self, theta: dict, inner: InnerState, grads: list) -> InnerState:
        """One learned-optimizer step on the classifier, given its gradient.

        Works on the flat parameter vector (all tensors concatenated).
        """
        flat_params, unravel = ravel_pytree(inner.params)
        g = ravel_pytree(grads)[0]
        decays = jnp.asarray(self.momentum_decays, jnp.float32)[:, None]
        momenta = decays * inner.momenta + (1 - decays) * g
        b2 = self.second_moment_decay
        second = b2 * inner.second_moment + (1 - b2) * g * g
        raw = jnp.concatenate([g[None], momenta])
        per_parameter = self.features(flat_params, g, momenta, second)
        out = self.mlp_outputs(theta["mlp"], per_parameter, inner.step)
        direction = out[:, 0] + self.linear_mult * (theta["linear"] @ raw)
        update = self.step_mult * direction * jnp.exp(self.exp_mult * out[:, 1])
        return InnerState(unravel(flat_params + update), momenta, second, inner.step + 1)

    def weights(self, step: jax.Array) -> jax.Array:
        """w_t = (1 + q) (t / T)^q for the step count t = 1..T (q = ``late_weight_power``).

        Their mean over an episode is about 1, so the meta-loss stays on the
        scale of a validation loss. q = 0 is the paper's mean over the run,
        which rewards training fast early; q > 0 weighs the end of training,
        where a user stops and keeps the classifier (q = 3: the last quarter of
        the steps carries 68% of the weight).
        """
        q = self.late_weight_power
        if q == 0:
            return jnp.ones_like(step, jnp.float32)
        return (1 + q) * (step.astype(jnp.float32) / self.horizon) ** q

    def _clip(self, loss: jax.Array) -> jax.Array:
        return jnp.where(jnp.isnan(loss), self.max_loss, jnp.minimum(loss, self.max_loss))

    # -- the online-ES contract -------------------------------------------------
    def init_inner(self, key: jax.Array) -> InnerState:
        """A fresh episode: new classifier parameters, zero accumulators, step 0."""
        params = init_mlp(key, self.layer_sizes)
        num_params = int(self._layout()[0].sum())
        momenta = jnp.zeros((len(self.momentum_decays), num_params), jnp.float32)
        second = jnp.zeros((num_params,), jnp.float32)
        return InnerState(params, momenta, second, jnp.zeros((), jnp.int32))

    def step(self, inner: InnerState, theta: dict, key: jax.Array):
        """One inner step: returns (inner, validation-batch loss after the step, done).

        ``done`` is always None: episodes end at the strategy's ``horizon``,
        where the strategy itself restarts the inner state from
        :meth:`init_inner` (a ``done`` flag would tell it that the system had
        already reset itself).
        """
        data = load_digits()
        train_key, valid_key = threefry.split(key)
        images, labels = sample_batch(
            train_key, data.train_images, data.train_labels, self.batch_size
        )
        grads = jax.grad(cross_entropy)(inner.params, images, labels)
        inner = self.apply_lopt(theta, inner, grads)
        images, labels = sample_batch(
            valid_key, data.valid_images, data.valid_labels, self.batch_size
        )
        loss = self._clip(cross_entropy(inner.params, images, labels))
        return inner, self.weights(inner.step) * loss, None

    # -- evaluation ---------------------------------------------------------------
    def _train_curve(self, init_state, update, key, num_steps):
        """Full-validation-set loss (clipped) after each of ``num_steps`` training steps."""
        data = load_digits()

        def one_step(carry, step_key):
            params, opt_state = carry
            images, labels = sample_batch(
                jax.random.split(step_key)[0], data.train_images, data.train_labels, self.batch_size
            )
            grads = jax.grad(cross_entropy)(params, images, labels)
            params, opt_state = update(params, opt_state, grads)
            return (params, opt_state), self._clip(
                cross_entropy(params, data.valid_images, data.valid_labels)
            )

        init_key, run_key = jax.random.split(key)
        params = init_mlp(init_key, self.layer_sizes)
        _, curve = jax.lax.scan(
            one_step, (params, init_state(params)), jax.random.split(run_key, num_steps)
        )
        return curve

    def lopt_curve(self, theta: dict, key: jax.Array, num_steps: int | None = None) -> jax.Array:
        """Validation loss (whole split) after each step of training a fresh MLP with theta."""

        def init_state(params):
            inner = self.init_inner(jax.random.key(0))
            return inner._replace(params=None)

        def update(params, opt_state, grads):
            inner = self.apply_lopt(theta, opt_state._replace(params=params), grads)
            return inner.params, inner._replace(params=None)

        return self._train_curve(init_state, update, key, num_steps or self.horizon)

    def adam_curve(self, learning_rate, key: jax.Array, num_steps: int | None = None) -> jax.Array:
        """The same curve for Adam (optax defaults) at ``learning_rate`` (may be traced)."""
        adam = optax.adam(learning_rate)

        def update(params, opt_state, grads):
            updates, opt_state = adam.update(grads, opt_state, params)
            return optax.apply_updates(params, updates), opt_state

        return self._train_curve(adam.init, update, key, num_steps or self.horizon)

    def meta_loss(self, theta: dict, key: jax.Array, num_steps: int | None = None) -> jax.Array:
        """Weighted mean validation loss (:meth:`weights`) over a fresh unroll with
        unperturbed theta.

        Uses the whole validation split at every step: the same expectation as
        the training objective (whose batches are uniform samples of it), with
        less variance.
        """
        curve = self.lopt_curve(theta, key, num_steps)
        return jnp.mean(self.weights(jnp.arange(1, curve.shape[0] + 1)) * curve)
