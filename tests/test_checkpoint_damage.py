"""Any damage to a checkpoint file gives the documented ValueError; nothing else, ever.

Measured before (issue 12, item 5): the CRC covered only the leaf data. Of every
single-bit flip of a 1.5 KB checkpoint, 679 raised KeyError, TypeError or an
unnamed numpy/JAX error instead of the documented ValueError naming the file;
an edit of a leaf's ``data_dtype`` in the header restored float32 data as
int32 without any error; and the driver did not fall back to an older intact
checkpoint when the latest was damaged.

Now a CRC-32 of the whole file sits at its end and another covers the header
(CRC-32 detects every single-bit error and every burst of up to 32 bits), and
the header is checked for consistency, so that even an edit with recomputed
checksums is caught. The driver resumes from the newest intact checkpoint of
the run, with a warning naming the damaged one.
"""

from __future__ import annotations

import random
import warnings

import jax
import jax.numpy as jnp
import msgpack
import numpy as np
import pytest
from checkpoint_files import header_length, rewrite_checkpoint
from strategy_zoo import CASES, MEAN, SOLUTION, sphere, tree_bytes

import evopes
from evopes import checkpoint
from evopes.checkpoint import (
    DamagedCheckpointError,
    all_checkpoints,
    checkpoint_metadata,
    checkpoint_step,
    latest_checkpoint,
    restore_checkpoint,
    save_checkpoint,
)

#: A small checkpoint with every kind of leaf: float32, int32, a typed key, bool,
#: bfloat16, a numpy scalar, a Python int and an empty array.
TREE = {
    "mean": jnp.linspace(-1.0, 1.0, 7),
    "counter": jnp.array(3, jnp.int32),
    "key": jax.random.key(5),
    "flags": jnp.array([True, False]),
    "half": jnp.ones(3, jnp.bfloat16),
    "scalar": np.float64(2.5),
    "count": 12,
    "empty": np.zeros((0, 2), np.float32),
}


def _signature(tree) -> list:
    """Leaf paths, dtypes, shapes and bytes (keys by their data and implementation)."""
    signature = []
    for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
        dtype = str(getattr(leaf, "dtype", type(leaf).__name__))
        if hasattr(leaf, "dtype") and jax.dtypes.issubdtype(leaf.dtype, jax.dtypes.prng_key):
            dtype += str(jax.random.key_impl(leaf))
            leaf = jax.random.key_data(leaf)
        array = np.asarray(leaf)
        signature.append((jax.tree_util.keystr(path), dtype, array.shape, array.tobytes()))
    return signature


def _restore_outcome(path, template, expected) -> str:
    """'error' for the documented ValueError naming the file, 'identical' for an exact restore.

    Any other exception propagates and fails the test.
    """
    try:
        restored = restore_checkpoint(path, template)
    except ValueError as error:
        assert str(path.name) in str(error), error
        return "error"
    assert _signature(restored) == expected
    return "identical"


