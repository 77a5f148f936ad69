"""Shared test configuration.

Tests run on the CPU. Compilation dominates their cost, so tests share jitted
functions through module-level helpers and keep shapes small.
"""

import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402
import pytest  # noqa: E402


@pytest.fixture
def key():
    return jax.random.key(0)
