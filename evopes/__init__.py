"""evopes: evolution strategies in JAX, with unbiased online ES for unrolled computation."""

from evopes import shaping
from evopes.checkpoint import latest_checkpoint, restore_checkpoint, save_checkpoint
from evopes.clipup import clipup
from evopes.driver import RunResult, run, run_loop, run_online
from evopes.noise import GaussianNoise, NoiseTable
from evopes.online import (
    GPES,
    NRES,
    PES,
    TES,
    NoiseReuseES,
    OnlineES,
    OnlineParams,
    OnlineState,
    PersistentES,
    mean_over_steps,
    pair_keys,
    unroll,
)
from evopes.spec import SolutionSpec
from evopes.strategies import (
    ARS,
    BIPOP,
    CMA_ES,
    CMAES,
    IPOP,
    LM_MA_ES,
    LMMAES,
    PGPE,
    SNES,
    XNES,
    FullES,
    Open_ES,
    OpenES,
    Sep_CMA_ES,
    SepCMAES,
    SimpleES,
    xNES,
)
from evopes.strategy import Params, State, Strategy

__version__ = "0.1.0"

__all__ = [
    "ARS",
    "LMMAES",
    "LM_MA_ES",
    "PGPE",
    "SimpleES",
    "SNES",
    "XNES",
    "xNES",
    "clipup",
    "BIPOP",
    "CMAES",
    "CMA_ES",
    "IPOP",
    "SepCMAES",
    "Sep_CMA_ES",
    "FullES",
    "OpenES",
    "Open_ES",
    "GPES",
    "NRES",
    "NoiseReuseES",
    "OnlineES",
    "OnlineParams",
    "OnlineState",
    "PES",
    "PersistentES",
    "TES",
    "mean_over_steps",
    "pair_keys",
    "unroll",
    "GaussianNoise",
    "NoiseTable",
    "Params",
    "RunResult",
    "SolutionSpec",
    "State",
    "Strategy",
    "latest_checkpoint",
    "restore_checkpoint",
    "run",
    "run_loop",
    "run_online",
    "save_checkpoint",
    "shaping",
]
