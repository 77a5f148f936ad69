"""Property test: any ``params.std`` either fails at ``init`` or never poisons the state.

For every online strategy, ``std`` is drawn from non-finite, zero, negative,
tiny, huge and ordinary values. Eagerly, ``init`` must raise a ValueError
naming ``params.std`` exactly when the value is outside ``[1e-18, 1e18]``.
Under ``jit`` (where the value cannot be checked), ten windows must leave
every state leaf finite, and the termination flag must be set in every window
exactly when the value is invalid.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from strategy_zoo import halving_step, zero_inner

import evopes

LOW, HIGH = evopes.online.engine.STD_RANGE


STRATEGIES = {
    name: cls(4, jnp.zeros(3), 2, 4, zero_inner, optax.sgd(0.1), step_unlocked=False, **kwargs)
    for name, cls, kwargs in [
        ("TES", evopes.TES, {}),
        ("PES", evopes.PES, {}),
        ("GPES", evopes.GPES, {"noise_period": 4}),
        ("NRES", evopes.NRES, {}),
    ]
}

SPECIAL = [np.nan, np.inf, -np.inf, 0.0, -0.0, -1.0, 1e-45, 1e-38, 1e-20, 1e-18, 1e-3, 1.0, 1e18]
STDS = st.one_of(
    st.sampled_from(SPECIAL),
    st.floats(min_value=-3e38, max_value=3e38, allow_nan=False, allow_infinity=False),
)


def valid(std: float) -> bool:
    std32 = float(np.float32(std))
    return bool(np.isfinite(std32) and LOW <= std32 <= HIGH)


@functools.partial(jax.jit, static_argnums=0)
def ten_windows(es, std):
    params = evopes.OnlineParams(std=std)
    state = es.init(jax.random.key(0), jnp.ones(3), params)

    def window(state, key):
        population, state = es.ask(key, state, params)
        inner, losses, dones = evopes.unroll(halving_step, population, state.inner_state, key, 2)
        state, metrics = es.tell(
            key, population, losses, state, params, inner_state=inner, dones=dones
        )
        return state, metrics["terminate"]

    return jax.lax.scan(window, state, jax.random.split(jax.random.key(1), 10))


@pytest.mark.parametrize("name", sorted(STRATEGIES))
@settings(max_examples=15, deadline=None, derandomize=True)
@given(std=STDS)
def test_std_raises_at_init_or_never_poisons_the_state(name, std):
    es = STRATEGIES[name]
    params = evopes.OnlineParams(std=np.float32(std))
    if valid(std):
        es.init(jax.random.key(0), jnp.ones(3), params)
    else:
        with pytest.raises(ValueError, match=r"params\.std"):
            es.init(jax.random.key(0), jnp.ones(3), params)
    state, terminate = ten_windows(es, jnp.float32(std))
    for leaf in jax.tree_util.tree_leaves(state):
        if jnp.issubdtype(leaf.dtype, jnp.inexact):
            assert np.all(np.isfinite(leaf)), (name, std)
    np.testing.assert_array_equal(terminate, not valid(std))
