"""The long-run driver, ``evopes.run`` and ``evopes.run_online``: for users who do
not want to write the loop.

It runs generations (or, for online strategies, truncation windows) in jitted
chunks of ``chunk_size`` steps with ``lax.scan``, and between chunks, on the
host, it

* advances a tqdm progress bar,
* appends the chunk's scalar metrics to the history and to a CSV or JSONL log
  (and to TensorBoard when ``tensorboardX`` is installed and asked for),
* writes an atomic checkpoint (:mod:`evopes.checkpoint`) every
  ``checkpoint_every`` steps, and
* stops when the run is finished or a stopping criterion fired.

Exactness. A step is a pure function of ``(state, key, params)``, the key is
split once per step, and checkpoints are taken only at chunk boundaries, so a
run resumed from its latest checkpoint (``resume=True``, the default) performs
exactly the computations the uninterrupted run would have performed: on CPU its
final state and history are bit-identical. Resume with the same arguments
(chunk size included).

Early stopping is evaluated *inside* the scan, after every step, on that step's
metrics: ``stop_when(metrics) -> bool`` is traced, so write it with ``jnp``
(e.g. ``lambda m: m["best_fitness"] < 1e-8``). Once it fires, the remaining
steps of the chunk leave the state untouched, so the final state is the state
at the stopping step whatever the chunk size. Metrics whose name is in
:data:`TERMINATION_METRICS` (the termination indicators of CMA-ES) stop the run
too when ``stop_on_termination=True``.
"""

from __future__ import annotations

import csv
import functools
import hashlib
import json
import os
import uuid
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from evopes import checkpoint, threefry
from evopes.field_flags import FieldFlags

PyTree = Any
Metrics = dict[str, Any]

#: Boolean metrics that end a run when any of them is true (CMA-ES termination
#: indicators; Hansen's tutorial, appendix B.3).
TERMINATION_METRICS = ("terminate",)


class RunResult(NamedTuple):
    """What :func:`run` returns.

    Attributes:
      state: the final strategy state (or the user's state for :func:`run_loop`).
      history: scalar metrics of every step run, name -> array of shape
        (num_steps_run,); ``history["step"]`` counts steps from 1.
    """

    state: PyTree
    history: dict[str, np.ndarray]


# -- the three entry points --------------------------------------------------------
def run(
    es,
    fitness_fn: Callable[[PyTree, jax.Array], jax.Array],
    mean: PyTree,
    key: jax.Array,
    num_generations: int,
    *,
    params=None,
    **options,
) -> RunResult:
    """Runs a classic strategy (CMA-ES, OpenAI-ES, FullES, ...) for ``num_generations``.

    Each generation is ``ask`` -> ``fitness_fn(population, key)`` -> ``tell``;
    ``fitness_fn`` must be a jittable function returning one fitness per member
    (minimised). ``key`` seeds both ``init`` and the generations.

    Args:
      es: a strategy.
      fitness_fn: ``(population pytree, key) -> (population_size,)`` fitness.
      mean: the initial mean, a pytree shaped like the strategy's solution.
      key: a PRNG key.
      num_generations: total number of generations (a resumed run continues
        up to this number).
      params: strategy hyperparameters (default ``es.default_params``).
      **options: see :func:`run_loop` (chunk_size, checkpoint_dir, log_path, ...).
    """
    params = es.default_params if params is None else params
    fingerprint = strategy_fingerprint(es, params, key)
    _check_folder_early(options, fingerprint)  # before any work
    init_key, loop_key = jax.random.split(key)
    state = _init(es, init_key, mean, params)
    step = _ClassicGeneration(es, fitness_fn)
    return run_loop(
        step, state, loop_key, num_generations, params=params, fingerprint=fingerprint, **options
    )


