"""Helpers for tests that take checkpoint files apart (format version 2).

``rewrite_checkpoint`` edits a checkpoint's header and recomputes both
checksums, as a deliberate forgery would: what is left to catch such an edit is
the header's consistency checks and the target's.
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Callable
from pathlib import Path

import msgpack

PREAMBLE = struct.Struct("<8sIQI")


def split_checkpoint(raw: bytes) -> tuple[bytes, int, dict, bytes]:
    """(magic, version, header, data) of a checkpoint's bytes."""
    magic, version, length, _ = PREAMBLE.unpack(raw[: PREAMBLE.size])
    header = msgpack.unpackb(raw[PREAMBLE.size : PREAMBLE.size + length], strict_map_key=False)
    return magic, version, header, raw[PREAMBLE.size + length : -4]


def join_checkpoint(magic: bytes, version: int, header: dict, data: bytes) -> bytes:
    """A checkpoint's bytes with both checksums computed."""
    header_bytes = msgpack.packb(header, use_bin_type=True)
    start = struct.pack("<8sIQ", magic, version, len(header_bytes))
    preamble = start + struct.pack("<I", zlib.crc32(header_bytes, zlib.crc32(start)))
    body = preamble + header_bytes + data
    return body + struct.pack("<I", zlib.crc32(body))


def header_length(raw: bytes) -> int:
    """Bytes of the preamble and header (everything before the data)."""
    return PREAMBLE.size + PREAMBLE.unpack(raw[: PREAMBLE.size])[2]


def rewrite_checkpoint(
    path: Path,
    edit: Callable[[dict], None] | None = None,
    *,
    version: int | None = None,
    data: Callable[[bytes], bytes] | None = None,
) -> None:
    """Edits a checkpoint's header (in place), version or data, recomputing the checksums."""
    magic, stored_version, header, payload = split_checkpoint(path.read_bytes())
    if edit is not None:
        edit(header)
    if data is not None:
        payload = data(payload)
    path.write_bytes(
        join_checkpoint(magic, stored_version if version is None else version, header, payload)
    )
