"""The multi-process checkpoint layout (parts and a manifest), checked in one process.

A save switches to parts and a manifest when its target holds an array with data
on other processes; here that test is patched to say yes, with a grid of one
process, so the layout, its checks and its errors run without ``jax.distributed``
(``tests/test_multihost_checkpoint.py`` runs the real two-process protocol).
"""

from __future__ import annotations

import struct
import zlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from evopes import checkpoint
from evopes.checkpoint import (
    DamagedCheckpointError,
    checkpoint_metadata,
    latest_checkpoint,
    restore_checkpoint,
    save_checkpoint,
)


@pytest.fixture
def as_parts(monkeypatch):
    monkeypatch.setattr(checkpoint, "_spans_processes", lambda tree: True)
    monkeypatch.setattr(checkpoint, "_process_grid", lambda: (0, 1))


def _tree(value: float) -> dict:
    return {"x": jnp.full((3,), value), "key": jax.random.key(7), "n": np.int64(5)}


def _with_trailer(data: bytes) -> bytes:
    """``data`` with its whole-file CRC-32 recomputed (a forged but self-consistent file)."""
    body = data[:-4]
    return body + struct.pack("<I", zlib.crc32(body))


def _name(step: int, part: str = "") -> str:
    return f"checkpoint_{step:012d}{part}.evopes"


def test_parts_and_manifest_round_trip_and_prune(as_parts, tmp_path):
    for step in (1, 2, 3):
        save_checkpoint(tmp_path, step, _tree(float(step)), keep=2, run_id="r")
    # Manifests and parts of the two newest checkpoints; step 1's part was removed
    # with its manifest.
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        _name(2),
        _name(2, ".part0of1"),
        _name(3),
        _name(3, ".part0of1"),
    ]
    assert latest_checkpoint(tmp_path).name == _name(3)
    assert checkpoint_metadata(tmp_path)["process_count"] == 1
    restored = restore_checkpoint(tmp_path, _tree(0.0))
    np.testing.assert_array_equal(restored["x"], np.full(3, 3.0))
    assert np.array_equal(
        jax.random.key_data(restored["key"]), jax.random.key_data(_tree(0)["key"])
    )
    assert restored["n"] == 5 and restored["n"].dtype == np.int64


def test_a_missing_part_names_the_manifest_and_the_part(as_parts, tmp_path):
    save_checkpoint(tmp_path, 4, _tree(1.0))
    (tmp_path / _name(4, ".part0of1")).unlink()
    with pytest.raises(
        DamagedCheckpointError, match=rf"{_name(4)}.*{_name(4, '.part0of1')} is missing"
    ):
        restore_checkpoint(tmp_path / _name(4), _tree(0.0))


def test_every_bit_flip_of_a_part_or_manifest_is_a_value_error(as_parts, tmp_path):
    save_checkpoint(tmp_path, 4, _tree(1.0))
    manifest, part = tmp_path / _name(4), tmp_path / _name(4, ".part0of1")
    for damaged in (manifest, part):
        original = damaged.read_bytes()
        for bit in range(0, 8 * len(original), 7):  # every 7th bit: both files, ~500 flips
            data = bytearray(original)
            data[bit // 8] ^= 1 << (bit % 8)
            damaged.write_bytes(bytes(data))
            with pytest.raises(DamagedCheckpointError, match=_name(4)):
                restore_checkpoint(manifest, _tree(0.0))
        damaged.write_bytes(original)
    np.testing.assert_array_equal(restore_checkpoint(manifest, _tree(0.0))["x"], np.ones(3))


def test_a_part_of_another_save_is_not_the_one_committed(as_parts, tmp_path):
    save_checkpoint(tmp_path, 4, _tree(1.0), run_id="r")
    committed = (tmp_path / _name(4, ".part0of1")).read_bytes()
    save_checkpoint(tmp_path, 4, _tree(2.0), run_id="r", keep=None)
    manifest_of_second = (tmp_path / _name(4)).read_bytes()
    (tmp_path / _name(4, ".part0of1")).write_bytes(committed)  # an intact but stale part
    (tmp_path / _name(4)).write_bytes(manifest_of_second)
    with pytest.raises(DamagedCheckpointError, match="is not the one committed"):
        restore_checkpoint(tmp_path / _name(4), _tree(0.0))


def test_another_number_of_processes_or_a_part_alone_is_refused(as_parts, monkeypatch, tmp_path):
    save_checkpoint(tmp_path, 4, _tree(1.0))
    with pytest.raises(ValueError, match=rf"{_name(4, '.part0of1')} is one process's part"):
        restore_checkpoint(tmp_path / _name(4, ".part0of1"), _tree(0.0))
    monkeypatch.setattr(checkpoint, "_process_grid", lambda: (0, 2))
    with pytest.raises(ValueError, match="written by 1 processes, restored by 2"):
        restore_checkpoint(tmp_path / _name(4), _tree(0.0))


def test_a_single_process_file_keeps_the_header_of_earlier_releases(tmp_path):
    path = save_checkpoint(tmp_path, 1, _tree(1.0))
    header = checkpoint._read_header(path)
    assert set(header) == {"run_id", "step", "sequence", "metadata", "data_length", "leaves"}
    assert all("shards" not in leaf for leaf in header["leaves"])
    assert "process_count" not in checkpoint_metadata(path)


def test_a_part_edited_with_its_own_checksum_recomputed_is_caught_by_the_manifest(
    as_parts, tmp_path
):
    save_checkpoint(tmp_path, 4, _tree(1.0))
    part = tmp_path / _name(4, ".part0of1")
    data = bytearray(part.read_bytes())
    data[-5] ^= 0x01  # the last data byte (the 'n' leaf); header and its CRC untouched
    part.write_bytes(_with_trailer(bytes(data)))
    checkpoint._read(part)  # the part alone reads as intact ...
    with pytest.raises(DamagedCheckpointError, match="is not the one committed"):
        restore_checkpoint(tmp_path / _name(4), _tree(0.0))  # ... the manifest's CRC says no