def run_online(
    es,
    theta: PyTree,
    key: jax.Array,
    num_windows: int,
    *,
    step_fn: Callable | None = None,
    unroll_fn: Callable | None = None,
    params=None,
    **options,
) -> RunResult:
    """Runs an online strategy (TES, PES, GPES, NRES) for ``num_windows`` truncation windows.

    Each window is ``ask`` -> unroll ``truncation_length`` steps -> ``tell``.
    Give exactly one of

    * ``step_fn(inner_one, theta_one, key_one) -> (inner_one, loss, done)``, the
      system's step for one particle, unrolled with :func:`evopes.unroll`
      (keys shared within antithetic pairs), or
    * ``unroll_fn(population, inner_state, key) -> (inner_state, losses, dones)``
      for the whole population, with ``losses`` and ``dones`` of shape
      ``(truncation_length, population_size)`` (``dones`` may be None).

    Args:
      es: an online strategy.
      theta: the initial outer parameters.
      key: a PRNG key.
      num_windows: total number of windows.
      params: strategy hyperparameters (default ``es.default_params``).
      **options: see :func:`run_loop`.
    """
    if (step_fn is None) == (unroll_fn is None):
        raise ValueError("run_online: expected exactly one of step_fn or unroll_fn")
    params = es.default_params if params is None else params
    fingerprint = strategy_fingerprint(es, params, key)
    _check_folder_early(options, fingerprint)  # before any work
    init_key, loop_key = jax.random.split(key)
    state = _init(es, init_key, theta, params)
    step = _OnlineWindow(es, step_fn, unroll_fn)
    return run_loop(
        step, state, loop_key, num_windows, params=params, fingerprint=fingerprint, **options
    )


