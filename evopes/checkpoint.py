"""Atomic, fully checked checkpoints of any pytree: strategy states, PRNG keys, loop state.

A checkpoint is one file, ``<directory>/checkpoint_<step>.evopes``, holding the
leaves of a pytree as raw bytes with their tree path, dtype and shape::

    path = save_checkpoint(directory, step, {"state": state, "key": key})
    latest = latest_checkpoint(directory)
    restored = restore_checkpoint(latest, {"state": template_state, "key": template_key})

Restoring needs a *target*: a pytree with the structure, shapes and dtypes to
expect (real arrays, or ``jax.ShapeDtypeStruct`` from ``jax.eval_shape``). Any
difference — tree paths, a shape, a dtype, a format version — raises a
``ValueError`` naming the leaf, the expected and the found value, instead of
silently reinterpreting bytes.

Guarantees
----------
* **Atomic.** The file is written under a temporary name in the same folder,
  flushed and ``fsync``-ed, then moved into place with ``os.replace`` (atomic on
  POSIX and Windows) and the folder is ``fsync``-ed. A crash at any moment
  leaves either the previous checkpoints or the new one, never a truncated
  latest checkpoint; left-over temporary files are ignored and removed by the
  next save.
* **Exact.** Bytes are stored verbatim, so restoring gives bit-identical arrays
  (NaN payloads and ``-0.0`` included). Typed PRNG keys (``jax.random.key``)
  are stored as their ``key_data`` with the implementation name and rebuilt with
  ``wrap_key_data``; legacy ``uint32`` keys are plain arrays.
* **Fully checked.** A CRC-32 of the whole file (header and data) is stored at
  its end, and a second CRC-32 covers the header alone (so listing a folder
  reads headers only). Any damage — a flipped bit anywhere, a truncated or
  extended file, an edited header — raises :class:`DamagedCheckpointError`, a
  ``ValueError`` naming the file; after the checksums, the header is also checked
  for consistency (every leaf's dtype, stored dtype, shape and byte count agree)
  so that even a deliberately edited file with recomputed checksums cannot be
  reinterpreted. A file of another format version raises a plain ``ValueError``
  naming the file and the versions.
* **Runs never mix.** Every checkpoint records a ``run_id`` (``None`` unless
  given) and a write sequence number. Retention (``keep``) keeps the newest
  checkpoints *of the same run* by *write order* — never by step number — and
  never deletes a checkpoint of another run, or the one just written. A save
  whose file name is taken by a checkpoint of another run (or by an unreadable
  file) refuses instead of overwriting it.

Arrays sharded over the devices of this process are gathered to the host on
save and put back on the target's sharding on restore.

Several processes (``jax.distributed``)
---------------------------------------
When ``target`` holds an array with data on other processes, every process
calls :func:`save_checkpoint` with the same arguments. Each writes its *part*,
``checkpoint_<step>.part<i>of<n>.evopes`` (a file of the same format holding the
distinct shards its devices hold, each with its place in the global array, and
its process-local leaves), atomically; all wait at a barrier; process 0 then
writes the *manifest* ``checkpoint_<step>.evopes``, which holds no leaves but
the CRC-32 of every part, atomically. Only manifests are listed and pruned, so
a checkpoint is the latest only once every part is written: a process killed
during a save leaves the previous checkpoint the latest. After a second
barrier each process deletes its parts whose manifest is gone.
:func:`restore_checkpoint` of a manifest has every process read and check every
part (so all agree on whether the checkpoint is intact without talking) and
raises :class:`DamagedCheckpointError`, naming the manifest and the part, when a
part is missing, damaged or not the one committed; a leaf split over processes
is put together from every part's shards and placed on the target's sharding.

Why not orbax or a bare ``flax.serialization``
-----------------------------------------------
``flax.serialization.to_bytes`` restores into a target but does not check leaf
shapes or dtypes, handles only the containers flax knows, and cannot store typed
PRNG keys. orbax-checkpoint is built for multi-host, asynchronous checkpoints of
large sharded models: a checkpoint is a directory of many files written by
background threads, importing it costs seconds, and its API changes between
releases. A strategy state is small, so one self-describing file (a fixed
preamble, a msgpack header, the raw leaf bytes, a checksum), flattened with
``jax.tree_util`` (any registered pytree works) is both the simplest and the
easiest to reason about when a process is killed mid-write. The multi-process
protocol keeps that: parts are files of the same checked format, and the
manifest's per-part CRC-32s make the whole checkpoint verifiable file by file.

File layout (format version 2)
------------------------------
* bytes 0-7: the magic tag ``b"EVOPESCK"``;
* bytes 8-11: the format version, uint32 little-endian;
* bytes 12-19: the header length ``H``, uint64 little-endian;
* bytes 20-23: CRC-32 of bytes 0-19 followed by the header;
* the header, ``H`` bytes of msgpack: run id, step, write sequence, metadata,
  and for every leaf its tree path, dtype, stored dtype, shape, and offset and
  byte count in the data section;
* the data: the leaves' bytes, one after the other;
* the last 4 bytes: CRC-32 of every byte before them.

Parts and manifests add ``kind``, ``process_index``, ``process_count`` and
``parts`` (the parts' CRC-32s, in a manifest) to the header, and a leaf split
over processes adds ``shards`` (each shard's ``[start, stop]`` per axis, offset
and byte count); a single process's file has neither, as in earlier releases.

Files of format version 1 (evopes releases before run ids) are refused with a
``ValueError`` that says so.
"""

