"""Run folders cannot mix runs (issue 12, item 1).

Measured before the change: ``evopes.run`` with ``resume=False`` into a folder
holding an older, longer run's checkpoints (steps 200, 250, 300) deleted every
checkpoint of the new run right after writing it (retention went by step
number), and resuming the new run later returned the OLD run's final state;
``save_checkpoint(step=50)`` into a folder holding steps 100-300 returned the
path of the file it had just deleted.

Now every checkpoint records its run (a run id, and for the driver a
fingerprint of the configuration); ``resume=False`` into a folder that holds
checkpoints refuses before any work; retention keeps the newest checkpoints of
the current run by write order and never touches another run's; resuming
checks the fingerprint and names what differs.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from strategy_zoo import CASES, MEAN, SOLUTION, sphere, tree_bytes

import evopes
from evopes import checkpoint, driver
from evopes.checkpoint import (
    all_checkpoints,
    checkpoint_metadata,
    checkpoint_step,
    latest_checkpoint,
    restore_checkpoint,
    save_checkpoint,
)

CMAES_CASE = next(case for case in CASES if case.name == "CMAES")


def _files(directory) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(directory.iterdir()) if p.is_file()}


def _add(state, key, params):
    del key
    state = state + params
    return state, {"value": state}


def _count(directory, num_steps, *, resume=True, increment=1.0, traced=None, **options):
    def step(state, key, params):
        if traced is not None:
            traced.append(1)  # runs at trace time only: any work shows up here
        return _add(state, key, params)

    return evopes.run_loop(
        step,
        jnp.array(0.0),
        jax.random.key(0),
        num_steps,
        params=jnp.array(increment),
        chunk_size=50,
        checkpoint_dir=directory,
        resume=resume,
        progress=False,
        **options,
    )


def _cmaes_run(directory, num_generations, es=None, **options):
    es = CMAES_CASE.make(SOLUTION, 8) if es is None else es
    return evopes.run(
        es,
        sphere,
        MEAN,
        jax.random.key(3),
        num_generations,
        chunk_size=50,
        checkpoint_dir=directory,
        progress=False,
        stop_on_termination=False,  # CMA-ES's indicators would end the run early
        **options,
    )


# -- resume=False into another run's folder ------------------------------------------
def test_resume_false_into_another_runs_folder_refuses_before_any_work(tmp_path, monkeypatch):
    # The measured scenario: an older, longer run left steps 200, 250 and 300.
    old = _cmaes_run(tmp_path, 300)
    assert [checkpoint_step(p) for p in all_checkpoints(tmp_path)] == [200, 250, 300]
    before = _files(tmp_path)

    # evopes.run refuses before initialising the strategy (no work at all).
    def no_init(*args, **kwargs):
        raise AssertionError("the strategy was initialised before the folder was checked")

    monkeypatch.setattr(driver, "_init", no_init)
    with pytest.raises(ValueError, match=rf"checkpoint_dir: {tmp_path}.*another run"):
        _cmaes_run(tmp_path, 150, resume=False)
    monkeypatch.undo()
    assert _files(tmp_path) == before  # nothing deleted, nothing written

    # run_loop refuses before tracing the step function.
    traced = []
    with pytest.raises(ValueError, match=rf"checkpoint_dir: {tmp_path}"):
        _count(tmp_path, 150, resume=False, traced=traced)
    assert traced == [] and _files(tmp_path) == before

    # run_online too.
    pes = next(case for case in CASES if case.name == "PES").make(SOLUTION, 8)
    with pytest.raises(ValueError, match=rf"checkpoint_dir: {tmp_path}"):
        evopes.run_online(
            pes,
            MEAN,
            jax.random.key(0),
            5,
            step_fn=lambda *a: a,
            checkpoint_dir=tmp_path,
            resume=False,
            progress=False,
        )
    assert _files(tmp_path) == before

    # The old run is still whole: resuming it returns its final state, untouched.
    again = _cmaes_run(tmp_path, 300)
    assert tree_bytes(again.state) == tree_bytes(old.state)


def test_a_new_run_in_an_empty_folder_keeps_its_own_checkpoints(tmp_path):
    result = _count(tmp_path / "new", 150, resume=False, keep_checkpoints=2)
    assert [checkpoint_step(p) for p in all_checkpoints(tmp_path / "new")] == [100, 150]
    assert float(result.state) == 150.0
    # A temporary file or an unrelated file is no checkpoint: the folder counts as empty.
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("hello")
    assert float(_count(tmp_path / "other", 50, resume=False).state) == 50.0


# -- resume checks the fingerprint ------------------------------------------------------
def test_resume_refuses_another_configuration_naming_what_differs(tmp_path):
    _cmaes_run(tmp_path, 100)
    before = _files(tmp_path)
    es8 = CMAES_CASE.make(SOLUTION, 8)
    cases = [
        (CMAES_CASE.make(SOLUTION, 16), r"population_size: checkpoint 8, now 16"),
        (CMAES_CASE.make({**SOLUTION, "w": jnp.zeros((3, 2))}, 8), r"solution: checkpoint"),
        (
            next(case for case in CASES if case.name == "SepCMAES").make(SOLUTION, 8),
            r"strategy: checkpoint CMAES, now SepCMAES",
        ),
    ]
    for es, message in cases:
        with pytest.raises(ValueError, match=rf"checkpoint_dir: {tmp_path}.*{message}"):
            _cmaes_run(tmp_path, 200, es=es)
    params = es8.default_params.replace(std_init=jnp.float32(0.25))
    with pytest.raises(ValueError, match=r"params\.std_init: checkpoint .*, now 0\.25"):
        _cmaes_run(tmp_path, 200, params=params)
    with pytest.raises(ValueError, match=r"key: checkpoint"):
        evopes.run(
            es8,
            sphere,
            MEAN,
            jax.random.key(4),
            200,
            chunk_size=50,
            checkpoint_dir=tmp_path,
            progress=False,
        )
    assert _files(tmp_path) == before
    # The same configuration resumes.
    assert len(_cmaes_run(tmp_path, 200).history["step"]) == 200


def test_run_loop_fingerprint_covers_state_and_params(tmp_path):
    _count(tmp_path, 100)
    with pytest.raises(ValueError, match=r"params: checkpoint 1\.0, now 2\.0"):
        _count(tmp_path, 200, increment=2.0)
    with pytest.raises(ValueError, match=r"state: checkpoint"):
        evopes.run_loop(
            _add,
            jnp.zeros(2),
            jax.random.key(0),
            200,
            params=jnp.array(1.0),
            chunk_size=50,
            checkpoint_dir=tmp_path,
            progress=False,
        )
    assert float(_count(tmp_path, 200).state) == 200.0


def test_resumed_run_keeps_its_run_id_and_prunes_only_its_own(tmp_path):
    _count(tmp_path, 200, keep_checkpoints=2)
    run_id = checkpoint_metadata(latest_checkpoint(tmp_path))["run_id"]
    assert isinstance(run_id, str) and len(run_id) >= 16
    _count(tmp_path, 400, keep_checkpoints=2)
    assert [checkpoint_step(p) for p in all_checkpoints(tmp_path)] == [350, 400]
    assert {checkpoint_metadata(p)["run_id"] for p in all_checkpoints(tmp_path)} == {run_id}
    # Two runs never share an id.
    _count(tmp_path / "second", 50)
    assert checkpoint_metadata(latest_checkpoint(tmp_path / "second"))["run_id"] != run_id


def test_a_folder_mixing_runs_is_refused_on_resume(tmp_path):
    _count(tmp_path, 100)
    save_checkpoint(tmp_path, 7, {"x": jnp.zeros(2)}, run_id="someone-else")
    with pytest.raises(ValueError, match=rf"checkpoint_dir: {tmp_path}"):
        _count(tmp_path, 200)


# -- save_checkpoint: retention by write order, within one run ----------------------------
def test_save_at_a_lower_step_never_returns_a_deleted_path(tmp_path):
    for step in (100, 150, 200, 250, 300):
        save_checkpoint(tmp_path, step, {"step": np.int64(step)}, keep=None)
    path = save_checkpoint(tmp_path, 50, {"step": np.int64(50)}, keep=3)
    assert path.exists()
    assert int(restore_checkpoint(path, {"step": np.int64(0)})["step"]) == 50
    # The newest three by write order: 250, 300, then 50.
    assert [checkpoint_step(p) for p in all_checkpoints(tmp_path)] == [250, 300, 50]
    assert latest_checkpoint(tmp_path) == path
    assert int(restore_checkpoint(tmp_path, {"step": np.int64(0)})["step"]) == 50
    path = save_checkpoint(tmp_path, 40, {"step": np.int64(40)}, keep=1)
    assert path.exists() and [p.name for p in all_checkpoints(tmp_path)] == [path.name]


def test_retention_never_touches_another_runs_checkpoints(tmp_path):
    for step in (100, 200, 300):
        save_checkpoint(tmp_path, step, {"x": np.float32(step)}, run_id="old")
    old = _files(tmp_path)
    for step in (1, 2, 3, 4):
        path = save_checkpoint(tmp_path, step, {"x": np.float32(step)}, keep=1, run_id="new")
        assert path.exists()
    assert {name: data for name, data in _files(tmp_path).items() if name in old} == old
    assert [checkpoint_step(p) for p in all_checkpoints(tmp_path)] == [100, 200, 300, 4]
    # A save at a step another run already holds refuses instead of overwriting it.
    with pytest.raises(ValueError, match=r"checkpoint_000000000200\.evopes.*another run"):
        save_checkpoint(tmp_path, 200, {"x": np.float32(0)}, run_id="new")
    assert (
        _files(tmp_path)["checkpoint_000000000200.evopes"] == old["checkpoint_000000000200.evopes"]
    )
    # The same run may overwrite its own step (a resumed run writes it again).
    save_checkpoint(tmp_path, 4, {"x": np.float32(44)}, keep=1, run_id="new")
    assert float(restore_checkpoint(latest_checkpoint(tmp_path), {"x": np.float32(0)})["x"]) == 44
    with pytest.raises(ValueError, match="run_id"):
        save_checkpoint(tmp_path, 5, {"x": np.float32(0)}, run_id=5)


def test_checkpoint_module_reads_run_ids(tmp_path):
    path = save_checkpoint(tmp_path, 3, {"x": jnp.zeros(2)}, run_id="abc", metadata={"n": 1})
    info = checkpoint_metadata(path)
    assert info["run_id"] == "abc" and info["step"] == 3 and info["n"] == 1
    assert checkpoint.FORMAT_VERSION == 2