def run_loop(
    step_fn: Callable[[PyTree, jax.Array, Any], tuple[PyTree, Metrics]],
    state: PyTree,
    key: jax.Array,
    num_steps: int,
    *,
    params: Any = None,
    chunk_size: int = 100,
    checkpoint_dir: str | os.PathLike | None = None,
    checkpoint_every: int | None = None,
    keep_checkpoints: int = 3,
    resume: bool = True,
    log_path: str | os.PathLike | None = None,
    log_every: int = 1,
    tensorboard_dir: str | os.PathLike | None = None,
    progress: bool = True,
    stop_when: Callable[[Metrics], jax.Array] | None = None,
    stop_on_termination: bool = True,
    fingerprint: dict | None = None,
) -> RunResult:
    """Runs ``state, metrics = step_fn(state, key, params)`` ``num_steps`` times.

    The general driver behind :func:`run` and :func:`run_online`; use it for a
    loop of your own (any jittable step on any state pytree). ``step_fn`` should
    be the same object (or an equal one) across calls to reuse compiled code.

    Args:
      step_fn: ``(state, key, params) -> (state, metrics dict)``, jittable.
      state: the initial state (any pytree of arrays and PRNG keys).
      key: PRNG key, split once per step.
      num_steps: total number of steps.
      params: passed to every step (traced, so new values do not recompile).
      chunk_size: steps per jitted ``lax.scan``; the host does I/O between chunks.
      checkpoint_dir: folder for checkpoints; None disables checkpointing.
      checkpoint_every: checkpoint at the first chunk end after every multiple
        of this many steps (default: every chunk). The final state is always saved.
      keep_checkpoints: how many checkpoints of this run to keep (the newest
        by write order); checkpoints of another run are never deleted.
      resume: continue the run whose checkpoints are in ``checkpoint_dir``, if
        any, from its newest intact checkpoint (a checkpoint at or past
        ``num_steps`` is returned as it is); its configuration must match this
        call's (see ``fingerprint``). With ``resume=False`` the run is new, and
        ``checkpoint_dir`` must not hold any checkpoint: a folder holding
        another run's checkpoints is refused with a ``ValueError`` naming it,
        before any work (so runs never mix and nothing is deleted).
      log_path: ``.csv`` file, or any other suffix for JSON lines; rows of
        scalar metrics every ``log_every`` steps (and the last step).
      log_every: logging period in steps.
      tensorboard_dir: write scalar metrics there with ``tensorboardX``.
      progress: show a tqdm progress bar.
      stop_when: traced predicate on one step's metrics; True stops the run.
      stop_on_termination: also stop when a boolean metric named in
        :data:`TERMINATION_METRICS` is true.
      fingerprint: JSON-like description of the run's configuration, stored
        in every checkpoint and compared on resume; a mismatch raises a
        ``ValueError`` naming each entry that differs. Default:
        :func:`loop_fingerprint` (the state's leaf paths, shapes and dtypes,
        the ``params`` values and the key); :func:`run` and :func:`run_online`
        pass :func:`strategy_fingerprint`.

    Returns:
      ``RunResult(state, history)``.

    Raises:
      ValueError: a bad argument; ``resume=False`` and ``checkpoint_dir``
        holds checkpoints; the checkpoints in ``checkpoint_dir`` belong to a
        run of another configuration, to several runs, or were not written by
        this driver; or no checkpoint of the run is intact.

    Warns:
      RuntimeWarning: naming a damaged checkpoint skipped on resume (it is
        renamed to ``<name>.damaged`` and the run resumes from the newest intact
        checkpoint of the run).
    """
    _check_int("num_steps", num_steps, minimum=0)
    _check_int("chunk_size", chunk_size, minimum=1)
    _check_int("log_every", log_every, minimum=1)
    _check_int("keep_checkpoints", keep_checkpoints, minimum=1)
    if checkpoint_every is not None:
        _check_int("checkpoint_every", checkpoint_every, minimum=1)
    if fingerprint is None:
        fingerprint = loop_fingerprint(state, params, key)
    folder = None
    if checkpoint_dir is not None:  # before any work: refuses a folder of another run
        folder = _RunFolder.open(checkpoint_dir, resume, fingerprint)
    stop = _StopCriterion(stop_when, stop_on_termination)

    scalar_metrics = lambda *args: _scalar_metrics(step_fn(*args)[1])  # noqa: E731
    metric_names = jax.eval_shape(scalar_metrics, state, key, params)
    # Strong types throughout: the scan returns strongly typed leaves, so a weakly
    # typed initial state would compile the chunk twice (and restore differently).
    carry = _strong_types(_Carry(state, key, jnp.array(0, jnp.int32), jnp.array(False)))
    history = {name: np.zeros((0,), shape.dtype) for name, shape in metric_names.items()}
    history["step"] = np.zeros((0,), np.int64)

    if folder is not None and folder.candidates:
        carry, history = folder.restore(carry, history)
    start = int(carry.step)

    log = _MetricsLog(log_path, tensorboard_dir, resume_step=start)
    bar = _progress_bar(progress, num_steps, start)
    try:
        last_saved = start
        while int(carry.step) < num_steps and not bool(carry.stopped):
            begin = int(carry.step)
            carry, (metrics, active) = _run_chunk(
                step_fn, stop, chunk_size, carry, params, jnp.array(num_steps, jnp.int32)
            )
            steps, values = _append(history, metrics, np.asarray(active), begin)
            finished = int(carry.step) >= num_steps or bool(carry.stopped)
            # Every log_every-th step, and the run's last step whatever its number.
            logged = (steps % log_every == 0) | (finished & (steps == int(carry.step)))
            log.write(_rows(steps, values, logged))
            bar.update(int(carry.step) - begin)
            bar.set_postfix(_postfix(_rows(steps, values, steps == int(carry.step))), refresh=False)
            due = (
                checkpoint_every is None
                or int(carry.step) // checkpoint_every > last_saved // checkpoint_every
            )
            if folder is not None and (due or finished):
                folder.save(carry, history, keep_checkpoints)
                last_saved = int(carry.step)
    finally:
        bar.close()
        log.close()
    return RunResult(carry.state, history)


def _init(es, key, mean, params):
    """``es.init`` compiled (eager dispatch of a large init costs seconds); params checked first."""
    es.validate_params(params)
    return _jitted_init(es, key, mean, params)


