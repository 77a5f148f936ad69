"""evopes.threefry draws exactly the streams of jax.random (bit for bit)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from evopes import threefry

SHAPES = [(1,), (7,), (3, 5), (2, 3, 4), (1000,)]


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("seed", [0, 1, 12345])
def test_bits_and_normals_equal_jax_random(shape, seed):
    for key in (jax.random.key(seed), jax.random.PRNGKey(seed)):
        np.testing.assert_array_equal(threefry.bits(key, shape), jax.random.bits(key, shape))
        np.testing.assert_array_equal(
            jax.jit(threefry.normal, static_argnums=1)(key, shape),
            jax.random.normal(key, shape),
        )


def test_batched_keys_equal_vmapped_jax_random():
    keys = jax.random.split(jax.random.key(3), 5)
    expected = jax.vmap(lambda k: jax.random.normal(k, (4, 3)))(keys)
    np.testing.assert_array_equal(threefry.normal(keys, (4, 3)), expected)
    # Raw key data (what GaussianNoise stores as ids) gives the same rows.
    np.testing.assert_array_equal(threefry.normal(jax.random.key_data(keys), (4, 3)), expected)
    np.testing.assert_array_equal(
        jax.vmap(lambda k: threefry.normal(k, (4, 3)))(keys), expected
    )


@pytest.mark.parametrize("shape", [(1, 1), (4, 3), (13, 40)])
def test_normal_row_is_that_row_of_normal(shape):
    for key in (jax.random.key(7), jax.random.PRNGKey(7)):
        full = jax.random.normal(key, shape)
        row = jax.jit(threefry.normal_row, static_argnums=1)
        for index in range(shape[0]):
            np.testing.assert_array_equal(row(key, shape, jnp.int32(index)), full[index])
    # other key impls fall back to jax.random and still give the row
    rbg = jax.random.key(7, impl="rbg")
    np.testing.assert_array_equal(
        threefry.normal_row(rbg, (4, 3), 2), jax.random.normal(rbg, (4, 3))[2]
    )


@pytest.mark.parametrize("num", [1, 2, 3, 100])
def test_split_equals_jax_random_split(num):
    for key in (jax.random.key(7), jax.random.PRNGKey(7)):
        ours, theirs = threefry.split(key, num), jax.random.split(key, num)
        assert ours.dtype == theirs.dtype and ours.shape == theirs.shape
        if jax.dtypes.issubdtype(theirs.dtype, jax.dtypes.prng_key):
            ours, theirs = jax.random.key_data(ours), jax.random.key_data(theirs)
        np.testing.assert_array_equal(jax.jit(lambda k: k)(ours), theirs)
    # Under jit; a batch of keys is refused, as by jax.random.split.
    key = jax.random.key(8)
    np.testing.assert_array_equal(
        jax.random.key_data(jax.jit(threefry.split, static_argnums=1)(key, 5)),
        jax.random.key_data(jax.random.split(key, 5)),
    )
    with pytest.raises(ValueError, match="single key"):  # as jax.random.split
        threefry.split(jax.random.split(key, 3), 2)


def test_hash_known_answer():
    # Threefry-2x32, 20 rounds, known-answer vector of the Random123 distribution
    # (key = counter = (0, 0)), as also checked by JAX's own tests.
    zero = jnp.zeros((), jnp.uint32)
    out = threefry.hash2x32(zero, zero, zero, zero)
    assert [int(x) for x in out] == [0x6B200159, 0x99BA4EFE]
    ones = jnp.full((), 0xFFFFFFFF, jnp.uint32)
    out = threefry.hash2x32(ones, ones, ones, ones)
    assert [int(x) for x in out] == [0x1CB996FC, 0xBB002BE7]


def test_other_key_impls_fall_back_to_jax_random():
    key = jax.random.key(0, impl="rbg")
    np.testing.assert_array_equal(threefry.normal(key, (3,)), jax.random.normal(key, (3,)))
    np.testing.assert_array_equal(threefry.bits(key, (3,)), jax.random.bits(key, (3,)))


def test_normals_are_finite_at_the_extremes():
    # All-zero and all-one mantissas map to the ends of (-1, 1): erfinv stays finite.
    u = threefry.uniform_open(jax.random.key(0), (100_000,))
    assert float(jnp.min(u)) > -1.0 and float(jnp.max(u)) < 1.0
    assert bool(jnp.all(jnp.isfinite(threefry.normal(jax.random.key(0), (100_000,)))))


def _hash_copies(hlo_text: str) -> int:
    """Fused computations of a compiled program that evaluate the 20 Threefry rounds."""
    computations = hlo_text.split("\n%")
    return sum(1 for body in computations if body.count(" xor(") >= 20)


def test_a_generation_in_a_users_jit_hashes_its_noise_once():
    # Inside one jit, XLA may fuse an elementwise producer into each of its
    # consumers; for the normals that meant the hash ran once per consumer (the
    # fitness, the checksum, each term of tell: six copies for SNES, twice
    # evosax's time per generation). The normals are drawn once; the second
    # copy is tell's rebuild of a foreign population, in a branch not taken.
    import evopes

    es = evopes.SNES(population_size=15, solution=jnp.zeros(40))
    params = es.default_params

    def generation(state, key):
        ask_key, tell_key = jax.random.split(key)
        population, state = es.ask(ask_key, state, params)
        return es.tell(tell_key, population, jnp.sum(population**2, axis=1), state, params)[0]

    state = es.init(jax.random.key(0), jnp.ones(40), params)
    hlo = jax.jit(generation).lower(state, jax.random.key(1)).compile().as_text()
    assert _hash_copies(hlo) == 2
