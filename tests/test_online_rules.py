"""The online engine's rules on hand-checkable examples.

Most tests read the Stein weight ``w_{p,s}`` that the estimator gives the loss
of particle ``p`` at step ``s`` by feeding ``tell`` one-hot losses: with a
single loss of 1 at ``(s, p)`` and every pair valid, the estimate is
``sign_p * w_{p,s} / (2 P W)``. The expected weights are written by hand from
the perturbations ``e`` that ``ask`` returned: ``w`` is the sum of the distinct
blocks ``e_j / std_j^2`` of the particle's current episode (REFERENCE
section 1), and steps after a ``done`` belong to the new episode.

All tests share two jitted functions (``init`` and ``window``) and a handful
of strategy configurations, so each configuration compiles once.
"""

import functools
from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import evopes

OPTIMIZER = optax.sgd(0.1)


def zero_inner(key):
    del key
    return jnp.zeros(())


def random_inner(key):
    return jax.random.normal(key, (3,))


def make(cls, W, T, *, pairs=2, dims=2, init_inner=zero_inner, step_unlocked=False, **kwargs):
    return cls(2 * pairs, jnp.zeros(dims), W, T, init_inner, OPTIMIZER, step_unlocked, **kwargs)


PES_W3 = make(evopes.PES, 3, 9)  # a middle step in every window
NRES_W2 = make(evopes.NRES, 2, 4)


@jax.jit
def init(es, key, mean, params):
    return es.init(key, mean, params)