@functools.partial(jax.jit, static_argnums=0)
def _jitted_init(es, key, mean, params):
    return es.init(key, mean, params)


# -- one generation / one window ------------------------------------------------------
@dataclass(frozen=True)
class _ClassicGeneration:
    """ask -> fitness -> tell. Hashes by (strategy config, fitness function)."""

    es: Any
    fitness_fn: Callable

    def __call__(self, state, key, params):
        ask_key, eval_key, tell_key = threefry.split(key, 3)
        population, state = self.es.ask(ask_key, state, params)
        fitness = self.fitness_fn(population, eval_key)
        return self.es.tell(tell_key, population, fitness, state, params)


@dataclass(frozen=True)
class _OnlineWindow:
    """ask -> unroll one truncation window -> tell."""

    es: Any
    step_fn: Callable | None
    unroll_fn: Callable | None

    def __call__(self, state, key, params):
        ask_key, unroll_key, tell_key = threefry.split(key, 3)
        population, state = self.es.ask(ask_key, state, params)
        inner = self.es.get_inner_state(state)
        if self.unroll_fn is not None:
            inner, losses, dones = self.unroll_fn(population, inner, unroll_key)
        else:
            from evopes.online.unroll import unroll  # the online engine is optional here

            inner, losses, dones = unroll(
                self.step_fn, population, inner, unroll_key, self.es.truncation_length
            )
        return self.es.tell(
            tell_key, population, losses, state, params, inner_state=inner, dones=dones
        )


# -- the jitted chunk -------------------------------------------------------------------
@jax.tree_util.register_dataclass
@dataclass
class _Carry:
    state: PyTree
    key: jax.Array
    step: jax.Array  # steps done so far
    stopped: jax.Array  # a stopping criterion fired


@dataclass(frozen=True)
class _StopCriterion:
    predicate: Callable | None
    use_termination_metrics: bool

    def __call__(self, metrics: Metrics) -> jax.Array:
        stop = jnp.array(False)
        if self.predicate is not None:
            stop = stop | jnp.asarray(self.predicate(metrics), bool)
        if self.use_termination_metrics:
            for name in TERMINATION_METRICS:
                if name in metrics:
                    stop = stop | jnp.any(jnp.asarray(metrics[name], bool))
        return stop


@functools.partial(jax.jit, static_argnames=("step_fn", "stop", "chunk_size"))
def _run_chunk(step_fn, stop, chunk_size, carry: _Carry, params, num_steps):
    """``chunk_size`` steps; steps past ``num_steps`` or after a stop leave the carry as is."""

    def advance(state, key):
        key, step_key = threefry.split(key)
        state, metrics = step_fn(state, step_key, params)
        return state, key, metrics

    def body(carry: _Carry, _):
        active = (~carry.stopped) & (carry.step < num_steps)
        _, _, metric_shapes = jax.eval_shape(advance, carry.state, carry.key)

        def hold(state, key):
            return state, key, jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), metric_shapes)

        state, key, metrics = jax.lax.cond(active, advance, hold, carry.state, carry.key)
        stopped = carry.stopped | (active & stop(metrics))
        new_carry = _Carry(state, key, carry.step + active.astype(jnp.int32), stopped)
        return new_carry, (_scalar_metrics(metrics), active)

    return jax.lax.scan(body, carry, None, length=chunk_size)


# -- history, checkpoints, logs ------------------------------------------------------------
def _scalar_metrics(metrics: Metrics) -> dict[str, Any]:
    """Scalar numeric leaves of a metrics pytree, named ``a/b`` for nested dicts.

    Named flags held as one array (``metrics["invalid_params"]``) count as the
    dict they read as: one scalar per field.
    """
    metrics = jax.tree_util.tree_map(
        lambda x: dict(x) if isinstance(x, FieldFlags) else x,
        metrics,
        is_leaf=lambda x: isinstance(x, FieldFlags),
    )
    scalars = {}
    for path, leaf in jax.tree_util.tree_flatten_with_path(metrics)[0]:
        dtype = leaf.dtype
        if len(leaf.shape) != 0 or jax.dtypes.issubdtype(dtype, jax.dtypes.prng_key):
            continue
        name = "/".join(
            str(getattr(k, "key", getattr(k, "name", getattr(k, "idx", k)))) for k in path
        )
        scalars[name] = leaf
    return scalars


