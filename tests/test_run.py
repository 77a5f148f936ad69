"""The long-run driver: exact resume, early stopping, logs, checkpoints, argument checks."""

import csv
import json
import re
import struct as binary
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from strategy_zoo import CASES, MEAN, SOLUTION, sphere, tree_bytes, walk_step

import evopes
from evopes.checkpoint import all_checkpoints, latest_checkpoint

CMAES_CASE = next(case for case in CASES if case.name == "CMAES")
PES_CASE = next(case for case in CASES if case.name == "PES")
CHUNK = 8


def _run(case, es, num_steps, directory, log_name, whole_population=False, **options):
    common = dict(
        chunk_size=CHUNK,
        checkpoint_dir=directory,
        log_path=directory / log_name,
        progress=False,
        **options,
    )
    if not case.online:
        return evopes.run(es, sphere, MEAN, jax.random.key(3), num_steps, **common)
    if whole_population:  # the same system, given as an unroll of the whole population

        def unroll_fn(population, inner_state, key):
            return evopes.unroll(walk_step, population, inner_state, key, es.truncation_length)

        return evopes.run_online(
            es, MEAN, jax.random.key(3), num_steps, unroll_fn=unroll_fn, **common
        )
    return evopes.run_online(es, MEAN, jax.random.key(3), num_steps, step_fn=walk_step, **common)


def _same_history(a, b):
    assert sorted(a) == sorted(b)
    for name in a:
        assert a[name].dtype == b[name].dtype and a[name].tobytes() == b[name].tobytes(), name


@pytest.mark.parametrize(
    ("case", "log_name"), [(CMAES_CASE, "log.jsonl"), (PES_CASE, "log.csv")], ids=["CMAES", "PES"]
)
def test_resumed_run_is_bit_identical(case, log_name, tmp_path):
    es = case.make(SOLUTION, 8)
    # For PES the uninterrupted run gets its system as unroll_fn, the other as step_fn.
    reference = _run(case, es, 40, tmp_path / "reference", log_name, whole_population=case.online)

    # An interrupted run: it checkpointed at 16, logged up to 20, then died
    # before its step-20 checkpoint became visible.
    interrupted = tmp_path / "interrupted"
    _run(case, es, 20, interrupted, log_name, checkpoint_every=16)
    assert [p.name for p in all_checkpoints(interrupted)][-2:] == [
        "checkpoint_000000000016.evopes",
        "checkpoint_000000000020.evopes",
    ]
    latest_checkpoint(interrupted).unlink()
    resumed = _run(case, es, 40, interrupted, log_name)

    assert tree_bytes(resumed.state) == tree_bytes(reference.state)
    _same_history(resumed.history, reference.history)
    np.testing.assert_array_equal(resumed.history["step"], np.arange(1, 41))
    # The log is rewound to the checkpoint, then continued: same bytes as uninterrupted.
    assert (interrupted / log_name).read_text() == (tmp_path / "reference" / log_name).read_text()
    # Nothing left to do: a third call returns the same state without stepping.
    again = _run(case, es, 40, interrupted, log_name)
    assert tree_bytes(again.state) == tree_bytes(reference.state)


def test_cma_termination_stops_the_run_independently_of_chunk_size(tmp_path):
    es = CMAES_CASE.make(SOLUTION, 8)
    # A loose TolFun so that the sphere triggers it within a few dozen generations.
    params = es.default_params.replace(tol_fun=jnp.float32(1e-3))
    results = [
        evopes.run(
            es,
            sphere,
            MEAN,
            jax.random.key(3),
            500,
            params=params,
            chunk_size=chunk,
            progress=False,
        )
        for chunk in (CHUNK, 5)
    ]
    terminate = results[0].history["terminate"]
    stop = int(np.argmax(terminate)) + 1  # first generation whose indicators fired
    assert terminate[-1] and not terminate[:-1].any() and 10 < stop < 500
    assert int(results[0].state.generation_counter) == stop == len(results[0].history["step"])
    assert tree_bytes(results[1].state) == tree_bytes(results[0].state)
    _same_history(results[1].history, results[0].history)


def test_user_predicate_stops_at_the_first_step_it_holds(tmp_path):
    es = CMAES_CASE.make(SOLUTION, 8)
    result = evopes.run(
        es,
        sphere,
        MEAN,
        jax.random.key(3),
        500,
        chunk_size=CHUNK,
        progress=False,
        stop_when=lambda metrics: metrics["best_fitness"] < 1e-2,
    )
    best = result.history["best_fitness"]
    assert best[-1] < 1e-2 and np.all(best[:-1] >= 1e-2)
    assert int(result.state.generation_counter) == len(best) < 500


# -- run_loop on a trivial counter: cheap to compile, checks the bookkeeping --------
def _count(state, key, params):
    del key
    state = state + params
    metrics = {
        "value": state,
        "nested": {"half": state / 2},
        "vector": jnp.ones(3),
        "terminate": state >= 1000,
    }
    return state, metrics


