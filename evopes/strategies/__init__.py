"""Population-based strategies: classic ES with the ask/tell contract."""

from evopes.strategies.antithetic import AntitheticES, AntitheticParams, AntitheticState
from evopes.strategies.ars import ARS, ARSParams, ARSState
from evopes.strategies.cma_es import CMA_ES, CMAES, CMAESParams, CMAESState
from evopes.strategies.full_es import FullES
from evopes.strategies.lm_ma_es import LM_MA_ES, LMMAES, LMMAESParams, LMMAESState
from evopes.strategies.open_es import Open_ES, OpenES
from evopes.strategies.pgpe import PGPE, PGPEParams, PGPEState
from evopes.strategies.restarts import BIPOP, IPOP, RestartRecord, RestartResult
from evopes.strategies.sep_cma_es import Sep_CMA_ES, SepCMAES, SepCMAESState
from evopes.strategies.simple_es import SimpleES, SimpleESParams, SimpleESState
from evopes.strategies.snes import SNES, SNESParams, SNESState
from evopes.strategies.xnes import XNES, XNESParams, XNESState, xNES

__all__ = [
    "ARS",
    "ARSParams",
    "ARSState",
    "LMMAES",
    "LMMAESParams",
    "LMMAESState",
    "LM_MA_ES",
    "PGPE",
    "PGPEParams",
    "PGPEState",
    "AntitheticES",
    "AntitheticParams",
    "AntitheticState",
    "BIPOP",
    "CMAES",
    "CMAESParams",
    "CMAESState",
    "CMA_ES",
    "FullES",
    "IPOP",
    "OpenES",
    "Open_ES",
    "RestartRecord",
    "RestartResult",
    "SepCMAES",
    "SepCMAESState",
    "Sep_CMA_ES",
    "SimpleES",
    "SimpleESParams",
    "SimpleESState",
    "SNES",
    "SNESParams",
    "SNESState",
    "XNES",
    "XNESParams",
    "XNESState",
    "xNES",
]