from __future__ import annotations

import math
import os
import re
import struct
import warnings
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import msgpack
import numpy as np

PyTree = Any

#: Version of the on-disk layout; bumped whenever it changes incompatibly.
FORMAT_VERSION = 2
_MAGIC = b"EVOPESCK"
_LEGACY_MAGIC = "evopes-checkpoint"  # format version 1: one msgpack map
_PREAMBLE = struct.Struct("<8sIQI")  # magic, version, header length, header CRC
_TRAILER = struct.Struct("<I")  # CRC-32 of the whole file before it
_PATTERN = re.compile(r"^checkpoint_(\d+)\.evopes$")
_PART_PATTERN = re.compile(r"^checkpoint_(\d+)\.part(\d+)of(\d+)\.evopes$")
_TEMP_PREFIX = ".tmp-"

#: Test hook, called with the temporary path after the data is written and
#: fsync-ed but before it is renamed into place (fault tests use it to kill a
#: process at the worst moment). None in normal use.
_before_commit: Callable[[Path], None] | None = None


class DamagedCheckpointError(ValueError):
    """A checkpoint file that is damaged: truncated, extended, altered or unreadable.

    A ``ValueError`` whose message names the file; ``path`` is the file. Raised
    for any change to a checkpoint's bytes, so a damaged file is never restored
    as wrong values. (A file of another format version raises a plain
    ``ValueError`` instead: it is intact, just not readable by this release.)
    """

    def __init__(self, path: Path, reason: str):
        self.path = Path(path)
        self.reason = reason
        super().__init__(f"checkpoint {self.path}: damaged file ({reason})")


# -- public API ----------------------------------------------------------------
def save_checkpoint(
    directory: str | os.PathLike,
    step: int,
    target: PyTree,
    *,
    keep: int | None = 3,
    metadata: dict | None = None,
    run_id: str | None = None,
) -> Path:
    """Atomically writes ``target`` as the checkpoint of ``step`` and prunes old ones.

    Args:
      directory: folder of the checkpoints (created if missing).
      step: a non-negative integer naming the checkpoint (e.g. the generation).
      target: any pytree of arrays, Python scalars and PRNG keys.
      keep: how many checkpoints of this run to keep, the one just written
        included: the newest by write order (not by step). Checkpoints of other
        runs are never deleted. ``None`` keeps all.
      metadata: small JSON-like dict (str, int, float, bool, lists, dicts)
        stored alongside, read back with :func:`checkpoint_metadata`.
      run_id: the run this checkpoint belongs to (a non-empty string), or None.
        Retention only ever deletes checkpoints with the same ``run_id``
        (checkpoints saved without one form one group of their own).

    Returns:
      The path of the new checkpoint; it exists when this function returns.

    Raises:
      ValueError: a bad argument, or ``checkpoint_<step>.evopes`` already holds a
        checkpoint of another run (or a file that cannot be read), which is not
        overwritten.
    """
    if isinstance(step, bool) or int(step) != step or step < 0:
        raise ValueError(f"step: expected an integer >= 0, got {step!r}")
    if keep is not None and (isinstance(keep, bool) or int(keep) != keep or keep < 1):
        raise ValueError(f"keep: expected an integer >= 1 or None, got {keep!r}")
    if run_id is not None and (not isinstance(run_id, str) or not run_id):
        raise ValueError(f"run_id: expected a non-empty string or None, got {run_id!r}")
    step = int(step)
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    spans_processes = _spans_processes(target)
    process_index, process_count = _process_grid() if spans_processes else (0, 1)
    _remove_temporary_files(directory, process_index)

    final_path = directory / _file_name(step)
    entries = _scan(directory)
    for entry in entries:
        if entry.path.name == final_path.name:
            _check_may_overwrite(entry, run_id)
    sequence = 1 + max((e.header["sequence"] for e in entries if e.header), default=0)
    common = dict(step=step, sequence=sequence, run_id=run_id, metadata=metadata or {})

    if not spans_processes:
        _write_atomically(directory, final_path, process_index, _encode(target, **common))
    else:
        # Every process writes its part; once all are written, process 0 commits
        # the checkpoint by writing its manifest (the file latest_checkpoint sees).
        part = directory / _part_name(step, process_index, process_count)
        chunks = _encode(target, kind="part", process=(process_index, process_count), **common)
        _write_atomically(directory, part, process_index, chunks)
        _sync(f"evopes-checkpoint-{step}-{sequence}-parts-written")
        if process_index == 0:
            checksums = [
                _trailer(directory / _part_name(step, q, process_count))
                for q in range(process_count)
            ]
            manifest = _encode(
                {}, kind="manifest", process=(0, process_count), parts=checksums, **common
            )
            _write_atomically(directory, final_path, process_index, manifest)

    if process_index == 0 and keep is not None:
        same_run = [
            e
            for e in _scan(directory)
            if e.header is not None
            and e.header["run_id"] == run_id
            and e.path.name != final_path.name
        ]
        same_run.sort(key=lambda e: e.header["sequence"])
        for old in same_run[: max(0, len(same_run) - (keep - 1))]:
            old.path.unlink(missing_ok=True)
    if spans_processes:
        _sync(f"evopes-checkpoint-{step}-{sequence}-committed")
        _remove_orphan_parts(directory, process_index, run_id)
    return final_path