def _append(
    history: dict, metrics: dict, active: np.ndarray, begin: int
) -> tuple[np.ndarray, dict]:
    """Adds the chunk's active steps to ``history``; returns their step numbers and values."""
    count = int(active.sum())  # active steps are a prefix of the chunk
    values = {name: np.asarray(chunk_values)[:count] for name, chunk_values in metrics.items()}
    steps = np.arange(begin + 1, begin + count + 1)
    for name, chunk_values in values.items():
        history[name] = np.concatenate([history[name], chunk_values])
    history["step"] = np.concatenate([history["step"], steps])
    return steps, values


def _rows(steps: np.ndarray, values: dict, selected: np.ndarray) -> list[dict]:
    """The selected steps as dicts of Python numbers, for logs and the progress bar."""
    return [
        {"step": int(steps[i]), **{name: column[i].item() for name, column in values.items()}}
        for i in np.flatnonzero(selected)
    ]


# -- run folders: one run per folder, fingerprints, resume with fallback ----------------
#: ``metadata["kind"]`` of the driver's checkpoints.
_KIND = "evopes.run"


def strategy_fingerprint(es, params, key=None) -> dict:
    """The configuration :func:`run` and :func:`run_online` record in every checkpoint.

    The strategy's type name, population size, solution structure (leaf paths,
    shapes, dtypes), every ``params`` value and the key. Resuming compares it
    with the checkpoint's and names each entry that differs.
    """
    solution = jax.tree_util.tree_unflatten(es.spec.treedef, list(es.spec.shapes))
    paths = [
        jax.tree_util.keystr(path)
        for path, _ in jax.tree_util.tree_flatten_with_path(
            solution, is_leaf=lambda x: isinstance(x, tuple)
        )[0]
    ]
    fingerprint = {
        "strategy": type(es).__name__,
        "population_size": int(es.population_size),
        "solution": [
            [path, list(shape), jnp.dtype(dtype).name]
            for path, shape, dtype in zip(paths, es.spec.shapes, es.spec.dtypes, strict=True)
        ],
        "params": _describe_values(params),
    }
    if key is not None:
        fingerprint["key"] = _describe_key(key)
    return fingerprint


def loop_fingerprint(state, params, key=None) -> dict:
    """:func:`run_loop`'s default fingerprint: the state's structure, the params values, the key."""
    fingerprint = {"state": _describe_structure(state), "params": _describe_values(params)}
    if key is not None:
        fingerprint["key"] = _describe_key(key)
    return fingerprint


def _describe_structure(tree) -> list:
    """[leaf path, shape, dtype] of every leaf (no data is read)."""
    return [
        [jax.tree_util.keystr(path), list(np.shape(leaf)), str(_dtype_of(leaf))]
        for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]
    ]


def _dtype_of(leaf):
    return leaf.dtype if hasattr(leaf, "dtype") else np.asarray(leaf).dtype


def _value_record(value) -> dict:
    """A digest of a value's dtype, shape and bytes, and a short text for messages."""
    if hasattr(value, "dtype") and jax.dtypes.issubdtype(value.dtype, jax.dtypes.prng_key):
        value = jax.random.key_data(value)
    array = np.asarray(jax.device_get(value))
    digest = hashlib.sha256(f"{array.dtype.name}{array.shape}".encode())
    digest.update(np.ascontiguousarray(array).tobytes())
    if array.size <= 8:
        text = repr(array.item()) if array.ndim == 0 else repr(array.tolist())
    else:
        text = f"{array.dtype.name}{list(array.shape)} sha256:{digest.hexdigest()[:12]}"
    return {"value": text, "digest": digest.hexdigest()}