# -- fuzz: every single-bit flip, sampled flips and bursts of a larger file ------------------
def test_every_single_bit_flip_raises_the_documented_error(tmp_path):
    path = save_checkpoint(tmp_path, 1, TREE, metadata={"note": "fuzz", "list": [1, 2.5]})
    original = path.read_bytes()
    expected = _signature(TREE)
    assert _signature(restore_checkpoint(path, TREE)) == expected
    header_end = header_length(original)
    metadata = checkpoint_metadata(path)

    target = tmp_path / "damaged" / path.name
    target.parent.mkdir()
    outcomes = {"error": 0, "identical": 0}
    for bit in range(len(original) * 8):
        data = bytearray(original)
        data[bit // 8] ^= 1 << (bit % 8)
        target.write_bytes(bytes(data))
        outcomes[_restore_outcome(target, TREE, expected)] += 1
        # Reading the header alone (listing a folder) checks the header's own CRC:
        # a flip there is an error naming the file; a flip in the data is found on restore.
        if bit // 8 < header_end:
            with pytest.raises(ValueError, match=target.name):
                checkpoint_metadata(target)
        elif bit // 8 >= len(original) - 4:  # the whole-file CRC: header still reads
            assert checkpoint_metadata(target) == metadata
    # CRC-32 detects every single-bit error: no flip goes unnoticed.
    assert outcomes == {"error": len(original) * 8, "identical": 0}, outcomes


def _driver_checkpoint(directory) -> tuple:
    """A real checkpoint of evopes.run (CMA-ES state, key, counters, history)."""
    es = next(case for case in CASES if case.name == "CMAES").make(SOLUTION, 8)
    evopes.run(
        es,
        sphere,
        MEAN,
        jax.random.key(0),
        6,
        chunk_size=3,
        checkpoint_dir=directory,
        progress=False,
    )
    path = latest_checkpoint(directory)
    length = checkpoint_metadata(path)["history_length"]
    result = evopes.run(
        es,
        sphere,
        MEAN,
        jax.random.key(0),
        6,
        chunk_size=3,
        checkpoint_dir=directory,
        progress=False,
    )
    history = {name: np.zeros((length,), values.dtype) for name, values in result.history.items()}
    carry = evopes.driver._Carry(
        result.state, jax.random.key(0), jnp.array(0, jnp.int32), jnp.array(False)
    )
    template = {"carry": evopes.driver._strong_types(carry), "history": history}
    return path, template


def test_sampled_flips_bursts_and_truncations_of_a_run_checkpoint(tmp_path):
    path, template = _driver_checkpoint(tmp_path / "run")
    original = path.read_bytes()
    expected = _signature(restore_checkpoint(path, template))
    rng = random.Random(12)
    target = tmp_path / path.name
    outcomes = {"error": 0, "identical": 0}
    damages = []
    for _ in range(2500):  # single bits at sampled positions
        bit = rng.randrange(len(original) * 8)
        damages.append(lambda d, bit=bit: d.__setitem__(bit // 8, d[bit // 8] ^ (1 << bit % 8)))
    for _ in range(300):  # bursts of random bytes
        start = rng.randrange(len(original))
        burst = bytes(rng.randrange(256) for _ in range(rng.randrange(1, 64)))
        damages.append(lambda d, s=start, b=burst: d.__setitem__(slice(s, s + len(b)), b))
    for _ in range(100):  # truncations and extensions
        cut, extra = rng.randrange(len(original)), rng.randrange(1, 9)
        damages.append(lambda d, cut=cut: d.__delitem__(slice(cut, None)))
        damages.append(lambda d, extra=extra: d.extend(b"\0" * extra))
    for damage in damages:
        data = bytearray(original)
        damage(data)
        target.write_bytes(bytes(data))
        outcomes[_restore_outcome(target, template, expected)] += 1
    # A burst may rewrite bytes with their own values: those restore exactly.
    assert outcomes["error"] >= 2900 and sum(outcomes.values()) == len(damages), outcomes


# -- forged edits: checksums recomputed ----------------------------------------------------
def _leaf(header, name):
    return next(leaf for leaf in header["leaves"] if leaf["path"] == name)


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        # The measured case: float32 data read back as int32.
        (lambda h: _leaf(h, "['mean']").update(data_dtype="int32"), "dtype 'float32' stored"),
        (lambda h: _leaf(h, "['mean']").update(shape=[8]), "has 28 bytes, not 32"),
        (lambda h: _leaf(h, "['mean']").update(offset=4), "at offset 4"),
        (lambda h: _leaf(h, "['key']").update(key_impl="rbg"), r"leaf \"\['key'\]\""),
        (lambda h: _leaf(h, "['key']").update(key_impl="nonsense"), "unrecognized PRNG"),
        (lambda h: _leaf(h, "['key']").update(data_dtype="int32"), "stored as 'int32'"),
        (lambda h: _leaf(h, "['half']").update(data_dtype="object"), "data_dtype"),
        (lambda h: _leaf(h, "['half']").update(data_dtype="no-such-type"), "data_dtype"),
        (lambda h: _leaf(h, "['counter']").pop("offset"), "fields"),
        (lambda h: _leaf(h, "['counter']").update(shape=[-1]), "shape"),
        (lambda h: _leaf(h, "['counter']").update(shape="()"), "shape"),
        (lambda h: h.update(data_length=h["data_length"] + 1), "data_length"),
        (lambda h: h.update(step="7"), "step"),
        (lambda h: h.update(run_id=5), "run_id"),
        (lambda h: h.update(leaves={}), "leaves"),
        (lambda h: h.update(metadata=[1]), "metadata"),
        (lambda h: h.update(extra=1), "fields"),
    ],
)
def test_forged_header_edits_are_caught(tmp_path, edit, message):
    path = save_checkpoint(tmp_path, 1, TREE)
    rewrite_checkpoint(path, edit)
    with pytest.raises(DamagedCheckpointError, match=rf"{path.name}: damaged file .*{message}"):
        restore_checkpoint(path, TREE)


def test_a_consistent_forgery_still_meets_the_targets_checks(tmp_path):
    path = save_checkpoint(tmp_path, 1, TREE)
    # dtype and data_dtype both changed: the header is consistent, the target is not.
    rewrite_checkpoint(
        path, lambda h: _leaf(h, "['mean']").update(dtype="int32", data_dtype="int32")
    )
    with pytest.raises(ValueError, match=r"\['mean'\]\" expected dtype float32, got int32"):
        restore_checkpoint(path, TREE)


def test_an_edit_without_new_checksums_is_damage(tmp_path):
    path = save_checkpoint(tmp_path, 1, TREE)
    raw = path.read_bytes()
    edited = raw.replace(b"float32", b"int32\0\0", 1)  # the first data_dtype/dtype string
    assert edited != raw and len(edited) == len(raw)
    path.write_bytes(edited)
    with pytest.raises(DamagedCheckpointError, match=f"{path.name}: damaged file"):
        restore_checkpoint(path, TREE)
    with pytest.raises(DamagedCheckpointError, match="header checksum mismatch"):
        checkpoint_metadata(path)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"", "no evopes checkpoint tag"),
        (b"EVOPESCK", "truncated to 8 bytes"),
        (b"garbage" * 100, "no evopes checkpoint tag"),
        (b"EVOPESCK" + b"\xff" * 40, "(checksum mismatch|header length)"),
    ],
)
def test_files_that_are_no_checkpoint(tmp_path, content, message):
    path = tmp_path / "checkpoint_000000000001.evopes"
    path.write_bytes(content)
    with pytest.raises(DamagedCheckpointError, match=f"{path.name}: damaged file .*{message}"):
        restore_checkpoint(path, TREE)
    with pytest.raises(DamagedCheckpointError, match=path.name):
        checkpoint_metadata(path)