def restore_checkpoint(path: str | os.PathLike, target: PyTree) -> PyTree:
    """Reads a checkpoint into the structure of ``target``.

    Args:
      path: a checkpoint file, or a folder (its latest checkpoint is used).
      target: a pytree with the expected structure, shapes and dtypes. Leaves
        may be jax arrays (restored as jax arrays on the same sharding), numpy
        arrays, Python scalars or ``jax.ShapeDtypeStruct`` (restored as jax
        arrays).

    Raises:
      DamagedCheckpointError: the file is damaged (a ``ValueError`` naming it).
      ValueError: the file is missing, of another format version, or does not
        match ``target``.
    """
    path = _resolve(path)
    header, data = _read(path)
    if _kind(header) == "part":
        raise ValueError(
            f"path: {path} is one process's part of a checkpoint; restore the checkpoint "
            f"itself, {_file_name(header['step'])}"
        )
    if _kind(header) == "manifest":
        this_process, parts = _read_parts(path, header)
        path, header, data = parts[this_process]
        return _unflatten_into(path, header, data, target, parts)
    return _unflatten_into(path, header, data, target)


def checkpoint_metadata(path: str | os.PathLike) -> dict:
    """``{"step", "format_version", "run_id", "write_sequence", **metadata}`` of a checkpoint.

    A checkpoint written by several processes also has ``"process_count"``.

    Reads and checks the header only (see :func:`restore_checkpoint` for the data).
    """
    path = _resolve(path)
    header = _read_header(path)
    return {
        "step": header["step"],
        "format_version": FORMAT_VERSION,
        "run_id": header["run_id"],
        "write_sequence": header["sequence"],
        **({} if _kind(header) == "single" else {"process_count": header["process_count"]}),
        **header["metadata"],
    }


def all_checkpoints(directory: str | os.PathLike) -> list[Path]:
    """Checkpoint files in ``directory``, oldest first by write order.

    Temporary files are excluded. Files whose header cannot be read (damaged, or
    of another format version) come first, ordered by step.
    """
    return [entry.path for entry in _scan(Path(directory))]


def latest_checkpoint(directory: str | os.PathLike) -> Path | None:
    """The checkpoint written last in ``directory`` (by write order, not step), or None.

    Only checkpoints whose header reads back intact count; a file whose header
    is damaged is skipped with a ``RuntimeWarning`` naming it. The data is
    checked when restoring.
    """
    entries = _scan(Path(directory))
    for entry in entries:
        if entry.header is None:
            warnings.warn(
                f"latest_checkpoint: skipping {entry.path}: {entry.error}",
                RuntimeWarning,
                stacklevel=2,
            )
    readable = [entry for entry in entries if entry.header is not None]
    return readable[-1].path if readable else None


def checkpoint_step(path: str | os.PathLike) -> int:
    """The step a checkpoint was saved at, read from its file name."""
    match = _PATTERN.match(Path(path).name)
    if match is None:
        raise ValueError(
            f"path: expected a file named checkpoint_<step>.evopes, got {Path(path).name!r}"
        )
    return int(match.group(1))


# -- folders -------------------------------------------------------------------------
@dataclass(frozen=True)
class _Entry:
    """A checkpoint file of a folder: its header, or why the header cannot be read."""

    path: Path
    step: int
    header: dict | None
    error: ValueError | None


def _file_name(step: int) -> str:
    return f"checkpoint_{step:012d}.evopes"


def _kind(header: dict) -> str:
    """``"single"`` (one process's whole checkpoint), ``"part"`` or ``"manifest"``."""
    return header.get("kind", "single")


def _process_grid() -> tuple[int, int]:
    """(this process's index, the number of processes) of a ``jax.distributed`` run."""
    return jax.process_index(), jax.process_count()


def _part_name(step: int, process_index: int, process_count: int) -> str:
    return f"checkpoint_{step:012d}.part{process_index}of{process_count}.evopes"


def _parts_of(path: Path, header: dict) -> list[Path]:
    """The part files of a multi-process checkpoint (its manifest's header given)."""
    count = header["process_count"]
    return [path.with_name(_part_name(header["step"], q, count)) for q in range(count)]


def _sync(name: str) -> None:
    """A barrier across the processes of a ``jax.distributed`` run (a no-op with one)."""
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(name)


def _spans_processes(tree: PyTree) -> bool:
    """Whether a leaf is an array with data on another process (``jax.distributed``)."""
    return any(
        isinstance(leaf, jax.Array)
        and not isinstance(leaf, jax.core.Tracer)
        and not leaf.is_fully_addressable
        for leaf in jax.tree_util.tree_leaves(tree)
    )


def _trailer(path: Path) -> int:
    """The whole-file CRC-32 stored at the end of a checkpoint file."""
    with open(path, "rb") as file:
        file.seek(-_TRAILER.size, os.SEEK_END)
        return _TRAILER.unpack(file.read(_TRAILER.size))[0]