def _describe_values(tree) -> dict:
    """{leaf path: value record} of every leaf (``params`` may be any pytree, or None)."""
    described = {}
    for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
        name = jax.tree_util.keystr(path)
        try:
            described[name] = _value_record(leaf)
        except Exception:  # a value not on this host (multi-process): compare its shape only
            described[name] = {"value": f"shape {list(np.shape(leaf))}", "digest": ""}
    return described


def _describe_key(key) -> dict:
    try:
        return _value_record(key)
    except Exception:  # a key not on this host
        return {"value": "", "digest": ""}


def _fingerprint_differences(saved: dict, now: dict) -> list[str]:
    """Human-readable differences between two fingerprints, one per entry."""
    differences = []
    for name in sorted(set(saved) | set(now), key=lambda n: (n not in _ORDER, _ORDER.get(n, 0), n)):
        if name not in saved or name not in now:
            where = "in the checkpoint only" if name in saved else "only now"
            differences.append(f"{name}: recorded {where}")
        elif name == "key":
            if saved[name]["digest"] != now[name]["digest"]:
                differences.append(
                    f"key: checkpoint {saved[name]['value']}, now {now[name]['value']}"
                )
        elif name == "params":
            differences += _params_differences(saved[name], now[name])
        elif saved[name] != now[name]:
            differences.append(f"{name}: checkpoint {saved[name]}, now {now[name]}")
    return differences


_ORDER = {"strategy": 0, "population_size": 1, "solution": 2, "state": 3, "params": 4, "key": 5}


def _params_differences(saved: dict, now: dict) -> list[str]:
    if sorted(saved) != sorted(now):
        return [f"params: checkpoint has fields {sorted(saved)}, now {sorted(now)}"]
    # Paths of params fields look like ".std_init"; a bare array has the path "".
    return [
        f"params{path}: checkpoint {saved[path]['value']}, now {now[path]['value']}"
        for path in sorted(saved)
        if saved[path]["digest"] != now[path]["digest"]
    ]


def _check_folder_early(options: dict, fingerprint: dict) -> None:
    """run()/run_online(): run_loop's folder checks, before the strategy is initialised."""
    directory = options.get("checkpoint_dir")
    if directory is not None:
        _RunFolder.open(directory, options.get("resume", True), fingerprint)


