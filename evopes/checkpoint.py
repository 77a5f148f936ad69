"""Atomic, versioned checkpoints of any pytree: strategy states, PRNG keys, loop state.

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
* **Checked.** The file starts with a magic tag and a CRC-32 of everything
  after it (header, metadata and leaf data), then a format version, so any
  damaged byte gives a ``ValueError`` naming the file (CRC-32 detects every
  single-bit error and every burst of up to 32 bits).
* **Never loses a run.** Each checkpoint records a ``run_id`` (or None) and a
  write sequence number. Retention keeps the newest ``keep`` checkpoints *of
  the same run* by write order: checkpoints of another run in the folder are
  never deleted, and neither is the one just written (whatever its step).

Scope: one process writing to a folder. Arrays sharded over the devices of this process are
gathered to the host on save and put back on the target's sharding on restore;
in a multi-process (multi-host) run, save from every process its own
addressable data, or use orbax-checkpoint.

Why not orbax or a bare ``flax.serialization``
-----------------------------------------------
``flax.serialization.to_bytes`` restores into a target but does not check leaf
shapes or dtypes, handles only the containers flax knows, and cannot store typed
PRNG keys. orbax-checkpoint is built for multi-host, asynchronous checkpoints of
large sharded models: a checkpoint is a directory of many files written by
background threads, importing it costs seconds, and its API changes between
releases. A strategy state is small and lives on one host, so one self-describing
file encoded with msgpack (a declared dependency), flattened with
``jax.tree_util`` (any registered pytree works) is both the simplest and the
easiest to reason about when a process is killed mid-write.
"""

from __future__ import annotations

import os
import re
import struct
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import msgpack
import numpy as np

PyTree = Any

#: Version of the on-disk layout; bumped whenever it changes incompatibly.
FORMAT_VERSION = 2
_MAGIC = "evopes-checkpoint"
#: First bytes of every file; a CRC-32 of the rest of the file follows them.
_FILE_TAG = b"EVOPESCK"
_PATTERN = re.compile(r"^checkpoint_(\d+)\.evopes$")
_TEMP_PREFIX = ".tmp-checkpoint_"

#: Test hook, called with the temporary path after the data is written and
#: fsync-ed but before it is renamed into place (fault tests use it to kill a
#: process at the worst moment). None in normal use.
_before_commit: Callable[[Path], None] | None = None


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
      step: a non-negative integer that orders checkpoints (e.g. the generation).
      target: any pytree of arrays, Python scalars and PRNG keys.
      keep: how many of the newest checkpoints to keep; ``None`` keeps all.
      metadata: small JSON-like dict (str, int, float, bool, lists, dicts)
        stored alongside, read back with :func:`checkpoint_metadata`.
      run_id: the run this checkpoint belongs to. Retention only ever deletes
        older checkpoints (by write order) of the same ``run_id``.

    Returns:
      The path of the new checkpoint.
    """
    if int(step) != step or step < 0:
        raise ValueError(f"step: expected an integer >= 0, got {step!r}")
    if keep is not None and (int(keep) != keep or keep < 1):
        raise ValueError(f"keep: expected an integer >= 1 or None, got {keep!r}")
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    _remove_temporary_files(directory)

    sequence = 1 + max((_sequence(p) for p in all_checkpoints(directory)), default=0)
    payload = _encode(target, int(step), metadata or {}, run_id, sequence)
    final_path = directory / f"checkpoint_{int(step):012d}.evopes"
    temp_path = directory / f"{_TEMP_PREFIX}{int(step):012d}.{os.getpid()}"
    with open(temp_path, "wb") as file:
        file.write(payload)
        file.flush()
        os.fsync(file.fileno())
    if _before_commit is not None:
        _before_commit(temp_path)
    os.replace(temp_path, final_path)
    _fsync_directory(directory)

    if keep is not None:
        same_run = []
        for path in all_checkpoints(directory):
            info = _peek(path)
            if info is not None and info["run_id"] == run_id and path != final_path:
                same_run.append((info["sequence"], path))
        for _, old in sorted(same_run)[: max(0, len(same_run) - (keep - 1))]:
            old.unlink(missing_ok=True)
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
      ValueError: the file is missing, damaged, of another format version, or
        does not match ``target``.
    """
    path = _resolve(path)
    record = _read(path)
    template_leaves, treedef = _flatten(target)
    stored = record["leaves"]
    if len(stored) != len(template_leaves):
        raise ValueError(
            f"checkpoint {path.name}: target has {len(template_leaves)} leaves "
            f"({[name for name, _ in template_leaves]}), the checkpoint has {len(stored)} "
            f"({[leaf['path'] for leaf in stored]})"
        )
    restored = []
    for (name, template), leaf in zip(template_leaves, stored, strict=True):
        if leaf["path"] != name:
            raise ValueError(
                f"checkpoint {path.name}: expected leaf {name!r}, found {leaf['path']!r} "
                "(the target's pytree structure differs from the saved one)"
            )
        restored.append(_decode_leaf(path.name, name, template, leaf))
    return jax.tree_util.tree_unflatten(treedef, restored)