def _remove_orphan_parts(directory: Path, process_index: int, run_id: str | None) -> None:
    """Deletes this process's parts (of ``run_id``) whose checkpoint has no manifest.

    They belong to checkpoints pruned by retention, or never committed because
    another process died while writing its part.
    """
    for path in directory.glob(f"checkpoint_*.part{process_index}of*.evopes"):
        match = _PART_PATTERN.match(path.name)
        if match is None or (directory / _file_name(int(match.group(1)))).exists():
            continue
        try:
            header = _read_header(path)
        except (ValueError, OSError):
            continue  # unreadable: not provably ours, left alone
        if header["run_id"] == run_id and _kind(header) == "part":
            path.unlink(missing_ok=True)


def _scan(directory: Path) -> list[_Entry]:
    """Every ``checkpoint_<step>.evopes`` of ``directory``, oldest first by write order."""
    if not directory.is_dir():
        return []
    entries = []
    for path in directory.iterdir():
        match = _PATTERN.match(path.name)
        if match is None or not path.is_file():
            continue
        try:
            entries.append(_Entry(path, int(match.group(1)), _read_header(path), None))
        except FileNotFoundError:  # deleted meanwhile
            continue
        except ValueError as error:
            entries.append(_Entry(path, int(match.group(1)), None, error))
    order = lambda e: (-1, e.step) if e.header is None else (e.header["sequence"], e.step)
    return sorted(entries, key=order)


def _check_may_overwrite(entry: _Entry, run_id: str | None) -> None:
    if entry.header is None:
        raise ValueError(
            f"checkpoint {entry.path}: refusing to overwrite a file that cannot be read "
            f"({entry.error}); it may belong to another run: move it away first"
        )
    if entry.header["run_id"] != run_id:
        raise ValueError(
            f"checkpoint {entry.path}: refusing to overwrite a checkpoint of another run "
            f"(run id {entry.header['run_id']!r}, this save's is {run_id!r})"
        )


def _resolve(path: str | os.PathLike) -> Path:
    path = Path(path)
    if path.is_dir():
        entries = _scan(path)
        readable = [entry for entry in entries if entry.header is not None]
        if readable:
            return readable[-1].path
        if entries:  # only unreadable files: report the one with the highest step
            raise entries[-1].error
        raise ValueError(f"path: no checkpoint in directory {path}")
    return path


def _write_atomically(directory: Path, final_path: Path, process_index: int, chunks: list) -> None:
    temp_path = directory / f"{_TEMP_PREFIX}{final_path.name}.p{process_index}.{os.getpid()}"
    with open(temp_path, "wb") as file:
        for chunk in chunks:
            file.write(chunk)
        file.flush()
        os.fsync(file.fileno())
    if _before_commit is not None:
        _before_commit(temp_path)
    os.replace(temp_path, final_path)
    _fsync_directory(final_path.parent)


def _remove_temporary_files(directory: Path, process_index: int) -> None:
    """Deletes temporary files left by a writer (of this process index) that died before
    renaming them; other processes' files, possibly being written, are left alone."""
    for stale in directory.glob(f"{_TEMP_PREFIX}*.p{process_index}.*"):
        stale.unlink(missing_ok=True)


def _fsync_directory(directory: Path) -> None:
    """Makes the rename itself durable (POSIX); a no-op where folders cannot be opened."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


# -- encoding --------------------------------------------------------------------
def _flatten(tree: PyTree) -> tuple[list[tuple[str, Any]], Any]:
    with_path, treedef = jax.tree_util.tree_flatten_with_path(tree)
    return [(jax.tree_util.keystr(key_path), leaf) for key_path, leaf in with_path], treedef


def _is_key_dtype(dtype) -> bool:
    return jax.dtypes.issubdtype(dtype, jax.dtypes.prng_key)


def _to_host(name: str, value: Any) -> np.ndarray:
    """A C-contiguous numpy copy of a (non-key) value."""
    array = np.asarray(jax.device_get(value))
    if not array.flags.c_contiguous:  # (np.ascontiguousarray would turn a 0-d array 1-d)
        array = array.copy(order="C")
    if array.dtype.kind == "O":
        raise ValueError(f"target: leaf {name!r} is not numeric (got {type(value).__name__})")
    return array


def _shard_index(index: tuple, shape: tuple) -> list[list[int]]:
    """A shard's index (a tuple of slices) as ``[[start, stop], ...]`` over every axis."""
    bounds = []
    for axis, size in enumerate(shape):
        piece = index[axis] if axis < len(index) else slice(None)
        start, stop, stride = piece.indices(size)
        if stride != 1:
            raise ValueError(f"unsupported strided shard index {index}")
        bounds.append([start, stop])
    return bounds


