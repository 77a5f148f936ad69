"""Online evolution strategies for unrolled computation: TES, PES, GPES_K, NRES.

One engine (:class:`OnlineES`, in ``engine.py``) handles inner states,
per-particle time, episode ends, step-unlocking and the estimator; the
strategies differ only in their noise schedule.
"""

from evopes.online.engine import OnlineES, OnlineParams, OnlineState
from evopes.online.evosax_compat import NoiseReuseES, PersistentES
from evopes.online.gpes import GPES
from evopes.online.keys import pair_keys
from evopes.online.nres import NRES
from evopes.online.pes import PES
from evopes.online.tes import TES
from evopes.online.unroll import mean_over_steps, unroll

__all__ = [
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
]
