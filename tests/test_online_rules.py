"""The online engine's rules on hand-checkable examples.

Most tests read the Stein weight ``w_{p,s}`` that the estimator gives the loss
of particle ``p`` at step ``s`` by feeding ``tell`` one-hot losses: with a
single loss of 1 at ``(s, p)`` and every pair valid, the estimate is
``sign_p * w_{p,s} / (2 P W)``. The expected weights are written by hand from
the perturbations ``e`` that ``ask`` returned: ``w`` is the sum of the distinct
blocks ``e_j / std_j^2`` of the particle's current episode (REFERENCE
section 1), and steps after a ``done`` belong to the new episode.
"""

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


@jax.jit
def init(es, key, mean, params):
    return es.init(key, mean, params)


@jax.jit
def ask(es, key, state, params):
    return es.ask(key, state, params)


@jax.jit
def tell(es, key, losses, state, params, inner_state, dones):
    """tell without applying the update (the rules under test are the estimate and bookkeeping)."""
    return es.tell(key, None, losses, state, params, inner_state=inner_state, dones=dones, apply_update=False)


@jax.jit
def probe_weights(es, state, params, dones):
    """(W, 2P, d) Stein weights w_{p,s} of the window ``state`` was asked for."""
    W, n = es.truncation_length, es.population_size
    one_hots = jnp.eye(W * n).reshape(W * n, W, n)

    def gradient(losses):
        _, metrics = es.tell(jax.random.key(0), None, losses, state, params, inner_state=state.inner_state,
                             dones=dones, apply_update=False)
        return es.spec.ravel(metrics["gradient"])

    sign = jnp.repeat(jnp.array([1.0, -1.0]), n // 2)
    return jax.vmap(gradient)(one_hots).reshape(W, n, -1) * sign[None, :, None] * (n * W)


def blocks(es, population, state, std):
    """Stein units of the block each particle was just asked with: (x_p - mean) / (sign_p std^2), (2P, d)."""
    sign = jnp.repeat(jnp.array([1.0, -1.0]), es.num_pairs)[:, None]
    return np.asarray(sign * (es.spec.ravel_population(population, es.population_size) - state.mean) / std**2)


def window_dones(es, *entries):
    """(W, 2P) dones, True at the given (step, particle) entries."""
    dones = np.zeros((es.truncation_length, es.population_size), bool)
    for step, particle in entries:
        dones[step, particle] = True
    return jnp.asarray(dones)


def make(cls, W, T, *, pairs=2, dims=2, init_inner=zero_inner, step_unlocked=False, **kwargs):
    return cls(2 * pairs, jnp.zeros(dims), W, T, init_inner, OPTIMIZER, step_unlocked, **kwargs)


@jax.jit
def _window(es, key, state, params, dones):
    population, state = es.ask(key, state, params)
    weights = probe_weights(es, state, params, dones)
    zeros = jnp.zeros((es.truncation_length, es.population_size))
    new_state, _ = es.tell(key, None, zeros, state, params, inner_state=state.inner_state, dones=dones,
                           apply_update=False)
    return population, state, weights, new_state


def run_window(es, state, params, seed, dones=None):
    """ask, then tell with zero losses: returns (blocks of the window, weights, new state)."""
    dones = window_dones(es) if dones is None else dones
    population, asked, weights, state = _window(es, jax.random.key(seed), state, params, dones)
    return blocks(es, population, asked, params.std), np.asarray(weights), state


def assert_weights(weights, step, particle, expected):
    np.testing.assert_allclose(weights[step, particle], expected, rtol=1e-4, atol=1e-4)


# -- PES accumulator arithmetic -----------------------------------------------------


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
    state = es.init(jax.random.key(1), theta, params)

    def step(s, th, key):
        s = s + th[0]
        return s, s, False

    gradients, perturbations = [], []
    for window in range(3):
        population, state = ask(es, jax.random.key(10 + window), state, params)
        perturbations.append(float(population[0, 0] - theta[0]))
        np.testing.assert_allclose(population[1, 0] - theta[0], -perturbations[-1], rtol=1e-6)
        inner, losses, dones = evopes.unroll(step, population, state.inner_state, jax.random.key(0), 2)
        state, metrics = tell(es, jax.random.key(20), losses, state, params, inner, dones)
        gradients.append(float(metrics["gradient"][0]))
        if window == 0:
            np.testing.assert_array_equal(state.time, [2, 2])
            np.testing.assert_allclose(state.accumulator[:, 0], [perturbations[0] / sigma**2] * 2, rtol=1e-5)
        if window == 1:  # the horizon: everything restarts
            np.testing.assert_array_equal(state.time, [0, 0])
            np.testing.assert_array_equal(state.accumulator, 0.0)
            np.testing.assert_array_equal(state.inner_state, 0.0)
    e1, e2, e3 = perturbations
    assert len({e1, e2, e3}) == 3  # fresh noise every window
    np.testing.assert_allclose(gradients[0], 6 * e1**2 / (4 * sigma**2), rtol=1e-4)
    np.testing.assert_allclose(gradients[1], (8 * e1 + 6 * e2) * (e1 + e2) / (4 * sigma**2), rtol=1e-4)
    np.testing.assert_allclose(gradients[2], 6 * e3**2 / (4 * sigma**2), rtol=1e-4)


def test_pes_weights_accumulate_until_the_horizon():
    es = make(evopes.PES, 2, 6)
    params = es.default_params
    state = init(es, jax.random.key(0), jnp.zeros(2), params)
    c1, w1, state = run_window(es, state, params, 1)
    c2, w2, state = run_window(es, state, params, 2)
    c3, w3, state = run_window(es, state, params, 3)  # ends at the horizon T = 6
    c4, w4, state = run_window(es, state, params, 4)
    for p in range(4):
        for s in range(2):
            assert_weights(w1, s, p, c1[p])
            assert_weights(w2, s, p, c1[p] + c2[p])
            assert_weights(w3, s, p, c1[p] + c2[p] + c3[p])
            assert_weights(w4, s, p, c4[p])
    np.testing.assert_allclose(c1[:2], c1[2:])  # partners hold the same noise


# -- environment dones ------------------------------------------------------------------


def test_done_in_the_middle_of_a_window():
    """Pair 0 ends at step 1 of window 2 (W = 3), pair 1 at its last step.

    Pair 0: steps 0 and 1 (the done step) keep the old episode's weight e1 + e2;
    step 2 starts the new episode: e2. Next window: e2 + e3 (e2 joined the new
    episode), time 1. Pair 1: all of window 2 weighs e1 + e2; then time 0 and
    window 3 weighs e3 alone. No horizon.
    """
    es = make(evopes.PES, 3, None)
    params = es.default_params
    state = init(es, jax.random.key(0), jnp.zeros(2), params)
    c1, _, state = run_window(es, state, params, 1)
    dones = window_dones(es, (1, 0), (1, 2), (2, 1), (2, 3))
    c2, w2, state = run_window(es, state, params, 2, dones)
    np.testing.assert_array_equal(state.time, [1, 0, 1, 0])
    c3, w3, state = run_window(es, state, params, 3)
    for p in (0, 2):
        for s in (0, 1):
            assert_weights(w2, s, p, c1[p] + c2[p])
        assert_weights(w2, 2, p, c2[p])
        for s in range(3):
            assert_weights(w3, s, p, c2[p] + c3[p])
    for p in (1, 3):
        for s in range(3):
            assert_weights(w2, s, p, c1[p] + c2[p])
            assert_weights(w3, s, p, c3[p])


def test_desynchronised_partners():
    """Only the positive partner of pair 0 ends an episode (at step 0 of window 2).

    The positive partner weighs e1 + e2 at the done step, e2 after it, and e2 + e3
    in window 3; its negative partner keeps accumulating: e1 + e2, then e1 + e2 + e3.
    """
    es = make(evopes.PES, 3, None)
    params = es.default_params
    state = init(es, jax.random.key(0), jnp.zeros(2), params)
    c1, _, state = run_window(es, state, params, 1)
    c2, w2, state = run_window(es, state, params, 2, window_dones(es, (0, 0)))
    np.testing.assert_array_equal(state.time, [2, 6, 6, 6])
    c3, w3, state = run_window(es, state, params, 3)
    assert_weights(w2, 0, 0, c1[0] + c2[0])
    assert_weights(w2, 1, 0, c2[0])
    assert_weights(w2, 2, 0, c2[0])
    for s in range(3):
        assert_weights(w2, s, 2, c1[2] + c2[2])
        assert_weights(w3, s, 0, c2[0] + c3[0])
        assert_weights(w3, s, 2, c1[2] + c2[2] + c3[2])


def test_nres_desynchronised_partner_redraws_alone():
    """NRES has no accumulator: only a particle that starts an episode draws new noise.

    The positive partner of pair 0 ends its episode at the last step of window 1,
    so window 2 gives it fresh noise (weight e_new) while its partner keeps e1.
    """
    es = make(evopes.NRES, 2, 4)
    params = es.default_params
    state = init(es, jax.random.key(0), jnp.zeros(2), params)
    assert state.accumulator is None
    c1, w1, state = run_window(es, state, params, 1, window_dones(es, (1, 0)))
    np.testing.assert_array_equal(state.time, [0, 2, 2, 2])
    c2, w2, state = run_window(es, state, params, 2)
    np.testing.assert_allclose(c2[1:], c1[1:], rtol=1e-6)  # the others keep their noise
    assert not np.allclose(c2[0], c1[0])  # the positive partner of pair 0 starts a new episode
    for s in range(2):
        assert_weights(w2, s, 0, c2[0])
        for p in range(1, 4):
            assert_weights(w2, s, p, c1[p])


# -- horizon ends -------------------------------------------------------------------------


@pytest.mark.parametrize("cls", [evopes.PES, evopes.NRES])
def test_horizon_end_restarts_inner_state_time_and_noise(cls):
    """T = 4, W = 2, step-unlocked: pairs at t = 2 end their episode after one window."""
    es = cls(8, jnp.zeros(2), 2, 4, random_inner, OPTIMIZER, step_unlocked=True)
    params = es.default_params
    state = init(es, jax.random.key(3), jnp.zeros(2), params)
    start = np.asarray(state.time)
    assert set(start) == {0, 2}
    population, state = ask(es, jax.random.key(1), state, params)
    moved = jax.tree_util.tree_map(lambda x: x + 5.0, state.inner_state)
    tell_key = jax.random.key(7)
    zeros = jnp.zeros((2, 8))
    new_state, _ = tell(es, tell_key, zeros, state, params, moved, window_dones(es))
    ended = start == 2
    fresh = jax.vmap(random_inner)(evopes.pair_keys(tell_key, 4))
    np.testing.assert_array_equal(new_state.time, np.where(ended, 0, 2))
    np.testing.assert_allclose(new_state.inner_state[ended], fresh[ended])
    np.testing.assert_allclose(new_state.inner_state[~ended], moved[~ended])
    np.testing.assert_allclose(new_state.inner_state[:4], new_state.inner_state[4:])  # partners share
    if cls is evopes.PES:
        np.testing.assert_array_equal(new_state.accumulator[ended], 0.0)
        assert np.all(np.abs(new_state.accumulator[~ended]) > 0)
    # The next ask draws new noise for the particles that restarted (NRES keeps the others').
    next_population, _ = ask(es, jax.random.key(2), new_state, params)
    changed = np.any(np.asarray(next_population) != np.asarray(population), axis=1)
    np.testing.assert_array_equal(changed, True if cls is evopes.PES else ended)


# -- masking ----------------------------------------------------------------------------


def test_nonfinite_loss_masks_its_pair_at_that_step():
    es = make(evopes.NRES, 2, 4)
    params = es.default_params
    state = init(es, jax.random.key(0), jnp.zeros(2), params)
    population, state = ask(es, jax.random.key(1), state, params)
    c = blocks(es, population, state, params.std)
    losses = jax.random.uniform(jax.random.key(2), (2, 4))
    losses = losses.at[0, 2].set(jnp.nan)  # pair 0 (particles 0, 2) at step 0
    _, metrics = tell(es, jax.random.key(3), losses, state, params, state.inner_state, window_dones(es))
    l = np.asarray(losses)
    sign = np.array([1, 1, -1, -1])
    valid = np.ones((2, 4), bool)
    valid[0, [0, 2]] = False
    expected = sum(sign[p] * l[s, p] * c[p] for s in range(2) for p in range(4) if valid[s, p]) / (2 * 3)
    np.testing.assert_allclose(metrics["gradient"], expected, rtol=1e-5)
    assert int(metrics["num_nonfinite"]) == 1 and int(metrics["num_masked"]) == 1
    np.testing.assert_allclose(metrics["mean_loss"], np.nanmean(l), rtol=1e-6)


def test_all_masked_window_gives_zero_gradient_and_keeps_the_mean():
    es = make(evopes.PES, 2, 6)
    params = es.default_params
    state = init(es, jax.random.key(0), jnp.ones(2), params)
    _, state = ask(es, jax.random.key(1), state, params)
    losses = jnp.full((2, 4), jnp.inf).at[1, 0].set(jnp.nan)
    new_state, metrics = jax.jit(
        lambda s: es.tell(jax.random.key(2), None, losses, s, params, inner_state=s.inner_state)
    )(state)
    np.testing.assert_array_equal(metrics["gradient"], 0.0)
    np.testing.assert_array_equal(new_state.mean, state.mean)
    assert int(metrics["num_masked"]) == 4 and int(metrics["num_nonfinite"]) == 8
    assert np.all(np.isfinite(new_state.accumulator)) and np.isfinite(metrics["mean_loss"])


# -- classic public-code bugs -----------------------------------------------------------


@jax.jit
def _ask_once_and_twice(es, first_key, key, state, params, losses):
    """(ask(key) -> tell, ask(first_key) -> ask(key) -> tell) from the same state."""
    _, once = es.ask(key, state, params)
    _, twice = es.ask(first_key, state, params)
    _, twice = es.ask(key, twice, params)
    tell = lambda s: es.tell(key, None, losses, s, params, inner_state=s.inner_state, apply_update=False)
    return tell(once), tell(twice)


@pytest.mark.parametrize(
    "es",
    [make(evopes.PES, 2, 6), make(evopes.GPES, 2, 8, noise_period=4), make(evopes.NRES, 2, 4)],
    ids=["PES", "GPES", "NRES"],
)
def test_calling_ask_twice_does_not_double_count(es):
    """ask -> ask -> tell gives the same state as ask -> tell with the second key."""
    params = es.default_params
    losses = jax.random.normal(jax.random.key(5), (4, 2, 4))
    state = init(es, jax.random.key(0), jnp.zeros(2), params)
    for window in range(4):
        (state, metrics), (state_twice, metrics_twice) = _ask_once_and_twice(
            es, jax.random.key(window), jax.random.key(100 + window), state, params, losses[window]
        )
        np.testing.assert_array_equal(metrics["gradient"], metrics_twice["gradient"])
        for once, twice in zip(jax.tree_util.tree_leaves(state), jax.tree_util.tree_leaves(state_twice)):
            np.testing.assert_array_equal(once, twice)


def test_std_change_keeps_held_noise_consistent():
    """Noise keeps the std it was drawn with, in ask and in tell.

    NRES, T = 4, W = 2: window 2 runs with params.std = 0.5 but still applies
    window 1's noise drawn at 0.1, weighted e / 0.1^2; the next episode uses 0.5.
    PES: window 2's weight is e1 / 0.1^2 + e2 / 0.5^2 (Stein's lemma per block).
    """
    small, large = evopes.OnlineParams(std=0.1), evopes.OnlineParams(std=0.5)
    es = make(evopes.NRES, 2, 4)
    state = init(es, jax.random.key(0), jnp.zeros(2), small)
    c1, w1, state = run_window(es, state, small, 1)
    c2, w2, state = run_window(es, state, large, 2)  # blocks() divides by 0.5^2 here
    np.testing.assert_allclose(c2 * 0.5**2 / 0.1**2, c1, rtol=1e-5)  # the same noise, at std 0.1
    np.testing.assert_allclose(w2, w1, rtol=1e-5)  # weighted e / 0.1^2
    c3, w3, state = run_window(es, state, large, 3)  # a new episode: drawn at 0.5
    np.testing.assert_allclose(state.noise_std, 0.5)
    for s in range(2):
        for p in range(4):
            assert_weights(w3, s, p, c3[p])

    es = make(evopes.PES, 2, 6)
    state = init(es, jax.random.key(0), jnp.zeros(2), small)
    c1, _, state = run_window(es, state, small, 1)
    c2, w2, state = run_window(es, state, large, 2)  # c2 = e2 / 0.5^2
    for s in range(2):
        for p in range(4):
            assert_weights(w2, s, p, c1[p] + c2[p])


# -- TES --------------------------------------------------------------------------------


def test_tes_partners_branch_from_one_shared_state():
    es = make(evopes.TES, 2, 6, init_inner=random_inner)
    params = es.default_params
    state = init(es, jax.random.key(0), jnp.zeros(2), params)
    np.testing.assert_array_equal(state.inner_state[:2], state.inner_state[2:])
    c1, w1, _ = run_window(es, state, params, 1)
    _, state = ask(es, jax.random.key(1), state, params)
    diverged = state.inner_state + jnp.arange(4.0)[:, None]  # the branches differ after a window
    state, _ = tell(es, jax.random.key(2), jnp.zeros((2, 4)), state, params, diverged, window_dones(es))
    np.testing.assert_array_equal(state.inner_state[2:], diverged[:2])  # the negative takes the positive's
    np.testing.assert_array_equal(state.inner_state[:2], diverged[:2])
    np.testing.assert_array_equal(state.time[:2], state.time[2:])
    c2, w2, _ = run_window(es, state, params, 2)
    for s in range(2):
        for p in range(4):
            assert_weights(w1, s, p, c1[p])
            assert_weights(w2, s, p, c2[p])  # no accumulation


# -- step-unlocking and burn-in -----------------------------------------------------------


def test_step_unlocked_offsets_and_burn_in():
    T, W = 8, 2
    es = evopes.PES(64, jnp.zeros(2), W, T, zero_inner, optax.sgd(0.1))
    assert es.step_unlocked and es.burn_in_windows == T // W
    params = es.default_params
    state = init(es, jax.random.key(0), jnp.ones(2), params)
    time = np.asarray(state.time)
    assert np.all(time % W == 0) and np.all((0 <= time) & (time < T))
    np.testing.assert_array_equal(time[:32], time[32:])
    assert set(time) == set(range(0, T, W))  # 32 pairs hit all 4 offsets (fails with prob ~4 * 0.75^32)

    @jax.jit
    def window(state, key):
        population, state = es.ask(key, state, params)
        losses = jnp.broadcast_to(jnp.sum(population**2, axis=1), (W, 64))
        return es.tell(key, population, losses, state, params, inner_state=state.inner_state)

    means, burn_ins = [], []
    for i in range(T // W + 1):
        state, metrics = window(state, jax.random.key(i))
        means.append(np.asarray(state.mean))
        burn_ins.append(bool(metrics["burn_in"]))
        assert np.any(metrics["gradient"] != 0)
    assert burn_ins == [True] * (T // W) + [False]
    for mean in means[: T // W]:
        np.testing.assert_array_equal(mean, 1.0)
    assert np.all(means[-1] < 1.0)
    assert int(metrics["total_steps"]) == 5 * 64 * W and int(metrics["sequential_steps"]) == 5 * W

    lock_step = evopes.PES(64, jnp.zeros(2), W, T, zero_inner, optax.sgd(0.1), step_unlocked=False)
    assert lock_step.burn_in_windows == 0
    np.testing.assert_array_equal(lock_step.init(jax.random.key(0), jnp.ones(2), params).time, 0)


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
    es = evopes.PES(4, theta, 2, 4, zero_inner)
    with pytest.raises(ValueError, match="std"):
        es.init(jax.random.key(0), theta, evopes.OnlineParams(std=0.0))
    state = es.init(jax.random.key(0), theta, es.default_params)
    _, state = es.ask(jax.random.key(0), state, es.default_params)
    with pytest.raises(ValueError, match=r"losses: expected shape \(W, 2P\) = \(2, 4\), got \(4, 2\)"):
        es.tell(jax.random.key(0), None, jnp.zeros((4, 2)), state, es.default_params, inner_state=state.inner_state)
    with pytest.raises(ValueError, match="inner_state"):
        es.tell(jax.random.key(0), None, jnp.zeros((2, 4)), state, es.default_params)
    with pytest.raises(ValueError, match="dones"):
        es.tell(jax.random.key(0), None, jnp.zeros((2, 4)), state, es.default_params,
                inner_state=state.inner_state, dones=jnp.zeros((2, 2), bool))