def _encode_leaf(name: str, leaf: Any) -> tuple[dict, list[np.ndarray]]:
    """A leaf's header record (without offsets) and its arrays (one, or one per shard).

    An array with data on other processes is stored as the distinct shards this
    process holds, each with its index in the global array.
    """
    if isinstance(leaf, jax.ShapeDtypeStruct):
        raise ValueError(f"target: leaf {name!r} is a ShapeDtypeStruct; expected a value to save")
    key_impl = None
    dtype_name = str(leaf.dtype if hasattr(leaf, "dtype") else np.asarray(leaf).dtype)
    is_key = hasattr(leaf, "dtype") and _is_key_dtype(leaf.dtype)
    if is_key:
        key_impl = str(jax.random.key_impl(leaf))
    as_data = (lambda x: jax.random.key_data(x)) if is_key else (lambda x: x)
    if isinstance(leaf, jax.Array) and not leaf.is_fully_addressable:
        shards, arrays = [], []
        for shard in leaf.addressable_shards:
            bounds = _shard_index(shard.index, leaf.shape)
            if any(bounds == known["index"] for known in shards):
                continue  # a replica of a shard already stored
            arrays.append(_to_host(name, as_data(shard.data)))
            shards.append({"index": bounds})
        data_shape = arrays[0].shape[len(leaf.shape) :] if is_key else ()
        record = {"shape": list(leaf.shape) + list(data_shape), "shards": shards}
        data_dtype = arrays[0].dtype.name
    else:
        arrays = [_to_host(name, as_data(leaf))]
        record = {"shape": list(arrays[0].shape)}
        data_dtype = arrays[0].dtype.name
    record.update(path=name, dtype=dtype_name, data_dtype=data_dtype, key_impl=key_impl)
    return record, arrays


def _encode(
    tree: PyTree,
    *,
    step: int,
    sequence: int,
    run_id: str | None,
    metadata: dict,
    kind: str = "single",
    process: tuple[int, int] = (0, 1),
    parts: list[int] | None = None,
) -> list:
    """The file's bytes, as a list of buffers (preamble, header, leaf data, trailer)."""
    leaves, _ = _flatten(tree)
    records, buffers, offset = [], [], 0
    for name, leaf in leaves:
        record, arrays = _encode_leaf(name, leaf)
        raws = [array.reshape(-1).view(np.uint8) for array in arrays]
        record.update(offset=offset, nbytes=sum(int(raw.nbytes) for raw in raws))
        for shard, raw in zip(record.get("shards") or [], raws, strict=False):
            shard.update(offset=offset, nbytes=int(raw.nbytes))
            offset += int(raw.nbytes)
        if "shards" not in record:
            offset += int(raws[0].nbytes)
        records.append(record)
        buffers += raws
    header = {
        "run_id": run_id,
        "step": step,
        "sequence": sequence,
        "metadata": metadata,
        "data_length": offset,
        "leaves": records,
    }
    if kind != "single":  # single-process files keep the header of earlier releases
        header.update(
            kind=kind, process_index=process[0], process_count=process[1], parts=parts or []
        )
    try:
        header_bytes = msgpack.packb(header, use_bin_type=True)
    except (TypeError, ValueError, OverflowError) as error:
        raise ValueError(
            f"metadata: expected JSON-like values only, got {metadata!r} ({error})"
        ) from None
    start = struct.pack("<8sIQ", _MAGIC, FORMAT_VERSION, len(header_bytes))
    preamble = start + struct.pack("<I", zlib.crc32(header_bytes, zlib.crc32(start)))
    checksum = zlib.crc32(header_bytes, zlib.crc32(preamble))
    for raw in buffers:
        checksum = zlib.crc32(raw, checksum)
    return [preamble, header_bytes, *buffers, _TRAILER.pack(checksum)]


# -- reading and checking -----------------------------------------------------------
class _Invalid(Exception):
    """A header that does not describe a consistent checkpoint."""


def _read_header(path: Path) -> dict:
    """The checked header of a checkpoint, reading only the preamble and the header."""
    with open(path, "rb") as file:
        size = os.fstat(file.fileno()).st_size
        preamble = file.read(_PREAMBLE.size)
        if len(preamble) == _PREAMBLE.size and preamble[:8] == _MAGIC:
            length = _PREAMBLE.unpack(preamble)[2]
            if _PREAMBLE.size + length + _TRAILER.size <= size:
                return _parse_header(path, preamble + file.read(length), size)
    return _parse_header(path, path.read_bytes(), size)  # raises, naming the problem