@dataclass
class _RunFolder:
    """The checkpoints of one run in ``directory``; refuses folders of other runs.

    ``candidates`` are the run's checkpoints, newest first by write order;
    ``unreadable`` are files whose header is damaged.
    """

    directory: Path
    run_id: str
    fingerprint: dict
    candidates: list
    unreadable: list

    @classmethod
    def open(cls, directory, resume: bool, fingerprint: dict) -> _RunFolder:
        directory = Path(directory)
        entries = checkpoint._scan(directory)
        if not entries:
            return cls(directory, _new_run_id(), fingerprint, [], [])
        if not resume:
            names = ", ".join(entry.path.name for entry in entries[-3:])
            raise ValueError(
                f"checkpoint_dir: {directory} already holds checkpoints of another run "
                f"({len(entries)}: ... {names}); resume=False starts a new run, which never "
                "shares a folder with (or deletes) another run's checkpoints. Use a new or "
                "empty folder, or resume=True to continue that run"
            )
        readable = [entry for entry in entries if entry.header is not None]
        unreadable = [entry for entry in entries if entry.header is None]
        for entry in unreadable:
            if not isinstance(entry.error, checkpoint.DamagedCheckpointError):
                raise ValueError(f"checkpoint_dir: cannot resume from {directory}: {entry.error}")
        for entry in readable:
            if entry.header["metadata"].get("kind") != _KIND:
                raise ValueError(
                    f"checkpoint_dir: {entry.path} was not written by evopes.run "
                    "(a checkpoint saved by hand); give the run a folder of its own"
                )
        run_ids = sorted({entry.header["run_id"] for entry in readable}, key=str)
        if len(run_ids) > 1:
            raise ValueError(
                f"checkpoint_dir: {directory} holds checkpoints of several runs "
                f"(run ids {run_ids}); cannot tell which one to resume"
            )
        if not readable:
            raise ValueError(
                f"checkpoint_dir: {directory} holds no intact checkpoint to resume from; "
                f"damaged: {[str(entry.error) for entry in unreadable]}"
            )
        differences = _fingerprint_differences(
            readable[-1].header["metadata"].get("fingerprint") or {}, fingerprint
        )
        if differences:
            raise ValueError(
                f"checkpoint_dir: {directory} holds a run of another configuration "
                f"({'; '.join(differences)}); refusing to resume it. Resume with that "
                "run's arguments, or start the new run in another folder"
            )
        return cls(directory, run_ids[0], fingerprint, readable[::-1], unreadable)

    def restore(self, carry: _Carry, history: dict) -> tuple[_Carry, dict]:
        """The newest intact checkpoint of the run; damaged ones are set aside with a warning."""
        damaged = list(self.unreadable)
        for entry in self.candidates:
            length = entry.header["metadata"].get("history_length")
            if not checkpoint._is_int(length):
                raise ValueError(f"checkpoint_dir: {entry.path} was not written by evopes.run")
            template = {
                "carry": carry,
                "history": {name: np.zeros((length,), v.dtype) for name, v in history.items()},
            }
            try:
                restored = checkpoint.restore_checkpoint(entry.path, template)
            except checkpoint.DamagedCheckpointError as error:
                damaged.append(checkpoint._Entry(entry.path, entry.step, None, error))
                continue
            self._set_aside(damaged, resumed_from=entry.path)
            return restored["carry"], restored["history"]
        raise ValueError(
            f"checkpoint_dir: {self.directory} holds no intact checkpoint to resume from; "
            f"damaged: {[str(entry.error) for entry in damaged]}"
        )

    def _set_aside(self, damaged: list, resumed_from: Path) -> None:
        """Renames damaged files to ``<name>.damaged``: kept for inspection, never read again,
        and out of the way of the checkpoints the resumed run writes.

        In a run of several processes (``jax.distributed``) every process found the
        same damage (each checks every part), and process 0 alone renames.
        """
        # Every process has read its checkpoints before any file is renamed; a
        # process still scanning the folder would otherwise miss the damaged ones
        # (and warn about other files than the rest) or lose a file mid-read.
        checkpoint._sync("evopes-run-damaged-found")
        renames = jax.process_index() == 0
        for entry in damaged:
            aside = entry.path.with_name(entry.path.name + ".damaged")
            counter = 1
            while aside.exists():
                aside = entry.path.with_name(f"{entry.path.name}.damaged{counter}")
                counter += 1
            if renames:
                entry.path.rename(aside)
            warnings.warn(
                f"{entry.error}; resuming from {resumed_from.name}, the newest intact "
                f"checkpoint of the run; the damaged file was renamed to {aside.name}",
                RuntimeWarning,
                stacklevel=4,
            )
        checkpoint._sync("evopes-run-damaged-set-aside")

    def save(self, carry: _Carry, history: dict, keep: int) -> None:
        checkpoint.save_checkpoint(
            self.directory,
            int(carry.step),
            {"carry": carry, "history": history},
            keep=keep,
            run_id=self.run_id,
            metadata={
                "kind": _KIND,
                "history_length": len(history["step"]),
                "fingerprint": self.fingerprint,
            },
        )


def _new_run_id() -> str:
    """A fresh run id; in a run of several processes, process 0's, shared with all."""
    if jax.process_count() == 1:
        return uuid.uuid4().hex
    from jax.experimental import multihost_utils

    mine = np.frombuffer(uuid.uuid4().bytes, np.uint8)
    return bytes(np.asarray(multihost_utils.broadcast_one_to_all(mine))).hex()


