"""The small classifier trained by the tasks: an MLP with gelu activations.

``layer_sizes = (64, 32, 32, 32, 10)`` is the NRES paper's inner network for
learned-optimizer meta-training (three hidden layers of 32 units, gelu; Li et
al. 2023, section 5.3). Parameters are a list of ``{"w": (m, n), "b": (n,)}``
dicts; weights are drawn from N(0, 1/m) (LeCun normal) and biases start at 0.

The loss is the mean softmax cross-entropy
``-1/B sum_b log softmax(f(x_b))[y_b]``.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp

DEFAULT_LAYER_SIZES = (64, 32, 32, 32, 10)


def init_mlp(key: jax.Array, layer_sizes: Sequence[int] = DEFAULT_LAYER_SIZES) -> list[dict]:
    """Fresh parameters: weights ~ N(0, 1/fan_in), zero biases."""
    shapes = list(zip(layer_sizes[:-1], layer_sizes[1:], strict=True))
    # One draw for all weights: a single random-number kernel compiles faster than one per layer.
    normals = jax.random.normal(key, (sum(m * n for m, n in shapes),), jnp.float32)
    params, start = [], 0
    for m, n in shapes:
        weight = normals[start : start + m * n].reshape(m, n) / jnp.sqrt(jnp.float32(m))
        params.append({"w": weight, "b": jnp.zeros((n,), jnp.float32)})
        start += m * n
    return params


def mlp_logits(params: list[dict], images: jax.Array) -> jax.Array:
    """Logits of a batch: gelu on every hidden layer, linear output."""
    hidden = images
    for layer in params[:-1]:
        hidden = jax.nn.gelu(hidden @ layer["w"] + layer["b"])
    return hidden @ params[-1]["w"] + params[-1]["b"]


def cross_entropy(params: list[dict], images: jax.Array, labels: jax.Array) -> jax.Array:
    """Mean softmax cross-entropy of the batch."""
    log_probs = jax.nn.log_softmax(mlp_logits(params, images))
    return -jnp.mean(jnp.take_along_axis(log_probs, labels[:, None], axis=1))


def accuracy(params: list[dict], images: jax.Array, labels: jax.Array) -> jax.Array:
    """Fraction of the batch classified correctly."""
    return jnp.mean(jnp.argmax(mlp_logits(params, images), axis=1) == labels)
