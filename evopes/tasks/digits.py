"""scikit-learn's bundled 8x8 ``digits`` images as a small, offline data set.

The data set ships with scikit-learn (1797 grey-scale 8x8 images of the digits
0-9, pixel values 0..16), so nothing is downloaded. It stands in for the
8x8 down-scaled Fashion-MNIST of the NRES paper (Li et al. 2023, section 5.3).

* :func:`load_digits` splits it once, deterministically: a fixed permutation
  (``numpy.random.default_rng(0)``) of the 1797 indices, the first
  ``num_train`` (80%) for training and the rest for validation. Pixels are
  scaled to [0, 1] (divided by 16) and flattened to 64 features.
* :func:`sample_batch` draws a batch of ``batch_size`` examples uniformly with
  replacement, so a batch loss is an unbiased estimate of the loss on the
  whole split.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

NUM_EXAMPLES = 1797
NUM_FEATURES = 64
NUM_CLASSES = 10
SPLIT_SEED = 0


class Digits(NamedTuple):
    """Train and validation splits: images (n, 64) float32 in [0, 1], labels (n,) int32."""

    train_images: jax.Array
    train_labels: jax.Array
    valid_images: jax.Array
    valid_labels: jax.Array


def split_indices(num_examples: int = NUM_EXAMPLES, train_fraction: float = 0.8):
    """The deterministic (train, validation) index split: disjoint and covering."""
    order = np.random.default_rng(SPLIT_SEED).permutation(num_examples)
    num_train = int(round(train_fraction * num_examples))
    return order[:num_train], order[num_train:]


@functools.lru_cache(maxsize=4)
def _load_numpy(train_fraction: float) -> Digits:
    from sklearn.datasets import load_digits as sklearn_load_digits

    images, labels = sklearn_load_digits(return_X_y=True)
    images = np.asarray(images, np.float32) / 16.0
    labels = np.asarray(labels, np.int32)
    train, valid = split_indices(len(labels), train_fraction)
    return Digits(images[train], labels[train], images[valid], labels[valid])


def load_digits(train_fraction: float = 0.8) -> Digits:
    """The digits data set, split and scaled, as jnp arrays.

    The NumPy arrays are cached (read once per process); inside a traced
    function the returned arrays are compile-time constants.
    """
    return Digits(*(jnp.asarray(a) for a in _load_numpy(train_fraction)))


def sample_batch(key: jax.Array, images: jax.Array, labels: jax.Array, batch_size: int):
    """``batch_size`` examples drawn uniformly with replacement: (images, labels)."""
    index = jax.random.randint(key, (batch_size,), 0, labels.shape[0])
    return images[index], labels[index]
