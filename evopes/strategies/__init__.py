"""Population-based strategies: classic ES with the ask/tell contract."""

from evopes.strategies.antithetic import AntitheticES, AntitheticParams, AntitheticState
from evopes.strategies.full_es import FullES
from evopes.strategies.open_es import Open_ES, OpenES

__all__ = [
    "AntitheticES",
    "AntitheticParams",
    "AntitheticState",
    "FullES",
    "OpenES",
    "Open_ES",
]
