"""Online strategies under jit, vmap and scan; common random numbers in unroll."""

import jax
import jax.numpy as jnp
import numpy as np
import optax

import evopes

P, T, W = 8, 8, 2
DECAY = 0.5
OPTIMIZER = optax.sgd(0.05)


def init_inner(key):
    del key
    return jnp.zeros(2)


def step_fn(s, theta, key):
    """s <- 0.5 s + theta + small shared noise; loss |s - 1|^2."""
    s = DECAY * s + theta + 0.01 * jax.random.normal(key, (2,))
    return s, jnp.sum((s - 1.0) ** 2), False


def optimum():
    """Minimiser of the time-averaged noise-free loss, per coordinate.

    s_{t+1} = theta (1 - 0.5^(t+1)) / 0.5 = theta g_t, so theta* = sum_t g_t / sum_t g_t^2.
    """
    growth = np.array([(1 - DECAY ** (t + 1)) / (1 - DECAY) for t in range(T)])
    return np.sum(growth) / np.sum(growth**2)


@jax.jit
def train(es, key):
    params = evopes.OnlineParams(std=0.05)

    def window(state, key):
        ask_key, unroll_key, tell_key = jax.random.split(key, 3)
        population, state = es.ask(ask_key, state, params)
        inner, losses, dones = evopes.unroll(step_fn, population, state.inner_state, unroll_key, W)
        state, metrics = es.tell(
            tell_key, population, losses, state, params, inner_state=inner, dones=dones
        )
        return state, metrics["mean_loss"]

    init_key, loop_key = jax.random.split(key)
    state = es.init(init_key, jnp.zeros(2), params)
    state, losses = jax.lax.scan(window, state, jax.random.split(loop_key, 400))
    return es.get_mean(state), losses


def test_training_loop_in_scan_vmapped_over_seeds_reaches_the_optimum():
    es = evopes.NRES(2 * P, jnp.zeros(2), W, T, init_inner, OPTIMIZER)
    means, losses = jax.jit(jax.vmap(train, in_axes=(None, 0)))(
        es, jax.random.split(jax.random.key(0), 3)
    )
    # theta* ~ 0.58; SGD noise at lr 0.05 leaves the mean within a few hundredths of it
    np.testing.assert_allclose(means, optimum(), atol=0.05)
    assert np.all(losses[:, -20:].mean(axis=1) < 0.2 * losses[:, :5].mean(axis=1))
    assert len({float(m[0]) for m in means}) == 3  # the seeds differ


def test_vmap_over_std():
    es = evopes.PES(2 * P, jnp.zeros(2), W, T, init_inner, OPTIMIZER)

    @jax.jit
    @jax.vmap
    def perturbations(std):
        params = evopes.OnlineParams(std=std)
        state = es.init(jax.random.key(0), jnp.ones(2), params)
        population, state = es.ask(jax.random.key(1), state, params)
        return population - 1.0

    e = perturbations(jnp.array([0.1, 0.2, 0.4]))
    np.testing.assert_allclose(e[1], 2 * e[0], rtol=1e-5)
    np.testing.assert_allclose(e[2], 4 * e[0], rtol=1e-5)


def test_equal_configurations_share_compiled_code():
    @jax.jit
    def first_window(es, key):
        params = es.default_params
        state = es.init(key, jnp.zeros(2), params)
        population, state = es.ask(key, state, params)
        return population

    make = lambda W: evopes.PES(2 * P, jnp.zeros(2), W, T, init_inner, optax.sgd(0.05))
    a, b = make(2), make(2)
    assert a == b and hash(a) == hash(b) and a is not b
    first_window(a, jax.random.key(0))
    first_window(b, jax.random.key(1))
    assert first_window._cache_size() == 1
    first_window(make(4), jax.random.key(0))
    assert first_window._cache_size() == 2


def test_pair_keys_are_shared_within_pairs_only():
    keys = jax.random.key_data(evopes.pair_keys(jax.random.key(0), 5))
    np.testing.assert_array_equal(keys[:5], keys[5:])
    assert len({tuple(np.asarray(k)) for k in keys[:5]}) == 5


def test_unroll_gives_partners_common_random_numbers():
    def noisy_step(count, theta, key):
        loss = jax.random.normal(key) + theta[0]
        return count + 1, loss, count == 1

    population = jnp.array([[1.0], [2.0], [-1.0], [-2.0]])
    counts, losses, dones = evopes.unroll(
        noisy_step, population, jnp.zeros(4, jnp.int32), jax.random.key(3), 3
    )
    np.testing.assert_array_equal(counts, 3)
    assert losses.shape == (3, 4) and dones.dtype == bool
    np.testing.assert_allclose(
        losses[:, :2] - losses[:, 2:], [[2.0, 4.0]] * 3, rtol=1e-6
    )  # same noise
    assert np.all(losses[:, 0] != losses[:, 1])  # different pairs, different noise
    np.testing.assert_array_equal(dones[:, 0], [False, True, False])


def test_strategies_with_typed_keys_in_their_configuration_hash_and_compare():
    """init_inner closing over a typed key (jax.random.key) once broke jit's cache lookup."""
    data_key = jax.random.key(3)

    def init_inner(key):
        return jax.random.normal(jax.random.fold_in(data_key, 0), (2,)) + 0 * key_data(key)

    def key_data(key):
        return jax.random.key_data(key)[..., 0].astype(jnp.float32)

    make = lambda k: evopes.NRES(4, jnp.zeros(2), 1, None, lambda key: init_inner(key) + 0 * k)
    es, same = make(1.0), make(1.0)
    assert es == same and hash(es) == hash(same)
    other_key = jax.random.key(4)
    other = evopes.NRES(
        4, jnp.zeros(2), 1, None, lambda key: jax.random.normal(other_key, (2,)) + 0 * key_data(key)
    )
    assert other != es

    @jax.jit
    def first_state(es, key):
        return es.init(key, jnp.zeros(2), es.default_params).inner_state

    a = first_state(es, jax.random.key(0))
    b = first_state(same, jax.random.key(0))  # the second call looks the strategy up
    np.testing.assert_array_equal(a, b)