def probe_weights(es, state, params, dones, population=None):
    """(W, 2P, d) Stein weights w_{p,s} of the window ``state`` was asked for.

    ``population``: what ``tell`` is handed (None: the noise is regenerated).
    """
    W, n = es.truncation_length, es.population_size
    one_hots = jnp.eye(W * n).reshape(W * n, W, n)

    def gradient(losses):
        _, metrics = es.tell(
            jax.random.key(0),
            population,
            losses,
            state,
            params,
            inner_state=state.inner_state,
            dones=dones,
            apply_update=False,
        )
        return es.spec.ravel(metrics["gradient"])

    sign = jnp.repeat(jnp.array([1.0, -1.0]), n // 2)
    return jax.vmap(gradient)(one_hots).reshape(W, n, -1) * sign[None, :, None] * (n * W)


@functools.partial(jax.jit, static_argnames="hand_back")
def _window(es, key, state, params, losses, dones, inner_after, hand_back):
    population, asked = es.ask(key, state, params)
    handed = population if hand_back else None
    weights = probe_weights(es, asked, params, dones, handed)
    new_state, metrics = es.tell(
        key, handed, losses, asked, params, inner_state=inner_after, dones=dones
    )
    return population, asked, weights, new_state, metrics


#: Whether ``run_window`` hands the population back to ``tell`` (the default path,
#: where the noise is read off it) or passes None (the noise is regenerated).
#: Tests that request the ``hand_back`` fixture run both ways.
HAND_BACK = {"value": False}


@pytest.fixture(params=[False, True], ids=["regenerated", "handed-back"])
def hand_back(request):
    HAND_BACK["value"] = request.param
    yield request.param
    HAND_BACK["value"] = False


@dataclass
class Window:
    blocks: np.ndarray  # (2P, d): e_p / std^2 of the block each particle was asked with
    weights: np.ndarray  # (W, 2P, d): w_{p,s}
    population: jax.Array
    state: evopes.OnlineState  # after tell
    metrics: dict


def run_window(es, state, params, seed, dones=(), losses=None, inner_after=None) -> Window:
    """ask, then tell (zero losses and an unchanged inner state unless given)."""
    shape = (es.truncation_length, es.population_size)
    done_array = np.zeros(shape, bool)
    for step, particle in dones:
        done_array[step, particle] = True
    losses = jnp.zeros(shape) if losses is None else losses
    inner_after = state.inner_state if inner_after is None else inner_after
    population, asked, weights, new_state, metrics = _window(
        es,
        jax.random.key(seed),
        state,
        params,
        losses,
        jnp.asarray(done_array),
        inner_after,
        hand_back=HAND_BACK["value"],
    )
    sign = jnp.repeat(jnp.array([1.0, -1.0]), es.num_pairs)[:, None]
    blocks = sign * (population - asked.mean) / params.std**2
    return Window(np.asarray(blocks), np.asarray(weights), population, new_state, metrics)


def assert_weights(weights, step, particle, expected):
    np.testing.assert_allclose(weights[step, particle], expected, rtol=1e-4, atol=1e-4)


# -- PES accumulator arithmetic -----------------------------------------------------


def integrator_step(s, theta, key):
    del key
    s = s + theta[0]
    return s, s, False


@jax.jit
def integrator_window(es, key, state, params):
    population, state = es.ask(key, state, params)
    inner, losses, dones = evopes.unroll(
        integrator_step, population, state.inner_state, key, es.truncation_length
    )
    state, metrics = es.tell(
        key, population, losses, state, params, inner_state=inner, dones=dones, apply_update=False
    )
    return population, state, metrics["gradient"]


def test_pes_hand_example_linear_system():
    """1-d theta, s_{t+1} = s_t + theta, loss = s_{t+1}, T = 4, W = 2, one pair.

    Window 1 (noise e1): l+ - l- = (2 e1, 4 e1), weights e1 -> g1 = 6 e1^2 / (4 sigma^2).
    Window 2 (noise e2): l+ - l- = (4 e1 + 2 e2, 4 e1 + 4 e2), weights e1 + e2
      -> g2 = (8 e1 + 6 e2)(e1 + e2) / (4 sigma^2).
    The horizon ends with window 2: inner state, time and accumulator restart, and
    window 3 weights its own noise e3 only: g3 = 6 e3^2 / (4 sigma^2).
    """
    sigma, theta = 0.3, jnp.array([0.7])
    es = evopes.PES(2, theta, 2, 4, zero_inner, OPTIMIZER, step_unlocked=False)
    params = es.default_params.replace(std=sigma)
    state = init(es, jax.random.key(1), theta, params)
    np.testing.assert_array_equal(state.time, [0, 0])  # lock-step
    gradients, perturbations = [], []
    for window in range(3):
        population, state, gradient = integrator_window(
            es, jax.random.key(10 + window), state, params
        )
        perturbations.append(float(population[0, 0] - theta[0]))
        np.testing.assert_allclose(population[1, 0] - theta[0], -perturbations[-1], rtol=1e-6)
        gradients.append(float(gradient[0]))
        if window == 0:
            np.testing.assert_array_equal(state.time, [2, 2])
            np.testing.assert_allclose(
                state.accumulator[:, 0], [perturbations[0] / sigma**2] * 2, rtol=1e-5
            )
        if window == 1:  # the horizon: everything restarts
            np.testing.assert_array_equal(state.time, [0, 0])
            np.testing.assert_array_equal(state.accumulator, 0.0)
            np.testing.assert_array_equal(state.inner_state, 0.0)
    e1, e2, e3 = perturbations
    assert len({e1, e2, e3}) == 3  # fresh noise every window
    np.testing.assert_allclose(gradients[0], 6 * e1**2 / (4 * sigma**2), rtol=1e-4)
    np.testing.assert_allclose(
        gradients[1], (8 * e1 + 6 * e2) * (e1 + e2) / (4 * sigma**2), rtol=1e-4
    )
    np.testing.assert_allclose(gradients[2], 6 * e3**2 / (4 * sigma**2), rtol=1e-4)


def test_pes_weights_accumulate_until_the_horizon(hand_back):
    es, params = PES_W3, PES_W3.default_params
    state = init(es, jax.random.key(0), jnp.zeros(2), params)
    w1 = run_window(es, state, params, 1)
    w2 = run_window(es, w1.state, params, 2)
    w3 = run_window(es, w2.state, params, 3)  # ends at the horizon T = 9
    w4 = run_window(es, w3.state, params, 4)
    c1, c2, c3, c4 = w1.blocks, w2.blocks, w3.blocks, w4.blocks
    for p in range(4):
        for s in range(3):
            assert_weights(w1.weights, s, p, c1[p])
            assert_weights(w2.weights, s, p, c1[p] + c2[p])
            assert_weights(w3.weights, s, p, c1[p] + c2[p] + c3[p])
            assert_weights(w4.weights, s, p, c4[p])
    np.testing.assert_allclose(c1[:2], c1[2:])  # partners hold the same noise
    np.testing.assert_array_equal(w3.state.accumulator, 0.0)


# -- environment dones ------------------------------------------------------------------


def test_done_in_the_middle_of_a_window(hand_back):
    """Pair 0 ends at step 1 of window 2 (W = 3), pair 1 at its last step.

    Pair 0: steps 0 and 1 (the done step) keep the old episode's weight e1 + e2;
    step 2 belongs to no episode (weight 0: the particle's next episode starts
    at the next window, so no noise drawn before it ever weighs its losses).
    Every particle then restarts from ``init_inner`` at time 0, and window 3
    weighs its fresh noise e3 alone.
    """
    es, params = PES_W3, PES_W3.default_params
    state = init(es, jax.random.key(0), jnp.zeros(2), params)
    w1 = run_window(es, state, params, 1)
    moved = w1.state.inner_state + 5.0
    w2 = run_window(
        es, w1.state, params, 2, dones=[(1, 0), (1, 2), (2, 1), (2, 3)], inner_after=moved
    )
    np.testing.assert_array_equal(w2.state.time, [0, 0, 0, 0])
    np.testing.assert_array_equal(w2.state.inner_state, 0.0)  # zero_inner, not the moved state
    np.testing.assert_array_equal(w2.state.accumulator, 0.0)
    w3 = run_window(es, w2.state, params, 3)
    c1, c2, c3 = w1.blocks, w2.blocks, w3.blocks
    for p in (0, 2):
        for s in (0, 1):
            assert_weights(w2.weights, s, p, c1[p] + c2[p])
        assert_weights(w2.weights, 2, p, 0.0)
    for p in (1, 3):
        for s in range(3):
            assert_weights(w2.weights, s, p, c1[p] + c2[p])
    for p in range(4):
        for s in range(3):
            assert_weights(w3.weights, s, p, c3[p])
    assert not np.allclose(c3, c2)


def test_desynchronised_partners(hand_back):
    """Only the positive partner of pair 0 ends an episode (at step 0 of window 2).

    The positive partner weighs e1 + e2 at the done step, nothing after it,
    restarts at the next window and weighs its fresh e3 there; its negative
    partner keeps accumulating: e1 + e2, then e1 + e2 + e3'.
    """
    es, params = PES_W3, PES_W3.default_params
    state = init(es, jax.random.key(0), jnp.zeros(2), params)
    w1 = run_window(es, state, params, 1)
    w2 = run_window(es, w1.state, params, 2, dones=[(0, 0)])
    np.testing.assert_array_equal(w2.state.time, [0, 6, 6, 6])
    w3 = run_window(es, w2.state, params, 3)
    c1, c2, c3 = w1.blocks, w2.blocks, w3.blocks
    assert_weights(w2.weights, 0, 0, c1[0] + c2[0])
    assert_weights(w2.weights, 1, 0, 0.0)
    assert_weights(w2.weights, 2, 0, 0.0)
    for s in range(3):
        assert_weights(w2.weights, s, 2, c1[2] + c2[2])
        assert_weights(w3.weights, s, 0, c3[0])
        assert_weights(w3.weights, s, 2, c1[2] + c2[2] + c3[2])


def test_nres_desynchronised_partner_redraws_alone(hand_back):
    """NRES has no accumulator: only a particle that starts an episode draws new noise.

    The positive partner of pair 0 ends its episode at the last step of window 1,
    so window 2 gives it fresh noise (weight e_new) while every other particle,
    its partner included, keeps e1.
    """
    es, params = NRES_W2, NRES_W2.default_params
    state = init(es, jax.random.key(0), jnp.zeros(2), params)
    assert state.accumulator is None
    w1 = run_window(es, state, params, 1, dones=[(1, 0)])
    np.testing.assert_array_equal(w1.state.time, [0, 2, 2, 2])
    w2 = run_window(es, w1.state, params, 2)
    np.testing.assert_allclose(w2.blocks[1:], w1.blocks[1:], rtol=1e-6)
    assert not np.allclose(w2.blocks[0], w1.blocks[0])
    for s in range(2):
        assert_weights(w2.weights, s, 0, w2.blocks[0])
        for p in range(1, 4):
            assert_weights(w2.weights, s, p, w1.blocks[p])


# -- horizon ends -------------------------------------------------------------------------


@pytest.mark.parametrize("cls", [evopes.PES, evopes.NRES])
def test_horizon_end_restarts_inner_state_time_and_noise(cls):
    """T = 4, W = 2, step-unlocked: pairs at t = 2 end their episode after one window."""
    es = cls(8, jnp.zeros(2), 2, 4, random_inner, OPTIMIZER, step_unlocked=True)
    params = es.default_params
    state = init(es, jax.random.key(3), jnp.zeros(2), params)
    start = np.asarray(state.time)
    assert set(start) == {0, 2}
    moved = state.inner_state + 5.0
    w1 = run_window(es, state, params, 1, inner_after=moved)
    ended = start == 2
    fresh = jax.vmap(random_inner)(evopes.pair_keys(jax.random.key(1), 4))  # tell's key
    new = w1.state
    np.testing.assert_array_equal(new.time, np.where(ended, 0, 2))
    np.testing.assert_allclose(new.inner_state[ended], fresh[ended])
    np.testing.assert_allclose(new.inner_state[~ended], moved[~ended])
    np.testing.assert_allclose(new.inner_state[:4], new.inner_state[4:])  # partners share
    if cls is evopes.PES:
        np.testing.assert_array_equal(new.accumulator[ended], 0.0)
        assert np.all(np.abs(new.accumulator[~ended]) > 0)
    # The next ask draws new noise for the particles that restarted (NRES keeps the others').
    w2 = run_window(es, new, params, 2)
    changed = np.any(np.asarray(w2.population) != np.asarray(w1.population), axis=1)
    np.testing.assert_array_equal(changed, True if cls is evopes.PES else ended)


# -- masking ----------------------------------------------------------------------------


def test_nonfinite_loss_masks_its_pair_at_that_step(hand_back):
    es, params = NRES_W2, NRES_W2.default_params
    state = init(es, jax.random.key(0), jnp.zeros(2), params)
    losses = jax.random.uniform(jax.random.key(2), (2, 4))
    losses = losses.at[0, 2].set(jnp.nan)  # pair 0 (particles 0, 2) at step 0
    w = run_window(es, state, params, 1, losses=losses)
    loss, c = np.asarray(losses), w.blocks
    sign = np.array([1, 1, -1, -1])
    valid = np.ones((2, 4), bool)
    valid[0, [0, 2]] = False
    expected = sum(
        sign[p] * loss[s, p] * c[p] for s in range(2) for p in range(4) if valid[s, p]
    ) / (2 * 3)
    np.testing.assert_allclose(w.metrics["gradient"], expected, rtol=1e-5)
    assert int(w.metrics["num_nonfinite"]) == 1 and int(w.metrics["num_masked"]) == 1
    np.testing.assert_allclose(w.metrics["mean_loss"], np.nanmean(loss), rtol=1e-6)


def test_all_masked_or_overflowing_window_keeps_the_mean():
    es, params = PES_W3, PES_W3.default_params
    state = init(es, jax.random.key(0), jnp.ones(2), params)
    losses = jnp.full((3, 4), jnp.inf).at[1, 0].set(jnp.nan)
    w = run_window(es, state, params, 1, losses=losses)
    np.testing.assert_array_equal(w.metrics["gradient"], 0.0)
    np.testing.assert_array_equal(w.state.mean, 1.0)
    assert int(w.metrics["num_masked"]) == 6 and int(w.metrics["num_nonfinite"]) == 12
    assert np.all(np.isfinite(w.state.accumulator))
    # Nothing finite was seen: the mean loss says so (NaN), it does not read as a perfect 0.
    assert np.isnan(w.metrics["mean_loss"])
    # Finite but huge losses overflow the estimate: the update is skipped, the state stays
    # finite, and the mean loss is computed without overflow.
    huge = jnp.full((3, 4), 3e38).at[:, 2:].set(-3e38)
    w = run_window(es, state, params, 2, losses=huge)
    assert not bool(w.metrics["finite_gradient"]) and int(w.metrics["num_nonfinite"]) == 0
    np.testing.assert_array_equal(w.state.mean, 1.0)
    np.testing.assert_allclose(w.metrics["mean_loss"], 0.0, atol=1e33)
    w = run_window(es, state, params, 3, losses=jnp.full((3, 4), 3e38))
    np.testing.assert_allclose(w.metrics["mean_loss"], 3e38, rtol=1e-6)


# -- classic public-code bugs -----------------------------------------------------------


@jax.jit
def _ask_once_and_twice(es, first_key, key, state, params, losses):
    """(ask(key) -> tell, ask(first_key) -> ask(key) -> tell) from the same state."""
    _, once = es.ask(key, state, params)
    _, twice = es.ask(first_key, state, params)
    _, twice = es.ask(key, twice, params)
    tell = lambda s: es.tell(
        key, None, losses, s, params, inner_state=s.inner_state, apply_update=False
    )
    return tell(once), tell(twice)


@pytest.mark.parametrize(
    "es", [PES_W3, make(evopes.GPES, 3, 12, noise_period=6)], ids=["PES", "GPES"]
)
def test_calling_ask_twice_does_not_double_count(es):
    """ask -> ask -> tell gives the same state as ask -> tell with the second key.

    PES redraws in every ask; GPES redraws only every other window, so the
    second ask must make the same decision as the first and not count anything.
    """
    params = es.default_params
    losses = jax.random.normal(jax.random.key(5), (4, 3, 4))
    state = init(es, jax.random.key(0), jnp.zeros(2), params)
    for window in range(4):
        (state, metrics), (state_twice, metrics_twice) = _ask_once_and_twice(
            es, jax.random.key(window), jax.random.key(100 + window), state, params, losses[window]
        )
        np.testing.assert_array_equal(metrics["gradient"], metrics_twice["gradient"])
        for once, twice in zip(
            jax.tree_util.tree_leaves(state), jax.tree_util.tree_leaves(state_twice), strict=True
        ):
            np.testing.assert_array_equal(once, twice)


def test_std_change_keeps_held_noise_consistent(hand_back):
    """Noise keeps the std it was drawn with, in ask and in tell.

    NRES, T = 4, W = 2: window 2 runs with params.std = 0.5 but still applies
    window 1's noise drawn at 0.1, weighted e / 0.1^2; the next episode uses 0.5.
    PES: window 2's weight is e1 / 0.1^2 + e2 / 0.5^2 (Stein's lemma per block).
    """
    small, large = evopes.OnlineParams(std=0.1), evopes.OnlineParams(std=0.5)
    es = NRES_W2
    state = init(es, jax.random.key(0), jnp.zeros(2), small)
    w1 = run_window(es, state, small, 1)
    w2 = run_window(es, w1.state, large, 2)  # its blocks are divided by 0.5^2
    np.testing.assert_allclose(
        w2.blocks * 0.5**2 / 0.1**2, w1.blocks, rtol=1e-5
    )  # same noise, std 0.1
    np.testing.assert_allclose(w2.weights, w1.weights, rtol=1e-5)  # weighted e / 0.1^2
    w3 = run_window(es, w2.state, large, 3)  # a new episode: drawn at 0.5
    np.testing.assert_allclose(w3.state.noise_std, 0.5)
    for s in range(2):
        for p in range(4):
            assert_weights(w3.weights, s, p, w3.blocks[p])

    es = PES_W3
    state = init(es, jax.random.key(0), jnp.zeros(2), small)
    w1 = run_window(es, state, small, 1)
    w2 = run_window(es, w1.state, large, 2)  # blocks e2 / 0.5^2
    for s in range(3):
        for p in range(4):
            assert_weights(w2.weights, s, p, w1.blocks[p] + w2.blocks[p])


# -- TES --------------------------------------------------------------------------------


def test_tes_partners_branch_from_one_shared_state(hand_back):
    es = make(evopes.TES, 2, 6, init_inner=random_inner)
    params = es.default_params
    state = init(es, jax.random.key(0), jnp.zeros(2), params)
    np.testing.assert_array_equal(state.inner_state[:2], state.inner_state[2:])
    diverged = state.inner_state + jnp.arange(4.0)[:, None]  # the branches differ after a window
    w1 = run_window(es, state, params, 1, inner_after=diverged)
    np.testing.assert_array_equal(
        w1.state.inner_state[2:], diverged[:2]
    )  # the negative takes the positive's
    np.testing.assert_array_equal(w1.state.inner_state[:2], diverged[:2])
    np.testing.assert_array_equal(w1.state.time[:2], w1.state.time[2:])
    w2 = run_window(es, w1.state, params, 2)
    for s in range(2):
        for p in range(4):
            assert_weights(w1.weights, s, p, w1.blocks[p])
            assert_weights(w2.weights, s, p, w2.blocks[p])  # no accumulation


def test_tes_unperturbed_branch_carries_the_shared_state():
    """The papers' TES (3PW): ask adds P rows of theta; both partners continue from theirs."""
    P, W = 2, 2
    es = evopes.TES(2 * P, jnp.zeros(2), W, 6, random_inner, OPTIMIZER, False, branch="unperturbed")
    assert es.num_particles == 3 * P and es != make(evopes.TES, W, 6, init_inner=random_inner)
    params = es.default_params
    state = init(es, jax.random.key(0), jnp.ones(2), params)
    assert state.inner_state.shape == (3 * P, 3)
    np.testing.assert_array_equal(state.inner_state[2 * P :], state.inner_state[:P])
    population, state = es.ask(jax.random.key(1), state, params)
    assert population.shape == (3 * P, 2)
    np.testing.assert_array_equal(population[2 * P :], 1.0)  # the unperturbed rows are theta
    np.testing.assert_allclose(population[:P] - 1.0, -(population[P : 2 * P] - 1.0), atol=1e-6)
    after = state.inner_state + jnp.arange(3.0 * P)[:, None]  # every particle moved differently
    losses = jax.random.normal(jax.random.key(2), (W, 3 * P))
    new, metrics = es.tell(jax.random.key(3), population, losses, state, params, inner_state=after)
    for shared in (new.inner_state[:P], new.inner_state[P : 2 * P], new.inner_state[2 * P :]):
        np.testing.assert_array_equal(shared, after[2 * P :])
    assert es.total_steps(new) == 3 * P * W == int(metrics["total_steps"])
    # The estimate uses the perturbed rows only: the unperturbed losses do not matter.
    _, same = es.tell(
        jax.random.key(3),
        population,
        losses.at[:, 2 * P :].set(99.0),
        state,
        params,
        inner_state=after,
    )
    np.testing.assert_array_equal(metrics["gradient"], same["gradient"])
    with pytest.raises(ValueError, match=r"losses: expected shape \(W, 3P\)"):
        es.tell(jax.random.key(3), population, losses[:, : 2 * P], state, params, inner_state=after)
    with pytest.raises(ValueError, match="branch: expected one of"):
        evopes.TES(4, jnp.zeros(2), 2, 6, random_inner, branch="negative")


# -- step-unlocking and burn-in -----------------------------------------------------------


def test_step_unlocked_offsets_and_burn_in():
    T, W = 8, 2
    es = evopes.PES(64, jnp.zeros(2), W, T, zero_inner, OPTIMIZER)
    assert es.step_unlocked and es.burn_in_windows == T // W
    assert make(evopes.PES, W, T).burn_in_windows == 0  # lock-step
    params = es.default_params
    state = init(es, jax.random.key(0), jnp.ones(2), params)
    time = np.asarray(state.time)
    assert np.all(time % W == 0) and np.all((0 <= time) & (time < T))
    np.testing.assert_array_equal(time[:32], time[32:])
    assert set(time) == set(
        range(0, T, W)
    )  # 32 pairs hit all 4 offsets (fails with prob ~4 * 0.75^32)
    losses = jax.random.uniform(jax.random.key(1), (W, 64))
    means, burn_ins = [], []
    for i in range(T // W + 1):
        w = run_window(es, state, params, i, losses=losses)
        state = w.state
        means.append(np.asarray(state.mean))
        burn_ins.append(bool(w.metrics["burn_in"]))
        assert np.all(np.asarray(w.metrics["gradient"]) != 0)
    assert burn_ins == [True] * (T // W) + [False]
    for mean in means[: T // W]:
        np.testing.assert_array_equal(mean, 1.0)
    assert np.all(means[-1] != 1.0)
    assert (
        int(w.metrics["total_steps"]) == 5 * 64 * W and int(w.metrics["sequential_steps"]) == 5 * W
    )


# -- validation -----------------------------------------------------------------------------


def test_configuration_errors_name_the_argument():
    theta = jnp.zeros(2)
    with pytest.raises(ValueError, match="horizon"):
        evopes.PES(4, theta, 3, 10, zero_inner)
    with pytest.raises(ValueError, match="population_size"):
        evopes.PES(5, theta, 2, 4, zero_inner)
    with pytest.raises(ValueError, match="noise_period"):
        evopes.GPES(4, theta, 2, 8, zero_inner, noise_period=3)
    with pytest.raises(ValueError, match="step_unlocked"):
        evopes.NRES(4, theta, 2, None, zero_inner, step_unlocked=True)
    assert not evopes.NRES(4, theta, 2, None, zero_inner).step_unlocked
    with pytest.raises(ValueError, match="std"):
        NRES_W2.validate_params(evopes.OnlineParams(std=0.0))
    state = init(NRES_W2, jax.random.key(0), theta, NRES_W2.default_params)
    tell = lambda losses, **kwargs: NRES_W2.tell(
        jax.random.key(0), None, losses, state, NRES_W2.default_params, **kwargs
    )
    with pytest.raises(
        ValueError, match=r"losses: expected shape \(W, 2P\) = \(2, 4\), got \(4, 2\)"
    ):
        tell(jnp.zeros((4, 2)), inner_state=state.inner_state)
    with pytest.raises(ValueError, match="inner_state"):
        tell(jnp.zeros((2, 4)))
    with pytest.raises(ValueError, match="inner_state: leaf 0"):
        tell(jnp.zeros((2, 4)), inner_state=jnp.zeros(3))
    with pytest.raises(ValueError, match="dones"):
        tell(jnp.zeros((2, 4)), inner_state=state.inner_state, dones=jnp.zeros((2, 2), bool))


# -- memory ------------------------------------------------------------------------------------


@pytest.mark.parametrize("cls", [evopes.NRES, evopes.TES, evopes.PES])
def test_state_memory_nres_and_tes_hold_no_perturbations(cls):
    """NRES and TES keep O(P) numbers beyond the mean; PES adds its (2P, d) accumulator."""
    d, pairs = 1000, 4
    es = make(cls, 2, 4, pairs=pairs, dims=d)
    shapes = jax.eval_shape(es.init, jax.random.key(0), jnp.zeros(d), es.default_params)
    sizes = {
        jax.tree_util.keystr(path): np.prod(leaf.shape)
        for path, leaf in jax.tree_util.tree_flatten_with_path(shapes)[0]
    }
    per_particle = {
        name: size for name, size in sizes.items() if name not in (".mean", ".inner_state")
    }
    big = {name for name, size in per_particle.items() if size >= d}
    assert big == ({".accumulator"} if cls is evopes.PES else set()), sizes
    assert max(size for name, size in per_particle.items() if name not in big) <= 4 * pairs