class _MetricsLog:
    """CSV / JSON-lines / TensorBoard writer that survives being resumed.

    When resuming at step ``s`` it first drops rows logged after ``s`` (written
    by the interrupted run after its last checkpoint), so the log ends up
    identical to the uninterrupted run's.
    """

    def __init__(self, path, tensorboard_dir, resume_step: int):
        self.path = None if path is None else Path(path)
        self.is_csv = self.path is not None and self.path.suffix.lower() == ".csv"
        self.file = None
        self.csv_writer = None
        self.fieldnames = None
        if self.path is not None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            kept = self._rows_up_to(resume_step) if resume_step > 0 else []
            self.file = open(self.path, "w", newline="")
            if kept:
                self._write_rows(kept)
        self.tensorboard = None
        if tensorboard_dir is not None:
            try:
                from tensorboardX import SummaryWriter
            except ImportError:
                raise ImportError(
                    "tensorboard_dir needs the tensorboardX package: pip install tensorboardX"
                ) from None
            # purge_step drops events the interrupted run wrote after the checkpoint.
            self.tensorboard = SummaryWriter(str(tensorboard_dir), purge_step=resume_step + 1)

    def _rows_up_to(self, step: int) -> list[dict]:
        if not self.path.exists():
            return []
        rows = []
        with open(self.path, newline="") as file:
            if self.is_csv:
                for row in csv.DictReader(file):
                    try:
                        rows.append({k: _parse_number(v) for k, v in row.items()})
                    except (TypeError, ValueError):
                        break  # a half-written last line
            else:
                for line in file:
                    try:
                        rows.append(json.loads(line))
                    except json.JSONDecodeError:
                        break
        return [row for row in rows if isinstance(row.get("step"), int) and row["step"] <= step]

    def _write_rows(self, rows: list[dict]) -> None:
        if self.is_csv:
            if self.csv_writer is None:
                self.fieldnames = list(rows[0])
                self.csv_writer = csv.DictWriter(self.file, fieldnames=self.fieldnames)
                self.csv_writer.writeheader()
            self.csv_writer.writerows(rows)
        else:
            self.file.writelines(json.dumps(row) + "\n" for row in rows)

    def write(self, rows: list[dict]) -> None:
        if not rows:
            return
        if self.file is not None:
            self._write_rows(rows)
            self.file.flush()
        if self.tensorboard is not None:
            for row in rows:
                for name, value in row.items():
                    if name != "step":
                        self.tensorboard.add_scalar(name, value, row["step"])
            self.tensorboard.flush()

    def close(self) -> None:
        if self.file is not None:
            self.file.close()
        if self.tensorboard is not None:
            self.tensorboard.close()


def _parse_number(text: str):
    if text in ("True", "False"):
        return text == "True"
    number = float(text)
    return int(number) if number.is_integer() and "." not in text and "e" not in text else number


def _progress_bar(enabled: bool, total: int, initial: int):
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, disable=not enabled, unit="step", dynamic_ncols=True)


def _postfix(rows: list[dict]) -> dict:
    if not rows:
        return {}
    last = rows[-1]
    shown = ("best_fitness", "mean_loss", "mean_fitness", "num_nonfinite")
    return {
        name: f"{last[name]:.4g}"
        for name in shown
        if name in last and isinstance(last[name], float | int)
    }


def _strong_types(tree: PyTree) -> PyTree:
    """Drops weak types (``jnp.asarray(x, x.dtype)``) so every chunk sees one signature."""
    strong = lambda x: jnp.asarray(x, x.dtype) if getattr(x, "weak_type", False) else x
    return jax.tree.map(strong, tree)


def _check_int(name: str, value, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < minimum:
        raise ValueError(f"{name}: expected an integer >= {minimum}, got {value!r}")
