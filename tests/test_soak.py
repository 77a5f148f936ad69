"""Soak tests: 100,000 CMA-ES generations and 100,000 PES windows with 1% non-finite values.

Checked for every single generation / window: the state is sound (no NaN,
nothing infinite but the best-so-far bookkeeping, the user-facing mean finite),
and the ``num_nonfinite`` metric counts exactly the injected NaN / +inf / -inf.
Checked over the run: the process's resident memory stays flat.

CMA-ES runs on the sphere, so after a few hundred generations it sits at its
step-size floor for the rest of the run: the regime where implementations
without numerical guards turn NaN. PES accumulates noise across windows and
resets episodes every 8 steps.

``EVOPES_SOAK_LENGTH`` sets the number of generations / windows (default
100,000; CI uses a shorter run).
"""

import os
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from strategy_zoo import CASES, MEAN, SOLUTION, advance, code_shape, generation, strong_params

LENGTH = int(os.environ.get("EVOPES_SOAK_LENGTH", "100000"))
CHUNK = 1000
NONFINITE_RATE = 0.01
#: Allowed growth of resident memory between the end of the first chunk (everything
#: compiled and allocated once) and the end of the run. The loop keeps nothing from
#: chunk to chunk but the state, so any growth is allocator noise or a leak; 24 MiB
#: absorbs the noise seen on CPU (a few MiB) while a leak of 256 bytes per step
#: over 100,000 steps would exceed it.
RSS_BOUND = 24 * 2**20


def _resident_bytes() -> int:
    statm = Path("/proc/self/statm")
    if not statm.exists():
        pytest.skip("resident memory is read from /proc (Linux)")
    return int(statm.read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _soak(name: str):
    case = next(case for case in CASES if case.name == name)
    es = case.make(SOLUTION, 8)
    params = strong_params(es.default_params)
    state = es.init(jax.random.key(0), MEAN, params)
    step = generation(case, es)
    shape = (CHUNK,) + code_shape(case, es)
    num_chunks = -(-LENGTH // CHUNK)

    @jax.jit
    def draw_codes(key):
        nonfinite = jax.random.uniform(key, shape) < NONFINITE_RATE
        kind = jax.random.randint(jax.random.fold_in(key, 1), shape, 1, 4)  # NaN, +inf, -inf
        return jnp.where(nonfinite, kind, 0).astype(jnp.int32)

    injected_total = counted_total = 0
    rss_after_first = None
    for chunk in range(num_chunks):
        codes = draw_codes(jax.random.key(10_000 + chunk))
        state, (sound, metrics) = advance(step, state, jax.random.key(chunk), params, codes)
        sound = np.asarray(sound)
        if not sound.all():
            bad = chunk * CHUNK + int(np.argmin(sound)) + 1
            pytest.fail(f"{name}: unsound state at step {bad}")
        injected = np.asarray((codes != 0).reshape(CHUNK, -1).sum(axis=1))
        np.testing.assert_array_equal(np.asarray(metrics["num_nonfinite"]), injected)
        injected_total += int(injected.sum())
        counted_total += int(np.asarray(metrics["num_nonfinite"]).sum())
        del metrics, sound
        if chunk == 0:
            rss_after_first = _resident_bytes()
    growth = _resident_bytes() - rss_after_first
    return state, injected_total, counted_total, growth, num_chunks * CHUNK


@pytest.mark.soak
@pytest.mark.parametrize("name", ["CMAES", "PES"])
def test_soak_state_stays_sound_and_memory_flat(name):
    state, injected, counted, growth, steps = _soak(name)
    print(
        f"{name}: {steps} steps, {injected} non-finite values, "
        f"resident memory growth {growth / 2**20:.2f} MiB"
    )
    expected = (
        NONFINITE_RATE * steps * (16 if name == "PES" else 8)
    )  # values per step: W * 2P or lambda
    assert injected == counted and 0.8 * expected < injected < 1.2 * expected
    assert growth < RSS_BOUND, (
        f"resident memory grew by {growth / 2**20:.1f} MiB over {steps} steps"
    )
    if name == "CMAES":
        # Converged long ago and held there: sigma at its floor, mean at the optimum.
        assert bool(jnp.all(jnp.abs(state.mean) < 1e-3))
