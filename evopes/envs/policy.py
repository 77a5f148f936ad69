"""Policies: turning parameters and an observation into an action.

Anything with the signature ``apply(params, obs) -> action`` over a parameter
pytree is a policy; a flax linen module is used through its ``apply``.
:class:`MLPPolicy` covers the usual ES policies: the deterministic MLP of the
pendulum CMA-ES tutorial (3 -> 48 relu -> 1), linear policies without bias as in
the ES papers' MuJoCo experiments, and greedy policies for discrete actions.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

ApplyFn = Callable[[Any, jax.Array], jax.Array]


def as_apply_fn(policy: nn.Module | ApplyFn) -> ApplyFn:
    """``policy.apply`` for a flax linen module, else ``policy`` itself."""
    if isinstance(policy, nn.Module):
        return policy.apply
    if not callable(policy):
        raise ValueError(
            "policy: expected a flax linen Module or a function apply(params, obs) -> action, "
            f"got {policy!r}"
        )
    return policy


class MLPPolicy(nn.Module):
    """A deterministic multilayer perceptron policy.

    Attributes:
      action_dim: outputs of the last layer (actions, or logits if ``discrete``).
      hidden_sizes: widths of the hidden layers; ``()`` is a linear policy.
      activation: hidden-layer nonlinearity.
      use_bias: whether layers have biases (the ES papers' linear policies do not).
      output: ``"identity"`` (the environment clips), ``"tanh"``, ``"clip"``
        (to [-1, 1], brax's action range) or ``"argmax"`` (a discrete action:
        the index of the largest output, an int32 scalar).
      kernel_init: initialiser of every kernel (zeros gives the papers' zero
        initialisation of linear policies).
    """

    action_dim: int
    hidden_sizes: Sequence[int] = (64,)
    activation: Callable[[jax.Array], jax.Array] = nn.relu
    use_bias: bool = True
    output: str = "identity"
    kernel_init: Callable = nn.initializers.lecun_normal()

    @nn.compact
    def __call__(self, obs: jax.Array) -> jax.Array:
        if self.output not in ("identity", "tanh", "clip", "argmax"):
            raise ValueError(
                f"output: expected 'identity', 'tanh', 'clip' or 'argmax', got {self.output!r}"
            )
        x = jnp.ravel(obs).astype(jnp.float32)
        for width in self.hidden_sizes:
            x = self.activation(
                nn.Dense(width, use_bias=self.use_bias, kernel_init=self.kernel_init)(x)
            )
        x = nn.Dense(self.action_dim, use_bias=self.use_bias, kernel_init=self.kernel_init)(x)
        if self.output == "tanh":
            return jnp.tanh(x)
        if self.output == "clip":
            return jnp.clip(x, -1.0, 1.0)
        if self.output == "argmax":
            return jnp.argmax(x).astype(jnp.int32)
        return x
