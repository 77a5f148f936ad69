"""Any damage to a checkpoint file gives the documented ValueError; nothing else, ever.

Before, the CRC covered only the leaf data: of every single-bit flip of a 1.5 KB
checkpoint, 679 raised KeyError, TypeError or an unnamed numpy/JAX error, and an
edit of a leaf's ``data_dtype`` restored float32 data as int32 without an error.
Now a CRC-32 covers everything after the file's tag, so every single-bit flip is
detected (CRC-32 detects all single-bit errors).

Also here: retention never deletes another run's checkpoints, nor the one just written.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from evopes import checkpoint
from evopes.checkpoint import all_checkpoints, restore_checkpoint, save_checkpoint

TREE = {
    "mean": jnp.linspace(-1.0, 1.0, 7),
    "counter": jnp.array(3, jnp.int32),
    "key": jax.random.key(5),
    "flags": jnp.array([True, False]),
    "half": jnp.ones(3, jnp.bfloat16),
}


def _equal(a, b) -> bool:
    leaves_a, leaves_b = jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)
    for x, y in zip(leaves_a, leaves_b, strict=True):
        if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
            x, y = jax.random.key_data(x), jax.random.key_data(y)
        if x.dtype != y.dtype or np.asarray(x).tobytes() != np.asarray(y).tobytes():
            return False
    return True


def test_every_single_bit_flip_raises_the_documented_error(tmp_path):
    path = save_checkpoint(tmp_path, 1, TREE, metadata={"note": "fuzz"})
    original = path.read_bytes()
    assert _equal(restore_checkpoint(path, TREE), TREE)
    damaged = tmp_path / "damaged"
    damaged.mkdir()
    target = damaged / path.name
    outcomes = {"ValueError": 0, "identical": 0}
    for bit in range(len(original) * 8):
        data = bytearray(original)
        data[bit // 8] ^= 1 << (bit % 8)
        target.write_bytes(bytes(data))
        try:
            restored = restore_checkpoint(target, TREE)
        except ValueError as error:
            assert target.name in str(error), error
            outcomes["ValueError"] += 1
            continue
        # Anything else must have raised above; a restore that succeeds is exact.
        assert _equal(restored, TREE), bit
        outcomes["identical"] += 1
    assert outcomes["ValueError"] == len(original) * 8, outcomes


def test_retention_keeps_other_runs_and_the_checkpoint_just_written(tmp_path):
    for step in (100, 200, 300):
        save_checkpoint(tmp_path, step, {"x": jnp.array(step)}, keep=3, run_id="old")
    # The case: step 50 into a folder holding 100-300 returned a deleted path.
    path = save_checkpoint(tmp_path, 50, {"x": jnp.array(50)}, keep=1, run_id="new")
    assert path.exists()
    assert int(restore_checkpoint(path, {"x": jnp.array(0)})["x"]) == 50
    for step in (60, 70):
        path = save_checkpoint(tmp_path, step, {"x": jnp.array(step)}, keep=2, run_id="new")
    names = sorted(p.name for p in all_checkpoints(tmp_path))
    assert names == [f"checkpoint_{s:012d}.evopes" for s in (60, 70, 100, 200, 300)]
    runs = {checkpoint.checkpoint_metadata(p)["run_id"] for p in all_checkpoints(tmp_path)}
    assert runs == {"old", "new"}
    with pytest.raises(ValueError, match="run_id: expected a string or None"):
        save_checkpoint(tmp_path, 80, {"x": 1}, run_id=7)
