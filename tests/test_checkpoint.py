"""Checkpoints: exact round trips of every strategy's state, checks, versions, atomicity."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from checkpoint_files import rewrite_checkpoint
from strategy_zoo import (
    CASE_IDS,
    CASES,
    MEAN,
    SOLUTION,
    advance,
    code_shape,
    generation,
    strong_params,
    tree_bytes,
)

from evopes import checkpoint
from evopes.checkpoint import (
    DamagedCheckpointError,
    all_checkpoints,
    checkpoint_metadata,
    latest_checkpoint,
    restore_checkpoint,
    save_checkpoint,
)


@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_every_strategy_state_round_trips_exactly(case, tmp_path):
    es = case.make(SOLUTION, 8)
    params = strong_params(es.default_params)
    step = generation(case, es)
    # Eight generations, the second with a NaN and an inf: the state carries all kinds of values.
    codes = jnp.zeros((8,) + code_shape(case, es), jnp.int32).at[1, ..., :2].set(jnp.array([1, 2]))
    state, (sound, _) = advance(
        step, es.init(jax.random.key(1), MEAN, params), jax.random.key(2), params, codes
    )
    assert bool(jnp.all(sound))
    loop = {
        "state": state,
        "key": jax.random.split(jax.random.key(2), 3),
        "generation": 8,
        "losses": [0.5, 1.5],
    }

    save_checkpoint(tmp_path, 8, loop)
    # The template comes from jax.eval_shape: restoring needs no real state.
    shapes = jax.eval_shape(lambda: (loop["state"], loop["key"]))
    template = {"state": shapes[0], "key": shapes[1], "generation": 0, "losses": [0.0, 0.0]}
    restored = restore_checkpoint(latest_checkpoint(tmp_path), template)

    assert tree_bytes(restored) == tree_bytes(loop)
    assert jax.tree_util.tree_structure(restored) == jax.tree_util.tree_structure(loop)
    assert type(restored["generation"]) is int and restored["generation"] == 8
    # The restored state keeps working, and identically: eight more generations match.
    key = jax.random.key(9)
    assert tree_bytes(advance(step, restored["state"], key, params, codes)) == tree_bytes(
        advance(step, state, key, params, codes)
    )


def test_exotic_leaves_round_trip(tmp_path):
    # NaN payloads, -0.0, bfloat16, legacy uint32 keys, rbg keys, numpy and Python scalars.
    tree = {
        "special": jnp.array([jnp.nan, -0.0, jnp.inf, -jnp.inf], jnp.float32),
        "bf16": jnp.array([1.5, -2.25], jnp.bfloat16),
        "legacy_key": jax.random.PRNGKey(7),
        "rbg_key": jax.random.key(3, impl="rbg"),
        "int8": np.arange(6, dtype=np.int8).reshape(2, 3),
        "numpy_scalar": np.float64(2.5),
        "flag": True,
        "count": 12,
        "empty": jnp.zeros((0, 4)),
        "nothing": None,
    }
    save_checkpoint(tmp_path, 0, tree)
    restored = restore_checkpoint(tmp_path, tree)
    assert tree_bytes(restored) == tree_bytes(tree)
    assert isinstance(restored["int8"], np.ndarray) and isinstance(restored["count"], int)
    assert str(jax.random.key_impl(restored["rbg_key"])) == "rbg"
    assert restored["nothing"] is None


def test_weak_types_are_preserved(tmp_path):
    # A weakly typed scalar promotes differently (bfloat16 * weak f32 -> bfloat16),
    # so losing the weak type would change a resumed computation.
    weak = jax.jit(lambda: 0.5)()
    assert weak.weak_type
    save_checkpoint(tmp_path, 0, {"weak": weak})
    restored = restore_checkpoint(tmp_path, {"weak": weak})["weak"]
    assert restored.weak_type
    assert (restored * jnp.ones(2, jnp.bfloat16)).dtype == jnp.bfloat16


def test_restore_reports_mismatches_by_leaf(tmp_path):
    tree = {"mean": jnp.zeros(3), "counter": jnp.array(0, jnp.int32), "key": jax.random.key(0)}
    save_checkpoint(tmp_path, 5, tree)
    with pytest.raises(ValueError, match=r"leaf \"\['mean'\]\" expected shape \(4,\), got \(3,\)"):
        restore_checkpoint(tmp_path, {**tree, "mean": jnp.zeros(4)})
    with pytest.raises(ValueError, match=r"\['counter'\]\" expected dtype float32, got int32"):
        restore_checkpoint(tmp_path, {**tree, "counter": jnp.array(0.0)})
    with pytest.raises(ValueError, match=r"expected dtype key<fry>, got uint32"):
        save_checkpoint(tmp_path, 6, {**tree, "key": jax.random.PRNGKey(0)})
        restore_checkpoint(tmp_path, tree)
    with pytest.raises(ValueError, match="target has 2 leaves"):
        restore_checkpoint(tmp_path, {"mean": jnp.zeros(3), "key": jax.random.key(0)})
    with pytest.raises(ValueError, match=r"expected leaf \"\['avg'\]\", found \"\['counter'\]\""):
        restore_checkpoint(
            tmp_path, {"mean": jnp.zeros(3), "avg": jnp.array(0, jnp.int32), "key": tree["key"]}
        )


def test_format_version_and_damage_are_detected(tmp_path):
    # Every kind of damage, bit by bit, is in tests/test_checkpoint_damage.py.
    path = save_checkpoint(tmp_path, 1, {"x": jnp.arange(4.0)})
    rewrite_checkpoint(path, version=checkpoint.FORMAT_VERSION + 1)  # checksums recomputed
    with pytest.raises(
        ValueError, match=f"expected format version {checkpoint.FORMAT_VERSION}, got 3"
    ):
        restore_checkpoint(path, {"x": jnp.zeros(4)})

    path = save_checkpoint(tmp_path, 2, {"x": jnp.arange(4.0)})
    data = bytearray(path.read_bytes())
    data[-7] ^= 0xFF  # flip bits inside the last leaf's data
    path.write_bytes(bytes(data))
    with pytest.raises(DamagedCheckpointError, match=f"{path.name}: damaged file .checksum"):
        restore_checkpoint(path, {"x": jnp.zeros(4)})

    path.write_bytes(path.read_bytes()[:20])  # truncated
    with pytest.raises(DamagedCheckpointError, match=f"{path.name}: damaged file .truncated"):
        restore_checkpoint(path, {"x": jnp.zeros(4)})
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ValueError, match="no checkpoint in directory"):
        restore_checkpoint(empty, {"x": 0})


def test_keep_last_n_and_metadata(tmp_path):
    for step in (10, 2, 30, 4, 50):  # saved out of order: pruning goes by write order
        save_checkpoint(
            tmp_path, step, {"step": jnp.array(step)}, keep=2, metadata={"note": f"s{step}"}
        )
    assert [p.name for p in all_checkpoints(tmp_path)] == [
        "checkpoint_000000000004.evopes",
        "checkpoint_000000000050.evopes",
    ]
    assert checkpoint_metadata(tmp_path) == {
        "step": 50,
        "format_version": checkpoint.FORMAT_VERSION,
        "run_id": None,
        "write_sequence": 5,
        "note": "s50",
    }
    assert int(restore_checkpoint(tmp_path, {"step": jnp.array(0)})["step"]) == 50
    with pytest.raises(ValueError, match="keep: expected an integer >= 1"):
        save_checkpoint(tmp_path, 60, {"a": 1}, keep=0)
    with pytest.raises(ValueError, match="step: expected an integer >= 0"):
        save_checkpoint(tmp_path, -1, {"a": 1})


def test_failed_write_leaves_previous_checkpoint_intact(tmp_path, monkeypatch):
    save_checkpoint(tmp_path, 1, {"x": jnp.ones(3)})

    def crash(temp_path):
        assert temp_path.exists() and temp_path.parent == tmp_path  # same folder: rename is atomic
        raise KeyboardInterrupt("killed between writing and renaming")

    monkeypatch.setattr(checkpoint, "_before_commit", crash)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(tmp_path, 2, {"x": 2 * jnp.ones(3)})
    monkeypatch.setattr(checkpoint, "_before_commit", None)

    # The half-finished write is invisible: latest is still step 1 and restores.
    assert latest_checkpoint(tmp_path).name == "checkpoint_000000000001.evopes"
    assert len(list(tmp_path.glob(".tmp-*"))) == 1
    np.testing.assert_array_equal(
        restore_checkpoint(tmp_path, {"x": jnp.zeros(3)})["x"], np.ones(3)
    )
    # The next save cleans the left-over temporary file.
    save_checkpoint(tmp_path, 3, {"x": 3 * jnp.ones(3)})
    assert not list(tmp_path.glob(".tmp-*"))
    np.testing.assert_array_equal(
        restore_checkpoint(tmp_path, {"x": jnp.zeros(3)})["x"], 3 * np.ones(3)
    )


# Sharded states are saved and restored inside the 8-device subprocess of
# tests/test_sharding.py (test_sharded_state_checkpoints_and_resumes_bit_identically).
