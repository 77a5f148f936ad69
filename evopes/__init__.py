"""evopes: evolution strategies in JAX, with unbiased online ES for unrolled computation."""

from evopes import shaping
from evopes.noise import GaussianNoise, NoiseTable
from evopes.spec import SolutionSpec
from evopes.strategy import Params, State, Strategy

__version__ = "0.1.0"

__all__ = [
    "GaussianNoise",
    "NoiseTable",
    "Params",
    "SolutionSpec",
    "State",
    "Strategy",
    "shaping",
]