def _read(path: Path) -> tuple[dict, memoryview]:
    """The checked header and the data section of a checkpoint (whole file checked)."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise ValueError(f"path: no checkpoint file at {path}") from None
    except IsADirectoryError:
        raise ValueError(f"path: {path} is a folder without checkpoints") from None
    if len(raw) >= _PREAMBLE.size + _TRAILER.size and raw[:8] == _MAGIC:
        (stored,) = _TRAILER.unpack(raw[-_TRAILER.size :])
        if zlib.crc32(memoryview(raw)[: -_TRAILER.size]) != stored:
            raise DamagedCheckpointError(path, "checksum mismatch")
    header = _parse_header(path, raw, len(raw))
    start = _PREAMBLE.size + _PREAMBLE.unpack(raw[: _PREAMBLE.size])[2]
    return header, memoryview(raw)[start : start + header["data_length"]]


def _parse_header(path: Path, raw: bytes, file_size: int) -> dict:
    """Checks the preamble and header at the start of ``raw`` (a file of ``file_size`` bytes)."""
    if raw[:8] != _MAGIC:
        legacy = _legacy_version(raw)
        if legacy is not None:
            raise ValueError(
                f"checkpoint {path}: expected format version {FORMAT_VERSION}, got {legacy!r}; "
                "it was written by another evopes release"
            )
        raise DamagedCheckpointError(path, "no evopes checkpoint tag at its start")
    if len(raw) < _PREAMBLE.size or file_size < _PREAMBLE.size + _TRAILER.size:
        raise DamagedCheckpointError(path, f"truncated to {file_size} bytes")
    _, version, length, header_crc = _PREAMBLE.unpack(raw[: _PREAMBLE.size])
    end = _PREAMBLE.size + length
    if end + _TRAILER.size > file_size or len(raw) < end:
        raise DamagedCheckpointError(path, f"header length {length} beyond the file's end")
    header_bytes = raw[_PREAMBLE.size : end]
    if zlib.crc32(header_bytes, zlib.crc32(raw[:20])) != header_crc:
        raise DamagedCheckpointError(path, "header checksum mismatch")
    if version != FORMAT_VERSION:
        raise ValueError(
            f"checkpoint {path}: expected format version {FORMAT_VERSION}, got {version}; "
            "it was written by another evopes release"
        )
    try:
        header = msgpack.unpackb(header_bytes, raw=False, strict_map_key=False)
        _check_header(header)
    except _Invalid as error:
        raise DamagedCheckpointError(path, f"inconsistent header: {error}") from None
    except Exception as error:  # msgpack raises several types on damaged input
        raise DamagedCheckpointError(path, f"unreadable header: {error}") from None
    expected = end + header["data_length"] + _TRAILER.size
    if expected != file_size:
        raise DamagedCheckpointError(
            path, f"{file_size} bytes where the header describes {expected}"
        )
    return header


def _legacy_version(raw: bytes):
    """The version of a format-1 file (one msgpack map with a magic entry), else None."""
    try:
        record = msgpack.unpackb(raw, raw=False, strict_map_key=False)
    except Exception:
        return None
    if isinstance(record, dict) and record.get("magic") == _LEGACY_MAGIC:
        return record.get("version")
    return None


def _expect(condition: bool, message: str) -> None:
    if not condition:
        raise _Invalid(message)


def _is_int(value, minimum: int = 0) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= minimum


def _check_header(header) -> None:
    """Raises _Invalid unless every field has its type and the leaves agree with the data."""
    _expect(isinstance(header, dict), f"expected a map, got {type(header).__name__}")
    fields = {"run_id", "step", "sequence", "metadata", "data_length", "leaves"}
    multi = {"kind", "process_index", "process_count", "parts"}  # parts and manifests only
    _expect(set(header) in (fields, fields | multi), f"fields {sorted(map(str, header))}")
    header = {"kind": "single", "process_index": 0, "process_count": 1, "parts": [], **header}
    run_id = header["run_id"]
    _expect(run_id is None or (isinstance(run_id, str) and run_id), f"run_id {run_id!r}")
    for name in ("step", "sequence", "data_length", "process_index"):
        _expect(_is_int(header[name]), f"{name} {header[name]!r}")
    kind, index, count = header["kind"], header["process_index"], header["process_count"]
    _expect(kind in ("single", "part", "manifest"), f"kind {kind!r}")
    _expect(_is_int(count, 1) and index < count, f"process {index!r} of {count!r}")
    _expect(kind != "single" or count == 1, f"single file of {count} processes")
    parts = header["parts"]
    _expect(
        isinstance(parts, list)
        and all(_is_int(crc) and crc < 2**32 for crc in parts)
        and len(parts) == (count if kind == "manifest" else 0),
        f"parts {parts!r}",
    )
    _expect(isinstance(header["metadata"], dict), "metadata is not a map")
    _expect(isinstance(header["leaves"], list), "leaves is not a list")
    _expect(kind != "manifest" or not header["leaves"], "a manifest with leaves")
    end = 0
    for index, leaf in enumerate(header["leaves"]):
        _check_leaf(index, leaf)
        _expect(leaf["offset"] == end, f"leaf {index} at offset {leaf['offset']}, expected {end}")
        end += leaf["nbytes"]
    _expect(end == header["data_length"], f"data_length {header['data_length']}, leaves {end}")


def _check_leaf(index: int, leaf) -> None:
    fields = {"path", "dtype", "data_dtype", "shape", "key_impl", "offset", "nbytes"}
    _expect(
        isinstance(leaf, dict) and set(leaf) in (fields, fields | {"shards"}),
        f"leaf {index} fields",
    )
    _expect(isinstance(leaf["path"], str), f"leaf {index} path")
    _expect(isinstance(leaf["dtype"], str), f"leaf {index} dtype")
    _expect(isinstance(leaf["data_dtype"], str), f"leaf {index} data_dtype")
    _expect(leaf["key_impl"] is None or isinstance(leaf["key_impl"], str), f"leaf {index} key")
    _expect(_is_int(leaf["offset"]) and _is_int(leaf["nbytes"]), f"leaf {index} extent")
    shape = leaf["shape"]
    _expect(isinstance(shape, list) and all(_is_int(size) for size in shape), f"leaf {index} shape")
    try:
        data_dtype = np.dtype(jnp.dtype(leaf["data_dtype"]))
    except Exception:
        raise _Invalid(f"leaf {index} data_dtype {leaf['data_dtype']!r}") from None
    _expect(data_dtype.kind != "O" and data_dtype.itemsize > 0, f"leaf {index} data_dtype")
    if leaf["key_impl"] is None:
        _expect(
            leaf["dtype"] == data_dtype.name,
            f"leaf {index} dtype {leaf['dtype']!r} stored as {leaf['data_dtype']!r}",
        )
    else:
        _expect(
            data_dtype == np.uint32 and leaf["dtype"].startswith("key<"),
            f"leaf {index} key {leaf['dtype']!r} stored as {leaf['data_dtype']!r}",
        )
    if "shards" not in leaf:
        expected = math.prod(shape) * data_dtype.itemsize
    else:
        expected = _check_shards(index, leaf, data_dtype.itemsize)
    _expect(leaf["nbytes"] == expected, f"leaf {index} has {leaf['nbytes']} bytes, not {expected}")


def _check_shards(index: int, leaf: dict, itemsize: int) -> int:
    """Checks a sharded leaf's shard records; returns their total byte count."""
    shards, shape = leaf["shards"], leaf["shape"]
    _expect(isinstance(shards, list) and shards, f"leaf {index} shards")
    end = leaf["offset"]
    for shard in shards:
        _expect(
            isinstance(shard, dict) and set(shard) == {"index", "offset", "nbytes"},
            f"leaf {index} shard fields",
        )
        bounds = shard["index"]
        _expect(
            isinstance(bounds, list)
            and len(bounds) <= len(shape)
            and all(
                isinstance(b, list)
                and len(b) == 2
                and all(_is_int(x) for x in b)
                and b[0] <= b[1] <= size
                for b, size in zip(bounds, shape, strict=False)
            ),
            f"leaf {index} shard index {bounds!r}",
        )
        rows = math.prod(stop - start for start, stop in bounds)
        expected = rows * math.prod(shape[len(bounds) :]) * itemsize
        _expect(
            shard["offset"] == end and shard["nbytes"] == expected,
            f"leaf {index} shard at {shard['offset']!r} of {shard['nbytes']!r} bytes",
        )
        end += expected
    return end - leaf["offset"]


