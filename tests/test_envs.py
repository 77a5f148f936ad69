"""Environment adapters against real gymnax and brax rollouts.

Every check compares the adapters with an independent, hand-written rollout of
the raw library (gymnax's six-value ``step``, brax's ``reset``/``step``) driven
by the same keys. Shapes are tiny and jitted functions are built once per
module, because compilation dominates the cost.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from evopes import envs, pair_keys, unroll

gymnax = pytest.importorskip("gymnax")

PENDULUM = envs.GymnaxEnv.make("Pendulum-v1")
CARTPOLE = envs.GymnaxEnv.make("CartPole-v1")
PENDULUM_POLICY = envs.MLPPolicy(action_dim=1, hidden_sizes=(8,))
PENDULUM_PARAMS = PENDULUM_POLICY.init(jax.random.key(0), jnp.zeros(3))
NUM_STEPS = 30


def always_right(params, obs):
    """CartPole policy pushing right forever: the pole falls within ~10 steps."""
    del params, obs
    return jnp.int32(1)


def bang_bang(params, obs):
    """CartPole policy depending on its single parameter, to make pairs differ."""
    return (params["w"] @ obs > 0).astype(jnp.int32)


# -- hand-written references -----------------------------------------------------------


def scan_return(raw_env, env_params, apply, params, key, num_steps):
    """The rollout written directly against gymnax: lax.scan, sum until the first done."""
    reset_key, steps_key = jax.random.split(key)
    obs, state = raw_env.reset(reset_key, env_params)

    def body(carry, step_key):
        obs, state, alive, total = carry
        obs, state, reward, terminated, truncated, _ = raw_env.step(
            step_key, state, apply(params, obs), env_params
        )
        total = total + jnp.where(alive, reward, 0.0)
        return (obs, state, alive & ~(terminated | truncated), total), None

    carry = (obs, state, jnp.array(True), jnp.float32(0.0))
    (_, _, _, total), _ = jax.lax.scan(body, carry, jax.random.split(steps_key, num_steps))
    return total


pendulum_fitness = envs.EpisodicFitness(
    PENDULUM, PENDULUM_POLICY, num_steps=NUM_STEPS, num_rollouts=3
)
pendulum_fitness_jit = jax.jit(pendulum_fitness)
pendulum_reference = jax.jit(
    jax.vmap(
        lambda params, key: scan_return(
            PENDULUM.env, PENDULUM.params, PENDULUM_POLICY.apply, params, key, NUM_STEPS
        ),
        in_axes=(None, 0),
    )
)


def pendulum_population(size):
    scales = jnp.linspace(-2.0, 2.0, size)
    return jax.tree.map(
        lambda leaf: scales.reshape((-1,) + (1,) * leaf.ndim) * leaf, PENDULUM_PARAMS
    )


# -- gymnax: episodic fitness --------------------------------------------------------------


def test_pendulum_fitness_equals_hand_written_scan():
    population = pendulum_population(4)
    key = jax.random.key(1)
    fitness = pendulum_fitness_jit(population, key)
    rollout_keys = jax.random.split(key, 3)  # "population" sharing: same keys for every member
    for member in range(4):
        params = jax.tree.map(lambda leaf, m=member: leaf[m], population)
        expected = -jnp.mean(pendulum_reference(params, rollout_keys))
        # Same operations under an extra vmap; XLA may fuse differently, so allow float32 rounding.
        np.testing.assert_allclose(fitness[member], expected, rtol=1e-5)
    assert len(set(np.asarray(fitness).round(3))) == 4  # the members really differ


def test_cartpole_terminates_early_and_reward_of_done_step_counts():
    fitness = envs.EpisodicFitness(CARTPOLE, always_right, num_steps=100, num_rollouts=5)
    key = jax.random.key(2)
    returns = np.asarray(jax.jit(fitness.returns)(None, key))
    # Independent reference: a plain Python loop over gymnax that stops at the first done.
    for rollout_key, got in zip(jax.random.split(key, 5), returns, strict=True):
        reset_key, steps_key = jax.random.split(rollout_key)
        obs, state = CARTPOLE.env.reset(reset_key, CARTPOLE.params)
        total = 0.0
        for step_key in jax.random.split(steps_key, 100):
            obs, state, reward, terminated, truncated, _ = CARTPOLE.env.step(
                step_key, state, 1, CARTPOLE.params
            )
            total += float(reward)
            if terminated or truncated:
                break
        assert terminated, "the pole must fall: the test needs an early termination"
        assert got == total
    # Pushing right from near-upright drops the pole after 8-10 steps: far below num_steps.
    assert returns.max() < 15 and returns.min() >= 5


def test_antithetic_partners_share_environment_randomness():
    # bang_bang with w = 0 ignores the observation: the return is a function of the
    # environment's randomness only, so equal fitness means equal randomness.
    num_pairs = 3
    population = {"w": jnp.zeros((2 * num_pairs, 4))}
    key = jax.random.key(3)
    fitnesses = [
        envs.EpisodicFitness(
            CARTPOLE, bang_bang, num_steps=60, num_rollouts=2, common_random_numbers=sharing
        )
        for sharing in ("pairs", "none", "population")
    ]
    # One jit for the three modes: compilation, not running, is the cost here.
    results = jax.jit(lambda population, key: [fitness(population, key) for fitness in fitnesses])
    pairs, independent, shared = (np.asarray(r) for r in results(population, key))
    np.testing.assert_array_equal(pairs[:num_pairs], pairs[num_pairs:])
    assert len(set(pairs[:num_pairs])) > 1  # different pairs meet different starts
    assert np.any(independent[:num_pairs] != independent[num_pairs:])
    assert len(set(shared)) == 1


def test_pairs_sharing_needs_an_even_population():
    fitness = envs.EpisodicFitness(CARTPOLE, bang_bang, num_steps=5, common_random_numbers="pairs")
    with pytest.raises(ValueError, match="even population"):
        fitness({"w": jnp.zeros((3, 4))}, jax.random.key(0))
    with pytest.raises(ValueError, match="num_steps"):
        envs.EpisodicFitness(CARTPOLE, bang_bang, num_steps=0)
    with pytest.raises(ValueError, match="common_random_numbers"):
        envs.EpisodicFitness(CARTPOLE, bang_bang, num_steps=5, common_random_numbers="all")


# -- observation normalisation ------------------------------------------------------------------


def test_normalizer_matches_numpy_moments_over_batches():
    normalizer = envs.ObservationNormalizer(min_std=1e-6, clip=None)
    rng = np.random.default_rng(0)
    batches = [rng.normal(3.0, 2.0, size=(n, 2)).astype(np.float32) for n in (5, 1, 17)]
    state = normalizer.init(jnp.zeros(2))
    for batch in batches:
        moments = jax.vmap(normalizer.moments, in_axes=(None, 0))(state, jnp.asarray(batch))
        state = normalizer.update(state, jax.tree.map(lambda m: m.sum(0), moments))
    everything = np.concatenate(batches)
    assert float(state.count) == len(everything)
    np.testing.assert_allclose(state.mean, everything.mean(0), rtol=1e-5)
    np.testing.assert_allclose(state.m2 / state.count, everything.var(0), rtol=1e-4)
    np.testing.assert_allclose(
        normalizer.normalize(state, everything[0]),
        (everything[0] - everything.mean(0)) / everything.std(0),
        rtol=1e-4,
    )


def test_fitness_normalisation_counts_only_observations_before_the_end():
    fitness = envs.EpisodicFitness(
        CARTPOLE,
        always_right,
        num_steps=100,
        num_rollouts=5,
        normalizer=envs.ObservationNormalizer(),
    )
    key = jax.random.key(2)
    population = {"w": jnp.zeros((2, 4))}
    values, stats = jax.jit(fitness.evaluate)(population, key, fitness.init_obs_stats())
    # The policy sees one observation per step it acts in, and a CartPole episode's
    # return is its length: the count is the summed returns of 2 members x 5 rollouts.
    assert float(stats.count) == 5 * float(-values.sum())
    with pytest.raises(ValueError, match="evaluate"):
        fitness(population, key)


# -- gymnax: online step function --------------------------------------------------------------


def test_online_step_auto_resets_and_absorbing_ends_match_the_episodic_return():
    auto_reset = envs.OnlineRollout(CARTPOLE, always_right)
    absorbing = envs.OnlineRollout(CARTPOLE, always_right, absorbing=True)
    episodic = envs.EpisodicFitness(CARTPOLE, always_right, num_steps=40)
    key = jax.random.key(4)
    reset_key, steps_key = jax.random.split(key)
    step_keys = jax.random.split(steps_key, 40)  # the keys EpisodicFitness uses for `key`

    def scan(task):
        def one_step(inner, step_key):
            inner, loss, done = task.step(inner, None, step_key)
            return inner, (loss, done, inner.obs)

        return jax.lax.scan(one_step, task.init_inner(reset_key), step_keys)

    # One compilation for the three rollouts.
    (
        (_, (losses, dones, observations)),
        (final, (absorbed_losses, absorbed_dones, _)),
        (episode_return, _),
    ) = jax.jit(lambda: (scan(auto_reset), scan(absorbing), episodic.episode_return(None, key)))()
    dones, episode_return = np.asarray(dones), float(episode_return)
    first_end = int(np.argmax(dones))
    assert dones.sum() >= 2, "40 steps of always-right hold several CartPole episodes"
    # Auto-reset: the first episode's losses are minus the episodic return for the same keys ...
    np.testing.assert_allclose(-losses[: first_end + 1].sum(), episode_return)
    # ... and after the done step the observation is gymnax's reset from that step's key.
    _, reset_from_step_key = jax.random.split(step_keys[first_end])
    expected_obs, _ = CARTPOLE.env.reset(reset_from_step_key, CARTPOLE.params)
    np.testing.assert_array_equal(observations[first_end], expected_obs)
    # Absorbing: the summed losses of the horizon are minus the episodic return,
    # every loss after the fall is 0 and no done is reported.
    assert episode_return < 15  # the pole fell early in the 40 steps
    np.testing.assert_allclose(-absorbed_losses.sum(), episode_return)
    assert np.all(np.asarray(absorbed_losses)[int(episode_return) :] == 0.0)
    assert not np.any(absorbed_dones) and not bool(final.alive)


def test_online_partners_see_identical_randomness_through_unroll():
    task = envs.OnlineRollout(CARTPOLE, bang_bang)
    num_pairs = 2
    w = jnp.array([[0.0, 0.0, 1.0, 0.3], [0.0, 0.1, 1.0, 0.0]])
    population = {"w": jnp.concatenate([w, w])}  # partners with equal parameters
    inner = jax.vmap(task.init_inner)(pair_keys(jax.random.key(5), num_pairs))
    _, losses, dones = jax.jit(unroll, static_argnums=(0, 4))(
        task.step, population, inner, jax.random.key(6), 25
    )
    np.testing.assert_array_equal(losses[:, :num_pairs], losses[:, num_pairs:])
    np.testing.assert_array_equal(dones[:, :num_pairs], dones[:, num_pairs:])


def test_online_normalizer_statistics_follow_the_observations():
    task = envs.OnlineRollout(
        PENDULUM, PENDULUM_POLICY.apply, normalizer=envs.ObservationNormalizer()
    )
    inner = task.init_inner(jax.random.key(7))
    first_obs = inner.obs
    inner, _, _ = jax.jit(task.step)(inner, PENDULUM_PARAMS, jax.random.key(8))
    assert float(inner.obs_stats.count) == 1.0
    np.testing.assert_allclose(inner.obs_stats.mean, first_obs)


# -- brax (spring backend) --------------------------------------------------------------------

brax_envs = pytest.importorskip("brax.envs")


@pytest.fixture(scope="module")
def inverted_pendulum():
    return envs.BraxEnv.make("inverted_pendulum", backend="spring")


def brax_policy(params, obs):
    return jnp.tanh(params["w"] @ obs)[None]


def test_brax_fitness_equals_hand_written_scan_with_termination(inverted_pendulum):
    raw = inverted_pendulum.env
    fitness = envs.EpisodicFitness(inverted_pendulum, brax_policy, num_steps=40, num_rollouts=2)
    params = {"w": jnp.array([2.0, -3.0, 0.5, 0.1])}  # pushes the pole over: episodes end early
    key = jax.random.key(9)

    def reference(key):
        reset_key, steps_key = jax.random.split(key)
        state = raw.reset(reset_key)

        def body(carry, _):
            state, alive, total = carry
            state = raw.step(state, brax_policy(params, state.obs))
            total = total + jnp.where(alive, state.reward, 0.0)
            return (state, alive & (state.done < 0.5), total), state.done

        (_, _, total), dones = jax.lax.scan(
            body, (state, jnp.array(True), jnp.float32(0)), None, 40
        )
        return total, dones

    # One compilation for both (brax compiles slowly).
    got, (expected, dones) = jax.jit(
        lambda: (fitness.returns(params, key), jax.vmap(reference)(jax.random.split(key, 2)))
    )()
    assert np.all(np.asarray(dones).any(axis=1)), "the pole must fall within 40 steps"
    np.testing.assert_allclose(got, expected, rtol=1e-6)
    assert np.all(np.asarray(got) < 40)  # inverted_pendulum pays 1 per step alive


def test_brax_auto_reset_draws_a_fresh_state_and_time_limit(inverted_pendulum):
    limited = envs.BraxEnv(inverted_pendulum.env, max_episode_steps=3)
    task = envs.OnlineRollout(limited, lambda params, obs: jnp.zeros(1))
    step_keys = jax.random.split(jax.random.key(10), 7)

    def run(inner, step_key):
        inner, loss, done = task.step(inner, None, step_key)
        return inner, (loss, done, inner.obs)

    (_, (losses, dones, observations)), fresh = jax.jit(
        lambda: (
            jax.lax.scan(run, task.init_inner(jax.random.key(11)), step_keys),
            inverted_pendulum.env.reset(step_keys[2]),
        )
    )()
    # A zero action keeps the pole up for 7 steps: only the time limit ends episodes.
    np.testing.assert_array_equal(dones, [False, False, True, False, False, True, False])
    np.testing.assert_array_equal(losses, -np.ones(7))
    # The episode that ended at step 2 restarts from brax's reset drawn with that step's key.
    np.testing.assert_allclose(observations[2], fresh.obs)
    assert envs.observation_shape(inverted_pendulum).shape == (4,)