def test_format_version_1_files_are_refused_clearly(tmp_path):
    # The layout of evopes releases before run ids: one msgpack map.
    legacy = {
        "magic": "evopes-checkpoint",
        "version": 1,
        "step": 3,
        "metadata": {},
        "crc32": 0,
        "leaves": [],
    }
    path = tmp_path / "checkpoint_000000000003.evopes"
    path.write_bytes(msgpack.packb(legacy, use_bin_type=True))
    with pytest.raises(ValueError, match=r"expected format version 2, got 1; .*another evopes"):
        restore_checkpoint(path, {})
    assert not isinstance(_error_of(lambda: restore_checkpoint(path, {})), DamagedCheckpointError)
    # A run refuses to resume from such a folder (and does not take it for damage).
    with pytest.raises(ValueError, match="format version 2, got 1"):
        _count(tmp_path, 4)
    assert path.exists()


def _error_of(function):
    try:
        function()
    except Exception as error:
        return error
    raise AssertionError("no error")


def test_latest_checkpoint_skips_a_damaged_header_with_a_warning(tmp_path):
    save_checkpoint(tmp_path, 1, {"x": np.float32(1)})
    path = save_checkpoint(tmp_path, 2, {"x": np.float32(2)})
    path.write_bytes(path.read_bytes()[:30])
    with pytest.warns(RuntimeWarning, match=f"skipping {path}"):
        assert latest_checkpoint(tmp_path).name == "checkpoint_000000000001.evopes"
    # A file that cannot be read is never overwritten, nor pruned.
    with pytest.raises(ValueError, match=f"{path.name}: refusing to overwrite a file"):
        save_checkpoint(tmp_path, 2, {"x": np.float32(2)})
    save_checkpoint(tmp_path, 3, {"x": np.float32(3)}, keep=1)
    assert [p.name for p in all_checkpoints(tmp_path)] == [
        path.name,
        "checkpoint_000000000003.evopes",
    ]