# -- decoding -------------------------------------------------------------------------
def _unflatten_into(
    path: Path, header: dict, data: memoryview, target: PyTree, parts: list | None = None
) -> PyTree:
    """The checkpoint's values in the structure of ``target``.

    ``parts`` holds every process's ``(path, header, data)`` when ``header`` and
    ``data`` are this process's part of a multi-process checkpoint: a leaf split
    over processes is put together from the shards of every part.
    """
    template_leaves, treedef = _flatten(target)
    stored = header["leaves"]
    if len(stored) != len(template_leaves):
        raise ValueError(
            f"checkpoint {path.name}: target has {len(template_leaves)} leaves "
            f"({[name for name, _ in template_leaves]}), the checkpoint has {len(stored)} "
            f"({[leaf['path'] for leaf in stored]})"
        )
    restored = []
    for index, ((name, template), leaf) in enumerate(zip(template_leaves, stored, strict=True)):
        if leaf["path"] != name:
            raise ValueError(
                f"checkpoint {path.name}: expected leaf {name!r}, found {leaf['path']!r} "
                "(the target's pytree structure differs from the saved one)"
            )
        if "shards" in leaf:
            whole = _gather_shards(index, leaf, parts or [(path, header, data)])
            leaf = {**leaf, "shape": list(whole.shape)}
            restored.append(_decode_leaf(path, name, template, leaf, whole))
            continue
        array = np.frombuffer(
            data,
            dtype=jnp.dtype(leaf["data_dtype"]),
            count=math.prod(leaf["shape"]),
            offset=leaf["offset"],
        ).reshape(leaf["shape"])
        restored.append(_decode_leaf(path, name, template, leaf, array))
    return jax.tree_util.tree_unflatten(treedef, restored)


def _read_parts(manifest: Path, header: dict) -> tuple[int, list]:
    """(this process's index, every part's ``(path, header, data)``) of a manifest.

    Every process checks every part, so all of them agree on whether the
    checkpoint is intact (and a resuming run falls back in step) without talking.
    A part that is missing, damaged, or not the one the manifest committed (its
    CRC-32, run, step or write sequence differ) raises
    :class:`DamagedCheckpointError` naming the manifest and the part.
    """
    count = header["process_count"]
    this_process, process_count = _process_grid()
    if count != process_count:
        raise ValueError(
            f"checkpoint {manifest.name}: written by {count} processes, restored by "
            f"{process_count}; restore it with as many processes (jax.distributed)"
        )
    parts = []
    for process_index, part in enumerate(_parts_of(manifest, header)):
        if not part.is_file():
            raise DamagedCheckpointError(manifest, f"part {part.name} is missing")
        try:
            part_header, part_data = _read(part)
        except ValueError as error:
            reason = getattr(error, "reason", str(error))
            raise DamagedCheckpointError(manifest, f"part {part.name}: {reason}") from None
        expected = {
            "kind": "part", "run_id": header["run_id"], "step": header["step"],
            "sequence": header["sequence"], "process_index": process_index,
            "process_count": count,
        }  # fmt: skip
        found = {name: part_header.get(name) for name in expected}
        if found != expected or _trailer(part) != header["parts"][process_index]:
            raise DamagedCheckpointError(
                manifest, f"part {part.name} is not the one committed ({found})"
            )
        parts.append((part, part_header, part_data))
    return this_process, parts


