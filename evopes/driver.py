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
    init_key, loop_key = jax.random.split(key)
    state = _init(es, init_key, mean, params)
    step = _ClassicGeneration(es, fitness_fn)
    return run_loop(step, state, loop_key, num_generations, params=params, **options)


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
    init_key, loop_key = jax.random.split(key)
    state = _init(es, init_key, theta, params)
    step = _OnlineWindow(es, step_fn, unroll_fn)
    return run_loop(step, state, loop_key, num_windows, params=params, **options)


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
      keep_checkpoints: how many checkpoints to keep.
      resume: continue from the latest checkpoint in ``checkpoint_dir`` if any
        (a checkpoint at or past ``num_steps`` is returned as it is).
      log_path: ``.csv`` file, or any other suffix for JSON lines; rows of
        scalar metrics every ``log_every`` steps (and the last step).
      log_every: logging period in steps.
      tensorboard_dir: write scalar metrics there with ``tensorboardX``.
      progress: show a tqdm progress bar.
      stop_when: traced predicate on one step's metrics; True stops the run.
      stop_on_termination: also stop when a boolean metric named in
        :data:`TERMINATION_METRICS` is true.

    Returns:
      ``RunResult(state, history)``.
    """
    _check_int("num_steps", num_steps, minimum=0)
    _check_int("chunk_size", chunk_size, minimum=1)
    _check_int("log_every", log_every, minimum=1)
    _check_int("keep_checkpoints", keep_checkpoints, minimum=1)
    if checkpoint_every is not None:
        _check_int("checkpoint_every", checkpoint_every, minimum=1)
    stop = _StopCriterion(stop_when, stop_on_termination)

    metric_shapes = jax.eval_shape(step_fn, state, key, params)[1]
    metric_names = _scalar_metrics(metric_shapes)
    # Strong types throughout: the scan returns strongly typed leaves, so a weakly
    # typed initial state would compile the chunk twice (and restore differently).
    carry = _strong_types(_Carry(state, key, jnp.array(0, jnp.int32), jnp.array(False)))
    history = {name: np.zeros((0,), shape.dtype) for name, shape in metric_names.items()}
    history["step"] = np.zeros((0,), np.int64)

    fingerprint = _fingerprint(step_fn, state, params)
    run_id = uuid.uuid4().hex
    if checkpoint_dir is not None and checkpoint.all_checkpoints(checkpoint_dir):
        if not resume:
            raise ValueError(
                f"checkpoint_dir: {checkpoint_dir} already holds the checkpoints of a run; "
                "resume=False would mix two runs in one folder. Expected an empty or new "
                "folder (or resume=True to continue that run), got a folder with "
                f"{len(checkpoint.all_checkpoints(checkpoint_dir))} checkpoints"
            )
        carry, history, run_id = _restore(checkpoint_dir, carry, history, fingerprint)
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
            if checkpoint_dir is not None and (due or finished):
                _save(checkpoint_dir, carry, history, keep_checkpoints, run_id, fingerprint)
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
    """Scalar numeric leaves of a metrics pytree, named ``a/b`` for nested dicts."""
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


def _save(directory, carry: _Carry, history: dict, keep: int, run_id: str, fingerprint) -> None:
    target = {"carry": carry, "history": history}
    checkpoint.save_checkpoint(
        directory,
        int(carry.step),
        target,
        keep=keep,
        run_id=run_id,
        metadata={
            "kind": "evopes.run",
            "history_length": len(history["step"]),
            "fingerprint": fingerprint,
        },
    )


def _fingerprint(step_fn, state, params) -> dict:
    """What a run is: its step (strategy configuration), its state's structure and its params.

    Compared on resume, so that a folder is never continued by a different run.
    """

    def signature(tree) -> str:
        leaves, treedef = jax.tree_util.tree_flatten(tree)
        shapes = [
            (tuple(np.shape(leaf)), str(getattr(leaf, "dtype", type(leaf).__name__)))
            for leaf in leaves
        ]
        return f"{treedef} {shapes}"

    def digest(tree) -> str:
        hasher = hashlib.sha256()
        for leaf in jax.tree_util.tree_leaves(tree):
            if hasattr(leaf, "dtype") and jax.dtypes.issubdtype(leaf.dtype, jax.dtypes.prng_key):
                leaf = jax.random.key_data(leaf)
            hasher.update(np.asarray(jax.device_get(leaf)).tobytes())
        return hasher.hexdigest()[:16]

    strategy = getattr(step_fn, "es", None)
    return {
        "strategy": repr(strategy) if strategy is not None else type(step_fn).__qualname__,
        "state": signature(state),
        "params": f"{signature(params)} {digest(params)}",
    }


def _restore(directory, carry: _Carry, history: dict, fingerprint: dict):
    """The newest intact checkpoint of the folder's run: ``(carry, history, run_id)``.

    A damaged checkpoint is skipped with a warning naming it; a checkpoint of a
    different run (strategy, state structure or params) is refused, naming what differs.
    """
    for path in reversed(checkpoint.all_checkpoints(directory)):
        try:
            info = checkpoint.checkpoint_metadata(path)
        except ValueError as error:
            warnings.warn(
                f"checkpoint_dir: skipping damaged checkpoint {path} ({error})", stacklevel=3
            )
            continue
        if info.get("kind") != "evopes.run":
            raise ValueError(f"checkpoint_dir: {path} was not written by evopes.run")
        stored = info.get("fingerprint") or {}
        differs = [name for name in fingerprint if stored.get(name) != fingerprint[name]]
        if differs:
            details = "; ".join(
                f"{name}: this run {fingerprint[name]!r}, the folder's {stored.get(name)!r}"
                for name in differs
            )
            raise ValueError(
                f"checkpoint_dir: {directory} holds another run's checkpoints "
                f"({', '.join(differs)} differ): {details}"
            )
        length = info["history_length"]
        template = {name: np.zeros((length,), values.dtype) for name, values in history.items()}
        restored = checkpoint.restore_checkpoint(path, {"carry": carry, "history": template})
        return restored["carry"], restored["history"], info.get("run_id") or uuid.uuid4().hex
    raise ValueError(f"checkpoint_dir: every checkpoint in {directory} is damaged")


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