# -- the driver falls back to the newest intact checkpoint ------------------------------------
def _add(state, key, params):
    del key
    state = state + params
    return state, {"value": state}


def _count(directory, num_steps, **options):
    return evopes.run_loop(
        _add,
        jnp.array(0.0),
        jax.random.key(0),
        num_steps,
        params=jnp.array(1.0),
        chunk_size=4,
        checkpoint_dir=directory,
        progress=False,
        **options,
    )


def _flip_data_bit(path):
    data = bytearray(path.read_bytes())
    data[header_length(data) + 1] ^= 0x04
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("damage", ["data", "header", "truncated", "empty"])
def test_resume_falls_back_to_the_newest_intact_checkpoint(tmp_path, damage):
    reference = _count(tmp_path / "reference", 20)
    folder = tmp_path / "run"
    _count(folder, 12, keep_checkpoints=5)
    latest = latest_checkpoint(folder)
    assert checkpoint_step(latest) == 12
    if damage == "data":
        _flip_data_bit(latest)
    elif damage == "header":
        raw = bytearray(latest.read_bytes())
        raw[30] ^= 0x01
        latest.write_bytes(bytes(raw))
    elif damage == "truncated":
        latest.write_bytes(latest.read_bytes()[:-10])
    else:
        latest.write_bytes(b"")

    with pytest.warns(
        RuntimeWarning,
        match=rf"{latest.name}: damaged file .*resuming from "
        r"checkpoint_000000000008\.evopes.*renamed to checkpoint_000000000012"
        r"\.evopes\.damaged",
    ):
        resumed = _count(folder, 20, keep_checkpoints=5)
    assert tree_bytes(resumed.state) == tree_bytes(reference.state)
    assert sorted(resumed.history) == sorted(reference.history)
    for name in reference.history:
        assert resumed.history[name].tobytes() == reference.history[name].tobytes(), name
    # The damaged file is kept aside for inspection; the run rewrote its step.
    assert (folder / f"{latest.name}.damaged").exists()
    assert [checkpoint_step(p) for p in all_checkpoints(folder)] == [4, 8, 12, 16, 20]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # nothing damaged any more: no warning
        assert float(_count(folder, 20).state) == 20.0


def test_several_damaged_checkpoints_are_skipped_in_turn(tmp_path):
    folder = tmp_path / "run"
    _count(folder, 16, keep_checkpoints=4)
    names = [p.name for p in all_checkpoints(folder)]
    for path in all_checkpoints(folder)[-2:]:
        _flip_data_bit(path)
    with pytest.warns(RuntimeWarning) as record:
        resumed = _count(folder, 16, keep_checkpoints=4)
    messages = [str(w.message) for w in record if issubclass(w.category, RuntimeWarning)]
    assert len(messages) == 2 and all(names[1] in m for m in messages)
    assert {names[2], names[3]} == {m.split(":")[0].split("/")[-1] for m in messages}
    assert float(resumed.state) == 16.0 and len(resumed.history["step"]) == 16


def test_no_intact_checkpoint_is_an_error_naming_the_folder(tmp_path):
    _count(tmp_path, 8, keep_checkpoints=2)
    for path in all_checkpoints(tmp_path):
        _flip_data_bit(path)
    with pytest.raises(ValueError, match=rf"checkpoint_dir: {tmp_path} holds no intact checkpoint"):
        _count(tmp_path, 12)
    for path in all_checkpoints(tmp_path):
        path.write_bytes(b"broken")  # headers unreadable too
    with pytest.raises(ValueError, match=rf"checkpoint_dir: {tmp_path} holds no intact checkpoint"):
        _count(tmp_path, 12)
    assert len(all_checkpoints(tmp_path)) == 2  # nothing deleted or renamed


def test_save_load_round_trip_of_format_constants():
    assert checkpoint.FORMAT_VERSION == 2 and issubclass(DamagedCheckpointError, ValueError)