def _gather_shards(index: int, leaf: dict, parts: list) -> np.ndarray:
    """The whole array of a leaf split over processes, from the shards of every part."""
    shape, data_dtype = leaf["shape"], np.dtype(jnp.dtype(leaf["data_dtype"]))
    whole = np.zeros(shape, data_dtype)
    covered = np.zeros(shape[: len(leaf["shards"][0]["index"])], bool)
    for part, part_header, part_data in parts:
        found = part_header["leaves"][index] if index < len(part_header["leaves"]) else {}
        same = ("path", "dtype", "data_dtype", "shape", "key_impl")
        if any(found.get(name) != leaf[name] for name in same) or "shards" not in found:
            raise DamagedCheckpointError(
                part, f"leaf {index} differs from the other parts' ({found.get('path')!r})"
            )
        for shard in found["shards"]:
            if len(shard["index"]) != covered.ndim:
                raise DamagedCheckpointError(part, f"leaf {leaf['path']!r}: shard ranks differ")
            window = tuple(slice(start, stop) for start, stop in shard["index"])
            piece_shape = [stop - start for start, stop in shard["index"]] + shape[covered.ndim :]
            whole[window] = np.frombuffer(
                part_data, data_dtype, count=math.prod(piece_shape), offset=shard["offset"]
            ).reshape(piece_shape)
            covered[window] = True
    if not covered.all():
        raise DamagedCheckpointError(
            parts[0][0], f"leaf {leaf['path']!r}: the parts' shards do not cover the array"
        )
    return whole


def _template_sharding(template: Any):
    if isinstance(template, jax.core.Tracer):
        return None
    return getattr(template, "sharding", None)  # a jax.Array, or a ShapeDtypeStruct


def _decode_leaf(path: Path, name: str, template: Any, leaf: dict, array: np.ndarray) -> Any:
    template_dtype = getattr(template, "dtype", None)
    if template_dtype is None:  # a Python scalar
        template_dtype = np.asarray(template).dtype
    template_shape = (
        tuple(np.shape(template)) if not hasattr(template, "shape") else tuple(template.shape)
    )
    is_key = _is_key_dtype(template_dtype)
    if leaf["dtype"] != str(template_dtype) or is_key != (leaf["key_impl"] is not None):
        raise ValueError(
            f"checkpoint {path.name}: leaf {name!r} expected dtype {template_dtype}, "
            f"got {leaf['dtype']}"
        )
    if is_key:
        try:
            value = jax.random.wrap_key_data(jnp.asarray(array), impl=leaf["key_impl"])
        except (TypeError, ValueError) as error:
            raise DamagedCheckpointError(path, f"leaf {name!r}: {error}") from None
    else:
        value = array.copy()  # frombuffer views are read-only
    if tuple(value.shape) != template_shape:
        raise ValueError(
            f"checkpoint {path.name}: leaf {name!r} expected shape {template_shape}, "
            f"got {tuple(value.shape)}"
        )
    if is_key:
        return _place_like(value, template)
    if isinstance(template, bool | int | float | complex):  # Python scalars stay Python scalars
        return type(template)(value.item())
    if isinstance(template, np.generic):
        return value[()]
    if isinstance(template, np.ndarray):
        return value
    return _place_like(jnp.asarray(value), template)


def _place_like(value: jax.Array, template: Any) -> jax.Array:
    """Gives ``value`` the template's weak type and, if it has one, its committed sharding.

    Both matter for exactness and speed: a weakly typed scalar promotes
    differently (``bfloat16 * weak float32 -> bfloat16``), and jit compiles
    separately for committed and uncommitted arguments.
    """
    sharding = _template_sharding(template)
    if sharding is not None and not sharding.is_fully_addressable:
        # A target spanning processes: every process holds the whole value and
        # places the pieces its devices hold (then weak-types the global array).
        if _is_key_dtype(value.dtype):
            impl, data = jax.random.key_impl(value), np.asarray(jax.random.key_data(value))
            placed = jax.make_array_from_callback(data.shape, sharding, lambda i: data[i])
            return jax.random.wrap_key_data(placed, impl=impl)
        host = np.asarray(value)
        placed = jax.make_array_from_callback(value.shape, sharding, lambda i: host[i])
        return _as_weak_type(placed) if getattr(template, "weak_type", False) else placed
    if getattr(template, "weak_type", False):
        value = _as_weak_type(value)
    if isinstance(template, jax.Array) and not isinstance(template, jax.core.Tracer):
        return jax.device_put(value, template.sharding) if template.committed else value
    return value if sharding is None else jax.device_put(value, sharding)


def _as_weak_type(value: jax.Array) -> jax.Array:
    try:  # no public API creates a weakly typed array from data
        from jax._src.lax.lax import _convert_element_type
    except ImportError:  # pragma: no cover - depends on the jax release
        return value
    return _convert_element_type(value, weak_type=True)