def checkpoint_metadata(path: str | os.PathLike) -> dict:
    """``{"step": ..., "format_version": ..., **metadata}`` of a checkpoint."""
    path = _resolve(path)
    record = _read(path)
    return {
        "step": record["step"],
        "format_version": record["version"],
        "run_id": record["run_id"],
        **record["metadata"],
    }


def all_checkpoints(directory: str | os.PathLike) -> list[Path]:
    """Complete checkpoints in ``directory``, oldest first (temporary files excluded)."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in directory.iterdir() if (m := _PATTERN.match(p.name))]
    return [p for _, p in sorted(found)]


def latest_checkpoint(directory: str | os.PathLike) -> Path | None:
    """The newest complete checkpoint in ``directory``, or None."""
    checkpoints = all_checkpoints(directory)
    return checkpoints[-1] if checkpoints else None


def checkpoint_step(path: str | os.PathLike) -> int:
    """The step a checkpoint was saved at, read from its file name."""
    match = _PATTERN.match(Path(path).name)
    if match is None:
        raise ValueError(
            f"path: expected a file named checkpoint_<step>.evopes, got {Path(path).name!r}"
        )
    return int(match.group(1))


# -- encoding --------------------------------------------------------------------
def _flatten(tree: PyTree) -> tuple[list[tuple[str, Any]], Any]:
    with_path, treedef = jax.tree_util.tree_flatten_with_path(tree)
    return [(jax.tree_util.keystr(key_path), leaf) for key_path, leaf in with_path], treedef


def _is_key_dtype(dtype) -> bool:
    return jax.dtypes.issubdtype(dtype, jax.dtypes.prng_key)


def _encode(tree: PyTree, step: int, metadata: dict, run_id, sequence: int) -> bytes:
    leaves, _ = _flatten(tree)
    encoded = []
    for name, leaf in leaves:
        if isinstance(leaf, jax.ShapeDtypeStruct):
            raise ValueError(
                f"target: leaf {name!r} is a ShapeDtypeStruct; expected a value to save"
            )
        key_impl = None
        dtype_name = str(leaf.dtype if hasattr(leaf, "dtype") else np.asarray(leaf).dtype)
        if hasattr(leaf, "dtype") and _is_key_dtype(leaf.dtype):
            key_impl = str(jax.random.key_impl(leaf))
            leaf = jax.random.key_data(leaf)
        array = np.asarray(jax.device_get(leaf))
        encoded.append(
            {
                "path": name,
                "dtype": dtype_name,
                "data_dtype": array.dtype.name,
                "shape": list(array.shape),
                "key_impl": key_impl,
                "data": np.ascontiguousarray(array).tobytes(),
            }
        )
    if run_id is not None and not isinstance(run_id, str):
        raise ValueError(f"run_id: expected a string or None, got {run_id!r}")
    record = {
        "magic": _MAGIC,
        "version": FORMAT_VERSION,
        "step": step,
        "run_id": run_id,
        "sequence": sequence,
        "metadata": metadata,
        "leaves": encoded,
    }
    try:
        body = msgpack.packb(record, use_bin_type=True)
    except TypeError as error:
        raise ValueError(
            f"metadata: expected JSON-like values only, got {metadata!r} ({error})"
        ) from None
    return _FILE_TAG + struct.pack("<I", zlib.crc32(body)) + body


def _read(path: Path) -> dict:
    """The checked record of a checkpoint file; ValueError naming the file for any damage."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise ValueError(f"path: no checkpoint file at {path}") from None
    header = len(_FILE_TAG) + 4
    if len(raw) < header or raw[: len(_FILE_TAG)] != _FILE_TAG:
        raise ValueError(
            f"checkpoint {path.name}: not an evopes checkpoint file of format version "
            f"{FORMAT_VERSION} (no {_FILE_TAG!r} tag), or its first bytes are damaged"
        )
    (checksum,) = struct.unpack("<I", raw[len(_FILE_TAG) : header])
    body = raw[header:]
    if zlib.crc32(body) != checksum:
        raise ValueError(f"checkpoint {path.name}: checksum mismatch, the file is damaged")
    try:
        record = msgpack.unpackb(body, raw=False, strict_map_key=False)
    except Exception as error:  # only reachable if the checksum itself was forged
        raise ValueError(
            f"checkpoint {path.name}: not a readable checkpoint file ({error})"
        ) from None
    if not isinstance(record, dict) or record.get("magic") != _MAGIC:
        raise ValueError(f"checkpoint {path.name}: not an evopes checkpoint (no {_MAGIC!r} tag)")
    if record.get("version") != FORMAT_VERSION:
        raise ValueError(
            f"checkpoint {path.name}: expected format version {FORMAT_VERSION}, "
            f"got {record.get('version')!r}; it was written by another evopes release"
        )
    return record