def test_logs_every_n_steps_in_csv_and_jsonl(tmp_path):
    for name in ("log.csv", "log.jsonl"):
        result = evopes.run_loop(
            _count,
            jnp.array(0.0),
            jax.random.key(0),
            23,
            params=jnp.array(1.0),
            chunk_size=CHUNK,
            log_path=tmp_path / name,
            log_every=5,
            progress=False,
        )
        text = (tmp_path / name).read_text()
        if name.endswith(".csv"):
            rows = list(csv.DictReader(text.splitlines()))
        else:
            rows = [json.loads(line) for line in text.splitlines()]
        assert [int(row["step"]) for row in rows] == [5, 10, 15, 20, 23]  # the last step always
        assert [float(row["nested/half"]) for row in rows] == [2.5, 5.0, 7.5, 10.0, 11.5]
        assert "vector" not in rows[0]  # only scalars are logged
    assert sorted(result.history) == ["nested/half", "step", "terminate", "value"]
    np.testing.assert_array_equal(result.history["value"], np.arange(1.0, 24.0))


def test_termination_metric_can_be_ignored():
    common = dict(params=jnp.array(400.0), chunk_size=CHUNK, progress=False)
    stopped = evopes.run_loop(_count, jnp.array(0.0), jax.random.key(0), 10, **common)
    assert float(stopped.state) == 1200.0 and len(stopped.history["step"]) == 3
    ignored = evopes.run_loop(
        _count, jnp.array(0.0), jax.random.key(0), 10, stop_on_termination=False, **common
    )
    assert float(ignored.state) == 4000.0 and len(ignored.history["step"]) == 10


def test_tensorboard_scalars(tmp_path):
    pytest.importorskip("tensorboardX")
    from tensorboardX.proto import event_pb2

    evopes.run_loop(
        _count,
        jnp.array(0.0),
        jax.random.key(0),
        6,
        params=jnp.array(1.0),
        chunk_size=4,
        tensorboard_dir=tmp_path,
        log_every=2,
        progress=False,
    )
    events = []
    for path in tmp_path.glob("events.out.tfevents.*"):
        data = path.read_bytes()
        offset = 0
        while offset < len(data):  # TFRecord: length, crc, payload, crc
            (length,) = binary.unpack("<Q", data[offset : offset + 8])
            event = event_pb2.Event.FromString(data[offset + 12 : offset + 12 + length])
            offset += 16 + length
            events += [(event.step, value.tag, value.simple_value) for value in event.summary.value]
    assert ("value" in {tag for _, tag, _ in events}) and sorted(
        (step, value) for step, tag, value in events if tag == "value"
    ) == [(2, 2.0), (4, 4.0), (6, 6.0)]


def test_resume_refuses_foreign_checkpoints(tmp_path):
    evopes.save_checkpoint(tmp_path, 3, {"x": jnp.zeros(2)})

    def count_to_five(**options):
        return evopes.run_loop(
            _count,
            jnp.array(0.0),
            jax.random.key(0),
            5,
            params=jnp.array(1.0),
            checkpoint_dir=tmp_path,
            progress=False,
            **options,
        )

    with pytest.raises(ValueError, match="was not written by evopes.run"):
        count_to_five()
    # resume=False would mix two runs in one folder: refused before any work.
    with pytest.raises(ValueError, match="^checkpoint_dir: .* already holds checkpoints of anoth"):
        count_to_five(resume=False, chunk_size=CHUNK)
    assert len(all_checkpoints(tmp_path)) == 1


@pytest.mark.parametrize(
    ("argument", "value", "message"),
    [
        ("num_steps", -1, "num_steps: expected an integer >= 0, got -1"),
        ("chunk_size", 0, "chunk_size: expected an integer >= 1, got 0"),
        ("log_every", 2.5, "log_every: expected an integer >= 1, got 2.5"),
        ("checkpoint_every", 0, "checkpoint_every: expected an integer >= 1, got 0"),
        ("keep_checkpoints", True, "keep_checkpoints: expected an integer >= 1, got True"),
    ],
)
def test_bad_arguments_raise_value_error(argument, value, message):
    options = {"num_steps": 3, argument: value}
    num_steps = options.pop("num_steps")
    with pytest.raises(ValueError, match=message):
        evopes.run_loop(
            _count, jnp.array(0.0), jax.random.key(0), num_steps, params=jnp.array(1.0), **options
        )


def test_run_online_needs_exactly_one_system():
    es = PES_CASE.make(SOLUTION, 8)
    with pytest.raises(ValueError, match="exactly one of step_fn or unroll_fn"):
        evopes.run_online(es, MEAN, jax.random.key(0), 3)
    with pytest.raises(ValueError, match="exactly one of step_fn or unroll_fn"):
        evopes.run_online(es, MEAN, jax.random.key(0), 3, step_fn=walk_step, unroll_fn=lambda *a: a)


def test_reliability_page_examples_run(tmp_path, monkeypatch):
    """The code blocks of docs/reliability.md run as written (in a scratch folder)."""
    page = Path(__file__).resolve().parent.parent / "docs" / "reliability.md"
    blocks = re.findall(r"```python\n(.*?)```", page.read_text(), flags=re.DOTALL)
    assert len(blocks) == 2
    monkeypatch.chdir(tmp_path)
    namespace = {}
    for block in blocks:
        exec(compile(block, str(page), "exec"), namespace)
    assert int(namespace["restored"]["state"].generation_counter) == 0
    assert float(namespace["history"]["best_fitness"][-1]) < 1e-10  # stopped by stop_when
    assert (tmp_path / "run" / "metrics.jsonl").exists()