def _peek(path: Path) -> dict | None:
    """``{"run_id", "sequence"}`` of a checkpoint, or None if it is unreadable."""
    try:
        record = _read(path)
    except ValueError:
        return None
    return {"run_id": record.get("run_id"), "sequence": record.get("sequence", 0)}


def _sequence(path: Path) -> int:
    info = _peek(path)
    return 0 if info is None else int(info["sequence"])


def _decode_leaf(file_name: str, name: str, template: Any, leaf: dict) -> Any:
    template_dtype = getattr(template, "dtype", None)
    if template_dtype is None:  # a Python scalar
        template_dtype = np.asarray(template).dtype
    template_shape = (
        tuple(np.shape(template)) if not hasattr(template, "shape") else tuple(template.shape)
    )
    is_key = _is_key_dtype(template_dtype)
    if leaf["dtype"] != str(template_dtype) or is_key != (leaf["key_impl"] is not None):
        raise ValueError(
            f"checkpoint {file_name}: leaf {name!r} expected dtype {template_dtype}, "
            f"got {leaf['dtype']}"
        )
    array = np.frombuffer(leaf["data"], dtype=jnp.dtype(leaf["data_dtype"])).reshape(leaf["shape"])
    if is_key:
        value = jax.random.wrap_key_data(jnp.asarray(array), impl=leaf["key_impl"])
    else:
        value = array.copy()  # frombuffer views are read-only
    if tuple(value.shape) != template_shape:
        raise ValueError(
            f"checkpoint {file_name}: leaf {name!r} expected shape {template_shape}, "
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
    if getattr(template, "weak_type", False):
        value = _as_weak_type(value)
    if isinstance(template, jax.Array) and not isinstance(template, jax.core.Tracer):
        return jax.device_put(value, template.sharding) if template.committed else value
    sharding = getattr(template, "sharding", None)  # a ShapeDtypeStruct with a sharding
    return value if sharding is None else jax.device_put(value, sharding)


def _as_weak_type(value: jax.Array) -> jax.Array:
    try:  # no public API creates a weakly typed array from data
        from jax._src.lax.lax import _convert_element_type
    except ImportError:  # pragma: no cover - depends on the jax release
        return value
    return _convert_element_type(value, weak_type=True)


# -- files -------------------------------------------------------------------------
def _resolve(path: str | os.PathLike) -> Path:
    path = Path(path)
    if path.is_dir():
        latest = latest_checkpoint(path)
        if latest is None:
            raise ValueError(f"path: no checkpoint in directory {path}")
        return latest
    return path


def _remove_temporary_files(directory: Path) -> None:
    """Deletes temporary files left by a writer that died before renaming them."""
    for stale in directory.glob(f"{_TEMP_PREFIX}*"):
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
